package budget

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]Spec{
		"2%":   {Share: 0.02, FloorCores: DefaultFloorCores},
		"0.5%": {Share: 0.005, FloorCores: DefaultFloorCores},
		"0.1":  {Share: 0.1, FloorCores: DefaultFloorCores},
		"max":  {Max: true, Share: 1, FloorCores: DefaultFloorCores},
		"MAX":  {Max: true, Share: 1, FloorCores: DefaultFloorCores},
	} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "0%", "-1%", "150%", "NaN"} {
		if _, err := Parse(bad); !errors.Is(err, ErrBadBudget) {
			t.Errorf("Parse(%q) error %v, want ErrBadBudget", bad, err)
		}
	}
	if s := Default().String(); s != "2%" {
		t.Errorf("default renders %q", s)
	}
}

// storm is a synthetic scheduler storm on 2 cores: 1.5M hits/s on the hot
// programs at 7 µs each would cost about 10 cores if always attached.
func storm() []Program {
	return []Program{
		{"schedule", 400e3, 7000},
		{"execute", 400e3, 7000},
		{"gopark", 300e3, 7000},
		{"ready", 300e3, 7000},
		{"goexit0", 50e3, 7000},
		{"newproc_runqput", 50e3, 7000},
		{"newm", 0.5, 7000},
		{"injectglist", 20, 7000},
	}
}

func TestDecideStorm(t *testing.T) {
	d := Decide(Default(), 2, storm())
	allowed := 0.02 * 2
	if math.Abs(d.AllowedCores-allowed) > 1e-12 {
		t.Fatalf("allowed %v cores, want %v", d.AllowedCores, allowed)
	}
	if d.EstimatedCores > allowed*1.000001 {
		t.Fatalf("estimated %v cores over the allowance %v", d.EstimatedCores, allowed)
	}
	if d.Duty <= 0 || d.Duty >= 0.1 {
		t.Fatalf("duty %v, want a small positive share", d.Duty)
	}
	for _, n := range []string{"newm", "injectglist"} {
		if d.Modes[n] != Always {
			t.Errorf("%s (cheap) is %s, want always", n, d.Modes[n])
		}
	}
	for _, n := range []string{"schedule", "execute", "gopark", "ready"} {
		if d.Modes[n] != Windowed {
			t.Errorf("%s (hot) is %s, want windowed", n, d.Modes[n])
		}
	}
	// The duty is what the allowance leaves for the hot programs.
	var always, hot float64
	for _, p := range storm() {
		if d.Modes[p.Name] == Always {
			always += p.Cores()
		} else {
			hot += p.Cores()
		}
	}
	if want := (allowed - always) / hot; math.Abs(d.Duty-want) > 1e-12 {
		t.Fatalf("duty %v, want %v", d.Duty, want)
	}
}

func TestDecideQuietAndFloor(t *testing.T) {
	// A quiet program: 1000 hits/s at 7 µs = 0.007 cores, under the 1% floor
	// even though the target itself uses 0.05 cores (2% would be 0.001).
	quiet := []Program{{"execute", 500, 7000}, {"ready", 500, 7000}}
	d := Decide(Default(), 0.05, quiet)
	if d.Duty != 1 || d.Modes["execute"] != Always || d.Modes["ready"] != Always {
		t.Fatalf("quiet program not traced in full: %+v", d)
	}
	// Ten times the rate no longer fits under the floor.
	loud := []Program{{"execute", 5000, 7000}, {"ready", 5000, 7000}}
	d = Decide(Default(), 0.05, loud)
	if d.Duty >= 1 || d.EstimatedCores > DefaultFloorCores*1.000001 {
		t.Fatalf("loud program: %+v", d)
	}
	// 0.07 cores at full tracing, 0.01 allowed: the cost alone would allow
	// a 14% duty; the windows stay open at most the budget's 2%.
	if d.Duty != 0.02 {
		t.Fatalf("loud program: duty %v, want the 2%% cap", d.Duty)
	}
}

func TestDecideMaxAndUnknown(t *testing.T) {
	d := Decide(Spec{Max: true}, 2, storm())
	if d.Duty != 1 || len(d.Windowed()) != 0 || len(d.AlwaysOn()) != len(storm()) {
		t.Fatalf("max: %+v", d)
	}
	// Unknown rates are windowed and priced as the whole allowance.
	ps := []Program{{"execute", math.NaN(), 7000}, {"newm", 1, 7000}}
	d = Decide(Default(), 1, ps)
	if d.Modes["execute"] != Windowed || d.Modes["newm"] != Always {
		t.Fatalf("unknown: %+v", d)
	}
	if d.Duty <= 0 || d.Duty >= 1 || d.EstimatedCores > d.AllowedCores*1.000001 {
		t.Fatalf("unknown: duty %v, est %v, allowed %v", d.Duty, d.EstimatedCores, d.AllowedCores)
	}
}

