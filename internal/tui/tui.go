// Package tui is gmpwatch's live terminal view: a Bubble Tea model fed one
// Snapshot per interval (the scheduler model's interval report, the G/M/P
// picture read from the target's memory, the probes' counters) that shows
// a header, scheduling latency with a sparkline, goroutine and thread
// counts, and one of four panels: creation sites, wait reasons, Ps and Ms,
// threads.
//
// The model is plain data driven by messages, so it is tested without a
// terminal: feed it SnapshotMsg, tea.KeyMsg and tea.WindowSizeMsg and read
// View. Run starts it on a terminal.
package tui

import (
	"sort"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/gmpwatch/gmpwatch/analysis/sched"
)

// Info is what the session knows from the start.
type Info struct {
	PID       int
	Exe       string
	GoVersion string
	Interval  time.Duration
	// Probes names the attached probes' programs.
	Probes []string
	// Budget is the overhead budget the session enforces (issue 6), ""
	// when none is set.
	Budget string
	// ProcStart is when the target process started, zero if unknown.
	ProcStart time.Time
	// Started is when the trace started.
	Started time.Time
}

// ProbeStats are the tracer's cumulative counters.
type ProbeStats struct {
	Events     uint64
	Lost       uint64
	Hits       map[string]uint64 // per program
	ReadErrors uint64
}

// PRow is one P of the live G/M/P picture.
type PRow struct {
	ID       int32
	Status   string
	RunQueue uint32
	RunNext  bool
	M        int64 // -1: none
	TID      uint64
	G        uint64 // 0: none
	Func     string // the goroutine's start function
}

// MRow is one M (thread) of the live picture.
type MRow struct {
	ID  int64
	TID uint64
	P   int32 // -1: none
	// Spinning looks for work; Idle sleeps without P or G; Syscall: its
	// goroutine is in a system call; Locked: a goroutine is locked to it.
	Spinning, Idle, Syscall, Locked bool
	G                               uint64 // 0: none
	GStatus                         string
	Func                            string
}

// GMP is the scheduler's state read from the target's memory.
type GMP struct {
	GOMAXPROCS  int32
	IdleProcs   int32
	Spinning    int32
	IdleThreads int32
	RunQueue    int32 // global run queue
	Ps          []PRow
	Ms          []MRow
	// GCCycles is the runtime's completed GC count (HasGC false: unknown).
	GCCycles uint32
	HasGC    bool
	Skipped  int
}

// Goroutines counts the goroutines of the whole process by state, read
// from its memory (runtime.allgs): unlike the probes' model, it includes
// goroutines that did nothing while traced.
type Goroutines struct {
	Total   int
	ByState map[string]int // "running", "runnable", "waiting", "syscall", ...
	Skipped int            // entries that failed validation (racing)
	// Age is how long ago they were read (big targets are scanned less
	// often than every interval).
	Age time.Duration
}

// Snapshot is what one interval brings.
type Snapshot struct {
	At     time.Time
	Report *sched.Report // the interval's report (sched.KindInterval)
	GMP    *GMP          // nil when the read failed (GMPErr says why)
	GMPErr string
	// Goroutines of the whole process, nil when not read.
	Goroutines *Goroutines
	Probes     ProbeStats
	// SelfCPU is the CPU time gmpwatch used in the interval.
	SelfCPU time.Duration
	// RSS is the target's resident set in bytes, 0 when unknown.
	RSS uint64
	// Budget, when set, is the overhead budget's state: its duty cycle and
	// the measured cost to the target (it then replaces Info.Budget).
	Budget string
	// Runtime, when set, is the runtime's own scheduling latency over the
	// interval, read from its memory: exact whatever the budget's duty
	// cycle, where the windows' figures include the probes' own cost.
	Runtime string
}

// SnapshotMsg delivers a Snapshot to the model.
type SnapshotMsg Snapshot

// Panel is a switchable panel.
type Panel int

// The panels, in Tab order.
const (
	PanelSites Panel = iota
	PanelWaits
	PanelGMP
	PanelThreads
	numPanels
)

var panelNames = [numPanels]string{"Creation sites", "Wait reasons", "Ps and Ms", "Threads"}

func (p Panel) String() string { return panelNames[p] }

// sortCols are the sort columns of each panel, in the order s cycles them.
var sortCols = [numPanels][]string{
	PanelSites:   {"alive", "created", "trend", "site"},
	PanelWaits:   {"time", "waiting", "count", "reason"},
	PanelGMP:     {"id", "busy", "runq"},
	PanelThreads: {"busy", "runs", "id"},
}

// histLen is how many intervals the sparklines and trends remember.
const histLen = 120

// maxHeld bounds the snapshots held while paused; older ones are folded
// into the counters at once (nothing is lost, only not shown).
const maxHeld = 600

