// Package ebpf turns a probe plan (analysis/plan) into uprobes on a Go
// binary's runtime scheduler and a stream of decoded scheduler events
// (analysis/event).
//
// The BPF programs (gmpwatch.bpf.c, compiled with bpf2go; the objects are
// committed) run one per plan program name. Each filters on the target's
// thread group in the kernel, reads the goroutine, M and P through the plan's
// struct offsets, and writes a 64-byte event into a ring buffer that the
// loader polls without per-event wakeups. Events the kernel could not queue
// are counted, never silently dropped.
//
// Where a stack means something (a park, a go statement, a request for a
// thread, a syscall entry, a sampled allocation) the programs also capture
// the target's user stack by frame pointers into a stack map; events carry
// its ID and Tracer.Stack reads it (see analysis/event for the semantics).
//
// The loader decodes events and does not interpret them: that is the job of
// analysis/sched.
package ebpf

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
)

// Sentinel errors; match with errors.Is.
var (
	// ErrPermission: loading BPF or opening uprobes was refused.
	ErrPermission = errors.New("run as root, or grant CAP_BPF and CAP_PERFMON")
	// ErrNoUprobes: the kernel lacks BPF, uprobes or a feature they need.
	ErrNoUprobes = errors.New("kernel without uprobes or BPF support")
	// ErrNoProbe: the plan has no probe for a program that was asked for.
	ErrNoProbe = errors.New("plan has no probe for program")
	// ErrUnknownProgram: Options.Programs names no BPF program.
	ErrUnknownProgram = errors.New("unknown program")
	// ErrRefireSite: a probe that may fire twice (before the stack check's
	// branch) is not on the branch itself, a JBE, whose live flags are what
	// tell the first hit of a morestack re-entry from a call.
	ErrRefireSite = errors.New("refiring probe not on the stack check's JBE")
)

// DefaultPrograms are the programs attached when Options.Programs is nil:
// the scheduler's transitions and the cheap probes of the four paths, which
// fire per goroutine created, per thread, per heap growth and per sampled
// allocation (one per ~512 KiB allocated).
//
// Not in the default, because a program's own behaviour can make them fire
// hundreds of thousands of times a second: "entersyscall" and "exitsyscall"
// fire at every syscall of the syscall package, so at every read and write
// of a file or network connection. The test targets make few (1 to 200 a
// second: spawn 2/s, schedload 1/s, blockers 200/s), but a network server
// makes one or two per request, and a syscall costs about 10us of BPF time
// with its entry stack (9us entersyscall, 1us exitsyscall on the test
// machine). "chansend" and "chanrecv" fire at every channel operation
// (schedload: 28000/s), "mallocgc" at every allocation (spawn: 16000/s),
// "casgstatus" at every status change.
var DefaultPrograms = []string{"schedule", "execute", "gopark", "ready", "goschedImpl", "goexit0", "newproc_runqput", "newm", "injectglist",
	"newproc", "newosproc", "mProf_Malloc", "mheap_grow"}

// probePointsCover lists the default programs whose events the probe-points
// runtime patch's one attach point (program "probe_points") delivers, all of
// them from its arguments, without reading the target's memory.
var probePointsCover = []string{"execute", "gopark", "ready", "goschedImpl", "goexit0", "newproc_runqput", "injectglist", "newproc"}

// programs returns the programs Attach attaches for opts and plan p:
// opts.Programs, or DefaultPrograms, less the probes that only serve stacks
// when stacks are off, and with the transitions taken from the probe-points
// patch's attach point when the binary carries it.
func (opts *Options) programs(p *plan.Plan) []string {
	if opts.Programs != nil {
		return opts.Programs
	}
	progs := slices.Clone(DefaultPrograms)
	if opts.NoStacks {
		// newproc only stashes the creation stack for the GoCreate that
		// follows: without stacks it would cost a trap per go statement.
		progs = slices.DeleteFunc(progs, func(n string) bool { return n == "newproc" })
	}
	if p != nil && len(p.ProbesFor("probe_points")) > 0 {
		progs = slices.DeleteFunc(progs, func(n string) bool { return slices.Contains(probePointsCover, n) })
		progs = append(progs, "probe_points")
	}
	return progs
}

