package export

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/paths"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/record"
)

var update = flag.Bool("update", false, "rewrite the golden text renderings in testdata/")

// The synthetic recording's program, with PIE load bias 0x10000: link-time
// PCs below, runtime PCs in the events are 0x10000 higher.
const bias = 0x10000

var symbols = map[uint64]gobin.Frame{
	0x1011: {Func: "main.main", File: "/src/main.go", Line: 11}, // go worker() (return address)
	0x1021: {Func: "main.main", File: "/src/main.go", Line: 12}, // go leak()
	0x2000: {Func: "main.worker", File: "/src/main.go", Line: 50},
	0x9000: {Func: "runtime.gopark", File: "/go/src/runtime/proc.go", Line: 400},
	0x3011: {Func: "runtime.chanrecv", File: "/go/src/runtime/chan.go", Line: 601},
	0x3511: {Func: "runtime.chanrecv1", File: "/go/src/runtime/chan.go", Line: 501},
	0x4021: {Func: "main.consumer", File: "/src/main.go", Line: 42},
	0x1031: {Func: "main.main", File: "/src/main.go", Line: 13},
	0x6011: {Func: "main.alloc", File: "/src/main.go", Line: 31},
}

func mk(ts uint64, k event.Kind, goid uint64, f func(e *event.Event)) event.Event {
	e := event.Event{Ts: ts, Kind: k, Goid: goid, TID: 100, StackID: event.NoStack}
	if f != nil {
		f(&e)
	}
	return e
}

