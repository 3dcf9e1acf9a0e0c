package ebpf

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	ciliumebpf "github.com/cilium/ebpf"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
	"github.com/gmpwatch/gmpwatch/internal/launch"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// TestAggregateLayout checks the aggregate maps against their Go mirrors:
// types, sizes, and that the kernel's histogram is the runtime's
// timeHistogram of go1.20+ (rtstate.HistGo120) word for word.
func TestAggregateLayout(t *testing.T) {
	spec, err := loadGmpwatch()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		name       string
		typ        ciliumebpf.MapType
		entries    uint32
		key, value uintptr
	}{
		{"sched_lat", ciliumebpf.PerCPUArray, 1, 4, unsafe.Sizeof(gmpwatchTimeHist{})},
		{"wait_stats", ciliumebpf.PerCPUArray, WaitReasonSlots, 4, unsafe.Sizeof(gmpwatchWaitAgg{})},
		{"runnable_since", ciliumebpf.LRUHash, AggregateStampEntries, 8, 8},
		{"parked_since", ciliumebpf.LRUHash, AggregateStampEntries, 8, unsafe.Sizeof(gmpwatchParkStamp{})},
		{"site_counts", ciliumebpf.PerCPUHash, AggregateSiteEntries, 8, unsafe.Sizeof(gmpwatchSiteAgg{})},
	} {
		ms := spec.Maps[m.name]
		if ms == nil {
			t.Errorf("no map %s", m.name)
			continue
		}
		if ms.Type != m.typ || ms.MaxEntries != m.entries || uintptr(ms.KeySize) != m.key || uintptr(ms.ValueSize) != m.value {
			t.Errorf("map %s: %v, %d entries, key %d, value %d bytes; want %v, %d, %d, %d",
				m.name, ms.Type, ms.MaxEntries, ms.KeySize, ms.ValueSize, m.typ, m.entries, m.key, m.value)
		}
	}
	if got := int(unsafe.Sizeof(gmpwatchTimeHist{})); got != rtstate.HistGo120.Size() {
		t.Fatalf("time_hist is %d bytes, the runtime's timeHistogram %d", got, rtstate.HistGo120.Size())
	}
	for _, knob := range []string{"stream_events", "aggregate"} {
		var v uint8
		if vs := spec.Variables[knob]; vs == nil || vs.Get(&v) != nil || v != 1 {
			t.Errorf("knob %s missing or not 1 by default", knob)
		}
	}
	// A count in every slot comes back where the runtime's layout has it.
	var h gmpwatchTimeHist
	for i := range h.Counts {
		h.Counts[i] = uint64(i + 1)
	}
	h.Underflow, h.Overflow = 1000, 2000
	dec, err := rtstate.DecodeHistogram(rtstate.HistGo120, h.encode())
	if err != nil {
		t.Fatal(err)
	}
	if len(dec.Counts) != len(h.Counts)+2 || dec.Counts[0] != 1000 || dec.Counts[len(dec.Counts)-1] != 2000 {
		t.Fatalf("decoded counts %v", dec.Counts)
	}
	for i := range h.Counts {
		if dec.Counts[i+1] != uint64(i+1) {
			t.Fatalf("bucket %d decoded as %d", i, dec.Counts[i+1])
		}
	}
	// Sub.
	a := &Aggregates{SchedLatency: dec, Waits: map[uint8]WaitAgg{3: {5, 4, 100}}, Sites: map[uint64]SiteAgg{0x10: {7, 6}}, UnstampedStarts: 9}
	old := &Aggregates{SchedLatency: dec, Waits: map[uint8]WaitAgg{3: {2, 2, 40}}, Sites: map[uint64]SiteAgg{0x10: {7, 6}}, UnstampedStarts: 4}
	d := a.Sub(old)
	if d.SchedLatency.Total() != 0 || d.Waits[3] != (WaitAgg{3, 2, 60}) || len(d.Sites) != 0 || d.UnstampedStarts != 5 {
		t.Fatalf("Sub: %+v", d)
	}
}

