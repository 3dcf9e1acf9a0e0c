package export

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/gmpwatch/gmpwatch/analysis/event"
)

// JSONLSchema documents the jsonl format (README-ready).
const JSONLSchema = `gmpwatch report -f jsonl: one JSON object per line, one line per event, in
event order. Fields (absent when empty or not meaningful for the kind):

  ts_ns        event time, CLOCK_MONOTONIC nanoseconds (the runtime's nanotime)
  kind         GoCreate GoStart GoPark GoUnpark GoSched GoExit Schedule
               ThreadCreate ThreadStart SyscallEnter SyscallExit Status Alloc
               HeapGrow ChanSend ChanRecv Malloc (see analysis/event)
  goid         the goroutine the event is about
  aux          kind-specific: parent goid (GoCreate), readier goid (GoUnpark),
               new m.id (ThreadCreate, ThreadStart), bytes (Alloc, HeapGrow,
               Malloc), channel address (ChanSend, ChanRecv)
  pc, pc2      kind-specific program counters, hex ("0x4a1b2c")
  m, tid, p    runtime M id, kernel thread ID, runtime P id (-1: none)
  stack        id of the captured user stack (see the stacks line), or absent
  reason       wait reason index (GoPark), 1 = preempted (GoSched), 1 =
               blocking (ChanSend, ChanRecv)
  reason_name  the wait reason's name, for GoPark
  function, file, line   source position of pc (the call, for return
               addresses), when known
  flags        event flags (1: created parked, 2: probe ran on g0)

The last line is {"kind":"Stacks","stacks":{"ID":["0x..",...]}} when stacks
were captured (leaf first).`

// JSONEvent is one line of the jsonl format.
type JSONEvent struct {
	Ts         uint64 `json:"ts_ns"`
	Kind       string `json:"kind"`
	Goid       uint64 `json:"goid,omitempty"`
	Aux        uint64 `json:"aux,omitempty"`
	PC         string `json:"pc,omitempty"`
	PC2        string `json:"pc2,omitempty"`
	MID        int64  `json:"m"`
	TID        uint32 `json:"tid,omitempty"`
	PID        int32  `json:"p"`
	Stack      *int32 `json:"stack,omitempty"`
	Reason     uint8  `json:"reason,omitempty"`
	ReasonName string `json:"reason_name,omitempty"`
	Function   string `json:"function,omitempty"`
	File       string `json:"file,omitempty"`
	Line       int    `json:"line,omitempty"`
	Flags      uint8  `json:"flags,omitempty"`
}

// retPC says whether ev.PC of kind k is a return address.
func retPC(k event.Kind) bool {
	switch k {
	case event.KindGoCreate, event.KindGoExit, event.KindGoPark, event.KindSyscallEnter,
		event.KindChanSend, event.KindChanRecv, event.KindMalloc, event.KindAlloc,
		event.KindThreadCreate, event.KindThreadStart, event.KindHeapGrow:
		return true
	}
	return false
}

// JSONL writes one event per line.
func JSONL(w io.Writer, in *Input) error {
	if in.Replay == nil {
		return errors.New("jsonl: the events are not available")
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	enc := json.NewEncoder(bw)
	wr := waitReasons(in)
	var err error
	in.Replay(func(ev *event.Event) {
		if err != nil {
			return
		}
		j := JSONEvent{Ts: ev.Ts, Kind: ev.Kind.String(), Goid: ev.Goid, Aux: ev.Aux, MID: ev.MID, TID: ev.TID, PID: ev.PID,
			Reason: ev.Reason, Flags: ev.Flags}
		if ev.PC != 0 {
			j.PC = fmt.Sprintf("%#x", ev.PC)
			if in.Symbolize != nil {
				if f, ok := in.Symbolize(ev.PC, retPC(ev.Kind)); ok {
					j.Function, j.File, j.Line = f.Func, f.File, f.Line
				}
			}
		}
		if ev.PC2 != 0 {
			j.PC2 = fmt.Sprintf("%#x", ev.PC2)
		}
		if ev.StackID != event.NoStack {
			id := ev.StackID
			j.Stack = &id
		}
		if ev.Kind == event.KindGoPark {
			j.ReasonName = wr.Name(ev.Reason)
		}
		err = enc.Encode(&j)
	})
	if err != nil {
		return err
	}
	if st := in.Paths.Config().Stacks; st != nil {
		stacks := map[string][]string{}
		for _, id := range in.Paths.StackIDs() {
			var pcs []string
			for _, pc := range st(id) {
				pcs = append(pcs, fmt.Sprintf("%#x", pc))
			}
			stacks[fmt.Sprint(id)] = pcs
		}
		if len(stacks) > 0 {
			if err := enc.Encode(map[string]any{"kind": "Stacks", "stacks": stacks}); err != nil {
				return err
			}
		}
	}
	return bw.Flush()
}
