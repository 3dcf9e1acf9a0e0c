package regress

import (
	"math"

	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
)

// LatencyFromHistogram summarizes a scheduling-latency histogram (the
// runtime's sched.timeToRun as rtstate reads it). Quantiles are those of
// rtstate.Histogram.Quantile, interpolated inside their bucket; max is the
// upper boundary of the highest non-empty bucket (its lower one when that
// is unbounded). An empty histogram gives a zero Latency.
func LatencyFromHistogram(h rtstate.Histogram) Latency {
	total := h.Total()
	if total == 0 {
		return Latency{}
	}
	ns := func(q float64) int64 { return int64(math.Round(h.Quantile(q))) }
	return Latency{
		Count:  total,
		P50NS:  ns(0.50),
		P90NS:  ns(0.90),
		P99NS:  ns(0.99),
		P999NS: ns(0.999),
		MaxNS:  ns(1),
	}
}
