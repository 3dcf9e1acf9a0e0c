package ebpf

// In-kernel aggregation: the figures that need no per-event record are
// computed by the BPF programs in maps (gmpwatch.bpf.c, "In-kernel
// aggregates"), so that a tracer can keep them without streaming events
// (Options.NoStream) or next to the stream.
//
//   - Scheduling latency (runnable -> running, the definition of
//     analysis/sched): a goroutine is stamped runnable (LRU hash
//     runnable_since, goid -> time) where the events mark it so: GoCreate
//     (unless created parked), GoUnpark (ready, each G of injectglist) and
//     GoSched (goschedImpl, yield or preemption). Its next GoStart (execute)
//     deletes the stamp and counts the difference in a per-CPU histogram
//     (sched_lat) with exactly the bucket layout of the Go runtime's
//     timeHistogram of go1.20 and later, so it reads as an rtstate.Histogram
//     in HistGo120 format and compares bucket for bucket with the runtime's
//     own /sched/latencies:seconds.
//   - Waits by reason: gopark stamps the goroutine (LRU hash parked_since,
//     goid -> time and wait reason) and counts a park for the reason; the
//     unpark (ready, injectglist) deletes the stamp and adds the wait to the
//     reason (per-CPU array wait_stats, one slot per reason byte). A G that
//     starts with its park stamp still there (netpoll hands the first ready
//     G straight to its M without injectglist; a park whose unlock function
//     failed resumes at once) ends its wait at the start, as the model does.
//   - Creation sites: per-CPU hash site_counts, creation PC (g.gopc, as
//     GoCreate carries it) -> created, exited; exits are attributed by the
//     exiting G's g.gopc, so goroutines created before the attach count in
//     their site's exits too.
//
// The timestamps are the events' (bpf_ktime_get_ns, CLOCK_MONOTONIC): with
// the stream on, each kernel latency and wait is exactly the one the model
// computes from the same two events.
//
// Caveats. The stamps live in LRU maps of AggregateStampEntries goroutines
// each: beyond that the least recently stamped are evicted (for parks, the
// oldest waits, often goroutines parked for good) and their latency or wait
// is not counted. A goroutine already runnable or parked at the attach, or
// made runnable by a path without probe, has no stamp: its start or unpark
// counts in UnstampedStarts or UnstampedUnparks instead. Parks count when
// they begin, waits when they end: a goroutine parked for good counts a
// park and no wait. The figures are cumulative since the attach: subtract
// two readings (Aggregates.Sub) for an interval.
//
// Cost: the aggregates add map operations to each hit of the programs that
// feed them (an LRU insert at creation, park, unpark and yield; a lookup and
// a delete at start and unpark). BenchmarkProbeCostAggregate measured on a
// noisy 2-CPU VM (empty-program floor 6.4 µs a hit): BPF time per hit,
// streaming without stacks, 690 -> 797 ns with the aggregates (gosched: one
// P yielding) and 1909 -> 2352 ns (spawn: 100000 goroutines on two CPUs,
// where the LRU's locks are shared); aggregate-only 379 and 784 ns, half to
// a third of streaming. Measurable, so Options.NoAggregate turns them off;
// against the trap's 6 to 10 µs it is a few percent of a hit.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
)

// ErrNoAggregates: the tracer was attached with Options.NoAggregate.
var ErrNoAggregates = errors.New("tracer attached without in-kernel aggregates")

// AggregatePrograms are the programs that feed the aggregates. In
// aggregate-only mode (Options.NoStream) the other default programs only
// count their hits: pass Options.Programs: AggregateProgramsFor(p) to spare
// the target their traps.
var AggregatePrograms = []string{"execute", "gopark", "ready", "goschedImpl", "goexit0", "newproc_runqput", "injectglist"}

// KernelOnlyPrograms are the default programs whose events feed nothing
// but figures the aggregates give (creations and unparks: latency, waits,
// creation sites, goroutines created): a tracer that reads the aggregates
// can name them in Options.NoStreamPrograms.
var KernelOnlyPrograms = []string{"ready", "newproc_runqput", "newproc1_ret", "injectglist"}

// AggregateProgramsFor returns the programs that feed the aggregates for the
// binary of p: the probe-points runtime patch's one attach point when the
// binary carries it, else those of AggregatePrograms that p has probes for
// (or a fallback for), since Attach fails on an explicit program it cannot
// attach.
func AggregateProgramsFor(p *plan.Plan) []string {
	if p == nil {
		return slices.Clone(AggregatePrograms)
	}
	if len(p.ProbesFor("probe_points")) > 0 {
		return []string{"probe_points"}
	}
	var out []string
	for _, name := range AggregatePrograms {
		if len(p.ProbesFor(name)) > 0 || len(p.ProbesFor(fallbacks[name])) > 0 {
			out = append(out, name)
		}
	}
	return out
}

