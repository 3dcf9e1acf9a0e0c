package budget

import (
	"math"
	"sort"
	"strconv"
	"time"
)

// Schedule defaults.
const (
	DefaultPeriod    = 200 * time.Millisecond
	DefaultMinWindow = 20 * time.Millisecond
	DefaultMaxPeriod = 2 * time.Minute
	// rateWeight is the weight of the newest period in the rate averages.
	rateWeight = 0.5
)

// Config configures a Controller.
type Config struct {
	Spec Spec
	// CostNs is each program's per-hit cost in the target, nanoseconds;
	// its keys are the programs under control.
	CostNs map[string]float64
	// Calibration says where CostNs comes from (for the report).
	Calibration string
	// Period, MinWindow, MaxPeriod shape the windows (see Schedule); zero
	// takes the defaults.
	Period, MinWindow, MaxPeriod time.Duration
	// OpenClose is a first guess of the time a window takes to open and
	// close (attach and detach), until one is measured.
	OpenClose time.Duration
	// Exact names the figures exact whatever the duty cycle (read from the
	// runtime's own state); nil takes ExactFigures.
	Exact []string
}

// ExactFigures are the figures the zero-overhead memory sampler reads from
// the runtime's own counters: exact whatever the probes' duty cycle.
var ExactFigures = []string{
	"goroutines.alive",
	"goroutines.created (go1.26+: sched.goroutinesCreated)",
	"goroutines by status",
	"threads",
	"gc cycles (memstats.numgc)",
	"creation sites: alive (allgs scan)",
	"wait reasons: waiting now (allgs scan)",
	"runtime sched latency (sched.timeToRun, the runtime samples 1 in 8)",
}

// Figures maps each figure of the report to the programs whose events
// produce it: a figure is sampled when one of them is windowed.
var Figures = []struct {
	Name     string
	Programs []string
	Counts   bool // a count: scaled by 1/duty; else a distribution of samples
}{
	{"sched_latency", []string{"execute", "ready", "newproc_runqput", "newproc1_ret", "injectglist", "goschedImpl"}, false},
	{"sched_latency.count", []string{"execute", "ready", "newproc_runqput", "newproc1_ret", "injectglist", "goschedImpl"}, true},
	{"wait_reasons", []string{"gopark"}, true},
	{"creation_sites", []string{"newproc_runqput", "newproc1_ret"}, true},
	{"goroutines.exited", []string{"goexit0"}, true},
	{"threads_created", []string{"newm"}, true},
	{"per_p_m", []string{"execute", "schedule"}, true},
	{"events", []string{"schedule", "execute", "gopark", "ready", "goschedImpl", "goexit0", "newproc_runqput", "newproc1_ret", "newm", "injectglist"}, true},
}

// Observation is what happened in one period.
type Observation struct {
	Elapsed time.Duration // wall time of the period
	// Window is how long the windowed programs were attached: from the
	// first attach to the last detach. OpenClose is the part of it spent
	// attaching and detaching (the window's fixed cost).
	Window, OpenClose time.Duration
	// Hits per program in the period, and how long each was attached.
	Hits     map[string]uint64
	Attached map[string]time.Duration
	// TargetCPU is the target's CPU time in the period (probes included),
	// TargetCPUInWindow the part of it spent while the window was open.
	TargetCPU, TargetCPUInWindow time.Duration
}

// Controller keeps the probes' cost within a budget, period after period.
type Controller struct {
	cfg   Config
	rates map[string]float64
	own   float64 // target's own CPU rate, cores; NaN until measured
	dec   Decision
	// decOwn is the target's CPU rate dec was made for.
	decOwn float64

	window, period time.Duration
	duty           float64       // the duty the schedule gives
	overhead       time.Duration // average OpenClose; Config.OpenClose until measured
	measuredOC     int

	// Totals.
	elapsed, windowTime     time.Duration
	cpu, cpuIn              time.Duration
	hits                    map[string]uint64
	attached                map[string]time.Duration
	costNs                  float64 // sum of hits × per-hit cost
	periods, windowsCounted int
}

// NewController returns a controller whose first decision windows every
// program (their rates are not known yet).
func NewController(cfg Config) *Controller {
	if cfg.Period <= 0 {
		cfg.Period = DefaultPeriod
	}
	if cfg.MinWindow <= 0 {
		cfg.MinWindow = DefaultMinWindow
	}
	if cfg.MaxPeriod <= 0 {
		cfg.MaxPeriod = DefaultMaxPeriod
	}
	if cfg.MaxPeriod < cfg.Period {
		cfg.MaxPeriod = cfg.Period
	}
	if cfg.Exact == nil {
		cfg.Exact = ExactFigures
	}
	c := &Controller{cfg: cfg, rates: map[string]float64{}, own: math.NaN(),
		hits: map[string]uint64{}, attached: map[string]time.Duration{}, overhead: cfg.OpenClose}
	for n := range cfg.CostNs {
		c.rates[n] = math.NaN()
	}
	c.decide()
	return c
}

