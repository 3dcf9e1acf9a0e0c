package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/regress"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ci")

// benchstatVersion is golang.org/x/perf as in go.mod.
const benchstatVersion = "v0.0.0-20260908200009-22c9c6c9d4da"

func ciDir() string { return filepath.Join(testtarget.RepoRoot(), "testdata", "ci") }

// runCIMain runs gmpwatch in process and returns its exit status and output,
// with the test data directory written as testdata/ci.
func runCIMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, &cmdEnv{stdout: &out, stderr: &errb, stdin: strings.NewReader("")})
	clean := func(s string) string { return strings.ReplaceAll(s, ciDir(), "testdata/ci") }
	return code, clean(out.String()), clean(errb.String())
}

// The records in testdata/ci are real: schedload runs measured by
// `gmpwatch ci run` (base and same: -hold 50000, interleaved, an A/A pair;
// slow: -hold 200000; few: 3 runs; failed: -fail 3). Each case's exit
// status and output are golden: go test ./cmd/gmpwatch -run CICompare -update
// rewrites them.
func TestCICompareGolden(t *testing.T) {
	d := ciDir()
	rec := func(name string) string { return filepath.Join(d, name+".json") }
	cases := []struct {
		name string
		args []string
		code int
	}{
		{"aa-text", []string{rec("base"), rec("same")}, 0},
		{"aa-markdown", []string{rec("base"), rec("same"), "--format", "markdown"}, 0},
		{"aa-junit", []string{rec("base"), rec("same"), "--format=junit"}, 0},
		{"ab-text", []string{rec("base"), rec("slow")}, 1},
		{"ab-benchstat", []string{"--format", "benchstat", rec("base"), rec("slow")}, 1},
		{"ab-markdown", []string{rec("base"), rec("slow"), "--format", "markdown"}, 1},
		{"ab-junit", []string{rec("base"), rec("slow"), "--format", "junit"}, 1},
		// Only the tail checks off and a generous threshold: passes.
		{"ab-thresholds", []string{rec("base"), rec("slow"), "--threshold-metric", "p99=off,p99.9=off", "--threshold-metric", "max=off", "--threshold", "15%"}, 0},
		// p99 alone, at 5%.
		{"ab-p99-only", []string{rec("base"), rec("slow"), "--threshold-metric", "p50=off,p90=off,p99.9=off,max=off,goroutines=off,threads=off", "--threshold-metric", "p99=5%"}, 1},
		{"few", []string{rec("few"), rec("few")}, 2},
		{"failed", []string{rec("base"), rec("failed")}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := runCIMain(t, append([]string{"ci", "compare"}, c.args...)...)
			if code != c.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, c.code, stdout, stderr)
			}
			got := fmt.Sprintf("exit %d\n-- stdout --\n%s-- stderr --\n%s", code, stdout, stderr)
			golden := filepath.Join(d, c.name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("output differs from %s (run with -update to accept):\n--- got\n%s\n--- want\n%s", golden, got, want)
			}
		})
	}
}

// Exit status 2 and one line for whatever is wrong with the input.
func TestCICompareBadInput(t *testing.T) {
	d := ciDir()
	notJSON := filepath.Join(t.TempDir(), "x.json")
	os.WriteFile(notJSON, []byte("BenchmarkX 1 2 ns/op\n"), 0o644)
	base := filepath.Join(d, "base.json")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"ci"}, "want a subcommand"},
		{[]string{"ci", "frobnicate"}, `unknown ci subcommand "frobnicate"`},
		{[]string{"ci", "compare", base}, "want two records"},
		{[]string{"ci", "compare", base, filepath.Join(d, "nothing.json")}, "no such file"},
		{[]string{"ci", "compare", base, notJSON}, "not a valid gmpwatch ci record"},
		{[]string{"ci", "compare", base, base, "--format", "csv"}, `unknown format "csv"`},
		{[]string{"ci", "compare", base, base, "--threshold", "lots"}, `bad threshold "lots"`},
		{[]string{"ci", "compare", base, base, "--threshold-metric", "p99"}, "want METRIC=PCT"},
		{[]string{"ci", "compare", base, base, "--threshold-metric", "p42=5%"}, `no metric "p42"`},
		{[]string{"ci", "compare", base, base, "--alpha", "2"}, "--alpha 2"},
		{[]string{"ci", "run", "-o", "x.json"}, "no command to run"},
		{[]string{"ci", "run", "--", "true"}, "-o FILE is required"},
		{[]string{"ci", "run", "-n", "0", "-o", "x.json", "--", "true"}, "want at least 1 run"},
		{[]string{"ci", "run", "-o", "x.json", "--baseline-cmd", "a 'b", "--", "true"}, "bad --baseline-cmd"},
		{[]string{"ci", "run", "-o", "x.json", "--method", "dtrace", "--", "true"}, `unknown --method "dtrace"`},
	} {
		code, stdout, stderr := runCIMain(t, c.args...)
		if code != 2 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", c.args, code, stdout, stderr, c.want)
		}
	}
}