// Sizes of the aggregate maps (gmpwatch.bpf.c).
const (
	// AggregateStampEntries is the number of goroutines the runnable and
	// the park stamps each hold (LRU: the least recently stamped go).
	AggregateStampEntries = 1 << 17
	// AggregateSiteEntries is the number of creation sites counted; the
	// creations and exits of sites beyond it count in SitesFull.
	AggregateSiteEntries = 16384
	// WaitReasonSlots is the number of wait reason slots: one per byte.
	WaitReasonSlots = 256
)

// Aggregates are the in-kernel aggregates, cumulative since the attach.
type Aggregates struct {
	// SchedLatency is the scheduling latency (runnable to running) of every
	// start whose runnable stamp was seen, in the runtime's timeHistogram
	// layout of go1.20+ (rtstate.HistGo120: Counts[0] underflow, then the
	// 160 buckets, then overflow at 2^47 ns).
	SchedLatency rtstate.Histogram
	// Waits are the parks and ended waits by wait reason index
	// (plan.Plan.WaitReasons names them); reasons never seen are absent.
	Waits map[uint8]WaitAgg
	// Sites are the goroutines created and exited by creation PC (g.gopc,
	// a return address in the target's address space: symbolize at pc-1).
	Sites map[uint64]SiteAgg

	// UnstampedStarts counts starts without a runnable stamp, whose
	// latency is unknown: goroutines runnable at the attach, made runnable
	// without an unpark probe (goyield, a coroutine switch, netpoll's
	// direct hand-off, a failed park), or whose stamp was evicted.
	UnstampedStarts uint64
	// UnstampedUnparks counts unparks without a park stamp, whose wait is
	// unknown: goroutines parked at the attach, parked without gopark
	// (preemption for the GC), or whose stamp was evicted.
	UnstampedUnparks uint64
	// SitesFull counts creations and exits not counted because the site
	// map was full.
	SitesFull uint64
}

// WaitAgg is the waits of one wait reason.
type WaitAgg struct {
	Parks   uint64 // parks (GoPark) with the reason
	Ended   uint64 // waits that ended (the unpark, or the start when no unpark was seen)
	TotalNs uint64 // total length of the ended waits
}

// SiteAgg is the goroutines of one creation site.
type SiteAgg struct {
	Created uint64
	Exited  uint64
}

