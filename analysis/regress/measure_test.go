package regress

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// targetView is what schedload -metrics printed: the runtime's own reading
// of its histogram and counters, just before it exited.
type targetView struct {
	count              uint64
	buckets            [][3]float64 // lower, upper (seconds), count
	goroutines, thread int64        // -1 when the release lacks the metric
}

func parseTargetView(t *testing.T, path string) targetView {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v := targetView{goroutines: -1, thread: -1}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) == 4 && fields[0] == "latency-bucket":
			var b [3]float64
			for i := range b {
				b[i], _ = strconv.ParseFloat(fields[i+1], 64)
			}
			v.buckets = append(v.buckets, b)
		case len(fields) == 2 && fields[0] == "latency-count":
			v.count, _ = strconv.ParseUint(fields[1], 10, 64)
		case len(fields) == 2 && fields[0] == "goroutines-created":
			v.goroutines, _ = strconv.ParseInt(fields[1], 10, 64)
		case len(fields) == 2 && fields[0] == "threads":
			v.thread, _ = strconv.ParseInt(fields[1], 10, 64)
		}
	}
	if v.count == 0 {
		t.Fatalf("target printed no latency histogram in %s", path)
	}
	return v
}

// quantileBucket returns the bounds (ns) of the target's bucket that holds
// the q-quantile.
func (v targetView) quantileBucket(q float64) (lo, hi float64) {
	rank := q * float64(v.count)
	var cum float64
	for _, b := range v.buckets {
		cum += b[2]
		if cum >= rank {
			return b[0] * 1e9, b[1] * 1e9
		}
	}
	last := v.buckets[len(v.buckets)-1]
	return last[0] * 1e9, last[1] * 1e9
}

// measure runs bin under a HistogramMeasurer, its output in a file.
func measure(t *testing.T, bin string, args ...string) (Outcome, error, string) {
	t.Helper()
	outPath := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	m := &HistogramMeasurer{}
	if err := m.Start(cmd); err != nil {
		t.Fatalf("start: %v", err)
	}
	o, err := m.Finish()
	return o, err, outPath
}

// The histogram read from the child's memory as it exits is the one the
// runtime itself reports (/sched/latencies:seconds) at its end: the same
// count give or take the few transitions of exiting, p99 in the same
// bucket, the same goroutines created (go1.26+) and threads.
func TestHistogramMeasurerMatchesRuntime(t *testing.T) {
	for _, c := range []testtarget.Case{
		{Toolchain: testtarget.Go126, Variant: testtarget.Plain},
		{Toolchain: testtarget.Go126, Variant: testtarget.PIE},
		{Toolchain: testtarget.Go126, Variant: testtarget.Stripped},
		{Toolchain: testtarget.Go127, Variant: testtarget.Plain},
		{Toolchain: testtarget.Go119, Variant: testtarget.Plain},
	} {
		tc := c.Toolchain
		t.Run(c.String(), func(t *testing.T) {
			bin := testtarget.Build(t, "schedload", tc, c.Variant)
			// Twice: the second run of the same executable takes its plan
			// from the cache, with its own load bias (PIE moves).
			for i := 0; i < 2; i++ {
				checkAgainstRuntime(t, tc, bin)
			}
		})
	}
}

func checkAgainstRuntime(t *testing.T, tc testtarget.Toolchain, bin string) {
	t.Helper()
	o, err, outPath := measure(t, bin, "-rounds", "3000", "-iters", "200", "-metrics")
	if err != nil {
		t.Fatalf("measure: %v", err)
	}
	if o.ExitStatus != 0 || o.Signal != "" {
		t.Fatalf("exit %d %s", o.ExitStatus, o.Signal)
	}
	if !strings.HasPrefix(o.GoVersion, string(tc)) {
		t.Errorf("go version %q, want %s", o.GoVersion, tc)
	}
	v := parseTargetView(t, outPath)
	l := o.Metrics.SchedLatency
	t.Logf("gmpwatch read %d latencies (target saw %d), p50 %dns p99 %dns max %dns", l.Count, v.count, l.P50NS, l.P99NS, l.MaxNS)
	if l.Count < v.count || l.Count > v.count+16 {
		t.Errorf("count %d, the target's own reading just before exit %d", l.Count, v.count)
	}
	lo, hi := v.quantileBucket(0.99)
	if float64(l.P99NS) < lo*0.8 || float64(l.P99NS) > hi*1.25 {
		t.Errorf("p99 %d ns outside the target's p99 bucket [%g, %g) ns", l.P99NS, lo, hi)
	}
	if v.goroutines >= 0 {
		if o.Metrics.GoroutinesCreated == nil || *o.Metrics.GoroutinesCreated != v.goroutines {
			t.Errorf("goroutines created %v, the target counted %d", o.Metrics.GoroutinesCreated, v.goroutines)
		}
		// main's 2*pairs + spinners, and the runtime's own.
		if v.goroutines < 2*2+4 {
			t.Errorf("target counted %d goroutines created, fewer than its own 8", v.goroutines)
		}
	}
	if o.Metrics.ThreadsCreated == nil || *o.Metrics.ThreadsCreated < 2 {
		t.Errorf("threads %v, want >= GOMAXPROCS 2", o.Metrics.ThreadsCreated)
	} else if v.thread >= 0 && (*o.Metrics.ThreadsCreated < v.thread || *o.Metrics.ThreadsCreated > v.thread+1) {
		t.Errorf("threads %d, the target counted %d", *o.Metrics.ThreadsCreated, v.thread)
	}
}

