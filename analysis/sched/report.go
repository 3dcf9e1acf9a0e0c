package sched

import (
	"fmt"
	"sort"
)

// Report kinds.
const (
	KindInterval = "interval"
	KindFinal    = "final"
)

// Report is what the model says about an interval or the whole trace. Its
// JSON form is gmpwatch's documented output (one object per line with
// --json). Counters cover the period; Alive, the by-state counts and the
// per-site alive counts are the state at its end.
type Report struct {
	Kind       string `json:"kind"` // KindInterval or KindFinal
	StartNs    uint64 `json:"start_ns"`
	EndNs      uint64 `json:"end_ns"`
	DurationNs uint64 `json:"duration_ns"`

	Goroutines     Goroutines   `json:"goroutines"`
	SchedLatency   Latency      `json:"sched_latency"`
	WaitReasons    []WaitReason `json:"wait_reasons"`
	CreationSites  []Site       `json:"creation_sites"`
	ThreadsCreated uint64       `json:"threads_created"`
	// ThreadsWhy counts the threads created by the runtime function that
	// asked for each (newm's caller: startm for a spinning M or a P handed
	// off from a syscall, startTemplateThread for LockOSThread, ...).
	ThreadsWhy []ThreadReason `json:"threads_why"`
	// HeapGrows and HeapGrowBytes count the heap's growth ((*mheap).grow).
	HeapGrows     uint64   `json:"heap_grows"`
	HeapGrowBytes uint64   `json:"heap_grow_bytes"`
	Preemptions   uint64   `json:"preemptions"`
	Yields        uint64   `json:"yields"`
	Syscalls      Syscalls `json:"syscalls"`
	Procs         []Proc   `json:"procs"`
	Threads       []Thread `json:"threads"`
	Events        uint64   `json:"events"`
	LostEvents    uint64   `json:"lost_events"`
}

// ThreadReason is a runtime function that created threads.
type ThreadReason struct {
	Function string `json:"function"`
	Count    uint64 `json:"count"`
}

// Goroutines counts goroutines.
type Goroutines struct {
	Created uint64 `json:"created"`
	Exited  uint64 `json:"exited"`
	// Alive is the number of goroutines the model knows to be alive: created
	// or seen since the start and not exited. When Untracked > 0 it is a
	// lower bound.
	Alive uint64 `json:"alive"`
	// Preexisting counts goroutines seen first in the middle of their life
	// (created before the attach).
	Preexisting uint64 `json:"preexisting"`
	// Untracked counts goroutines created while the state bound
	// (Config.MaxGoroutines) was reached: their latencies and waits are not
	// measured and they do not count in Alive.
	Untracked uint64 `json:"untracked"`
	// UntrackedEvents counts events about goroutines the model neither knew
	// nor had room for.
	UntrackedEvents uint64 `json:"untracked_events"`
	// Tracked now by state.
	Runnable uint64 `json:"runnable"`
	Running  uint64 `json:"running"`
	Waiting  uint64 `json:"waiting"`
	Syscall  uint64 `json:"syscall"`
}

// Latency summarizes scheduling latency (runnable to running).
type Latency struct {
	Count     uint64   `json:"count"`
	P50Ns     uint64   `json:"p50_ns"`
	P90Ns     uint64   `json:"p90_ns"`
	P99Ns     uint64   `json:"p99_ns"`
	MaxNs     uint64   `json:"max_ns"`
	MeanNs    uint64   `json:"mean_ns"`
	Histogram []Bucket `json:"histogram"` // non-empty log-linear buckets
}

// WaitReason is the time spent in one wait reason. Count and TotalNs cover
// waits that ended in the period; WaitingNow counts goroutines waiting for
// that reason at its end.
type WaitReason struct {
	Reason     string `json:"reason"`
	Count      uint64 `json:"count"`
	TotalNs    uint64 `json:"total_ns"`
	WaitingNow uint64 `json:"waiting_now"`
}

// Site is a creation site: a go statement.
type Site struct {
	Function string `json:"function"`
	File     string `json:"file"`
	Line     int    `json:"line"`
	PC       string `json:"pc"` // g.gopc, hex
	Created  uint64 `json:"created"`
	Exited   uint64 `json:"exited"`
	// Alive counts goroutines created here since the start that have not
	// exited (goroutines from before the attach are not counted).
	Alive uint64 `json:"alive"`
}

// Syscalls is time spent in system calls seen entering and leaving.
type Syscalls struct {
	Count   uint64 `json:"count"`
	TotalNs uint64 `json:"total_ns"`
}

// Proc is the activity of one P.
type Proc struct {
	ID            int32  `json:"id"`
	GoroutinesRun uint64 `json:"goroutines_run"`
	BusyNs        uint64 `json:"busy_ns"`
}

// Thread is the activity of one M.
type Thread struct {
	MID           int64  `json:"m_id"` // -1 when unknown
	TID           uint32 `json:"tid"`
	Created       bool   `json:"created"` // its creation was seen
	GoroutinesRun uint64 `json:"goroutines_run"`
	BusyNs        uint64 `json:"busy_ns"`
}

// Snapshot reports the current interval up to now (an event-clock time; 0
// means the time of the last event). It changes nothing: call Reset to start
// the next interval.
func (m *Model) Snapshot(now uint64) *Report { return m.report(KindInterval, slotIV, now) }

