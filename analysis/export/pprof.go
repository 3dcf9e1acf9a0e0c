package export

import (
	"fmt"
	"sort"

	"github.com/google/pprof/profile"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/paths"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
)

// Sample type indexes of the pprof profile.
const (
	SampleGoroutines = iota
	SampleAlive
	SampleDelay
	SampleBlocks
	SampleBlocking
	SampleAllocObjects
	SampleAllocSpace
	SampleThreads
	numSamples
)

var sampleTypes = []*profile.ValueType{
	SampleGoroutines:   {Type: "goroutines", Unit: "count"},
	SampleAlive:        {Type: "alive", Unit: "count"},
	SampleDelay:        {Type: "delay", Unit: "nanoseconds"},
	SampleBlocks:       {Type: "blocks", Unit: "count"},
	SampleBlocking:     {Type: "blocking", Unit: "nanoseconds"},
	SampleAllocObjects: {Type: "alloc_objects", Unit: "count"},
	SampleAllocSpace:   {Type: "alloc_space", Unit: "bytes"},
	SampleThreads:      {Type: "threads", Unit: "count"},
}

// pprofBuilder interns locations and functions.
type pprofBuilder struct {
	p     *profile.Profile
	m     *paths.Model
	locs  map[[2]uint64]*profile.Location // pc, ret
	funcs map[[2]string]*profile.Function
}

func (b *pprofBuilder) location(f paths.Frame, ret bool) *profile.Location {
	key := [2]uint64{f.PC, 0}
	if ret {
		key[1] = 1
	}
	if l := b.locs[key]; l != nil {
		return l
	}
	name := f.Func
	if name == "" {
		name = fmt.Sprintf("%#x", f.PC)
	}
	fk := [2]string{name, f.File}
	fn := b.funcs[fk]
	if fn == nil {
		fn = &profile.Function{ID: uint64(len(b.p.Function) + 1), Name: name, SystemName: name, Filename: f.File}
		b.funcs[fk] = fn
		b.p.Function = append(b.p.Function, fn)
	}
	l := &profile.Location{ID: uint64(len(b.p.Location) + 1), Address: f.PC, Mapping: b.p.Mapping[0],
		Line: []profile.Line{{Function: fn, Line: int64(f.Line)}}}
	b.locs[key] = l
	b.p.Location = append(b.p.Location, l)
	return l
}

// stack converts loc to pprof locations, leaf first. A captured stack
// loses its frame 0, the probed instruction (gopark, mProf_Malloc, ...):
// stacks start at its caller, as the runtime's block profile does; with
// userLeaf every leading runtime frame goes, as in the heap profile.
func (b *pprofBuilder) stack(loc paths.Loc, userLeaf bool) []*profile.Location {
	fs := b.m.Frames(loc)
	if loc.Stack != event.NoStack && len(fs) > 1 {
		fs = fs[1:]
	}
	if userLeaf {
		i := 0
		for i < len(fs)-1 && paths.IsRuntime(fs[i].Frame) {
			i++
		}
		fs = fs[i:]
	}
	out := make([]*profile.Location, 0, len(fs))
	for _, f := range fs {
		out = append(out, b.location(f, true))
	}
	return out
}

func (b *pprofBuilder) add(loc paths.Loc, idx int, v int64, labels map[string][]string) {
	if v == 0 {
		return
	}
	vals := make([]int64, numSamples)
	vals[idx] = v
	b.addVals(loc, vals, labels, false)
}

func (b *pprofBuilder) addVals(loc paths.Loc, vals []int64, labels map[string][]string, userLeaf bool) {
	st := b.stack(loc, userLeaf)
	if len(st) == 0 {
		st = []*profile.Location{b.location(paths.Frame{}, false)}
	}
	b.p.Sample = append(b.p.Sample, &profile.Sample{Location: st, Value: vals, Label: labels})
}

