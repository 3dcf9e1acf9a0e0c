// Package paths aggregates the four paths by which a Go program enters its
// runtime, and the runtime's syscalls, from gmpwatch events
// (analysis/event):
//
//   - CG, creation of goroutines: per go statement (g.gopc) the goroutines
//     created, exited and alive, their start function, creators, lifetimes,
//     and the alive count over time, whose steady rise is the leak signal;
//     and goroutines created per creation stack.
//   - CC, channel communication (and every other park): time blocked per park
//     site, the first frame outside the runtime of the park stack, by wait
//     reason, in total and as a distribution; send and receive counts per
//     call site when the channel probes are on.
//   - MA, memory allocation: the runtime's sampled allocations
//     (mProf_Malloc), scaled as runtime/pprof scales the heap profile, heap
//     growth, and mallocgc calls when that probe is on.
//   - TC, thread creation: threads created, by the goroutine and stack that
//     asked, and the thread count over time.
//   - Syscalls: time in system calls per call site (the first frame outside
//     the runtime and the syscall wrappers), and how often sysmon handed the
//     P off while the goroutine was in the kernel (SyscallExit Reason 1).
//
// It also keeps, per stack, the scheduling delay (runnable to running,
// charged to the stack at which the goroutine became runnable, as
// `go tool trace -pprof=sched` does, first runs included), for the exports.
//
// Stacks are kept as a Loc (a stack ID and the event's PC) while events come
// and are resolved to frames only when a report is made, so stacks that
// arrive after their events are fine.
//
// Stack semantics: Stacks(id) is leaf first; pcs[0] is the probed
// instruction and the rest are return addresses. Event.PC, when the event has
// a stack, is the return address of the probed function's caller, which a
// frame-pointer walk from a function's entry misses: it is put back as the
// second frame.
package paths

import (
	"math"
	"sort"
	"strings"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
)

// DefaultMemProfileRate is runtime.MemProfileRate's default: one sampled
// allocation per 512 KiB allocated, on average.
const DefaultMemProfileRate = 512 * 1024

// DefaultMaxGoroutines bounds the per-goroutine state.
const DefaultMaxGoroutines = 4 << 20

// DefaultSamplePeriod is how often (event time) the per-site alive counts
// and the thread count are sampled for the series.
const DefaultSamplePeriod = 100_000_000 // 100ms

// Config configures a Model.
type Config struct {
	WaitReasons plan.WaitReasons
	Symbolize   gobin.Symbolize
	// Stacks returns a captured stack by ID; nil when none are captured.
	Stacks func(id int32) []uint64
	// MemProfileRate is the target's runtime.MemProfileRate; 0 means the
	// default.
	MemProfileRate int64
	MaxGoroutines  int
	// SamplePeriod in ns; 0 means DefaultSamplePeriod.
	SamplePeriod uint64
}

// Loc names where something happened: a captured stack and the event's PC.
// Ret says whether PC is a return address.
type Loc struct {
	Stack int32
	PC    uint64
	Ret   bool
}

// Agg is a count, a total and a distribution of durations.
type Agg struct {
	Count   uint64
	TotalNs uint64
	Hist    sched.Histogram
}

func (a *Agg) add(d uint64) {
	a.Count++
	a.TotalNs += d
	a.Hist.Record(d)
}

// BlockKey is a park: its wait reason and where it happened.
type BlockKey struct {
	Reason uint8
	Loc    Loc
}

// Alloc counts sampled allocations.
type Alloc struct {
	Count uint64 // samples
	Bytes uint64 // bytes in the samples
}

// ChanOps counts channel operations at one call site.
type ChanOps struct {
	Send, Recv, Blocking uint64
}

// site is one go statement.
type site struct {
	pc, startpc uint64
	created     uint64
	exited      uint64
	alive       int64
	parents     map[uint64]uint64 // parent goid -> goroutines created
	life        Agg
	series      []int64 // alive at each sample
}