// AttachedPrograms returns the names of the programs Attach attaches to p's
// binary for opts (before dropping optional ones whose probes p lacks).
func AttachedPrograms(p *plan.Plan, opts Options) []string { return opts.programs(p) }

// Programs lists every program name the BPF object has, in the order of the
// kernel's hit counters (enum gmp_prog in gmpwatch.h).
var Programs = []string{"schedule", "execute", "gopark", "ready", "goschedImpl", "goexit0", "newproc_runqput", "newproc1_ret", "newm", "injectglist", "casgstatus",
	"entersyscall", "exitsyscall", "mProf_Malloc", "mheap_grow", "newosproc", "mallocgc", "newproc", "chansend", "chanrecv", "probe_points"}

// stackPrograms are the programs that capture a user stack (event StackID).
var stackPrograms = map[string]bool{"gopark": true, "newproc": true, "newm": true, "entersyscall": true, "mProf_Malloc": true}

// fallbacks names the program that stands in for another when the plan has
// no probe for it.
var fallbacks = map[string]string{"newproc_runqput": "newproc1_ret"}

// coreProgram are the programs without which the default set fails to attach.
var coreProgram = map[string]bool{"schedule": true, "execute": true, "gopark": true, "ready": true, "goexit0": true, "newproc_runqput": true}

// DefaultRingBytes is the default ring buffer size: about half a second of
// events at a million events per second (72 bytes each with the header).
const DefaultRingBytes = 32 << 20

// pollInterval bounds how long an event waits in the ring buffer before the
// reader looks, when the ring holds less than the wakeup threshold.
const pollInterval = 20 * time.Millisecond

// Options configure Attach.
type Options struct {
	// PID is the process to trace; 0 takes the plan's PID.
	PID int
	// Programs to attach; nil means DefaultPrograms.
	Programs []string
	// RingBytes is the ring buffer size, rounded up to a power of two; 0
	// means DefaultRingBytes.
	RingBytes int
	// StackEntries is the number of distinct user stacks the kernel can
	// keep (hash buckets, each StackDepth frames); 0 means
	// DefaultStackEntries. A stack whose bucket is taken is lost
	// (Stats.StackLost): about n/(2*StackEntries) of n distinct stacks.
	StackEntries int
	// NoStacks turns user stack capture off: every event has NoStack.
	// A stack costs the target several microseconds (a frame-pointer
	// walk reading its memory), at each park, creation, new thread,
	// syscall entry and sampled allocation.
	NoStacks bool
	// Links is how probes are attached; "" means DefaultLinkKind().
	Links LinkKind
	// NoStream is aggregate-only mode: the programs keep the in-kernel
	// aggregates (Tracer.Aggregates) and the counters (Stats) but write no
	// event (Run delivers none) and take no stack. Programs that feed no
	// aggregate still cost a trap per hit: see AggregatePrograms.
	NoStream bool
	// NoAggregate turns the in-kernel aggregates off (Tracer.Aggregates
	// then fails): a streaming tracer that needs none saves their map
	// updates, 0.1 to 0.45 µs of BPF time per hit on the test machine
	// against 6 to 10 µs for the whole hit (BenchmarkProbeCostAggregate).
	NoAggregate bool
	// NoStreamPrograms write no event although the stream is on: what
	// they see reaches user space through the aggregates only. Of the
	// default programs, ready, newproc_runqput, newproc1_ret and
	// injectglist feed nothing but the aggregates' figures (latency, waits,
	// sites) and the goroutine counts.
	NoStreamPrograms []string
}

// DefaultStackEntries is the default size of the stack map: 32768 stacks of
// StackDepth frames, 16 MiB of kernel memory.
const DefaultStackEntries = 1 << 15

// StackDepth is the most frames a captured stack has (leaf first).
const StackDepth = 64