// Sub returns a - old: what happened between two readings. Counters that
// went down (not the same tracer) count as zero.
func (a *Aggregates) Sub(old *Aggregates) *Aggregates {
	d := &Aggregates{
		Waits:            map[uint8]WaitAgg{},
		Sites:            map[uint64]SiteAgg{},
		UnstampedStarts:  sub(a.UnstampedStarts, old.UnstampedStarts),
		UnstampedUnparks: sub(a.UnstampedUnparks, old.UnstampedUnparks),
		SitesFull:        sub(a.SitesFull, old.SitesFull),
	}
	d.SchedLatency, _ = a.SchedLatency.Sub(old.SchedLatency)
	for r, w := range a.Waits {
		o := old.Waits[r]
		if dw := (WaitAgg{sub(w.Parks, o.Parks), sub(w.Ended, o.Ended), sub(w.TotalNs, o.TotalNs)}); dw != (WaitAgg{}) {
			d.Waits[r] = dw
		}
	}
	for pc, s := range a.Sites {
		o := old.Sites[pc]
		if ds := (SiteAgg{sub(s.Created, o.Created), sub(s.Exited, o.Exited)}); ds != (SiteAgg{}) {
			d.Sites[pc] = ds
		}
	}
	return d
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// aggState is the Tracer's part for aggregates.
type aggState struct {
	on       bool
	final    *Aggregates // read by Close just before the maps were closed
	finalErr error
}

// setAggregateVars sets the programs' stream_events and aggregate knobs, and
// shrinks the maps a mode leaves unused: the ring buffer and the stack map
// without stream, the aggregate maps without aggregates.
func (opts *Options) setAggregateVars(spec *ebpf.CollectionSpec) error {
	if err := setVar(spec, "stream_events", boolByte(!opts.NoStream)); err != nil {
		return err
	}
	if err := setVar(spec, "aggregate", boolByte(!opts.NoAggregate)); err != nil {
		return err
	}
	var off uint64
	for _, name := range opts.NoStreamPrograms {
		i := progIndex(name)
		if i < 0 {
			return fmt.Errorf("attach: no-stream %w %q", ErrUnknownProgram, name)
		}
		off |= 1 << i
	}
	if err := setVar(spec, "stream_off", off); err != nil {
		return err
	}
	if opts.NoStream {
		spec.Maps["events"].MaxEntries = uint32(ringSize(1))
		spec.Maps["stacks"].MaxEntries = 1
	}
	if opts.NoAggregate {
		for _, name := range []string{"runnable_since", "parked_since", "site_counts"} {
			spec.Maps[name].MaxEntries = 1
		}
	}
	return nil
}

// finish reads the final aggregates before Close frees the maps (t.mu held).
func (s *aggState) finish(t *Tracer) {
	if s.on && s.final == nil {
		s.final, s.finalErr = t.readAggregates()
	}
}

// Aggregates returns the in-kernel aggregates, summed over the CPUs,
// cumulative since the attach. After Close it returns the values read just
// before the maps were freed. The result is the caller's.
func (t *Tracer) Aggregates() (*Aggregates, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.agg.on {
		return nil, ErrNoAggregates
	}
	if t.final != nil { // closed
		if t.agg.finalErr != nil {
			return nil, t.agg.finalErr
		}
		return t.agg.final.clone(), nil
	}
	return t.readAggregates()
}

func (a *Aggregates) clone() *Aggregates {
	c := *a
	c.SchedLatency.Counts = slices.Clone(a.SchedLatency.Counts)
	c.Waits = make(map[uint8]WaitAgg, len(a.Waits))
	for k, v := range a.Waits {
		c.Waits[k] = v
	}
	c.Sites = make(map[uint64]SiteAgg, len(a.Sites))
	for k, v := range a.Sites {
		c.Sites[k] = v
	}
	return &c
}

func (t *Tracer) readAggregates() (*Aggregates, error) {
	a := &Aggregates{Waits: map[uint8]WaitAgg{}, Sites: map[uint64]SiteAgg{}}

	// Scheduling latency: one per-CPU timeHistogram.
	var hists []gmpwatchTimeHist
	if err := t.coll.Maps["sched_lat"].Lookup(uint32(0), &hists); err != nil {
		return nil, fmt.Errorf("read sched_lat: %w", err)
	}
	var sum gmpwatchTimeHist
	for i := range hists {
		for j, c := range hists[i].Counts {
			sum.Counts[j] += c
		}
		sum.Underflow += hists[i].Underflow
		sum.Overflow += hists[i].Overflow
	}
	h, err := rtstate.DecodeHistogram(rtstate.HistGo120, sum.encode())
	if err != nil {
		return nil, err
	}
	a.SchedLatency = h

	// Waits: one slot per reason.
	ws := t.coll.Maps["wait_stats"]
	var wvals []gmpwatchWaitAgg
	for r := 0; r < WaitReasonSlots; r++ {
		if err := ws.Lookup(uint32(r), &wvals); err != nil {
			return nil, fmt.Errorf("read wait_stats[%d]: %w", r, err)
		}
		var w WaitAgg
		for _, v := range wvals {
			w.Parks += v.Parks
			w.Ended += v.Waits
			w.TotalNs += v.WaitNs
		}
		if w != (WaitAgg{}) {
			a.Waits[uint8(r)] = w
		}
	}

	// Sites: never deleted, so iterating while the programs insert sees
	// every site that existed when it began.
	var pc uint64
	var svals []gmpwatchSiteAgg
	it := t.coll.Maps["site_counts"].Iterate()
	for it.Next(&pc, &svals) {
		var s SiteAgg
		for _, v := range svals {
			s.Created += v.Created
			s.Exited += v.Exited
		}
		a.Sites[pc] = s
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read site_counts: %w", err)
	}

	c := t.coll.Maps["counters"]
	for _, f := range []struct {
		idx uint32
		out *uint64
	}{{cntStartUnstamped, &a.UnstampedStarts}, {cntUnparkUnstamped, &a.UnstampedUnparks}, {cntSitesFull, &a.SitesFull}} {
		var vals []uint64
		if err := c.Lookup(f.idx, &vals); err != nil {
			return nil, fmt.Errorf("read counters[%d]: %w", f.idx, err)
		}
		for _, v := range vals {
			*f.out += v
		}
	}
	return a, nil
}

// Indexes of the aggregate counters in the counters map (enum gmp_counter).
const (
	cntStartUnstamped  = 5
	cntUnparkUnstamped = 6
	cntSitesFull       = 7
)

// encode returns the runtime's in-memory form of the histogram (counts,
// underflow, overflow; little endian), which rtstate decodes.
func (h *gmpwatchTimeHist) encode() []byte {
	b := make([]byte, 0, rtstate.HistGo120.Size())
	for _, c := range h.Counts {
		b = binary.LittleEndian.AppendUint64(b, c)
	}
	b = binary.LittleEndian.AppendUint64(b, h.Underflow)
	return binary.LittleEndian.AppendUint64(b, h.Overflow)
}
