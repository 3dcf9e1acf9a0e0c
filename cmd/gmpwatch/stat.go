package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
)

func init() {
	register(&command{
		name:    "stat",
		usage:   "stat -p PID [--json] [INTERVAL [COUNT]]",
		summary: "scheduler state read from memory, like GODEBUG=schedtrace, zero overhead",
		run:     runStat,
	})
}

const statUsage = "usage: gmpwatch stat -p PID [--json] [INTERVAL [COUNT]]"

// parseInterleaved parses flags that may come before, between or after the
// positional arguments (gmpwatch stat -p 1 1s 5 --json).
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// parseInterval reads "1", "0.5" (seconds) or a Go duration ("500ms").
func parseInterval(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return d, nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f > 0 && f < 1e6 {
		return time.Duration(f * float64(time.Second)), nil
	}
	return 0, fmt.Errorf("bad INTERVAL %q: want seconds (1, 0.5) or a duration (500ms)", s)
}

// target is a process opened for reading its runtime state.
type target struct {
	plan *plan.Plan
	rt   *rtstate.Reader
}

// openTarget builds the plan of pid and opens its memory. Every error is a
// one-line answer to bad input (no such process, not Go, no permission).
func openTarget(pid int) (*target, error) {
	if pid <= 0 {
		return nil, usageErrorf("give a process with -p PID")
	}
	p, err := plan.FromProcess(pid)
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	rt, err := rtstate.Open(p)
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	return &target{plan: p, rt: rt}, nil
}

func (t *target) close() { t.rt.Close() }

// layoutNote says where the struct layouts came from, for the header line.
func layoutNote(p *plan.Plan) string {
	s := "layout " + p.LayoutSource
	if p.LayoutSource == plan.LayoutTable {
		s += " (stripped binary: offsets from the table of its release)"
	}
	return s
}

func runStat(ctx context.Context, env *cmdEnv, args []string) error {
	fs := flag.NewFlagSet("stat", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	pid := fs.Int("p", 0, "process ID")
	asJSON := fs.Bool("json", false, "one JSON object a line")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageErrorf("%v (%s)", err, statUsage)
	}
	if *pid == 0 {
		return usageErrorf("give a process with -p PID (%s)", statUsage)
	}
	if len(pos) > 2 {
		return usageErrorf("too many arguments (%s)", statUsage)
	}
	var interval time.Duration
	count := 1 // no INTERVAL: one reading
	if len(pos) >= 1 {
		if interval, err = parseInterval(pos[0]); err != nil {
			return usageErrorf("%v", err)
		}
		count = 0 // INTERVAL alone: until Ctrl-C
	}
	if len(pos) == 2 {
		n, err := strconv.Atoi(pos[1])
		if err != nil || n <= 0 {
			return usageErrorf("bad COUNT %q: want a positive number", pos[1])
		}
		count = n
	}

	t, err := openTarget(*pid)
	if err != nil {
		return err
	}
	defer t.close()

	w := bufio.NewWriter(env.stdout)
	defer w.Flush()
	if !*asJSON {
		fmt.Fprintf(w, "gmpwatch stat: PID %d %s (%s, %s), read from memory while it runs: no probes, no stop\n",
			*pid, t.plan.Exe, t.plan.GoVersion, layoutNote(t.plan))
		if !t.rt.HasCreated() {
			fmt.Fprintf(w, "created=?: %s does not count the goroutines it created (go1.26+ does)\n", t.plan.GoVersion)
		}
		if !t.rt.HasGCCycles() {
			fmt.Fprintf(w, "gccycles=?: the plan has no offset for runtime.memstats.numgc\n")
		}
		w.Flush()
	}

	var prev *rtstate.Sched
	var start int64
	tick := time.NewTicker(max(interval, time.Millisecond))
	defer tick.Stop()
	for i := 0; count == 0 || i < count; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil // Ctrl-C ends an open-ended stat quietly
			case <-tick.C:
			}
		}
		line, cur, err := readStat(ctx, t, prev)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("pid %d: %w", *pid, err)
		}
		if start == 0 {
			start = cur.Mono
		}
		line.TimeMS = (cur.Mono - start) / 1e6
		if *asJSON {
			b, _ := json.Marshal(line)
			w.Write(b)
			w.WriteByte('\n')
		} else {
			writeStatLine(w, line)
		}
		w.Flush()
		prev = cur
	}
	return nil
}

// statLine is one line of gmpwatch stat: the JSON schema of --json.
type statLine struct {
	TimeMS          int64          `json:"time_ms"` // since the first line
	IntervalNS      int64          `json:"interval_ns"`
	SinceStart      bool           `json:"since_start"` // sched_latency covers the whole run so far
	GOMAXPROCS      int32          `json:"gomaxprocs"`
	NCPU            int32          `json:"ncpu,omitempty"`
	Threads         int            `json:"threads"`
	IdleThreads     int32          `json:"idle_threads"`
	SpinningThreads int32          `json:"spinning_threads"`
	IdleProcs       int32          `json:"idle_procs"`
	RunQueue        int32          `json:"runqueue"`
	PRunQueues      []uint32       `json:"p_runqueues"`
	Goroutines      map[string]int `json:"goroutines"` // by status, and "total"
	// Created counts goroutines created since the process started (go1.26+;
	// null where the release does not record it).
	Created      *uint64         `json:"goroutines_created"`
	GCCycles     *uint32         `json:"gc_cycles"` // null when the plan lacks memstats.numgc
	SchedLatency schedLatency    `json:"sched_latency"`
	Skipped      rtstate.Skipped `json:"skipped"`
	SkippedSched int             `json:"skipped_sched,omitempty"` // Ps and Ms that failed validation
}