func TestSchedule(t *testing.T) {
	const ms = time.Millisecond
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	w, p, a := Schedule(0.25, 0, 200*ms, 5*ms, 5*time.Second)
	if w != 50*ms || p != 200*ms || a != 0.25 {
		t.Fatalf("0.25: %v %v %v", w, p, a)
	}
	// 1%: a 2 ms window is too short; stretch the period to 500 ms.
	w, p, a = Schedule(0.01, 0, 200*ms, 5*ms, 5*time.Second)
	if w != 5*ms || p != 500*ms || !near(a, 0.01) {
		t.Fatalf("0.01: %v %v %v", w, p, a)
	}
	// Opening and closing takes 95 ms: at 1%, 10 s periods.
	w, p, a = Schedule(0.01, 95*ms, 200*ms, 5*ms, 30*time.Second)
	if w != 5*ms || p != 10*time.Second || !near(a, 0.01) {
		t.Fatalf("0.01 with overhead: %v %v %v", w, p, a)
	}
	// 50% with 95 ms of overhead: the window shrinks by it.
	w, p, a = Schedule(0.5, 95*ms, 200*ms, 5*ms, 30*time.Second)
	if w != 5*ms || p != 200*ms || !near(a, 0.5) {
		t.Fatalf("0.5 with overhead: %v %v %v", w, p, a)
	}
	// Tiny duty: the minimum window every max period, and the real duty.
	w, p, a = Schedule(1e-5, 0, 200*ms, 5*ms, 5*time.Second)
	if w != 5*ms || p != 5*time.Second || !near(a, 0.001) {
		t.Fatalf("1e-5: %v %v %v", w, p, a)
	}
	if w, p, a := Schedule(1, 0, time.Second, ms, time.Second); w != p || a != 1 {
		t.Fatalf("1: %v %v %v", w, p, a)
	}
}

// simulate runs the controller against a synthetic target whose programs
// fire at fixed rates, for n periods, and returns the controller.
func simulate(t *testing.T, spec Spec, progs []Program, ownCores float64, n int) *Controller {
	return simulateOverhead(t, spec, progs, ownCores, n, 0)
}

// simulateOverhead is simulate where opening and closing a window keeps
// the probes attached for overhead more than the window asked for.
func simulateOverhead(t *testing.T, spec Spec, progs []Program, ownCores float64, n int, overhead time.Duration) *Controller {
	t.Helper()
	costs := map[string]float64{}
	for _, p := range progs {
		costs[p.Name] = p.CostNs
	}
	c := NewController(Config{Spec: spec, CostNs: costs, Calibration: "synthetic"})
	for i := 0; i < n; i++ {
		window, period, _ := c.Schedule()
		dec := c.Decision()
		o := Observation{Elapsed: period, Hits: map[string]uint64{}, Attached: map[string]time.Duration{}}
		if len(dec.Windowed()) > 0 {
			window += overhead
			o.Window, o.OpenClose = window, overhead
		}
		var costIn, costOut float64
		for _, p := range progs {
			att := period
			if dec.Modes[p.Name] == Windowed {
				att = window
			}
			h := uint64(p.Rate * att.Seconds())
			o.Hits[p.Name] = h
			o.Attached[p.Name] = att
			if dec.Modes[p.Name] == Windowed {
				costIn += float64(h) * p.CostNs
			} else {
				costOut += float64(h) * p.CostNs
			}
		}
		own := ownCores * float64(period)
		o.TargetCPU = time.Duration(own + costIn + costOut)
		o.TargetCPUInWindow = time.Duration(ownCores*float64(o.Window) + costIn)
		c.Observe(o)
	}
	return c
}

// TestEstimateAgainstPlannedRate: a target going idle after the last plan
// (a storm at its end) does not turn the plan's estimate into a share of
// the new, lower rate.
func TestEstimateAgainstPlannedRate(t *testing.T) {
	c := simulate(t, Default(), storm(), 2, 30)
	before := c.Report().EstimatedCost
	c.Observe(Observation{Elapsed: time.Second, Hits: map[string]uint64{}, Attached: map[string]time.Duration{},
		TargetCPU: 10 * time.Millisecond})
	r := c.Report()
	if r.TargetCores > 1.5 {
		t.Fatalf("target's CPU rate %v cores after an idle second, want it to drop from 2", r.TargetCores)
	}
	if r.EstimatedCost > 0.02*1.0001 {
		t.Fatalf("estimated cost %v after the target went idle (was %v): want the plan's share, at most 2%%", r.EstimatedCost, before)
	}
}