// benchstat itself reads what --format benchstat writes: the units with
// their better=lower metadata, base and new as two columns, and the same
// verdict on p99.
func TestCIBenchstatReadsOutput(t *testing.T) {
	if testing.Short() {
		t.Skip("builds benchstat")
	}
	d := ciDir()
	code, stdout, _ := runCIMain(t, "ci", "compare", "--format", "benchstat", filepath.Join(d, "base.json"), filepath.Join(d, "slow.json"))
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	file := filepath.Join(t.TempDir(), "sched.txt")
	if err := os.WriteFile(file, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "run", "golang.org/x/perf/cmd/benchstat@"+benchstatVersion, "-col", regress.BenchConfigKey, file)
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		testtarget.SkipOrFail(t, "go run benchstat: %v\n%s", err, out)
	}
	s := string(out)
	t.Logf("benchstat says:\n%s", s)
	for _, want := range []string{"p99-sec", "p50-sec", "max-sec", "goroutines", "threads", "base.json", "slow.json", "SchedLatency/p99"} {
		if !strings.Contains(s, want) {
			t.Errorf("benchstat output lacks %q", want)
		}
	}
	if strings.Contains(s, "parse") || strings.Contains(s, "syntax") {
		t.Errorf("benchstat complained about the input")
	}
	// benchstat's own verdict on p99 agrees with ours: a big, significant
	// increase (+319.31% from our median of the same values).
	line := regexp.MustCompile(`(?m)^SchedLatency/p99\s.*$`).FindString(s[strings.Index(s, "p99-sec"):])
	if !strings.Contains(line, "+319.31%") || !strings.Contains(line, "p=0.000 n=10") {
		t.Errorf("benchstat's p99 line %q, want +319.31%% (p=0.000 n=10)", line)
	}
}

// ci run through the command line: progress lines, interleaving, both
// records written and readable, and what compare says of two runs each.
func TestCIRun(t *testing.T) {
	bin := testtarget.Build(t, "schedload", testtarget.Go126, testtarget.Plain)
	dir := t.TempDir()
	out := filepath.Join(dir, "new.json")
	small := bin + " -rounds 500 -iters 50"
	code, stdout, stderr := runCIMain(t, "ci", "run", "-n", "2", "-o", out, "--baseline-cmd", small+" -hold 40000",
		"--", bin, "-rounds", "500", "-iters", "50")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if stdout != "" {
		t.Errorf("stdout %q: the command's output belongs to no one here", stdout)
	}
	// As root, the probes; else the fallback (TestCIRunFallback).
	method := "gmpwatch ci: measuring with gmpwatch's eBPF probes"
	if os.Geteuid() != 0 {
		method = "gmpwatch ci: eBPF not allowed ("
	}
	for _, want := range []string{
		method,
		"run 1/2 base: ", "run 1/2 new: ", "run 2/2 new: ", "run 2/2 base: ",
		"wrote " + out + " (2 runs)", "wrote " + filepath.Join(dir, "base.json") + " (2 runs)",
		"warning: 2 runs are too few for ci compare to ever reach a verdict on these metrics (it needs at least 6)",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	nw, err := regress.LoadRecord(out)
	if err != nil {
		t.Fatal(err)
	}
	base, err := regress.LoadRecord(filepath.Join(dir, "base.json"))
	if err != nil {
		t.Fatal(err)
	}
	if base.Command[len(base.Command)-1] != "40000" || len(nw.Runs) != 2 || nw.Runs[1].Metrics.SchedLatency.Count == 0 || nw.GoVersion != "go1.26.8" {
		t.Errorf("records: base %q, new %+v", base.Command, nw)
	}
	// Two runs each can never be significant: exit 2, one line.
	code, stdout, stderr = runCIMain(t, "ci", "compare", filepath.Join(dir, "base.json"), out)
	if code != 2 || stdout != "" || !strings.Contains(stderr, "too few runs: 2 base and 2 new runs can never reach significance") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("compare of 2 runs: exit %d\n%s%s", code, stdout, stderr)
	}

	// A failing command: exit 1, its output shown, the record kept.
	code, _, stderr = runCIMain(t, "ci", "run", "-n", "3", "-o", filepath.Join(dir, "fail.json"), "--", bin, "-rounds", "100", "-iters", "10", "-fail", "4")
	if code != 1 || !strings.Contains(stderr, "run 1 failed (exit status 4); its output:\n  | schedload: pairs=2 rounds=100") {
		t.Errorf("failing command: exit %d\n%s", code, stderr)
	}
	if r, err := regress.LoadRecord(filepath.Join(dir, "fail.json")); err != nil || len(r.Runs) != 1 || r.Runs[0].ExitStatus != 4 {
		t.Errorf("failed record: %v %+v", err, r)
	}

	// Not a Go program: exit 2, one line.
	code, _, stderr = runCIMain(t, "ci", "run", "-n", "2", "-o", filepath.Join(dir, "true.json"), "--", "/bin/true")
	last := strings.TrimSpace(stderr[strings.LastIndex(strings.TrimSpace(stderr), "\n")+1:])
	if code != 2 || !strings.Contains(last, "gmpwatch ci: /bin/true could not be measured") || !strings.Contains(last, "not a Go binary") {
		t.Errorf("/bin/true: exit %d\n%s", code, stderr)
	}
}

