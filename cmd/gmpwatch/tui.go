package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
	"github.com/gmpwatch/gmpwatch/internal/session"
	"github.com/gmpwatch/gmpwatch/internal/tui"
)

// liveView is top's terminal UI: every interval report of the scheduler
// model goes to it with the G/M/P picture read from the target's memory and
// the probes' counters. It ends when the user quits, which ends the
// session's context: the session then detaches and reports as on Ctrl-C.
type liveView struct {
	prog   *tui.Program
	cancel context.CancelFunc
	pid    int
	sess   *session.Session
	stderr io.Writer
	rt     *rtstate.Reader // nil: no memory reads
	rtErr  string
	sym    *gobin.Symbolizer
	cpu    time.Duration // gmpwatch's CPU time at the last interval
	// budget, when set, tells the overhead budget's state each interval.
	budget func() string

	// allgs scans the whole process's goroutines; top hands it the exact
	// figures' scanner under a budget, so that both use one scan.
	allgs  *allgsScanner
	closed bool
}

// wantLiveView: the live view is for a person at a terminal; --json,
// --no-tui or a stdout that is not a terminal give interval text.
func wantLiveView(f *topFlags, env *cmdEnv) bool {
	return !f.json && !f.noTUI && tui.CanRun(lvStdin(env), env.stdout)
}

func lvStdin(env *cmdEnv) io.Reader {
	if env.stdin == nil {
		return os.Stdin
	}
	return env.stdin
}

// startLiveView starts the live view of a session on env's terminal. The
// returned context is ctx, also ended when the user quits.
func startLiveView(ctx context.Context, env *cmdEnv, sess *session.Session, interval time.Duration, budget string) (*liveView, context.Context) {
	pid, p := sess.PID, sess.Plan
	lv := &liveView{pid: pid, sess: sess, stderr: env.stderr, sym: sess.Sym, cpu: selfCPU()}
	// The memory reader: the G/M/P picture degrades to "unknown" without it.
	if rt, err := rtstate.Open(p); err != nil {
		lv.rtErr = err.Error()
	} else {
		lv.rt = rt
		lv.allgs = &allgsScanner{rt: rt, interval: interval}
	}
	info := tui.Info{
		PID:       pid,
		Exe:       p.Exe,
		GoVersion: p.GoVersion,
		Interval:  interval,
		Budget:    budget,
		ProcStart: procStart(pid),
		Started:   time.Now(),
	}
	for _, pr := range sess.Tracer.Probes() {
		info.Probes = append(info.Probes, pr.Program)
	}
	ctx, lv.cancel = context.WithCancel(ctx)
	lv.prog = tui.Start(ctx, info, lvStdin(env), env.stdout)
	go func() {
		<-lv.prog.Done()
		lv.cancel() // the user quit: end the session
	}()
	return lv, ctx
}

// show hands one interval report to the view, with a fresh read of the
// target's scheduler state.
func (lv *liveView) show(r *sched.Report, rt *runtimeFigures) {
	s := tui.Snapshot{At: time.Now(), Report: r, RSS: procRSS(lv.pid), GMPErr: lv.rtErr}
	if rt != nil {
		l := rt.SchedLatency
		s.Runtime = fmt.Sprintf("n %-7d p50 %-8s p90 %-8s p99 %-8s (exact; 1 in 8 sampled by the runtime)",
			l.Count, sched.FormatNs(uint64(l.P50)), sched.FormatNs(uint64(l.P90)), sched.FormatNs(uint64(l.P99)))
	}
	if lv.budget != nil {
		s.Budget = lv.budget()
	}
	if lv.rt != nil {
		if g, err := lv.rt.GMP(); err != nil {
			s.GMPErr = err.Error()
		} else {
			s.GMP = lv.gmpView(g)
		}
		s.Goroutines = lv.goroutines()
	}
	st := lv.sess.Stats()
	s.Probes = tui.ProbeStats{Events: st.Events, Lost: st.Lost, Hits: st.Hits, ReadErrors: st.ReadErrors}
	cpu := selfCPU()
	s.SelfCPU, lv.cpu = cpu-lv.cpu, cpu
	lv.prog.Send(s)
}

// goroutines counts the process's goroutines by state from the current
// scan, with its age.
func (lv *liveView) goroutines() *tui.Goroutines {
	sc, at := lv.allgs.scan(context.Background())
	if sc == nil {
		return nil
	}
	return &tui.Goroutines{Total: len(sc.Goroutines), ByState: sc.Counts(), Skipped: sc.Skipped.Total(), Age: time.Since(at)}
}

func (lv *liveView) funcName(pc uint64) string {
	if pc == 0 {
		return ""
	}
	if name, ok := lv.sym.StartFunc(pc); ok {
		return name
	}
	return "0x" + strconv.FormatUint(pc, 16)
}

func (lv *liveView) gmpView(g *rtstate.GMP) *tui.GMP {
	v := &tui.GMP{
		GOMAXPROCS:  g.GOMAXPROCS,
		IdleProcs:   g.IdleProcs,
		Spinning:    g.SpinningThreads,
		IdleThreads: g.IdleThreads,
		RunQueue:    g.RunQueue,
		GCCycles:    g.GCCycles,
		HasGC:       g.HasGC,
		Skipped:     g.Skipped + g.Sched.Skipped,
	}
	for _, p := range g.Ps {
		v.Ps = append(v.Ps, tui.PRow{ID: p.ID, Status: p.Status, RunQueue: p.RunQueue, RunNext: p.RunNext,
			M: p.M, TID: p.TID, G: p.G, Func: lv.funcName(p.GStartPC)})
	}
	for _, m := range g.Ms {
		row := tui.MRow{ID: m.ID, TID: m.TID, P: m.P, Spinning: m.Spinning, Idle: m.Idle, Syscall: m.Syscall,
			Locked: m.Locked, G: m.G, Func: lv.funcName(m.GStartPC)}
		if m.G != 0 {
			row.GStatus = rtstate.StatusName(m.GStatus)
		}
		v.Ms = append(v.Ms, row)
	}
	return v
}

// close ends the view and waits until the terminal is restored.
func (lv *liveView) close() {
	if lv.closed {
		return
	}
	lv.closed = true
	if err := lv.prog.Stop(); err != nil {
		fmt.Fprintf(lv.stderr, "gmpwatch: live view: %v\n", err)
	}
	lv.cancel()
	if lv.rt != nil {
		lv.rt.Close()
	}
}

// selfCPU is the CPU time gmpwatch has used (user and system).
func selfCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procRSS is the resident set of pid in bytes (0 if unknown).
func procRSS(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * uint64(os.Getpagesize())
}

// procStart is when pid started: /proc/PID/stat's starttime (clock ticks
// after boot, USER_HZ = 100 on Linux) after /proc/stat's btime.
func procStart(pid int) time.Time {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return time.Time{}
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return time.Time{}
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 20 {
		return time.Time{}
	}
	ticks, err := strconv.ParseUint(f[19], 10, 64) // field 22
	if err != nil {
		return time.Time{}
	}
	st, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			bt, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}
			}
			return time.Unix(bt, 0).Add(time.Duration(ticks) * 10 * time.Millisecond)
		}
	}
	return time.Time{}
}
