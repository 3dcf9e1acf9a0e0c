package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/budget"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// topBuffer is an io.Writer safe for the concurrent writes of gmpwatch and a
// launched target's output copier.
type topBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *topBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *topBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// runTopMain runs Main in process and returns its status, stdout, stderr
// and wall time.
func runTopMain(t *testing.T, ctx context.Context, stdin io.Reader, args ...string) (int, string, string, time.Duration) {
	t.Helper()
	var out, errb topBuffer
	start := time.Now()
	code := Main(ctx, args, &cmdEnv{stdout: &out, stderr: &errb, stdin: stdin})
	return code, out.String(), errb.String(), time.Since(start)
}

// topReports splits stdout into the JSON reports and the target's own lines.
func topReports(t *testing.T, stdout string) (rs []sched.Report, other []string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimRight(stdout, "\n"), "\n") {
		if !strings.HasPrefix(line, "{") {
			other = append(other, line)
			continue
		}
		var r sched.Report
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("bad JSON line %q: %v", line, err)
		}
		rs = append(rs, r)
	}
	return rs, other
}

// topSite returns the creation site at file:line ("FILE:LINE").
func topSite(r *sched.Report, fileLine string) (sched.Site, bool) {
	for _, s := range r.CreationSites {
		if fmt.Sprintf("%s:%d", s.File, s.Line) == fileLine {
			return s, true
		}
	}
	return sched.Site{}, false
}

func topLine(lines []string, prefix string) string {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func TestTopFlags(t *testing.T) {
	good := map[string]topFlags{
		"-p 42":                         {pid: 42, interval: time.Second},
		"-p 42 -i 250ms -d 3s --json":   {pid: 42, interval: 250 * time.Millisecond, duration: 3 * time.Second, json: true},
		"--json -- ./prog -n 3 -- x":    {interval: time.Second, json: true, cmd: []string{"./prog", "-n", "3", "--", "x"}},
		"-i 2s -- prog":                 {interval: 2 * time.Second, cmd: []string{"prog"}},
		"-p=9 -json=true -i=1ms":        {pid: 9, interval: time.Millisecond, json: true},
		"-- /bin/prog --json -p 1 -i 0": {interval: time.Second, cmd: []string{"/bin/prog", "--json", "-p", "1", "-i", "0"}},
		"-p 7 --overhead 2%":            {pid: 7, interval: time.Second, overhead: budget.Spec{Share: 0.02, FloorCores: budget.DefaultFloorCores}},
		"-p 7 --overhead max":           {pid: 7, interval: time.Second, overhead: budget.Spec{Max: true, Share: 1, FloorCores: budget.DefaultFloorCores}},
		"-p 7 --overhead 0.5%":          {pid: 7, interval: time.Second, overhead: budget.Spec{Share: 0.005, FloorCores: budget.DefaultFloorCores}},
	}
	for in, want := range good {
		if want.overhead == (budget.Spec{}) {
			want.overhead = budget.Default() // the live view's default
		}
		f, err := parseTopFlags(strings.Fields(in))
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if fmt.Sprint(*f) != fmt.Sprint(want) {
			t.Errorf("%q: got %+v, want %+v", in, *f, want)
		}
	}
	bad := map[string]string{
		"":                  "nothing to trace",
		"-p 1 -- prog":      "not both",
		"-p -3":             "not a process ID",
		"-p 1 -i 0":         "must be positive",
		"-p 1 -d -1s":       "must not be negative",
		"-p 1 stray":        "unexpected argument",
		"--":                "no command after --",
		"-p x":              "invalid value",
		"-q":                "not defined",
		"-p 1 -i fortnight": "invalid value",
		"-p 1 --overhead x": "--overhead",
		"-p 1 --overhead 0": "--overhead",
	}
	for in, want := range bad {
		_, err := parseTopFlags(strings.Fields(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", in, err, want)
		}
		if ee, ok := err.(*exitError); !ok || ee.code != 2 {
			t.Errorf("%q: %v is not a usage error (exit 2)", in, err)
		}
	}
}

// TestTopBadTargets: bad input gets one line and exit status 2.
func TestTopBadTargets(t *testing.T) {
	ctx := context.Background()
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }()
	cases := map[string][]string{
		"no such process":  {"-p", "999999999"},
		"not a Go binary":  {"-p", strconv.Itoa(sleep.Process.Pid)},
		"no such file":     {"--", "/nonexistent/prog"},
		"nothing to trace": {"--json"},
	}
	if os.Geteuid() == 0 {
		cases["not a Go binary "] = []string{"--", "/bin/true"} // launched, then refused
	}
	for want, args := range cases {
		code, stdout, stderr, _ := runTopMain(t, ctx, strings.NewReader(""), args...)
		if code != 2 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, strings.TrimSpace(want)) {
			t.Errorf("%v: status %d, stderr %q; want 2 and one line saying %q", args, code, stderr, want)
		}
		if stdout != "" {
			t.Errorf("%v: stdout %q, want nothing", args, stdout)
		}
	}
}

