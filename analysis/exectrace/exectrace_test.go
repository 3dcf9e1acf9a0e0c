package exectrace

import (
	"bytes"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	rtrace "runtime/trace"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// stormRun is one run of testdata/storm under the runtime's tracer.
type stormRun struct {
	trace []byte
	path  string
	ops   map[string]int64 // from storm's "ops pingpong=N spawn=N alloc=N total=N"
}

var (
	stormMu   sync.Mutex
	stormRuns = map[testtarget.Toolchain]*stormRun{}
)

// runStorm builds testdata/storm with tc and runs it for a second with
// -trace; the result is shared by the tests of this package.
func runStorm(t *testing.T, tc testtarget.Toolchain) *stormRun {
	t.Helper()
	stormMu.Lock()
	defer stormMu.Unlock()
	if r := stormRuns[tc]; r != nil {
		return r
	}
	bin := testtarget.Build(t, "storm", tc, testtarget.Plain)
	dir, err := os.MkdirTemp("", "exectrace-storm-")
	if err != nil {
		t.Fatal(err)
	}
	// Kept for the other tests of the package; removed when all have run.
	cleanups = append(cleanups, func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "trace.out")
	out, err := exec.Command(bin, "-d", "1s", "-trace", path).Output()
	if err != nil {
		t.Fatalf("storm: %v", err)
	}
	r := &stormRun{path: path, ops: map[string]int64{}}
	for _, f := range strings.Fields(strings.TrimSpace(string(out))) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("storm output %q: %v", out, err)
		}
		r.ops[k] = n
	}
	if r.ops["total"] == 0 {
		t.Fatalf("storm printed no operations: %q", out)
	}
	if r.trace, err = os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	stormRuns[tc] = r
	return r
}

var cleanups []func()

func TestMain(m *testing.M) {
	code := m.Run()
	for _, f := range cleanups {
		f()
	}
	os.Exit(code)
}

// pprofSched runs `go tool trace -pprof=sched` on a trace file with the
// installed Go and returns the sums of the profile's two sample values.
func pprofSched(t *testing.T, tracePath string) (count int64, delay time.Duration) {
	t.Helper()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			testtarget.SkipOrFail(t, "no go command for go tool trace: %v", err)
		}
	}
	outPath := filepath.Join(t.TempDir(), "out.pprof")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(goBin, "tool", "trace", "-pprof=sched", tracePath)
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	cmd.Stdout, cmd.Stderr = out, &stderr
	err = cmd.Run()
	out.Close()
	if err != nil {
		t.Fatalf("go tool trace -pprof=sched: %v\n%s", err, stderr.Bytes())
	}
	f, err := os.Open(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		t.Fatalf("parse go tool trace's profile: %v", err)
	}
	ci, di := -1, -1
	for i, st := range p.SampleType {
		switch {
		case st.Type == "contentions" && st.Unit == "count":
			ci = i
		case st.Type == "delay" && st.Unit == "nanoseconds":
			di = i
		}
	}
	if ci < 0 || di < 0 {
		t.Fatalf("profile has no contentions/count and delay/nanoseconds sample types: %v", p.SampleType)
	}
	for _, s := range p.Sample {
		count += s.Value[ci]
		delay += time.Duration(s.Value[di])
	}
	return count, delay
}

