package export

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/gmpwatch/gmpwatch/analysis/event"
)

// Process IDs of the Chrome trace: one process holds the P tracks, one the
// M tracks, one the counters.
const (
	tracePs       = 1
	traceMs       = 2
	traceCounters = 3
)

// TraceEvent is one Chrome trace event (the fields gmpwatch uses).
type TraceEvent struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat,omitempty"`
	Ph   string         `json:"ph"`
	Ts   float64        `json:"ts"` // microseconds
	Dur  *float64       `json:"dur,omitempty"`
	Pid  int            `json:"pid"`
	Tid  int64          `json:"tid"`
	ID   string         `json:"id,omitempty"`
	BP   string         `json:"bp,omitempty"`
	S    string         `json:"s,omitempty"`
	Args map[string]any `json:"args,omitempty"`
}

// Trace is the Chrome trace-event JSON object.
type Trace struct {
	TraceEvents     []TraceEvent `json:"traceEvents"`
	DisplayTimeUnit string       `json:"displayTimeUnit"`
}

type traceWriter struct {
	w     *bufio.Writer
	first bool
	t0    uint64
	err   error
}

func (t *traceWriter) us(ts uint64) float64 {
	if ts < t.t0 {
		return 0
	}
	return float64(ts-t.t0) / 1000
}

func (t *traceWriter) emit(ev TraceEvent) {
	if t.err != nil {
		return
	}
	b, err := json.Marshal(ev)
	if err != nil {
		t.err = err
		return
	}
	if !t.first {
		t.w.WriteByte(',')
	}
	t.first = false
	t.w.WriteString("\n")
	_, t.err = t.w.Write(b)
}

// run is a goroutine running on an M.
type run struct {
	goid  uint64
	p     int32
	start uint64
}