// Stats are the tracer's counters.
type Stats struct {
	Events uint64 // events decoded and delivered
	// Lost counts events the kernel could not queue (ring buffer full).
	Lost   uint64
	Probes int // attached probes
	// Hits counts probe hits in the target per program.
	Hits map[string]uint64
	// Refires counts hits suppressed because the call re-entered its
	// function through morestack (the call is counted once).
	Refires uint64
	// RefiresBy is Refires per program (included in its Hits).
	RefiresBy map[string]uint64
	// Truncated counts injectglist walks cut at the walk bound: the Gs past
	// the bound got no GoUnpark event.
	Truncated uint64
	// ReadErrors counts failed reads of the target's memory (fields then 0).
	ReadErrors uint64
	// StackLost counts user stacks the kernel did not store (a different
	// stack held the hash bucket, or there was no user stack): those events
	// have StackID NoStack.
	StackLost uint64
	// DecodeErrors counts ring buffer records that did not decode.
	DecodeErrors uint64
}

// Tracer is a set of attached probes and the ring buffer they write to.
type Tracer struct {
	pid    int
	coll   *ebpf.Collection
	links  []link.Link
	kind   LinkKind
	ex     *link.Executable // the target's executable, opened once
	probes []plan.Probe
	rd     *ringbuf.Reader

	events  atomic.Uint64
	decErrs atomic.Uint64

	closing   chan struct{}
	closeOnce sync.Once
	closeErr  error
	running   atomic.Bool
	runDone   chan struct{}

	mu    sync.Mutex
	final *Stats // counters read just before the maps were closed
	agg   aggState

	// User stacks read so far (ids are never reused: see Stack).
	stackMu     sync.Mutex
	stacks      map[int32][]uint64
	stacksFinal bool // the map is closed: stacks holds all there were
	// pushAt holds the runtime addresses of attached stack probes on a
	// PUSHQ BP, where kernels from 6.12 add the caller to the stack;
	// callerAdded says whether this kernel does (stackUnknown until the
	// first such stack is seen).
	pushAt      map[uint64]bool
	callerAdded atomic.Int32
}

const (
	stackUnknown int32 = iota
	stackCallerAdded
	stackCallerMissed
)

// offsetVars maps BPF const volatile variables to plan offset keys. Required
// ones fail the attach when the plan lacks them; the others keep a default.
var offsetVars = []struct {
	name, key string
	required  bool
	def       int64
}{
	{"off_g_m", "g.m", true, 0},
	{"off_g_goid", "g.goid", true, 0},
	{"off_g_gopc", "g.gopc", true, 0},
	{"off_g_startpc", "g.startpc", true, 0},
	{"off_m_id", "m.id", true, 0},
	{"off_m_curg", "m.curg", true, 0},
	{"off_m_p", "m.p", true, 0},
	{"off_p_id", "p.id", true, 0},
	{"off_g_status", "g.atomicstatus", false, -1},
	{"off_g_parent_goid", "g.parentGoid", false, -1},
	{"off_g_schedlink", "g.schedlink", false, -1},
	{"off_m_g0", "m.g0", false, 0}, // 0 in every release
	{"off_m_procid", "m.procid", false, -1},
	{"off_glist_head", "gList.head", false, 0}, // 0 in every release
	{"off_m_oldp", "m.oldp", false, -1},
	{"off_p_status", "p.status", false, -1},
}