// runnable kinds: why a goroutine became runnable.
const (
	runCreated = iota + 1
	runUnparked
	runYielded
)

type ginfo struct {
	site      *site
	createdTs uint64
	// runnable since, and the stack it became runnable at
	runSince uint64
	runLoc   Loc
	// parked since, reason and where
	parkSince  uint64
	parkKey    BlockKey
	parked     bool
	runnable   bool
	sysSince   uint64
	sysLoc     Loc
	inSyscall  bool
	createLoc  Loc
	createSeen bool
}

// Model aggregates the paths. Create it with New; feed it with Handle.
type Model struct {
	cfg Config

	gcCycles *uint32 // SetGCCycles

	gs        map[uint64]*ginfo
	untracked uint64

	sites  []*site
	bySite map[uint64]*site

	Created   map[Loc]uint64 // goroutines created by creation stack
	Alive     map[Loc]int64  // of those, not exited
	Delay     map[Loc]*Agg   // scheduling delay by runnable stack
	Blocks    map[BlockKey]*Agg
	Allocs    map[Loc]*Alloc
	Mallocs   map[Loc]*Alloc // mallocgc calls (opt-in probe)
	Chans     map[uint64]*ChanOps
	Threads   map[Loc]uint64 // threads created by requesting stack
	Requester map[uint64]uint64
	Syscalls  map[Loc]*Agg

	heapGrows, heapGrowBytes uint64
	threadCreates            uint64 // newm
	threadStarts             uint64 // newosproc
	handoffs                 uint64 // syscalls whose P sysmon handed off

	first, last uint64
	nextSample  uint64
	threadSer   []uint64
	samples     int
	events      uint64
	kinds       [32]uint64
}

// New returns an empty model.
func New(cfg Config) *Model {
	if cfg.MemProfileRate <= 0 {
		cfg.MemProfileRate = DefaultMemProfileRate
	}
	if cfg.MaxGoroutines <= 0 {
		cfg.MaxGoroutines = DefaultMaxGoroutines
	}
	if cfg.SamplePeriod == 0 {
		cfg.SamplePeriod = DefaultSamplePeriod
	}
	return &Model{
		cfg:       cfg,
		gs:        map[uint64]*ginfo{},
		bySite:    map[uint64]*site{},
		Created:   map[Loc]uint64{},
		Alive:     map[Loc]int64{},
		Delay:     map[Loc]*Agg{},
		Blocks:    map[BlockKey]*Agg{},
		Allocs:    map[Loc]*Alloc{},
		Mallocs:   map[Loc]*Alloc{},
		Chans:     map[uint64]*ChanOps{},
		Threads:   map[Loc]uint64{},
		Requester: map[uint64]uint64{},
		Syscalls:  map[Loc]*Agg{},
	}
}

// Config returns the model's configuration (with defaults filled in).
// SetGCCycles records the GC cycles the runtime completed over the model's
// span, counted by the runtime itself (memstats.numgc read from memory).
func (m *Model) SetGCCycles(n uint32) { m.gcCycles = &n }

func (m *Model) Config() Config { return m.cfg }

func retLoc(ev *event.Event) Loc { return Loc{Stack: ev.StackID, PC: ev.PC, Ret: true} }

func (m *Model) g(goid uint64) *ginfo {
	if g := m.gs[goid]; g != nil {
		return g
	}
	if len(m.gs) >= m.cfg.MaxGoroutines {
		m.untracked++
		return nil
	}
	g := &ginfo{}
	m.gs[goid] = g
	return g
}

func (m *Model) siteFor(pc, startpc uint64) *site {
	if s := m.bySite[pc]; s != nil {
		return s
	}
	s := &site{pc: pc, startpc: startpc, parents: map[uint64]uint64{}}
	// Sites that appear late have been at zero alive until now.
	s.series = make([]int64, m.samples)
	m.sites = append(m.sites, s)
	m.bySite[pc] = s
	return s
}