// The A/B through the command line: schedload's spinners holding the CPU
// four times longer per iteration is a regression: ci compare exits 1 and
// prints p99's change and p-value. It measures with the runtime's
// histogram: its 20 runs take about 3s so, about 30s under eBPF (attaching
// and detaching the probes costs about 1s a run). TestCIExampleScript runs
// its A/A and A/B under eBPF, the default.
func TestCIRunCompareAB(t *testing.T) {
	bin := testtarget.Build(t, "schedload", testtarget.Go126, testtarget.Plain)
	dir := t.TempDir()
	small := " -rounds 1000 -iters 100 -hold "
	code, _, stderr := runCIMain(t, "ci", "run", "--method", "runtime-histogram", "-n", "10", "-o", filepath.Join(dir, "new.json"),
		"--baseline-cmd", bin+small+"50000", "--", bin, "-rounds", "1000", "-iters", "100", "-hold", "200000")
	if code != 0 {
		t.Fatalf("ci run: exit %d\n%s", code, stderr)
	}
	for _, format := range []string{"text", "markdown"} {
		code, stdout, stderr := runCIMain(t, "ci", "compare", filepath.Join(dir, "base.json"), filepath.Join(dir, "new.json"), "--format", format)
		t.Logf("%s:\n%s%s", format, stdout, stderr)
		if code != 1 {
			t.Fatalf("%s: exit %d, want 1 for a 4x hold", format, code)
		}
		m := regexp.MustCompile(`REGRESSION: sched latency p99 \+(\d+)\.\d\d% \(p=(0\.\d+), threshold 10%\)`).FindStringSubmatch(stdout)
		if m == nil {
			t.Fatalf("%s: no p99 regression with change and p-value in the output", format)
		}
		var pct int
		var p float64
		fmt.Sscan(m[1], &pct)
		fmt.Sscan(m[2], &p)
		// Apart, the 10+10 runs give p ~ 1e-4; a loaded machine can
		// make a few overlap (p=0.004 beside two CPU hogs), which
		// still is a regression at benchstat's 0.05.
		if pct < 100 || p >= regress.DefaultAlpha {
			t.Errorf("%s: p99 +%d%% p=%v; want at least +100%% at p < %v", format, pct, p, regress.DefaultAlpha)
		}
	}
}

// schedBench is a module with a benchmark whose spinners hold the CPU for
// `hold` units of work between yields; the example script's tests change
// hold between the baseline commit and the change.
const schedBench = `package schedbench

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

var sink atomic.Uint64

//go:noinline
func spin(n int, x uint64) uint64 {
	for i := 0; i < n; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return x
}

func BenchmarkSched(b *testing.B) {
	runtime.GOMAXPROCS(2)
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		for s := 0; s < 4; s++ {
			wg.Add(1)
			go func(x uint64) {
				defer wg.Done()
				for it := 0; it < 32; it++ {
					x = spin(hold, x)
					runtime.Gosched()
				}
				sink.Add(x)
			}(uint64(s + 1))
		}
		wg.Wait()
	}
}
`