// Attach loads the BPF programs with p's offsets and attaches one uprobe per
// plan probe of each program in opts.Programs, filtered on the target PID.
func Attach(p *plan.Plan, opts Options) (*Tracer, error) {
	if p == nil {
		return nil, errors.New("attach: nil plan")
	}
	if p.Arch != "" && p.Arch != "amd64" {
		return nil, fmt.Errorf("attach %s: %w", p.Arch, plan.ErrUnsupportedArch)
	}
	pid := opts.PID
	if pid == 0 {
		pid = p.PID
	}
	if pid <= 0 {
		return nil, errors.New("attach: no target process id")
	}

	// Which probes, for which programs.
	progs := opts.programs(p)
	strict := opts.Programs != nil
	type want struct {
		prog   string
		probes []plan.Probe
	}
	var wants []want
	seen := map[string]bool{}
	for _, name := range progs {
		if progIndex(name) < 0 {
			return nil, fmt.Errorf("attach: %w %q", ErrUnknownProgram, name)
		}
		use := name
		probes := p.ProbesFor(name)
		if len(probes) == 0 {
			if fb, ok := fallbacks[name]; ok {
				use, probes = fb, p.ProbesFor(fb)
			}
		}
		if len(probes) == 0 {
			if strict || coreProgram[name] {
				return nil, fmt.Errorf("attach: %w %q", ErrNoProbe, name)
			}
			continue
		}
		if seen[use] {
			continue
		}
		for _, pr := range probes {
			if pr.Refires && !atJcc(pr.Insn) {
				return nil, fmt.Errorf("attach %s at %#x (%q): %w", pr.Symbol, pr.Address, pr.Insn, ErrRefireSite)
			}
		}
		seen[use] = true
		wants = append(wants, want{use, probes})
	}

	spec, err := loadGmpwatch()
	if err != nil {
		return nil, fmt.Errorf("load bpf spec: %w", err)
	}
	if err := setVariables(spec, p, pid, opts.RingBytes, opts.StackEntries); err != nil {
		return nil, err
	}
	if err := setVar(spec, "capture_stacks", boolByte(!opts.NoStacks)); err != nil {
		return nil, err
	}
	if err := opts.setAggregateVars(spec); err != nil {
		return nil, err
	}
	for name := range spec.Programs {
		if !seen[name] {
			delete(spec.Programs, name)
		}
	}
	kind := opts.Links
	if kind == "" {
		kind = DefaultLinkKind()
	}
	kind.prepareSpec(spec.Programs)
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("load bpf programs: %w", classify(err))
	}
	t := &Tracer{pid: pid, coll: coll, kind: kind, closing: make(chan struct{}), runDone: make(chan struct{}),
		stacks: map[int32][]uint64{}, pushAt: map[uint64]bool{}, agg: aggState{on: !opts.NoAggregate}}

	ex, err := link.OpenExecutable(p.Path)
	if err != nil {
		coll.Close()
		return nil, fmt.Errorf("attach: open %s: %w", p.Path, err)
	}
	t.ex = ex
	for _, w := range wants {
		prog := coll.Programs[w.prog]
		for _, pr := range w.probes {
			l, err := kind.attach(ex, pr.Symbol, prog, pr.FileOffset, pid, cookie(pr))
			if err != nil {
				if pr.Optional {
					continue
				}
				t.detach()
				coll.Close()
				return nil, fmt.Errorf("attach %s: %w", pr.Symbol, classify(err))
			}
			t.links = append(t.links, l)
			t.probes = append(t.probes, pr)
			if stackPrograms[w.prog] && isPushBP(pr.Insn) {
				t.pushAt[pr.Address+p.LoadBias] = true
			}
		}
	}
	if len(t.pushAt) == 0 {
		t.callerAdded.Store(stackCallerMissed)
	}
	t.rd, err = ringbuf.NewReader(coll.Maps["events"])
	if err != nil {
		t.detach()
		coll.Close()
		return nil, fmt.Errorf("attach: ring buffer reader: %w", classify(err))
	}
	return t, nil
}

func progIndex(name string) int {
	for i, n := range Programs {
		if n == name {
			return i
		}
	}
	return -1
}

// atJcc reports whether a probe instruction (Go syntax) is the stack check's
// conditional jump, whose flags tell whether the call will grow its stack.
func atJcc(insn string) bool {
	op, _, _ := strings.Cut(strings.TrimSpace(insn), " ")
	switch strings.ToUpper(op) {
	case "JBE", "JLS", "JNA":
		return true
	}
	return false
}

// isPushBP reports whether a probe instruction is the frame pointer push,
// on which the kernel (6.12+) adds the caller's return address to the stack.
func isPushBP(insn string) bool {
	return strings.EqualFold(strings.Join(strings.Fields(insn), " "), "PUSHQ BP")
}

