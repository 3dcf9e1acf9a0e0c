package regress

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
)

// The smallest sample sizes come from benchmath itself (the p-value of two
// completely separated samples), not from a table of ours.
func TestMinRuns(t *testing.T) {
	if got := minP(4, 4); math.Abs(got-2.0/70) > 1e-9 {
		t.Errorf("minP(4,4) = %v, want 2/C(8,4) = %v", got, 2.0/70)
	}
	if got := minP(3, 3); math.Abs(got-0.1) > 1e-9 {
		t.Errorf("minP(3,3) = %v, want 0.1", got)
	}
	// benchstat's own rule: 4 runs each at alpha 0.05.
	if got := MinRuns(0.05); got != 4 {
		t.Errorf("MinRuns(0.05) = %d, want 4", got)
	}
	// Holm over 7 metrics: the first step needs p <= 0.05/7 = 0.0071;
	// 5+5 gives at best 2/252 = 0.0079, 6+6 gives 2/924 = 0.0022.
	if got := MinRuns(0.05 / 7); got != 6 {
		t.Errorf("MinRuns(0.05/7) = %d, want 6", got)
	}
	// Asymmetric samples: 10 against 3 can reach 2/C(13,3) = 0.007.
	if got := minP(10, 3); math.Abs(got-2.0/286) > 1e-9 {
		t.Errorf("minP(10,3) = %v, want %v", got, 2.0/286)
	}
	if minP(0, 10) != 1 {
		t.Error("minP with an empty sample must be 1")
	}
}

// simWorld draws per-run scheduling-latency histograms shaped like
// schedload's: most latencies are ping-pong hand-offs of a few hundred
// nanoseconds, about 5% are spinners waiting their turn (spinnerNS), a few
// are the OS taking the CPU away, and every run has its own machine-load
// factor. Each run's latencies go through the runtime's real bucketing
// (rtstate's go1.20+ histogram bounds).
type simWorld struct {
	rng       *rand.Rand
	spinnerNS float64
}

func (w *simWorld) run(index int) Run {
	h, err := rtstate.DecodeHistogram(rtstate.HistGo120, make([]byte, rtstate.HistGo120.Size()))
	if err != nil {
		panic(err)
	}
	load := math.Exp(w.rng.NormFloat64() * 0.05)
	add := func(ns float64) { h.Counts[h.BucketOf(ns)]++ }
	for i := 0; i < 5000; i++ {
		add(400 * load * math.Exp(w.rng.NormFloat64()*0.4))
	}
	for i := 0; i < 300; i++ {
		add(w.spinnerNS * load * math.Exp(w.rng.NormFloat64()*0.3))
	}
	for i := 0; i < 10; i++ {
		add(1e6 + w.rng.Float64()*20e6)
	}
	g, th := int64(14), int64(4)
	return Run{Index: index, Metrics: Metrics{SchedLatency: LatencyFromHistogram(h), GoroutinesCreated: &g, ThreadsCreated: &th}}
}

func (w *simWorld) record(label string, n int) *Record {
	r := NewRecord(label, MethodRuntimeHistogram, []string{"./schedload"})
	for i := 1; i <= n; i++ {
		r.Runs = append(r.Runs, w.run(i))
	}
	return r
}

