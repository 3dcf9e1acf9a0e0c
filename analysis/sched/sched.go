// Package sched is gmpwatch's scheduler model: it consumes the events of
// analysis/event, rebuilds each goroutine's life (GoRunnable, GoRunning,
// GoWaiting, GoSyscall, as golang.org/x/exp/trace names the states), and
// aggregates what a person needs: goroutines created, exited and alive,
// scheduling latency, time waiting by wait reason, creation sites, per-P and
// per-M activity and thread creations.
//
// Definitions:
//
//   - Scheduling latency is the time a goroutine spends runnable before it
//     runs: from the GoCreate, GoUnpark or GoSched that made it runnable to
//     its next GoStart — every runnable → running transition, as the
//     runtime's own /sched/latencies:seconds counts them. (`go tool trace
//     -pprof=sched` leaves out each goroutine's first run, creation to
//     first GoStart; analysis/exectrace computes both from a trace.)
//   - A wait is the time from a GoPark to the GoUnpark of the same goroutine
//     (or to its GoStart when the unpark was not seen), charged to the park's
//     wait reason.
//   - A busy span of an M (and of the P it held) runs from a GoStart to the
//     next Schedule, GoPark, GoSched or GoExit on that M.
//   - A creation site is the PC of the go statement (g.gopc, a return address,
//     symbolized at pc-1 as the runtime's "created by" does). Alive per site
//     counts the goroutines created there since the model started that have
//     not exited; GoExit carries g.gopc too, so exits of goroutines created
//     before the model started are attributed to their site as well.
//
// Goroutines seen first in the middle of their life (created before gmpwatch
// attached) are tracked from then on and counted as preexisting. Per-goroutine
// state is bounded by Config.MaxGoroutines; goroutines beyond it are counted as
// untracked and reported, never dropped silently.
//
// The model keeps two sets of counters: lifetime totals and the current
// interval. Snapshot reports the interval, Reset starts a new one, Total
// reports the lifetime. A Model is not safe for concurrent use.
package sched

import (
	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
)

// State is a goroutine state, named as in golang.org/x/exp/trace.
type State uint8

const (
	GoUndetermined State = iota
	GoRunnable
	GoRunning
	GoWaiting
	GoSyscall
	numStates
)

var stateNames = [...]string{"GoUndetermined", "GoRunnable", "GoRunning", "GoWaiting", "GoSyscall"}

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return "GoDead"
}

// DefaultMaxGoroutines is the default bound on per-goroutine state: 4Mi
// goroutines, 16 bytes of state each plus map overhead.
const DefaultMaxGoroutines = 4 << 20

// Config configures a Model.
type Config struct {
	// WaitReasons names wait reasons by index (plan.Plan.WaitReasons).
	WaitReasons plan.WaitReasons
	// Symbolize resolves creation sites; nil leaves them as hex PCs.
	Symbolize gobin.Symbolize
	// MaxGoroutines bounds the goroutines tracked at once; 0 means
	// DefaultMaxGoroutines.
	MaxGoroutines int
}

// g flags.
const (
	gCreateSeen uint8 = 1 << iota // its GoCreate was seen: counts in its site's alive
)

// gstate is what the model keeps per live goroutine: 16 bytes.
type gstate struct {
	since  uint64 // event time it entered state
	site   uint32 // index+1 into Model.sites; 0 unknown
	state  State
	reason uint8 // wait reason while GoWaiting
	flags  uint8
}

// activity is goroutines run and busy time of a P or an M.
type activity struct {
	runs uint64
	busy uint64 // ns
}

// mstate is one runtime M (thread).
type mstate struct {
	id      int64  // m.id; -1 unknown
	tid     uint32 // kernel thread ID, 0 until seen
	created bool   // its ThreadCreate was seen
	// current busy span
	running bool
	curg    uint64
	p       int32
	start   uint64
	iv, tot activity
}