// TestStormAgainstGoToolTrace checks the package against `go tool trace
// -pprof=sched` on a real trace of testdata/storm, built with each toolchain
// whose trace format x/exp/trace reads.
func TestStormAgainstGoToolTrace(t *testing.T) {
	for _, tc := range []testtarget.Toolchain{testtarget.Go126, testtarget.Go127} {
		t.Run(string(tc), func(t *testing.T) {
			run := runStorm(t, tc)
			l, err := SchedLatencies(bytes.NewReader(run.trace))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("storm %v: trace %d bytes, ops %v", tc, len(run.trace), run.ops)
			t.Logf("samples %d, p50 %v, p90 %v, p99 %v, max %v, total %v; first runs %d (%v)",
				len(l.Samples), l.Quantile(0.5), l.Quantile(0.9), l.Quantile(0.99), l.Quantile(1),
				l.Total, l.FirstRuns, l.FirstRunTotal)

			count, delay := pprofSched(t, run.path)
			t.Logf("go tool trace -pprof=sched: count %d, delay %v; exectrace: count %d, delay %v",
				count, delay, l.Pprof.Count, l.Pprof.Total)
			// The definitions are the same, so the figures are equal to the
			// nanosecond, not only within 1%.
			if l.Pprof.Total != delay || l.Pprof.Count != count {
				t.Errorf("exectrace's pprof figures (count %d, delay %v) differ from go tool trace's (count %d, delay %v)",
					l.Pprof.Count, l.Pprof.Total, count, delay)
			}
			// A runnable goroutine leaves GoRunnable for GoRunning only, so
			// the two definitions differ by exactly the first runs.
			if l.Total != l.Pprof.Total+l.FirstRunTotal {
				t.Errorf("total %v != pprof total %v + first runs %v (diff %v): a runnable goroutine left GoRunnable for another state",
					l.Total, l.Pprof.Total, l.FirstRunTotal, l.Total-l.Pprof.Total-l.FirstRunTotal)
			}

			checkLatencies(t, l)
			// Plausibility against storm's own counts: each spawned goroutine
			// is created in the trace and runs once; each ping-pong round
			// trip wakes both goroutines of the pair.
			if spawn := run.ops["spawn"]; int64(l.FirstRuns) < spawn {
				t.Errorf("first runs %d < goroutines spawned %d", l.FirstRuns, spawn)
			}
			if want := run.ops["spawn"] + 2*run.ops["pingpong"]; int64(len(l.Samples)) < want {
				t.Errorf("samples %d < spawned + 2*round trips = %d", len(l.Samples), want)
			}
			if p50, p99 := l.Quantile(0.5), l.Quantile(0.99); p50 <= 0 || p99 < p50 || p99 > time.Second {
				t.Errorf("implausible p50 %v, p99 %v", p50, p99)
			}
		})
	}
}

// checkLatencies checks the invariants of a result.
func checkLatencies(t *testing.T, l *Latencies) {
	t.Helper()
	var sum time.Duration
	for i, d := range l.Samples {
		if d <= 0 {
			t.Fatalf("sample %d is %v", i, d)
		}
		if i > 0 && d < l.Samples[i-1] {
			t.Fatalf("samples not sorted at %d", i)
		}
		sum += d
	}
	if sum != l.Total {
		t.Errorf("sum of samples %v != Total %v", sum, l.Total)
	}
	if l.FirstRuns > len(l.Samples) || l.FirstRunTotal > l.Total {
		t.Errorf("first runs %d (%v) exceed samples %d (%v)", l.FirstRuns, l.FirstRunTotal, len(l.Samples), l.Total)
	}
	if len(l.Samples) == 0 {
		t.Errorf("no samples")
	}
}

// TestInProcessAgainstRuntimeHistogram traces a workload in the test process
// and checks the number of samples against the runtime's own scheduling
// latency histogram (/sched/latencies:seconds, sched.timeToRun), which
// records about one goroutine transition in gTrackingPeriod (8).
func TestInProcessAgainstRuntimeHistogram(t *testing.T) {
	const name = "/sched/latencies:seconds"
	read := func() *metrics.Float64Histogram {
		s := []metrics.Sample{{Name: name}}
		metrics.Read(s)
		if s[0].Value.Kind() != metrics.KindFloat64Histogram {
			t.Fatalf("%s not supported", name)
		}
		return s[0].Value.Float64Histogram()
	}
	total := func(h *metrics.Float64Histogram) (n uint64) {
		for _, c := range h.Counts {
			n += c
		}
		return n
	}

	var buf bytes.Buffer
	before := read()
	if err := rtrace.Start(&buf); err != nil {
		t.Skipf("runtime/trace busy: %v", err)
	}
	workload(200, 100*time.Millisecond)
	rtrace.Stop()
	after := read()
	runtimeCount := total(after) - total(before)

	l, err := SchedLatencies(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	checkLatencies(t, l)
	if got, err := PprofSchedTotal(bytes.NewReader(buf.Bytes())); err != nil || got != l.Pprof.Total {
		t.Errorf("PprofSchedTotal = %v, %v; want %v", got, err, l.Pprof.Total)
	}
	ratio := float64(runtimeCount) * 8 / float64(len(l.Samples))
	t.Logf("trace %d bytes: samples %d, p50 %v, p99 %v; runtime histogram %d records (x8 = %.2f of the samples)",
		buf.Len(), len(l.Samples), l.Quantile(0.5), l.Quantile(0.99), runtimeCount, ratio)
	if len(l.Samples) < 1000 {
		t.Fatalf("only %d samples from the workload", len(l.Samples))
	}
	if ratio < 0.5 || ratio > 2 {
		t.Errorf("runtime recorded %d latencies, 8x that is %.2f of the trace's %d samples; want 0.5..2",
			runtimeCount, ratio, len(l.Samples))
	}
}

// workload runs ping-pong pairs and goroutine batches for about d.
func workload(batch int, d time.Duration) {
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for p := 0; p < 2; p++ {
		a, b := make(chan int), make(chan int)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for v := range a {
				b <- v + 1
			}
			close(b)
		}()
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(deadline); {
				a <- n
				n = <-b
			}
			close(a)
		}()
	}
	for time.Now().Before(deadline) {
		var bw sync.WaitGroup
		bw.Add(batch)
		for j := 0; j < batch; j++ {
			go bw.Done()
		}
		bw.Wait()
	}
	wg.Wait()
}