// synthetic writes a recording whose numbers the tests know: G2 created at
// main.go:11 and run after 500ns; blocked twice at main.consumer
// (main.go:42) in chan receive, 3000ns and 1000ns; 6 goroutines leaked from
// main.go:12; 3 sampled allocations of 1 KiB at main.go:31; one thread.
func synthetic(t testing.TB) []byte {
	var buf bytes.Buffer
	wr := make(plan.WaitReasons, 20)
	wr[19] = "chan receive"
	w, err := record.NewWriter(&buf, &record.Meta{Plan: &plan.Plan{GoVersion: "go1.26.8", Path: "/bin/synthetic", LoadBias: bias, WaitReasons: wr},
		PID: 42, Start: time.Unix(1_700_000_000, 0).UTC(), Programs: []string{"gopark", "execute"}, Tool: "test"})
	if err != nil {
		t.Fatal(err)
	}
	var evs []event.Event
	add := func(e event.Event) { evs = append(evs, e) }
	add(mk(1000, event.KindGoCreate, 2, func(e *event.Event) { e.Aux, e.PC, e.PC2 = 1, bias+0x1011, bias+0x2000 }))
	add(mk(1500, event.KindGoStart, 2, nil))
	add(mk(2000, event.KindGoPark, 2, func(e *event.Event) { e.Reason, e.StackID, e.PC = 19, 7, bias+0x3011 }))
	add(mk(5000, event.KindGoUnpark, 2, func(e *event.Event) { e.Aux = 1 }))
	add(mk(5200, event.KindGoStart, 2, nil))
	add(mk(6000, event.KindGoPark, 2, func(e *event.Event) { e.Reason, e.StackID, e.PC = 19, 7, bias+0x3011 }))
	add(mk(7000, event.KindGoUnpark, 2, func(e *event.Event) { e.Aux = 1 }))
	add(mk(7100, event.KindGoStart, 2, nil))
	add(mk(7500, event.KindThreadCreate, 2, func(e *event.Event) { e.Aux = 3 }))
	for i := uint64(0); i < 3; i++ {
		add(mk(9100+i, event.KindAlloc, 2, func(e *event.Event) { e.Aux, e.PC = 1024, bias+0x6011 }))
	}
	for i := uint64(0); i < 6; i++ {
		add(mk(10_000+i*1000, event.KindGoCreate, 100+i, func(e *event.Event) { e.Aux, e.PC, e.PC2 = 1, bias+0x1021, bias+0x2000 }))
	}
	add(mk(17_000, event.KindSchedule, 0, func(e *event.Event) { e.MID, e.TID = 1, 101 }))
	if err := w.WriteEvents(evs); err != nil {
		t.Fatal(err)
	}
	var syms []record.Symbol
	for pc, f := range symbols {
		syms = append(syms, record.Symbol{PC: pc, Frame: f})
	}
	w.WriteSymbols(syms)
	w.WriteStacks(map[int32][]uint64{7: {bias + 0x9000, bias + 0x3511, bias + 0x4021, bias + 0x1031}})
	if err := w.Close(&record.Stats{Events: uint64(len(evs)), Hits: map[string]uint64{"gopark": 2, "execute": 3}, Duration: time.Second}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func read(t testing.TB, b []byte) *record.Recording {
	t.Helper()
	rec, err := record.Read(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func render(t testing.TB, in *Input, format string) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := Render(&out, format, in); err != nil {
		t.Fatalf("%s: %v", format, err)
	}
	return out.Bytes()
}

// sampleSum sums sample type typ over samples whose stack has fn at line
// (line 0: any line), with the label key=val if key is given.
func sampleSum(t *testing.T, p *profile.Profile, typ, fn string, line int64, key, val string) int64 {
	t.Helper()
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == typ {
			idx = i
		}
	}
	if idx < 0 {
		t.Fatalf("no sample type %s", typ)
	}
	var sum int64
	for _, s := range p.Sample {
		if key != "" && (len(s.Label[key]) == 0 || s.Label[key][0] != val) {
			continue
		}
		found := false
		for _, l := range s.Location {
			for _, ln := range l.Line {
				if ln.Function.Name == fn && (line == 0 || ln.Line == line) {
					found = true
				}
			}
		}
		if found {
			sum += s.Value[idx]
		}
	}
	return sum
}

func TestPprofSynthetic(t *testing.T) {
	in := FromRecording(read(t, synthetic(t)), Options{})
	p, err := profile.Parse(bytes.NewReader(render(t, in, "pprof")))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckValid(); err != nil {
		t.Fatal(err)
	}
	scale := 1 / (1 - math.Exp(-1024.0/paths.DefaultMemProfileRate))
	for _, c := range []struct {
		typ, fn  string
		line     int64
		key, val string
		want     int64
	}{
		{"goroutines", "main.main", 12, "start_function", "main.worker", 6},
		{"alive", "main.main", 12, "", "", 6},
		{"goroutines", "main.main", 11, "", "", 1},
		{"blocking", "main.consumer", 42, "reason", "chan receive", 4000},
		{"blocks", "main.consumer", 42, "reason", "chan receive", 2},
		{"blocking", "runtime.chanrecv", 601, "", "", 4000}, // the frame the FP walk misses, put back
		{"delay", "main.main", 11, "", "", 500},
		{"delay", "main.consumer", 42, "", "", 300},
		{"alloc_space", "main.alloc", 31, "", "", int64(3072 * scale)},
		{"alloc_objects", "main.alloc", 31, "", "", int64(3 * scale)},
		{"threads", "main.main", 11, "", "", 1},
	} {
		if got := sampleSum(t, p, c.typ, c.fn, c.line, c.key, c.val); got != c.want {
			t.Errorf("%s at %s:%d: %d, want %d", c.typ, c.fn, c.line, got, c.want)
		}
	}
	// Addresses are the runtime's; lines come from the recording alone.
	if p.Mapping[0].File != "/bin/synthetic" || !p.Mapping[0].HasFunctions {
		t.Errorf("mapping %+v", p.Mapping[0])
	}
}

func TestFoldedSynthetic(t *testing.T) {
	in := FromRecording(read(t, synthetic(t)), Options{})
	got := string(render(t, in, "folded"))
	want := "main.main;main.consumer;runtime.chanrecv1;runtime.chanrecv 4000\n"
	if got != want {
		t.Errorf("folded:\n%s\nwant\n%s", got, want)
	}
	in.Sample = "goroutines"
	if got := string(render(t, in, "folded")); got != "main.main 7\n" {
		t.Errorf("folded goroutines: %q", got)
	}
	in.Sample = "nope"
	if err := Render(&bytes.Buffer{}, "folded", in); err == nil {
		t.Error("unknown sample type: no error")
	}
}

func TestPerfettoSynthetic(t *testing.T) {
	in := FromRecording(read(t, synthetic(t)), Options{})
	var tr Trace
	if err := json.Unmarshal(render(t, in, "perfetto"), &tr); err != nil {
		t.Fatal(err)
	}
	names := map[[2]int64]string{} // pid, tid -> thread name
	procs := map[int]string{}
	var slicesP, slicesM, flowsS, flowsF, counters int
	var firstDur float64
	for _, e := range tr.TraceEvents {
		switch e.Ph {
		case "M":
			if e.Name == "thread_name" {
				names[[2]int64{int64(e.Pid), e.Tid}] = e.Args["name"].(string)
			} else if e.Name == "process_name" {
				procs[e.Pid] = e.Args["name"].(string)
			}
		case "X":
			if e.Name != "G2 main.worker" {
				t.Errorf("slice name %q", e.Name)
			}
			if e.Pid == tracePs {
				slicesP++
			} else {
				slicesM++
				if firstDur == 0 {
					firstDur = *e.Dur
				}
			}
		case "s":
			flowsS++
		case "f":
			flowsF++
		case "C":
			counters++
		}
	}
	if procs[tracePs] != "Ps" || procs[traceMs] != "Ms" || names[[2]int64{tracePs, 0}] != "P0" ||
		names[[2]int64{traceMs, 0}] != "M0 tid 100" || names[[2]int64{traceMs, 1}] != "M1 tid 101" {
		t.Errorf("tracks: %v %v", procs, names)
	}
	// G2 runs three times on M0/P0; the first run lasts 0.5µs (1500-2000ns).
	if slicesP != 3 || slicesM != 3 || firstDur != 0.5 {
		t.Errorf("slices: %d on Ps, %d on Ms, first %vµs", slicesP, slicesM, firstDur)
	}
	// Seven creates, one of which ran (a flow start each, one finish).
	if flowsS != 7 || flowsF != 1 || counters < 7 {
		t.Errorf("flows %d/%d counters %d", flowsS, flowsF, counters)
	}
}

func TestJSONLSynthetic(t *testing.T) {
	rec := read(t, synthetic(t))
	in := FromRecording(rec, Options{})
	lines := strings.Split(strings.TrimRight(string(render(t, in, "jsonl")), "\n"), "\n")
	if len(lines) != len(rec.Events)+1 {
		t.Fatalf("%d lines for %d events (+ stacks)", len(lines), len(rec.Events))
	}
	var first, park JSONEvent
	json.Unmarshal([]byte(lines[0]), &first)
	json.Unmarshal([]byte(lines[2]), &park)
	if first.Kind != "GoCreate" || first.Function != "main.main" || first.Line != 11 || first.Goid != 2 || first.Aux != 1 {
		t.Errorf("first: %+v", first)
	}
	if park.Kind != "GoPark" || park.ReasonName != "chan receive" || park.Stack == nil || *park.Stack != 7 {
		t.Errorf("park: %+v", park)
	}
	if !strings.Contains(lines[len(lines)-1], `"kind":"Stacks"`) {
		t.Errorf("last line: %s", lines[len(lines)-1])
	}
}

// TestGolden renders testdata/*.rec (and the synthetic recording) as text
// and compares with testdata/*.txt; -update rewrites them.
func TestGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.rec")
	cases := map[string][]byte{"synthetic": synthetic(t)}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cases[strings.TrimSuffix(filepath.Base(f), ".rec")] = b
	}
	if len(cases) < 2 {
		t.Fatal("no recorded streams in testdata/")
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			got := render(t, FromRecording(read(t, b), Options{}), "text")
			golden := filepath.Join("testdata", name+".txt")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("text rendering differs from %s (-update to accept):\n%s", golden, got)
			}
		})
	}
}

// TestTruncated renders a recording cut in the middle: what is there, and
// where it stopped.
func TestTruncated(t *testing.T) {
	full := synthetic(t)
	rec := read(t, full[:len(full)-20])
	if rec.Truncated == "" || rec.Complete {
		t.Fatalf("not truncated: %+v", rec.Truncated)
	}
	out := string(render(t, FromRecording(rec, Options{}), "text"))
	if !strings.HasPrefix(out, "NOTE: incomplete recording, stopped at byte") || !strings.Contains(out, "created 7") {
		t.Errorf("truncated rendering:\n%s", out)
	}
}

func TestUnknownFormat(t *testing.T) {
	in := FromRecording(read(t, synthetic(t)), Options{})
	if err := Render(&bytes.Buffer{}, "svg", in); err == nil || !strings.Contains(err.Error(), "unknown format") {
		t.Errorf("err %v", err)
	}
}
