package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/regress"
)

func init() {
	register(&command{
		name:    "ci",
		usage:   "ci run|compare ...",
		summary: "scheduler-latency regression check for CI (see gmpwatch ci help)",
		run:     runCI,
	})
}

const ciUsage = `Usage:
  gmpwatch ci run [-n 10] -o new.json [--baseline-cmd 'CMD' [--baseline-out base.json]] [--timeout 10m]
                  [--method auto|ebpf|runtime-histogram] -- CMD ARGS
      Run CMD N times (interleaved with the baseline command when given) and
      record, per run, its scheduling-latency distribution (p50, p90, p99,
      p99.9, max, count), goroutines and threads created, and time blocked
      by wait reason. CMD must be the Go program itself: for benchmarks,
      build them with go test -c and run the test binary
      (-test.run='^$' -test.bench=. -test.benchtime=100x). The runs are
      measured under gmpwatch's eBPF probes; where eBPF is not allowed, auto
      (the default) falls back to the runtime's own latency histogram, read
      from each run's memory as it exits (no wait reasons).
  gmpwatch ci compare BASE.json NEW.json [--threshold 10%] [--threshold-metric p99=5%]...
                      [--format text|benchstat|markdown|junit]
      Compare two records (median ± 95% CI, % change, Mann-Whitney U p-value,
      ~ when not significant). Exit 1 on a significant regression beyond the
      threshold, 0 otherwise, 2 when there are too few runs for a verdict.
`

func runCI(ctx context.Context, env *cmdEnv, args []string) error {
	if len(args) == 0 {
		return usageErrorf("want a subcommand: run or compare (gmpwatch ci help)")
	}
	switch args[0] {
	case "run":
		return runCIRun(ctx, env, args[1:])
	case "compare":
		return runCICompare(env, args[1:])
	case "help", "-h", "--help", "-help":
		fmt.Fprint(env.stdout, ciUsage)
		return nil
	}
	return usageErrorf("unknown ci subcommand %q: want run or compare", args[0])
}

// thresholdList is the repeatable --threshold-metric NAME=PCT flag.
type thresholdList map[string]float64