// sample records the series up to ts.
func (m *Model) sample(ts uint64) {
	if m.nextSample == 0 {
		m.nextSample = ts + m.cfg.SamplePeriod
		return
	}
	for ts >= m.nextSample {
		for _, s := range m.sites {
			s.series = append(s.series, s.alive)
		}
		m.threadSer = append(m.threadSer, m.threadsCreated())
		m.samples++
		m.nextSample += m.cfg.SamplePeriod
	}
}

func (m *Model) threadsCreated() uint64 { return max(m.threadCreates, m.threadStarts) }

func (m *Model) runnable(g *ginfo, ts uint64, loc Loc) {
	if g.runnable {
		return // keep the earlier stamp
	}
	g.runnable, g.runSince, g.runLoc = true, ts, loc
}

func (m *Model) endPark(g *ginfo, ts uint64) {
	if !g.parked {
		return
	}
	g.parked = false
	if ts < g.parkSince {
		return
	}
	a := m.Blocks[g.parkKey]
	if a == nil {
		a = &Agg{}
		m.Blocks[g.parkKey] = a
	}
	a.add(ts - g.parkSince)
}

// Handle applies one event.
func (m *Model) Handle(ev *event.Event) {
	ts := ev.Ts
	if m.first == 0 {
		m.first = ts
	}
	if ts > m.last {
		m.last = ts
	}
	m.events++
	if int(ev.Kind) < len(m.kinds) {
		m.kinds[ev.Kind]++
	}
	m.sample(ts)

	switch ev.Kind {
	case event.KindGoCreate:
		g := m.g(ev.Goid)
		if g == nil || g.createSeen {
			return
		}
		s := m.siteFor(ev.PC, ev.PC2)
		s.created++
		s.alive++
		s.parents[ev.Aux]++
		g.site, g.createdTs, g.createSeen = s, ts, true
		g.createLoc = Loc{Stack: ev.StackID, PC: ev.PC, Ret: true}
		m.Created[g.createLoc]++
		m.Alive[g.createLoc]++
		if ev.Flags&event.FlagParked != 0 {
			g.parked, g.parkSince = true, ts
			g.parkKey = BlockKey{Reason: ev.Reason, Loc: g.createLoc}
		} else {
			m.runnable(g, ts, g.createLoc)
		}
	case event.KindGoStart:
		g := m.gs[ev.Goid]
		if g == nil {
			return
		}
		m.endPark(g, ts) // an unpark not seen
		if g.runnable {
			g.runnable = false
			if ts >= g.runSince {
				a := m.Delay[g.runLoc]
				if a == nil {
					a = &Agg{}
					m.Delay[g.runLoc] = a
				}
				a.add(ts - g.runSince)
			}
		}
	case event.KindGoPark:
		g := m.g(ev.Goid)
		if g == nil {
			return
		}
		key := BlockKey{Reason: ev.Reason, Loc: retLoc(ev)}
		if g.parked && g.parkKey == key {
			return // repeated hit (morestack)
		}
		g.runnable = false
		g.parked, g.parkSince, g.parkKey = true, ts, key
	case event.KindGoUnpark:
		g := m.gs[ev.Goid]
		if g == nil || !g.parked {
			return
		}
		m.endPark(g, ts)
		m.runnable(g, ts, g.parkKey.Loc)
	case event.KindGoSched:
		g := m.gs[ev.Goid]
		if g == nil {
			return
		}
		// No stack at a yield: charge the go statement's start function.
		loc := Loc{Stack: event.NoStack}
		if g.site != nil {
			loc.PC = g.site.startpc
		}
		m.runnable(g, ts, loc)
	case event.KindGoExit:
		g := m.gs[ev.Goid]
		if g == nil {
			return
		}
		if g.site != nil {
			g.site.exited++
			g.site.alive--
			if ts >= g.createdTs {
				g.site.life.add(ts - g.createdTs)
			}
			m.Alive[g.createLoc]--
		}
		delete(m.gs, ev.Goid)
	case event.KindThreadCreate, event.KindThreadStart:
		if ev.Kind == event.KindThreadCreate {
			m.threadCreates++
		} else {
			m.threadStarts++
		}
		// Attribute by the kind the target delivers most: newm when on.
		if ev.Kind == event.KindThreadCreate || m.threadCreates == 0 {
			loc := Loc{Stack: ev.StackID, PC: ev.PC, Ret: true}
			if loc.Stack == event.NoStack && loc.PC == 0 {
				// No stack: the goroutine that asked, by its go statement.
				if g := m.gs[ev.Goid]; g != nil && g.site != nil && ev.Flags&event.FlagFromG0 == 0 {
					loc.PC = g.site.pc
				} else {
					loc.Ret = false
				}
			}
			m.Threads[loc]++
			m.Requester[ev.Goid]++
		}
	case event.KindSyscallEnter:
		g := m.g(ev.Goid)
		if g == nil {
			return
		}
		g.inSyscall, g.sysSince, g.sysLoc = true, ts, retLoc(ev)
	case event.KindSyscallExit:
		g := m.gs[ev.Goid]
		if g == nil || !g.inSyscall {
			return
		}
		g.inSyscall = false
		if ev.Reason == 1 { // sysmon handed the P off
			m.handoffs++
		}
		a := m.Syscalls[g.sysLoc]
		if a == nil {
			a = &Agg{}
			m.Syscalls[g.sysLoc] = a
		}
		if ts >= g.sysSince {
			a.add(ts - g.sysSince)
		}
	case event.KindAlloc:
		m.alloc(m.Allocs, ev)
	case event.KindMalloc:
		m.alloc(m.Mallocs, ev)
	case event.KindHeapGrow:
		m.heapGrows++
		m.heapGrowBytes += ev.Aux
	case event.KindChanSend, event.KindChanRecv:
		c := m.Chans[ev.PC]
		if c == nil {
			c = &ChanOps{}
			m.Chans[ev.PC] = c
		}
		if ev.Kind == event.KindChanSend {
			c.Send++
		} else {
			c.Recv++
		}
		if ev.Reason == 1 {
			c.Blocking++
		}
	}
}

