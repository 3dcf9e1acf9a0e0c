// Package budget decides how much of the scheduler gmpwatch may trace under
// an overhead budget: the CPU time its probes add to the target as a share of
// the target's own CPU time, with a floor (a share of one core) below which a
// quiet program is traced in full.
//
// Given each probe program's hit rate (hits per second while attached), its
// per-hit cost in the target (calibrated on this machine) and the target's
// own CPU rate, Decide keeps the cheap programs attached all the time and
// gives the hot ones one duty cycle: they are attached together for a window
// of every period, so that what they see in a window is coherent (a goroutine
// made runnable and then run). Controller wraps Decide in a feedback loop fed
// with the counts of each period, and Report says how the figures were
// obtained.
//
// The package is pure: it neither reads processes nor touches BPF.
package budget

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Defaults of a budget.
const (
	// DefaultShare is the default budget: 2% of the target's CPU time.
	DefaultShare = 0.02
	// DefaultFloorCores is the cost always allowed, in cores: 1% of one
	// core. Below it a quiet program is traced in full.
	DefaultFloorCores = 0.01
	// cheapShare is the part of the allowance the always-on programs may
	// take when not everything fits; the rest goes to the windows.
	cheapShare = 0.5
)

// ErrBadBudget: the --overhead value does not parse.
var ErrBadBudget = errors.New("overhead budget must be a percentage such as 2% or max")

// Spec is a budget as the user chose it.
type Spec struct {
	// Max traces every event: no budget.
	Max bool
	// Share is the allowed probe cost as a fraction of the target's own
	// CPU time (0.02 for 2%).
	Share float64
	// FloorCores is the cost always allowed, in cores.
	FloorCores float64
}

// Default returns the default budget (2%, floor 1% of a core).
func Default() Spec { return Spec{Share: DefaultShare, FloorCores: DefaultFloorCores} }

// Parse reads a --overhead value: "max", "2%", "0.5%" or a plain fraction
// such as "0.02". The floor is DefaultFloorCores.
func Parse(s string) (Spec, error) {
	s = strings.TrimSpace(strings.ToLower(s))
	if s == "max" || s == "100%" {
		return Spec{Max: true, Share: 1, FloorCores: DefaultFloorCores}, nil
	}
	pct := strings.HasSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return Spec{}, fmt.Errorf("parse %q: %w", s, ErrBadBudget)
	}
	if pct {
		v /= 100
	}
	if v <= 0 || v > 1 {
		return Spec{}, fmt.Errorf("parse %q: %w (between 0%% and 100%%)", s, ErrBadBudget)
	}
	return Spec{Share: v, FloorCores: DefaultFloorCores}, nil
}

// String renders the spec as Parse reads it.
func (s Spec) String() string {
	if s.Max {
		return "max"
	}
	return strconv.FormatFloat(s.Share*100, 'g', 4, 64) + "%"
}

// Allowed returns the probe cost allowed, in cores, for a target whose own
// CPU rate is targetCores; +Inf for Max.
func (s Spec) Allowed(targetCores float64) float64 {
	if s.Max {
		return math.Inf(1)
	}
	return math.Max(s.Share*math.Max(targetCores, 0), s.FloorCores)
}

// Program is what Decide knows about one probe program.
type Program struct {
	Name string
	// Rate is hits per second while attached; NaN when never measured.
	Rate float64
	// CostNs is the CPU one hit costs the target, in nanoseconds.
	CostNs float64
}

// Cores returns the program's cost when attached all the time, in cores.
func (p Program) Cores() float64 { return p.Rate * p.CostNs * 1e-9 }

// Mode says how a program is attached.
type Mode string

// Modes.
const (
	Always   Mode = "always"   // attached all the time
	Windowed Mode = "windowed" // attached in the windows only
)

// Decision is the plan for the next period.
type Decision struct {
	Modes map[string]Mode
	// Duty is the share of time the windowed programs are attached, in
	// [0, 1]; 1 when nothing is windowed.
	Duty float64
	// AllowedCores is the cost allowed, EstimatedCores the cost expected at
	// this duty cycle (both in cores).
	AllowedCores, EstimatedCores float64
}