func (t thresholdList) String() string {
	var parts []string
	for k, v := range t {
		parts = append(parts, fmt.Sprintf("%s=%g%%", k, v*100))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (t thresholdList) Set(s string) error {
	for _, item := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(item, "=")
		if !ok || k == "" {
			return fmt.Errorf("bad --threshold-metric %q: want METRIC=PCT, such as p99=5%%", item)
		}
		f, err := regress.ParseThreshold(v)
		if err != nil {
			return err
		}
		t[k] = f
	}
	return nil
}

type thresholdFlag struct{ v *float64 }

func (t thresholdFlag) String() string {
	if t.v == nil {
		return ""
	}
	return fmt.Sprintf("%g%%", *t.v*100)
}

func (t thresholdFlag) Set(s string) error {
	f, err := regress.ParseThreshold(s)
	if err != nil {
		return err
	}
	*t.v = f
	return nil
}

func runCICompare(env *cmdEnv, args []string) error {
	fs := flag.NewFlagSet("ci compare", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	opt := regress.Options{Threshold: regress.DefaultThreshold, MetricThresholds: map[string]float64{}}
	fs.Var(thresholdFlag{&opt.Threshold}, "threshold", "smallest worsening that counts, such as 10%")
	fs.Var(thresholdList(opt.MetricThresholds), "threshold-metric", "per-metric threshold METRIC=PCT (repeatable; PCT may be off)")
	format := fs.String("format", "text", "text, benchstat, markdown or junit")
	fs.Float64Var(&opt.Alpha, "alpha", regress.DefaultAlpha, "family-wise significance level")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageErrorf("%v (usage: gmpwatch ci compare BASE.json NEW.json [--threshold 10%%] [--format text|benchstat|markdown|junit])", err)
	}
	if len(pos) != 2 {
		return usageErrorf("want two records, BASE.json and NEW.json, have %d arguments", len(pos))
	}
	if !validFormat(*format) {
		return usageErrorf("unknown format %q: want %s", *format, strings.Join(regress.Formats, ", "))
	}
	if opt.Alpha <= 0 || opt.Alpha >= 1 {
		return usageErrorf("--alpha %g: want a level between 0 and 1", opt.Alpha)
	}
	if opt.Threshold == 0 {
		// 0% means "any significant worsening": Options takes 0 as
		// "default", so use the smallest positive threshold instead.
		opt.Threshold = 1e-12
	}
	base, err := regress.LoadRecord(pos[0])
	if err != nil {
		return usageErrorf("%v", err)
	}
	nw, err := regress.LoadRecord(pos[1])
	if err != nil {
		return usageErrorf("%v", err)
	}
	res, err := regress.Compare(base, nw, opt)
	if err != nil {
		if errors.Is(err, regress.ErrFailedRun) {
			printFailedRuns(env.stderr, pos[0], base)
			printFailedRuns(env.stderr, pos[1], nw)
		}
		return &exitError{code: 2, err: err}
	}
	res.BaseName, res.NewName = recordNames(pos[0], pos[1])
	if err := res.Render(env.stdout, *format); err != nil {
		return err
	}
	if code := res.ExitCode(); code != 0 {
		return &exitError{code: code}
	}
	return nil
}

func validFormat(f string) bool {
	for _, g := range regress.Formats {
		if f == g {
			return true
		}
	}
	return false
}

// recordNames names the records in a table: by file name, or by path when
// the file names are the same.
func recordNames(a, b string) (string, string) {
	if filepath.Base(a) != filepath.Base(b) {
		return filepath.Base(a), filepath.Base(b)
	}
	return a, b
}

func printFailedRuns(w io.Writer, path string, r *regress.Record) {
	for _, run := range r.Runs {
		if !run.Failed() {
			continue
		}
		status := fmt.Sprintf("exit status %d", run.ExitStatus)
		if run.Signal != "" {
			status = "killed by " + run.Signal
		}
		if run.Error != "" {
			status += ", " + run.Error
		}
		fmt.Fprintf(w, "%s: run %d failed (%s); its output:\n", path, run.Index, status)
		out := strings.TrimRight(run.Output, "\n")
		if out == "" {
			out = "(no output)"
		}
		for _, line := range strings.Split(out, "\n") {
			fmt.Fprintf(w, "  | %s\n", line)
		}
	}
}

type failedRun struct {
	*regress.Run
	command []string
}

// lastRun returns the failed run that ended ci run, if any.
func lastRun(recs ...*regress.Record) *failedRun {
	for _, rec := range recs {
		if rec == nil {
			continue
		}
		if f := rec.FirstFailure(); f != nil {
			return &failedRun{f, rec.Command}
		}
	}
	return nil
}

// defaultBaselineOut puts the baseline record beside the new one:
// new.json -> base.json, x.json -> x.base.json.
func defaultBaselineOut(out string) string {
	dir, file := filepath.Split(out)
	if file == "new.json" {
		return filepath.Join(dir, "base.json")
	}
	return filepath.Join(dir, strings.TrimSuffix(file, ".json")+".base.json")
}

func runCIRun(ctx context.Context, env *cmdEnv, args []string) error {
	const usage = "usage: gmpwatch ci run [-n 10] -o new.json [--baseline-cmd 'CMD'] -- CMD ARGS"
	fs := flag.NewFlagSet("ci run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	n := fs.Int("n", 10, "runs of each command")
	out := fs.String("o", "", "record of the command's runs (JSON)")
	baseCmd := fs.String("baseline-cmd", "", "baseline command, run interleaved with CMD")
	baseOut := fs.String("baseline-out", "", "record of the baseline's runs (default: beside -o, base.json)")
	method := fs.String("method", "auto", "auto, ebpf or runtime-histogram")
	timeout := fs.Duration("timeout", 0, "end a run that takes longer (0: no limit)")
	// Everything after the first positional argument is the command.
	if err := fs.Parse(args); err != nil {
		return usageErrorf("%v (%s)", err, usage)
	}
	cmd := fs.Args()
	if len(cmd) == 0 {
		return usageErrorf("no command to run (%s)", usage)
	}
	if *out == "" {
		return usageErrorf("-o FILE is required (%s)", usage)
	}
	if *n < 1 {
		return usageErrorf("-n %d: want at least 1 run", *n)
	}
	var base []string
	if *baseCmd != "" {
		var err error
		if base, err = regress.SplitCommand(*baseCmd); err != nil || len(base) == 0 {
			return usageErrorf("bad --baseline-cmd: %v", err)
		}
		if *baseOut == "" {
			*baseOut = defaultBaselineOut(*out)
		}
		if filepath.Clean(*baseOut) == filepath.Clean(*out) {
			return usageErrorf("the baseline record would overwrite %s: give --baseline-out", *out)
		}
	}
	switch *method {
	case "auto", regress.MethodEBPF, regress.MethodRuntimeHistogram:
	default:
		return usageErrorf("unknown --method %q: want auto, ebpf or runtime-histogram", *method)
	}
	// The records take the method the runs used: auto decides at the
	// first run.
	m := &ciMethod{method: *method, notes: env.stderr}
	r := &regress.Runner{N: *n, NewMeasurer: m.newMeasurer, Progress: env.stderr, Timeout: *timeout}
	start := time.Now()
	newRec, baseRec, runErr := r.Run(ctx, cmd, base)
	// Write what was run, failed runs included: they are the evidence.
	if newRec != nil && len(newRec.Runs) > 0 {
		if err := newRec.Save(*out); err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "gmpwatch ci: wrote %s (%d runs)\n", *out, len(newRec.Runs))
	}
	if baseRec != nil && len(baseRec.Runs) > 0 {
		if err := baseRec.Save(*baseOut); err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "gmpwatch ci: wrote %s (%d runs)\n", *baseOut, len(baseRec.Runs))
	}
	if runErr != nil {
		notStarted := regress.ErrNotStarted.Error() + ": "
		if f := lastRun(newRec, baseRec); f != nil && f.Error != "" && (f.ExitStatus == 0 && f.Signal == "" || strings.HasPrefix(f.Error, notStarted)) {
			// The command ran fine but could not be measured, or could
			// not be started under measurement (not a Go program, no
			// such file, eBPF refused with --method ebpf): bad input,
			// one line.
			why := strings.TrimPrefix(strings.TrimPrefix(f.Error, "not measured: "), notStarted)
			return &exitError{code: 2, err: fmt.Errorf("%s could not be measured: %s", strings.Join(f.command, " "), why)}
		}
		if errors.Is(runErr, regress.ErrFailedRun) {
			for _, rec := range []*regress.Record{baseRec, newRec} {
				if rec != nil {
					printFailedRuns(env.stderr, rec.Label, rec)
				}
			}
			return &exitError{code: 1, err: runErr}
		}
		return runErr
	}
	if min := regress.MinRunsFor(newRec); *n < min {
		fmt.Fprintf(env.stderr, "gmpwatch ci: warning: %d runs are too few for ci compare to ever reach a verdict on these metrics (it needs at least %d)\n", *n, min)
	}
	fmt.Fprintf(env.stderr, "gmpwatch ci: %d runs in %v", *n, time.Since(start).Round(time.Millisecond))
	if baseRec != nil {
		fmt.Fprintf(env.stderr, "; compare with: gmpwatch ci compare %s %s", *baseOut, *out)
	}
	fmt.Fprintln(env.stderr)
	return nil
}