// pstate is one runtime P.
type pstate struct {
	id      int32
	iv, tot activity
	// holder is the M whose busy span holds the P, from start. A P can be
	// taken from an M blocked in a syscall and run goroutines on another:
	// its busy time is then the new M's, not both.
	holder *mstate
	start  uint64
}

// site is one creation site.
type site struct {
	pc      uint64
	frame   gobin.Frame
	ok      bool // symbolized
	created [2]uint64
	exited  [2]uint64
	alive   int64 // created since the model started, not exited
}

// Interval and lifetime slots of per-site counters.
const (
	slotIV  = 0
	slotTot = 1
)

// waitAgg aggregates waits of one reason.
type waitAgg struct {
	count uint64
	total uint64
}

// counters are the aggregates kept twice: for the interval and the lifetime.
type counters struct {
	start           uint64 // event time the period started; 0 until the first event
	events          uint64
	created         uint64
	exited          uint64
	preexisting     uint64
	untracked       uint64 // goroutines created while the bound was reached
	untrackedEvents uint64 // events about goroutines the model could not track
	threadsCreated  uint64
	threadWhy       map[uint64]uint64 // threads created, by newm's caller (a return address)
	heapGrows       uint64
	heapGrowBytes   uint64
	preemptions     uint64
	yields          uint64
	syscalls        uint64
	syscallNs       uint64
	lat             Histogram
	waits           [256]waitAgg
	lost            uint64
}

// Model is the scheduler model. Create it with New.
type Model struct {
	cfg Config
	max int

	gs      map[uint64]gstate // by goid; values, not pointers: 4Mi entries stay cheap for the GC
	byState [numStates]int64
	waiting [256]int64 // goroutines waiting now, by reason

	ms    map[int64]*mstate // by m.id, or -(tid)-1 when the M is unknown
	ps    map[int32]*pstate
	sites []*site
	bySPC map[uint64]uint32 // creation PC -> index+1

	iv, tot counters
	lastTs  uint64
	// seenFrom is when the probes last started seeing every transition (the
	// open of a sampling window): a latency or wait that began before it
	// spans time the probes did not see, and is not measured.
	seenFrom uint64
	lostSeen uint64 // Tracer's lost counter at the last SetLost
}

// New returns an empty model.
func New(cfg Config) *Model {
	m := &Model{
		cfg:   cfg,
		max:   cfg.MaxGoroutines,
		gs:    make(map[uint64]gstate),
		ms:    make(map[int64]*mstate),
		ps:    make(map[int32]*pstate),
		bySPC: make(map[uint64]uint32),
	}
	if m.max <= 0 {
		m.max = DefaultMaxGoroutines
	}
	return m
}

// Tracked returns the number of goroutines whose state the model holds.
func (m *Model) Tracked() int { return len(m.gs) }

// SetLost records the tracer's running count of lost events (monotone).
func (m *Model) SetLost(total uint64) {
	if total <= m.lostSeen {
		return
	}
	d := total - m.lostSeen
	m.lostSeen = total
	m.iv.lost += d
	m.tot.lost += d
}

func (m *Model) both(f func(c *counters)) {
	f(&m.iv)
	f(&m.tot)
}

// setState moves g to state s at ts, keeping the by-state counts.
func (m *Model) setState(g *gstate, s State, reason uint8, ts uint64) {
	if g.state == GoWaiting {
		m.waiting[g.reason]--
	}
	m.byState[g.state]--
	g.state, g.reason, g.since = s, reason, ts
	m.byState[s]++
	if s == GoWaiting {
		m.waiting[reason]++
	}
}

// newG starts tracking goid in state s. It returns false when the bound is
// reached; the caller counts what was not tracked.
func (m *Model) newG(goid uint64, s State, reason uint8, ts uint64) (gstate, bool) {
	if len(m.gs) >= m.max {
		return gstate{}, false
	}
	g := gstate{state: GoUndetermined}
	m.byState[GoUndetermined]++
	m.setState(&g, s, reason, ts)
	m.gs[goid] = g
	return g, true
}

