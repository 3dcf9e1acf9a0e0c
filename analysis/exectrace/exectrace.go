// Package exectrace measures scheduling latency from a Go execution trace
// (a runtime/trace file, read with golang.org/x/exp/trace), so that the
// latencies gmpwatch measures with eBPF can be checked against what the
// runtime's own tracer saw for a run of the same workload.
//
// Two definitions are computed in one pass over the trace:
//
//   - Latencies.Samples: every goroutine transition GoRunnable → GoRunning,
//     each measured from the transition that made the goroutine runnable
//     (creation, unblock, yield, preemption) to the one that made it run.
//     This is gmpwatch's definition (analysis/sched). A goroutine found
//     runnable when the trace starts has no known start and gives no sample.
//
//   - Latencies.Pprof: the scheduler delay exactly as `go tool trace
//     -pprof=sched` reports it (cmd/trace's computePprofSched in Go 1.26 and
//     1.27). That tool tracks each goroutine from its first transition into
//     GoRunnable to its next transition into any other state, and clips that
//     span to the goroutine's life as internal/trace's summary sees it: from
//     the first time it ran in the trace to its end. The clipping drops each
//     goroutine's first run in the trace, so a new goroutine's creation →
//     first run (and a goroutine's first wakeup after the trace starts) is
//     not in the pprof total. Latencies.FirstRuns and FirstRunTotal count
//     exactly those samples, so for a trace where a runnable goroutine
//     always leaves GoRunnable for GoRunning,
//     Total == Pprof.Total + FirstRunTotal.
//
// Trace timestamps on Linux are nanotime()/64, so every latency is a multiple
// of 64ns (the reader adds 1ns where two events share a timestamp): small
// quantiles come in 64ns steps.
//
// The package is tested on traces of Go 1.26 and Go 1.27 (both write trace
// version 1.26); x/exp/trace reads older ones too. A trace that is garbage,
// or cut short, is an error: unlike
// `go tool trace`, which keeps the complete generations of a damaged trace,
// this package reports no figures for it. A trace cut exactly between two
// generations cannot be told from a complete one.
package exectrace

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"golang.org/x/exp/trace"
)

// Latencies are the scheduling latencies found in one execution trace.
type Latencies struct {
	// Samples holds one duration per GoRunnable → GoRunning transition with
	// a known start, sorted ascending.
	Samples []time.Duration
	// Total is the sum of Samples.
	Total time.Duration
	// FirstRuns is how many of Samples are a goroutine's first run in the
	// trace (after its creation, or its first wakeup after the trace
	// started); `go tool trace -pprof=sched` leaves these out.
	FirstRuns int
	// FirstRunTotal is the sum of those first-run samples.
	FirstRunTotal time.Duration
	// Pprof is what `go tool trace -pprof=sched` reports for the trace.
	Pprof Pprof
}

// Pprof is the scheduler-latency profile of `go tool trace -pprof=sched`
// summed over all stacks: the sums of its "contentions" and "delay" sample
// values.
type Pprof struct {
	Count int64
	Total time.Duration
}

// Quantile returns the q-quantile (0 ≤ q ≤ 1) of the samples by nearest
// rank: the smallest sample such that at least q of all samples are less
// than or equal to it. Quantile(0) is the minimum, Quantile(1) the maximum;
// with no samples it returns 0.
func (l *Latencies) Quantile(q float64) time.Duration {
	n := len(l.Samples)
	if n == 0 || math.IsNaN(q) {
		return 0
	}
	// The small margin keeps q*n that is an integer but for rounding
	// (0.07*100) from moving up one rank.
	i := int(math.Ceil(q*float64(n)-1e-9)) - 1
	i = max(0, min(i, n-1))
	return l.Samples[i]
}

// SchedLatencies reads a runtime/trace file from r and returns its
// scheduling latencies. It returns an error, never partial figures, for a
// trace it cannot read to the end.
func SchedLatencies(r io.Reader) (l *Latencies, err error) {
	// The trace is input from outside: a parser bug on a corrupt file is
	// reported as an error, not a crash of the caller.
	defer func() {
		if p := recover(); p != nil {
			l, err = nil, fmt.Errorf("exectrace: trace reader failed on a corrupt trace: %v", p)
		}
	}()
	tr, err := trace.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("exectrace: reading trace header: %w", err)
	}
	var c collector
	c.gs = make(map[trace.GoID]*gState)
	events := 0
	for {
		ev, err := tr.ReadEvent()
		if err == io.EOF { // the reader's end of stream, never wrapped; a wrapped EOF is a cut trace
			break
		}
		if err != nil {
			return nil, fmt.Errorf("exectrace: reading trace after %d events: %w", events, err)
		}
		if ev.Kind() != trace.EventSync {
			events++ // the reader makes up a Sync event for any stream
		}
		c.event(&ev)
	}
	if events == 0 {
		return nil, errors.New("exectrace: trace holds no events")
	}
	return c.finish(), nil
}

