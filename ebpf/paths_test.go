package ebpf

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// pathPrograms are the default programs and every opt-in one of the paths.
var pathPrograms = append(append([]string(nil), DefaultPrograms...), "entersyscall", "exitsyscall", "chansend", "chanrecv", "mallocgc")

// pathsRun is one traced run of testdata/pathsbpf.
type pathsRun struct {
	b      *gobin.Binary
	p      *plan.Plan
	tr     *Tracer
	evs    []event.Event
	st     Stats
	out    map[string][]string // output line fields by first word
	newTID map[uint32]bool     // threads created while traced
}

const pathsBlock = 50 * time.Millisecond

// runPaths runs the target traced by pathPrograms.
func runPaths(t *testing.T, tc testtarget.Toolchain, v testtarget.Variant) *pathsRun {
	t.Helper()
	bin := testtarget.Build(t, "pathsbpf", tc, v)
	tg := startTarget(t, bin, nil, "-block", pathsBlock.String(), "-threads", "6", "-syscalls", "5")
	tg.expect(t, "ready")
	p, err := plan.FromProcess(tg.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	c := trace(t, p, Options{Programs: pathPrograms})
	before := threads(t, tg.cmd.Process.Pid)
	tg.send(t)
	tg.expect(t, "done")
	after := threads(t, tg.cmd.Process.Pid)
	tg.send(t)
	tg.wait(t)
	r := &pathsRun{b: openBin(t, bin), p: p, tr: c.tr, out: map[string][]string{}, newTID: map[uint32]bool{}}
	r.evs, r.st = c.stop(t)
	checkStats(t, r.st)
	for _, l := range tg.out {
		f := strings.Fields(l)
		if len(f) > 0 {
			r.out[f[0]] = f[1:]
		}
	}
	for tid := range after {
		if !before[tid] {
			r.newTID[tid] = true
		}
	}
	for tid := range before {
		if !after[tid] {
			t.Errorf("thread %d ended while traced", tid)
		}
	}
	sort.SliceStable(r.evs, func(i, j int) bool { return r.evs[i].Ts < r.evs[j].Ts })
	return r
}

// frames symbolizes an event's stack with the event's PC put back as the
// second frame (see Tracer.Stack); nil without a stack.
func (r *pathsRun) frames(t *testing.T, ev *event.Event) []gobin.Frame {
	t.Helper()
	if ev.StackID == event.NoStack {
		return nil
	}
	st, err := r.tr.Stack(ev.StackID)
	if err != nil {
		t.Fatalf("%v stack %d: %v", ev.Kind, ev.StackID, err)
	}
	if len(st) > 1 && st[1] == ev.PC {
		t.Errorf("%v stack %d has the caller %#x twice", ev.Kind, ev.StackID, ev.PC)
	}
	pcs := append([]uint64{st[0], ev.PC}, st[1:]...)
	var out []gobin.Frame
	for i, pc := range pcs {
		link := pc - r.p.LoadBias
		if i > 0 {
			link-- // a return address: the call is before it
		}
		fr, ok := r.b.PCToFrame(link)
		if !ok {
			sym, _ := r.b.FuncAt(link)
			fr = gobin.Frame{Func: sym.Name}
		}
		out = append(out, fr)
	}
	return out
}

func hasFunc(frs []gobin.Frame, fn string) bool {
	for _, f := range frs {
		if f.Func == fn {
			return true
		}
	}
	return false
}

// hasCall reports whether fn is in the stack, called by caller.
func hasCall(frs []gobin.Frame, fn, caller string) bool {
	for i := 0; i+1 < len(frs); i++ {
		if frs[i].Func == fn && frs[i+1].Func == caller {
			return true
		}
	}
	return false
}

func hasLine(frs []gobin.Frame, fn, fileLine string) bool {
	for _, f := range frs {
		if f.Func == fn && fmt.Sprintf("%s:%d", f.File, f.Line) == fileLine {
			return true
		}
	}
	return false
}

func fmtFrames(frs []gobin.Frame) string {
	var b strings.Builder
	for _, f := range frs {
		fmt.Fprintf(&b, "\n\t%s %s:%d", f.Func, f.File, f.Line)
	}
	return b.String()
}

func (r *pathsRun) funcAt(pc uint64) string {
	sym, _ := r.b.FuncAt(pc - r.p.LoadBias - 1)
	return sym.Name
}

// TestPaths traces testdata/pathsbpf with every path program and checks each
// path against what the target printed.
func TestPaths(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, c := range []testtarget.Case{
		{Toolchain: testtarget.Go126, Variant: testtarget.Plain},
		{Toolchain: testtarget.Go126, Variant: testtarget.Stripped},
		{Toolchain: testtarget.Go127, Variant: testtarget.Plain},
		{Toolchain: testtarget.Go119, Variant: testtarget.Plain},
		{Toolchain: testtarget.Go119, Variant: testtarget.Stripped},
	} {
		t.Run(c.String(), func(t *testing.T) {
			r := runPaths(t, c.Toolchain, c.Variant)
			t.Run("park", r.checkPark)
			t.Run("create", r.checkCreate)
			t.Run("alloc", r.checkAlloc)
			t.Run("malloc", r.checkMalloc)
			t.Run("chan", r.checkChan)
			t.Run("syscall", r.checkSyscalls)
			t.Run("threads", r.checkThreads)
		})
	}
}

// checkPark: the receive at a known line parks exactly once, with that line
// in the park stack.
func (r *pathsRun) checkPark(t *testing.T) {
	site := r.out["park"][0]
	var n int
	for i := range r.evs {
		ev := &r.evs[i]
		if ev.Kind != event.KindGoPark || r.p.WaitReasons.Name(ev.Reason) != "chan receive" {
			continue
		}
		frs := r.frames(t, ev)
		if hasLine(frs, "main.parkHere", site) {
			n++
			if !hasFunc(frs, "main.runPark") || !hasFunc(frs, "main.main") || r.funcAt(ev.PC) != "runtime.chanrecv" {
				t.Errorf("park stack:%s", fmtFrames(frs))
			}
			if frs[0].Func != "runtime.gopark" {
				t.Errorf("park stack frame 0 is %s, want runtime.gopark", frs[0].Func)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d parks with %s in the stack, want 1", n, site)
	}
	t.Logf("kernel adds the caller on PUSHQ BP probes: %v", map[int32]string{stackUnknown: "unknown", stackCallerAdded: "yes", stackCallerMissed: "no (or no such probe)"}[r.tr.callerAdded.Load()])
}

// checkCreate: every goroutine of the go statement has the creation stack:
// the go statement's line in main.spawner, and main.runCreate's call of it.
func (r *pathsRun) checkCreate(t *testing.T) {
	site, nstr, caller := r.out["create"][0], r.out["create"][1], r.out["create"][2]
	n, _ := strconv.Atoi(nstr)
	var created, withStack int
	for i := range r.evs {
		ev := &r.evs[i]
		if ev.Kind != event.KindGoCreate {
			continue
		}
		if fr, ok := r.b.PCToFrame(ev.PC - r.p.LoadBias - 1); !ok || fr.Func != "main.spawner" || fmt.Sprintf("%s:%d", fr.File, fr.Line) != site {
			continue
		}
		created++
		frs := r.frames(t, ev)
		if frs == nil {
			continue
		}
		withStack++
		if frs[0].Func != "runtime.newproc" || !hasLine(frs, "main.spawner", site) || !hasLine(frs, "main.runCreate", caller) {
			t.Fatalf("creation stack of %d, want runtime.newproc, main.spawner at %s, main.runCreate at %s:%s", ev.Goid, site, caller, fmtFrames(frs))
		}
	}
	if created != n || withStack != n && r.st.StackLost == 0 {
		t.Fatalf("%d creations at %s, %d with a stack; want %d", created, site, withStack, n)
	}
	if withStack == 0 {
		t.Fatalf("no creation stack (%d stacks lost)", r.st.StackLost)
	}
}

// checkAlloc: the sampled allocations in main.allocLoop, scaled as the heap
// profile scales them, add up to what the loop allocated; the heap grew by
// at least what the loop kept.
func (r *pathsRun) checkAlloc(t *testing.T) {
	f := r.out["alloc"]
	site := f[0]
	n, _ := strconv.Atoi(f[1])
	size, _ := strconv.Atoi(f[2])
	kept, _ := strconv.Atoi(f[3])
	rate, _ := strconv.Atoi(f[4])
	if rate != 512<<10 {
		t.Fatalf("MemProfileRate %d", rate)
	}
	var samples, noStack int
	var est float64
	for i := range r.evs {
		ev := &r.evs[i]
		if ev.Kind != event.KindAlloc {
			continue
		}
		frs := r.frames(t, ev)
		if frs == nil {
			noStack++
			continue
		}
		if frs[0].Func != "runtime.mProf_Malloc" {
			t.Fatalf("alloc stack frame 0 is %s", frs[0].Func)
		}
		if !hasLine(frs, "main.allocLoop", site) {
			continue
		}
		samples++
		if ev.Aux != uint64(size) {
			t.Errorf("sample of %d bytes at %s, want %d", ev.Aux, site, size)
		}
		// runtime/pprof's scaleHeapSample.
		s := float64(ev.Aux)
		est += s / (1 - math.Exp(-s/float64(rate)))
	}
	want := float64(n * size)
	t.Logf("%d samples at %s (%d Alloc events without a stack): %.1f MiB estimated, %.1f MiB allocated", samples, site, noStack, est/(1<<20), want/(1<<20))
	// About n*size/rate*... samples: 254 here, a relative error of about
	// 1/sqrt(254) = 6%: allow 4 of those.
	if est < want*0.75 || est > want*1.25 || noStack > int(r.st.StackLost) {
		t.Errorf("estimated %.0f bytes, allocated %.0f", est, want)
	}
	// grow(npage) asks for npage pages and grows the heap by whole 4 MiB
	// chunks (alignUp(npage, pallocChunkPages) pages).
	const chunk = 512 * 8192
	var grows int
	var asked, grown uint64
	for _, ev := range r.evs {
		if ev.Kind == event.KindHeapGrow {
			grows++
			asked += ev.Aux
			grown += (ev.Aux + chunk - 1) / chunk * chunk
			if ev.Aux == 0 || ev.Aux%8192 != 0 {
				t.Errorf("heap growth of %d bytes", ev.Aux)
			}
		}
	}
	t.Logf("%d heap growths asking %.2f MiB, %.1f MiB in chunks; the loop kept %.1f MiB", grows, float64(asked)/(1<<20), float64(grown)/(1<<20), float64(kept)/(1<<20))
	if grown < uint64(kept)/2 || grown > uint64(n*size) {
		t.Errorf("heap grew %d bytes; the loop kept %d and allocated %d", grown, kept, n*size)
	}
}

// checkMalloc: exactly one mallocgc per slice of the odd size, from makeslice.
func (r *pathsRun) checkMalloc(t *testing.T) {
	size, _ := strconv.Atoi(r.out["malloc"][0])
	n, _ := strconv.Atoi(r.out["malloc"][1])
	var got int
	callers := map[string]int{}
	for _, ev := range r.evs {
		if ev.Kind == event.KindMalloc && ev.Aux == uint64(size) {
			got++
			callers[r.funcAt(ev.PC)]++
		}
	}
	if got != n || callers["runtime.makeslice"] != n {
		t.Fatalf("%d mallocgc of %d bytes (callers %v), want %d from runtime.makeslice", got, size, callers, n)
	}
}

// checkChan: exactly the sends and receives the target made on its channel.
func (r *pathsRun) checkChan(t *testing.T) {
	ch, err := strconv.ParseUint(strings.TrimPrefix(r.out["chan"][0], "0x"), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(r.out["chan"][1])
	count := map[event.Kind]int{}
	for _, ev := range r.evs {
		if (ev.Kind == event.KindChanSend || ev.Kind == event.KindChanRecv) && ev.Aux == ch {
			count[ev.Kind]++
			want := "runtime.chansend1"
			if ev.Kind == event.KindChanRecv {
				want = "runtime.chanrecv1"
			}
			if ev.Reason != 1 || r.funcAt(ev.PC) != want || ev.StackID != event.NoStack {
				t.Fatalf("%v: blocking %d, caller %s, stack %d", ev.Kind, ev.Reason, r.funcAt(ev.PC), ev.StackID)
			}
		}
	}
	if count[event.KindChanSend] != n || count[event.KindChanRecv] != n {
		t.Fatalf("on channel %#x: %v, want %d sends and %d receives", ch, count, n, n)
	}
	// One send per goroutine, whether or not it grew its stack in
	// chansend's prologue (go1.19: the probe fires twice then).
	grow, err := strconv.ParseUint(strings.TrimPrefix(r.out["grow"][0], "0x"), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	ngrow, _ := strconv.Atoi(r.out["grow"][1])
	sends := 0
	for _, ev := range r.evs {
		if ev.Kind == event.KindChanSend && ev.Aux == grow {
			sends++
		}
	}
	t.Logf("%d sends from growing stacks; chansend re-entries suppressed: %d", sends, r.st.RefiresBy["chansend"])
	if sends != ngrow {
		t.Fatalf("%d sends on channel %#x, want %d", sends, grow, ngrow)
	}
	if r.p.GoVersion < "go1.2" && r.st.RefiresBy["chansend"] == 0 {
		t.Fatalf("no chansend re-entry on %s", r.p.GoVersion)
	}
}

// syscallPairs pairs each SyscallEnter whose stack has fn called by caller
// with the next SyscallExit of its goroutine.
func (r *pathsRun) syscallPairs(t *testing.T, fn, caller string) [][2]event.Event {
	var out [][2]event.Event
	open := map[uint64]int{}
	for i := range r.evs {
		ev := &r.evs[i]
		switch ev.Kind {
		case event.KindSyscallEnter:
			if hasCall(r.frames(t, ev), fn, caller) {
				open[ev.Goid] = len(out)
				out = append(out, [2]event.Event{*ev})
			}
		case event.KindSyscallExit:
			if j, ok := open[ev.Goid]; ok {
				out[j][1] = *ev
				delete(open, ev.Goid)
			}
		}
	}
	return out
}

// checkSyscalls: one SyscallEnter/Exit pair per read of the target, lasting
// what the read blocked (within the target's own measurement, which brackets
// the probes), the P handed off; fast syscalls keep their P.
func (r *pathsRun) checkSyscalls(t *testing.T) {
	f := r.out["syscall"]
	n, _ := strconv.Atoi(f[0])
	pairs := r.syscallPairs(t, "main.readBlocking", "main.runSyscalls")
	if len(pairs) > 0 {
		t.Logf("read stack:%s", fmtFrames(r.frames(t, &pairs[0][0])))
	}
	if len(pairs) != n {
		for _, pr := range pairs {
			t.Logf("%+v:%s", pr, fmtFrames(r.frames(t, &pr[0])))
		}
		t.Fatalf("%d syscalls from main.readBlocking in main.runSyscalls, want %d", len(pairs), n)
	}
	handoffs := 0
	for i, pr := range pairs {
		own, _ := strconv.ParseInt(f[1+i], 10, 64)
		d := int64(pr[1].Ts) - int64(pr[0].Ts)
		if pr[1].Kind != event.KindSyscallExit || d < int64(pathsBlock)*8/10 || d > own {
			t.Errorf("read %d: %v in the syscall, the target measured %v: %+v", i, time.Duration(d), time.Duration(own), pr)
		}
		// Blocked past sysmon's 10ms (plus up to two of its 10ms
		// periods), the P is normally handed off; when not, the M still
		// holds the P it entered with.
		switch {
		case pr[1].Reason == 1 && pr[1].PID == -1:
			handoffs++
		case pr[1].Reason == 0 && pr[1].PID == pr[0].PID:
		default:
			t.Errorf("read %d of %v: exit with reason %d on P %d, entered on P %d", i, time.Duration(d), pr[1].Reason, pr[1].PID, pr[0].PID)
		}
		if r.funcAt(pr[0].PC) != "syscall.Syscall" && r.funcAt(pr[0].PC) != "runtime.entersyscall.abi0" {
			t.Errorf("entersyscall called from %s", r.funcAt(pr[0].PC))
		}
	}
	// How soon sysmon retakes the P varies (go1.19 often lets a 50ms read
	// keep it).
	t.Logf("%d of %d blocking reads handed their P off", handoffs, n)
	if handoffs == 0 {
		t.Errorf("%d of %d blocking reads handed their P off", handoffs, n)
	}
	nfast, _ := strconv.Atoi(r.out["fast"][0])
	fast := r.syscallPairs(t, "main.getppid", "main.fastSyscalls")
	kept := 0
	for _, pr := range fast {
		if pr[1].Kind == event.KindSyscallExit && pr[1].Reason == 0 {
			kept++
			if pr[1].PID != pr[0].PID || pr[1].PID < 0 {
				t.Errorf("fast syscall entered on P %d, left on P %d", pr[0].PID, pr[1].PID)
			}
		}
	}
	t.Logf("%d fast syscalls, %d kept their P", len(fast), kept)
	if len(fast) != nfast || kept < nfast*9/10 {
		t.Errorf("%d fast syscalls traced (want %d), %d kept their P", len(fast), nfast, kept)
	}
}

// checkThreads: one ThreadCreate (newm) and one ThreadStart (newosproc) per
// thread the target gained while traced, each newm with the runtime path
// that asked for it.
func (r *pathsRun) checkThreads(t *testing.T) {
	nlocked, _ := strconv.Atoi(r.out["threads"][0])
	var creates, starts int
	mids := map[uint64]bool{}
	paths := map[string]int{}
	for i := range r.evs {
		ev := &r.evs[i]
		switch ev.Kind {
		case event.KindThreadCreate:
			creates++
			frs := r.frames(t, ev)
			if frs == nil {
				t.Errorf("newm without a stack")
				continue
			}
			if frs[0].Func != "runtime.newm" || !strings.HasPrefix(frs[1].Func, "runtime.") {
				t.Errorf("newm stack:%s", fmtFrames(frs))
			}
			var path []string
			for _, f := range frs[1:] {
				path = append(path, f.Func)
			}
			paths[strings.Join(path, " < ")]++
		case event.KindThreadStart:
			starts++
			if mids[ev.Aux] {
				t.Errorf("two threads for M %d", ev.Aux)
			}
			mids[ev.Aux] = true
		}
	}
	for p, k := range paths {
		t.Logf("%d× newm < %s", k, p)
	}
	t.Logf("%d goroutines locked to blocked threads; %d new threads, %d newm, %d newosproc", nlocked, len(r.newTID), creates, starts)
	if creates != len(r.newTID) || starts != len(r.newTID) || len(r.newTID) == 0 {
		t.Fatalf("%d newm, %d newosproc for %d new threads", creates, starts, len(r.newTID))
	}
}

// TestNoStacks turns stack capture off: no event has a stack, none is lost,
// and Stack refuses IDs.
func TestNoStacks(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	tg := startTarget(t, bin, nil, "-n", "50")
	tg.expect(t, "ready")
	p, err := plan.FromProcess(tg.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	c := trace(t, p, Options{NoStacks: true})
	tg.send(t)
	tg.expect(t, "done")
	tg.wait(t)
	evs, st := c.stop(t)
	checkStats(t, st)
	parks := 0
	for _, ev := range evs {
		if ev.StackID != event.NoStack {
			t.Fatalf("%v event with stack %d", ev.Kind, ev.StackID)
		}
		if ev.Kind == event.KindGoPark {
			parks++
		}
	}
	if parks == 0 || st.StackLost != 0 || len(c.tr.Stacks()) != 0 {
		t.Fatalf("%d parks, %d stacks lost, %d stacks", parks, st.StackLost, len(c.tr.Stacks()))
	}
	for _, id := range []int32{-1, 0, 4711} {
		if _, err := c.tr.Stack(id); !errors.Is(err, ErrNoStack) {
			t.Errorf("Stack(%d): %v, want ErrNoStack", id, err)
		}
	}
}