// TestTopLaunchSpawn runs `gmpwatch --json -- spawn -n N` in process: the
// probes are on from the target's first instruction, so the created count
// at spawn's go statement is exactly N.
func TestTopLaunchSpawn(t *testing.T) {
	testtarget.RequireRoot(t)
	const n = 1000
	for _, tc := range []testtarget.Case{
		{Toolchain: testtarget.Go126, Variant: testtarget.Plain},
		{Toolchain: testtarget.Go126, Variant: testtarget.Stripped},
		{Toolchain: testtarget.Go127, Variant: testtarget.Plain},
		{Toolchain: testtarget.Go119, Variant: testtarget.Plain},
		// A PIE stopped at exec is not relocated yet: the plan takes the
		// wait reasons from the file.
		{Toolchain: testtarget.Go126, Variant: testtarget.PIE},
		{Toolchain: testtarget.Go119, Variant: testtarget.PIE},
	} {
		t.Run(tc.String(), func(t *testing.T) {
			bin := testtarget.Build(t, "spawn", tc.Toolchain, tc.Variant)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			code, stdout, stderr, wall := runTopMain(t, ctx, strings.NewReader("\n"), "--json", "--overhead", "max", "-i", "1h", "--", bin, "-n", strconv.Itoa(n))
			if code != 0 {
				t.Fatalf("status %d, stderr:\n%s", code, stderr)
			}
			if !strings.HasPrefix(stderr, "Tracing PID ") || !strings.Contains(stderr, "): ") || !strings.Contains(stderr, " probes. Ctrl-C to end.\n") {
				t.Errorf("header: %q", stderr)
			}
			rs, lines := topReports(t, stdout)
			// The target's output is unchanged by tracing.
			site := strings.TrimPrefix(topLine(lines, "site "), "site ")
			if want := []string{"ready", "site " + site, "start main.worker", fmt.Sprintf("done %d", n)}; strings.Join(lines, "\n") != strings.Join(want, "\n") {
				t.Errorf("target output %q, want %q", lines, want)
			}
			if len(rs) != 1 || rs[0].Kind != sched.KindFinal {
				t.Fatalf("want one final report, got %d reports", len(rs))
			}
			r := &rs[0]
			s, ok := topSite(r, site)
			if !ok {
				t.Fatalf("no creation site %s in %+v", site, r.CreationSites)
			}
			if s.Created != n || s.Exited != n || s.Alive != 0 || s.Function != "main.main" {
				t.Errorf("site %+v: want main.main with %d created and exited, 0 alive", s, n)
			}
			if r.Goroutines.Created < n+1 || r.Goroutines.Exited < n || r.Goroutines.Preexisting != 0 {
				t.Errorf("goroutines %+v: want >= %d created (and main), >= %d exited, none preexisting", r.Goroutines, n+1, n)
			}
			if r.LostEvents != 0 {
				t.Errorf("lost %d events", r.LostEvents)
			}
			l := r.SchedLatency
			if l.Count < n || l.P50Ns == 0 || l.P50Ns > l.P90Ns || l.P90Ns > l.P99Ns || l.P99Ns > l.MaxNs || l.MaxNs > uint64(wall) {
				t.Errorf("latency %+v: want >= %d samples, 0 < p50 <= p90 <= p99 <= max <= wall %v", l, n, wall)
			}
			var hist uint64
			for _, b := range l.Histogram {
				hist += b.Count
			}
			if hist != l.Count {
				t.Errorf("histogram holds %d samples, count %d", hist, l.Count)
			}
			var chanRecv uint64
			for _, w := range r.WaitReasons {
				if w.Reason == "chan receive" {
					chanRecv = w.Count
				}
			}
			if chanRecv < n {
				t.Errorf("chan receive waits %d, want >= %d (every worker blocks on <-release): %+v", chanRecv, n, r.WaitReasons)
			}
			if len(r.Procs) == 0 || len(r.Threads) == 0 {
				t.Errorf("no P or M activity: %+v %+v", r.Procs, r.Threads)
			}
			for _, m := range r.Threads {
				if m.GoroutinesRun > 0 && m.TID == 0 {
					t.Errorf("M %d ran goroutines without a thread ID", m.MID)
				}
			}
			if r.Events == 0 || r.DurationNs == 0 || r.DurationNs > uint64(wall) {
				t.Errorf("events %d, duration %dns (wall %v)", r.Events, r.DurationNs, wall)
			}
			t.Logf("%s: %d events, latency p50 %s p99 %s max %s, wall %v", site, r.Events, sched.FormatNs(l.P50Ns), sched.FormatNs(l.P99Ns), sched.FormatNs(l.MaxNs), wall)
		})
	}
}