func cookie(pr plan.Probe) uint64 {
	var c uint64
	if pr.FramePushed {
		c |= 1
	}
	if pr.Refires {
		c |= 2
	}
	return c
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func setVar(spec *ebpf.CollectionSpec, name string, v any) error {
	vs, ok := spec.Variables[name]
	if !ok {
		return fmt.Errorf("bpf object lacks variable %s", name)
	}
	if err := vs.Set(v); err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	return nil
}

func setVariables(spec *ebpf.CollectionSpec, p *plan.Plan, pid, ringBytes, stackEntries int) error {
	for _, ov := range offsetVars {
		v, ok := p.Offset(ov.key)
		if !ok {
			if ov.required {
				return fmt.Errorf("attach: plan lacks offset %q: %w", ov.key, plan.ErrNoLayout)
			}
			v = ov.def
		}
		if err := setVar(spec, ov.name, v); err != nil {
			return err
		}
	}
	if err := setVar(spec, "m_span", mSpan(p)); err != nil {
		return err
	}
	if err := setVar(spec, "target_tgid", uint32(pid)); err != nil {
		return err
	}
	if err := setVar(spec, "gosched_has_preempted", boolByte(goschedHasPreempted(p.GoVersion))); err != nil {
		return err
	}
	minor, known := goMinor(p.GoVersion)
	psyscall := ^uint32(0) // go1.26+: the P stays in m.p
	if known && minor < 26 {
		psyscall = 2 // _Psyscall, the P in m.oldp
	}
	if err := setVar(spec, "psyscall_status", psyscall); err != nil {
		return err
	}
	sizeArg := uint8(3) // mProf_Malloc(mp, p, size): go1.23+
	if known && minor < 23 {
		sizeArg = 2 // mProf_Malloc(p, size)
	}
	if err := setVar(spec, "mprof_size_arg", sizeArg); err != nil {
		return err
	}
	if stackEntries <= 0 {
		stackEntries = DefaultStackEntries
	}
	spec.Maps["stacks"].MaxEntries = uint32(stackEntries)
	size := ringSize(ringBytes)
	spec.Maps["events"].MaxEntries = uint32(size)
	// Wake the reader early when a quarter of the ring is waiting; below
	// that, the reader's poll interval bounds the delay.
	return setVar(spec, "wakeup_bytes", uint64(size/4))
}

// mSpan returns how many bytes from the start of runtime.m cover m.g0,
// m.curg, m.p and m.id, so that the programs read them at once; 0 when the
// fields are not all 8-byte aligned within the programs' 256-byte buffer.
func mSpan(p *plan.Plan) uint32 {
	var span int64
	for _, key := range []string{"m.g0", "m.curg", "m.p", "m.id"} {
		off, ok := p.Offset(key)
		if !ok && key == "m.g0" {
			off, ok = 0, true
		}
		if !ok || off < 0 || off%8 != 0 || off+8 > 256 {
			return 0
		}
		span = max(span, off+8)
	}
	return uint32(span)
}

// ringSize rounds n up to a power of two of at least a page.
func ringSize(n int) int {
	if n <= 0 {
		n = DefaultRingBytes
	}
	size := os.Getpagesize()
	for size < n && size < 1<<30 {
		size <<= 1
	}
	return size
}

// goschedHasPreempted reports whether runtime.goschedImpl takes the
// preempted flag (go1.22 and later; go1.19 has goschedImpl(gp)).
func goschedHasPreempted(version string) bool {
	minor, ok := goMinor(version)
	return !ok || minor >= 22
}

func goMinor(version string) (int, bool) {
	v, ok := strings.CutPrefix(version, "go1.")
	if !ok {
		return 0, false
	}
	end := 0
	for end < len(v) && v[end] >= '0' && v[end] <= '9' {
		end++
	}
	n, err := strconv.Atoi(v[:end])
	return n, err == nil
}

// classify wraps err with the sentinel it stands for, if any.
func classify(err error) error {
	switch {
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%w: %w", ErrPermission, err)
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, syscall.ENOSYS):
		return fmt.Errorf("%w: %w", ErrNoUprobes, err)
	}
	return err
}

