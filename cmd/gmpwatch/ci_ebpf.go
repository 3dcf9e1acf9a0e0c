package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"syscall"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/regress"
	"github.com/gmpwatch/gmpwatch/ebpf"
	"github.com/gmpwatch/gmpwatch/internal/session"
)

// ebpfMeasurer measures one run of `ci run` under gmpwatch's probes: the
// command is started stopped before its first instruction, the programs that
// feed the in-kernel aggregates are attached (no event is streamed: every
// figure of a run needs no per-event record), it is released, and when it
// has ended the aggregates of its whole life are the run's measurement. It
// lives here, not in analysis/regress, which must not import cilium/ebpf.
type ebpfMeasurer struct {
	// notes receives warnings about a run; nil: none.
	notes io.Writer
	// agg and waitReasons are the run's aggregates and the names of its
	// wait reasons, kept for tests.
	agg         *ebpf.Aggregates
	waitReasons plan.WaitReasons
	// lost is the events the kernel could not queue during the run.
	lost uint64
	// startErr is why the session did not start, if it did not.
	startErr error
}

// Method implements regress.Measurer.
func (*ebpfMeasurer) Method() string { return regress.MethodEBPF }

// Run implements regress.Measurer.
func (m *ebpfMeasurer) Run(ctx context.Context, argv []string, stdout, stderr *os.File) (regress.Outcome, error) {
	notRun := regress.Outcome{ExitStatus: -1}
	if len(argv) == 0 {
		return notRun, fmt.Errorf("%w: no command", regress.ErrNotStarted)
	}
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		return notRun, fmt.Errorf("%w: %w", regress.ErrNotStarted, err)
	}
	defer stdin.Close()
	cfg := session.Config{Command: argv, AggregateOnly: true, Stdin: stdin}
	// Nil interfaces, not nil *os.File, for the streams not given.
	if stdout != nil {
		cfg.Stdout = stdout
	}
	if stderr != nil {
		cfg.Stderr = stderr
	}
	// On an error the session killed the command before its first
	// instruction: it did not run.
	sess, err := session.Start(cfg)
	if err != nil {
		m.startErr = err
		return notRun, fmt.Errorf("%w: %w", regress.ErrNotStarted, err)
	}
	defer sess.Close()
	p := sess.Plan
	m.waitReasons = p.WaitReasons
	if err := sess.Run(func(*event.Event) {}); err != nil {
		return notRun, fmt.Errorf("%w: release %s: %w", regress.ErrNotStarted, argv[0], err)
	}

	killed := false
	cancel, readDone := ctx.Done(), sess.ReadDone()
wait:
	for {
		select {
		case <-sess.Exited():
			break wait
		case <-cancel:
			// The timeout or the end of ci: kill it and see it end.
			_ = syscall.Kill(sess.PID, syscall.SIGKILL)
			killed, cancel = true, nil
		case rerr := <-readDone:
			sess.SetReadErr(rerr)
			readDone = nil
		}
	}
	code := sess.Finish(context.Background())
	readErr := sess.Stop() // detaches; the aggregates stay readable
	st := sess.Stats()
	m.lost = st.Lost
	agg, err := sess.Tracer.Aggregates()
	if err != nil {
		return notRun, fmt.Errorf("read the aggregates: %w", err)
	}
	m.agg = agg
	threads := int64(st.Hits["newm"] - st.RefiresBy["newm"])
	o := regress.Outcome{ExitStatus: code, GoVersion: p.GoVersion, Metrics: metricsOf(agg, p.WaitReasons, threads)}
	if killed && code == 128+int(syscall.SIGKILL) {
		o.ExitStatus, o.Signal = -1, "SIGKILL"
	}
	if readErr != nil {
		return o, fmt.Errorf("read events: %w", readErr)
	}
	if n := agg.SitesFull; n > 0 && m.notes != nil {
		fmt.Fprintf(m.notes, "gmpwatch ci: warning: %s: %d creations or exits beyond the site map: goroutines created is low\n", argv[0], n)
	}
	return o, nil
}

