package paths

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
)

// Report is what the model says about the four paths and syscalls. Its JSON
// form is part of gmpwatch's output.
type Report struct {
	DurationNs uint64 `json:"duration_ns"`
	// SamplePeriodNs is the period of the series (alive, threads).
	SamplePeriodNs uint64   `json:"sample_period_ns"`
	CG             CG       `json:"cg"`
	CC             CC       `json:"cc"`
	MA             MA       `json:"ma"`
	TC             TC       `json:"tc"`
	Syscalls       Syscalls `json:"syscalls"`
	// Kinds counts the events of each kind the model saw: which paths
	// were observed at all.
	Kinds map[string]uint64 `json:"event_kinds"`
}

// Pos is a source position.
type Pos struct {
	Function string `json:"function"`
	File     string `json:"file"`
	Line     int    `json:"line"`
	PC       string `json:"pc"`
}

func (p Pos) String() string {
	if p.Function == "" {
		return p.PC
	}
	return fmt.Sprintf("%s %s:%d", p.Function, p.File, p.Line)
}

func pos(f Frame) Pos {
	return Pos{Function: f.Func, File: f.File, Line: f.Line, PC: fmt.Sprintf("%#x", f.PC)}
}

// CG is the creation of goroutines.
type CG struct {
	Sites []GoSite `json:"sites"`
	// Untracked counts goroutines beyond the state bound (not in Sites).
	Untracked uint64 `json:"untracked"`
}

// GoSite is one go statement.
type GoSite struct {
	Pos
	Start    Pos    `json:"start"` // start function
	Created  uint64 `json:"created"`
	Exited   uint64 `json:"exited"`
	Alive    int64  `json:"alive"`
	Creators int    `json:"creators"` // distinct parent goroutines
	// TopCreator is the parent goid that created most of them.
	TopCreator    uint64 `json:"top_creator"`
	LifetimeP50Ns uint64 `json:"lifetime_p50_ns"`
	LifetimeMaxNs uint64 `json:"lifetime_max_ns"`
	// AliveSeries is the alive count at each sample period, then at the end.
	AliveSeries []int64 `json:"alive_series"`
	// Leak: the alive count kept rising over the run.
	Leak bool `json:"leak"`
}

// CC is where goroutines block.
type CC struct {
	Sites []BlockSite `json:"sites"`
	Chans []ChanSite  `json:"chan_ops,omitempty"`
}

// BlockSite is time blocked at one park site for one reason.
type BlockSite struct {
	Reason string `json:"reason"`
	Pos
	// User is false when the park stack had no frame outside the runtime
	// (or none was captured): the site is then the caller of gopark.
	User      bool           `json:"user_frame"`
	Count     uint64         `json:"count"`
	TotalNs   uint64         `json:"total_ns"`
	P50Ns     uint64         `json:"p50_ns"`
	P90Ns     uint64         `json:"p90_ns"`
	P99Ns     uint64         `json:"p99_ns"`
	MaxNs     uint64         `json:"max_ns"`
	Histogram []sched.Bucket `json:"histogram"`
}

// ChanSite counts channel operations at a call site.
type ChanSite struct {
	Pos
	Send     uint64 `json:"send"`
	Recv     uint64 `json:"recv"`
	Blocking uint64 `json:"blocking"`
}

// MA is memory allocation.
type MA struct {
	MemProfileRate int64  `json:"mem_profile_rate"`
	Samples        uint64 `json:"samples"`
	SampledBytes   uint64 `json:"sampled_bytes"`
	// EstimatedBytes scales the samples as the heap profile does.
	EstimatedBytes int64       `json:"estimated_bytes"`
	Sites          []AllocSite `json:"sites"`
	HeapGrows      uint64      `json:"heap_grows"`
	HeapGrowBytes  uint64      `json:"heap_grow_bytes"`
	// GCCycles is the GC cycles completed, from the runtime's own count
	// (read from memory, not probed); absent when unknown.
	GCCycles *uint32 `json:"gc_cycles,omitempty"`
	// Mallocs are mallocgc calls, exact, when that probe was on.
	Mallocs []AllocSite `json:"mallocs,omitempty"`
}

// AllocSite is allocation at the first frame outside the runtime.
type AllocSite struct {
	Pos
	Samples          uint64 `json:"samples"`
	SampledBytes     uint64 `json:"sampled_bytes"`
	EstimatedObjects int64  `json:"estimated_objects"`
	EstimatedBytes   int64  `json:"estimated_bytes"`
}

// TC is thread creation.
type TC struct {
	Created uint64 `json:"created"`
	// ByRequester: threads by the place that asked for them.
	ByRequester []ThreadSite `json:"by_requester"`
	// Series is the count of threads created at each sample period.
	Series []uint64 `json:"series"`
}

