package rtstate

import (
	"cmp"
	"context"
	"encoding/binary"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// TestBoundsMatchRuntimeMetrics compares the go1.20+ bucket boundaries with
// what this test binary's own runtime (go1.26) gives for
// /sched/latencies:seconds. (The go1.19 ones are compared with a go1.19
// target's metrics in cmd/gmpwatch's stat test.)
func TestBoundsMatchRuntimeMetrics(t *testing.T) {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	h := s[0].Value.Float64Histogram()
	b := Bounds(HistGo120)
	if len(b) != len(h.Buckets) {
		t.Fatalf("%d bounds, runtime/metrics has %d", len(b), len(h.Buckets))
	}
	for i, want := range h.Buckets {
		if got := b[i]; !(math.IsInf(want, 0) && got == want) && math.Abs(got-want*1e9) > 1e-6*math.Abs(got) {
			t.Errorf("bound %d: %g ns, runtime/metrics says %g s", i, got, want)
		}
	}
}

// TestDecodeSubQuantile exercises the decoding of both layouts with counts
// placed by the runtime's own bucketing rule (runtime/histogram.go).
func TestDecodeSubQuantile(t *testing.T) {
	raw := make([]byte, HistGo120.Size())
	put := func(i int, v uint64) { binary.LittleEndian.PutUint64(raw[8*i:], v) }
	// 1000 ns: Len64 = 10, bucket 2, sub-bucket (1000>>7)%4 = 3.
	put(2*4+3, 10)
	put(160, 1) // underflow
	put(161, 2) // overflow
	h, err := DecodeHistogram(HistGo120, raw)
	if err != nil {
		t.Fatal(err)
	}
	i := 1 + 2*4 + 3
	if h.Counts[i] != 10 || h.Counts[0] != 1 || h.Counts[len(h.Counts)-1] != 2 || h.Total() != 13 {
		t.Fatalf("decoded %v", h.Counts)
	}
	if lo, hi := h.Bounds[i], h.Bounds[i+1]; lo > 1000 || hi <= 1000 {
		t.Errorf("1000 ns decoded into [%g, %g)", lo, hi)
	}
	if q := h.Quantile(0.5); q < h.Bounds[i] || q >= h.Bounds[i+1] {
		t.Errorf("p50 = %g, want in [%g, %g)", q, h.Bounds[i], h.Bounds[i+1])
	}
	if q := h.Quantile(1); q != float64(uint64(1)<<47) {
		t.Errorf("p100 = %g, want the overflow bucket's lower bound 2^47", q)
	}
	d, ok := h.Sub(h)
	if !ok || d.Total() != 0 || d.Quantile(0.99) != 0 {
		t.Errorf("h - h = %v (%v)", d.Counts, ok)
	}
	if _, err := DecodeHistogram(HistGo120, raw[:100]); err == nil {
		t.Error("short input decoded")
	}

	old := make([]byte, HistGo118.Size())
	// go1.19: 1000 ns: super-bucket Len64-4 = 6, sub-bucket (1000>>5)%16 = 15.
	binary.LittleEndian.PutUint64(old[8*(6*16+15):], 4)
	binary.LittleEndian.PutUint64(old[8*720:], 3) // underflow
	h, err = DecodeHistogram(HistGo118, old)
	if err != nil {
		t.Fatal(err)
	}
	i = 1 + 6*16 + 15
	if h.Counts[i] != 4 || h.Counts[0] != 3 || len(h.Counts) != 721 || len(h.Bounds) != 722 {
		t.Fatalf("go1.19 decoded %d counts", len(h.Counts))
	}
	if lo, hi := h.Bounds[i], h.Bounds[i+1]; lo > 1000 || hi <= 1000 {
		t.Errorf("go1.19: 1000 ns decoded into [%g, %g)", lo, hi)
	}
	if HistFormatFor("go1.19.8") != HistGo118 || HistFormatFor("go1.20") != HistGo120 || HistFormatFor("go1.27.3") != HistGo120 || HistFormatFor("devel") != HistGo120 {
		t.Error("HistFormatFor")
	}
}

// TestGoroutinesOfSelf reads this test process with its own plan and checks
// a goroutine it holds.
func TestGoroutinesOfSelf(t *testing.T) {
	testtarget.RequireRoot(t)
	ch := make(chan int)
	done := make(chan struct{})
	go func() { <-ch; close(done) }()
	defer func() { close(ch); <-done }()
	time.Sleep(10 * time.Millisecond)

	p, err := plan.FromProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sc, err := r.Goroutines(context.Background(), ScanOptions{ChunkBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	n := runtime.NumGoroutine()
	// NumGoroutine leaves out system goroutines; the scan counts them.
	if len(sc.Goroutines) < n || sc.Skipped.Total() != 0 {
		t.Errorf("%d goroutines read (skipped %+v), NumGoroutine says %d", len(sc.Goroutines), sc.Skipped, n)
	}
	receiving := 0
	for _, g := range sc.Goroutines {
		if g.Status == event.StatusWaiting && p.WaitReasons.Name(g.WaitReason) == "chan receive" {
			receiving++
		}
	}
	if receiving < 1 {
		t.Errorf("no goroutine waiting in chan receive")
	}
	s, err := r.Sched()
	if err != nil {
		t.Fatal(err)
	}
	if int(s.GOMAXPROCS) != runtime.GOMAXPROCS(0) || len(s.Procs) != runtime.GOMAXPROCS(0) || s.Threads < 1 || !s.HasCreated {
		t.Errorf("sched: %+v", s)
	}
}

// BenchmarkGoroutinesMillion reads a target holding 1,000,000 goroutines
// (opt-in: GMPWATCH_SCALE=1; GMPWATCH_SCALE_N changes the number).
func BenchmarkGoroutinesMillion(b *testing.B) {
	if os.Getenv("GMPWATCH_SCALE") != "1" {
		b.Skip("set GMPWATCH_SCALE=1")
	}
	testtarget.RequireRoot(b)
	n := 1000000
	if v, err := strconv.Atoi(os.Getenv("GMPWATCH_SCALE_N")); err == nil {
		n = v
	}
	bin := testtarget.Build(b, "million", testtarget.Go126, testtarget.Plain)
	p := testtarget.Start(b, bin, "-n", strconv.Itoa(n))
	p.WaitLine(b, "ready", 300*time.Second)
	pl, err := plan.FromProcess(p.PID())
	if err != nil {
		b.Fatal(err)
	}
	r, err := Open(pl)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sc, err := r.Goroutines(context.Background(), ScanOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if len(sc.Goroutines) < n {
			b.Fatalf("%d goroutines", len(sc.Goroutines))
		}
		b.ReportMetric(float64(sc.Reads), "reads/op")
	}
}

// TestSortByGoid checks the packed in-place sort against the plain one.
func TestSortByGoid(t *testing.T) {
	gs := make([]G, 10000)
	for i := range gs {
		// Batches of 16 out of order, as per-P goid caches make them.
		gs[i] = G{Goid: uint64((i/16*7919)%625*16 + i%16 + 1), StartPC: uint64(i)}
	}
	want := slices.Clone(gs)
	slices.SortStableFunc(want, func(a, b G) int { return cmp.Compare(a.Goid, b.Goid) })
	sortByGoid(gs, 1<<20)
	for i := range gs {
		if gs[i].Goid != want[i].Goid {
			t.Fatalf("position %d: goid %d, want %d", i, gs[i].Goid, want[i].Goid)
		}
	}
	// Each G kept its own fields.
	seen := map[uint64]bool{}
	for _, g := range gs {
		if seen[g.StartPC] {
			t.Fatalf("G %d duplicated", g.StartPC)
		}
		seen[g.StartPC] = true
	}
}