// TestAggregateLoadAll loads every program with each combination of the
// stream_events and aggregate knobs (and both ways of reading the M): the
// verifier of this kernel must accept them all, not only those a test
// attaches.
func TestAggregateLoadAll(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, opts := range []Options{{}, {NoStream: true}, {NoAggregate: true}, {NoStream: true, NoAggregate: true}} {
		for _, mspan := range []uint32{0, 240} {
			t.Run(fmt.Sprintf("nostream=%v-noaggregate=%v-mspan=%d", opts.NoStream, opts.NoAggregate, mspan), func(t *testing.T) {
				spec, err := loadGmpwatch()
				if err != nil {
					t.Fatal(err)
				}
				if err := opts.setAggregateVars(spec); err != nil {
					t.Fatal(err)
				}
				for name, v := range map[string]any{"m_span": mspan, "target_tgid": uint32(os.Getpid())} {
					if err := setVar(spec, name, v); err != nil {
						t.Fatal(err)
					}
				}
				DefaultLinkKind().prepareSpec(spec.Programs)
				coll, err := ciliumebpf.NewCollection(spec)
				if err != nil {
					t.Fatalf("load: %+v", err)
				}
				defer coll.Close()
				if len(coll.Programs) != len(Programs) {
					t.Fatalf("loaded %d programs, want %d", len(coll.Programs), len(Programs))
				}
			})
		}
	}
}

// siteAt returns the creation PCs of aggs whose go statement is at file:line.
func siteAt(b *gobin.Binary, p *plan.Plan, aggs *Aggregates, fileLine string) []uint64 {
	var pcs []uint64
	for pc := range aggs.Sites {
		if fr, ok := b.PCToFrame(pc - p.LoadBias - 1); ok && fmt.Sprintf("%s:%d", fr.File, fr.Line) == fileLine {
			pcs = append(pcs, pc)
		}
	}
	return pcs
}

// reasonIndex returns the index of the wait reason named name.
func reasonIndex(t *testing.T, p *plan.Plan, name string) uint8 {
	t.Helper()
	for i := 0; i < WaitReasonSlots; i++ {
		if p.WaitReasons.Name(uint8(i)) == name {
			return uint8(i)
		}
	}
	t.Fatalf("no wait reason %q in %v", name, p.WaitReasons)
	return 0
}

func logAggregates(t *testing.T, p *plan.Plan, a *Aggregates) {
	t.Helper()
	var ws []string
	for r, w := range a.Waits {
		ws = append(ws, fmt.Sprintf("%q: %d parks, %d ended, %v", p.WaitReasons.Name(r), w.Parks, w.Ended, time.Duration(w.TotalNs)))
	}
	slices.Sort(ws)
	t.Logf("aggregates: latency %d (p50 %.0f ns, p99 %.0f ns, underflow %d, overflow %d); %d sites; unstamped starts %d, unparks %d; sites full %d",
		a.SchedLatency.Total(), a.SchedLatency.Quantile(0.5), a.SchedLatency.Quantile(0.99),
		a.SchedLatency.Counts[0], a.SchedLatency.Counts[len(a.SchedLatency.Counts)-1],
		len(a.Sites), a.UnstampedStarts, a.UnstampedUnparks, a.SitesFull)
	t.Logf("waits: %s", strings.Join(ws, "; "))
}