func TestHistogramMeasurerEndings(t *testing.T) {
	bin := testtarget.Build(t, "schedload", testtarget.Go126, testtarget.Plain)

	// A failing command is measured all the same, with its status.
	o, err, _ := measure(t, bin, "-rounds", "500", "-iters", "50", "-fail", "3")
	if err != nil || o.ExitStatus != 3 || o.Metrics.SchedLatency.Count == 0 {
		t.Errorf("-fail 3: err %v, exit %d, %d latencies", err, o.ExitStatus, o.Metrics.SchedLatency.Count)
	}

	// Killed by a signal: SIGTERM passes through the tracer to the program,
	// which dies of it; its memory is still read at the exit stop.
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		cmd := exec.Command(bin, "-rounds", "100000000")
		m := &HistogramMeasurer{}
		if err := m.Start(cmd); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		o, err := m.Finish()
		want := map[syscall.Signal]string{syscall.SIGTERM: "SIGTERM", syscall.SIGKILL: "SIGKILL"}[sig]
		if o.Signal != want || o.ExitStatus != -1 {
			t.Errorf("%v: outcome %+v, want signal %s", sig, o, want)
		}
		if sig == syscall.SIGTERM && (err != nil || o.Metrics.SchedLatency.Count == 0) {
			t.Errorf("SIGTERM: err %v, %d latencies; want the histogram read at the exit stop", err, o.Metrics.SchedLatency.Count)
		}
		t.Logf("%v: err %v, %d latencies", sig, err, o.Metrics.SchedLatency.Count)
	}

	// Not a Go program: the run is not measured, and says why.
	o, err, _ = measure(t, "/bin/true")
	if err == nil || !strings.Contains(err.Error(), "not a Go binary") || o.ExitStatus != 0 {
		t.Errorf("/bin/true: exit %d, err %v; want a not-a-Go-binary error", o.ExitStatus, err)
	}

	// A command that does not exist fails to start.
	m := &HistogramMeasurer{}
	if err := m.Start(exec.Command(filepath.Join(t.TempDir(), "nothing"))); err == nil {
		t.Error("start of a missing program: no error")
	}
}

func TestRunner(t *testing.T) {
	bin := testtarget.Build(t, "schedload", testtarget.Go126, testtarget.Plain)
	small := []string{bin, "-rounds", "500", "-iters", "50"}
	var progress strings.Builder
	r := &Runner{N: 3, NewMeasurer: func() Measurer { return &HistogramMeasurer{} }, Method: MethodRuntimeHistogram, Progress: &progress}
	nw, base, err := r.Run(context.Background(), small, append(small[:len(small):len(small)], "-hold", "60000"))
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, line := range strings.Split(strings.TrimSpace(progress.String()), "\n") {
		f := strings.Fields(line)
		order = append(order, f[1]+" "+strings.TrimSuffix(f[2], ":"))
	}
	want := "1/3 base,1/3 new,2/3 new,2/3 base,3/3 base,3/3 new"
	if strings.Join(order, ",") != want {
		t.Errorf("run order %q, want %q (interleaved, alternating)\n%s", strings.Join(order, ","), want, progress.String())
	}
	for _, rec := range []*Record{nw, base} {
		if len(rec.Runs) != 3 || rec.Method != MethodRuntimeHistogram || rec.GoVersion == "" || rec.Validate() != nil {
			t.Errorf("%s record: %d runs, method %s, go %q, %v", rec.Label, len(rec.Runs), rec.Method, rec.GoVersion, rec.Validate())
		}
		for i, run := range rec.Runs {
			if run.Index != i+1 || run.Failed() || run.Metrics.SchedLatency.Count == 0 || run.Output != "" {
				t.Errorf("%s run %d: %+v", rec.Label, i+1, run)
			}
		}
	}

	// A failing run stops the runner and is kept with its output.
	progress.Reset()
	nw, _, err = r.Run(context.Background(), append(small[:len(small):len(small)], "-fail", "3"), nil)
	if !errors.Is(err, ErrFailedRun) || len(nw.Runs) != 1 {
		t.Fatalf("failing command: err %v, %d runs", err, len(nw.Runs))
	}
	if run := nw.Runs[0]; run.ExitStatus != 3 || !strings.Contains(run.Output, "schedload: pairs=2 rounds=500") {
		t.Errorf("failed run: exit %d, output %q", run.ExitStatus, run.Output)
	}
	if !strings.Contains(progress.String(), "run 1/3 new: FAILED: exit status 3") {
		t.Errorf("progress: %q", progress.String())
	}

	// A run past its timeout is ended and reported.
	r.Timeout = 300 * time.Millisecond
	nw, _, err = r.Run(context.Background(), []string{bin, "-rounds", "100000000"}, nil)
	if !errors.Is(err, ErrFailedRun) || !strings.Contains(nw.Runs[0].Error, "timed out after 300ms") || nw.Runs[0].Signal != "SIGKILL" {
		t.Errorf("timeout: err %v, run %+v", err, nw.Runs[0])
	}
}