// Run reads events until ctx is done or the tracer is closed, calls fn for
// each (ev is reused: copy it to keep it), drains what is left in the ring
// buffer, and returns. It returns nil when ended by ctx or Close.
func (t *Tracer) Run(ctx context.Context, fn func(ev *event.Event)) error {
	if !t.running.CompareAndSwap(false, true) {
		return errors.New("tracer: run called twice")
	}
	defer close(t.runDone)
	select {
	case <-t.closing:
		return nil
	default:
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
		case <-t.closing:
		case <-stop:
			return
		}
		_ = t.rd.Flush()
	}()

	var rec ringbuf.Record
	var ev event.Event
	for {
		t.rd.SetDeadline(time.Now().Add(pollInterval))
		err := t.rd.ReadInto(&rec)
		switch {
		case err == nil:
			if derr := event.Decode(rec.RawSample, &ev); derr != nil {
				t.decErrs.Add(1)
				continue
			}
			t.events.Add(1)
			if ev.StackID != event.NoStack && t.callerAdded.Load() == stackUnknown {
				t.learnCallerAdded(&ev)
			}
			fn(&ev)
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrFlushed), errors.Is(err, ringbuf.ErrClosed), errors.Is(err, os.ErrClosed):
			return nil
		default:
			return fmt.Errorf("read ring buffer: %w", err)
		}
	}
}

// Stats returns the counters so far.
func (t *Tracer) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.final != nil {
		s := *t.final
		s.Events = t.events.Load()
		s.DecodeErrors = t.decErrs.Load()
		return s
	}
	return t.readStats()
}

func (t *Tracer) readStats() Stats {
	s := Stats{
		Events:       t.events.Load(),
		DecodeErrors: t.decErrs.Load(),
		Probes:       len(t.links),
		Hits:         map[string]uint64{},
		RefiresBy:    map[string]uint64{},
	}
	sum := func(m *ebpf.Map, key uint32) uint64 {
		var vals []uint64
		if m == nil || m.Lookup(key, &vals) != nil {
			return 0
		}
		var n uint64
		for _, v := range vals {
			n += v
		}
		return n
	}
	c := t.coll.Maps["counters"]
	s.Lost = sum(c, 0)
	s.Refires = sum(c, 1)
	s.Truncated = sum(c, 2)
	s.ReadErrors = sum(c, 3)
	s.StackLost = sum(c, 4)
	for i, name := range Programs {
		if n := sum(t.coll.Maps["hits"], uint32(i)); n > 0 {
			s.Hits[name] = n
		}
		if n := sum(t.coll.Maps["hits"], uint32(len(Programs)+i)); n > 0 {
			s.RefiresBy[name] = n
		}
	}
	return s
}

// Probes returns the attached probes.
func (t *Tracer) Probes() []plan.Probe {
	return append([]plan.Probe(nil), t.probes...)
}

// LinkKind says how the probes are attached.
func (t *Tracer) LinkKind() LinkKind { return t.kind }

func (t *Tracer) detach() error {
	err := closeLinks(t.links)
	t.links = nil
	return err
}