// Profile builds the pprof profile of in.
func Profile(in *Input) (*profile.Profile, error) {
	m := in.Paths
	first, last := m.Span()
	exe := ""
	if in.Meta.Plan != nil {
		exe = in.Meta.Plan.Path
		if in.Meta.Plan.Exe != "" {
			exe = in.Meta.Plan.Exe
		}
	}
	p := &profile.Profile{
		SampleType:        sampleTypes,
		DefaultSampleType: "blocking",
		TimeNanos:         in.Meta.Start.UnixNano(),
		DurationNanos:     int64(last - first),
		Mapping: []*profile.Mapping{{ID: 1, Start: 0, Limit: ^uint64(0), File: exe,
			HasFunctions: true, HasFilenames: true, HasLineNumbers: true}},
		Comments: []string{"gmpwatch: goroutine creation, scheduling delay, blocking, sampled allocation, thread creation"},
	}
	b := &pprofBuilder{p: p, m: m, locs: map[[2]uint64]*profile.Location{}, funcs: map[[2]string]*profile.Function{}}

	startLabel := func(loc paths.Loc) map[string][]string {
		spc := m.StartPC(loc.PC)
		if spc == 0 || in.Symbolize == nil {
			return nil
		}
		if f, ok := in.Symbolize(spc, false); ok {
			return map[string][]string{"start_function": {f.Func}}
		}
		return nil
	}
	for _, loc := range sortedLocs(m.Created) {
		vals := make([]int64, numSamples)
		vals[SampleGoroutines] = int64(m.Created[loc])
		vals[SampleAlive] = m.Alive[loc]
		b.addVals(loc, vals, startLabel(loc), false)
	}
	for _, loc := range sortedLocs(m.Delay) {
		a := m.Delay[loc]
		b.add(loc, SampleDelay, int64(a.TotalNs), nil)
	}
	keys := make([]paths.BlockKey, 0, len(m.Blocks))
	for k := range m.Blocks {
		keys = append(keys, k)
	}
	sortBlockKeys(keys)
	for _, k := range keys {
		a := m.Blocks[k]
		vals := make([]int64, numSamples)
		vals[SampleBlocks] = int64(a.Count)
		vals[SampleBlocking] = int64(a.TotalNs)
		b.addVals(k.Loc, vals, map[string][]string{"reason": {waitReasons(in).Name(k.Reason)}}, false)
	}
	rate := m.Config().MemProfileRate
	for _, loc := range sortedLocs(m.Allocs) {
		a := m.Allocs[loc]
		objs, bytes := paths.ScaleHeapSample(int64(a.Count), int64(a.Bytes), rate)
		vals := make([]int64, numSamples)
		vals[SampleAllocObjects] = objs
		vals[SampleAllocSpace] = bytes
		b.addVals(loc, vals, nil, true)
	}
	for _, loc := range sortedLocs(m.Threads) {
		b.add(loc, SampleThreads, int64(m.Threads[loc]), nil)
	}
	if err := p.CheckValid(); err != nil {
		return nil, fmt.Errorf("pprof: %w", err)
	}
	return p, nil
}

func sortedLocs[V any](mp map[paths.Loc]V) []paths.Loc {
	ks := make([]paths.Loc, 0, len(mp))
	for k := range mp {
		ks = append(ks, k)
	}
	sortLocs(ks)
	return ks
}

func sortLocs(ks []paths.Loc) {
	sort.Slice(ks, func(i, j int) bool { return paths.LocLess(ks[i], ks[j]) })
}

func sortBlockKeys(ks []paths.BlockKey) {
	sort.Slice(ks, func(i, j int) bool {
		if ks[i].Reason != ks[j].Reason {
			return ks[i].Reason < ks[j].Reason
		}
		return paths.LocLess(ks[i].Loc, ks[j].Loc)
	})
}

func waitReasons(in *Input) plan.WaitReasons {
	if in.Meta.Plan == nil {
		return nil
	}
	return in.Meta.Plan.WaitReasons
}
