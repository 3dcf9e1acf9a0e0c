package ebpf

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	ciliumebpf "github.com/cilium/ebpf"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/internal/launch"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// TestEventLayout checks that struct gmp_event (as bpf2go read it from the
// object's BTF) and analysis/event.Event agree field by field.
func TestEventLayout(t *testing.T) {
	c := reflect.TypeOf(gmpwatchGmpEvent{})
	g := reflect.TypeOf(event.Event{})
	if c.Size() != event.Size || g.Size() != event.Size {
		t.Fatalf("sizes: C %d, Go %d, want %d", c.Size(), g.Size(), event.Size)
	}
	var cf []reflect.StructField
	for i := 0; i < c.NumField(); i++ {
		if f := c.Field(i); f.Name != "_" {
			cf = append(cf, f)
		}
	}
	if len(cf) != g.NumField() {
		t.Fatalf("C has %d fields, Go %d", len(cf), g.NumField())
	}
	for i, f := range cf {
		gf := g.Field(i)
		if f.Offset != gf.Offset || f.Type.Size() != gf.Type.Size() || !strings.EqualFold(f.Name, gf.Name) {
			t.Errorf("field %d: C %s@%d (%d bytes), Go %s@%d (%d bytes)", i, f.Name, f.Offset, f.Type.Size(), gf.Name, gf.Offset, gf.Type.Size())
		}
	}
	// The wire form is the in-memory form on amd64.
	ev := event.Event{Ts: 1, Goid: 2, Aux: 3, PC: 4, PC2: 5, MID: -6, TID: 7, PID: -1, StackID: event.NoStack, Kind: event.KindGoPark, Reason: 9, Flags: 2}
	b := event.Encode(nil, &ev)
	if got := *(*event.Event)(unsafe.Pointer(&b[0])); got != ev {
		t.Fatalf("wire form differs from memory form: %+v", got)
	}
	if len(Programs) != int(reflect.TypeOf(gmpwatchPrograms{}).NumField()) {
		t.Fatalf("Programs lists %d names, the object has %d programs", len(Programs), reflect.TypeOf(gmpwatchPrograms{}).NumField())
	}
}

func TestAtJcc(t *testing.T) {
	for insn, want := range map[string]bool{"JBE 0x4711": true, "JLS 0x1": true, "PUSHQ BP": false, "CALL runtime.runqput(SB)": false, "": false} {
		if atJcc(insn) != want {
			t.Errorf("atJcc(%q) = %v", insn, !want)
		}
	}
	if goschedHasPreempted("go1.19.8") || !goschedHasPreempted("go1.26.8") || !goschedHasPreempted("go1.27.3") {
		t.Fatal("goschedHasPreempted wrong")
	}
	lay := &plan.Plan{Offsets: map[string]int64{"m.curg": 184, "m.p": 208, "m.id": 232}}
	if got := mSpan(lay); got != 240 {
		t.Fatalf("mSpan = %d, want 240", got)
	}
	lay.Offsets["m.id"] = 300
	if got := mSpan(lay); got != 0 {
		t.Fatalf("mSpan with m.id at 300 = %d, want 0", got)
	}
	if ringSize(0) != DefaultRingBytes || ringSize(5000) != 8192 {
		t.Fatalf("ringSize: %d %d", ringSize(0), ringSize(5000))
	}
}

func TestAttachErrors(t *testing.T) {
	if _, err := Attach(nil, Options{PID: 1}); err == nil {
		t.Fatal("nil plan attached")
	}
	p := &plan.Plan{Arch: "amd64", Path: "/bin/true"}
	if _, err := Attach(p, Options{}); err == nil {
		t.Fatal("attach without pid succeeded")
	}
	if _, err := Attach(p, Options{PID: 1, Programs: []string{"nosuch"}}); !errors.Is(err, ErrUnknownProgram) {
		t.Fatalf("unknown program: %v", err)
	}
	if _, err := Attach(p, Options{PID: 1}); !errors.Is(err, ErrNoProbe) {
		t.Fatalf("empty plan: %v", err)
	}
	if _, err := Attach(&plan.Plan{Arch: "arm64"}, Options{PID: 1}); !errors.Is(err, plan.ErrUnsupportedArch) {
		t.Fatalf("arm64: %v", err)
	}
}

// target is a running test target with its standard input and output.
type target struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	out   []string // every line read
	done  chan error
}

func startTarget(t *testing.T, bin string, env []string, args ...string) *target {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tg := &target{cmd: cmd, in: in, lines: make(chan string, 1024), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			tg.lines <- sc.Text()
		}
		close(tg.lines)
		tg.done <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return tg
}

// expect reads lines until one starts with prefix and returns it.
func (tg *target) expect(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-tg.lines:
			if !ok {
				t.Fatalf("target ended before %q; output %q", prefix, tg.out)
			}
			tg.out = append(tg.out, l)
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			t.Fatalf("no %q from the target; output %q", prefix, tg.out)
		}
	}
}

func (tg *target) send(t *testing.T) {
	t.Helper()
	if _, err := fmt.Fprintln(tg.in, "go"); err != nil {
		t.Fatal(err)
	}
}