// Perfetto writes the Chrome trace-event JSON of in's events.
func Perfetto(w io.Writer, in *Input) error {
	if in.Replay == nil {
		return errors.New("perfetto: the events are not available")
	}
	tw := &traceWriter{w: bufio.NewWriterSize(w, 1<<20), first: true}
	tw.t0, _ = in.Paths.Span()
	tw.w.WriteString(`{"displayTimeUnit":"ns","traceEvents":[`)
	meta := func(pid int, tid int64, key, name string) {
		tw.emit(TraceEvent{Name: key, Ph: "M", Pid: pid, Tid: tid, Args: map[string]any{"name": name}})
	}
	meta(tracePs, 0, "process_name", "Ps")
	meta(traceMs, 0, "process_name", "Ms")
	meta(traceCounters, 0, "process_name", "Counters")

	startFn := map[uint64]string{} // goid -> start function (for slice names)
	firstRun := map[uint64]bool{}  // goroutines with a pending create flow
	running := map[int64]*run{}    // by M
	ps := map[int32]bool{}
	ms := map[int64]uint32{}
	var alive, threads int64
	wr := waitReasons(in)

	mkey := func(ev *event.Event) int64 {
		if ev.MID >= 0 {
			return ev.MID
		}
		return -int64(ev.TID) - 1
	}
	end := func(mid int64, ts uint64) {
		r := running[mid]
		if r == nil {
			return
		}
		delete(running, mid)
		d := tw.us(ts) - tw.us(r.start)
		name := fmt.Sprintf("G%d", r.goid)
		args := map[string]any{"goid": r.goid}
		if fn := startFn[r.goid]; fn != "" {
			name += " " + fn
			args["start_function"] = fn
		}
		tw.emit(TraceEvent{Name: name, Cat: "run", Ph: "X", Ts: tw.us(r.start), Dur: &d, Pid: traceMs, Tid: mid, Args: args})
		if r.p >= 0 {
			tw.emit(TraceEvent{Name: name, Cat: "run", Ph: "X", Ts: tw.us(r.start), Dur: &d, Pid: tracePs, Tid: int64(r.p), Args: args})
		}
	}
	var lastTs uint64
	hasNewm := in.Paths.Count(event.KindThreadCreate) > 0
	in.Replay(func(ev *event.Event) {
		ts := ev.Ts
		if ts > lastTs {
			lastTs = ts
		}
		mid := mkey(ev)
		if _, ok := ms[mid]; !ok || ev.TID != 0 {
			ms[mid] = ev.TID
		}
		if ev.PID >= 0 {
			ps[ev.PID] = true
		}
		switch ev.Kind {
		case event.KindGoCreate:
			if ev.PC2 != 0 && in.Symbolize != nil {
				if f, ok := in.Symbolize(ev.PC2, false); ok {
					startFn[ev.Goid] = f.Func
				}
			}
			alive++
			tw.emit(TraceEvent{Name: fmt.Sprintf("create G%d", ev.Goid), Cat: "create", Ph: "i", S: "t", Ts: tw.us(ts), Pid: traceMs, Tid: mid,
				Args: map[string]any{"goid": ev.Goid, "parent": ev.Aux}})
			tw.emit(TraceEvent{Name: "create", Cat: "create", Ph: "s", ID: fmt.Sprint(ev.Goid), Ts: tw.us(ts), Pid: traceMs, Tid: mid})
			firstRun[ev.Goid] = true
			tw.emit(TraceEvent{Name: "goroutines", Ph: "C", Ts: tw.us(ts), Pid: traceCounters, Args: map[string]any{"alive": alive}})
		case event.KindGoStart:
			end(mid, ts)
			running[mid] = &run{goid: ev.Goid, p: ev.PID, start: ts}
			if firstRun[ev.Goid] {
				delete(firstRun, ev.Goid)
				tw.emit(TraceEvent{Name: "create", Cat: "create", Ph: "f", BP: "e", ID: fmt.Sprint(ev.Goid), Ts: tw.us(ts), Pid: traceMs, Tid: mid})
			}
		case event.KindGoPark:
			end(mid, ts)
			tw.emit(TraceEvent{Name: fmt.Sprintf("park G%d: %s", ev.Goid, wr.Name(ev.Reason)), Cat: "park", Ph: "i", S: "t", Ts: tw.us(ts), Pid: traceMs, Tid: mid,
				Args: map[string]any{"goid": ev.Goid, "reason": wr.Name(ev.Reason)}})
		case event.KindGoUnpark:
			tw.emit(TraceEvent{Name: fmt.Sprintf("ready G%d", ev.Goid), Cat: "ready", Ph: "i", S: "t", Ts: tw.us(ts), Pid: traceMs, Tid: mid,
				Args: map[string]any{"goid": ev.Goid, "by": ev.Aux}})
		case event.KindGoSched, event.KindSchedule:
			end(mid, ts)
		case event.KindGoExit:
			end(mid, ts)
			alive--
			delete(startFn, ev.Goid)
			delete(firstRun, ev.Goid)
			tw.emit(TraceEvent{Name: "goroutines", Ph: "C", Ts: tw.us(ts), Pid: traceCounters, Args: map[string]any{"alive": alive}})
		case event.KindThreadCreate, event.KindThreadStart:
			if ev.Kind == event.KindThreadCreate || !hasNewm {
				threads++
				tw.emit(TraceEvent{Name: "threads", Ph: "C", Ts: tw.us(ts), Pid: traceCounters, Args: map[string]any{"created": threads}})
			}
		}
	})
	mids := make([]int64, 0, len(running))
	for mid := range running {
		mids = append(mids, mid)
	}
	sort.Slice(mids, func(i, j int) bool { return mids[i] < mids[j] })
	for _, mid := range mids {
		end(mid, lastTs)
	}
	pids := make([]int32, 0, len(ps))
	for p := range ps {
		pids = append(pids, p)
	}
	sort.Slice(pids, func(i, j int) bool { return pids[i] < pids[j] })
	for _, p := range pids {
		meta(tracePs, int64(p), "thread_name", fmt.Sprintf("P%d", p))
	}
	mlist := make([]int64, 0, len(ms))
	for m := range ms {
		mlist = append(mlist, m)
	}
	sort.Slice(mlist, func(i, j int) bool { return mlist[i] < mlist[j] })
	for _, m := range mlist {
		name := fmt.Sprintf("M%d tid %d", m, ms[m])
		if m < 0 {
			name = fmt.Sprintf("M? tid %d", ms[m])
		}
		meta(traceMs, m, "thread_name", name)
	}
	if tw.err != nil {
		return tw.err
	}
	tw.w.WriteString("\n]}\n")
	return tw.w.Flush()
}