// TestTopExitStatus: the launched command's exit status passes through
// (spawn exits 1 when its standard input is empty), and the text output
// holds the final report.
func TestTopExitStatus(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	code, stdout, stderr, _ := runTopMain(t, context.Background(), strings.NewReader(""), "--", bin, "-n", "5")
	if code != 1 {
		t.Fatalf("status %d, want the target's 1; stderr:\n%s", code, stderr)
	}
	if !strings.HasPrefix(stdout, "ready\n") || !strings.Contains(stdout, "gmpwatch report: ") || !strings.Contains(stdout, "Scheduling latency") {
		t.Errorf("stdout:\n%s", stdout)
	}
	if !strings.Contains(stderr, "spawn: read stdin: EOF") {
		t.Errorf("target's stderr not passed through: %q", stderr)
	}
}

// topStartWaiting starts a target that prints "ready" and waits for a line on
// its standard input; it returns the process, its stdin and its stdout.
func topStartWaiting(t *testing.T, bin string, args ...string) (*exec.Cmd, io.WriteCloser, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	out := bufio.NewReader(outp)
	if line, err := out.ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("target said %q, %v; want ready", line, err)
	}
	return cmd, in, out
}

// topWaitFor polls buf until it contains s.
func topWaitFor(t *testing.T, buf *topBuffer, s string, timeout time.Duration) {
	t.Helper()
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(buf.String(), s) {
			return
		}
	}
	t.Fatalf("no %q within %v; have %q", s, timeout, buf.String())
}

// TestTopAttachPID attaches to a running spawn with -p, lets it work, and
// ends when it exits: interval reports while it runs, then the final report.
func TestTopAttachPID(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range []testtarget.Case{
		{Toolchain: testtarget.Go126, Variant: testtarget.Plain},
		{Toolchain: testtarget.Go126, Variant: testtarget.PIE},
		{Toolchain: testtarget.Go127, Variant: testtarget.Stripped},
		{Toolchain: testtarget.Go119, Variant: testtarget.Stripped},
		{Toolchain: testtarget.Go119, Variant: testtarget.PIE}, // pclntab in .data.rel.ro.gopclntab
	} {
		t.Run(tc.String(), func(t *testing.T) {
			topAttachPID(t, testtarget.Build(t, "spawn", tc.Toolchain, tc.Variant), string(tc.Toolchain))
		})
	}
}

