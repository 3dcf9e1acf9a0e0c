package regress

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/perf/benchmath"
)

// Defaults of a comparison.
const (
	DefaultAlpha      = 0.05 // benchstat's
	DefaultThreshold  = 0.10 // a 10% worse median
	DefaultConfidence = 0.95 // of the median's confidence interval, benchstat's
)

// Class says how a metric's values are printed.
type Class int

const (
	ClassTime  Class = iota // nanoseconds
	ClassCount              // a plain count
)

// Metric is one compared quantity.
type Metric struct {
	// Key names the metric on the command line: p50, p90, p99, p99.9, max,
	// count, goroutines, threads, blocked/<reason>.
	Key string
	// Name is the metric's display name.
	Name string
	// Bench and Unit are its benchmark name (after "Benchmark") and unit
	// in the Go benchmark format.
	Bench, Unit string
	Class       Class
	// LowerBetter metrics are checked against a threshold by default.
	LowerBetter bool
	get         func(*Run) (float64, bool)
}

// latencyMetric returns the metric for one latency quantile.
func latencyMetric(key, unitKey string, get func(*Latency) int64) Metric {
	return Metric{
		Key: key, Name: "sched latency " + key, Bench: "SchedLatency/" + key, Unit: unitKey + "-ns",
		Class: ClassTime, LowerBetter: true,
		get: func(r *Run) (float64, bool) { return float64(get(&r.Metrics.SchedLatency)), true },
	}
}