// TestAggregateSpawn traces spawn in aggregate-only mode: no event reaches
// user space, yet the site of its go statement has exactly N goroutines
// created and N exited, the parkers' site K created and none exited, and
// the K parks on the nil channel are counted and still waiting. Aggregates
// read live and after Close agree. The last case is spawn built against the
// probe-points runtime patch, whose one attach point feeds the aggregates.
func TestAggregateSpawn(t *testing.T) {
	testtarget.RequireRoot(t)
	const n, parkers = 500, 100
	for _, tc := range []struct {
		tc   testtarget.Toolchain
		v    testtarget.Variant
		only bool // Programs: AggregateProgramsFor(p)
	}{
		{testtarget.Go126, testtarget.Plain, false},
		{testtarget.Go126, testtarget.PIE, true},
		{testtarget.Go127, testtarget.Plain, false},
		{testtarget.Go119, testtarget.Plain, true},
		{testtarget.Go126, "probe-points", true},
	} {
		t.Run(fmt.Sprintf("%s-%s-only=%v", tc.tc, tc.v, tc.only), func(t *testing.T) {
			var bin string
			if tc.v == "probe-points" {
				bin = buildProbePoints(t)
			} else {
				bin = testtarget.Build(t, "spawn", tc.tc, tc.v)
			}
			b := openBin(t, bin)
			env := []string{fmt.Sprintf("GOMAXPROCS=%d", gomaxprocs)}
			tg := startTarget(t, bin, env, "-n", strconv.Itoa(n), "-sweep", "300", "-parkers", strconv.Itoa(parkers), "-linger")
			tg.expect(t, "ready")
			p, err := plan.FromProcess(tg.cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			opts := Options{NoStream: true}
			if tc.only {
				opts.Programs = AggregateProgramsFor(p)
			}
			c := trace(t, p, opts)
			tg.send(t)
			site := strings.TrimPrefix(tg.expect(t, "site "), "site ")
			tg.expect(t, "done ")
			live, err := c.tr.Aggregates()
			if err != nil {
				t.Fatal(err)
			}
			tg.send(t)
			tg.wait(t)
			evs, st := c.stop(t)
			checkStats(t, st)
			final, err := c.tr.Aggregates()
			if err != nil {
				t.Fatalf("aggregates after close: %v", err)
			}
			logAggregates(t, p, final)
			if len(evs) != 0 || st.Events != 0 {
				t.Errorf("aggregate-only mode delivered %d events (stats %d)", len(evs), st.Events)
			}
			if tc.v == "probe-points" {
				if !slices.Equal(opts.Programs, []string{"probe_points"}) || st.Hits["probe_points"] == 0 {
					t.Errorf("programs %v, hits %v: want probe_points alone", opts.Programs, st.Hits)
				}
			} else if st.Hits["execute"] == 0 || st.Hits["goexit0"] < n {
				t.Errorf("hits %v", st.Hits)
			}
			if tc.only && (st.Hits["schedule"] != 0 || st.Hits["newproc"] != 0) {
				t.Errorf("programs beyond the aggregating ones attached: %v", st.Hits)
			}

			pcs := siteAt(b, p, final, site)
			if len(pcs) != 1 {
				t.Fatalf("%d creation PCs at %s, want 1; sites %v", len(pcs), site, final.Sites)
			}
			if got := final.Sites[pcs[0]]; got != (SiteAgg{Created: n, Exited: n}) {
				t.Errorf("site %s (pc %#x): %+v, want %d created and exited", site, pcs[0], got, n)
			}
			if got := live.Sites[pcs[0]]; got != final.Sites[pcs[0]] {
				t.Errorf("site read live %+v, after close %+v", got, final.Sites[pcs[0]])
			}
			// The parkers' go statement, also in main.main, never exits.
			parkSites := 0
			for pc, s := range final.Sites {
				if fn, ok := b.FuncAt(pc - p.LoadBias - 1); ok && fn.Name == "main.main" && pc != pcs[0] {
					parkSites++
					if s != (SiteAgg{Created: parkers}) {
						t.Errorf("parkers' site %#x: %+v, want %d created, 0 exited", pc, s, parkers)
					}
				}
			}
			if parkSites != 1 {
				t.Errorf("%d other sites in main.main, want the parkers' one", parkSites)
			}
			nilChan := final.Waits[reasonIndex(t, p, "chan receive (nil chan)")]
			if nilChan != (WaitAgg{Parks: parkers}) {
				t.Errorf("nil channel waits %+v, want %d parks, none ended", nilChan, parkers)
			}
			// Every goroutine created runs at least once from its
			// creation stamp.
			if tot := final.SchedLatency.Total(); tot < n+parkers {
				t.Errorf("%d latencies, want at least %d", tot, n+parkers)
			}
			if final.SitesFull != 0 {
				t.Errorf("site map full: %d", final.SitesFull)
			}
		})
	}
}

// TestAggregateBlockers runs blockers in aggregate-only mode: each of its
// blocks (one goroutine at a time, -d each) is one park of its reason and a
// wait of about d; main's time.Sleep(d) before each unblock adds six
// sleeps.
func TestAggregateBlockers(t *testing.T) {
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
			c := trace(t, p, Options{NoStream: true})
			tg.send(t)
			tg.expect(t, "done")
			tg.wait(t)
			evs, st := c.stop(t)
			checkStats(t, st)
			a, err := c.tr.Aggregates()
			if err != nil {
				t.Fatal(err)
			}
			logAggregates(t, p, a)
			if len(evs) != 0 {
				t.Errorf("%d events in aggregate-only mode", len(evs))
			}
			mutex := "sync.Mutex.Lock"
			if tc == testtarget.Go119 {
				mutex = "semacquire"
			}
			// Blocks of exactly one park each (sleep: six of main, one
			// of the blocked goroutine); chan receive has main's waits
			// for each block's end besides.
			for _, w := range []struct {
				reason string
				n      uint64
				exact  bool
			}{
				{"chan receive", 1, false},
				{"chan send", 1, true},
				{"select", 1, true},
				{"sleep", 7, true},
				{mutex, 1, true},
				{"IO wait", 1, true},
			} {
				got := a.Waits[reasonIndex(t, p, w.reason)]
				if w.exact && (got.Parks != w.n || got.Ended != w.n) || !w.exact && (got.Parks < w.n || got.Ended < w.n) {
					t.Errorf("%q: %d parks, %d ended; want %s%d each", w.reason, got.Parks, got.Ended, map[bool]string{false: ">= "}[w.exact], w.n)
				}
				// A blocked goroutine parks a little after main
				// starts its d (it has to be scheduled first):
				// each wait is about d, at least 8/10 of it.
				lo := time.Duration(w.n) * d * 8 / 10
				hi := time.Duration(got.Ended) * (d + 250*time.Millisecond)
				if total := time.Duration(got.TotalNs); total < lo || total > hi {
					t.Errorf("%q: %d waits total %v, want %v to %v", w.reason, got.Ended, total, lo, hi)
				}
			}
		})
	}
}