// Total reports the lifetime of the model up to now (0: the last event).
func (m *Model) Total(now uint64) *Report { return m.report(KindFinal, slotTot, now) }

func (m *Model) report(kind string, slot int, now uint64) *Report {
	if now == 0 {
		now = m.lastTs
	}
	c := &m.iv
	if slot == slotTot {
		c = &m.tot
	}
	r := &Report{
		Kind:           kind,
		StartNs:        c.start,
		EndNs:          now,
		ThreadsCreated: c.threadsCreated,
		HeapGrows:      c.heapGrows,
		HeapGrowBytes:  c.heapGrowBytes,
		Preemptions:    c.preemptions,
		Yields:         c.yields,
		Syscalls:       Syscalls{Count: c.syscalls, TotalNs: c.syscallNs},
		Events:         c.events,
		LostEvents:     c.lost,
	}
	if now > c.start && c.start != 0 {
		r.DurationNs = now - c.start
	}
	r.ThreadsWhy = []ThreadReason{}
	why := map[string]uint64{}
	for pc, n := range c.threadWhy {
		name := fmt.Sprintf("%#x", pc)
		if m.cfg.Symbolize != nil {
			if f, ok := m.cfg.Symbolize(pc, true); ok {
				name = f.Func
			}
		}
		why[name] += n
	}
	for name, n := range why {
		r.ThreadsWhy = append(r.ThreadsWhy, ThreadReason{Function: name, Count: n})
	}
	sort.Slice(r.ThreadsWhy, func(i, j int) bool {
		a, b := r.ThreadsWhy[i], r.ThreadsWhy[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		return a.Function < b.Function
	})
	r.Goroutines = Goroutines{
		Created:         c.created,
		Exited:          c.exited,
		Alive:           uint64(len(m.gs)),
		Preexisting:     c.preexisting,
		Untracked:       c.untracked,
		UntrackedEvents: c.untrackedEvents,
		Runnable:        uint64(m.byState[GoRunnable]),
		Running:         uint64(m.byState[GoRunning]),
		Waiting:         uint64(m.byState[GoWaiting]),
		Syscall:         uint64(m.byState[GoSyscall]),
	}
	h := &c.lat
	r.SchedLatency = Latency{
		Count:     h.Count(),
		P50Ns:     h.Quantile(0.50),
		P90Ns:     h.Quantile(0.90),
		P99Ns:     h.Quantile(0.99),
		MaxNs:     h.Max(),
		Histogram: h.Buckets(),
	}
	if h.Count() > 0 {
		r.SchedLatency.MeanNs = h.Sum() / h.Count()
	}

	r.WaitReasons = []WaitReason{}
	for i := range c.waits {
		w := c.waits[i]
		now := m.waiting[i]
		if w.count == 0 && now <= 0 {
			continue
		}
		wr := WaitReason{Reason: m.cfg.WaitReasons.Name(uint8(i)), Count: w.count, TotalNs: w.total}
		if now > 0 {
			wr.WaitingNow = uint64(now)
		}
		r.WaitReasons = append(r.WaitReasons, wr)
	}
	sortWaitReasons(r.WaitReasons)

	r.CreationSites = []Site{}
	for _, s := range m.sites {
		if s.created[slot] == 0 && s.exited[slot] == 0 && s.alive <= 0 {
			continue
		}
		st := Site{
			Function: s.frame.Func,
			File:     s.frame.File,
			Line:     s.frame.Line,
			PC:       hexPC(s.pc),
			Created:  s.created[slot],
			Exited:   s.exited[slot],
		}
		if !s.ok {
			st.Function = st.PC
		}
		if s.alive > 0 {
			st.Alive = uint64(s.alive)
		}
		r.CreationSites = append(r.CreationSites, st)
	}
	sortSites(r.CreationSites)

	r.Procs = []Proc{}
	for _, ps := range m.ps {
		a := ps.tot
		if slot == slotIV {
			a = ps.iv
		}
		if ps.holder != nil && now > ps.start {
			a.busy += now - ps.start // the span running now counts up to now
		}
		r.Procs = append(r.Procs, Proc{ID: ps.id, GoroutinesRun: a.runs, BusyNs: a.busy})
	}
	r.Threads = []Thread{}
	for _, ms := range m.ms {
		a := ms.tot
		if slot == slotIV {
			a = ms.iv
		}
		if ms.running && now > ms.start {
			a.busy += now - ms.start // the span running now counts up to now
		}
		r.Threads = append(r.Threads, Thread{MID: ms.id, TID: ms.tid, Created: ms.created, GoroutinesRun: a.runs, BusyNs: a.busy})
	}
	sort.Slice(r.Procs, func(i, j int) bool { return r.Procs[i].ID < r.Procs[j].ID })
	sort.Slice(r.Threads, func(i, j int) bool {
		a, b := r.Threads[i], r.Threads[j]
		if a.MID != b.MID {
			return a.MID < b.MID
		}
		return a.TID < b.TID
	})
	return r
}

// hexPC renders a site's PC as reports show it.
func hexPC(pc uint64) string { return fmt.Sprintf("%#x", pc) }