// ThreadSite is threads created at one requesting site.
type ThreadSite struct {
	Pos
	Count uint64 `json:"count"`
}

// Syscalls is time in system calls.
type Syscalls struct {
	Count    uint64        `json:"count"`
	TotalNs  uint64        `json:"total_ns"`
	Handoffs uint64        `json:"p_handoffs"`
	Sites    []SyscallSite `json:"sites"`
}

// SyscallSite is syscalls at one call site.
type SyscallSite struct {
	Pos
	Count   uint64 `json:"count"`
	TotalNs uint64 `json:"total_ns"`
	MaxNs   uint64 `json:"max_ns"`
}

// rising is the leak signal: the alive count went up in at least 3 sample
// periods, down in at most a quarter as many, and ended above its middle.
func rising(s []int64) bool {
	if len(s) < 4 || s[len(s)-1] <= 0 {
		return false
	}
	ups, downs := 0, 0
	for i := 1; i < len(s); i++ {
		switch {
		case s[i] > s[i-1]:
			ups++
		case s[i] < s[i-1]:
			downs++
		}
	}
	return ups >= 3 && downs*4 <= ups && s[len(s)-1] > s[len(s)/2]
}

// Report summarizes the model.
func (m *Model) Report() *Report {
	r := &Report{Kinds: map[string]uint64{}, SamplePeriodNs: m.cfg.SamplePeriod}
	if m.last > m.first {
		r.DurationNs = m.last - m.first
	}
	for k, n := range m.kinds {
		if n > 0 {
			r.Kinds[event.Kind(k).String()] = n
		}
	}

	// CG
	r.CG.Untracked = m.untracked
	r.CG.Sites = []GoSite{}
	for _, s := range m.sites {
		f := m.Frames(Loc{Stack: event.NoStack, PC: s.pc, Ret: true})
		st := m.Frames(Loc{Stack: event.NoStack, PC: s.startpc})
		gs := GoSite{Created: s.created, Exited: s.exited, Alive: s.alive, Creators: len(s.parents),
			LifetimeP50Ns: s.life.Hist.Quantile(0.5), LifetimeMaxNs: s.life.Hist.Max()}
		if len(f) > 0 {
			gs.Pos = pos(f[0])
		}
		if len(st) > 0 {
			gs.Start = pos(st[0])
		}
		var best uint64
		for p, n := range s.parents {
			if n > best || (n == best && p < gs.TopCreator) {
				best, gs.TopCreator = n, p
			}
		}
		gs.AliveSeries = append(append([]int64{}, s.series...), s.alive)
		gs.Leak = rising(gs.AliveSeries)
		r.CG.Sites = append(r.CG.Sites, gs)
	}
	sort.SliceStable(r.CG.Sites, func(i, j int) bool {
		a, b := r.CG.Sites[i], r.CG.Sites[j]
		if a.Alive != b.Alive {
			return a.Alive > b.Alive
		}
		if a.Created != b.Created {
			return a.Created > b.Created
		}
		return a.PC < b.PC
	})

	// CC: merge park locations by reason and user frame.
	type bk struct {
		reason string
		p      Pos
		user   bool
	}
	merged := map[bk]*Agg{}
	var order []bk
	for _, k := range sortedKeys(m.Blocks, func(a, b BlockKey) bool {
		if a.Reason != b.Reason {
			return a.Reason < b.Reason
		}
		return LocLess(a.Loc, b.Loc)
	}) {
		f, user := m.UserFrame(k.Loc)
		p := pos(f)
		if f.Func != "" {
			p.PC = "" // merged across PCs of one line
		}
		key := bk{m.cfg.WaitReasons.Name(k.Reason), p, user}
		a := merged[key]
		if a == nil {
			a = &Agg{}
			merged[key] = a
			order = append(order, key)
		}
		src := m.Blocks[k]
		a.Count += src.Count
		a.TotalNs += src.TotalNs
		a.Hist.Merge(&src.Hist)
	}
	r.CC.Sites = []BlockSite{}
	for _, k := range order {
		a := merged[k]
		r.CC.Sites = append(r.CC.Sites, BlockSite{Reason: k.reason, Pos: k.p, User: k.user, Count: a.Count, TotalNs: a.TotalNs,
			P50Ns: a.Hist.Quantile(0.5), P90Ns: a.Hist.Quantile(0.9), P99Ns: a.Hist.Quantile(0.99), MaxNs: a.Hist.Max(),
			Histogram: a.Hist.Pow2Buckets()})
	}
	sort.SliceStable(r.CC.Sites, func(i, j int) bool { return r.CC.Sites[i].TotalNs > r.CC.Sites[j].TotalNs })
	for _, pc := range sortedKeys(m.Chans, func(a, b uint64) bool { return a < b }) {
		c := m.Chans[pc]
		f := m.Frames(Loc{Stack: event.NoStack, PC: pc, Ret: true})
		r.CC.Chans = append(r.CC.Chans, ChanSite{Pos: pos(f[0]), Send: c.Send, Recv: c.Recv, Blocking: c.Blocking})
	}

	// MA
	r.MA.MemProfileRate = m.cfg.MemProfileRate
	r.MA.HeapGrows, r.MA.HeapGrowBytes, r.MA.GCCycles = m.heapGrows, m.heapGrowBytes, m.gcCycles
	r.MA.Sites = m.allocSites(m.Allocs, true)
	for _, s := range r.MA.Sites {
		r.MA.Samples += s.Samples
		r.MA.SampledBytes += s.SampledBytes
		r.MA.EstimatedBytes += s.EstimatedBytes
	}
	if len(m.Mallocs) > 0 {
		r.MA.Mallocs = m.allocSites(m.Mallocs, false)
	}

	// TC
	r.TC.Created = m.threadsCreated()
	r.TC.Series = append(append([]uint64{}, m.threadSer...), r.TC.Created)
	tm := map[Pos]uint64{}
	for loc, n := range m.Threads {
		f, _ := m.UserFrame(loc)
		tm[pos(f)] += n
	}
	r.TC.ByRequester = []ThreadSite{}
	for p, n := range tm {
		r.TC.ByRequester = append(r.TC.ByRequester, ThreadSite{Pos: p, Count: n})
	}
	sort.Slice(r.TC.ByRequester, func(i, j int) bool {
		a, b := r.TC.ByRequester[i], r.TC.ByRequester[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		return a.PC < b.PC
	})

	// Syscalls
	r.Syscalls.Handoffs = m.handoffs
	sm := map[Pos]*Agg{}
	for loc, a := range m.Syscalls {
		f, _ := m.SyscallFrame(loc)
		p := pos(f)
		if f.Func != "" {
			p.PC = ""
		}
		t := sm[p]
		if t == nil {
			t = &Agg{}
			sm[p] = t
		}
		t.Count += a.Count
		t.TotalNs += a.TotalNs
		t.Hist.Merge(&a.Hist)
	}
	r.Syscalls.Sites = []SyscallSite{}
	for p, a := range sm {
		r.Syscalls.Count += a.Count
		r.Syscalls.TotalNs += a.TotalNs
		r.Syscalls.Sites = append(r.Syscalls.Sites, SyscallSite{Pos: p, Count: a.Count, TotalNs: a.TotalNs, MaxNs: a.Hist.Max()})
	}
	sort.Slice(r.Syscalls.Sites, func(i, j int) bool {
		a, b := r.Syscalls.Sites[i], r.Syscalls.Sites[j]
		if a.TotalNs != b.TotalNs {
			return a.TotalNs > b.TotalNs
		}
		return a.String() < b.String()
	})
	return r
}

func (m *Model) allocSites(src map[Loc]*Alloc, scale bool) []AllocSite {
	byPos := map[Pos]*AllocSite{}
	for loc, a := range src {
		f, _ := m.UserFrame(loc)
		p := pos(f)
		if f.Func != "" {
			p.PC = ""
		}
		s := byPos[p]
		if s == nil {
			s = &AllocSite{Pos: p}
			byPos[p] = s
		}
		s.Samples += a.Count
		s.SampledBytes += a.Bytes
	}
	out := []AllocSite{}
	for _, s := range byPos {
		if scale {
			s.EstimatedObjects, s.EstimatedBytes = ScaleHeapSample(int64(s.Samples), int64(s.SampledBytes), m.cfg.MemProfileRate)
		} else {
			s.EstimatedObjects, s.EstimatedBytes = int64(s.Samples), int64(s.SampledBytes)
		}
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].EstimatedBytes != out[j].EstimatedBytes {
			return out[i].EstimatedBytes > out[j].EstimatedBytes
		}
		return out[i].String() < out[j].String()
	})
	return out
}