type siteAcc struct {
	site      sched.Site // latest: Alive is the state now
	base      uint64     // alive before its history: 0, or at a reset
	created   uint64     // since start or reset
	exited    uint64
	lastNew   uint64   // created in the last interval
	aliveHist []uint64 // alive at the end of each interval
}

type waitAcc struct {
	reason  string
	count   uint64
	total   uint64
	lastNs  uint64
	waiting uint64
}

type threadAcc struct {
	th      sched.Thread // latest interval
	runs    uint64
	busy    uint64
	lastSeq int // interval it was last seen in
}

// Model is the Bubble Tea model of the live view.
type Model struct {
	info   Info
	width  int
	height int

	panel   Panel
	sortIdx [numPanels]int
	paused  bool
	held    []Snapshot
	help    bool

	last      *Snapshot
	seq       int // snapshots applied
	resetAt   time.Time
	gcAtReset uint32
	gcKnown   bool
	rssPrev   uint64
	rssDelta  int64
	gcPrev    uint32
	gcDelta   uint32
	cpuTotal  time.Duration
	hitsPrev  map[string]uint64
	hitRate   map[string]float64
	evRate    float64
	eventsAt0 uint64
	lostAt0   uint64

	created, exited, threadsCreated uint64
	threadsWhy                      map[string]uint64 // threads created by the runtime function that asked
	heapGrows, heapGrowBytes        uint64
	lat                             map[uint64]*bucket // by LoNs
	latN, latMax                    uint64
	p99Hist                         []uint64
	sites                           map[string]*siteAcc // by PC
	waits                           map[string]*waitAcc
	threads                         map[[2]uint64]*threadAcc
}

type bucket struct{ hi, n uint64 }

// New returns the model of a session.
func New(info Info) *Model {
	if info.Started.IsZero() {
		info.Started = time.Now()
	}
	m := &Model{info: info, width: 100, height: 40}
	m.reset(info.Started)
	return m
}

func (m *Model) reset(at time.Time) {
	m.resetAt = at
	m.created, m.exited, m.threadsCreated = 0, 0, 0
	m.threadsWhy, m.heapGrows, m.heapGrowBytes = nil, 0, 0
	m.lat = map[uint64]*bucket{}
	m.latN, m.latMax = 0, 0
	m.p99Hist = nil
	m.sites = map[string]*siteAcc{}
	m.waits = map[string]*waitAcc{}
	m.threads = map[[2]uint64]*threadAcc{}
	m.cpuTotal = 0
	if m.last != nil {
		m.eventsAt0, m.lostAt0 = m.last.Probes.Events, m.last.Probes.Lost
		if m.last.GMP != nil && m.last.GMP.HasGC {
			m.gcAtReset, m.gcKnown = m.last.GMP.GCCycles, true
		}
		// Sites alive now stay visible: their alive count is state.
		if r := m.last.Report; r != nil {
			for _, s := range r.CreationSites {
				if s.Alive > 0 {
					m.sites[s.PC] = &siteAcc{site: s, base: s.Alive}
				}
			}
		}
	}
}

// Init implements tea.Model.
func (m *Model) Init() tea.Cmd { return nil }

// Update implements tea.Model.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case SnapshotMsg:
		s := Snapshot(msg)
		if m.paused {
			m.held = append(m.held, s)
			if len(m.held) > maxHeld {
				m.apply(m.held[0])
				m.held = m.held[1:]
			}
			return m, nil
		}
		m.apply(s)
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case tea.KeyMsg:
		if msg.Type == tea.KeyRunes && len(msg.Runes) > 1 && !msg.Paste {
			// Keys typed faster than read arrive together: one at a time.
			for _, r := range msg.Runes {
				if cmd := m.key(string(r)); cmd != nil {
					return m, cmd // quit
				}
			}
			return m, nil
		}
		return m, m.key(msg.String())
	}
	return m, nil
}

func (m *Model) key(k string) tea.Cmd {
	if m.help {
		switch k {
		case "q", "ctrl+c":
			return tea.Quit
		}
		m.help = false // any key closes the help
		return nil
	}
	switch k {
	case "q", "ctrl+c", "ctrl+d":
		return tea.Quit
	case "p", " ":
		m.paused = !m.paused
		if !m.paused {
			for _, s := range m.held {
				m.apply(s)
			}
			m.held = nil
		}
	case "s":
		m.sortIdx[m.panel] = (m.sortIdx[m.panel] + 1) % len(sortCols[m.panel])
	case "tab", "right":
		m.panel = (m.panel + 1) % numPanels
	case "shift+tab", "left":
		m.panel = (m.panel + numPanels - 1) % numPanels
	case "1", "2", "3", "4":
		m.panel = Panel(k[0] - '1')
	case "r":
		for _, s := range m.held {
			m.apply(s)
		}
		m.held = nil
		at := time.Now()
		if m.last != nil && !m.last.At.IsZero() {
			at = m.last.At
		}
		m.reset(at)
	case "?", "h":
		m.help = true
	}
	return nil
}