// Windowed returns the windowed programs, sorted.
func (d Decision) Windowed() []string { return d.names(Windowed) }

// AlwaysOn returns the always-on programs, sorted.
func (d Decision) AlwaysOn() []string { return d.names(Always) }

func (d Decision) names(m Mode) []string {
	var out []string
	for n, mm := range d.Modes {
		if mm == m {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Decide splits progs into always-on and windowed programs and picks the
// windows' duty cycle so that the estimated cost stays within the budget,
// and the windows are open at most the budget's share of the time.
// targetCores is the target's own CPU rate (without the probes' cost).
// Programs whose rate is unknown (NaN) are windowed and counted as costly
// as the costliest known one, so that a first window measures them.
func Decide(spec Spec, targetCores float64, progs []Program) Decision {
	d := Decision{Modes: map[string]Mode{}, Duty: 1, AllowedCores: spec.Allowed(targetCores)}
	if spec.Max {
		for _, p := range progs {
			d.Modes[p.Name] = Always
			if !math.IsNaN(p.Rate) {
				d.EstimatedCores += p.Cores()
			}
		}
		return d
	}
	var known, unknown []Program
	var total float64
	for _, p := range progs {
		if math.IsNaN(p.Rate) || p.Rate < 0 {
			unknown = append(unknown, p)
			continue
		}
		known = append(known, p)
		total += p.Cores()
	}
	if len(unknown) == 0 && total <= d.AllowedCores {
		for _, p := range progs {
			d.Modes[p.Name] = Always
		}
		d.EstimatedCores = total
		return d
	}
	// Cheapest first into the always-on set, within half the allowance.
	sort.SliceStable(known, func(i, j int) bool { return known[i].Cores() < known[j].Cores() })
	var always, hot float64
	var windowed []Program
	for _, p := range known {
		if always+p.Cores() <= cheapShare*d.AllowedCores {
			always += p.Cores()
			d.Modes[p.Name] = Always
			continue
		}
		windowed = append(windowed, p)
		hot += p.Cores()
	}
	var worst float64
	for _, p := range known {
		worst = math.Max(worst, p.Cores())
	}
	for _, p := range unknown {
		windowed = append(windowed, p)
		hot += math.Max(worst, d.AllowedCores) // assume it costs the whole allowance
	}
	for _, p := range windowed {
		d.Modes[p.Name] = Windowed
	}
	if hot <= 0 {
		d.EstimatedCores = always
		return d
	}
	// The windows are also open at most Share of the time: a target that
	// makes no progress at all while the hot probes are on (a latency-bound
	// one: each hit lengthens its critical path) loses at most the budget.
	d.Duty = math.Min(spec.Share, math.Max(0, (d.AllowedCores-always)/hot))
	d.EstimatedCores = always + d.Duty*hot
	return d
}

// Schedule turns a duty cycle into a window and a period. overhead is the
// time a window stays open beyond what was asked (attaching and detaching
// the probes: the kernel patches each breakpoint in and out, tens of ms
// on a busy target), so the window really open is window + overhead. The
// period is stretched (up to maxPeriod) until window is at least
// minWindow; a duty cycle too small even for that gets minWindow every
// maxPeriod, and actual says the duty cycle the schedule really gives.
// Duty 1 returns window = period.
func Schedule(duty float64, overhead, period, minWindow, maxPeriod time.Duration) (window, per time.Duration, actual float64) {
	if duty >= 1 {
		return period, period, 1
	}
	if w := time.Duration(duty*float64(period)) - overhead; w >= minWindow {
		return w, period, duty
	}
	per = time.Duration(float64(minWindow+overhead) / math.Max(duty, 1e-9))
	per = min(max(per, period), maxPeriod)
	window = max(minWindow, time.Duration(duty*float64(per))-overhead)
	return window, per, math.Min(1, float64(window+overhead)/float64(per))
}