// PprofSchedTotal reads a runtime/trace file from r and returns the total
// scheduler delay `go tool trace -pprof=sched` reports for it.
func PprofSchedTotal(r io.Reader) (time.Duration, error) {
	l, err := SchedLatencies(r)
	if err != nil {
		return 0, err
	}
	return l.Pprof.Total, nil
}

// gState is what the collector keeps of one goroutine.
type gState struct {
	// runnableSince is when the goroutine entered GoRunnable; zero when it
	// is not runnable. It is the start of cmd/trace's tracked span.
	runnableSince trace.Time
	// startKnown tells that runnableSince is a real transition into
	// GoRunnable, not the goroutine's state when the trace began.
	startKnown bool
	// startTime is internal/trace's GoroutineSummary.StartTime for the
	// current life of the goroutine: the first time it ran, zero until then.
	startTime trace.Time
	// pprofCount and pprofTotal are this life's contribution to the
	// -pprof=sched profile.
	pprofCount int64
	pprofTotal time.Duration
	// allCount and allTotal sum every span of the goroutine ID, in all its
	// lives. cmd/trace counts them whole when the last life never ran: that
	// life's interval is then [0, end], which holds them all.
	allCount int64
	allTotal time.Duration
}

type collector struct {
	gs      map[trace.GoID]*gState
	samples []time.Duration
	total   time.Duration
	firstN  int
	firstT  time.Duration
}

func (c *collector) event(ev *trace.Event) {
	if ev.Kind() != trace.EventStateTransition {
		return
	}
	st := ev.StateTransition()
	if st.Resource.Kind != trace.ResourceGoroutine {
		return
	}
	id := st.Resource.Goroutine()
	from, to := st.Goroutine()
	now := ev.Time()

	g := c.gs[id]
	// internal/trace's Summarizer starts a new GoroutineSummary when a
	// goroutine comes out of GoUndetermined (first seen) or GoNotExist
	// (created); cmd/trace then clips every span of the ID to the interval of
	// that last summary, which zeroes whatever an earlier life of the same ID
	// contributed.
	if from != to && (from == trace.GoUndetermined || from == trace.GoNotExist) {
		if g == nil {
			g = &gState{}
			c.gs[id] = g
		}
		g.startTime = 0
		g.pprofCount, g.pprofTotal = 0, 0
	}
	if g == nil {
		// A goroutine the trace never introduced; the reader does not
		// produce these, but stay safe.
		g = &gState{}
		c.gs[id] = g
	}

	// cmd/trace's tracking: start on a transition into GoRunnable (even a
	// GoRunnable → GoRunnable one), end on the next transition into any
	// other state.
	if g.runnableSince == 0 {
		if to == trace.GoRunnable {
			g.runnableSince = now
			g.startKnown = from != trace.GoUndetermined
		}
	} else if to != trace.GoRunnable {
		start := g.runnableSince
		g.runnableSince = 0
		d := now.Sub(start)
		if to == trace.GoRunning && g.startKnown {
			c.samples = append(c.samples, d)
			c.total += d
			if g.startTime == 0 {
				c.firstN++
				c.firstT += d
			}
		}
		// The span [start, now] overlaps the goroutine's life
		// [startTime, end] by now - max(start, startTime) when
		// startTime < now; end is never before now. When the goroutine runs
		// for the first time now, startTime becomes now and the overlap
		// is empty.
		if g.startTime != 0 && g.startTime < now {
			if o := now.Sub(max(start, g.startTime)); o > 0 {
				g.pprofCount++
				g.pprofTotal += o
			}
		}
		if d > 0 {
			g.allCount++
			g.allTotal += d
		}
	}

	// The Summarizer sets StartTime on the first transition into GoRunning,
	// skipping no-op transitions.
	if to == trace.GoRunning && from != to && g.startTime == 0 {
		g.startTime = now
	}
}

func (c *collector) finish() *Latencies {
	l := &Latencies{
		Samples:       c.samples,
		Total:         c.total,
		FirstRuns:     c.firstN,
		FirstRunTotal: c.firstT,
	}
	slices.Sort(l.Samples)
	for _, g := range c.gs {
		if g.startTime == 0 {
			// The last life never ran: cmd/trace's interval for the ID is
			// [0, end], and every span of the ID counts whole.
			l.Pprof.Count += g.allCount
			l.Pprof.Total += g.allTotal
			continue
		}
		l.Pprof.Count += g.pprofCount
		l.Pprof.Total += g.pprofTotal
	}
	return l
}