// midLife returns the state of goid and known=true if the model tracks it.
// Otherwise it starts tracking it in state s as a goroutine seen first in the
// middle of its life, and returns tracked=false if the bound is reached.
// Callers that change g store it back with m.gs[goid] = g when tracked.
func (m *Model) midLife(goid uint64, s State, reason uint8, ts uint64) (g gstate, tracked, known bool) {
	if g, ok := m.gs[goid]; ok {
		return g, true, true
	}
	if goid == 0 {
		return gstate{}, false, false
	}
	g, tracked = m.newG(goid, s, reason, ts)
	if tracked {
		m.both(func(c *counters) { c.preexisting++ })
	} else {
		m.both(func(c *counters) { c.untrackedEvents++ })
	}
	return g, tracked, false
}

func (m *Model) dropG(goid uint64, g gstate) {
	if g.state == GoWaiting {
		m.waiting[g.reason]--
	}
	m.byState[g.state]--
	delete(m.gs, goid)
}

// siteFor returns the index+1 of the site of creation PC pc, adding it.
func (m *Model) siteFor(pc uint64) uint32 {
	if i, ok := m.bySPC[pc]; ok {
		return i
	}
	s := &site{pc: pc}
	if m.cfg.Symbolize != nil && pc != 0 {
		s.frame, s.ok = m.cfg.Symbolize(pc, true) // g.gopc is a return address
	}
	m.sites = append(m.sites, s)
	i := uint32(len(m.sites))
	m.bySPC[pc] = i
	return i
}

func (m *Model) mFor(ev *event.Event) *mstate {
	key := ev.MID
	if key < 0 {
		key = -int64(ev.TID) - 1
	}
	ms := m.ms[key]
	if ms == nil {
		ms = &mstate{id: ev.MID, p: -1}
		m.ms[key] = ms
	}
	if ev.TID != 0 {
		ms.tid = ev.TID
	}
	return ms
}

func (m *Model) pFor(id int32) *pstate {
	ps := m.ps[id]
	if ps == nil {
		ps = &pstate{id: id}
		m.ps[id] = ps
	}
	return ps
}

// endSpan ends the busy span of ms at ts.
func (m *Model) endSpan(ms *mstate, ts uint64) {
	if !ms.running {
		return
	}
	ms.running = false
	if ts <= ms.start {
		return
	}
	d := ts - ms.start
	ms.iv.busy += d
	ms.tot.busy += d
	if ms.p >= 0 {
		m.endPSpan(m.pFor(ms.p), ms, ts)
	}
}

// endPSpan ends at ts the busy span of ps held by ms, if ms still holds it.
func (m *Model) endPSpan(ps *pstate, ms *mstate, ts uint64) {
	if ps.holder != ms {
		return
	}
	if ts > ps.start {
		ps.iv.busy += ts - ps.start
		ps.tot.busy += ts - ps.start
	}
	ps.holder = nil
}

func (m *Model) recordWait(reason uint8, since, ts uint64) {
	if ts < since || since < m.seenFrom {
		return // began before the probes saw it: its length is unknown
	}
	d := ts - since
	m.both(func(c *counters) {
		c.waits[reason].count++
		c.waits[reason].total += d
	})
}

// WindowClosed tells the model that the hot probes were detached at ts
// (sampling under an overhead budget): the busy spans running then end
// there, since what the Ms do next is not seen.
func (m *Model) WindowClosed(ts uint64) {
	for _, ms := range m.ms {
		m.endSpan(ms, ts)
	}
}

// WindowOpened tells the model that the probes see every transition again
// from ts: latencies and waits that began before ts are not measured.
func (m *Model) WindowOpened(ts uint64) { m.seenFrom = ts }