func topAttachPID(t *testing.T, bin, goVersion string) {
	const n = 500
	cmd, in, out := topStartWaiting(t, bin, "-n", strconv.Itoa(n))

	var stdout, stderr topBuffer
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		done <- Main(ctx, []string{"-p", strconv.Itoa(cmd.Process.Pid), "--json", "--overhead", "max", "-i", "50ms"}, &cmdEnv{stdout: &stdout, stderr: &stderr, stdin: strings.NewReader("")})
	}()
	topWaitFor(t, &stderr, "Ctrl-C to end.\n", 30*time.Second)
	if want := fmt.Sprintf("Tracing PID %d (%s", cmd.Process.Pid, goVersion); !strings.HasPrefix(stderr.String(), want) {
		t.Errorf("header %q, want it to start %q", stderr.String(), want)
	}
	time.Sleep(120 * time.Millisecond) // an interval or two of an idle target
	io.WriteString(in, "go\n")
	rest, _ := io.ReadAll(out)
	site := strings.TrimPrefix(topLine(strings.Split(string(rest), "\n"), "site "), "site ")
	var code int
	select {
	case code = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("gmpwatch did not end when the target exited")
	}
	if code != 0 {
		t.Fatalf("status %d, stderr %s", code, stderr.String())
	}
	rs, other := topReports(t, stdout.String())
	if len(other) != 0 {
		t.Errorf("stdout holds non-JSON lines %q", other)
	}
	if len(rs) < 2 || rs[len(rs)-1].Kind != sched.KindFinal {
		t.Fatalf("want interval reports and a final one, got %d", len(rs))
	}
	final := &rs[len(rs)-1]
	var ivCreated uint64
	for _, r := range rs[:len(rs)-1] {
		if r.Kind != sched.KindInterval {
			t.Errorf("report kind %q before the final one", r.Kind)
		}
		if s, ok := topSite(&r, site); ok {
			ivCreated += s.Created
		}
	}
	s, ok := topSite(final, site)
	if !ok || s.Created != n || s.Exited != n {
		t.Fatalf("site %s: %+v, want %d created and exited", site, s, n)
	}
	if ivCreated > n {
		t.Errorf("intervals count %d created at the site, more than %d", ivCreated, n)
	}
	// Attached mid-life: main and the runtime's goroutines were created
	// before, and are seen first when they run, park or exit.
	if final.Goroutines.Preexisting == 0 {
		t.Errorf("no preexisting goroutine seen: %+v", final.Goroutines)
	}
	if final.LostEvents != 0 {
		t.Errorf("lost %d events", final.LostEvents)
	}
}