// TopN bounds each list of the text report.
const TopN = 10

// WriteText writes the report for people.
func WriteText(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "\nGoroutine creation (CG): %d sites\n", len(r.CG.Sites))
	for i, s := range r.CG.Sites {
		if i == TopN {
			fmt.Fprintf(&b, "  ... %d more\n", len(r.CG.Sites)-TopN)
			break
		}
		leak := ""
		if s.Leak {
			leak = "  LEAK? alive kept rising"
		}
		life := ""
		if s.Exited > 0 {
			life = fmt.Sprintf(", lifetime p50 %s max %s", sched.FormatNs(s.LifetimeP50Ns), sched.FormatNs(s.LifetimeMaxNs))
		}
		fmt.Fprintf(&b, "  %s  start %s: created %d, exited %d, alive %d, creators %d%s%s\n",
			s.Pos, s.Start.Function, s.Created, s.Exited, s.Alive, s.Creators, life, leak)
		if s.Leak {
			fmt.Fprintf(&b, "    alive over time: %s\n", series(s.AliveSeries, r.SamplePeriodNs))
		}
	}
	if r.CG.Untracked > 0 {
		fmt.Fprintf(&b, "  WARNING: %d goroutines beyond the state bound are not attributed\n", r.CG.Untracked)
	}
	fmt.Fprintf(&b, "\nBlocking by park site (CC): %d sites\n", len(r.CC.Sites))
	for i, s := range r.CC.Sites {
		if i == TopN {
			fmt.Fprintf(&b, "  ... %d more\n", len(r.CC.Sites)-TopN)
			break
		}
		where := s.Pos.String()
		if !s.User {
			where += " (runtime only)"
		}
		fmt.Fprintf(&b, "  %-14s %s: %d waits, total %s, p50 %s, p90 %s, max %s\n", s.Reason, where, s.Count,
			sched.FormatNs(s.TotalNs), sched.FormatNs(s.P50Ns), sched.FormatNs(s.P90Ns), sched.FormatNs(s.MaxNs))
	}
	for _, c := range r.CC.Chans {
		fmt.Fprintf(&b, "  channel ops at %s: send %d, recv %d, blocking %d\n", c.Pos, c.Send, c.Recv, c.Blocking)
	}
	fmt.Fprintf(&b, "\nMemory allocation (MA): %d samples (1 per %d bytes), %d bytes sampled, ~%d bytes estimated; heap grew %d times (%d bytes)\n",
		r.MA.Samples, r.MA.MemProfileRate, r.MA.SampledBytes, r.MA.EstimatedBytes, r.MA.HeapGrows, r.MA.HeapGrowBytes)
	if r.MA.GCCycles != nil {
		fmt.Fprintf(&b, "  GC cycles: %d (the runtime's memstats.numgc)\n", *r.MA.GCCycles)
	}
	if r.MA.Samples == 0 && r.Kinds["HeapGrow"] > 0 {
		b.WriteString("  no sampled allocations: the target's memory profiling is off (MemProfileRate 0, or it never references runtime.MemProfile, so the runtime disables it)\n")
	}
	for i, s := range r.MA.Sites {
		if i == TopN {
			break
		}
		fmt.Fprintf(&b, "  %s: %d samples, ~%d bytes in ~%d objects\n", s.Pos, s.Samples, s.EstimatedBytes, s.EstimatedObjects)
	}
	for i, s := range r.MA.Mallocs {
		if i == TopN {
			break
		}
		fmt.Fprintf(&b, "  mallocgc at %s: %d calls, %d bytes\n", s.Pos, s.Samples, s.SampledBytes)
	}
	fmt.Fprintf(&b, "\nThread creation (TC): %d threads created\n", r.TC.Created)
	if r.TC.Created > 0 {
		ts := make([]int64, len(r.TC.Series))
		for i, v := range r.TC.Series {
			ts[i] = int64(v)
		}
		fmt.Fprintf(&b, "  created over time: %s\n", series(ts, r.SamplePeriodNs))
	}
	for i, s := range r.TC.ByRequester {
		if i == TopN {
			break
		}
		who := "the scheduler (no user goroutine asked)"
		if s.PC != "0x0" {
			who = s.Pos.String()
		}
		fmt.Fprintf(&b, "  %d asked by %s\n", s.Count, who)
	}
	fmt.Fprintf(&b, "\nSyscalls: %d, total %s, P handed off %d times\n", r.Syscalls.Count, sched.FormatNs(r.Syscalls.TotalNs), r.Syscalls.Handoffs)
	for i, s := range r.Syscalls.Sites {
		if i == TopN {
			break
		}
		fmt.Fprintf(&b, "  %s: %d calls, total %s, max %s\n", s.Pos, s.Count, sched.FormatNs(s.TotalNs), sched.FormatNs(s.MaxNs))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// maxSeries bounds the points of a series in the text report.
const maxSeries = 20

// series prints a series, thinned to at most maxSeries points (always
// keeping the last), with the sample period it shows.
func series(v []int64, period uint64) string {
	step := (len(v) + maxSeries - 1) / maxSeries
	if step < 1 {
		step = 1
	}
	var parts []string
	for i := 0; i < len(v); i += step {
		if i+step >= len(v) {
			i = len(v) - 1
		}
		parts = append(parts, fmt.Sprint(v[i]))
	}
	return fmt.Sprintf("%s (every %s)", strings.Join(parts, " "), sched.FormatNs(uint64(step)*period))
}