// A/A: 20 repetitions of 10 runs against 10 runs drawn from the same
// distribution raise at most one alarm (the issue's "no regression in at
// least 19 of 20").
func TestSimulatedAA(t *testing.T) {
	alarms := 0
	for rep := 0; rep < 20; rep++ {
		w := &simWorld{rng: rand.New(rand.NewPCG(uint64(rep), 7)), spinnerNS: 150e3}
		res, err := Compare(w.record("base", 10), w.record("new", 10), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode() != 0 {
			alarms++
			t.Logf("repetition %d: false alarm: %s", rep, res.Conclusion())
		}
	}
	if alarms > 1 {
		t.Errorf("%d false alarms in 20 A/A repetitions, want at most 1", alarms)
	}
}

// The false-alarm rate over many A/A repetitions, for the record: Holm's
// correction keeps it at or under alpha; without it (every metric at 0.05)
// it would be several times that.
func TestSimulatedAARate(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	const reps = 200
	alarms, rawAlarms := 0, 0
	for rep := 0; rep < reps; rep++ {
		w := &simWorld{rng: rand.New(rand.NewPCG(uint64(rep), 1001)), spinnerNS: 150e3}
		res, err := Compare(w.record("base", 10), w.record("new", 10), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode() != 0 {
			alarms++
		}
		for _, r := range res.Rows {
			if r.Checked && r.Significant && r.DeltaPct > 10 {
				rawAlarms++
				break
			}
		}
	}
	rate := float64(alarms) / reps
	t.Logf("A/A false alarms: %d/%d = %.1f%% with Holm; %d/%d = %.1f%% uncorrected", alarms, reps, 100*rate, rawAlarms, reps, 100*float64(rawAlarms)/reps)
	if rate > DefaultAlpha {
		t.Errorf("A/A false-alarm rate %.3f above alpha %.2f", rate, DefaultAlpha)
	}
}

// A/B: spinners that hold the CPU twice as long double the tail; the alarm
// fires on p99 with its change and p-value, every time.
func TestSimulatedAB(t *testing.T) {
	for rep := 0; rep < 20; rep++ {
		rng := rand.New(rand.NewPCG(uint64(rep), 99))
		base := (&simWorld{rng: rng, spinnerNS: 150e3}).record("base", 10)
		nw := (&simWorld{rng: rng, spinnerNS: 300e3}).record("new", 10)
		res, err := Compare(base, nw, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode() != 1 {
			t.Fatalf("repetition %d: no alarm for a doubled tail:\n%s", rep, render(t, res, "text"))
		}
		var p99 *Row
		for _, r := range res.Regressions() {
			if r.Metric.Key == "p99" {
				p99 = r
			}
		}
		if p99 == nil {
			t.Fatalf("repetition %d: p99 not among the regressions: %s", rep, res.Conclusion())
		}
		if p99.DeltaPct < 60 || p99.DeltaPct > 140 {
			t.Errorf("repetition %d: p99 change %+.1f%%, want about +100%%", rep, p99.DeltaPct)
		}
		if p99.Cmp.P > 0.001 {
			t.Errorf("repetition %d: p99 p-value %v, want < 0.001 for separated samples", rep, p99.Cmp.P)
		}
		// p50 is the ping-pong hand-offs: unchanged.
		for _, r := range res.Rows {
			if r.Metric.Key == "p50" && r.Regression {
				t.Errorf("repetition %d: p50 flagged: %+.1f%%", rep, r.DeltaPct)
			}
		}
		if rep == 0 {
			out := render(t, res, "text")
			if !strings.Contains(out, "REGRESSION: sched latency p99 +") || !strings.Contains(out, "(p=0.000 n=10)") {
				t.Errorf("text lacks the change and p-value:\n%s", out)
			}
		}
	}
}

func render(t *testing.T, res *Result, format string) string {
	t.Helper()
	var b bytes.Buffer
	if err := res.Render(&b, format); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// fixedRecord makes a record whose metric values are given: every latency
// quantile scaled from p99 so they stay ordered.
func fixedRecord(label string, p99s ...int64) *Record {
	r := NewRecord(label, MethodRuntimeHistogram, []string{"prog"})
	for i, v := range p99s {
		r.Runs = append(r.Runs, Run{Index: i + 1, Metrics: Metrics{SchedLatency: Latency{
			Count: 1000, P50NS: v / 10, P90NS: v / 2, P99NS: v, P999NS: 10 * v, MaxNS: 100 * v,
		}}})
	}
	return r
}

func TestThresholds(t *testing.T) {
	base := fixedRecord("base", 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007)
	// +5%, completely separated: significant, but within 10%.
	nw := fixedRecord("new", 1050, 1051, 1052, 1053, 1054, 1055, 1056, 1057)
	res, err := Compare(base, nw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 0 {
		t.Errorf("+5%% against a 10%% threshold: exit %d, %s", res.ExitCode(), res.Conclusion())
	}
	if !strings.Contains(render(t, res, "text"), "worse, within 10%") {
		t.Errorf("text does not say the change is within the threshold:\n%s", render(t, res, "text"))
	}
	res, err = Compare(base, nw, Options{MetricThresholds: map[string]float64{"p99": 0.02}})
	if err != nil {
		t.Fatal(err)
	}
	var regs []string
	for _, r := range res.Regressions() {
		regs = append(regs, r.Metric.Key)
	}
	if strings.Join(regs, ",") != "p99" {
		t.Errorf("p99=2%%: regressions %v, want [p99]", regs)
	}
	// off turns a metric's check off; everything else still 10%.
	double := fixedRecord("new", 2000, 2001, 2002, 2003, 2004, 2005, 2006, 2007)
	res, err = Compare(base, double, Options{MetricThresholds: map[string]float64{"p50": Off, "p90": Off, "p99.9": Off, "max": Off}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Checked != 1 || len(res.Regressions()) != 1 || res.Regressions()[0].Metric.Key != "p99" {
		t.Errorf("all but p99 off: %d checked, %s; want p99 alone", res.Checked, res.Conclusion())
	}
	res, err = Compare(base, double, Options{MetricThresholds: map[string]float64{"p50": Off, "p90": Off, "p99": Off, "p99.9": Off, "max": Off}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 0 || res.Checked != 0 {
		t.Errorf("all off: exit %d, %d checked; want 0 and 0", res.ExitCode(), res.Checked)
	}
	// An improvement is never a regression.
	res, err = Compare(nw, base, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 0 {
		t.Errorf("improvement flagged: %s", res.Conclusion())
	}
	if _, err := Compare(base, nw, Options{MetricThresholds: map[string]float64{"p42": 0.1}}); err == nil || !strings.Contains(err.Error(), `no metric "p42"`) {
		t.Errorf("unknown metric: err %v", err)
	}
}

func TestCompareRefuses(t *testing.T) {
	// fixedRecord has no goroutine or thread counts: 5 checked metrics,
	// so Holm's first step needs p <= 0.01: 4+4 (0.029) is too few, 5+5
	// (0.0079) enough.
	four := fixedRecord("base", 100, 200, 300, 400)
	_, err := Compare(four, fixedRecord("new", 1000, 2000, 3000, 4000), Options{})
	if !errors.Is(err, ErrTooFewRuns) || !strings.Contains(err.Error(), "at least 5 runs each") {
		t.Fatalf("4 against 4 over 5 metrics: err %v, want ErrTooFewRuns", err)
	}
	five := fixedRecord("base", 100, 200, 300, 400, 500)
	six := fixedRecord("new", 1000, 2000, 3000, 4000, 5000, 6000)
	res, err := Compare(five, fixedRecord("new", 1000, 2000, 3000, 4000, 5000), Options{})
	if err != nil || res.ExitCode() != 1 {
		t.Errorf("5 against 5, separated: err %v, want a regression", err)
	}
	// 3 against 10 can reach 2/286 = 0.007.
	if _, err := Compare(fixedRecord("base", 100, 200, 300), fixedRecord("new", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10), Options{}); err != nil {
		t.Errorf("3 against 10: %v", err)
	}

	failed := fixedRecord("new", 100, 200, 300, 400, 500, 600)
	failed.Runs[2].ExitStatus = 3
	failed.Runs[2].Output = "panic: boom\ngoroutine 1 [running]:\nmain.main()"
	_, err = Compare(six, failed, Options{})
	if !errors.Is(err, ErrFailedRun) || !strings.Contains(err.Error(), "new run 3: exit status 3") {
		t.Errorf("failed run: err %v", err)
	}

	ebpf := fixedRecord("new", 100, 200, 300, 400, 500, 600)
	ebpf.Method = MethodEBPF
	if _, err := Compare(six, ebpf, Options{}); !errors.Is(err, ErrIncomparable) {
		t.Errorf("methods differ: err %v", err)
	}
}

func TestReadRecord(t *testing.T) {
	var b bytes.Buffer
	r := fixedRecord("base", 500, 600)
	g := int64(3)
	r.Runs[0].Metrics.GoroutinesCreated = &g
	r.Runs[0].Metrics.BlockedNSByReason = map[string]int64{"chan receive": 42}
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	back, err := ReadRecord(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if *back.Runs[0].Metrics.GoroutinesCreated != 3 || back.Runs[1].Metrics.GoroutinesCreated != nil ||
		back.Runs[0].Metrics.BlockedNSByReason["chan receive"] != 42 || back.Runs[1].Metrics.SchedLatency.P99NS != 600 {
		t.Errorf("round trip changed the record: %+v", back.Runs)
	}
	for _, bad := range []string{
		`{}`,
		`[1,2]`,
		`{"schema":"gmpwatch.ci.record","version":2,"method":"ebpf","runs":[]}`,
		`{"schema":"gmpwatch.ci.record","version":1,"method":"guess","runs":[]}`,
		`{"schema":"gmpwatch.ci.record","version":1,"method":"ebpf","runs":[],"extra":1}`,
		`{"schema":"gmpwatch.ci.record","version":1,"method":"ebpf","runs":[{"metrics":{"sched_latency":{"p50_ns":9,"p90_ns":1}}}]}`,
	} {
		if _, err := ReadRecord(strings.NewReader(bad)); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%s: err %v, want ErrBadRecord", bad, err)
		}
	}
}

// Blocked time by wait reason is compared when every run measured it, and
// is informational unless given a threshold.
func TestBlockedMetrics(t *testing.T) {
	mk := func(label string, ns ...int64) *Record {
		r := fixedRecord(label, 10, 10, 10, 10, 10, 10)
		for i := range r.Runs {
			r.Runs[i].Metrics.BlockedNSByReason = map[string]int64{"chan receive": ns[i]}
		}
		return r
	}
	base := mk("base", 100, 101, 102, 103, 104, 105)
	nw := mk("new", 200, 201, 202, 203, 204, 205)
	res, err := Compare(base, nw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 0 {
		t.Errorf("informational metric raised an alarm: %s", res.Conclusion())
	}
	res, err = Compare(base, nw, Options{MetricThresholds: map[string]float64{"blocked/chan-receive": 0.5}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 1 || res.Regressions()[0].Metric.Name != "blocked in chan receive" {
		t.Errorf("blocked/chan-receive=50%%: %s", res.Conclusion())
	}
}

func TestParseThreshold(t *testing.T) {
	for in, want := range map[string]float64{"10%": 0.10, "5": 0.05, "0.5%": 0.005, "off": Off, " 20% ": 0.2} {
		got, err := ParseThreshold(in)
		if err != nil || math.Abs(got-want) > 1e-12 && !(math.IsInf(want, 1) && math.IsInf(got, 1)) {
			t.Errorf("ParseThreshold(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ten", "-5%", "NaN", "Inf"} {
		if _, err := ParseThreshold(bad); err == nil {
			t.Errorf("ParseThreshold(%q): no error", bad)
		}
	}
}

func TestSplitCommand(t *testing.T) {
	for in, want := range map[string][]string{
		`./prog -hold 5`:              {"./prog", "-hold", "5"},
		`  a   b  `:                   {"a", "b"},
		`prog 'a b' "c d" e\ f`:       {"prog", "a b", "c d", "e f"},
		`go test -run '^$' -bench .`:  {"go", "test", "-run", "^$", "-bench", "."},
		`x "a\"b" 'it''s' ""`:         {"x", `a"b`, "its", ""},
		`sh -c "echo \$HOME \\ \n"`:   {"sh", "-c", `echo $HOME \ \n`},
		`prog --name="two words"=yes`: {"prog", "--name=two words=yes"},
	} {
		got, err := SplitCommand(in)
		if err != nil || strings.Join(got, "|") != strings.Join(want, "|") || len(got) != len(want) {
			t.Errorf("SplitCommand(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`a 'b`, `a "b`} {
		if _, err := SplitCommand(bad); err == nil {
			t.Errorf("SplitCommand(%q): no error", bad)
		}
	}
}

func TestLatencyFromHistogram(t *testing.T) {
	h, err := rtstate.DecodeHistogram(rtstate.HistGo120, make([]byte, rtstate.HistGo120.Size()))
	if err != nil {
		t.Fatal(err)
	}
	if l := LatencyFromHistogram(h); l != (Latency{}) {
		t.Errorf("empty histogram: %+v", l)
	}
	// 990 latencies of ~100ns, 9 of ~100µs, 1 of ~10ms.
	for i := 0; i < 990; i++ {
		h.Counts[h.BucketOf(100)]++
	}
	for i := 0; i < 9; i++ {
		h.Counts[h.BucketOf(100e3)]++
	}
	h.Counts[h.BucketOf(10e6)]++
	l := LatencyFromHistogram(h)
	if l.Count != 1000 {
		t.Errorf("count %d, want 1000", l.Count)
	}
	// Buckets are a quarter of a power of two wide: allow that.
	near := func(name string, got int64, want float64) {
		if float64(got) < want*0.75 || float64(got) > want*1.3 {
			t.Errorf("%s = %d ns, want about %g", name, got, want)
		}
	}
	near("p50", l.P50NS, 100)
	near("p90", l.P90NS, 100)
	near("p99", l.P99NS, 100)
	near("p99.9", l.P999NS, 100e3)
	near("max", l.MaxNS, 10e6)
	if !(l.P50NS <= l.P90NS && l.P90NS <= l.P99NS && l.P99NS <= l.P999NS && l.P999NS <= l.MaxNS) {
		t.Errorf("quantiles out of order: %+v", l)
	}
}
