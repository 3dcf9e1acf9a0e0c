package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
	"github.com/gmpwatch/gmpwatch/ebpf"
)

// runtimeFigures are what the runtime counts itself, read from its memory
// (the zero-overhead sampler): exact whatever the probes' duty cycle under
// an overhead budget (budget.ExactFigures). Counts cover the period.
type runtimeFigures struct {
	// Goroutines by status and "total", from the last scan of allgs (see
	// allgsScanner: a costly read, repeated less often on big programs).
	Goroutines map[string]int `json:"goroutines"`
	// Created counts goroutines created in the period (go1.26+; null on
	// releases that do not count them).
	Created *uint64 `json:"goroutines_created"`
	Threads int     `json:"threads"`
	// GCCycles completed in the period (null when the plan lacks
	// memstats.numgc).
	GCCycles *uint32 `json:"gc_cycles"`
	// SchedLatency is the runtime's own histogram over the period
	// (/sched/latencies:seconds: it records about 1 transition in 8).
	SchedLatency schedLatency `json:"sched_latency"`
}

// runtimeSampler reads runtimeFigures each interval.
type runtimeSampler struct {
	t *target
	// fromStart: the first period starts with the process (a launched
	// command), whose counters all start at zero.
	fromStart   bool
	first, prev *statLine
	firstS      *rtstate.Sched
	prevS       *rtstate.Sched
	allgs       *allgsScanner
}

// newRuntimeSampler opens p's memory and, unless fromStart, takes the first
// reading; nil if the memory cannot be read (the report then has no exact
// section).
func newRuntimeSampler(ctx context.Context, p *plan.Plan, fromStart bool, interval time.Duration) *runtimeSampler {
	rt, err := rtstate.Open(p)
	if err != nil {
		return nil
	}
	rs := &runtimeSampler{t: &target{plan: p, rt: rt}, fromStart: fromStart, allgs: &allgsScanner{rt: rt, interval: interval}}
	if !fromStart {
		sc, _ := rs.allgs.scan(ctx)
		if l, s, err := readStatScan(ctx, rs.t, nil, sc); err == nil {
			rs.first, rs.firstS, rs.prev, rs.prevS = l, s, l, s
		}
	}
	return rs
}

// started says whether there is a reading to count from.
func (rs *runtimeSampler) started() bool { return rs.fromStart || rs.prevS != nil }

// interval reads the runtime's state and returns the figures since the
// last reading; nil when the read failed (the target exited, or its
// runtime is not up yet).
func (rs *runtimeSampler) interval(ctx context.Context) *runtimeFigures {
	if rs == nil || !rs.started() {
		return nil
	}
	sc, _ := rs.allgs.scan(ctx)
	if sc == nil {
		return nil
	}
	l, s, err := readStatScan(ctx, rs.t, rs.prevS, sc)
	if err != nil {
		return nil
	}
	f := figuresBetween(rs.prev, l, rs.prevS, s)
	rs.prev, rs.prevS = l, s
	return f
}

// total reads the runtime's state once more and returns the figures from
// the first reading (or the process's start) to the last good one.
func (rs *runtimeSampler) total(ctx context.Context) *runtimeFigures {
	rs.interval(ctx)
	if rs == nil || rs.prevS == nil || rs.prevS == rs.firstS {
		return nil
	}
	return figuresBetween(rs.first, rs.prev, rs.firstS, rs.prevS)
}

// scan returns the last scan of the goroutines, nil if none.
func (rs *runtimeSampler) scan() *rtstate.GScan {
	if rs == nil {
		return nil
	}
	return rs.allgs.latest()
}

func (rs *runtimeSampler) close() {
	if rs != nil {
		rs.t.close()
	}
}

// figuresBetween gives the figures of the period between two readings; a
// nil from is the process's start.
func figuresBetween(from, to *statLine, fromS, toS *rtstate.Sched) *runtimeFigures {
	f := &runtimeFigures{Goroutines: to.Goroutines, Threads: to.Threads, Created: to.Created, GCCycles: to.GCCycles}
	h, ok := toS.TimeToRun, true
	if from != nil {
		if from.Created != nil && to.Created != nil {
			d := *to.Created - *from.Created
			f.Created = &d
		}
		if from.GCCycles != nil && to.GCCycles != nil {
			d := *to.GCCycles - *from.GCCycles
			f.GCCycles = &d
		}
		h, ok = toS.TimeToRun.Sub(fromS.TimeToRun)
	}
	f.SchedLatency = latencyOf(h)
	f.SchedLatency.Torn = !ok
	return f
}

// writeRuntimeFigures prints the figures as one line of the text report.
func writeRuntimeFigures(w io.Writer, f *runtimeFigures) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Runtime (exact, its own counters): goroutines %d", f.Goroutines["total"])
	if f.Created != nil {
		fmt.Fprintf(&b, ", %d created", *f.Created)
	}
	fmt.Fprintf(&b, ", threads %d", f.Threads)
	if f.GCCycles != nil {
		fmt.Fprintf(&b, ", %d GC cycles", *f.GCCycles)
	}
	l := f.SchedLatency
	fmt.Fprintf(&b, "; sched latency p50 %s p90 %s p99 %s (%d sampled by the runtime, 1 in 8)\n",
		sched.FormatNs(uint64(l.P50)), sched.FormatNs(uint64(l.P90)), sched.FormatNs(uint64(l.P99)), l.Count)
	_, err := io.WriteString(w, b.String())
	return err
}

// kernelFigures turns a period's aggregates and the last scan of the
// goroutines (nil: none) into the model's KernelFigures.
func kernelFigures(a *ebpf.Aggregates, scan *rtstate.GScan) *sched.KernelFigures {
	k := &sched.KernelFigures{Latency: a.SchedLatency, Waits: map[uint8]sched.WaitCount{}, Sites: map[uint64]sched.SiteCount{}}
	for r, w := range a.Waits {
		k.Waits[r] = sched.WaitCount{Ended: w.Ended, TotalNs: w.TotalNs}
	}
	for pc, s := range a.Sites {
		k.Sites[pc] = sched.SiteCount{Created: s.Created, Exited: s.Exited}
	}
	if scan != nil {
		k.ByStatus = scan.Counts()
		k.AliveBySite, k.WaitingByReason = map[uint64]uint64{}, map[uint8]uint64{}
		for _, g := range scan.Goroutines {
			k.AliveBySite[g.GoPC]++
			if g.Status == event.StatusWaiting {
				k.WaitingByReason[g.WaitReason]++
			}
		}
	}
	return k
}

// kernelReader reads the aggregates each period.
type kernelReader struct {
	tr   *ebpf.Tracer
	prev *ebpf.Aggregates
}

// interval returns the aggregates since the last call; nil if unreadable.
func (kr *kernelReader) interval() *ebpf.Aggregates {
	a, err := kr.tr.Aggregates()
	if err != nil {
		return nil
	}
	d := a
	if kr.prev != nil {
		d = a.Sub(kr.prev)
	}
	kr.prev = a
	return d
}

// total returns the aggregates since the attach; nil if unreadable.
func (kr *kernelReader) total() *ebpf.Aggregates {
	a, err := kr.tr.Aggregates()
	if err != nil {
		return nil
	}
	return a
}
