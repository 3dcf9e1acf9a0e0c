package paths

import (
	"math"
	"testing"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
)

// syms is a symbol table: PC ranges [lo, lo+0x100) to a function, each
// 0x10 bytes a line from base.
var syms = []struct {
	lo   uint64
	fn   string
	file string
	line int
}{
	{0x1000, "main.main", "/src/main.go", 10},
	{0x2000, "main.worker", "/src/main.go", 50},
	{0x3000, "runtime.chanrecv", "/go/src/runtime/chan.go", 600},
	{0x3500, "runtime.chanrecv1", "/go/src/runtime/chan.go", 500},
	{0x4000, "main.consumer", "/src/main.go", 40},
	{0x6000, "main.alloc", "/src/main.go", 30},
	{0x7000, "syscall.Syscall", "/go/src/syscall/syscall_linux.go", 70},
	{0x9000, "runtime.gopark", "/go/src/runtime/proc.go", 400},
}

func symbolize(pc uint64, ret bool) (gobin.Frame, bool) {
	if ret {
		pc--
	}
	for _, s := range syms {
		if pc >= s.lo && pc < s.lo+0x100 {
			return gobin.Frame{Func: s.fn, File: s.file, Line: s.line + int(pc-s.lo)/0x10}, true
		}
	}
	return gobin.Frame{}, false
}

var stacks = map[int32][]uint64{
	7: {0x9000, 0x3511, 0x4021, 0x1031}, // gopark IP, chanrecv1, consumer:42, main:13
}

func ev(ts uint64, k event.Kind, goid uint64, f func(e *event.Event)) event.Event {
	e := event.Event{Ts: ts, Kind: k, Goid: goid, MID: 0, TID: 100, PID: 0, StackID: event.NoStack}
	if f != nil {
		f(&e)
	}
	return e
}

// Synthetic returns events whose numbers the tests know.
func Synthetic() []event.Event {
	var evs []event.Event
	add := func(e event.Event) { evs = append(evs, e) }
	// G1 creates G2 at main.go:11 (gopc 0x1011 -> 0x1010 -> line 11).
	add(ev(1000, event.KindGoCreate, 2, func(e *event.Event) { e.Aux, e.PC, e.PC2 = 1, 0x1011, 0x2000 }))
	add(ev(1500, event.KindGoStart, 2, nil)) // delay 500 at the go statement
	// G2 parks at consumer:42 for 3000ns, runs 200ns after.
	add(ev(2000, event.KindGoPark, 2, func(e *event.Event) { e.Reason, e.StackID, e.PC = 19, 7, 0x3011 }))
	add(ev(5000, event.KindGoUnpark, 2, func(e *event.Event) { e.Aux = 1 }))
	add(ev(5200, event.KindGoStart, 2, nil))
	// and again for 1000ns
	add(ev(6000, event.KindGoPark, 2, func(e *event.Event) { e.Reason, e.StackID, e.PC = 19, 7, 0x3011 }))
	add(ev(6000, event.KindGoPark, 2, func(e *event.Event) { e.Reason, e.StackID, e.PC = 19, 7, 0x3011 })) // refire
	add(ev(7000, event.KindGoUnpark, 2, func(e *event.Event) { e.Aux = 1 }))
	add(ev(7100, event.KindGoStart, 2, nil))
	// G2 asks for a thread, from its own stack (not g0).
	add(ev(7500, event.KindThreadCreate, 2, func(e *event.Event) { e.Aux = 3 }))
	// G2 in a 1000ns syscall at syscall_linux.go:71; sysmon hands P0 to M1.
	add(ev(8000, event.KindSyscallEnter, 2, func(e *event.Event) { e.PC = 0x7011 }))
	add(ev(8500, event.KindSchedule, 0, func(e *event.Event) { e.MID, e.TID = 1, 101 }))
	add(ev(9000, event.KindSyscallExit, 2, func(e *event.Event) { e.PID, e.Reason = -1, 1 }))
	// three sampled allocations of 1 KiB at alloc:31
	for i := uint64(0); i < 3; i++ {
		add(ev(9100+i, event.KindAlloc, 2, func(e *event.Event) { e.Aux, e.PC = 1024, 0x6011 }))
	}
	add(ev(9200, event.KindHeapGrow, 2, func(e *event.Event) { e.Aux = 4 << 20 }))
	// Leak: one goroutine a sample period from main.go:12 (gopc 0x1021),
	// never exiting; and from main.go:13 goroutines that come and go.
	for i := uint64(0); i < 6; i++ {
		t := 10_000 + i*1000
		add(ev(t, event.KindGoCreate, 100+i, func(e *event.Event) { e.Aux, e.PC, e.PC2 = 1, 0x1021, 0x2000 }))
		add(ev(t+10, event.KindGoCreate, 200+i, func(e *event.Event) { e.Aux, e.PC, e.PC2 = 2, 0x1031, 0x2000 }))
		add(ev(t+500, event.KindGoExit, 200+i, nil))
	}
	add(ev(17_000, event.KindSchedule, 0, nil))
	return evs
}

func newModel() *Model {
	wr := make(plan.WaitReasons, 20)
	wr[19] = "chan receive"
	return New(Config{WaitReasons: wr, Symbolize: symbolize, Stacks: func(id int32) []uint64 { return stacks[id] }, SamplePeriod: 1000})
}