// TestAggregateMatchesModel traces schedload from its first instruction
// with the stream and the aggregates both on, feeds the stream to the
// scheduler model (analysis/sched) and compares: the same latencies (count,
// bucket for bucket, p50 and p99), the same waits by reason and the same
// creation sites. Both use the same events' times, so they agree exactly
// unless events were lost. The runtime's own /sched/latencies (schedload
// -metrics, sampled by the runtime: about one scheduling in eight) must have
// the kernel histogram's bucket boundaries.
func TestAggregateMatchesModel(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range []testtarget.Toolchain{testtarget.Go126, testtarget.Go119} {
		t.Run(string(tc), func(t *testing.T) {
			bin := testtarget.Build(t, "schedload", tc, testtarget.Plain)
			var out strings.Builder
			cmd, err := launch.Start(bin, []string{"-metrics", "-rounds", "3000", "-iters", "300", "-hold", "20000"}, nil, &out, os.Stderr)
			if err != nil {
				t.Fatal(err)
			}
			defer cmd.Kill()
			p, err := plan.FromProcess(cmd.PID())
			if err != nil {
				t.Fatal(err)
			}
			c := trace(t, p, Options{NoStacks: true})
			if err := cmd.Release(); err != nil {
				t.Fatal(err)
			}
			if _, err := cmd.Wait(); err != nil {
				t.Fatalf("target: %v", err)
			}
			evs, st := c.stop(t)
			checkStats(t, st)
			a, err := c.tr.Aggregates()
			if err != nil {
				t.Fatal(err)
			}
			logAggregates(t, p, a)

			b := openBin(t, bin)
			m := sched.New(sched.Config{WaitReasons: p.WaitReasons, Symbolize: gobin.NewSymbolizer(b, p.LoadBias).Symbolize})
			for i := range evs {
				m.Handle(&evs[i])
			}
			m.SetLost(st.Lost)
			r := m.Total(0)
			k := a.SchedLatency
			lat := r.SchedLatency
			t.Logf("%d events; model: %d latencies, p50 %d ns, p99 %d ns; kernel: %d, p50 %.0f ns, p99 %.0f ns",
				len(evs), lat.Count, lat.P50Ns, lat.P99Ns, k.Total(), k.Quantile(0.5), k.Quantile(0.99))

			if k.Total() != lat.Count {
				t.Errorf("kernel histogram holds %d latencies, the model %d", k.Total(), lat.Count)
			}
			// The model's finer buckets nest in the runtime's: project.
			proj := make([]uint64, len(k.Counts))
			for _, bk := range lat.Histogram {
				i := k.BucketOf(float64(bk.LoNs))
				if j := k.BucketOf(float64(bk.HiNs)); j != i {
					t.Fatalf("model bucket [%d, %d] spans runtime buckets %d and %d", bk.LoNs, bk.HiNs, i, j)
				}
				proj[i] += bk.Count
			}
			diff := 0
			for i := range proj {
				if proj[i] != k.Counts[i] {
					diff++
					if diff <= 10 {
						t.Errorf("bucket [%.0f, %.0f) ns: kernel %d, model %d", k.Bounds[i], k.Bounds[i+1], k.Counts[i], proj[i])
					}
				}
			}
			nonEmpty := 0
			for _, c := range k.Counts {
				if c > 0 {
					nonEmpty++
				}
			}
			t.Logf("%d non-empty kernel buckets, %d differ from the model's projected", nonEmpty, diff)
			for _, q := range []struct {
				q     float64
				model uint64
			}{{0.5, lat.P50Ns}, {0.99, lat.P99Ns}} {
				kb, mb := k.BucketOf(k.Quantile(q.q)), k.BucketOf(float64(q.model))
				if kb-mb > 1 || mb-kb > 1 {
					t.Errorf("p%.0f: kernel %.0f ns (bucket %d), model %d ns (bucket %d)", 100*q.q, k.Quantile(q.q), kb, q.model, mb)
				}
			}

			// Waits by reason: the model's ended waits are the kernel's.
			kw := map[string]WaitAgg{}
			for r, w := range a.Waits {
				kw[p.WaitReasons.Name(r)] = w
			}
			for _, w := range r.WaitReasons {
				if got := kw[w.Reason]; got.Ended != w.Count || got.TotalNs != w.TotalNs {
					t.Errorf("waits %q: kernel %d ended, %d ns; model %d, %d ns", w.Reason, got.Ended, got.TotalNs, w.Count, w.TotalNs)
				}
				delete(kw, w.Reason)
			}
			for reason, w := range kw {
				if w.Ended != 0 {
					t.Errorf("waits %q: kernel %+v, the model none", reason, w)
				}
			}

			// Creation sites.
			ms := map[uint64]SiteAgg{}
			for _, s := range r.CreationSites {
				pc, err := strconv.ParseUint(strings.TrimPrefix(s.PC, "0x"), 16, 64)
				if err != nil {
					t.Fatal(err)
				}
				ms[pc] = SiteAgg{s.Created, s.Exited}
			}
			if fmt.Sprint(ms) != fmt.Sprint(a.Sites) {
				t.Errorf("sites: kernel %v, model %v", a.Sites, ms)
			}

			// The runtime's own histogram has the same buckets (go1.20+:
			// go1.19's timeHistogram has another layout).
			if tc == testtarget.Go119 {
				return
			}
			rt := rtstate.Histogram{Bounds: k.Bounds, Counts: make([]uint64, len(k.Counts))}
			matched := 0
			sc := bufio.NewScanner(strings.NewReader(out.String()))
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) != 4 || f[0] != "latency-bucket" {
					continue
				}
				lo, err1 := strconv.ParseFloat(f[1], 64)
				hi, err2 := strconv.ParseFloat(f[2], 64)
				n, err3 := strconv.ParseUint(f[3], 10, 64)
				if err1 != nil || err2 != nil || err3 != nil {
					t.Fatalf("runtime bucket %q", sc.Text())
				}
				i := k.BucketOf(lo * 1e9)
				if math.IsInf(lo, -1) {
					i = 0
				}
				if k.Bounds[i]/1e9 != lo || k.Bounds[i+1]/1e9 != hi {
					t.Errorf("runtime bucket [%g, %g) s is not kernel bucket %d [%g, %g) ns", lo, hi, i, k.Bounds[i], k.Bounds[i+1])
				}
				rt.Counts[i] += n
				matched++
			}
			if matched == 0 {
				t.Errorf("no runtime latency buckets in the output %q", out.String())
			}
			if matched > 0 {
				t.Logf("runtime /sched/latencies (sampled): %d latencies in %d buckets, p50 %.0f ns, p99 %.0f ns",
					rt.Total(), matched, rt.Quantile(0.5), rt.Quantile(0.99))
			}
		})
	}
}