func (c *Controller) programs() []Program {
	var ps []Program
	for n, cost := range c.cfg.CostNs {
		ps = append(ps, Program{Name: n, Rate: c.rates[n], CostNs: cost})
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	return ps
}

func (c *Controller) decide() {
	own := c.own
	if math.IsNaN(own) {
		own = 0 // unknown: the floor only, until measured
	}
	ps := c.programs()
	c.dec = Decide(c.cfg.Spec, own, ps)
	c.decOwn = own
	duty := c.dec.Duty
	for _, p := range ps {
		if math.IsNaN(p.Rate) && !c.cfg.Spec.Max {
			// Rates unknown: a shortest window measures them.
			duty = math.Min(duty, float64(c.cfg.MinWindow)/float64(c.cfg.Period))
			break
		}
	}
	c.window, c.period, c.duty = Schedule(duty, c.overhead, c.cfg.Period, c.cfg.MinWindow, c.cfg.MaxPeriod)
}

// Decision returns the current decision.
func (c *Controller) Decision() Decision { return c.dec }

// Schedule returns the current window, period and the duty cycle they give.
func (c *Controller) Schedule() (window, period time.Duration, duty float64) {
	return c.window, c.period, c.duty
}

// Observe takes a period's counts, updates the rates and the target's own
// CPU rate, and decides the next period.
func (c *Controller) Observe(o Observation) Decision {
	if o.Elapsed <= 0 {
		return c.dec
	}
	c.periods++
	var cost float64
	names := map[string]bool{}
	for n := range o.Hits {
		names[n] = true
	}
	for n := range o.Attached {
		names[n] = true
	}
	for n := range names {
		h := o.Hits[n]
		c.hits[n] += h
		per, ok := c.cfg.CostNs[n]
		if ok {
			cost += float64(h) * per
		}
		att := o.Attached[n]
		if !ok || att < time.Millisecond {
			continue
		}
		r := float64(h) / att.Seconds()
		// A rising rate counts at once (the budget must hold), a falling
		// one is averaged.
		if old := c.rates[n]; math.IsNaN(old) || r > old {
			c.rates[n] = r
		} else {
			c.rates[n] = rateWeight*r + (1-rateWeight)*old
		}
	}
	for n, att := range o.Attached {
		c.attached[n] += att
	}
	c.costNs += cost
	if o.OpenClose > 0 {
		if c.measuredOC++; c.measuredOC == 1 {
			c.overhead = o.OpenClose
		} else {
			c.overhead = time.Duration(rateWeight*float64(o.OpenClose) + (1-rateWeight)*float64(c.overhead))
		}
	}
	c.elapsed += o.Elapsed
	c.windowTime += o.Window
	c.cpu += o.TargetCPU
	c.cpuIn += o.TargetCPUInWindow
	own := math.Max(0, (float64(o.TargetCPU)-cost)/float64(o.Elapsed))
	if math.IsNaN(c.own) {
		c.own = own
	} else {
		c.own = rateWeight*own + (1-rateWeight)*c.own
	}
	c.decide()
	return c.dec
}

// Report says how the figures were obtained so far.
func (c *Controller) Report() Report {
	r := Report{
		Budget:       c.cfg.Spec.String(),
		BudgetShare:  c.cfg.Spec.Share,
		FloorCores:   c.cfg.Spec.FloorCores,
		AllowedCores: finite(c.dec.AllowedCores),
		PeriodMs:     ms(c.period),
		WindowMs:     ms(c.window),
		OpenCloseMs:  ms(c.overhead),
		PlannedDuty:  c.duty,
		DutyCycle:    1,
		Calibration:  c.cfg.Calibration,
		PerHitNs:     map[string]float64{},
		Exact:        append([]string(nil), c.cfg.Exact...),
		Elapsed:      c.elapsed.Seconds(),
	}
	if len(c.dec.Windowed()) > 0 && c.elapsed > 0 {
		r.DutyCycle = float64(c.windowTime) / float64(c.elapsed)
	}
	if !math.IsNaN(c.own) {
		r.TargetCores = c.own
	}
	if c.elapsed > 0 {
		r.MeasuredCores = c.costNs * 1e-9 / c.elapsed.Seconds()
		ownCPU := float64(c.cpu) - c.costNs
		if ownCPU > 0 {
			r.MeasuredCost = c.costNs / ownCPU
		}
		r.TargetCPUSeconds = c.cpu.Seconds()
		if c.windowTime > 0 && c.elapsed > c.windowTime && len(c.dec.Windowed()) > 0 {
			r.CPUInWindowCores = float64(c.cpuIn) / float64(c.windowTime)
			r.CPUOutWindowCores = float64(c.cpu-c.cpuIn) / float64(c.elapsed-c.windowTime)
		}
	}
	// The plan's cost against the CPU rate it was planned for: the rate
	// may have moved since (a target going idle at its end).
	r.EstimatedCores = finite(c.dec.EstimatedCores)
	if c.decOwn > 0 {
		r.EstimatedCost = r.EstimatedCores / c.decOwn
	}
	r.WithinBudget = c.cfg.Spec.Max || r.MeasuredCores <= r.AllowedCores*1.0001
	for _, p := range c.programs() {
		r.PerHitNs[p.Name] = p.CostNs
		pr := ProgramReport{Name: p.Name, Mode: c.dec.Modes[p.Name], Hits: c.hits[p.Name],
			AttachedSeconds: c.attached[p.Name].Seconds()}
		if !math.IsNaN(p.Rate) {
			pr.RatePerSec = p.Rate
			pr.FullCores = p.Cores()
		}
		r.Programs = append(r.Programs, pr)
	}
	for _, f := range Figures {
		var present, windowed bool
		for _, n := range f.Programs {
			if _, ok := c.cfg.CostNs[n]; ok {
				present = true
				if c.dec.Modes[n] == Windowed {
					windowed = true
				}
			}
		}
		switch {
		case !present:
		case windowed:
			sf := SampledFigure{Figure: f.Name, Scale: 1}
			if f.Counts && r.DutyCycle > 0 {
				sf.Scale = 1 / r.DutyCycle
			}
			r.Sampled = append(r.Sampled, sf)
		default:
			r.Full = append(r.Full, f.Name)
		}
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func finite(v float64) float64 {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return 0
	}
	return v
}

// Report says how a report's figures were obtained: ready for the live
// command's final report (JSON) and the TUI header (Line).
type Report struct {
	Budget       string  `json:"budget"`        // "2%" or "max"
	BudgetShare  float64 `json:"budget_share"`  // 0.02
	FloorCores   float64 `json:"floor_cores"`   // cost always allowed, cores
	AllowedCores float64 `json:"allowed_cores"` // 0 for max
	// DutyCycle is the share of the time the windowed programs were
	// attached (measured); 1 when nothing is windowed.
	DutyCycle   float64 `json:"duty_cycle"`
	PlannedDuty float64 `json:"planned_duty"` // of the current schedule
	PeriodMs    float64 `json:"period_ms"`
	WindowMs    float64 `json:"window_ms"`
	// OpenCloseMs is the time a window takes to open and close (attach
	// and detach), during which the probes are partly attached.
	OpenCloseMs float64 `json:"open_close_ms"`
	// TargetCores is the target's own CPU rate (probes' cost removed).
	TargetCores      float64 `json:"target_cores"`
	TargetCPUSeconds float64 `json:"target_cpu_seconds"`
	// EstimatedCost is the current plan's expected cost (rates × per-hit
	// cost × duty) as a share of the target's CPU rate it was planned for,
	// EstimatedCores in cores.
	EstimatedCost  float64 `json:"estimated_cost"`
	EstimatedCores float64 `json:"estimated_cores"`
	// MeasuredCost is the hits counted in the kernel × the calibrated
	// per-hit cost, as a share of the target's own CPU time so far.
	MeasuredCost  float64 `json:"measured_cost"`
	MeasuredCores float64 `json:"measured_cores"`
	// CPUInWindowCores and CPUOutWindowCores are the target's CPU rate
	// with the window open and closed (a CPU-bound target shows its cost
	// as lost throughput instead).
	CPUInWindowCores  float64 `json:"cpu_in_window_cores,omitempty"`
	CPUOutWindowCores float64 `json:"cpu_out_window_cores,omitempty"`
	WithinBudget      bool    `json:"within_budget"`
	// Calibration says where the per-hit costs come from.
	Calibration string             `json:"calibration"`
	PerHitNs    map[string]float64 `json:"per_hit_ns"`
	Programs    []ProgramReport    `json:"programs"`
	// Sampled are the figures from windowed programs; counts are scaled
	// by Scale (1/duty) to estimate the whole, distributions are samples.
	Sampled []SampledFigure `json:"sampled"`
	// Full are the figures from programs attached all the time.
	Full []string `json:"full"`
	// Exact are the figures read from the runtime's own counters.
	Exact   []string `json:"exact"`
	Elapsed float64  `json:"elapsed_seconds"`
}

// ProgramReport is one program's line.
type ProgramReport struct {
	Name            string  `json:"name"`
	Mode            Mode    `json:"mode"`
	Hits            uint64  `json:"hits"`
	AttachedSeconds float64 `json:"attached_seconds"`
	RatePerSec      float64 `json:"rate_per_sec"` // while attached
	FullCores       float64 `json:"full_cores"`   // cost if always attached
}

// SampledFigure is a figure computed from windows.
type SampledFigure struct {
	Figure string  `json:"figure"`
	Scale  float64 `json:"scale"`
}

// Line is the one-line summary for a header.
func (r Report) Line() string {
	if r.Budget == "max" {
		return "overhead max: every event; est. " + pct(r.MeasuredCost) + " of target CPU"
	}
	s := "overhead budget " + r.Budget + ": duty " + pct(r.DutyCycle) +
		", est. " + pct(r.EstimatedCost) + ", measured " + pct(r.MeasuredCost)
	if len(r.Sampled) > 0 {
		s += " (sampled figures scaled ×" + trim(1/math.Max(r.DutyCycle, 1e-9)) + ")"
	}
	return s
}

func pct(v float64) string { return trim(v*100) + "%" }

func trim(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}