func (m *Model) alloc(into map[Loc]*Alloc, ev *event.Event) {
	loc := retLoc(ev)
	a := into[loc]
	if a == nil {
		a = &Alloc{}
		into[loc] = a
	}
	a.Count++
	a.Bytes += ev.Aux
}

// ScaleHeapSample scales sampled allocations (count samples of size bytes
// in all) to the estimate runtime/pprof reports for them: each sample stands
// for 1/(1-exp(-avg/rate)) allocations of its average size.
func ScaleHeapSample(count, size, rate int64) (int64, int64) {
	if count == 0 || size == 0 {
		return 0, 0
	}
	if rate <= 1 {
		return count, size
	}
	avg := float64(size) / float64(count)
	scale := 1 / (1 - math.Exp(-avg/float64(rate)))
	return int64(float64(count) * scale), int64(float64(size) * scale)
}

// Frames resolves loc to frames, leaf first (see the package comment for
// the stack semantics). Unresolved PCs get a frame with an empty Func.
func (m *Model) Frames(loc Loc) []Frame {
	var pcs []uint64
	var rets []bool
	if loc.Stack != event.NoStack && m.cfg.Stacks != nil {
		st := m.cfg.Stacks(loc.Stack)
		for i, pc := range st {
			pcs = append(pcs, pc)
			rets = append(rets, i > 0)
			if i == 0 && loc.PC != 0 && st[0] != loc.PC && (len(st) < 2 || st[1] != loc.PC) {
				pcs = append(pcs, loc.PC)
				rets = append(rets, loc.Ret)
			}
		}
	}
	if len(pcs) == 0 && loc.PC != 0 {
		pcs, rets = []uint64{loc.PC}, []bool{loc.Ret}
	}
	out := make([]Frame, 0, len(pcs))
	for i, pc := range pcs {
		f := Frame{PC: pc}
		if m.cfg.Symbolize != nil {
			f.Frame, _ = m.cfg.Symbolize(pc, rets[i])
		}
		out = append(out, f)
	}
	return out
}

