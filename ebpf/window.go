package ebpf

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/gmpwatch/gmpwatch/analysis/budget"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/procmem"
)

// WindowOptions configure NewWindowed.
type WindowOptions struct {
	// Budget is the overhead budget; the zero value means budget.Default().
	Budget budget.Spec
	// Calibration gives the per-hit costs; nil calls Calibrated("").
	Calibration *Calibration
	// Period, MinWindow and MaxPeriod shape the windows (budget.Schedule);
	// zero takes the budget package's defaults.
	Period, MinWindow, MaxPeriod time.Duration
	// OnWindow, if set, is called before the window of the hot programs
	// opens (open: before the first attach) and after it closed (after the
	// last detach), with the CLOCK_MONOTONIC time the events' timestamps
	// use: every event of the window falls in between, and a model can
	// forget what it knew of each goroutine at an open (transitions
	// between windows were not seen).
	OnWindow func(open bool, mono time.Duration)
}

// Windowed keeps a Tracer's probes within an overhead budget: it attaches
// the cheap programs all the time and the hot ones in windows whose duty
// cycle follows the budget (analysis/budget), detaching them in between, so
// that a detached probe costs the target nothing.
//
// Opening a window is cheap (an attach takes well under a millisecond).
// Closing one costs what the link kind makes it: uprobe_multi links are
// detached together and their breakpoints are out of the target within
// 5-10 ms on a busy 2-core VM (each close then waits for a grace period,
// and the waits overlap); perf-event uprobes detach one after the other,
// 60-70 ms each with the probes not yet detached still trapping. A window
// counts as open from its first attach to its last detach returning (an
// upper bound); the controller learns that fixed cost and stretches the
// period to keep the duty cycle, and the hottest program goes first.
//
// Run starts with a short window of everything (Attach left every probe on)
// to measure the rates; the cheap programs then stay attached. Between
// windows it checks that they stay cheap, and ends the period early if not.
//
// It takes over the Tracer's links: Tracer.Close still detaches everything.
type Windowed struct {
	t    *Tracer
	ex   *link.Executable
	opts WindowOptions
	cal  *Calibration
	byPr map[string][]*switchLink // program → its probes
	// watch reads the probed instructions' first bytes in the target, to
	// tell when the detached breakpoints are out (nil if unreadable).
	watch *breakpointWatch
	// costs is each program's per-hit cost, ns.
	costs map[string]float64

	mu  sync.Mutex
	ctl *budget.Controller
}

// NewWindowed puts t's probes under a budget. p is the plan t was attached
// with. Run drives the windows.
func NewWindowed(t *Tracer, p *plan.Plan, opts WindowOptions) (*Windowed, error) {
	if opts.Budget == (budget.Spec{}) {
		opts.Budget = budget.Default()
	}
	cal := opts.Calibration
	if cal == nil {
		var err error
		if cal, err = Calibrated(""); err != nil {
			return nil, err
		}
	}
	// The executable Attach opened: the target may be gone by now, and
	// its /proc/PID/exe with it.
	w := &Windowed{t: t, ex: t.ex, opts: opts, cal: cal, byPr: map[string][]*switchLink{}}
	w.watch = newBreakpointWatch(p, t.pid, t.probes)

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.final != nil {
		return nil, errors.New("windows: tracer closed")
	}
	for i, pr := range t.probes {
		prog := t.coll.Programs[pr.Program]
		if prog == nil {
			return nil, fmt.Errorf("windows: no program %q loaded", pr.Program)
		}
		if _, ok := t.links[i].(*switchLink); ok {
			return nil, errors.New("windows: tracer already windowed")
		}
		sl := &switchLink{w: w, prog: prog, probe: pr, cur: t.links[i]}
		t.links[i] = sl
		w.byPr[pr.Program] = append(w.byPr[pr.Program], sl)
	}
	w.costs = cal.ProgramCosts(t.probes)
	w.ctl = budget.NewController(budget.Config{
		Spec:        opts.Budget,
		CostNs:      w.costs,
		Calibration: cal.String(),
		Period:      opts.Period,
		MinWindow:   opts.MinWindow,
		MaxPeriod:   opts.MaxPeriod,
		// Until measured: every probe attached one after the other, and
		// detached so too unless the links detach together.
		OpenClose: openCloseGuess(t.kind, len(t.probes), cal),
	})
	return w, nil
}

// Report says how the figures were obtained so far.
func (w *Windowed) Report() budget.Report {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ctl.Report()
}

// Calibration returns the per-hit costs in use.
func (w *Windowed) Calibration() *Calibration { return w.cal }