// The example CI script end to end, in a throwaway git repository: it
// checks out the baseline commit in a worktree, builds both, runs both
// under gmpwatch, compares, and fails the build (exit 1) when the change
// makes the spinners hold the CPU four times longer, but not (exit 0) when
// the change leaves the scheduler alone.
func TestCIExampleScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds gmpwatch and runs 40 benchmarks")
	}
	if _, err := exec.LookPath("git"); err != nil {
		testtarget.SkipOrFail(t, "git: %v", err)
	}
	tmp := t.TempDir()
	gmpwatch := gmpwatchBinary(t)
	script := filepath.Join(testtarget.RepoRoot(), "scripts", "ci-example", "sched-regression.sh")

	repo := filepath.Join(tmp, "repo")
	os.MkdirAll(repo, 0o755)
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=ci", "-c", "user.email=ci@example.com", "-c", "init.defaultBranch=main"}, args...)...)
		cmd.Dir = repo
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(repo, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git("init", "-q")
	write("go.mod", "module example.com/schedbench\n\ngo 1.19\n")
	write("sched_test.go", schedBench)
	write("hold.go", "package schedbench\n\nconst hold = 50000\n")
	git("add", ".")
	git("commit", "-q", "-m", "base")
	baseRev := git("rev-parse", "HEAD")

	run := func(name string) (int, string) {
		out := filepath.Join(tmp, name)
		cmd := exec.Command("sh", script)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "GMPWATCH="+gmpwatch, "BASE_REF="+baseRev, "BENCH=BenchmarkSched",
			"BENCHTIME=20x", "RUNS=10", "OUT="+out, "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local", "GOWORK=off")
		b, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"base.json", "new.json", "report.txt", "report.md", "junit.xml", "bench.txt"} {
			if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
				t.Errorf("%s: %s missing or empty", name, f)
			}
		}
		if _, err := os.Stat(filepath.Join(out, "base-src")); err == nil {
			t.Errorf("%s: the baseline worktree was left behind", name)
		}
		return code, string(b)
	}

	// A/A: the change touches no code.
	write("README", "docs only\n")
	git("add", ".")
	git("commit", "-q", "-m", "docs")
	code, out := run("aa")
	t.Logf("A/A:\n%s", out)
	if code != 0 || !strings.Contains(out, "no scheduling-latency regression") {
		t.Errorf("A/A: exit %d, want 0", code)
	}

	// A/B: the change holds the CPU four times longer between yields.
	write("hold.go", "package schedbench\n\nconst hold = 200000\n")
	git("commit", "-q", "-am", "hold longer")
	code, out = run("ab")
	t.Logf("A/B:\n%s", out)
	// A latency regression fails the build; the p99 row reports its change
	// and p-value whether or not p99 is the metric that crossed the line
	// (under the probes its spread is wide: a run may flag p50 and p90).
	if code != 1 || !regexp.MustCompile(`REGRESSION: .*sched latency p\d+(\.\d)? \+`).MatchString(out) || !strings.Contains(out, "failing the build") {
		t.Errorf("A/B: exit %d, want 1 with a latency regression", code)
	}
	// benchstat's convention: the change when significant, "~" when not;
	// the p-value either way.
	if !regexp.MustCompile(`sched latency p99 .* ([+-]\d+\.\d+%|~) \(p=\d\.\d+ n=10\)`).MatchString(out) {
		t.Errorf("A/B: the p99 row does not report its change and p-value")
	}
}

// schedloadSays is what schedload prints of itself: its summary line and,
// with -metrics, the runtime's own goroutines created.
type schedloadSays struct {
	pairs, rounds, goroutines int   // its summary: main's goroutines
	created                   int64 // /sched/goroutines-created, -1 if not printed
}

func parseSchedload(t *testing.T, out string) schedloadSays {
	t.Helper()
	s := schedloadSays{created: -1}
	m := regexp.MustCompile(`schedload: pairs=(\d+) rounds=(\d+) .* goroutines=(\d+) `).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no schedload summary in %q", out)
	}
	fmt.Sscan(m[1], &s.pairs)
	fmt.Sscan(m[2], &s.rounds)
	fmt.Sscan(m[3], &s.goroutines)
	if m := regexp.MustCompile(`(?m)^goroutines-created (\d+)$`).FindStringSubmatch(out); m != nil {
		fmt.Sscan(m[1], &s.created)
	}
	return s
}