// BenchmarkProbeCostAggregate measures the target CPU a probe hit costs in
// each mode, against the same workload untraced, interleaved: "stream" is
// the default (events with stacks, and the aggregates), "stream-nostacks"
// without stacks, "stream-noagg" without stacks nor aggregates (so the two
// differ by the aggregates' map updates), "aggregate-only" NoStream with the
// default programs, "aggregate-min" NoStream with AggregateProgramsFor.
// cpu-ns/hit-MODE is the target's extra CPU time per hit, bpf-ns/hit-MODE
// the programs' own run time per hit (BPF_STATS_RUN_TIME).
func BenchmarkProbeCostAggregate(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	if c, err := ciliumebpf.EnableStats(0); err == nil {
		defer c.Close()
	}
	modes := []struct {
		name string
		opts Options
		min  bool
	}{
		{"stream", Options{}, false},
		{"stream-nostacks", Options{NoStacks: true}, false},
		{"stream-noagg", Options{NoStacks: true, NoAggregate: true}, false},
		{"aggregate-only", Options{NoStream: true}, false},
		{"aggregate-min", Options{NoStream: true}, true},
	}
	for _, w := range []struct {
		name string
		env  []string
		args []string
	}{
		{"gosched", []string{"GOMAXPROCS=1"}, []string{"-wait", "-loop", "200000"}},
		{"spawn", nil, []string{"-n", "100000"}},
	} {
		b.Run(w.name, func(b *testing.B) {
			bin, err := testtarget.BuildErr(w.name, testtarget.Go126, testtarget.Plain)
			if err != nil {
				b.Skip(err)
			}
			var base time.Duration
			cpu := make([]time.Duration, len(modes))
			bpf := make([]time.Duration, len(modes))
			hits := make([]uint64, len(modes))
			lost := uint64(0)
			for i := 0; i < b.N; i++ {
				c0, _, _ := runTraced(b, bin, w.env, nil, w.args...)
				base += c0
				for j, md := range modes {
					opts := md.opts
					if md.min {
						opts.Programs = AggregatePrograms
					}
					c1, st, per := runTraced(b, bin, w.env, &opts, w.args...)
					cpu[j] += c1
					for _, h := range st.Hits {
						hits[j] += h
					}
					for _, ps := range per {
						bpf[j] += ps.Runtime
					}
					lost += st.Lost
				}
			}
			for j, md := range modes {
				b.ReportMetric(float64(cpu[j]-base)/float64(hits[j]), "cpu-ns/hit-"+md.name)
				b.ReportMetric(float64(bpf[j])/float64(hits[j]), "bpf-ns/hit-"+md.name)
				b.ReportMetric(float64(hits[j])/float64(b.N), "hits/op-"+md.name)
			}
			b.ReportMetric(float64(base)/float64(b.N)/1e6, "base-cpu-ms/op")
			b.ReportMetric(float64(lost), "lost")
		})
	}
}