// Run opens and closes the windows until ctx is done or the tracer is
// closed, and returns nil then. Every period it reads the kernel's hit
// counters and the target's CPU time and lets the controller decide the
// next one.
func (w *Windowed) Run(ctx context.Context) error {
	if w.watch != nil {
		defer w.watch.mem.Close()
	}
	cpu := processCPU(w.t.pid)
	hits := func() map[string]uint64 { return w.t.Stats().Hits }
	sleep := func(d time.Duration) bool {
		if d <= 0 {
			return true
		}
		tm := time.NewTimer(d)
		defer tm.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-w.t.closing:
			return false
		case <-tm.C:
			return true
		}
	}
	// Attach left every probe on: measure the rates for a short window
	// first, so that the cheap programs never need detaching.
	{
		start, h0, c0 := time.Now(), hits(), cpu()
		w.notify(true)
		ok := sleep(w.minWindow())
		elapsed := time.Since(start)
		h1 := hits()
		o := budget.Observation{Elapsed: elapsed, Window: elapsed, Hits: map[string]uint64{},
			Attached: map[string]time.Duration{}, TargetCPU: max(0, cpu()-c0)}
		o.TargetCPUInWindow = o.TargetCPU
		for name := range w.byPr {
			o.Hits[name] = h1[name] - h0[name]
			o.Attached[name] = elapsed
		}
		w.mu.Lock()
		w.ctl.Observe(o)
		w.mu.Unlock()
		if !ok {
			w.notify(false)
			return nil
		}
	}
	first := true
	for {
		w.mu.Lock()
		dec := w.ctl.Decision()
		window, period, _ := w.ctl.Schedule()
		w.mu.Unlock()
		var always, hot []string
		for name := range w.byPr {
			if dec.Modes[name] == budget.Windowed {
				hot = append(hot, name)
			} else {
				always = append(always, name)
			}
		}

		start := time.Now()
		h0, c0 := hits(), cpu()
		if err := w.set(always, true); err != nil {
			return w.endErr(err)
		}
		var win, openClose, cIn time.Duration
		ok := true
		if len(hot) > 0 {
			// The window is open from the first attach to the last
			// detach: each takes the kernel tens of ms on a busy target.
			if !first {
				w.notify(true)
			}
			open, cOpen := time.Now(), cpu()
			if err := w.set(hot, true); err != nil {
				return w.endErr(err)
			}
			attached := time.Since(open)
			ok = sleep(window)
			detach := time.Now()
			out, err := w.detachWatched(hot)
			if err != nil {
				return w.endErr(err)
			}
			cIn = max(0, cpu()-cOpen)
			win = out.Sub(open)
			openClose = attached + out.Sub(detach)
			w.notify(false)
		} else if first {
			w.notify(false)
		}
		first = false
		// Between windows, read the target's CPU clock now and then (the
		// last reading stands once the target is gone), and end the period
		// early when the always-on programs got hot: their cost would
		// otherwise run unchecked until the next window.
		for ok {
			left := period - time.Since(start)
			if left <= 0 {
				break
			}
			ok = sleep(min(left, 250*time.Millisecond))
			cpu()
			if w.alwaysTooHot(always, h0, time.Since(start), dec.AllowedCores) {
				break
			}
		}
		elapsed := time.Since(start)
		h1, c1 := hits(), cpu()
		o := budget.Observation{Elapsed: elapsed, Window: win, Hits: map[string]uint64{},
			Attached: map[string]time.Duration{}, TargetCPU: max(0, c1-c0), TargetCPUInWindow: cIn,
			OpenClose: openClose}
		for name := range w.byPr {
			o.Hits[name] = h1[name] - h0[name]
			o.Attached[name] = elapsed
		}
		for _, name := range hot {
			o.Attached[name] = win
		}
		w.mu.Lock()
		w.ctl.Observe(o)
		w.mu.Unlock()
		if !ok {
			return nil
		}
	}
}

// detachWatched detaches the programs' probes and returns when their
// breakpoints were last seen in the target: the kernel takes them out at
// the start of each detach, and then waits for a grace period that costs
// the target nothing. Without a readable target it returns when the last
// detach did.
func (w *Windowed) detachWatched(progs []string) (time.Time, error) {
	var addrs []uint64
	for _, name := range progs {
		for _, sl := range w.byPr[name] {
			addrs = append(addrs, sl.probe.Address)
		}
	}
	watched := make(chan time.Time, 1)
	stop := make(chan struct{})
	if w.watch != nil {
		go func() { watched <- w.watch.waitOut(addrs, stop) }()
	}
	err := w.set(progs, false)
	done := time.Now()
	close(stop)
	if w.watch == nil {
		return done, err
	}
	if out := <-watched; out.Before(done) {
		return out, err
	}
	return done, err
}

// openCloseGuess is the time a window of n probes takes to open and close
// before one was measured.
func openCloseGuess(kind LinkKind, n int, cal *Calibration) time.Duration {
	us := float64(n) * (cal.AttachUs + cal.DetachUs)
	if kind == UprobeMultiLinks {
		us = float64(n)*cal.AttachUs + cal.DetachUs
	}
	return time.Duration(us * float64(time.Microsecond))
}

// alwaysTooHot reports whether the always-on programs cost more than the
// whole allowance since the period started (they were given half of it).
func (w *Windowed) alwaysTooHot(always []string, h0 map[string]uint64, elapsed time.Duration, allowed float64) bool {
	if len(always) == 0 || elapsed < 100*time.Millisecond || w.opts.Budget.Max {
		return false
	}
	h := w.t.Stats().Hits
	var ns float64
	for _, name := range always {
		ns += float64(h[name]-h0[name]) * w.costs[name]
	}
	return ns/float64(elapsed) > allowed
}