// Handle applies one event to the model. It never fails: events that do not
// fit what the model knows (lost events, goroutines from before the attach,
// repeated probe hits) are absorbed.
func (m *Model) Handle(ev *event.Event) {
	ts := ev.Ts
	if m.iv.start == 0 {
		m.iv.start = ts
	}
	if m.tot.start == 0 {
		m.tot.start = ts
	}
	if ts > m.lastTs {
		m.lastTs = ts
	}
	m.both(func(c *counters) { c.events++ })

	switch ev.Kind {
	case event.KindGoCreate:
		m.goCreate(ev)
	case event.KindGoStart:
		m.goStart(ev)
	case event.KindGoPark:
		g, tracked, known := m.midLife(ev.Goid, GoRunning, 0, ts)
		if known && g.state == GoWaiting && g.reason == ev.Reason {
			return // a repeated hit of the park probe (morestack)
		}
		m.endSpan(m.mFor(ev), ts)
		if tracked {
			m.setState(&g, GoWaiting, ev.Reason, ts)
			m.gs[ev.Goid] = g
		}
	case event.KindGoUnpark:
		m.mFor(ev)
		g, tracked, known := m.midLife(ev.Goid, GoRunnable, 0, ts)
		if !tracked || !known {
			return // new to the model: runnable from now
		}
		switch g.state {
		case GoRunnable:
			return // already runnable: keep the earlier stamp
		case GoWaiting:
			m.recordWait(g.reason, g.since, ts)
		}
		m.setState(&g, GoRunnable, 0, ts)
		m.gs[ev.Goid] = g
	case event.KindGoSched:
		m.endSpan(m.mFor(ev), ts)
		if ev.Reason == 1 {
			m.both(func(c *counters) { c.preemptions++ })
		} else {
			m.both(func(c *counters) { c.yields++ })
		}
		g, tracked, known := m.midLife(ev.Goid, GoRunnable, 0, ts)
		if tracked && known {
			m.setState(&g, GoRunnable, 0, ts)
			m.gs[ev.Goid] = g
		}
	case event.KindGoExit:
		m.goExit(ev)
	case event.KindSchedule:
		m.endSpan(m.mFor(ev), ts)
	case event.KindHeapGrow:
		m.both(func(c *counters) { c.heapGrows++; c.heapGrowBytes += ev.Aux })
	case event.KindThreadCreate:
		m.mFor(ev) // the creating M
		m.both(func(c *counters) {
			c.threadsCreated++
			if ev.PC == 0 {
				return // the asking function is unknown
			}
			if c.threadWhy == nil {
				c.threadWhy = map[uint64]uint64{}
			}
			c.threadWhy[ev.PC]++
		})
		id := int64(ev.Aux)
		if id < 0 {
			break // newm(fn, pp, -1): the id is reserved later, unknown here
		}
		if ms := m.ms[id]; ms == nil {
			m.ms[id] = &mstate{id: id, p: -1, created: true}
		} else {
			ms.created = true
		}
	case event.KindSyscallEnter:
		m.mFor(ev)
		g, tracked, known := m.midLife(ev.Goid, GoSyscall, 0, ts)
		if tracked && known && g.state != GoSyscall {
			m.setState(&g, GoSyscall, 0, ts)
			m.gs[ev.Goid] = g
		}
	case event.KindSyscallExit:
		m.mFor(ev)
		g, tracked, known := m.midLife(ev.Goid, GoRunning, 0, ts)
		if tracked && known && g.state == GoSyscall && g.since >= m.seenFrom {
			d := uint64(0)
			if ts > g.since {
				d = ts - g.since
			}
			m.both(func(c *counters) { c.syscalls++; c.syscallNs += d })
			m.setState(&g, GoRunning, 0, ts)
			m.gs[ev.Goid] = g
		}
	}
}

