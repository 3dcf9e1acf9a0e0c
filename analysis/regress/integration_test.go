package regress

import (
	"context"
	"testing"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// A small schedload: about 550 sampled latencies a run, a tenth of them
// spinners waiting for a P.
var smallLoad = []string{"-rounds", "1000", "-iters", "100"}

func runPair(t *testing.T, bin string, n int, baseArgs, newArgs []string) (base, nw *Record) {
	t.Helper()
	r := &Runner{N: n, NewMeasurer: func() Measurer { return &HistogramMeasurer{} }, Method: MethodRuntimeHistogram}
	nw, base, err := r.Run(context.Background(), append([]string{bin}, newArgs...), append([]string{bin}, baseArgs...))
	if err != nil {
		t.Fatal(err)
	}
	return base, nw
}

// The real A/A: the same binary against itself, 10 runs each, interleaved,
// 20 times: at most one alarm (the issue's "no regression in at least 19 of
// 20"). Only the statistics are asserted, never a duration.
func TestRealAA(t *testing.T) {
	bin := testtarget.Build(t, "schedload", testtarget.Go126, testtarget.Plain)
	reps := 20
	if testing.Short() {
		reps = 2
	}
	alarms := 0
	for rep := 0; rep < reps; rep++ {
		base, nw := runPair(t, bin, 10, smallLoad, smallLoad)
		res, err := Compare(base, nw, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode() != 0 {
			alarms++
			t.Logf("repetition %d: false alarm:\n%s", rep, render(t, res, "text"))
		}
	}
	t.Logf("real A/A: %d alarms in %d repetitions of 10 against 10 runs", alarms, reps)
	if alarms > reps/20 {
		t.Errorf("%d false alarms in %d A/A repetitions, want at most %d", alarms, reps, reps/20)
	}
}

// The real A/B (schedload holding the CPU four times longer: exit 1, p99's
// change and p-value printed) goes through the command line:
// TestCIRunCompareAB in cmd/gmpwatch.
