package ebpf

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/budget"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// probeByte reads the first byte of each probed instruction in process pid.
func probeByte(t *testing.T, pid int, p *plan.Plan, probes []plan.Probe) []byte {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := make([]byte, len(probes))
	for i, pr := range probes {
		if _, err := f.ReadAt(out[i:i+1], int64(pr.Address+p.LoadBias)); err != nil {
			t.Fatalf("read %s in %d: %v", pr.Symbol, pid, err)
		}
	}
	return out
}

// TestAttachOnlyTarget runs two processes of the same binary and attaches
// to one, with each link kind: the breakpoints are in the target's memory
// only (the other process never traps), and gone from it after Close.
func TestAttachOnlyTarget(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.PIE)
	for _, kind := range []LinkKind{UprobeMultiLinks, PerfLinks} {
		t.Run(string(kind), func(t *testing.T) {
			if kind == UprobeMultiLinks && !haveUprobeMulti() {
				testtarget.SkipOrFail(t, "no uprobe_multi links on this kernel")
			}
			a := testtarget.Start(t, bin, "-n", "1")
			b := testtarget.Start(t, bin, "-n", "1")
			a.WaitLine(t, "ready", 10*time.Second)
			b.WaitLine(t, "ready", 10*time.Second)
			pa, err := plan.FromProcess(a.PID())
			if err != nil {
				t.Fatal(err)
			}
			pb, err := plan.FromProcess(b.PID())
			if err != nil {
				t.Fatal(err)
			}
			tr, err := Attach(pa, Options{Links: kind, NoStacks: true})
			if err != nil {
				t.Fatal(err)
			}
			if tr.LinkKind() != kind {
				t.Errorf("attached with %s, asked %s", tr.LinkKind(), kind)
			}
			probes := tr.Probes()
			before := probeByte(t, b.PID(), pb, probes)
			inA := probeByte(t, a.PID(), pa, probes)
			for i, pr := range probes {
				if inA[i] != int3 {
					t.Errorf("%s: byte %#x in the target, want int3", pr.Symbol, inA[i])
				}
				if before[i] == int3 {
					t.Errorf("%s: int3 in the other process of the same binary", pr.Symbol)
				}
			}
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			after := probeByte(t, a.PID(), pa, probes)
			for i, pr := range probes {
				if after[i] != before[i] {
					t.Errorf("%s: byte %#x in the target after Close, want the file's %#x", pr.Symbol, after[i], before[i])
				}
			}
		})
	}
}

// TestWindowsDetach: under a budget on the storm, every time a window has
// closed the windowed programs' breakpoints are out of the target's memory
// and the always-on ones still in.
func TestWindowsDetach(t *testing.T) {
	testtarget.RequireRoot(t)
	cal := testCalibration(t)
	bin := testtarget.Build(t, "storm", testtarget.Go126, testtarget.Plain)
	proc := testtarget.Start(t, bin, "-d", "12s")
	time.Sleep(200 * time.Millisecond)
	p, err := plan.FromProcess(proc.PID())
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Attach(p, Options{Programs: schedulerPrograms, NoStacks: true, NoAggregate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	probes := tr.Probes()
	var (
		w       *Windowed
		mu      sync.Mutex
		closes  int
		checked int
		errs    []string
	)
	// Periods of at most a second, whatever the load: the test is about
	// what a closed window leaves in memory, not about the budget.
	w, err = NewWindowed(tr, p, WindowOptions{Budget: budget.Default(), Calibration: cal, MaxPeriod: time.Second,
		OnWindow: func(open bool, _ time.Duration) {
			if open {
				return
			}
			modes := map[string]budget.Mode{}
			for _, pr := range w.Report().Programs {
				modes[pr.Name] = pr.Mode
			}
			bytes := probeByte(t, proc.PID(), p, probes)
			mu.Lock()
			defer mu.Unlock()
			closes++
			for i, pr := range probes {
				switch modes[pr.Program] {
				case budget.Windowed:
					checked++
					if bytes[i] == int3 {
						errs = append(errs, fmt.Sprintf("window %d closed with %s still probed", closes, pr.Program))
					}
				case budget.Always:
					if bytes[i] != int3 {
						errs = append(errs, fmt.Sprintf("window %d: always-on %s not probed", closes, pr.Program))
					}
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range errs {
		t.Error(e)
	}
	if closes < 2 || checked == 0 {
		t.Fatalf("%d windows closed, %d windowed probes checked: want windows on a storm", closes, checked)
	}
	r := w.Report()
	t.Logf("%d windows; window %.0f+%.0f ms every %.0f ms", closes, r.WindowMs, r.OpenCloseMs, r.PeriodMs)
}