// apply folds one snapshot into the counters and makes it the one shown.
func (m *Model) apply(s Snapshot) {
	prev := m.last
	m.last = &s
	m.seq++
	m.cpuTotal += s.SelfCPU

	// Rates of the probes, from their cumulative counters.
	if prev != nil {
		dt := s.At.Sub(prev.At).Seconds()
		if dt > 0 {
			m.evRate = float64(s.Probes.Events-prev.Probes.Events) / dt
			m.hitRate = map[string]float64{}
			for k, v := range s.Probes.Hits {
				if v >= prev.Probes.Hits[k] {
					m.hitRate[k] = float64(v-prev.Probes.Hits[k]) / dt
				}
			}
		}
	}
	if s.RSS != 0 {
		if m.rssPrev != 0 {
			m.rssDelta = int64(s.RSS) - int64(m.rssPrev)
		}
		m.rssPrev = s.RSS
	}
	if g := s.GMP; g != nil && g.HasGC {
		if !m.gcKnown {
			m.gcAtReset, m.gcKnown = g.GCCycles, true
		}
		if m.gcPrev != 0 || prev != nil {
			m.gcDelta = g.GCCycles - m.gcPrev
		}
		m.gcPrev = g.GCCycles
	}

	r := s.Report
	if r == nil {
		return
	}
	m.created += r.Goroutines.Created
	m.exited += r.Goroutines.Exited
	m.threadsCreated += r.ThreadsCreated
	for _, w := range r.ThreadsWhy {
		if m.threadsWhy == nil {
			m.threadsWhy = map[string]uint64{}
		}
		m.threadsWhy[w.Function] += w.Count
	}
	m.heapGrows += r.HeapGrows
	m.heapGrowBytes += r.HeapGrowBytes
	for _, b := range r.SchedLatency.Histogram {
		if x := m.lat[b.LoNs]; x != nil {
			x.n += b.Count
		} else {
			m.lat[b.LoNs] = &bucket{hi: b.HiNs, n: b.Count}
		}
		m.latN += b.Count
	}
	m.latMax = max(m.latMax, r.SchedLatency.MaxNs)
	m.p99Hist = push(m.p99Hist, r.SchedLatency.P99Ns)

	seen := map[string]bool{}
	for _, st := range r.CreationSites {
		a := m.sites[st.PC]
		if a == nil {
			a = &siteAcc{}
			m.sites[st.PC] = a
		}
		a.site = st
		a.created += st.Created
		a.exited += st.Exited
		a.lastNew = st.Created
		a.aliveHist = push(a.aliveHist, st.Alive)
		seen[st.PC] = true
	}
	for pc, a := range m.sites { // not in the report: none alive
		if !seen[pc] {
			a.site.Alive, a.lastNew = 0, 0
			a.aliveHist = push(a.aliveHist, 0)
		}
	}

	for _, w := range m.waits {
		w.lastNs, w.waiting = 0, 0
	}
	for _, wr := range r.WaitReasons {
		a := m.waits[wr.Reason]
		if a == nil {
			a = &waitAcc{reason: wr.Reason}
			m.waits[wr.Reason] = a
		}
		a.count += wr.Count
		a.total += wr.TotalNs
		a.lastNs = wr.TotalNs
		a.waiting = wr.WaitingNow
	}

	for _, th := range r.Threads {
		k := [2]uint64{uint64(th.MID), uint64(th.TID)}
		a := m.threads[k]
		if a == nil {
			a = &threadAcc{}
			m.threads[k] = a
		}
		a.th = th
		a.runs += th.GoroutinesRun
		a.busy += th.BusyNs
		a.lastSeq = m.seq
	}
}

func push(h []uint64, v uint64) []uint64 {
	h = append(h, v)
	if len(h) > histLen {
		h = h[len(h)-histLen:]
	}
	return h
}

// latQuantile returns the q-quantile of the latencies since start (or
// reset) as sched.Histogram.Quantile does: the upper bound of the bucket
// holding the value of rank ceil(q*n), clamped to the maximum.
func (m *Model) latQuantile(q float64) uint64 {
	if m.latN == 0 {
		return 0
	}
	los := make([]uint64, 0, len(m.lat))
	for lo := range m.lat {
		los = append(los, lo)
	}
	sort.Slice(los, func(i, j int) bool { return los[i] < los[j] })
	rank := uint64(q*float64(m.latN) + 0.999999999)
	rank = max(1, min(rank, m.latN))
	var cum uint64
	for _, lo := range los {
		b := m.lat[lo]
		cum += b.n
		if cum >= rank {
			return min(b.hi, m.latMax)
		}
	}
	return m.latMax
}

// Panel returns the panel shown.
func (m *Model) Panel() Panel { return m.panel }

// Paused reports whether the display is paused.
func (m *Model) Paused() bool { return m.paused }

// SortColumn returns the name of the current panel's sort column.
func (m *Model) SortColumn() string { return sortCols[m.panel][m.sortIdx[m.panel]] }
