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

	"github.com/gmpwatch/gmpwatch/analysis/regress"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
	"github.com/gmpwatch/gmpwatch/ebpf"
	"github.com/gmpwatch/gmpwatch/internal/session"
)

// ebpfMeasurer measures one run of `ci run` under gmpwatch's probes: the
// command is started stopped before its first instruction, the probes are
// attached (without stacks), it is released, and every scheduler
// transition of its life feeds the scheduler model (analysis/sched) whose
// total, when the command has ended and the ring buffer is drained, is the
// run's measurement. It lives here, not in analysis/regress, which must
// not import cilium/ebpf.
type ebpfMeasurer struct {
	// notes receives warnings about a run (lost events); nil: none.
	notes io.Writer
	// report is the model's total of the run, kept for tests.
	report *sched.Report
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
	cfg := session.Config{Command: argv, NoStacks: true, Stdin: stdin}
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
	model := sched.New(sched.Config{WaitReasons: p.WaitReasons, Symbolize: sess.Sym.Symbolize})
	if err := sess.Run(model.Handle); err != nil {
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
	now := session.MonotonicNow()
	readErr := sess.Stop() // drains the ring buffer into the model
	m.lost = sess.Stats().Lost
	sess.Lock()
	model.SetLost(m.lost)
	m.report = model.Total(now)
	sess.Unlock()

	o := regress.Outcome{ExitStatus: code, GoVersion: p.GoVersion, Metrics: metricsOf(m.report)}
	if killed && code == 128+int(syscall.SIGKILL) {
		o.ExitStatus, o.Signal = -1, "SIGKILL"
	}
	if readErr != nil {
		return o, fmt.Errorf("read events: %w", readErr)
	}
	if m.lost > 0 && m.notes != nil {
		fmt.Fprintf(m.notes, "gmpwatch ci: warning: %s lost %d of %d events (ring buffer full): its counts are low\n",
			argv[0], m.lost, m.report.Events+m.lost)
	}
	return o, nil
}

// metricsOf is a run's metrics from the model's total.
func metricsOf(r *sched.Report) regress.Metrics {
	l := r.SchedLatency
	created, threads := int64(r.Goroutines.Created), int64(r.ThreadsCreated)
	blocked := map[string]int64{}
	for _, w := range r.WaitReasons {
		if w.Count > 0 {
			blocked[w.Reason] += int64(w.TotalNs)
		}
	}
	return regress.Metrics{
		SchedLatency: regress.Latency{
			Count:  l.Count,
			P50NS:  int64(l.P50Ns),
			P90NS:  int64(l.P90Ns),
			P99NS:  int64(l.P99Ns),
			P999NS: int64(bucketQuantile(l.Histogram, l.MaxNs, 0.999)),
			MaxNS:  int64(l.MaxNs),
		},
		GoroutinesCreated: &created,
		ThreadsCreated:    &threads,
		BlockedNSByReason: blocked,
	}
}

// bucketQuantile is the q-quantile of a histogram's non-empty buckets the
// way sched.Histogram.Quantile computes p50..p99 (the report carries no
// p99.9): the upper bound of the bucket holding the value of rank
// ceil(q*n), at most the maximum.
func bucketQuantile(buckets []sched.Bucket, max uint64, q float64) uint64 {
	var n uint64
	for _, b := range buckets {
		n += b.Count
	}
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank < 1 {
		rank = 1
	}
	var cum uint64
	for _, b := range buckets {
		cum += b.Count
		if cum >= rank {
			return min(b.HiNs, max)
		}
	}
	return max
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