// The eBPF measurer on one run of schedload: every goroutine the runtime
// counted created (its own /sched/goroutines-created, printed at its end),
// the ping-pong's parks on channels (one per message), latencies in order,
// and the record's metrics those of the kernel's aggregates (nothing is
// streamed).
func TestCIEBPFMeasurer(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "schedload", testtarget.Go126, testtarget.Plain)
	outPath := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := &ebpfMeasurer{}
	o, err := m.Run(context.Background(), []string{bin, "-rounds", "2000", "-iters", "100", "-metrics"}, f, f)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	b, _ := os.ReadFile(outPath)
	target := parseSchedload(t, string(b))
	if o.ExitStatus != 0 || o.Signal != "" || o.GoVersion != "go1.26.8" || m.lost != 0 {
		t.Fatalf("outcome %+v, %d events lost", o, m.lost)
	}
	l := o.Metrics.SchedLatency
	t.Logf("%d latencies: p50 %d p90 %d p99 %d p99.9 %d max %d ns; goroutines %d, threads %d; blocked %v",
		l.Count, l.P50NS, l.P90NS, l.P99NS, l.P999NS, l.MaxNS, *o.Metrics.GoroutinesCreated, *o.Metrics.ThreadsCreated, o.Metrics.BlockedNSByReason)
	if l.Count == 0 || !(l.P50NS <= l.P90NS && l.P90NS <= l.P99NS && l.P99NS <= l.P999NS && l.P999NS <= l.MaxNS) || l.P50NS <= 0 {
		t.Errorf("latency %+v: want a non-empty distribution with ordered quantiles", l)
	}
	if target.created < 0 || *o.Metrics.GoroutinesCreated != target.created {
		t.Errorf("goroutines created %d, the runtime counted %d", *o.Metrics.GoroutinesCreated, target.created)
	}
	if *o.Metrics.GoroutinesCreated <= int64(target.goroutines) {
		t.Errorf("goroutines created %d: want main's %d and the runtime's own", *o.Metrics.GoroutinesCreated, target.goroutines)
	}
	if *o.Metrics.ThreadsCreated < 1 {
		t.Errorf("threads created %d: GOMAXPROCS 2 needs another thread", *o.Metrics.ThreadsCreated)
	}
	waits := map[string][2]uint64{}
	for r, w := range m.agg.Waits {
		waits[m.waitReasons.Name(r)] = [2]uint64{w.Parks, w.TotalNs}
	}
	recv, send := waits["chan receive"], waits["chan send"]
	// Each message on an unbuffered channel parks exactly one side: the
	// one that came first (the runtime never spins on a channel). An
	// exchange is two messages, ping and pong; closing ping wakes each
	// ponger from its last receive; the runtime and the standard library
	// may wait on a channel of their own once or twice.
	exchanges := uint64(target.pairs * target.rounds)
	most := 2*exchanges + uint64(target.pairs) + 8
	t.Logf("%d exchanges: %d parks on chan receive (%v), %d on chan send", exchanges, recv[0], time.Duration(recv[1]), send[0])
	if recv[0] == 0 || recv[1] == 0 {
		t.Errorf("chan receive %v: want parks and their time", recv)
	}
	if parks := recv[0] + send[0]; parks < 2*exchanges || parks > most {
		t.Errorf("%d parks on channels, want one per message: %d..%d", parks, 2*exchanges, most)
	}
	if got := o.Metrics.BlockedNSByReason["chan receive"]; got != int64(recv[1]) {
		t.Errorf("recorded chan receive %d ns, the kernel's aggregate %d", got, recv[1])
	}
	// Nothing was streamed: every figure came from the kernel's aggregates.
	if st := m.agg; st == nil || st.SchedLatency.Total() != l.Count {
		t.Errorf("latency count %d is not the aggregate's", l.Count)
	}

	// The end of ctx (ci run's timeout) kills the command; what ran is
	// measured. The timeout leaves room for the plan and the attach, which
	// take up to a second on a loaded machine, before the target runs.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	m = &ebpfMeasurer{}
	o, err = m.Run(ctx, []string{bin, "-rounds", "100000000"}, nil, nil)
	if err != nil || o.ExitStatus != -1 || o.Signal != "SIGKILL" || o.Metrics.SchedLatency.Count == 0 {
		t.Errorf("killed at its timeout: err %v, outcome %+v", err, o)
	}
}