// metricsOf is a run's metrics from its in-kernel aggregates: the latency
// quantiles are interpolated in the buckets of the runtime's own histogram
// layout (4 per power of two), the maximum is the top of the highest
// non-empty bucket.
func metricsOf(a *ebpf.Aggregates, reasons plan.WaitReasons, threads int64) regress.Metrics {
	h := a.SchedLatency
	var created int64
	for _, s := range a.Sites {
		created += int64(s.Created)
	}
	blocked := map[string]int64{}
	for r, w := range a.Waits {
		if w.Ended > 0 {
			blocked[reasons.Name(r)] += int64(w.TotalNs)
		}
	}
	q := func(x float64) int64 { return int64(math.Round(h.Quantile(x))) }
	return regress.Metrics{
		SchedLatency: regress.Latency{
			Count:  h.Total(),
			P50NS:  q(0.50),
			P90NS:  q(0.90),
			P99NS:  q(0.99),
			P999NS: q(0.999),
			MaxNS:  q(1),
		},
		GoroutinesCreated: &created,
		ThreadsCreated:    &threads,
		BlockedNSByReason: blocked,
	}
}

// ciMethod is how the runs of one `ci run` are measured: by eBPF, by the
// runtime's histogram, or (auto) by eBPF unless eBPF is not allowed, found
// at the first run, after which every run uses the histogram.
type ciMethod struct {
	method string // "auto", regress.MethodEBPF or regress.MethodRuntimeHistogram
	notes  io.Writer

	mu        sync.Mutex
	announced bool
	fallback  bool
}

// histogramNote describes the runtime-histogram method.
const histogramNote = "the runtime's own scheduling-latency histogram (sched.timeToRun, about 1 transition in 8), read from each run's memory as it exits; no wait reasons"

// newMeasurer returns a measurer for the next run.
func (c *ciMethod) newMeasurer() regress.Measurer {
	if c.method == regress.MethodRuntimeHistogram {
		c.announce("measuring with " + histogramNote)
		return &regress.HistogramMeasurer{}
	}
	return &autoMeasurer{c: c}
}

// announce says once how the runs are measured.
func (c *ciMethod) announce(note string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.announced {
		c.announced = true
		fmt.Fprintf(c.notes, "gmpwatch ci: %s\n", note)
	}
}

// autoMeasurer measures by eBPF, or by the runtime's histogram once eBPF
// was refused (method auto).
type autoMeasurer struct {
	c    *ciMethod
	used regress.Measurer
}

func (a *autoMeasurer) Method() string {
	if a.used != nil {
		return a.used.Method()
	}
	return regress.MethodEBPF
}

func (a *autoMeasurer) Run(ctx context.Context, argv []string, stdout, stderr *os.File) (regress.Outcome, error) {
	a.c.mu.Lock()
	fallback := a.c.fallback
	a.c.mu.Unlock()
	if !fallback {
		e := &ebpfMeasurer{notes: a.c.notes}
		a.used = e
		o, err := e.Run(ctx, argv, stdout, stderr)
		if err == nil || a.c.method != "auto" || e.startErr == nil || !notAllowed(e.startErr) {
			if err == nil {
				a.c.announce("measuring with gmpwatch's eBPF probes on the runtime's scheduler (every transition)")
			}
			return o, err
		}
		// Refused before the command's first instruction: it did not run.
		a.c.mu.Lock()
		a.c.fallback = true
		a.c.mu.Unlock()
		a.c.announce(fmt.Sprintf("eBPF not allowed (%v): measuring from %s", e.startErr, histogramNote))
	}
	h := &regress.HistogramMeasurer{}
	a.used = h
	return h.Run(ctx, argv, stdout, stderr)
}

// notAllowed reports whether a session failed for want of privilege: BPF
// refused (not root, no CAP_BPF/CAP_PERFMON) or the target's memory.
func notAllowed(err error) bool {
	var perm *session.PermissionError
	return errors.Is(err, ebpf.ErrPermission) || errors.As(err, &perm) || errors.Is(err, os.ErrPermission)
}
