package ebpf

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/budget"
	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// schedulerPrograms are the scheduler's programs (the live view's core).
var schedulerPrograms = []string{"schedule", "execute", "gopark", "ready", "goschedImpl", "goexit0", "newproc_runqput", "newm", "injectglist"}

// testCalibration is the calibration cached for the tests, per boot.
func testCalibration(t testing.TB) *Calibration {
	t.Helper()
	c, err := Calibrated(filepath.Join(os.TempDir(), "gmpwatch-test-calibration.json"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestWindowedStorm traces the scheduler storm (GOMAXPROCS=2) for 10 s
// under the default budget: the hot scheduler probes must be windowed (duty
// below 100%), the plan stay within the budget, the measured cost within a
// generous multiple of it (the first window, which measures the rates with
// every probe on and then detaches the hot ones, costs about 0.4 s of full
// tracing), and the windows still deliver events.
func TestWindowedStorm(t *testing.T) {
	testtarget.RequireRoot(t)
	cal := testCalibration(t)
	bin := testtarget.Build(t, "storm", testtarget.Go126, testtarget.Plain)
	proc := testtarget.Start(t, bin, "-wait", "-d", "10s")
	proc.WaitLine(t, "ready", 10*time.Second)
	p, err := plan.FromProcess(proc.PID())
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Attach(p, Options{Programs: schedulerPrograms})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var opens, closes atomic.Int64
	w, err := NewWindowed(tr, p, WindowOptions{Budget: budget.Default(), Calibration: cal,
		OnWindow: func(open bool, mono time.Duration) {
			if open {
				opens.Add(1)
			} else {
				closes.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var events atomic.Int64
	ran := make(chan error, 2)
	go func() { ran <- tr.Run(ctx, func(*event.Event) { events.Add(1) }) }()
	go func() { ran <- w.Run(ctx) }()
	proc.Stdin.Write([]byte("go\n"))
	line := proc.WaitLine(t, "ops", 30*time.Second)
	cancel()
	for i := 0; i < 2; i++ {
		if err := <-ran; err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	r := w.Report()
	st := tr.Stats()
	t.Logf("%s; %s", line, r.Line())
	t.Logf("allowed %.4f cores, measured %.4f, target %.2f cores; window %.1f+%.0f ms / period %.0f ms; events %d lost %d; windows %d",
		r.AllowedCores, r.MeasuredCores, r.TargetCores, r.WindowMs, r.OpenCloseMs, r.PeriodMs, events.Load(), st.Lost, opens.Load())
	for _, pr := range r.Programs {
		t.Logf("  %-16s %-8s hits %8d rate %10.0f/s full %.3f cores", pr.Name, pr.Mode, pr.Hits, pr.RatePerSec, pr.FullCores)
	}
	if r.DutyCycle <= 0 || r.DutyCycle >= 1 {
		t.Fatalf("duty cycle %v, want below 100%% on a storm", r.DutyCycle)
	}
	// The storm keeps its Ps busy, but a loaded machine gives it less than
	// the 2 cores it asks for; the allowance is then the floor's.
	if r.TargetCores < 0.1 {
		t.Fatalf("target's own CPU %.2f cores: the storm should keep its Ps busy", r.TargetCores)
	}
	if r.PlannedDuty > 0.02*1.0001 || r.EstimatedCores > r.AllowedCores*1.0001 {
		t.Fatalf("plan over the budget: duty %v, estimated %.4f cores, allowed %.4f", r.PlannedDuty, r.EstimatedCores, r.AllowedCores)
	}
	if r.DutyCycle > 0.2 {
		t.Fatalf("windows open %.1f%% of the time", r.DutyCycle*100)
	}
	if r.MeasuredCores > 4*r.AllowedCores {
		t.Fatalf("probes cost %.4f cores, budget %.4f", r.MeasuredCores, r.AllowedCores)
	}
	if opens.Load() < 1 || closes.Load() != opens.Load() {
		t.Fatalf("%d windows opened, %d closed", opens.Load(), closes.Load())
	}
	if events.Load() == 0 || st.Hits["execute"] == 0 {
		t.Fatalf("no events in the windows: %d events, hits %v", events.Load(), st.Hits)
	}
	var sampled bool
	for _, s := range r.Sampled {
		sampled = sampled || s.Figure == "sched_latency"
	}
	if !sampled {
		t.Fatalf("sched latency not reported as sampled: %+v", r.Sampled)
	}
}