func (m *Model) goCreate(ev *event.Event) {
	ts := ev.Ts
	m.mFor(ev)
	state, reason := GoRunnable, uint8(0)
	if ev.Flags&event.FlagParked != 0 {
		state, reason = GoWaiting, ev.Reason
	}
	g, seen := m.gs[ev.Goid]
	if seen && g.flags&gCreateSeen != 0 {
		return // a repeated hit of the create probe
	}
	si := m.siteFor(ev.PC)
	s := m.sites[si-1]
	m.both(func(c *counters) { c.created++ })
	s.created[slotIV]++
	s.created[slotTot]++
	if seen {
		// Seen before its creation: events of two CPUs arrived out of
		// order. It is not preexisting after all; keep its later state.
		if m.iv.preexisting > 0 {
			m.iv.preexisting--
		}
		m.tot.preexisting--
		g.flags |= gCreateSeen
		g.site = si
		m.gs[ev.Goid] = g
		s.alive++
		return
	}
	g, tracked := m.newG(ev.Goid, state, reason, ts)
	if !tracked {
		m.both(func(c *counters) { c.untracked++ })
		return
	}
	g.flags |= gCreateSeen
	g.site = si
	m.gs[ev.Goid] = g
	s.alive++
}

func (m *Model) goStart(ev *event.Event) {
	ts := ev.Ts
	ms := m.mFor(ev)
	g, tracked, known := m.midLife(ev.Goid, GoRunning, 0, ts)
	if known && g.state == GoRunning && ms.running && ms.curg == ev.Goid {
		return // a repeated hit
	}
	m.endSpan(ms, ts) // an end we did not see
	ms.running, ms.curg, ms.p, ms.start = true, ev.Goid, ev.PID, ts
	ms.iv.runs++
	ms.tot.runs++
	if ev.PID >= 0 {
		ps := m.pFor(ev.PID)
		if old := ps.holder; old != nil && old != ms {
			// The P moved to this M (taken from one in a syscall).
			m.endPSpan(ps, old, ts)
			old.p = -1
		}
		ps.holder, ps.start = ms, ts
		ps.iv.runs++
		ps.tot.runs++
	}
	if !tracked || !known {
		return
	}
	switch g.state {
	case GoRunnable:
		if ts >= g.since && g.since >= m.seenFrom {
			d := ts - g.since
			m.both(func(c *counters) { c.lat.Record(d) })
		}
	case GoWaiting:
		// The unpark was not seen: the wait ends when it runs.
		m.recordWait(g.reason, g.since, ts)
	}
	m.setState(&g, GoRunning, 0, ts)
	m.gs[ev.Goid] = g
}

func (m *Model) goExit(ev *event.Event) {
	ts := ev.Ts
	m.endSpan(m.mFor(ev), ts)
	m.both(func(c *counters) { c.exited++ })
	g, tracked := m.gs[ev.Goid]
	var s *site
	switch {
	case tracked && g.site != 0:
		s = m.sites[g.site-1]
	case ev.PC != 0:
		s = m.sites[m.siteFor(ev.PC)-1]
	}
	if s != nil {
		s.exited[slotIV]++
		s.exited[slotTot]++
	}
	if !tracked {
		// Created before the attach, or untracked. Without untracked
		// goroutines it can only be the former.
		if m.tot.untracked == 0 {
			m.both(func(c *counters) { c.preexisting++ })
		} else {
			m.both(func(c *counters) { c.untrackedEvents++ })
		}
		return
	}
	if g.flags&gCreateSeen != 0 && s != nil {
		s.alive--
	}
	m.dropG(ev.Goid, g)
}

// Reset ends the current interval at now (an event-clock time; 0 means the
// time of the last event) and starts the next. Lifetime state is kept; busy
// spans running across now are split at now.
func (m *Model) Reset(now uint64) {
	if now == 0 {
		now = m.lastTs
	}
	for _, ms := range m.ms {
		if ms.running && now > ms.start {
			d := now - ms.start
			ms.iv.busy += d
			ms.tot.busy += d
			ms.start = now
		}
		ms.iv = activity{}
	}
	for _, ps := range m.ps {
		if ps.holder != nil && now > ps.start {
			ps.iv.busy += now - ps.start
			ps.tot.busy += now - ps.start
			ps.start = now
		}
		ps.iv = activity{}
	}
	for _, s := range m.sites {
		s.created[slotIV] = 0
		s.exited[slotIV] = 0
	}
	m.iv = counters{start: now}
}