// TestTopDuration: -d ends the trace of a target that keeps running, with
// the final report, and leaves the target running.
func TestTopDuration(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	cmd, _, _ := topStartWaiting(t, bin, "-n", "1")
	start := time.Now()
	code, stdout, stderr, _ := runTopMain(t, context.Background(), nil, "-p", strconv.Itoa(cmd.Process.Pid), "-d", "300ms", "-i", "100ms")
	if code != 0 {
		t.Fatalf("status %d: %s", code, stderr)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 20*time.Second {
		t.Errorf("ended after %v with -d 300ms", el)
	}
	if !strings.Contains(stdout, "-- ") || !strings.Contains(stdout, "gmpwatch report: ") {
		t.Errorf("want interval blocks and a final report:\n%s", stdout)
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("target gone after -d: %v", err)
	}
}

// TestTopSignal: cancelling the context (Ctrl-C, SIGTERM) ends with the
// final report.
func TestTopSignal(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	cmd, _, _ := topStartWaiting(t, bin, "-n", "1")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(400*time.Millisecond, cancel)
	code, stdout, stderr, _ := runTopMain(t, ctx, nil, "-p", strconv.Itoa(cmd.Process.Pid), "--json")
	if code != 0 {
		t.Fatalf("status %d: %s", code, stderr)
	}
	rs, _ := topReports(t, stdout)
	if len(rs) != 1 || rs[0].Kind != sched.KindFinal {
		t.Fatalf("want only the final report, got %d", len(rs))
	}
}

// TestTopBlockers: the wait reasons a target causes are reported, each with
// at least the time the target blocked a goroutine for.
func TestTopBlockers(t *testing.T) {
	testtarget.RequireRoot(t)
	const d = 100 * time.Millisecond
	bin := testtarget.Build(t, "blockers", testtarget.Go126, testtarget.Plain)
	code, stdout, stderr, wall := runTopMain(t, context.Background(), strings.NewReader("\n"), "--json", "--overhead", "max", "-i", "1h", "--", bin, "-d", d.String())
	if code != 0 {
		t.Fatalf("status %d: %s", code, stderr)
	}
	rs, lines := topReports(t, stdout)
	if len(rs) != 1 || topLine(lines, "done") == "" {
		t.Fatalf("want one report and the target's done, got %d reports, %q", len(rs), lines)
	}
	got := map[string]sched.WaitReason{}
	for _, w := range rs[0].WaitReasons {
		got[w.Reason] = w
	}
	for _, reason := range []string{"chan receive", "chan send", "select", "sleep", "sync.Mutex.Lock"} {
		w, ok := got[reason]
		if !ok || w.Count == 0 || w.TotalNs < uint64(d)*9/10 || w.TotalNs > uint64(wall) {
			t.Errorf("%s: %+v, want >= 1 wait totalling >= %v (and <= wall %v)", reason, w, d*9/10, wall)
		}
	}
}

// TestTopPermission runs the built gmpwatch as an unprivileged user against a
// root-owned Go process: one line naming what to do, status 2.
func TestTopPermission(t *testing.T) {
	testtarget.RequireRoot(t)
	// A directory the unprivileged user can enter (t.TempDir's parent is 0700).
	gm := gmpwatchBinary(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	target, _, _ := topStartWaiting(t, bin, "-n", "1")
	cmd := exec.Command(gm, "-p", strconv.Itoa(target.Process.Pid))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 2 {
		t.Fatalf("run as nobody: %v, stderr %q; want exit status 2", err, errb.String())
	}
	if s := errb.String(); strings.Count(s, "\n") != 1 || !strings.Contains(s, "run as root, or grant CAP_BPF and CAP_PERFMON") {
		t.Errorf("stderr %q: want one line with the permission hint", s)
	}
}

// topRuntimeLatency is the runtime's /sched/latencies:seconds histogram as
// schedload -metrics prints it.
type topRuntimeLatency struct {
	lo, hi []float64 // seconds
	counts []uint64
	total  uint64
}

// quantile returns the bounds (ns) of the bucket holding the q-quantile.
func (h *topRuntimeLatency) quantile(q float64) (lo, hi float64) {
	rank := q * float64(h.total)
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if float64(cum) >= rank {
			return h.lo[i] * 1e9, h.hi[i] * 1e9
		}
	}
	return 0, 0
}

// TestTopAgreesWithRuntime compares gmpwatch's scheduling-latency
// distribution with the runtime's own (/sched/latencies:seconds, which
// samples about 1 runnable->running transition in 8), read by schedload at
// its exit, and the goroutines created with /sched/goroutines-created.
// Tolerances: sample count within 20% of 8x the runtime's, p50 and p90
// within a factor 2 of the runtime's bucket, p99 (a handful of samples in
// the runtime's view) within a factor 4.
func TestTopAgreesWithRuntime(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "schedload", testtarget.Go126, testtarget.Plain)
	code, stdout, stderr, _ := runTopMain(t, context.Background(), nil, "--json", "--overhead", "max", "-i", "1h", "--", bin, "-metrics", "-fail", "3")
	if code != 3 {
		t.Fatalf("status %d, want schedload's -fail 3; stderr:\n%s", code, stderr)
	}
	rs, lines := topReports(t, stdout)
	if len(rs) != 1 {
		t.Fatalf("%d reports", len(rs))
	}
	r := &rs[0]
	var rt topRuntimeLatency
	created := -1
	for _, l := range lines {
		f := strings.Fields(l)
		switch {
		case len(f) == 4 && f[0] == "latency-bucket":
			lo, _ := strconv.ParseFloat(f[1], 64)
			hi, _ := strconv.ParseFloat(f[2], 64)
			c, _ := strconv.ParseUint(f[3], 10, 64)
			rt.lo, rt.hi, rt.counts = append(rt.lo, lo), append(rt.hi, hi), append(rt.counts, c)
			rt.total += c
		case len(f) == 2 && f[0] == "goroutines-created":
			created, _ = strconv.Atoi(f[1])
		}
	}
	if rt.total == 0 || created < 0 {
		t.Fatalf("schedload printed no metrics: %q", lines)
	}
	if r.LostEvents != 0 {
		t.Errorf("lost %d events", r.LostEvents)
	}
	if r.Goroutines.Created != uint64(created) {
		t.Errorf("goroutines created: gmpwatch %d, runtime %d", r.Goroutines.Created, created)
	}
	l := r.SchedLatency
	if ratio := float64(l.Count) / float64(8*rt.total); ratio < 0.8 || ratio > 1.2 {
		t.Errorf("latency samples: gmpwatch %d, runtime %d (x8 = %d)", l.Count, rt.total, 8*rt.total)
	}
	for _, c := range []struct {
		q      float64
		got    uint64
		factor float64
	}{{0.5, l.P50Ns, 2}, {0.9, l.P90Ns, 2}, {0.99, l.P99Ns, 4}} {
		lo, hi := rt.quantile(c.q)
		if float64(c.got) < lo/c.factor || float64(c.got) > hi*c.factor {
			t.Errorf("p%g: gmpwatch %s, runtime's bucket [%s, %s]", c.q*100, sched.FormatNs(c.got), sched.FormatNs(uint64(lo)), sched.FormatNs(uint64(hi)))
		}
		t.Logf("p%g: gmpwatch %s, runtime [%s, %s]", c.q*100, sched.FormatNs(c.got), sched.FormatNs(uint64(lo)), sched.FormatNs(uint64(hi)))
	}
}