// smallTrace returns a short trace of the in-process workload.
func smallTrace(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := rtrace.Start(&buf); err != nil {
		t.Skipf("runtime/trace busy: %v", err)
	}
	workload(16, 20*time.Millisecond)
	rtrace.Stop()
	return buf.Bytes()
}

func TestBadTraces(t *testing.T) {
	good := smallTrace(t)
	if _, err := SchedLatencies(bytes.NewReader(good)); err != nil {
		t.Fatalf("good trace: %v", err)
	}
	cases := map[string][]byte{
		"empty":       nil,
		"text":        []byte("this is not a trace\n"),
		"header only": good[:16],
		"cut 1":       good[:len(good)-1],
		"cut half":    good[:len(good)/2],
		"cut 100":     good[:100],
	}
	rng := rand.New(rand.NewSource(1))
	garbage := make([]byte, 4096)
	rng.Read(garbage)
	cases["random"] = garbage
	cases["header+random"] = append(append([]byte(nil), good[:16]...), garbage...)
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			l, err := SchedLatencies(bytes.NewReader(b))
			if err == nil {
				t.Fatalf("no error; got %d samples", len(l.Samples))
			}
			if !strings.HasPrefix(err.Error(), "exectrace: ") {
				t.Errorf("error without context: %v", err)
			}
			if _, err := PprofSchedTotal(bytes.NewReader(b)); err == nil {
				t.Errorf("PprofSchedTotal: no error")
			}
			t.Logf("%v", err)
		})
	}
}

// TestCorruptTracesDoNotPanic flips bytes of a real trace: each read must
// end with figures or an error, never a panic.
func TestCorruptTracesDoNotPanic(t *testing.T) {
	good := smallTrace(t)
	rng := rand.New(rand.NewSource(2))
	errs := 0
	for i := 0; i < 50; i++ {
		b := append([]byte(nil), good...)
		for j := 0; j < 1+i%4; j++ {
			b[16+rng.Intn(len(b)-16)] ^= byte(1 + rng.Intn(255))
		}
		if _, err := SchedLatencies(bytes.NewReader(b)); err != nil {
			errs++
		}
	}
	t.Logf("%d of 50 corrupted traces gave an error", errs)
}

func TestQuantile(t *testing.T) {
	var l Latencies
	if got := l.Quantile(0.5); got != 0 {
		t.Errorf("empty: Quantile(0.5) = %v", got)
	}
	for i := 1; i <= 100; i++ {
		l.Samples = append(l.Samples, time.Duration(i)*time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{
		{-1, 1 * time.Microsecond},
		{0, 1 * time.Microsecond},
		{0.01, 1 * time.Microsecond},
		{0.5, 50 * time.Microsecond},
		{0.505, 51 * time.Microsecond},
		{0.9, 90 * time.Microsecond},
		{0.99, 99 * time.Microsecond},
		{1, 100 * time.Microsecond},
		{2, 100 * time.Microsecond},
	} {
		if got := l.Quantile(c.q); got != c.want {
			t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
}