func TestSynthetic(t *testing.T) {
	m := newModel()
	for _, e := range Synthetic() {
		m.Handle(&e)
	}
	r := m.Report()

	// CG
	site := func(line int) GoSite {
		for _, s := range r.CG.Sites {
			if s.Line == line && s.File == "/src/main.go" {
				return s
			}
		}
		t.Fatalf("no go site at main.go:%d in %+v", line, r.CG.Sites)
		return GoSite{}
	}
	if s := site(12); s.Created != 6 || s.Alive != 6 || !s.Leak || s.Start.Function != "main.worker" || s.TopCreator != 1 {
		t.Errorf("leaking site: %+v", s)
	}
	if s := site(13); s.Created != 6 || s.Exited != 6 || s.Alive != 0 || s.Leak || s.LifetimeMaxNs != 490 {
		t.Errorf("transient site: %s created %d exited %d alive %d leak %v life %d", s.Pos, s.Created, s.Exited, s.Alive, s.Leak, s.LifetimeMaxNs)
	}
	if s := site(11); s.Created != 1 || s.Alive != 1 || s.Leak {
		t.Errorf("site 11: %+v", s)
	}

	// CC: the park is charged to consumer:42, the first frame outside the
	// runtime, with both waits.
	if len(r.CC.Sites) != 1 {
		t.Fatalf("block sites: %+v", r.CC.Sites)
	}
	b := r.CC.Sites[0]
	if !b.User || b.Function != "main.consumer" || b.Line != 42 || b.Reason != "chan receive" || b.Count != 2 || b.TotalNs != 4000 || b.MaxNs != 3000 {
		t.Errorf("block site: %+v", b)
	}
	fs := m.Frames(Loc{Stack: 7, PC: 0x3011, Ret: true})
	if len(fs) != 5 || fs[1].Func != "runtime.chanrecv" || fs[2].Func != "runtime.chanrecv1" || fs[3].Line != 42 {
		t.Errorf("park frames: %+v", fs)
	}

	// Scheduling delay: 500 at the go statement, 200+100 at the park stack.
	var atPark, atCreate uint64
	for loc, a := range m.Delay {
		switch {
		case loc.Stack == 7:
			atPark += a.TotalNs
		case loc.PC == 0x1011:
			atCreate += a.TotalNs
		}
	}
	if atPark != 300 || atCreate != 500 {
		t.Errorf("delay: at park %d, at create %d", atPark, atCreate)
	}

	// MA: scaled as runtime/pprof scales.
	scale := 1 / (1 - math.Exp(-1024.0/DefaultMemProfileRate))
	if r.MA.Samples != 3 || r.MA.SampledBytes != 3072 || r.MA.EstimatedBytes != int64(3072*scale) || r.MA.HeapGrows != 1 || r.MA.HeapGrowBytes != 4<<20 {
		t.Errorf("MA: %+v (want estimated %d)", r.MA, int64(3072*scale))
	}
	if len(r.MA.Sites) != 1 || r.MA.Sites[0].Line != 31 || r.MA.Sites[0].EstimatedObjects != int64(3*scale) {
		t.Errorf("alloc sites: %+v", r.MA.Sites)
	}

	// TC: one thread, asked by G2, known by its go statement main.go:11.
	if r.TC.Created != 1 || len(r.TC.ByRequester) != 1 || r.TC.ByRequester[0].Line != 11 {
		t.Errorf("TC: %+v", r.TC)
	}

	// Syscalls: 1000ns at syscall_linux.go:71, P handed off once.
	if r.Syscalls.Count != 1 || r.Syscalls.TotalNs != 1000 || r.Syscalls.Handoffs != 1 || r.Syscalls.Sites[0].Line != 71 {
		t.Errorf("syscalls: %+v", r.Syscalls)
	}
}

func TestScaleHeapSample(t *testing.T) {
	// Large objects are sampled once each: the scale tends to 1.
	if c, s := ScaleHeapSample(10, 10<<30, 512<<10); c != 10 || s != 10<<30 {
		t.Errorf("large: %d %d", c, s)
	}
	// Objects of the rate's size: 1/(1-1/e).
	c, _ := ScaleHeapSample(1000, 1000*512<<10, 512<<10)
	if want := int64(1000 / (1 - math.Exp(-1))); c != want {
		t.Errorf("at rate: %d want %d", c, want)
	}
	if c, s := ScaleHeapSample(0, 0, 512<<10); c != 0 || s != 0 {
		t.Error("zero")
	}
	if c, s := ScaleHeapSample(3, 30, 1); c != 3 || s != 30 {
		t.Error("rate 1: every allocation is sampled")
	}
}

func TestRising(t *testing.T) {
	for _, c := range []struct {
		s    []int64
		want bool
	}{
		{[]int64{0, 1, 2, 3, 4}, true},
		{[]int64{5, 5, 5, 5, 5}, false},
		{[]int64{0, 3, 0, 3, 0}, false},
		{[]int64{0, 1, 2, 3, 0}, false},
		{[]int64{1, 2}, false},
		{[]int64{0, 10, 20, 30, 30, 30, 30, 30}, false}, // plateaued
	} {
		if got := rising(c.s); got != c.want {
			t.Errorf("rising(%v) = %v", c.s, got)
		}
	}
}