type schedLatency struct {
	Count uint64 `json:"count"`
	P50   int64  `json:"p50_ns"`
	P90   int64  `json:"p90_ns"`
	P99   int64  `json:"p99_ns"`
	// Torn is true when a bucket went down between the two reads: the
	// histogram was read while the runtime updated it.
	Torn bool `json:"torn,omitempty"`
}

// latencyOf summarizes a timeHistogram.
func latencyOf(h rtstate.Histogram) schedLatency {
	return schedLatency{
		Count: h.Total(),
		P50:   int64(h.Quantile(0.50)),
		P90:   int64(h.Quantile(0.90)),
		P99:   int64(h.Quantile(0.99)),
	}
}

// readStat reads the scheduler and the goroutines once and builds a line;
// the latency is the difference with prev, or since start without one.
func readStat(ctx context.Context, t *target, prev *rtstate.Sched) (*statLine, *rtstate.Sched, error) {
	return readStatScan(ctx, t, prev, nil)
}

// readStatScan is readStat with the goroutines of an earlier scan when gs
// is not nil.
func readStatScan(ctx context.Context, t *target, prev *rtstate.Sched, gs *rtstate.GScan) (*statLine, *rtstate.Sched, error) {
	s, err := t.rt.Sched()
	if err != nil {
		return nil, nil, err
	}
	if gs == nil {
		if gs, err = t.rt.Goroutines(ctx, rtstate.ScanOptions{}); err != nil {
			return nil, nil, err
		}
	}
	l := &statLine{
		GOMAXPROCS:      s.GOMAXPROCS,
		NCPU:            s.NCPU,
		Threads:         s.Threads,
		IdleThreads:     s.IdleThreads,
		SpinningThreads: s.SpinningThreads,
		IdleProcs:       s.IdleProcs,
		RunQueue:        s.RunQueue,
		PRunQueues:      make([]uint32, 0, len(s.Procs)),
		Goroutines:      map[string]int{"running": 0, "runnable": 0, "waiting": 0, "syscall": 0},
		Skipped:         gs.Skipped,
		SkippedSched:    s.Skipped,
	}
	for _, p := range s.Procs {
		l.PRunQueues = append(l.PRunQueues, p.RunQueue)
	}
	for k, v := range gs.Counts() {
		l.Goroutines[k] += v
	}
	l.Goroutines["total"] = len(gs.Goroutines)
	if s.HasCreated {
		v := s.GoroutinesCreated
		l.Created = &v
	}
	if s.HasGC {
		v := s.GCCycles
		l.GCCycles = &v
	}
	h := s.TimeToRun
	if prev == nil {
		l.SinceStart = true
		l.SchedLatency = latencyOf(h)
	} else {
		d, ok := h.Sub(prev.TimeToRun)
		l.SchedLatency = latencyOf(d)
		l.SchedLatency.Torn = !ok
		l.IntervalNS = s.Mono - prev.Mono
	}
	return l, s, nil
}

// writeStatLine prints a line in the manner of GODEBUG=schedtrace.
func writeStatLine(w io.Writer, l *statLine) {
	var b strings.Builder
	fmt.Fprintf(&b, "SCHED %dms: gomaxprocs=%d idleprocs=%d threads=%d spinningthreads=%d idlethreads=%d runqueue=%d [",
		l.TimeMS, l.GOMAXPROCS, l.IdleProcs, l.Threads, l.SpinningThreads, l.IdleThreads, l.RunQueue)
	for i, q := range l.PRunQueues {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatUint(uint64(q), 10))
	}
	fmt.Fprintf(&b, "] goroutines=%d", l.Goroutines["total"])
	names := make([]string, 0, len(l.Goroutines))
	for k := range l.Goroutines {
		if k != "total" {
			names = append(names, k)
		}
	}
	order := map[string]int{"running": 0, "runnable": 1, "waiting": 2, "syscall": 3}
	sort.Slice(names, func(i, j int) bool {
		oi, iok := order[names[i]]
		oj, jok := order[names[j]]
		if iok != jok {
			return iok
		}
		if iok {
			return oi < oj
		}
		return names[i] < names[j]
	})
	b.WriteString(" (")
	for i, k := range names {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, l.Goroutines[k])
	}
	b.WriteString(")")
	if l.Created != nil {
		fmt.Fprintf(&b, " created=%d", *l.Created)
	} else {
		b.WriteString(" created=?")
	}
	if l.GCCycles != nil {
		fmt.Fprintf(&b, " gccycles=%d", *l.GCCycles)
	} else {
		b.WriteString(" gccycles=?")
	}
	span := "since start"
	if !l.SinceStart {
		span = time.Duration(l.IntervalNS).Round(time.Millisecond).String()
	}
	sl := l.SchedLatency
	fmt.Fprintf(&b, " schedlatency(%s): n=%d p50=%v p90=%v p99=%v", span, sl.Count,
		time.Duration(sl.P50), time.Duration(sl.P90), time.Duration(sl.P99))
	if sl.Torn {
		b.WriteString(" (torn read)")
	}
	if n := l.Skipped.Total() + l.SkippedSched; n > 0 {
		fmt.Fprintf(&b, " skipped=%d", n)
	}
	b.WriteByte('\n')
	io.WriteString(w, b.String())
}