// ci run's default method is eBPF (we are root): every run measured under
// the probes, with wait reasons, and the goroutines the runtime counted.
func TestCIRunEBPF(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "schedload", testtarget.Go126, testtarget.Plain)
	args := []string{"-rounds", "1000", "-iters", "100"}
	// What the runtime itself counts, for these flags.
	b, err := exec.Command(bin, append(args, "-metrics")...).Output()
	if err != nil {
		t.Fatal(err)
	}
	target := parseSchedload(t, string(b))
	out := filepath.Join(t.TempDir(), "ebpf.json")
	code, _, stderr := runCIMain(t, append([]string{"ci", "run", "-n", "6", "-o", out, "--", bin}, args...)...)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "gmpwatch ci: measuring with gmpwatch's eBPF probes") || strings.Contains(stderr, "not allowed") {
		t.Errorf("stderr does not say eBPF:\n%s", stderr)
	}
	rec, err := regress.LoadRecord(out)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Method != regress.MethodEBPF || len(rec.Runs) != 6 || rec.GoVersion != "go1.26.8" {
		t.Fatalf("record: method %s, %d runs, %s", rec.Method, len(rec.Runs), rec.GoVersion)
	}
	for _, run := range rec.Runs {
		mt := run.Metrics
		l := mt.SchedLatency
		if run.Failed() || l.Count == 0 || l.P50NS <= 0 || l.P999NS < l.P99NS || l.MaxNS < l.P999NS {
			t.Errorf("run %d: %+v", run.Index, run)
		}
		if mt.GoroutinesCreated == nil || *mt.GoroutinesCreated != target.created {
			t.Errorf("run %d: goroutines created %v, the runtime counts %d", run.Index, mt.GoroutinesCreated, target.created)
		}
		if mt.ThreadsCreated == nil || *mt.ThreadsCreated < 1 {
			t.Errorf("run %d: threads created %v", run.Index, mt.ThreadsCreated)
		}
		if mt.BlockedNSByReason["chan receive"] <= 0 {
			t.Errorf("run %d: blocked by reason %v: want chan receive", run.Index, mt.BlockedNSByReason)
		}
	}
}

// Without the privilege to load BPF, ci run falls back to the runtime's
// histogram, says so, and still measures: gmpwatch run as nobody.
func TestCIRunFallback(t *testing.T) {
	testtarget.RequireRoot(t)
	gm := gmpwatchBinary(t)
	// A directory the unprivileged user can enter and write (t.TempDir's
	// parent is 0700).
	dir, err := os.MkdirTemp("", "gmpwatch-ci-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(testtarget.Build(t, "schedload", testtarget.Go126, testtarget.Plain))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "schedload")
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "new.json")
	cmd := exec.Command(gm, "ci", "run", "-n", "2", "-o", out, "--", bin, "-rounds", "500", "-iters", "50")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("ci run as nobody: %v\n%s", err, errb.String())
	}
	s := errb.String()
	t.Logf("as nobody:\n%s", s)
	if !regexp.MustCompile(`(?m)^gmpwatch ci: eBPF not allowed \(.*run as root, or grant CAP_BPF and CAP_PERFMON.*\): measuring from the runtime's own scheduling-latency histogram`).MatchString(s) {
		t.Errorf("stderr does not say it fell back, and why")
	}
	rec, err := regress.LoadRecord(out)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Method != regress.MethodRuntimeHistogram || len(rec.Runs) != 2 {
		t.Fatalf("record: method %s, %d runs", rec.Method, len(rec.Runs))
	}
	for _, run := range rec.Runs {
		if run.Failed() || run.Metrics.SchedLatency.Count == 0 || run.Metrics.BlockedNSByReason != nil {
			t.Errorf("run %d: %+v", run.Index, run)
		}
	}

	// With --method ebpf there is no fallback: one line, exit 2.
	cmd = exec.Command(gm, "ci", "run", "-n", "2", "--method", "ebpf", "-o", out, "--", bin, "-rounds", "500", "-iters", "50")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	errb.Reset()
	cmd.Stderr = &errb
	err = cmd.Run()
	last := strings.TrimSpace(errb.String())
	last = last[strings.LastIndex(last, "\n")+1:]
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(last, "could not be measured") || !strings.Contains(last, "CAP_BPF") {
		t.Errorf("--method ebpf as nobody: %v\n%s", err, errb.String())
	}
}