func (tg *target) wait(t *testing.T) {
	t.Helper()
	tg.in.Close()
	for l := range tg.lines {
		tg.out = append(tg.out, l)
	}
	select {
	case err := <-tg.done:
		if err != nil {
			t.Fatalf("target: %v; output %q", err, tg.out)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("target did not exit")
	}
}

// collector runs a tracer and keeps its events.
type collector struct {
	tr     *Tracer
	cancel context.CancelFunc
	done   chan error
	mu     sync.Mutex
	events []event.Event
}

func trace(t *testing.T, p *plan.Plan, opts Options) *collector {
	t.Helper()
	tr, err := Attach(p, opts)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	c := &collector{tr: tr, cancel: cancel, done: make(chan error, 1)}
	go func() {
		c.done <- tr.Run(ctx, func(ev *event.Event) {
			c.mu.Lock()
			c.events = append(c.events, *ev)
			c.mu.Unlock()
		})
	}()
	return c
}

// stop ends the run (draining the ring), closes the tracer and returns the
// events and the final stats.
func (c *collector) stop(t *testing.T) ([]event.Event, Stats) {
	t.Helper()
	c.cancel()
	if err := <-c.done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if err := c.tr.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	st := c.tr.Stats()
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.Events != uint64(len(c.events)) {
		t.Fatalf("stats say %d events, fn saw %d", st.Events, len(c.events))
	}
	return c.events, st
}

func checkStats(t *testing.T, st Stats) {
	t.Helper()
	t.Logf("stats: events %d lost %d probes %d refires %d %v truncated %d read errors %d decode errors %d stacks lost %d hits %v",
		st.Events, st.Lost, st.Probes, st.Refires, st.RefiresBy, st.Truncated, st.ReadErrors, st.DecodeErrors, st.StackLost, st.Hits)
	if st.Lost != 0 || st.Truncated != 0 || st.DecodeErrors != 0 {
		t.Errorf("lost %d, truncated %d, decode errors %d: want none", st.Lost, st.Truncated, st.DecodeErrors)
	}
}

func openBin(t *testing.T, path string) *gobin.Binary {
	t.Helper()
	b, err := gobin.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func funcAddr(t *testing.T, b *gobin.Binary, name string) uint64 {
	t.Helper()
	s, err := b.Func(name)
	if err != nil {
		t.Fatal(err)
	}
	return s.Addr
}

// threads returns the thread IDs of a process.
func threads(t *testing.T, pid int) map[uint32]bool {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[uint32]bool{}
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		m[uint32(n)] = true
	}
	return m
}

const gomaxprocs = 3

var spawnVariants = []testtarget.Variant{testtarget.Plain, testtarget.Stripped, testtarget.PIE}

// TestSpawn attaches to a running spawn target and checks that exactly the N
// goroutines of its go statement are seen created and exiting, from the
// printed site, and that each event's thread, M and P are consistent.
func TestSpawn(t *testing.T) {
	testtarget.RequireRoot(t)
	const n, parkers = 500, 300
	for _, tc := range testtarget.Toolchains {
		for _, v := range spawnVariants {
			t.Run(fmt.Sprintf("%s-%s", tc, v), func(t *testing.T) {
				bin := testtarget.Build(t, "spawn", tc, v)
				b := openBin(t, bin)
				worker := funcAddr(t, b, "main.worker")
				env := []string{fmt.Sprintf("GOMAXPROCS=%d", gomaxprocs)}

				// Untraced, for the output.
				plainRun := startTarget(t, bin, env, "-n", strconv.Itoa(n), "-sweep", "300", "-parkers", strconv.Itoa(parkers))
				plainRun.expect(t, "ready")
				plainRun.send(t)
				plainRun.wait(t)

				tg := startTarget(t, bin, env, "-n", strconv.Itoa(n), "-sweep", "300", "-parkers", strconv.Itoa(parkers), "-linger")
				tg.expect(t, "ready")
				p, err := plan.FromProcess(tg.cmd.Process.Pid)
				if err != nil {
					t.Fatal(err)
				}
				c := trace(t, p, Options{})
				tg.send(t)
				site := strings.TrimPrefix(tg.expect(t, "site "), "site ")
				tg.expect(t, "done ")
				tasks := threads(t, tg.cmd.Process.Pid)
				tg.send(t)
				tg.wait(t)
				if strings.Join(tg.out, "\n") != strings.Join(plainRun.out, "\n") {
					t.Errorf("output changed by tracing:\n%q\nuntraced:\n%q", tg.out, plainRun.out)
				}
				evs, st := c.stop(t)
				checkStats(t, st)
				checkSpawn(t, b, p, evs, tasks, worker+p.LoadBias, site, n)
				checkParksOnce(t, evs)
				// The parkers park once each, at stack depths
				// 0..parkers-1: some grow their stack in gopark, whose
				// go1.19 probe sits on the stack check's branch and
				// fires twice for them.
				nilParks := 0
				for _, ev := range evs {
					if ev.Kind == event.KindGoPark && p.WaitReasons.Name(ev.Reason) == "chan receive (nil chan)" {
						nilParks++
					}
				}
				if nilParks != parkers {
					t.Errorf("%d parks on the nil channel, want %d", nilParks, parkers)
				}
				if tc == testtarget.Go119 && st.Refires == 0 {
					t.Errorf("no morestack re-entry suppressed on go1.19")
				}
			})
		}
	}
}

func checkSpawn(t *testing.T, b *gobin.Binary, p *plan.Plan, evs []event.Event, tasks map[uint32]bool, worker uint64, site string, n int) {
	t.Helper()
	created := map[uint64]bool{}
	var exits, starts int
	var gopc uint64
	var parent uint64
	kinds := map[event.Kind]int{}
	tidM := map[uint32]int64{}
	mTID := map[int64]uint32{}
	for _, ev := range evs {
		kinds[ev.Kind]++
		if !tasks[ev.TID] {
			t.Errorf("%v event on thread %d, not a thread of the target", ev.Kind, ev.TID)
		}
		if ev.PID < -1 || ev.PID >= gomaxprocs {
			t.Errorf("%v event with P %d outside [-1, %d)", ev.Kind, ev.PID, gomaxprocs)
		}
		if (ev.Kind == event.KindGoStart || ev.Kind == event.KindGoCreate) && ev.PID < 0 {
			t.Errorf("%v event without a P: %+v", ev.Kind, ev)
		}
		if ev.MID < 0 {
			t.Errorf("%v event without an M: %+v", ev.Kind, ev)
		} else {
			if m, ok := tidM[ev.TID]; ok && m != ev.MID {
				t.Errorf("thread %d is M %d and M %d", ev.TID, m, ev.MID)
			}
			if tid, ok := mTID[ev.MID]; ok && tid != ev.TID {
				t.Errorf("M %d is thread %d and thread %d", ev.MID, tid, ev.TID)
			}
			tidM[ev.TID], mTID[ev.MID] = ev.MID, ev.TID
		}
		switch ev.Kind {
		case event.KindGoPark, event.KindGoCreate, event.KindThreadCreate, event.KindSyscallEnter, event.KindAlloc:
		default:
			if ev.StackID != event.NoStack {
				t.Errorf("%v event with stack id %d", ev.Kind, ev.StackID)
			}
		}
		switch {
		case ev.Kind == event.KindGoCreate && ev.PC2 == worker:
			if created[ev.Goid] {
				t.Errorf("goroutine %d created twice", ev.Goid)
			}
			created[ev.Goid] = true
			if gopc != 0 && ev.PC != gopc || parent != 0 && ev.Aux != parent {
				t.Errorf("creation of %d from pc %#x parent %d, others from %#x parent %d", ev.Goid, ev.PC, ev.Aux, gopc, parent)
			}
			gopc, parent = ev.PC, ev.Aux
		case ev.Kind == event.KindGoExit && ev.PC2 == worker:
			exits++
		}
		// Functions on g0 say so; gopark runs on the parking G.
		switch ev.Kind {
		case event.KindGoStart, event.KindSchedule, event.KindGoExit, event.KindGoCreate:
			if ev.Flags&event.FlagFromG0 == 0 {
				t.Errorf("%v event not flagged as on g0", ev.Kind)
			}
		case event.KindGoPark:
			if ev.Flags&event.FlagFromG0 != 0 {
				t.Errorf("GoPark flagged as on g0")
			}
		}
	}
	var unparks int
	sorted := append([]event.Event(nil), evs...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Ts < sorted[j].Ts })
	parkedOn := map[uint64]string{} // a worker's last wait reason
	for _, ev := range sorted {
		switch {
		case ev.Kind == event.KindGoStart && created[ev.Goid]:
			starts++
		case ev.Kind == event.KindGoExit && created[ev.Goid] && ev.PC != gopc:
			t.Errorf("exit of %d with gopc %#x, created with %#x", ev.Goid, ev.PC, gopc)
		case ev.Kind == event.KindGoPark && created[ev.Goid]:
			parkedOn[ev.Goid] = p.WaitReasons.Name(ev.Reason)
		case ev.Kind == event.KindGoUnpark && created[ev.Goid] && parkedOn[ev.Goid] == "chan receive":
			// Only main's close(release) ends a worker's receive
			// (a GC assist wait, say, is ended by the GC).
			unparks++
			if ev.Aux != parent {
				t.Errorf("worker %d readied from its receive by %d, want main (%d)", ev.Goid, ev.Aux, parent)
			}
		}
	}
	if unparks == 0 {
		t.Errorf("no worker was readied from its receive")
	}
	t.Logf("%d events: %v; %d Ms", len(evs), kinds, len(mTID))
	if len(created) != n || exits != n {
		t.Fatalf("created %d, exited %d goroutines starting at main.worker, want %d each", len(created), exits, n)
	}
	if starts < n {
		t.Errorf("%d GoStart events for the %d created goroutines, want at least one each", starts, n)
	}
	if parent == 0 {
		t.Errorf("parent goid 0 for the created goroutines")
	}
	if fn, ok := b.FuncAt(gopc - p.LoadBias - 1); !ok || fn.Name != "main.main" {
		t.Errorf("creation pc %#x is in %+v, want main.main", gopc, fn)
	}
	if b.Table() == nil {
		t.Errorf("no line table: creation line not checked against %s", site)
	} else if fr, ok := b.PCToFrame(gopc - p.LoadBias - 1); !ok || fmt.Sprintf("%s:%d", fr.File, fr.Line) != site {
		t.Errorf("creation pc %#x is %+v, want %s", gopc, fr, site)
	}
	for _, k := range []event.Kind{event.KindSchedule, event.KindGoStart, event.KindGoPark, event.KindGoUnpark} {
		if kinds[k] == 0 {
			t.Errorf("no %v events", k)
		}
	}
}