// TestTopTargetKilled: a traced process killed with SIGKILL ends the trace
// with the final report.
func TestTopTargetKilled(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	cmd, _, _ := topStartWaiting(t, bin, "-n", "1")
	var stdout, stderr topBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main(context.Background(), []string{"-p", strconv.Itoa(cmd.Process.Pid), "--json"}, &cmdEnv{stdout: &stdout, stderr: &stderr})
	}()
	topWaitFor(t, &stderr, "Ctrl-C to end.\n", 30*time.Second)
	cmd.Process.Kill()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("status %d: %s", code, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("gmpwatch did not end when the target was killed")
	}
	rs, _ := topReports(t, stdout.String())
	if len(rs) != 1 || rs[0].Kind != sched.KindFinal {
		t.Fatalf("want the final report, got %d reports", len(rs))
	}
}

// TestTopLaunchSignal: Ctrl-C or SIGTERM to gmpwatch while a launched
// command runs ends the trace with the final report, ends the command, and
// passes its status on (128+SIGTERM, as a shell reports it).
func TestTopLaunchSignal(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	// A pipe that stays open and empty: spawn waits after "ready".
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(500*time.Millisecond, cancel)
	code, stdout, stderr, _ := runTopMain(t, ctx, r, "--json", "--", bin, "-n", "1")
	if code != 128+int(syscall.SIGTERM) {
		t.Fatalf("status %d, want %d; stderr:\n%s", code, 128+int(syscall.SIGTERM), stderr)
	}
	rs, lines := topReports(t, stdout)
	if len(rs) != 1 || rs[0].Kind != sched.KindFinal || topLine(lines, "ready") == "" {
		t.Fatalf("want ready and the final report, got %q and %d reports", lines, len(rs))
	}
}

