package sched

import (
	"math"
	"sort"

	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
)

// KernelFigures are one period's figures that need no per-event record: the
// probes' in-kernel aggregates (scheduling latency, waits by reason,
// creations and exits by site; the difference of two readings of
// ebpf.Aggregates) and, when read, a scan of the goroutines in memory
// (alive by site, waiting by reason). A live view under an overhead budget
// reports them instead of the model's, and the programs that feed nothing
// else stream no event.
type KernelFigures struct {
	// Latency is the scheduling latency (runnable → running) in the
	// runtime's timeHistogram layout (rtstate.HistGo120).
	Latency rtstate.Histogram
	// Waits are the waits that ended, by wait reason index.
	Waits map[uint8]WaitCount
	// Sites are the creations and exits by creation PC (g.gopc, a return
	// address).
	Sites map[uint64]SiteCount
	// AliveBySite (by g.gopc) and WaitingByReason (by wait reason index)
	// come from a scan of allgs; nil when none was read.
	AliveBySite     map[uint64]uint64
	WaitingByReason map[uint8]uint64
	// ByStatus counts the scan's goroutines by status name (running,
	// runnable, waiting, syscall; rtstate.StatusName); nil when none.
	ByStatus map[string]int
}

// WaitCount is the waits of one reason that ended, and their total length.
type WaitCount struct{ Ended, TotalNs uint64 }

// SiteCount is the goroutines created and exited at one site.
type SiteCount struct{ Created, Exited uint64 }

// UseKernel replaces r's scheduling latency, wait reasons, creation sites
// and goroutines created and exited with k's. Waiting now, alive per site
// and the goroutines by state come from k's scan of memory when it has one
// (every goroutine of the process, those from before the attach included),
// else stay the model's.
func (m *Model) UseKernel(r *Report, k *KernelFigures) {
	r.SchedLatency = latencyOf(k.Latency)
	// The model sees no creation: "seen mid-life" no longer means anything.
	r.Goroutines.Preexisting = 0
	if k.ByStatus != nil {
		g := &r.Goroutines
		g.Running, g.Runnable = uint64(k.ByStatus["running"]), uint64(k.ByStatus["runnable"])
		g.Waiting, g.Syscall = uint64(k.ByStatus["waiting"]), uint64(k.ByStatus["syscall"])
		g.Alive = 0
		for _, n := range k.ByStatus {
			g.Alive += uint64(n)
		}
	}

	waitingNow := map[string]uint64{}
	for _, w := range r.WaitReasons {
		waitingNow[w.Reason] = w.WaitingNow
	}
	if k.WaitingByReason != nil {
		waitingNow = map[string]uint64{}
		for i, n := range k.WaitingByReason {
			waitingNow[m.cfg.WaitReasons.Name(i)] += n
		}
	}
	byName := map[string]*WaitReason{}
	wr := func(name string) *WaitReason {
		if w := byName[name]; w != nil {
			return w
		}
		w := &WaitReason{Reason: name}
		byName[name] = w
		return w
	}
	for i, w := range k.Waits {
		if w.Ended > 0 {
			x := wr(m.cfg.WaitReasons.Name(i))
			x.Count += w.Ended
			x.TotalNs += w.TotalNs
		}
	}
	for name, n := range waitingNow {
		if n > 0 {
			wr(name).WaitingNow = n
		}
	}
	r.WaitReasons = []WaitReason{}
	for _, w := range byName {
		r.WaitReasons = append(r.WaitReasons, *w)
	}
	sortWaitReasons(r.WaitReasons)

	alive := k.AliveBySite
	if alive == nil {
		alive = map[uint64]uint64{}
		for _, s := range m.sites {
			if s.alive > 0 {
				alive[s.pc] = uint64(s.alive)
			}
		}
	}
	pcs := map[uint64]bool{}
	for pc := range k.Sites {
		pcs[pc] = true
	}
	for pc := range alive {
		pcs[pc] = true
	}
	r.CreationSites = []Site{}
	r.Goroutines.Created, r.Goroutines.Exited = 0, 0
	for pc := range pcs {
		c := k.Sites[pc]
		r.Goroutines.Created += c.Created
		r.Goroutines.Exited += c.Exited
		if c.Created == 0 && c.Exited == 0 && alive[pc] == 0 {
			continue
		}
		s := m.sites[m.siteFor(pc)-1]
		st := Site{Function: s.frame.Func, File: s.frame.File, Line: s.frame.Line, PC: hexPC(pc),
			Created: c.Created, Exited: c.Exited, Alive: alive[pc]}
		if !s.ok {
			st.Function = st.PC
		}
		r.CreationSites = append(r.CreationSites, st)
	}
	sortSites(r.CreationSites)
}

// latencyOf summarizes a runtime-layout histogram as a Latency: quantiles
// interpolated in its buckets, the maximum the top of the highest non-empty
// bucket, the mean from the buckets' middles.
func latencyOf(h rtstate.Histogram) Latency {
	l := Latency{Count: h.Total(), Histogram: []Bucket{}}
	if l.Count == 0 {
		return l
	}
	l.P50Ns = uint64(h.Quantile(0.50))
	l.P90Ns = uint64(h.Quantile(0.90))
	l.P99Ns = uint64(h.Quantile(0.99))
	l.MaxNs = uint64(h.Quantile(1))
	var sum float64
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		lo, hi := math.Max(h.Bounds[i], 0), h.Bounds[i+1]
		if math.IsInf(hi, 1) {
			hi = lo
		}
		sum += float64(c) * (lo + hi) / 2
		l.Histogram = append(l.Histogram, Bucket{LoNs: uint64(lo), HiNs: uint64(hi), Count: c})
	}
	l.MeanNs = uint64(sum / float64(l.Count))
	return l
}

func sortWaitReasons(ws []WaitReason) {
	sort.SliceStable(ws, func(i, j int) bool {
		a, b := ws[i], ws[j]
		if a.TotalNs != b.TotalNs {
			return a.TotalNs > b.TotalNs
		}
		if a.WaitingNow != b.WaitingNow {
			return a.WaitingNow > b.WaitingNow
		}
		return a.Reason < b.Reason
	})
}

func sortSites(ss []Site) {
	sort.SliceStable(ss, func(i, j int) bool {
		a, b := ss[i], ss[j]
		if a.Alive != b.Alive {
			return a.Alive > b.Alive
		}
		if a.Created != b.Created {
			return a.Created > b.Created
		}
		return a.PC < b.PC
	})
}