// TestNoStreamPrograms: the programs named in NoStreamPrograms write no
// event while the others stream; what they see is in the aggregates, exact.
func TestNoStreamPrograms(t *testing.T) {
	testtarget.RequireRoot(t)
	const n = 300
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	b := openBin(t, bin)
	tg := startTarget(t, bin, nil, "-n", strconv.Itoa(n))
	tg.expect(t, "ready")
	p, err := plan.FromProcess(tg.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	c := trace(t, p, Options{NoStacks: true, NoStreamPrograms: KernelOnlyPrograms})
	tg.send(t)
	site := strings.TrimPrefix(tg.expect(t, "site "), "site ")
	tg.expect(t, "done ")
	tg.wait(t)
	evs, st := c.stop(t)
	checkStats(t, st)
	a, err := c.tr.Aggregates()
	if err != nil {
		t.Fatal(err)
	}
	if st.Hits["newproc_runqput"] < n || st.Hits["ready"] == 0 {
		t.Fatalf("hits %v: the silenced programs did not run", st.Hits)
	}
	kinds := map[event.Kind]int{}
	for _, ev := range evs {
		kinds[ev.Kind]++
	}
	if kinds[event.KindGoCreate] != 0 || kinds[event.KindGoUnpark] != 0 {
		t.Errorf("%d GoCreate and %d GoUnpark streamed by silenced programs", kinds[event.KindGoCreate], kinds[event.KindGoUnpark])
	}
	if kinds[event.KindGoStart] < n || kinds[event.KindGoExit] < n {
		t.Errorf("%d GoStart, %d GoExit: the other programs must stream", kinds[event.KindGoStart], kinds[event.KindGoExit])
	}
	pcs := siteAt(b, p, a, site)
	if len(pcs) != 1 || a.Sites[pcs[0]] != (SiteAgg{Created: n, Exited: n}) {
		t.Errorf("site %s: pcs %v, sites %v; want %d created and exited", site, pcs, a.Sites, n)
	}
	if _, err := Attach(p, Options{NoStreamPrograms: []string{"nosuch"}}); !errors.Is(err, ErrUnknownProgram) {
		t.Errorf("unknown program: %v, want ErrUnknownProgram", err)
	}
}