// checkParksOnce checks that no goroutine parks twice without running in
// between: a probe hit repeated through morestack would.
func checkParksOnce(t *testing.T, evs []event.Event) {
	t.Helper()
	sorted := append([]event.Event(nil), evs...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Ts < sorted[j].Ts })
	parked := map[uint64]bool{}
	for _, ev := range sorted {
		switch ev.Kind {
		case event.KindGoPark:
			if parked[ev.Goid] {
				t.Errorf("goroutine %d parked twice without running", ev.Goid)
			}
			parked[ev.Goid] = true
		case event.KindGoStart, event.KindGoExit:
			delete(parked, ev.Goid)
		}
	}
}

// TestRefireDedup checks that a morestack re-entry counts once on go1.19,
// whose probes sit on the stack check's JBE: by the branch's flags.
func TestRefireDedup(t *testing.T) {
	testtarget.RequireRoot(t)
	const parkers = 300
	bin := testtarget.Build(t, "spawn", testtarget.Go119, testtarget.Plain)
	tg := startTarget(t, bin, nil, "-n", "10", "-parkers", strconv.Itoa(parkers), "-linger")
	tg.expect(t, "ready")
	p, err := plan.FromProcess(tg.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range p.Probes {
		if pr.Refires && !atJcc(pr.Insn) {
			t.Fatalf("go1.19 probe %s at %q refires but is not on a JBE", pr.Symbol, pr.Insn)
		}
	}
	c := trace(t, p, Options{})
	tg.send(t)
	tg.expect(t, "done")
	tg.send(t)
	tg.wait(t)
	evs, st := c.stop(t)
	checkStats(t, st)
	checkParksOnce(t, evs)
	nilParks := 0
	for _, ev := range evs {
		if ev.Kind == event.KindGoPark && p.WaitReasons.Name(ev.Reason) == "chan receive (nil chan)" {
			nilParks++
		}
	}
	var refires uint64
	for _, n := range st.RefiresBy {
		refires += n
	}
	if nilParks != parkers || st.RefiresBy["gopark"] == 0 || refires != st.Refires || st.Hits["gopark"] != uint64(len(filter(evs, event.KindGoPark)))+st.RefiresBy["gopark"] {
		t.Fatalf("%d nil-channel parks (want %d), %d gopark refires (want > 0) of %v = %d, %d gopark hits = %d parks + refires?",
			nilParks, parkers, st.RefiresBy["gopark"], st.RefiresBy, st.Refires, st.Hits["gopark"], len(filter(evs, event.KindGoPark)))
	}
}

// TestAttachRefusesRefireOffJBE: a probe that may fire twice anywhere but
// on the stack check's JBE could count a call twice; Attach refuses the plan
// before it loads anything (no privilege needed).
func TestAttachRefusesRefireOffJBE(t *testing.T) {
	p := &plan.Plan{PID: os.Getpid(), Arch: "amd64", Probes: []plan.Probe{
		{Program: "execute", Symbol: "runtime.execute", Address: 0x43a000, Insn: "SUBQ $0x18, SP", Refires: true},
	}}
	_, err := Attach(p, Options{Programs: []string{"execute"}})
	if !errors.Is(err, ErrRefireSite) || !strings.Contains(err.Error(), "runtime.execute") {
		t.Fatalf("attach: %v; want ErrRefireSite naming runtime.execute", err)
	}
}

// TestNewproc1RetFallback replaces the creation probe with probes on the
// RETs of newproc1 (the plan's fallback when newproc has no runqput call
// after newproc1) and sees the same creations.
func TestNewproc1RetFallback(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range []testtarget.Toolchain{testtarget.Go126, testtarget.Go119} {
		t.Run(string(tc), func(t *testing.T) {
			const n = 50
			bin := testtarget.Build(t, "spawn", tc, testtarget.PIE)
			b := openBin(t, bin)
			tg := startTarget(t, bin, nil, "-n", strconv.Itoa(n))
			tg.expect(t, "ready")
			p, err := plan.FromProcess(tg.cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			np1, err := b.Func("runtime.newproc1")
			if err != nil {
				t.Fatal(err)
			}
			rets, err := b.Returns(np1)
			if err != nil || len(rets) == 0 {
				t.Fatalf("returns of newproc1: %v %v", rets, err)
			}
			var probes []plan.Probe
			for _, pr := range p.Probes {
				if pr.Program != "newproc_runqput" {
					probes = append(probes, pr)
				}
			}
			for _, pc := range rets {
				off, err := b.FileOffset(pc)
				if err != nil {
					t.Fatal(err)
				}
				insn, _ := b.InsnAt(pc)
				probes = append(probes, plan.Probe{Program: "newproc1_ret", Symbol: np1.Name, Address: pc, FileOffset: off, Insn: insn})
			}
			p.Probes = probes
			c := trace(t, p, Options{})
			if got := c.tr.Probes(); len(filterProbes(got, "newproc1_ret")) != len(rets) {
				t.Fatalf("attached %d newproc1_ret probes, want %d", len(filterProbes(got, "newproc1_ret")), len(rets))
			}
			tg.send(t)
			tg.expect(t, "done")
			tg.wait(t)
			evs, st := c.stop(t)
			checkStats(t, st)
			worker := funcAddr(t, b, "main.worker") + p.LoadBias
			created := 0
			for _, ev := range evs {
				if ev.Kind == event.KindGoCreate && ev.PC2 == worker {
					created++
					if ev.Flags&event.FlagParked != 0 || ev.Aux == 0 {
						t.Errorf("creation %+v: parked flag or no parent", ev)
					}
				}
			}
			if created != n || st.Hits["newproc1_ret"] == 0 {
				t.Fatalf("created %d (want %d), newproc1_ret hits %d", created, n, st.Hits["newproc1_ret"])
			}
		})
	}
}

// TestCasgstatus attaches the opt-in casgstatus program too: every worker
// goes Grunnable -> Grunning at least once and Grunning -> Gdead once.
func TestCasgstatus(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range []testtarget.Toolchain{testtarget.Go126, testtarget.Go119} {
		t.Run(string(tc), func(t *testing.T) {
			const n = 50
			bin := testtarget.Build(t, "spawn", tc, testtarget.Plain)
			b := openBin(t, bin)
			tg := startTarget(t, bin, nil, "-n", strconv.Itoa(n))
			tg.expect(t, "ready")
			p, err := plan.FromProcess(tg.cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			c := trace(t, p, Options{Programs: append([]string{"casgstatus"}, DefaultPrograms...)})
			tg.send(t)
			tg.expect(t, "done")
			tg.wait(t)
			evs, st := c.stop(t)
			checkStats(t, st)
			worker := funcAddr(t, b, "main.worker")
			workers := map[uint64]bool{}
			for _, ev := range evs {
				if ev.Kind == event.KindGoCreate && ev.PC2 == worker {
					workers[ev.Goid] = true
				}
			}
			running, dead := map[uint64]int{}, map[uint64]int{}
			for _, ev := range evs {
				if ev.Kind != event.KindStatus || !workers[ev.Goid] {
					continue
				}
				switch {
				case ev.Aux == event.StatusRunnable && ev.Reason == event.StatusRunning:
					running[ev.Goid]++
				case ev.Aux == event.StatusRunning && ev.Reason == event.StatusDead:
					dead[ev.Goid]++
				}
			}
			if len(workers) != n || len(running) != n || len(dead) != n {
				t.Fatalf("%d workers, %d went runnable->running, %d running->dead; want %d", len(workers), len(running), len(dead), n)
			}
			for g, k := range dead {
				if k != 1 {
					t.Errorf("worker %d died %d times", g, k)
				}
			}
		})
	}
}

func filterProbes(ps []plan.Probe, program string) []plan.Probe {
	var out []plan.Probe
	for _, p := range ps {
		if p.Program == program {
			out = append(out, p)
		}
	}
	return out
}

func filter(evs []event.Event, k event.Kind) []event.Event {
	var out []event.Event
	for _, ev := range evs {
		if ev.Kind == k {
			out = append(out, ev)
		}
	}
	return out
}

// TestManyGoroutines traces 100000 goroutine lives (about 800000 events in
// a few seconds) and loses none.
func TestManyGoroutines(t *testing.T) {
	testtarget.RequireRoot(t)
	const n = 100000
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	b := openBin(t, bin)
	tg := startTarget(t, bin, nil, "-n", strconv.Itoa(n))
	tg.expect(t, "ready")
	p, err := plan.FromProcess(tg.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	c := trace(t, p, Options{})
	start := time.Now()
	tg.send(t)
	tg.wait(t)
	elapsed := time.Since(start)
	evs, st := c.stop(t)
	checkStats(t, st)
	worker := funcAddr(t, b, "main.worker")
	var created, exited int
	for _, ev := range evs {
		if ev.PC2 == worker {
			switch ev.Kind {
			case event.KindGoCreate:
				created++
			case event.KindGoExit:
				exited++
			}
		}
	}
	t.Logf("%d events in %v (%.0f/s)", len(evs), elapsed, float64(len(evs))/elapsed.Seconds())
	if created != n || exited != n {
		t.Fatalf("created %d, exited %d, want %d", created, exited, n)
	}
}

func TestClassify(t *testing.T) {
	if err := classify(fmt.Errorf("load: %w", syscall.EPERM)); !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "CAP_BPF and CAP_PERFMON") {
		t.Fatalf("EPERM: %v", err)
	}
	if err := classify(fmt.Errorf("x: %w", syscall.ENOSYS)); !errors.Is(err, ErrNoUprobes) {
		t.Fatalf("ENOSYS: %v", err)
	}
	if err := classify(io.EOF); err != io.EOF {
		t.Fatalf("EOF: %v", err)
	}
}

// TestBlockers checks that parks carry the wait reasons the target causes.
func TestBlockers(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range testtarget.Toolchains {
		t.Run(string(tc), func(t *testing.T) {
			bin := testtarget.Build(t, "blockers", tc, testtarget.Plain)
			const d = 40 * time.Millisecond
			tg := startTarget(t, bin, nil, "-d", d.String())
			tg.expect(t, "ready")
			p, err := plan.FromProcess(tg.cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			c := trace(t, p, Options{})
			tg.send(t)
			tg.expect(t, "done")
			tg.wait(t)
			evs, st := c.stop(t)
			checkStats(t, st)

			// A channel receive parks from runtime.chanrecv: PC is
			// gopark's return address.
			b := openBin(t, bin)
			for _, ev := range evs {
				if ev.Kind == event.KindGoPark && p.WaitReasons.Name(ev.Reason) == "chan receive" {
					if fn, ok := b.FuncAt(ev.PC - p.LoadBias - 1); !ok || fn.Name != "runtime.chanrecv" {
						t.Errorf("chan receive park from %#x (%s), want runtime.chanrecv", ev.PC, fn.Name)
					}
				}
			}

			// The longest park per reason, closed by the next unpark or
			// start of the G (a G that netpoll hands straight to the
			// M that polled is made runnable without ready or injectglist).
			parked := map[uint64]event.Event{}
			longest := map[string]time.Duration{}
			for _, ev := range evs {
				switch ev.Kind {
				case event.KindGoPark:
					parked[ev.Goid] = ev
				case event.KindGoUnpark, event.KindGoStart:
					if pk, ok := parked[ev.Goid]; ok {
						r := p.WaitReasons.Name(pk.Reason)
						longest[r] = max(longest[r], time.Duration(ev.Ts-pk.Ts))
						delete(parked, ev.Goid)
					}
				}
			}
			t.Logf("longest park per reason: %v", longest)
			mutex := "sync.Mutex.Lock"
			if tc == testtarget.Go119 {
				mutex = "semacquire"
			}
			for _, r := range []string{"chan receive", "chan send", "select", "sleep", mutex, "IO wait"} {
				if longest[r] < d*8/10 || longest[r] > 10*time.Second {
					t.Errorf("longest %q park %v, want about %v", r, longest[r], d)
				}
			}
		})
	}
}

// planAtEntry returns the plan of a process stopped before its first
// instruction. For a PIE, not relocated yet, the wait reasons come from the
// file: the test checks that FromProcess says so.
func planAtEntry(t *testing.T, pid int, bin string, v testtarget.Variant) *plan.Plan {
	t.Helper()
	p, err := plan.FromProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	if v == testtarget.PIE && (p.WaitReasonSource != "binary" || p.LoadBias == 0) {
		t.Errorf("PIE at entry: wait reasons from the %s, load bias %#x", p.WaitReasonSource, p.LoadBias)
	}
	if p.WaitReasons.Name(1) != "GC assist marking" {
		t.Errorf("wait reason 1 = %q", p.WaitReasons.Name(1))
	}
	return p
}

// TestLaunchSeesRuntimeMain starts spawn stopped before its first
// instruction, attaches, releases it, and sees the creation of the main
// goroutine (goid 1, started at runtime.main), which happens before any Go
// code runs.
func TestLaunchSeesRuntimeMain(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range testtarget.Toolchains {
		for _, v := range []testtarget.Variant{testtarget.Plain, testtarget.PIE} {
			t.Run(fmt.Sprintf("%s-%s", tc, v), func(t *testing.T) {
				bin := testtarget.Build(t, "spawn", tc, v)
				b := openBin(t, bin)
				var out strings.Builder
				cmd, err := launch.Start(bin, []string{"-wait=false", "-n", "3"}, nil, &out, os.Stderr)
				if err != nil {
					t.Fatal(err)
				}
				defer cmd.Kill()
				p := planAtEntry(t, cmd.PID(), bin, v)
				c := trace(t, p, Options{})
				if err := cmd.Release(); err != nil {
					t.Fatal(err)
				}
				if _, err := cmd.Wait(); err != nil {
					t.Fatalf("target: %v", err)
				}
				evs, st := c.stop(t)
				checkStats(t, st)
				rtMain := funcAddr(t, b, "runtime.main") + p.LoadBias
				worker := funcAddr(t, b, "main.worker") + p.LoadBias
				var mains, workers int
				for _, ev := range evs {
					if ev.Kind != event.KindGoCreate {
						continue
					}
					if ev.Goid == 1 {
						mains++
						if ev.PC2 != rtMain || ev.Aux != 0 {
							t.Errorf("goroutine 1 created with start %#x parent %d, want runtime.main %#x, parent 0", ev.PC2, ev.Aux, rtMain)
						}
					}
					if ev.PC2 == worker {
						workers++
					}
				}
				if mains != 1 || workers != 3 {
					t.Fatalf("saw %d creations of goroutine 1 and %d of workers, want 1 and 3; output %q", mains, workers, out.String())
				}
			})
		}
	}
}

// TestGosched traces the seed's Gosched example from its first instruction.
func TestGosched(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range testtarget.Toolchains {
		t.Run(string(tc), func(t *testing.T) {
			bin := testtarget.Build(t, "gosched", tc, testtarget.Plain)
			b := openBin(t, bin)
			var out strings.Builder
			cmd, err := launch.Start(bin, nil, nil, &out, os.Stderr)
			if err != nil {
				t.Fatal(err)
			}
			defer cmd.Kill()
			p, err := plan.FromProcess(cmd.PID())
			if err != nil {
				t.Fatal(err)
			}
			c := trace(t, p, Options{})
			if err := cmd.Release(); err != nil {
				t.Fatal(err)
			}
			if _, err := cmd.Wait(); err != nil {
				t.Fatalf("target: %v", err)
			}
			evs, st := c.stop(t)
			checkStats(t, st)
			mainMain, err := b.Func("main.main")
			if err != nil {
				t.Fatal(err)
			}
			lo := mainMain.Addr + p.LoadBias
			var fromMain, scheds int
			for _, ev := range evs {
				switch {
				case ev.Kind == event.KindGoCreate && ev.PC > lo && ev.PC <= lo+mainMain.Size:
					fromMain++
					if ev.Aux != 1 {
						t.Errorf("creation from main.main with parent %d, want 1", ev.Aux)
					}
				case ev.Kind == event.KindGoSched && ev.Goid == 1 && ev.Reason == 0:
					scheds++
				}
			}
			if fromMain != 5 || scheds < 1 {
				t.Fatalf("%d creations from main.main (want 5), %d Gosched of goroutine 1 (want >= 1)", fromMain, scheds)
			}
			for _, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
				if l != "Aario" && l != "Hello" {
					t.Fatalf("output %q", out.String())
				}
			}
			if !strings.Contains(out.String(), "Hello\n") {
				t.Fatalf("output %q", out.String())
			}
		})
	}
}

// runTarget runs bin (which prints ready and waits for a line) to the end,
// traced when traced is set, and returns its CPU time and the tracer's stats.
func runTarget(b *testing.B, bin string, env []string, traced bool, args ...string) (time.Duration, Stats, time.Duration) {
	b.Helper()
	var opts *Options
	if traced {
		opts = &Options{}
	}
	cpu, st, per := runTraced(b, bin, env, opts, args...)
	var bpfTime time.Duration
	for _, ps := range per {
		bpfTime += ps.Runtime
	}
	return cpu, st, bpfTime
}

// runTraced runs bin (which prints ready and waits for a line; standard
// input is closed after it) to the end, traced with opts unless nil, and
// returns its CPU time, the tracer's stats and each program's BPF run-time
// statistics.
func runTraced(b *testing.B, bin string, env []string, opts *Options, args ...string) (time.Duration, Stats, map[string]*ciliumebpf.ProgramStats) {
	b.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		b.Fatalf("no ready line")
	}
	var tr *Tracer
	var ran chan error
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if opts != nil {
		p, err := plan.FromProcess(cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		if tr, err = Attach(p, *opts); err != nil {
			b.Fatal(err)
		}
		ran = make(chan error, 1)
		go func() { ran <- tr.Run(ctx, func(*event.Event) {}) }()
	}
	fmt.Fprintln(in, "go")
	in.Close()
	for sc.Scan() {
	}
	if err := cmd.Wait(); err != nil {
		b.Fatal(err)
	}
	var st Stats
	per := map[string]*ciliumebpf.ProgramStats{}
	if tr != nil {
		cancel()
		if err := <-ran; err != nil {
			b.Fatal(err)
		}
		for name, prog := range tr.coll.Programs {
			if ps, err := prog.Stats(); err == nil {
				per[name] = ps
			}
		}
		tr.Close()
		st = tr.Stats()
	}
	ps := cmd.ProcessState
	return ps.UserTime() + ps.SystemTime(), st, per
}

// BenchmarkProbeCost measures the CPU a probe hit costs the target, traced
// and not, interleaved: the difference in the target's CPU time divided by
// the probe hits. "gosched" is one goroutine yielding in a loop on one P
// (schedule, goschedImpl, execute per yield: emulated probe instructions);
// "spawn" creates, runs and ends 100000 goroutines on every CPU. bpf-ns/hit
// is the programs' own share, from the kernel's BPF run-time statistics.
func BenchmarkProbeCost(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	// Count the BPF programs' own run time (BPF_STATS_RUN_TIME).
	if c, err := ciliumebpf.EnableStats(0); err == nil {
		defer c.Close()
	}
	for _, tc := range []testtarget.Toolchain{testtarget.Go126, testtarget.Go119} {
		for _, w := range []struct {
			name string
			env  []string
			args []string
		}{
			{"gosched", []string{"GOMAXPROCS=1"}, []string{"-wait", "-loop", "200000"}},
			{"spawn", nil, []string{"-n", "100000"}},
		} {
			b.Run(w.name+"-"+string(tc), func(b *testing.B) {
				bin, err := testtarget.BuildErr(w.name, tc, testtarget.Plain)
				if err != nil {
					b.Skip(err)
				}
				var base, traced, bpfTime time.Duration
				var hits, lost uint64
				for i := 0; i < b.N; i++ {
					c0, _, _ := runTarget(b, bin, w.env, false, w.args...)
					c1, st, bt := runTarget(b, bin, w.env, true, w.args...)
					base += c0
					traced += c1
					bpfTime += bt
					for _, h := range st.Hits {
						hits += h
					}
					lost += st.Lost
				}
				b.ReportMetric(float64(traced-base)/float64(hits), "cpu-ns/hit")
				b.ReportMetric(float64(bpfTime)/float64(hits), "bpf-ns/hit")
				b.ReportMetric(float64(hits)/float64(b.N), "hits/op")
				b.ReportMetric(float64(lost), "lost")
				b.ReportMetric(float64(traced)/float64(base), "cpu-ratio")
			})
		}
	}
}

// newPathPrograms are the programs of the four paths and syscalls.
var newPathPrograms = []string{"newproc", "newosproc", "mProf_Malloc", "mheap_grow", "entersyscall", "exitsyscall", "chansend", "chanrecv", "mallocgc"}

// BenchmarkPathProbeCost measures the path programs on testdata/pathsbpf
// (1000 channel sends and receives, 17700 mallocgc, 1030 syscalls, 280
// sampled allocations, 114 creations): each program's own BPF run time per
// hit (ns/hit-PROGRAM, from the kernel's run-time statistics; the uprobe
// trap itself, about a microsecond, comes on top) and the target's CPU time
// per hit of a path program, from interleaved runs traced by the scheduler
// programs alone and by the scheduler and path programs.
func BenchmarkPathProbeCost(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	if c, err := ciliumebpf.EnableStats(0); err == nil {
		defer c.Close()
	}
	var sched []string
	for _, p := range DefaultPrograms {
		if !slices.Contains(newPathPrograms, p) {
			sched = append(sched, p)
		}
	}
	all := append(append([]string(nil), sched...), newPathPrograms...)
	for _, tc := range []testtarget.Toolchain{testtarget.Go126, testtarget.Go119} {
		b.Run(string(tc), func(b *testing.B) {
			bin, err := testtarget.BuildErr("pathsbpf", tc, testtarget.Plain)
			if err != nil {
				b.Skip(err)
			}
			var base, traced time.Duration
			var hits uint64
			runTime := map[string]time.Duration{}
			runs := map[string]uint64{}
			for i := 0; i < b.N; i++ {
				c0, _, _ := runTraced(b, bin, nil, &Options{Programs: sched})
				c1, st, per := runTraced(b, bin, nil, &Options{Programs: all})
				base += c0
				traced += c1
				for _, p := range newPathPrograms {
					hits += st.Hits[p]
					if ps := per[p]; ps != nil {
						runTime[p] += ps.Runtime
						runs[p] += ps.RunCount
					}
				}
			}
			b.ReportMetric(float64(traced-base)/float64(hits), "cpu-ns/hit")
			b.ReportMetric(float64(hits)/float64(b.N), "hits/op")
			for _, p := range newPathPrograms {
				if runs[p] > 0 {
					b.ReportMetric(float64(runTime[p])/float64(runs[p]), "ns/hit-"+p)
				}
			}
		})
	}
}

// BenchmarkStackCost measures what user stacks cost: testdata/spawn (100000
// goroutines created, each parking once) traced by the default programs with
// and without stacks, interleaved; cpu-ns/stack is the difference in the
// target's CPU time per captured stack (a creation and a park per goroutine).
func BenchmarkStackCost(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	bin, err := testtarget.BuildErr("spawn", testtarget.Go126, testtarget.Plain)
	if err != nil {
		b.Skip(err)
	}
	var without, with time.Duration
	var stacks uint64
	for i := 0; i < b.N; i++ {
		c0, _, _ := runTraced(b, bin, nil, &Options{NoStacks: true}, "-n", "100000")
		c1, st, _ := runTraced(b, bin, nil, &Options{}, "-n", "100000")
		without += c0
		with += c1
		stacks += st.Hits["gopark"] + st.Hits["newproc"] + st.Hits["newm"] + st.Hits["mProf_Malloc"] + st.Hits["entersyscall"]
	}
	b.ReportMetric(float64(with-without)/float64(stacks), "cpu-ns/stack")
	b.ReportMetric(float64(stacks)/float64(b.N), "stacks/op")
	b.ReportMetric(float64(with)/float64(without), "cpu-ratio")
}
