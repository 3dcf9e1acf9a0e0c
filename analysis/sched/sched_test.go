package sched

import (
	"math/rand"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
)

func TestBucketBounds(t *testing.T) {
	// Buckets tile [0, MaxUint64] without gaps or overlaps, and bucketOf
	// agrees with BucketBounds at both edges.
	var next uint64
	for i := 0; i < numBuckets; i++ {
		lo, hi := BucketBounds(i)
		if lo != next {
			t.Fatalf("bucket %d starts at %d, want %d", i, lo, next)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d [%d,%d]: bucketOf gives %d, %d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		if i >= subCount && float64(hi-lo+1) > float64(lo)/subCount+0.5 {
			t.Fatalf("bucket %d [%d,%d] wider than 1/%d of its start", i, lo, hi, subCount)
		}
		next = hi + 1
	}
	if next != 0 {
		t.Fatalf("buckets end at %d, want to wrap at MaxUint64", next-1)
	}
}

// exactQuantile is the value of rank ceil(q*n) of sorted values.
func exactQuantile(sorted []uint64, q float64) uint64 {
	r := int(float64(len(sorted))*q + 0.9999999)
	if r < 1 {
		r = 1
	}
	return sorted[r-1]
}

func TestQuantiles(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	dists := map[string]func() uint64{
		"uniform":     func() uint64 { return uint64(rng.Intn(1_000_000)) },
		"exponential": func() uint64 { return uint64(rng.ExpFloat64() * 50_000) },
		"lognormal":   func() uint64 { return uint64(1000 * (1 + rng.NormFloat64()*rng.NormFloat64()*100)) },
		"constant":    func() uint64 { return 400 },
		"tiny":        func() uint64 { return uint64(rng.Intn(5)) },
	}
	for name, gen := range dists {
		for _, n := range []int{1, 2, 7, 100, 10000} {
			var h Histogram
			vals := make([]uint64, n)
			for i := range vals {
				vals[i] = gen()
				h.Record(vals[i])
			}
			slices.Sort(vals)
			if h.Count() != uint64(n) || h.Min() != vals[0] || h.Max() != vals[n-1] {
				t.Fatalf("%s/%d: count/min/max %d/%d/%d, want %d/%d/%d", name, n, h.Count(), h.Min(), h.Max(), n, vals[0], vals[n-1])
			}
			prev := uint64(0)
			for _, q := range []float64{0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1} {
				got, want := h.Quantile(q), exactQuantile(vals, q)
				// Never below the exact value, at most one bucket (12.5%) above.
				if got < want || float64(got) > float64(want)*1.125+1 {
					t.Errorf("%s/%d: q%.3f = %d, exact %d", name, n, q, got, want)
				}
				if got < prev {
					t.Errorf("%s/%d: q%.3f = %d below a lower quantile %d", name, n, q, got, prev)
				}
				prev = got
			}
			if h.Quantile(1) != h.Max() {
				t.Errorf("%s/%d: q1 = %d, max %d", name, n, h.Quantile(1), h.Max())
			}
		}
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 || len(empty.Buckets()) != 0 || len(empty.Pow2Buckets()) != 0 {
		t.Error("empty histogram reports values")
	}
}

func TestHistogramMerge(t *testing.T) {
	var a, b, all Histogram
	for i := uint64(1); i < 5000; i += 7 {
		if i%3 == 0 {
			a.Record(i * i)
		} else {
			b.Record(i * i)
		}
		all.Record(i * i)
	}
	a.Merge(&b)
	if a != all {
		t.Fatal("merged histogram differs from one fed everything")
	}
	var total uint64
	for _, bk := range all.Pow2Buckets() {
		total += bk.Count
	}
	if total != all.Count() {
		t.Fatalf("pow2 buckets hold %d values, want %d", total, all.Count())
	}
}

func ev(ts uint64, k event.Kind, goid uint64) *event.Event {
	return &event.Event{Ts: ts, Kind: k, Goid: goid, MID: 0, TID: 100, PID: 0, StackID: event.NoStack}
}

// TestBoundedState: a target holding a million goroutines fits the default
// bound, and what is over a smaller bound is counted, never lost silently.
func TestBoundedState(t *testing.T) {
	const n = 1_000_000
	if testing.Short() {
		t.Skip("a million goroutines")
	}
	m := New(Config{})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for g := uint64(1); g <= n; g++ {
		e := ev(g, event.KindGoCreate, g)
		e.PC = 0x401040
		m.Handle(e)
	}
	for g := uint64(1); g <= n; g++ {
		e := ev(n+2*g, event.KindGoStart, g)
		m.Handle(e)
		e = ev(n+2*g+1, event.KindGoPark, g)
		e.Reason = 19
		m.Handle(e)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	r := m.Total(0)
	if r.Goroutines.Created != n || r.Goroutines.Alive != n || r.Goroutines.Waiting != n || r.Goroutines.Untracked != 0 {
		t.Fatalf("goroutines %+v, want %d created, alive and waiting", r.Goroutines, n)
	}
	if r.SchedLatency.Count != n {
		t.Fatalf("latency samples %d, want %d", r.SchedLatency.Count, n)
	}
	if len(r.CreationSites) != 1 || r.CreationSites[0].Alive != n {
		t.Fatalf("sites %+v, want one with %d alive", r.CreationSites, n)
	}
	perG := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.1f bytes of heap per tracked goroutine", perG)
	if perG > 96 {
		t.Errorf("%.1f bytes per goroutine: the default bound of %d would take %.1f GiB", perG, DefaultMaxGoroutines, perG*DefaultMaxGoroutines/(1<<30))
	}
	runtime.KeepAlive(m)
}

func TestBoundOverflow(t *testing.T) {
	m := New(Config{MaxGoroutines: 1000})
	for g := uint64(1); g <= 1500; g++ {
		e := ev(g, event.KindGoCreate, g)
		e.PC = 0x401040
		m.Handle(e)
		m.Handle(ev(g, event.KindGoStart, g))
	}
	r := m.Total(0)
	g := r.Goroutines
	if g.Created != 1500 || g.Alive != 1000 || g.Untracked != 500 || g.UntrackedEvents != 500 {
		t.Fatalf("got %+v, want 1500 created, 1000 alive, 500 untracked with 500 events", g)
	}
	if m.Tracked() != 1000 {
		t.Fatalf("tracking %d goroutines, bound 1000", m.Tracked())
	}
	if r.SchedLatency.Count != 1000 {
		t.Fatalf("%d latency samples, want 1000 (the tracked ones)", r.SchedLatency.Count)
	}
}

// TestIntervals: interval counters restart at Reset, lifetime ones do not,
// and a busy span running across the boundary is split at it.
func TestIntervals(t *testing.T) {
	m := New(Config{})
	m.Handle(ev(1000, event.KindGoCreate, 7))
	m.Handle(ev(1100, event.KindGoStart, 7))
	s := m.Snapshot(1500)
	if s.Goroutines.Created != 1 || s.Threads[0].BusyNs != 400 || s.Procs[0].BusyNs != 400 || s.DurationNs != 500 {
		t.Fatalf("first interval: %+v", s)
	}
	m.Reset(1500)
	e := ev(2000, event.KindGoPark, 7)
	e.Reason = 3
	m.Handle(e)
	s = m.Snapshot(2500)
	if s.Goroutines.Created != 0 || s.Goroutines.Alive != 1 || s.Threads[0].BusyNs != 500 || s.Threads[0].GoroutinesRun != 0 || s.SchedLatency.Count != 0 || s.DurationNs != 1000 {
		t.Fatalf("second interval: %+v", s)
	}
	tot := m.Total(2500)
	if tot.Goroutines.Created != 1 || tot.Threads[0].BusyNs != 900 || tot.Threads[0].GoroutinesRun != 1 || tot.SchedLatency.Count != 1 || tot.SchedLatency.MaxNs != 100 || tot.DurationNs != 1500 {
		t.Fatalf("total: %+v", tot)
	}
	if len(tot.WaitReasons) != 1 || tot.WaitReasons[0].Reason != "waitReason(3)" || tot.WaitReasons[0].WaitingNow != 1 {
		t.Fatalf("wait reasons %+v, want one goroutine waiting on reason 3 (unnamed)", tot.WaitReasons)
	}
}

// selfSymbolizer symbolizes PCs of the running test binary with gobin, the
// way gmpwatch symbolizes a target's.
func selfSymbolizer(t *testing.T) gobin.Symbolize {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := gobin.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	// A PIE test binary runs at a bias: find it from a function's entry.
	pc, _, _, _ := runtime.Caller(0)
	fn := runtime.FuncForPC(pc)
	sym, err := b.Func(fn.Name())
	if err != nil {
		t.Fatal(err)
	}
	return gobin.NewSymbolizer(b, uint64(fn.Entry())-sym.Addr).Symbolize
}

var createdByRE = regexp.MustCompile(`(?m)^created by (\S+) in goroutine \d+\n\t(\S+):(\d+) \+0x([0-9a-f]+)$`)

// TestCreationSiteGosym takes a real g.gopc, the one the runtime prints in
// "created by ... +0xOFF" (entry+OFF is g.gopc), and checks that the model's
// site for it is the go statement's file:line.
func TestCreationSiteGosym(t *testing.T) {
	sym := selfSymbolizer(t)
	stack := make(chan string)
	block := make(chan struct{})
	_, file, line, _ := runtime.Caller(0)
	go func() { <-block }() // the go statement: line+1
	goLine := line + 1
	go func() {
		// Every goroutine's stack, to find the one blocked above.
		buf := make([]byte, 1<<20)
		stack <- string(buf[:runtime.Stack(buf, true)])
	}()
	all := <-stack
	close(block)

	var gopc uint64
	for _, mm := range createdByRE.FindAllStringSubmatch(all, -1) {
		if mm[2] != file || mm[3] != strconv.Itoa(goLine) {
			continue
		}
		off, _ := strconv.ParseUint(mm[4], 16, 64)
		fn := runtime.FuncForPC(funcPC(t, mm[1]))
		gopc = uint64(fn.Entry()) + off
	}
	if gopc == 0 {
		t.Fatalf("no goroutine created at %s:%d in\n%s", file, goLine, all)
	}

	m := New(Config{Symbolize: sym})
	e := ev(100, event.KindGoCreate, 42)
	e.PC = gopc
	m.Handle(e)
	sites := m.Total(0).CreationSites
	if len(sites) != 1 {
		t.Fatalf("sites %+v", sites)
	}
	s := sites[0]
	if s.File != file || s.Line != goLine || s.Function != "github.com/gmpwatch/gmpwatch/analysis/sched.TestCreationSiteGosym" {
		t.Fatalf("site %s %s:%d, want TestCreationSiteGosym %s:%d", s.Function, s.File, s.Line, file, goLine)
	}
}

// funcPC finds the entry of a function of this binary by name.
func funcPC(t *testing.T, name string) uintptr {
	pc, _, _, _ := runtime.Caller(1)
	if f := runtime.FuncForPC(pc); f != nil && f.Name() == name {
		return f.Entry()
	}
	t.Fatalf("function %q is not the test's", name)
	return 0
}

func TestFormatNs(t *testing.T) {
	for ns, want := range map[uint64]string{0: "0ns", 999: "999ns", 1000: "1.00µs", 12345: "12.3µs", 999_999: "1000µs", 1_200_000: "1.20ms", 2_500_000_000: "2.50s", 345e9: "345s"} {
		if got := FormatNs(ns); got != want {
			t.Errorf("FormatNs(%d) = %q, want %q", ns, got, want)
		}
	}
	if !strings.HasSuffix(FormatNs(1<<63), "s") {
		t.Error("huge durations")
	}
}

// BenchmarkHandle measures the model's cost per event on a create, start,
// park, unpark, start, exit cycle.
func BenchmarkHandle(b *testing.B) {
	m := New(Config{})
	evs := make([]event.Event, 6)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		g := uint64(i/6 + 1)
		ts := uint64(i) * 100
		k := [...]event.Kind{event.KindGoCreate, event.KindGoStart, event.KindGoPark, event.KindGoUnpark, event.KindGoStart, event.KindGoExit}[i%6]
		e := &evs[i%6]
		*e = event.Event{Ts: ts, Kind: k, Goid: g, PC: 0x401040, Reason: 19, MID: int64(g % 4), TID: uint32(100 + g%4), PID: int32(g % 4)}
		m.Handle(e)
	}
}

// TestWindows: under an overhead budget the hot probes come and go. A
// latency that began before a window opened spans unseen time and is not
// measured; one inside the window is; busy spans end when a window closes.
func TestWindows(t *testing.T) {
	m := New(Config{})
	h := func(ts uint64, k event.Kind, goid uint64, mid int64) {
		m.Handle(&event.Event{Ts: ts, Kind: k, Goid: goid, MID: mid, PID: 0, StackID: event.NoStack})
	}
	h(900, event.KindGoStart, 3, 0)   // g3 runs on M0 from 900 (mid-life)
	h(1000, event.KindGoCreate, 1, 1) // g1 runnable at 1000
	m.WindowClosed(1100)              // M0's span ends here: 200ns busy
	m.WindowOpened(5000)
	h(5100, event.KindGoStart, 1, 1)  // began before the window: not measured
	h(5200, event.KindGoUnpark, 3, 1) // g3 runnable in the window
	h(5300, event.KindGoStart, 3, 1)  // 100ns, measured
	r := m.Total(5300)
	if r.SchedLatency.Count != 1 || r.SchedLatency.MaxNs < 100 || r.SchedLatency.MaxNs > 112 {
		t.Errorf("latency %+v, want one sample of ~100ns", r.SchedLatency)
	}
	for _, th := range r.Threads {
		if th.MID == 0 && th.BusyNs != 200 {
			t.Errorf("M0 busy %dns, want 200 (its span ends when the window closes)", th.BusyNs)
		}
	}
}