// endErr turns an attach error into the end of Run when the target is gone.
func (w *Windowed) endErr(err error) error {
	if errors.Is(err, syscall.ESRCH) || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	select {
	case <-w.t.closing:
		return nil
	default:
	}
	return err
}

func (w *Windowed) minWindow() time.Duration {
	if w.opts.MinWindow > 0 {
		return w.opts.MinWindow
	}
	return budget.DefaultMinWindow
}

func (w *Windowed) notify(open bool) {
	if w.opts.OnWindow == nil {
		return
	}
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	w.opts.OnWindow(open, time.Duration(ts.Nano()))
}

// set attaches (on) the programs' probes one after the other, the hottest
// last, or detaches them all together (closeLinks; perf-event uprobes are
// serialized by the kernel anyway, the hottest then goes first). The
// window counts as open until the last detach returns.
func (w *Windowed) set(progs []string, on bool) error {
	rates := map[string]float64{}
	w.mu.Lock()
	for _, pr := range w.ctl.Report().Programs {
		rates[pr.Name] = pr.RatePerSec
	}
	w.mu.Unlock()
	progs = slices.Clone(progs)
	slices.SortStableFunc(progs, func(a, b string) int {
		if on {
			return cmp.Compare(rates[a], rates[b])
		}
		return cmp.Compare(rates[b], rates[a])
	})
	var errs []error
	var off []link.Link
	for _, name := range progs {
		for _, sl := range w.byPr[name] {
			if on {
				errs = append(errs, sl.on())
			} else if l := sl.take(); l != nil {
				off = append(off, l)
			}
		}
	}
	errs = append(errs, closeLinks(off))
	return errors.Join(errs...)
}

// switchLink stands in the Tracer's links for one probe that Windowed
// attaches and detaches. The embedded link.Link is nil: it only makes the
// type a link.Link; Tracer uses Close alone.
type switchLink struct {
	link.Link
	w     *Windowed
	prog  *ebpf.Program
	probe plan.Probe

	mu     sync.Mutex
	cur    link.Link
	closed bool
}

func (s *switchLink) on() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.cur != nil {
		return nil
	}
	l, err := s.w.t.kind.attach(s.w.ex, s.probe.Symbol, s.prog, s.probe.FileOffset, s.w.t.pid, cookie(s.probe))
	if err != nil {
		if s.probe.Optional {
			return nil
		}
		return fmt.Errorf("attach %s: %w", s.probe.Symbol, classify(err))
	}
	s.cur = l
	return nil
}

// take detaches the link from s and returns it for closing.
func (s *switchLink) take() link.Link {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.cur
	s.cur = nil
	return l
}

// Close detaches the probe for good.
func (s *switchLink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.cur == nil {
		return nil
	}
	err := s.cur.Close()
	s.cur = nil
	return err
}

// breakpointWatch tells when uprobe breakpoints are out of a target, by
// reading the probed instructions' first bytes from its memory (read only)
// and comparing them with the file's.
type breakpointWatch struct {
	mem  *procmem.Reader
	bias uint64
	orig map[uint64]byte // link-time address → the file's byte there
}

func newBreakpointWatch(p *plan.Plan, pid int, probes []plan.Probe) *breakpointWatch {
	f, err := os.Open(p.Path)
	if err != nil {
		return nil
	}
	defer f.Close()
	mem, err := procmem.Open(pid)
	if err != nil {
		return nil
	}
	bw := &breakpointWatch{mem: mem, bias: p.LoadBias, orig: map[uint64]byte{}}
	for _, pr := range probes {
		var b [1]byte
		if _, err := f.ReadAt(b[:], int64(pr.FileOffset)); err != nil || b[0] == int3 {
			mem.Close()
			return nil
		}
		bw.orig[pr.Address] = b[0]
	}
	return bw
}

// int3 is the breakpoint instruction a uprobe writes over the probed one.
const int3 = 0xcc

// waitOut polls until no address in addrs holds a breakpoint, or stop is
// closed, and returns when it last saw one (now if it never did).
func (bw *breakpointWatch) waitOut(addrs []uint64, stop <-chan struct{}) time.Time {
	last := time.Now()
	var b [1]byte
	for {
		in := false
		for _, a := range addrs {
			if _, err := bw.mem.ReadAt(b[:], a+bw.bias); err == nil && b[0] != bw.orig[a] {
				in = true
				break
			}
		}
		if !in {
			return last
		}
		last = time.Now()
		select {
		case <-stop:
			return last
		case <-time.After(200 * time.Microsecond):
		}
	}
}

// processCPU returns a function reading the CPU time of process pid (all
// its threads, nanosecond resolution) from its process CPU-time clock.
// It is not safe for concurrent use.
func processCPU(pid int) func() time.Duration {
	// MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
	// Once the process is gone, the last reading stands.
	clk := int32(^uint32(pid)<<3 | 2)
	var last time.Duration
	return func() time.Duration {
		var ts unix.Timespec
		if unix.ClockGettime(clk, &ts) == nil {
			last = time.Duration(ts.Nano())
		}
		return last
	}
}