// TestTopKilledLeavesNoProbe kills gmpwatch with SIGKILL while it traces:
// its links are file descriptors, so the kernel detaches every probe, and
// the target's instructions are restored and it runs on to its end.
func TestTopKilledLeavesNoProbe(t *testing.T) {
	testtarget.RequireRoot(t)
	gm := gmpwatchBinary(t)
	proc := testtarget.Start(t, testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain), "-n", "50")
	proc.WaitLine(t, "ready", 10*time.Second)
	p, err := plan.FromProcess(proc.PID())
	if err != nil {
		t.Fatal(err)
	}
	probes := attached(p)

	cmd := exec.Command(gm, "--no-tui", "-p", strconv.Itoa(proc.PID()))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(stderr).ReadString('\n'); err != nil || !strings.HasPrefix(line, "Tracing PID") {
		t.Fatalf("gmpwatch said %q, %v", line, err)
	}
	mem, _ := probeBytes(t, proc.PID(), p, probes)
	for i, b := range mem {
		if b != 0xcc {
			t.Fatalf("probe %s not attached while tracing (byte %#x)", probes[i].Symbol, b)
		}
	}

	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mem, file := probeBytes(t, proc.PID(), p, probes)
		if bytes.Equal(mem, file) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGKILL the target still holds breakpoints: memory %x, file %x", mem, file)
		}
		time.Sleep(50 * time.Millisecond)
	}
	io.WriteString(proc.Stdin, "go\n")
	if line := proc.WaitLine(t, "done", 20*time.Second); line != "done 50" {
		t.Errorf("target printed %q after gmpwatch died, want done 50", line)
	}
}