// Frame is a resolved PC.
type Frame struct {
	PC uint64
	gobin.Frame
}

// IsRuntime reports whether a frame belongs to the runtime: the frames a
// park, an allocation or a thread request passes through below the user's
// code. Functions the runtime implements for other packages by linkname
// (time.Sleep, sync.runtime_Semacquire, internal/poll.runtime_pollWait) are
// in the runtime's source directory.
func IsRuntime(f gobin.Frame) bool {
	fn := f.Func
	return fn == "" || strings.HasPrefix(fn, "runtime.") || strings.HasPrefix(fn, "internal/runtime/") ||
		strings.Contains(fn, ".runtime_") ||
		strings.Contains(f.File, "/src/runtime/") || strings.Contains(f.File, "/src/internal/runtime/")
}

// syscallWrappers are the packages that only wrap system calls: a syscall
// is charged to the first frame outside them and the runtime.
var syscallWrappers = []string{"syscall.", "internal/syscall/", "golang.org/x/sys/unix.", "internal/poll."}

// SyscallFrame returns the first frame of loc outside the runtime and the
// system call wrappers, or what UserFrame returns when there is none.
func (m *Model) SyscallFrame(loc Loc) (Frame, bool) {
	for _, f := range m.Frames(loc) {
		if IsRuntime(f.Frame) {
			continue
		}
		wrapper := false
		for _, p := range syscallWrappers {
			wrapper = wrapper || strings.HasPrefix(f.Func, p)
		}
		if !wrapper {
			return f, true
		}
	}
	return m.UserFrame(loc)
}

// UserFrame returns the first frame of loc outside the runtime. When every
// frame is the runtime's it returns the probed function's caller (or the
// only frame) and false.
func (m *Model) UserFrame(loc Loc) (Frame, bool) {
	fs := m.Frames(loc)
	for _, f := range fs {
		if !IsRuntime(f.Frame) {
			return f, true
		}
	}
	switch {
	case len(fs) > 1 && loc.Stack != event.NoStack:
		return fs[1], false
	case len(fs) > 0:
		return fs[0], false
	}
	return Frame{}, false
}

// Span is the event time covered: first and last event.
func (m *Model) Span() (first, last uint64) { return m.first, m.last }

// sortedKeys helps reports list maps deterministically.
func sortedKeys[K comparable, V any](mp map[K]V, less func(a, b K) bool) []K {
	ks := make([]K, 0, len(mp))
	for k := range mp {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return less(ks[i], ks[j]) })
	return ks
}

// LocLess orders locations deterministically.
func LocLess(a, b Loc) bool {
	if a.PC != b.PC {
		return a.PC < b.PC
	}
	if a.Stack != b.Stack {
		return a.Stack < b.Stack
	}
	return !a.Ret && b.Ret
}

// StartPC returns the start function PC of the goroutines created at the go
// statement gopc, or 0.
func (m *Model) StartPC(gopc uint64) uint64 {
	if s := m.bySite[gopc]; s != nil {
		return s.startpc
	}
	return 0
}

// Count returns how many events of kind k the model saw.
func (m *Model) Count(k event.Kind) uint64 {
	if int(k) < len(m.kinds) {
		return m.kinds[k]
	}
	return 0
}

// StackIDs returns the IDs of the stacks the events referred to, sorted.
func (m *Model) StackIDs() []int32 {
	seen := map[int32]bool{}
	add := func(l Loc) {
		if l.Stack != event.NoStack {
			seen[l.Stack] = true
		}
	}
	for l := range m.Created {
		add(l)
	}
	for l := range m.Delay {
		add(l)
	}
	for k := range m.Blocks {
		add(k.Loc)
	}
	for l := range m.Allocs {
		add(l)
	}
	for l := range m.Threads {
		add(l)
	}
	for l := range m.Syscalls {
		add(l)
	}
	ids := make([]int32, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}