func TestControllerStaysWithinBudget(t *testing.T) {
	c := simulate(t, Default(), storm(), 2, 30)
	r := c.Report()
	if r.DutyCycle >= 1 || r.DutyCycle <= 0 {
		t.Fatalf("duty %v", r.DutyCycle)
	}
	// The first period windows everything at an unknown rate; after that
	// the cost converges under the budget: 2% of 2 cores, with 20% slack
	// for the first, blind period.
	if r.MeasuredCores > 0.04*1.2 {
		t.Fatalf("measured %v cores, budget 0.04: %+v", r.MeasuredCores, r)
	}
	if math.Abs(r.TargetCores-2) > 0.01 {
		t.Fatalf("target's own CPU %v cores, want 2", r.TargetCores)
	}
	if r.EstimatedCost > 0.02*1.0001 || r.EstimatedCost < 0.015 {
		t.Fatalf("estimated cost %v, want about the 2%% budget", r.EstimatedCost)
	}
	var sched bool
	for _, s := range r.Sampled {
		if s.Figure == "sched_latency.count" {
			sched = true
			if math.Abs(s.Scale-1/r.DutyCycle) > 1e-9 {
				t.Fatalf("scale %v, duty %v", s.Scale, r.DutyCycle)
			}
		}
	}
	if !sched {
		t.Fatalf("sched latency not reported sampled: %+v", r.Sampled)
	}
	var full bool
	for _, f := range r.Full {
		full = full || f == "threads_created"
	}
	if !full {
		t.Fatalf("threads_created (newm, cheap) not in full: %+v", r.Full)
	}
	b, err := json.Marshal(r)
	if err != nil || !strings.Contains(string(b), `"duty_cycle"`) {
		t.Fatalf("json %s %v", b, err)
	}
	if l := r.Line(); !strings.Contains(l, "budget 2%") || !strings.Contains(l, "duty") {
		t.Fatalf("line %q", l)
	}
}

func TestControllerMaxAndQuiet(t *testing.T) {
	r := simulate(t, Spec{Max: true, Share: 1}, storm(), 2, 5).Report()
	if r.DutyCycle != 1 || len(r.Sampled) != 0 {
		t.Fatalf("max: %+v", r)
	}
	quiet := []Program{{"execute", 200, 7000}, {"ready", 200, 7000}, {"newm", 0, 7000}}
	r = simulate(t, Default(), quiet, 0.01, 10).Report()
	if r.DutyCycle != 1 || len(r.Sampled) != 0 {
		t.Fatalf("quiet: duty %v sampled %v", r.DutyCycle, r.Sampled)
	}
}

// A target that gets busy: the controller moves from full tracing to
// windows, and back when it calms down.
func TestControllerFollowsRate(t *testing.T) {
	costs := map[string]float64{"execute": 7000, "newm": 7000}
	c := NewController(Config{Spec: Default(), CostNs: costs})
	step := func(rate float64) Decision {
		w, p, _ := c.Schedule()
		att := p
		if c.Decision().Modes["execute"] == Windowed {
			att = w
		}
		return c.Observe(Observation{Elapsed: p, Window: att,
			Hits:      map[string]uint64{"execute": uint64(rate * att.Seconds())},
			Attached:  map[string]time.Duration{"execute": att, "newm": p},
			TargetCPU: time.Duration(float64(p) * 0.5)})
	}
	var d Decision
	for i := 0; i < 5; i++ {
		d = step(100)
	}
	if d.Duty != 1 {
		t.Fatalf("quiet phase: %+v", d)
	}
	for i := 0; i < 5; i++ {
		d = step(1e6)
	}
	if d.Duty >= 0.01 {
		t.Fatalf("busy phase: %+v", d)
	}
	for i := 0; i < 14; i++ {
		d = step(100)
	}
	if d.Duty != 1 {
		t.Fatalf("calm again: %+v", d)
	}
}

// Windows that take 300 ms to open and close: the controller stretches the
// period so that the cost and the open time stay within the budget.
func TestControllerWithOpenCloseOverhead(t *testing.T) {
	c := simulateOverhead(t, Default(), storm(), 2, 20, 300*time.Millisecond)
	r := c.Report()
	if r.OpenCloseMs != 300 {
		t.Fatalf("open-close %v ms", r.OpenCloseMs)
	}
	if r.PeriodMs < 10000 {
		t.Fatalf("period %v ms: too short for 320 ms windows at 2%%", r.PeriodMs)
	}
	if r.DutyCycle > 0.02*1.3 || r.MeasuredCores > 0.04*1.3 {
		t.Fatalf("duty %v, measured %v cores (budget 0.04)", r.DutyCycle, r.MeasuredCores)
	}
}
