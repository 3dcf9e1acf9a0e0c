package sched

import (
	"testing"

	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
)

// TestUseKernel: a report takes the kernel's latency, waits and sites, the
// memory scan's alive and waiting counts, and keeps the rest.
func TestUseKernel(t *testing.T) {
	reasons := plan.WaitReasons{"", "GC assist marking", "chan receive"}
	sym := func(pc uint64, ret bool) (gobin.Frame, bool) {
		if pc == 0x1000 && ret {
			return gobin.Frame{Func: "main.main", File: "/src/main.go", Line: 12}, true
		}
		return gobin.Frame{}, false
	}
	m := New(Config{WaitReasons: reasons, Symbolize: sym})
	b := rtstate.Bounds(rtstate.HistGo120)
	h := rtstate.Histogram{Bounds: b, Counts: make([]uint64, len(b)-1)}
	h.Counts[h.BucketOf(1500)] = 90 // the bucket holding 1.5 µs
	h.Counts[h.BucketOf(1e6)] = 10
	r := &Report{Preemptions: 7, WaitReasons: []WaitReason{{Reason: "chan receive", WaitingNow: 3}}}
	m.UseKernel(r, &KernelFigures{
		Latency: h,
		Waits:   map[uint8]WaitCount{2: {Ended: 4, TotalNs: 4e6}},
		Sites:   map[uint64]SiteCount{0x1000: {Created: 5, Exited: 2}, 0x2000: {Created: 1, Exited: 1}},
	})
	l := r.SchedLatency
	if l.Count != 100 || l.P50Ns < 1024 || l.P50Ns > 2048 || l.P99Ns < 1<<19 || l.P99Ns > 1<<21 || l.MaxNs < l.P99Ns || len(l.Histogram) != 2 {
		t.Errorf("latency %+v", l)
	}
	if len(r.WaitReasons) != 1 || r.WaitReasons[0] != (WaitReason{Reason: "chan receive", Count: 4, TotalNs: 4e6, WaitingNow: 3}) {
		t.Errorf("waits %+v: the kernel's counts, the model's waiting now", r.WaitReasons)
	}
	if r.Goroutines.Created != 6 || r.Goroutines.Exited != 3 || r.Preemptions != 7 {
		t.Errorf("goroutines %+v, preemptions %d", r.Goroutines, r.Preemptions)
	}
	if len(r.CreationSites) != 2 || r.CreationSites[0] != (Site{Function: "main.main", File: "/src/main.go", Line: 12, PC: "0x1000", Created: 5, Exited: 2}) ||
		r.CreationSites[1].Function != "0x2000" {
		t.Errorf("sites %+v", r.CreationSites)
	}

	// With a memory scan: alive by site and waiting by reason are its.
	r = &Report{}
	m.UseKernel(r, &KernelFigures{Latency: h, Sites: map[uint64]SiteCount{0x1000: {Created: 5}},
		AliveBySite: map[uint64]uint64{0x1000: 40, 0x3000: 2}, WaitingByReason: map[uint8]uint64{1: 9}})
	if len(r.CreationSites) != 2 || r.CreationSites[0].Alive != 40 || r.CreationSites[1].Alive != 2 || r.CreationSites[1].Created != 0 {
		t.Errorf("sites with a scan %+v", r.CreationSites)
	}
	if len(r.WaitReasons) != 1 || r.WaitReasons[0] != (WaitReason{Reason: "GC assist marking", WaitingNow: 9}) {
		t.Errorf("waits with a scan %+v", r.WaitReasons)
	}
	// An empty histogram is an empty latency, not NaNs.
	r = &Report{}
	m.UseKernel(r, &KernelFigures{Latency: rtstate.Histogram{Bounds: b, Counts: make([]uint64, len(b)-1)}})
	if r.SchedLatency.Count != 0 || r.SchedLatency.P99Ns != 0 || r.SchedLatency.Histogram == nil {
		t.Errorf("empty latency %+v", r.SchedLatency)
	}
}
