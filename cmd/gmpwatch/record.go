package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/export"
	"github.com/gmpwatch/gmpwatch/analysis/paths"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/record"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
	"github.com/gmpwatch/gmpwatch/ebpf"
	"github.com/gmpwatch/gmpwatch/internal/session"
)

func init() {
	register(&command{
		name:    "record",
		usage:   "record -p PID | -- CMD ARGS -o FILE [-d DUR] [-f FORMAT [-r OUT]] [--probes P,...]",
		summary: "record the scheduler's events to a file that renders without the binary",
		run:     runRecord,
	})
}

// recordFlags are the parsed arguments of the record command.
type recordFlags struct {
	pid      int
	duration time.Duration
	out      string
	format   string
	render   string // -f output file; "" is standard output
	probes   []string
	flush    time.Duration
	memRate  int64
	cmd      []string
}

func parseRecordFlags(args []string) (*recordFlags, error) {
	f := &recordFlags{}
	fs := flag.NewFlagSet("record", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.IntVar(&f.pid, "p", 0, "record the running process `PID`")
	fs.DurationVar(&f.duration, "d", 0, "stop after `duration` (0: until Ctrl-C or the target exits)")
	fs.StringVar(&f.out, "o", "", "write the recording to `FILE`")
	fs.StringVar(&f.format, "f", "", "also render the run in `FORMAT` (to standard output, or -r FILE)")
	fs.StringVar(&f.render, "r", "", "write the -f rendering to `FILE` (the target's output goes to standard output)")
	probes := fs.String("probes", "", "comma-separated BPF programs or sets (default, chan, malloc, syscall) to attach; default: the cheap set")
	fs.DurationVar(&f.flush, "flush", time.Second, "write a block to the file every `interval`")
	fs.Int64Var(&f.memRate, "mem-profile-rate", paths.DefaultMemProfileRate, "the target's runtime.MemProfileRate, to scale sampled allocations")
	if err := fs.Parse(args); err != nil {
		return nil, usageErrorf("%v", err)
	}
	var err error
	if f.cmd, err = commandArgs(args, fs.Args()); err != nil {
		return nil, err
	}
	if *probes != "" {
		for _, p := range strings.Split(*probes, ",") {
			p = strings.TrimSpace(p)
			if alias, ok := probeAliases[p]; ok {
				f.probes = append(f.probes, alias...)
			} else if p != "" {
				f.probes = append(f.probes, p)
			}
		}
	}
	switch {
	case f.pid != 0 && len(f.cmd) > 0:
		return nil, usageErrorf("give -p PID or -- CMD, not both")
	case f.pid == 0 && len(f.cmd) == 0:
		return nil, usageErrorf("nothing to record: give -p PID or -- CMD ARGS")
	case f.pid < 0:
		return nil, usageErrorf("-p %d: not a process ID", f.pid)
	case f.out == "":
		return nil, usageErrorf("no output file: give -o FILE")
	case f.duration < 0:
		return nil, usageErrorf("-d %v: the duration must not be negative", f.duration)
	case f.flush <= 0:
		return nil, usageErrorf("-flush %v: the interval must be positive", f.flush)
	case f.render != "" && f.format == "":
		return nil, usageErrorf("-r %s: give the format with -f", f.render)
	case f.format != "" && !isExportFormat(f.format):
		return nil, usageErrorf("-f %q: unknown format (want one of %s)", f.format, strings.Join(export.Formats, ", "))
	}
	return f, nil
}

// probeAliases name sets of BPF programs for --probes: "default" is the
// cheap set, "chan" the channel operations, "malloc" mallocgc (hot) and
// "syscall" entersyscall and exitsyscall.
var probeAliases = map[string][]string{
	"default": ebpf.DefaultPrograms,
	"chan":    {"chansend", "chanrecv"},
	"malloc":  {"mallocgc"},
	"syscall": {"entersyscall", "exitsyscall"},
}

func isExportFormat(s string) bool {
	for _, f := range export.Formats {
		if f == s {
			return true
		}
	}
	return false
}

// recorder is the sink that writes a recording: events are buffered and
// written as a block, with the symbols of every PC they and their stacks
// carry, at each flush.
type recorder struct {
	w      *record.Writer
	sess   *session.Session
	bias   uint64
	buf    []event.Event
	stacks map[int32][]uint64 // every stack received
	fresh  map[int32][]uint64 // not yet written
	count  uint64
}

func (r *recorder) handle(ev *event.Event) {
	r.buf = append(r.buf, *ev)
	r.count++
}

// addStacks takes stacks delivered by the tracer.
func (r *recorder) addStacks(st map[int32][]uint64) {
	for id, pcs := range st {
		if _, ok := r.stacks[id]; !ok {
			r.stacks[id] = pcs
			r.fresh[id] = pcs
		}
	}
}

func (r *recorder) flush(stats *record.Stats) error {
	var syms []record.Symbol
	add := func(pc uint64, ret bool) {
		if pc == 0 || r.w.HasSymbol(pc-r.bias) {
			return
		}
		if f, ok := r.sess.Sym.Symbolize(pc, ret); ok {
			syms = append(syms, record.Symbol{PC: pc - r.bias, Frame: f})
		}
	}
	seen := map[uint64]bool{}
	for i := range r.buf {
		ev := &r.buf[i]
		if ev.PC != 0 && !seen[ev.PC] {
			seen[ev.PC] = true
			add(ev.PC, true)
		}
		if ev.PC2 != 0 && !seen[ev.PC2] {
			seen[ev.PC2] = true
			add(ev.PC2, false) // g.startpc: a function entry
		}
	}
	for _, pcs := range r.fresh {
		for i, pc := range pcs {
			add(pc, i > 0)
		}
	}
	if err := r.w.WriteEvents(r.buf); err != nil {
		return err
	}
	r.buf = r.buf[:0]
	if err := r.w.WriteSymbols(syms); err != nil {
		return err
	}
	if err := r.w.WriteStacks(r.fresh); err != nil {
		return err
	}
	r.fresh = map[int32][]uint64{}
	if stats != nil {
		if err := r.w.WriteStats(stats); err != nil {
			return err
		}
	}
	return r.w.Flush()
}

func programsOf(probes []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range probes {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func runRecord(ctx context.Context, env *cmdEnv, args []string) (err error) {
	f, err := parseRecordFlags(args)
	if err != nil {
		return err
	}
	file, err := os.Create(f.out)
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}
	defer func() {
		if cerr := file.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("record: %w", cerr)
		}
	}()

	sess, err := session.Start(session.Config{PID: f.pid, Command: f.cmd, Stdin: env.stdin, Stdout: env.stdout, Stderr: env.stderr, Programs: f.probes})
	if err != nil {
		return err
	}
	defer sess.Close()
	pid, p := sess.PID, sess.Plan

	var progs []string
	for _, pr := range sess.Tracer.Probes() {
		progs = append(progs, pr.Program)
	}
	host, _ := os.Hostname()
	start := time.Now()
	meta := &record.Meta{Plan: p, Command: f.cmd, PID: pid, Start: start, Programs: programsOf(progs), Host: host,
		MonoStart: session.MonotonicNow(), Tool: "gmpwatch"}
	w, err := record.NewWriter(file, meta)
	if err != nil {
		return fmt.Errorf("record %s: %w", f.out, err)
	}
	rec := &recorder{w: w, sess: sess, bias: p.LoadBias, stacks: map[int32][]uint64{}, fresh: map[int32][]uint64{}}
	sm := sched.New(sched.Config{WaitReasons: p.WaitReasons, Symbolize: rec.sess.Sym.Symbolize})
	pm := paths.New(paths.Config{WaitReasons: p.WaitReasons, Symbolize: rec.sess.Sym.Symbolize,
		Stacks: func(id int32) []uint64 { return rec.stacks[id] }, MemProfileRate: f.memRate})

	fmt.Fprintf(env.stderr, "Recording PID %d (%s): %d probes to %s. Ctrl-C to end.\n", pid, p.GoVersion, len(progs), f.out)
	if err := sess.Run(func(ev *event.Event) {
		rec.handle(ev)
		sm.Handle(ev)
		pm.Handle(ev)
	}); err != nil {
		return err
	}
	exitCode := 0
	gc := newGCCounter(p, pid)
	defer gc.close()
	stats := func() *record.Stats {
		st := sess.Stats()
		return &record.Stats{Events: rec.count, Lost: st.Lost, Hits: st.Hits, Duration: time.Since(start), GCCycles: gc.read()}
	}

	if err := sess.Loop(ctx, f.duration, f.flush, func() error {
		st := stats()
		stacks := sess.Stacks()
		sess.Lock()
		rec.addStacks(stacks)
		err := rec.flush(st)
		sess.Unlock()
		if err != nil {
			return fmt.Errorf("record %s: %w", f.out, err)
		}
		return nil
	}); err != nil {
		return err
	}
	readErr := sess.Stop()
	final := stats() // the traced time, not the wait for the command below
	if sess.Launched() {
		exitCode = sess.Finish(ctx)
	}
	if sess.Launched() {
		final.ExitCode = &exitCode
	}
	rec.addStacks(sess.Stacks())
	if err := rec.flush(nil); err != nil {
		return fmt.Errorf("record %s: %w", f.out, err)
	}
	if err := w.Close(final); err != nil {
		return fmt.Errorf("record %s: %w", f.out, err)
	}
	fmt.Fprintf(env.stderr, "Recorded %d events (%d lost) in %s to %s.\n", final.Events, final.Lost, final.Duration.Round(time.Millisecond), f.out)

	if f.format != "" {
		sm.SetLost(final.Lost)
		if final.GCCycles != nil {
			pm.SetGCCycles(*final.GCCycles)
		}
		in := &export.Input{Meta: *meta, Stats: *final, Sched: sm.Total(0), Paths: pm, Symbolize: rec.sess.Sym.Symbolize}
		if f.format == "perfetto" || f.format == "jsonl" {
			// These need every event: read them back.
			if err := file.Sync(); err != nil {
				return err
			}
			rd, err := os.Open(f.out)
			if err != nil {
				return err
			}
			r, err := record.Read(rd)
			rd.Close()
			if err != nil {
				return fmt.Errorf("record %s: %w", f.out, err)
			}
			in = export.FromRecording(r, export.Options{MemProfileRate: f.memRate})
		}
		var out io.Writer = env.stdout
		if f.render != "" {
			rf, err := os.Create(f.render)
			if err != nil {
				return fmt.Errorf("render: %w", err)
			}
			defer rf.Close()
			out = rf
		}
		if err := export.Render(out, f.format, in); err != nil {
			return fmt.Errorf("render: %w", err)
		}
	}
	if readErr != nil {
		return readErr
	}
	if exitCode != 0 {
		return &exitError{code: exitCode}
	}
	return nil
}

// gcCounter counts the GC cycles the target completes, from the runtime's
// memstats.numgc read through /proc/PID/mem (no probe), polled so that the
// count is at most a poll period old when the target exits.
type gcCounter struct {
	mu          sync.Mutex
	first, last uint32
	ok          bool
	stop        chan struct{}
}

const gcPoll = 50 * time.Millisecond

func newGCCounter(p *plan.Plan, pid int) *gcCounter {
	g := &gcCounter{stop: make(chan struct{})}
	rt, err := rtstate.Open(p)
	if err != nil {
		return g
	}
	if !rt.HasGCCycles() {
		rt.Close()
		return g
	}
	if n, err := rt.GCCycles(); err == nil {
		g.first, g.last, g.ok = n, n, true
	}
	go func() {
		defer rt.Close()
		tick := time.NewTicker(gcPoll)
		defer tick.Stop()
		for {
			select {
			case <-g.stop:
				return
			case <-tick.C:
				n, err := rt.GCCycles()
				if err != nil {
					return // the target is gone: the last count stands
				}
				g.mu.Lock()
				g.last = n
				g.mu.Unlock()
			}
		}
	}()
	return g
}

// read returns the cycles completed since the counter started; nil when
// the target's layout does not tell them.
func (g *gcCounter) read() *uint32 {
	if !g.ok {
		return nil
	}
	g.mu.Lock()
	n := g.last - g.first
	g.mu.Unlock()
	return &n
}

// close stops the polling.
func (g *gcCounter) close() { close(g.stop) }