// TestTopOverheadBudget traces the scheduler storm under a 2% budget: the
// report says how it was obtained (budget, duty cycle below 100%, estimated
// and measured cost, which figures are sampled), and the sampled windows
// still deliver latencies. Timing goals belong to scripts/bench-overhead.
func TestTopOverheadBudget(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "storm", testtarget.Go126, testtarget.Plain)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code, stdout, stderr, _ := runTopMain(t, ctx, nil, "--json", "--overhead", "2%", "-i", "500ms", "--", bin, "-d", "8s", "-hold", "1500ms")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var final struct {
		sched.Report
		Overhead *struct {
			Budget    string  `json:"budget"`
			DutyCycle float64 `json:"duty_cycle"`
			Estimated float64 `json:"estimated_cost"`
			Measured  float64 `json:"measured_cost"`
			// In cores: the allowance is the budget's share of the
			// target's CPU or the floor (1% of a core), whichever is
			// more — on a loaded machine the storm gets little CPU.
			Allowed       float64           `json:"allowed_cores"`
			EstimatedCore float64           `json:"estimated_cores"`
			MeasuredCore  float64           `json:"measured_cores"`
			Sampled       []json.RawMessage `json:"sampled"`
		} `json:"overhead"`
		Runtime *runtimeFigures `json:"runtime"`
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	last := ""
	for _, l := range lines {
		if strings.HasPrefix(l, "{") {
			last = l
		}
	}
	if err := json.Unmarshal([]byte(last), &final); err != nil {
		t.Fatalf("final report %q: %v", last, err)
	}
	o := final.Overhead
	if final.Kind != sched.KindFinal || o == nil {
		t.Fatalf("final report without the overhead section: %s", last)
	}
	if o.Budget != "2%" || o.DutyCycle <= 0 || o.DutyCycle >= 1 {
		t.Errorf("budget %q duty %.3f: want 2%% and a duty cycle in (0, 1)", o.Budget, o.DutyCycle)
	}
	if len(o.Sampled) == 0 {
		t.Errorf("the report does not say which figures are sampled")
	}
	// Within the budget, generously: the first window, which measures the
	// rates with every probe on, counts too, and the estimate is the last
	// plan's, made with the target's CPU rate of the period before.
	// The last plan within its allowance; the whole run's measured cost
	// within 3× the budget's share, or 3× the floor when the machine left
	// the storm little CPU.
	if o.Allowed <= 0 || o.EstimatedCore > 1.5*o.Allowed {
		t.Errorf("the last plan costs %.4f cores, over its allowance of %.4f cores", o.EstimatedCore, o.Allowed)
	}
	if o.Measured > 3*0.02 && o.MeasuredCore > 3*budget.DefaultFloorCores {
		t.Errorf("measured cost %.2f%% of the target's CPU, %.4f cores: over the 2%% budget and its floor", 100*o.Measured, o.MeasuredCore)
	}
	if final.SchedLatency.Count == 0 || final.LostEvents != 0 {
		t.Errorf("sampled windows gave %d latencies, %d lost", final.SchedLatency.Count, final.LostEvents)
	}
	t.Logf("duty %.1f%%, estimated %.2f%%, measured %.2f%%, %d latencies", 100*o.DutyCycle, 100*o.Estimated, 100*o.Measured, final.SchedLatency.Count)

	// The figures the runtime counts stay exact: every goroutine storm
	// started (its spawns, 2 per ping-pong pair, the spawner, the
	// allocator), plus the runtime's own few, read from its memory.
	rt := final.Runtime
	if rt == nil || rt.Created == nil {
		t.Fatalf("final report without the runtime's exact figures: %s", last)
	}
	var pp, spawn, alloc, total int
	if _, err := fmt.Sscanf(topLine(lines, "ops "), "ops pingpong=%d spawn=%d alloc=%d total=%d", &pp, &spawn, &alloc, &total); err != nil {
		t.Fatalf("storm's counts: %v in %q", err, lines)
	}
	if low := uint64(spawn + 2*2 + 1 + 1); *rt.Created < low || *rt.Created > low+32 {
		t.Errorf("runtime counted %d goroutines created; storm started %d (+ the runtime's own, up to 32)", *rt.Created, low)
	}
	if rt.SchedLatency.Count == 0 {
		t.Errorf("the runtime's own latency histogram is empty")
	}

	// Latency, waits and sites come from the in-kernel aggregates (the
	// creations and unparks are not streamed), alive counts from memory.
	var created, alive uint64
	var spawnSite bool
	for _, st := range final.CreationSites {
		created += st.Created
		alive += st.Alive
		spawnSite = spawnSite || (strings.HasPrefix(st.Function, "main.main.func") && st.Created > 0)
	}
	if created != final.Goroutines.Created || created == 0 || !spawnSite {
		t.Errorf("sites created %d, goroutines created %d, storm's go statements seen %v", created, final.Goroutines.Created, spawnSite)
	}
	if alive != final.Goroutines.Alive || alive == 0 {
		t.Errorf("alive by site %d, goroutines alive %d: want one scan of memory for both", alive, final.Goroutines.Alive)
	}
	if final.SchedLatency.Count == 0 || len(final.SchedLatency.Histogram) == 0 {
		t.Errorf("no latency from the kernel's histogram: %+v", final.SchedLatency)
	}
	// The windows end before the trace does: no P is busy longer than it.
	for _, p := range final.Procs {
		if p.BusyNs > final.DurationNs {
			t.Errorf("P%d busy %d ns in a %d ns trace", p.ID, p.BusyNs, final.DurationNs)
		}
	}
	t.Logf("sched latency: windows p50 %s p99 %s (%d); runtime p50 %s p99 %s (%d)",
		sched.FormatNs(final.SchedLatency.P50Ns), sched.FormatNs(final.SchedLatency.P99Ns), final.SchedLatency.Count,
		sched.FormatNs(uint64(rt.SchedLatency.P50)), sched.FormatNs(uint64(rt.SchedLatency.P99)), rt.SchedLatency.Count)
}