// Close detaches every probe, lets a running Run drain the ring buffer and
// return, and frees the BPF objects. Stats stay readable.
func (t *Tracer) Close() error {
	t.closeOnce.Do(func() {
		n := len(t.links)
		errs := []error{t.detach()}
		close(t.closing)
		if t.running.Load() {
			select {
			case <-t.runDone:
			case <-time.After(5 * time.Second):
			}
		}
		t.mu.Lock()
		s := t.readStats()
		s.Probes = n
		t.final = &s
		t.agg.finish(t)
		t.mu.Unlock()
		t.readAllStacks(true)
		errs = append(errs, t.rd.Close())
		t.coll.Close()
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}

// ErrNoStack: no captured stack has the ID.
var ErrNoStack = errors.New("no such stack")

// Stack returns the user stack with the ID an event's StackID carries, leaf
// first: frame 0 is the probed instruction (the function's entry, or its
// probe point just after the stack check), the others are return addresses
// (symbolize them at pc-1). The probed function's direct caller, which a
// frame-pointer walk from a function's entry misses, is not in the stack:
// it is the event's PC. (Kernels from 6.12 add it for probes on PUSHQ BP;
// Stack removes it there, so stacks are the same on every kernel.)
//
// IDs are never reused within a tracer (a stack whose hash bucket is taken
// is dropped and counted in Stats.StackLost instead), so stacks are cached;
// Close reads every stack first, so Stack works after Close too.
func (t *Tracer) Stack(id int32) ([]uint64, error) {
	if id < 0 {
		return nil, fmt.Errorf("stack %d: %w", id, ErrNoStack)
	}
	t.stackMu.Lock()
	defer t.stackMu.Unlock()
	if st, ok := t.stacks[id]; ok {
		return st, nil
	}
	raw, err := t.lookupStack(id)
	if err != nil {
		return nil, err
	}
	st := t.normalize(raw)
	if t.callerAdded.Load() != stackUnknown || len(t.pushAt) == 0 || !t.pushAt[raw[0]] {
		t.stacks[id] = st
	}
	return st, nil
}

// Stacks returns every stack read so far, by ID (see Stack). The map is the
// caller's.
func (t *Tracer) Stacks() map[int32][]uint64 {
	t.readAllStacks(false)
	t.stackMu.Lock()
	defer t.stackMu.Unlock()
	out := make(map[int32][]uint64, len(t.stacks))
	for id, st := range t.stacks {
		out[id] = st
	}
	return out
}

// lookupStack reads a stack from the kernel's map, without its zero padding.
func (t *Tracer) lookupStack(id int32) ([]uint64, error) {
	if t.stacksFinal {
		return nil, fmt.Errorf("stack %d: %w", id, ErrNoStack)
	}
	m := t.coll.Maps["stacks"]
	var frames [StackDepth]uint64
	if err := m.Lookup(uint32(id), &frames); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, fmt.Errorf("stack %d: %w", id, ErrNoStack)
		}
		return nil, fmt.Errorf("stack %d: %w", id, err)
	}
	n := 0
	for n < len(frames) && frames[n] != 0 {
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("stack %d: %w", id, ErrNoStack)
	}
	return append([]uint64(nil), frames[:n]...), nil
}

// normalize drops the caller the kernel added after frame 0 (stackCallerAdded
// and a probe on PUSHQ BP).
func (t *Tracer) normalize(raw []uint64) []uint64 {
	if len(raw) > 1 && t.pushAt[raw[0]] && t.callerAdded.Load() == stackCallerAdded {
		return append(raw[:1:1], raw[2:]...)
	}
	return raw
}

// learnCallerAdded tells, from the first stack taken on a PUSHQ BP probe,
// whether the kernel put the caller (the event's PC) in the stack.
func (t *Tracer) learnCallerAdded(ev *event.Event) {
	if ev.PC == 0 {
		return
	}
	t.stackMu.Lock()
	defer t.stackMu.Unlock()
	raw, err := t.lookupStack(ev.StackID)
	if err != nil || !t.pushAt[raw[0]] {
		return
	}
	if len(raw) > 1 && raw[1] == ev.PC {
		t.callerAdded.Store(stackCallerAdded)
	} else {
		t.callerAdded.Store(stackCallerMissed)
	}
	// Stacks cached before the kernel's behaviour was known were not
	// taken on a PUSHQ BP probe (see Stack), so they stay valid.
}

// readAllStacks caches every stack in the kernel's map; with final (Close,
// before it frees the map) for good.
func (t *Tracer) readAllStacks(final bool) {
	t.stackMu.Lock()
	defer t.stackMu.Unlock()
	if t.stacksFinal {
		return
	}
	t.stacksFinal = final
	m := t.coll.Maps["stacks"]
	if m == nil {
		return
	}
	unknown := t.callerAdded.Load() == stackUnknown
	var id uint32
	var frames [StackDepth]uint64
	it := m.Iterate()
	for it.Next(&id, &frames) {
		if _, ok := t.stacks[int32(id)]; ok || unknown && !final && t.pushAt[frames[0]] {
			continue
		}
		n := 0
		for n < len(frames) && frames[n] != 0 {
			n++
		}
		if n > 0 {
			t.stacks[int32(id)] = t.normalize(append([]uint64(nil), frames[:n]...))
		}
	}
}
