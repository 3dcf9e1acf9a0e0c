package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/procmem"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// targetMetrics is one "metrics" line of testdata/latmetrics: the target's
// own runtime/metrics reading.
type targetMetrics struct {
	created, gc int64 // -1: the release has no such metric
	counts      []uint64
	bounds      []float64 // seconds
}

func (m *targetMetrics) total() uint64 {
	var n uint64
	for _, c := range m.counts {
		n += c
	}
	return n
}

// askMetrics makes latmetrics print its metrics (SIGUSR1) and parses them.
func askMetrics(t *testing.T, p *testtarget.Process) *targetMetrics {
	t.Helper()
	if err := syscall.Kill(p.PID(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	line := p.WaitLine(t, "metrics ", 30*time.Second)
	m := &targetMetrics{created: -1, gc: -1}
	for _, f := range strings.Fields(line)[1:] {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "created", "gc":
			n := int64(-1)
			if v != "none" {
				n, _ = strconv.ParseInt(v, 10, 64)
			}
			if k == "created" {
				m.created = n
			} else {
				m.gc = n
			}
		case "counts":
			for _, s := range strings.Split(v, ",") {
				c, err := strconv.ParseUint(s, 10, 64)
				if err != nil {
					t.Fatalf("metrics line: %v", err)
				}
				m.counts = append(m.counts, c)
			}
		case "buckets":
			for _, s := range strings.Split(v, ",") {
				b, err := strconv.ParseFloat(s, 64)
				if err != nil {
					t.Fatalf("metrics line: %v", err)
				}
				m.bounds = append(m.bounds, b)
			}
		}
	}
	if len(m.counts) == 0 || len(m.bounds) != len(m.counts)+1 {
		t.Fatalf("metrics line: %d counts, %d bounds", len(m.counts), len(m.bounds))
	}
	return m
}

// sub is a - b bucket by bucket (b read before a).
func (m *targetMetrics) sub(b *targetMetrics) *targetMetrics {
	d := &targetMetrics{counts: make([]uint64, len(m.counts)), bounds: m.bounds}
	for i := range m.counts {
		d.counts[i] = m.counts[i] - b.counts[i]
	}
	return d
}

// bucketOfQuantile is the index of the bucket holding the q-quantile of the
// target's histogram: its own reading, with no gmpwatch code involved.
func (m *targetMetrics) bucketOfQuantile(q float64) int {
	rank := q * float64(m.total())
	var cum float64
	for i, c := range m.counts {
		cum += float64(c)
		if c > 0 && cum >= rank {
			return i
		}
	}
	return len(m.counts) - 1
}

// bucketOfNS is the index of the bucket of m holding ns.
func (m *targetMetrics) bucketOfNS(ns int64) int {
	s := float64(ns) / 1e9
	for i := len(m.bounds) - 2; i >= 0; i-- {
		if s >= m.bounds[i] {
			return i
		}
	}
	return 0
}

// statJSON reads lines of stat --json.
type statJSON struct {
	IntervalNS   int64            `json:"interval_ns"`
	SinceStart   bool             `json:"since_start"`
	GOMAXPROCS   int32            `json:"gomaxprocs"`
	Threads      int              `json:"threads"`
	IdleProcs    int32            `json:"idle_procs"`
	PRunQueues   []uint32         `json:"p_runqueues"`
	Goroutines   map[string]int   `json:"goroutines"`
	Created      *uint64          `json:"goroutines_created"`
	GCCycles     *uint32          `json:"gc_cycles"`
	SchedLatency schedLatency     `json:"sched_latency"`
	Skipped      map[string]int64 `json:"skipped"`
}

// checkQuantiles compares stat's quantiles with the target's: the same or
// an adjacent bucket of the runtime's histogram (go1.20+: buckets a quarter
// of a power of two wide; go1.19: a sixteenth).
func checkQuantiles(t *testing.T, what string, got schedLatency, want *targetMetrics) {
	t.Helper()
	for _, q := range []struct {
		q  float64
		ns int64
	}{{0.50, got.P50}, {0.90, got.P90}, {0.99, got.P99}} {
		wb := want.bucketOfQuantile(q.q)
		gb := want.bucketOfNS(q.ns)
		if d := gb - wb; d < -1 || d > 1 {
			t.Errorf("%s: p%.0f = %dns is in bucket %d [%gs, %gs), the target's own is in bucket %d [%gs, %gs)",
				what, q.q*100, q.ns, gb, want.bounds[gb], want.bounds[gb+1], wb, want.bounds[wb], want.bounds[wb+1])
		}
	}
}

// TestStatSchedLatencyMatchesRuntimeMetrics reads sched.timeToRun with
// gmpwatch while the target reads its own /sched/latencies:seconds, both
// sides bracketing each other in time: the target's counts before a read
// are <= what gmpwatch reads <= the target's counts after it, bucket by
// bucket, with no tolerance. Quantiles must fall in the same or an adjacent
// bucket of the target's own. Every release, plain and stripped.
func TestStatSchedLatencyMatchesRuntimeMetrics(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range testtarget.Toolchains {
		for _, v := range []testtarget.Variant{testtarget.Plain, testtarget.Stripped} {
			t.Run(fmt.Sprintf("%s-%s", tc, v), func(t *testing.T) {
				bin := testtarget.Build(t, "latmetrics", tc, v)
				p := testtarget.Start(t, bin)
				p.WaitLine(t, "ready", 60*time.Second)

				// Raw buckets through rtstate, bracketed by the target.
				pl, err := plan.FromProcess(p.PID())
				if err != nil {
					t.Fatal(err)
				}
				mem, err := procmem.Open(p.PID())
				if err != nil {
					t.Fatal(err)
				}
				defer mem.Close()
				rt, err := rtstate.New(pl, mem)
				if err != nil {
					t.Fatal(err)
				}
				before := askMetrics(t, p)
				s, err := rt.Sched()
				if err != nil {
					t.Fatal(err)
				}
				after := askMetrics(t, p)
				h := s.TimeToRun
				if len(h.Counts) != len(before.counts) {
					t.Fatalf("%d buckets read, the target has %d", len(h.Counts), len(before.counts))
				}
				for i, b := range before.bounds {
					if g := h.Bounds[i]; !(math.IsInf(b, 0) && g == b) && math.Abs(g-b*1e9) > 1e-6*math.Abs(g) {
						t.Fatalf("bucket bound %d: %g ns, the target's is %g s", i, g, b)
					}
				}
				for i := range h.Counts {
					if h.Counts[i] < before.counts[i] || h.Counts[i] > after.counts[i] {
						t.Errorf("bucket %d [%gs, %gs): read %d, the target had %d before and %d after",
							i, before.bounds[i], before.bounds[i+1], h.Counts[i], before.counts[i], after.counts[i])
					}
				}
				if before.total() < 100 {
					t.Fatalf("target recorded only %d latencies", before.total())
				}
				if before.created >= 0 {
					if !s.HasCreated || int64(s.GoroutinesCreated) < before.created || int64(s.GoroutinesCreated) > after.created {
						t.Errorf("goroutines created: read %d (%v), the target had %d before and %d after", s.GoroutinesCreated, s.HasCreated, before.created, after.created)
					}
				} else if s.HasCreated {
					t.Errorf("goroutines created read on a release that does not record it")
				}
				if s.HasGC && (int64(s.GCCycles) < before.gc || int64(s.GCCycles) > after.gc) {
					t.Errorf("GC cycles: read %d, the target had %d before and %d after", s.GCCycles, before.gc, after.gc)
				}

				// The command: a since-start line, then the interval in
				// which the target ran a burst.
				ma := askMetrics(t, p)
				pr, pw := io.Pipe()
				done := make(chan int, 1)
				var errb strings.Builder
				go func() {
					done <- Main(context.Background(), []string{"stat", "-p", strconv.Itoa(p.PID()), "--json", "3s", "2"},
						&cmdEnv{stdout: pw, stderr: &errb, stdin: strings.NewReader("")})
					pw.Close()
				}()
				lines := bufio.NewScanner(pr)
				lines.Buffer(nil, 1<<20)
				next := func() statJSON {
					t.Helper()
					if !lines.Scan() {
						t.Fatalf("stat ended early: %s", errb.String())
					}
					var l statJSON
					if err := json.Unmarshal(lines.Bytes(), &l); err != nil {
						t.Fatalf("stat --json: %v: %s", err, lines.Text())
					}
					return l
				}
				l1 := next()
				mb := askMetrics(t, p)
				burstAt := time.Now()
				syscall.Kill(p.PID(), syscall.SIGUSR2)
				p.WaitLine(t, "burst", 30*time.Second)
				mc := askMetrics(t, p)
				if time.Since(burstAt) > 2500*time.Millisecond {
					t.Fatalf("the burst took %v, too close to stat's 3 s interval to bracket", time.Since(burstAt))
				}
				l2 := next()
				md := askMetrics(t, p)
				if c := <-done; c != 0 {
					t.Fatalf("stat: exit %d: %s", c, errb.String())
				}

				if !l1.SinceStart || l1.SchedLatency.Count < ma.total() || l1.SchedLatency.Count > mb.total() {
					t.Errorf("first line: since_start=%v count %d, the target had %d before and %d after", l1.SinceStart, l1.SchedLatency.Count, ma.total(), mb.total())
				}
				checkQuantiles(t, "since start", l1.SchedLatency, ma)
				lo, hi := mc.sub(mb).total(), md.sub(ma).total()
				if l2.SinceStart || l2.SchedLatency.Count < lo || l2.SchedLatency.Count > hi {
					t.Errorf("interval line: since_start=%v count %d, the target recorded between %d and %d in it", l2.SinceStart, l2.SchedLatency.Count, lo, hi)
				}
				checkQuantiles(t, "interval", l2.SchedLatency, mc.sub(ma))
				t.Logf("%s %s: since start n=%d p50=%dns p99=%dns; interval n=%d (target: %d..%d) p50=%dns p90=%dns p99=%dns",
					tc, v, l1.SchedLatency.Count, l1.SchedLatency.P50, l1.SchedLatency.P99,
					l2.SchedLatency.Count, lo, hi, l2.SchedLatency.P50, l2.SchedLatency.P90, l2.SchedLatency.P99)

				// The rest of the line holds together.
				for _, l := range []statJSON{l1, l2} {
					if l.GOMAXPROCS < 1 || int(l.GOMAXPROCS) != len(l.PRunQueues) || l.Threads < 1 || l.IdleProcs > l.GOMAXPROCS {
						t.Errorf("line: gomaxprocs=%d p_runqueues=%v threads=%d idle_procs=%d", l.GOMAXPROCS, l.PRunQueues, l.Threads, l.IdleProcs)
					}
					if l.Goroutines["total"] < 2 || l.Goroutines["waiting"] < 1 {
						t.Errorf("line: goroutines %v", l.Goroutines)
					}
					if (l.Created != nil) != (ma.created >= 0) {
						t.Errorf("goroutines_created %v on a release where the metric is %d", l.Created, ma.created)
					}
				}
				if l1.Created != nil && l2.Created != nil && *l2.Created < *l1.Created+200 {
					t.Errorf("goroutines_created went from %d to %d over a burst that created 208", *l1.Created, *l2.Created)
				}
			})
		}
	}
}

// TestStatDumpBadInput: no such process, a process that is not Go, bad
// arguments: one line on stderr and exit status 2.
func TestStatDumpBadInput(t *testing.T) {
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }()
	notGo := strconv.Itoa(sleep.Process.Pid)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"stat", "-p", "999999999"}, "no such process"},
		{[]string{"dump", "-p", "999999999"}, "no such process"},
		{[]string{"stat", "-p", notGo}, "not a Go"},
		{[]string{"dump", "-p", notGo, "--stop"}, "not a Go"},
		{[]string{"stat"}, "-p PID"},
		{[]string{"dump"}, "-p PID"},
		{[]string{"stat", "-p", "abc"}, "invalid value"},
		{[]string{"stat", "-p", "1", "soon"}, "bad INTERVAL"},
		{[]string{"stat", "-p", "1", "1s", "0"}, "bad COUNT"},
		{[]string{"stat", "-p", "1", "1", "2", "3"}, "too many"},
		{[]string{"dump", "-p", "1", "extra"}, "unexpected argument"},
	} {
		code, out, errs := rsRun(t, c.args...)
		if code != 2 || out != "" || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, c.want) {
			t.Errorf("gmpwatch %s: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q",
				strings.Join(c.args, " "), code, out, errs, c.want)
		}
	}
}