// MetricsOf returns the metrics records can be compared on, in display
// order: every metric that every run of both records measured.
func MetricsOf(recs ...*Record) []Metric {
	all := []Metric{
		latencyMetric("p50", "p50", func(l *Latency) int64 { return l.P50NS }),
		latencyMetric("p90", "p90", func(l *Latency) int64 { return l.P90NS }),
		latencyMetric("p99", "p99", func(l *Latency) int64 { return l.P99NS }),
		latencyMetric("p99.9", "p99.9", func(l *Latency) int64 { return l.P999NS }),
		latencyMetric("max", "max", func(l *Latency) int64 { return l.MaxNS }),
		{
			Key: "count", Name: "sched latency count", Bench: "SchedLatency/count", Unit: "latencies",
			Class: ClassCount,
			get:   func(r *Run) (float64, bool) { return float64(r.Metrics.SchedLatency.Count), true },
		},
		{
			Key: "goroutines", Name: "goroutines created", Bench: "GoroutinesCreated", Unit: "goroutines",
			Class: ClassCount, LowerBetter: true,
			get: func(r *Run) (float64, bool) {
				if r.Metrics.GoroutinesCreated == nil {
					return 0, false
				}
				return float64(*r.Metrics.GoroutinesCreated), true
			},
		},
		{
			Key: "threads", Name: "threads created", Bench: "ThreadsCreated", Unit: "threads",
			Class: ClassCount, LowerBetter: true,
			get: func(r *Run) (float64, bool) {
				if r.Metrics.ThreadsCreated == nil {
					return 0, false
				}
				return float64(*r.Metrics.ThreadsCreated), true
			},
		},
	}
	// Blocked time by wait reason: informational unless a threshold is
	// given for it (how long a workload waits on its channels is its own
	// business, not the scheduler's cost).
	reasons := map[string]bool{}
	for _, rec := range recs {
		for _, run := range rec.Runs {
			for k := range run.Metrics.BlockedNSByReason {
				reasons[k] = true
			}
		}
	}
	var names []string
	for k := range reasons {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, reason := range names {
		slug := strings.ReplaceAll(reason, " ", "-")
		all = append(all, Metric{
			Key: "blocked/" + slug, Name: "blocked in " + reason, Bench: "Blocked/" + slug, Unit: "blocked-ns",
			Class: ClassTime,
			get: func(r *Run) (float64, bool) {
				if r.Metrics.BlockedNSByReason == nil {
					return 0, false
				}
				return float64(r.Metrics.BlockedNSByReason[reason]), true
			},
		})
	}
	var out []Metric
	for _, m := range all {
		ok := true
		for _, rec := range recs {
			for i := range rec.Runs {
				if _, have := m.get(&rec.Runs[i]); !have {
					ok = false
				}
			}
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

// Values returns a metric's values over the runs of a record.
func (m *Metric) Values(rec *Record) []float64 {
	vals := make([]float64, 0, len(rec.Runs))
	for i := range rec.Runs {
		v, _ := m.get(&rec.Runs[i])
		vals = append(vals, v)
	}
	return vals
}

// Off is the threshold that turns a metric's check off.
var Off = math.Inf(1)

// Options configure a comparison.
type Options struct {
	// Alpha is the family-wise significance level (DefaultAlpha if 0).
	Alpha float64
	// Threshold is the smallest worsening of a median, as a fraction
	// (0.10 = 10%), that counts as a regression (DefaultThreshold if 0).
	Threshold float64
	// MetricThresholds overrides Threshold per metric key; Off turns a
	// metric's check off. A metric that is informational by default
	// (count, blocked/...) is checked when given a threshold here.
	MetricThresholds map[string]float64
}

// ParseThreshold parses "10%", "10" (percent) or "off".
func ParseThreshold(s string) (float64, error) {
	if s == "off" || s == "none" {
		return Off, nil
	}
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "%"), 64)
	if err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("bad threshold %q: want a percentage such as 10%% or off", s)
	}
	return v / 100, nil
}

// Row is the comparison of one metric.
type Row struct {
	Metric   Metric
	Base     benchmath.Summary
	New      benchmath.Summary
	BaseVals []float64
	NewVals  []float64
	Cmp      benchmath.Comparison
	// DeltaPct is the change of the median in percent (NaN when the base
	// median is 0 and the new one is not).
	DeltaPct float64
	// Checked rows are tested against Threshold, with Holm's correction.
	Checked   bool
	Threshold float64
	// HolmAlpha is the level the row's p-value had to meet in Holm's
	// step-down procedure (0 when the procedure stopped before the row).
	HolmAlpha float64
	// Significant is benchstat's verdict: P <= Alpha, uncorrected.
	Significant bool
	// Regression: checked, significant after Holm's correction, and worse
	// by more than Threshold.
	Regression bool
}

// Delta returns the change column as benchstat prints it: "~" when not
// significant, else the percent change.
func (r *Row) Delta() string {
	return r.Cmp.FormatDelta(r.Base.Center, r.New.Center)
}

// Result is the comparison of two records.
type Result struct {
	Base, New         *Record
	BaseName, NewName string
	Alpha             float64
	Rows              []Row
	// Checked is the number of metrics tested for regression: the size of
	// the family Holm's correction is over.
	Checked int
	// MinRuns is the smallest number of runs on each side with which the
	// test can reach significance for this family.
	MinRuns int
}

// Regressions returns the rows that regressed.
func (res *Result) Regressions() []*Row {
	var out []*Row
	for i := range res.Rows {
		if res.Rows[i].Regression {
			out = append(out, &res.Rows[i])
		}
	}
	return out
}

// ExitCode is 1 when a metric regressed, 0 otherwise.
func (res *Result) ExitCode() int {
	if len(res.Regressions()) > 0 {
		return 1
	}
	return 0
}

// minP returns the smallest p-value the Mann-Whitney U test can give for
// samples of n1 and n2 values: that of two completely separated samples,
// computed by benchmath itself.
func minP(n1, n2 int) float64 {
	if n1 == 0 || n2 == 0 {
		return 1
	}
	a := make([]float64, n1)
	b := make([]float64, n2)
	for i := range a {
		a[i] = float64(i)
	}
	for i := range b {
		b[i] = float64(n1 + i)
	}
	th := benchmath.DefaultThresholds
	return benchmath.AssumeNothing.Compare(benchmath.NewSample(a, &th), benchmath.NewSample(b, &th)).P
}

// MinRuns returns the smallest n such that n runs against n runs can reach
// a p-value of level, or 0 if none up to 1000 can.
func MinRuns(level float64) int {
	for n := 1; n <= 1000; n++ {
		if minP(n, n) <= level {
			return n
		}
	}
	return 0
}

// MinRunsFor returns the smallest number of runs on each side with which
// records like these can reach a verdict with the default options.
func MinRunsFor(recs ...*Record) int {
	checked := 0
	for _, m := range MetricsOf(recs...) {
		if m.LowerBetter {
			checked++
		}
	}
	if checked == 0 {
		return 0
	}
	return MinRuns(DefaultAlpha / float64(checked))
}

// Compare compares two records metric by metric. It fails with
// ErrTooFewRuns when the records hold too few runs for the test to ever
// reach significance, ErrFailedRun when a run failed, and ErrIncomparable
// when the records were measured in different ways.
func Compare(base, new *Record, opt Options) (*Result, error) {
	if opt.Alpha == 0 {
		opt.Alpha = DefaultAlpha
	}
	if opt.Threshold == 0 {
		opt.Threshold = DefaultThreshold
	}
	for _, rec := range []*Record{base, new} {
		if f := rec.FirstFailure(); f != nil {
			return nil, fmt.Errorf("%w: %s run %d: %s", ErrFailedRun, rec.Label, f.Index, describeFailure(f))
		}
	}
	if base.Method != new.Method {
		return nil, fmt.Errorf("%w: base measured by %s, new by %s", ErrIncomparable, base.Method, new.Method)
	}
	metrics := MetricsOf(base, new)
	known := map[string]bool{}
	for _, m := range metrics {
		known[m.Key] = true
	}
	for k := range opt.MetricThresholds {
		if !known[k] {
			var keys []string
			for _, m := range metrics {
				keys = append(keys, m.Key)
			}
			return nil, fmt.Errorf("no metric %q in these records (have %s)", k, strings.Join(keys, ", "))
		}
	}

	res := &Result{Base: base, New: new, Alpha: opt.Alpha, BaseName: base.Label, NewName: new.Label}
	th := benchmath.DefaultThresholds
	th.CompareAlpha = opt.Alpha
	for _, m := range metrics {
		row := Row{Metric: m, Threshold: opt.Threshold, Checked: m.LowerBetter}
		if t, ok := opt.MetricThresholds[m.Key]; ok {
			row.Threshold = t
			row.Checked = true
		}
		if math.IsInf(row.Threshold, 1) {
			row.Checked = false
		}
		row.BaseVals, row.NewVals = m.Values(base), m.Values(new)
		s1 := benchmath.NewSample(append([]float64(nil), row.BaseVals...), &th)
		s2 := benchmath.NewSample(append([]float64(nil), row.NewVals...), &th)
		row.Base = benchmath.AssumeNothing.Summary(s1, DefaultConfidence)
		row.New = benchmath.AssumeNothing.Summary(s2, DefaultConfidence)
		row.Cmp = benchmath.AssumeNothing.Compare(s1, s2)
		if row.Cmp.P > 1 {
			// The U test's normal approximation with ties and
			// continuity correction can pass 1; a p-value cannot.
			row.Cmp.P = 1
		}
		row.Significant = row.Cmp.P <= row.Cmp.Alpha
		switch {
		case row.Base.Center == row.New.Center:
			row.DeltaPct = 0
		case row.Base.Center == 0:
			row.DeltaPct = math.NaN()
		default:
			row.DeltaPct = (row.New.Center/row.Base.Center - 1) * 100
		}
		if row.Checked {
			res.Checked++
		}
		res.Rows = append(res.Rows, row)
	}

	// Too few runs: even two completely separated samples of these sizes
	// could not pass the first step of Holm's procedure.
	if res.Checked > 0 {
		level := opt.Alpha / float64(res.Checked)
		res.MinRuns = MinRuns(level)
		n1, n2 := len(base.Runs), len(new.Runs)
		if minP(n1, n2) > level {
			return res, fmt.Errorf("%w: %d base and %d new runs can never reach significance "+
				"(Mann-Whitney U over %d checked metrics at family-wise alpha %g needs p <= %.4f: at least %d runs each)",
				ErrTooFewRuns, n1, n2, res.Checked, opt.Alpha, level, res.MinRuns)
		}
	}

	// Holm's step-down correction over the checked metrics: with several
	// metrics tested at once, each at alpha, an A/A comparison would cry
	// wolf far more often than alpha.
	var idx []int
	for i := range res.Rows {
		if res.Rows[i].Checked {
			idx = append(idx, i)
		}
	}
	sort.SliceStable(idx, func(a, b int) bool { return res.Rows[idx[a]].Cmp.P < res.Rows[idx[b]].Cmp.P })
	for rank, i := range idx {
		row := &res.Rows[i]
		row.HolmAlpha = opt.Alpha / float64(len(idx)-rank)
		if row.Cmp.P > row.HolmAlpha {
			break
		}
		worse := row.New.Center > row.Base.Center
		over := math.IsNaN(row.DeltaPct) || row.DeltaPct > row.Threshold*100
		row.Regression = worse && over
	}
	return res, nil
}

func describeFailure(r *Run) string {
	var s string
	switch {
	case r.Error != "":
		s = r.Error
	case r.Signal != "":
		s = "killed by " + r.Signal
	default:
		s = fmt.Sprintf("exit status %d", r.ExitStatus)
	}
	if out := strings.TrimSpace(r.Output); out != "" {
		lines := strings.Split(out, "\n")
		s += ": " + strings.TrimSpace(lines[len(lines)-1])
	}
	return s
}
