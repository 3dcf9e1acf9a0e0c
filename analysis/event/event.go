// Package event defines gmpwatch's event schema: the one table of scheduler
// events that the BPF programs in ebpf/ emit, the loader decodes, recordings
// store and the scheduler model in analysis/sched interprets.
//
// The C mirror of Event is struct gmp_event in ebpf/gmpwatch.h; the two must
// stay byte-for-byte identical (64 bytes, little endian). States are named as
// in golang.org/x/exp/trace: GoRunnable, GoRunning, GoWaiting, GoSyscall.
//
// Every event carries the time (CLOCK_MONOTONIC nanoseconds, the clock of the
// runtime's nanotime, so g.waitsince and event times compare directly), the
// thread (TID), the runtime M (MID, m.id) and P (PID, p.id; -1 when the M holds
// no P) on which the probe fired, and a subject goroutine (Goid). The meaning
// of Aux, PC, PC2 and Reason depends on the kind:
//
//	kind          probe                                  transition               Goid       Aux                PC             PC2         Reason
//	GoCreate      newproc: the runqput call after        (none) → GoRunnable      new G      parent goid        go statement   start func  -
//	              newproc1 (newg in BX), or newproc1 RET                                                (g.gopc)       (g.startpc)
//	GoStart       runtime.execute(gp)                    GoRunnable → GoRunning   gp         -                  -              -           -
//	GoPark        runtime.gopark(.., reason, ..)         GoRunning → GoWaiting    current G  -                  caller of      -           wait reason
//	                                                                                                           gopark                     (index)
//	GoUnpark      runtime.ready(gp) and the other        GoWaiting → GoRunnable   gp         goid of the G      -              -           -
//	              paths that make a G runnable                                               that readied it
//	GoSched       runtime.goschedImpl(gp, preempted)     GoRunning → GoRunnable   gp         -                  -              -           1 if preempted
//	GoExit        runtime.goexit0(gp)                    GoRunning → GoDead       gp         -                  g.gopc         g.startpc   -
//	Schedule      runtime.schedule()                     M enters the scheduler   m.curg     -                  -              -           -
//	ThreadCreate  runtime.newm(fn, pp, id)               a new M is started       m.curg     id argument (-1:   caller         -           -
//	                                                                                         allocated later)
//	SyscallEnter  runtime.entersyscall                   GoRunning → GoSyscall    current G  -                  caller         -           -
//	SyscallExit   runtime.exitsyscall                    GoSyscall → GoRunning    current G  -                  caller         -           1 if the P was
//	                                                                                                                                      handed off
//	Status        runtime.casgstatus(gp, old, new)       old → new (opt-in, hot)  gp         old status         -              -           new status
//	Alloc         runtime.mProf_Malloc(mp, p, size)      sampled allocation       current G  bytes              caller         -           -
//	HeapGrow      runtime.(*mheap).grow(h, npage)        heap grows (MA)          current G  npage*8192 asked   -              -           -
//	ThreadStart   runtime.newosproc(mp)                  clone of a new thread    current G  new m.id           -              -           -
//	ChanSend      runtime.chansend(c, ep, block, pc)     opt-in, hot (CC)         current G  channel address    caller pc      -           1 if blocking
//	ChanRecv      runtime.chanrecv(c, ep, block)         opt-in, hot (CC)         current G  channel address    caller pc      -           1 if blocking
//	Malloc        runtime.mallocgc(size, typ, zero)      opt-in, very hot (MA)    current G  bytes              caller pc      -           -
//
// SyscallExit's PID is the P the M still holds when the syscall returns (-1
// and Reason 1 when sysmon handed it off). ThreadStart's Aux names the M whose
// thread is cloned; a ThreadCreate whose id argument is -1 is followed by the
// ThreadStart of the M it allocated. HeapGrow's Aux is what grow was asked
// for; the heap grows by whole 4 MiB chunks (512 pages) at least.
//
// StackID, when not NoStack, names a user stack captured at the probe and
// shipped separately (see the recording format). Stacks are captured at
// GoPark (the park), GoCreate (at runtime.newproc's entry, on the goroutine
// running the go statement), ThreadCreate (whoever called newm, usually a
// runtime path on g0 that frame pointers follow back onto the user stack),
// SyscallEnter and Alloc; every other event has NoStack. A stack is leaf
// first: frame 0 is the probed instruction in the probed function, the other
// frames are return addresses (symbolize them at pc-1). The probed
// function's direct caller, which a frame-pointer walk from a function's
// entry misses, is not in the stack: it is the event's PC (for GoCreate
// g.gopc, the go statement), to be put back as the second frame. A stack is
// at most 64 frames; on g0 it may end in junk frames past runtime.mstart.
package event

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Kind is the type of an event. The numbering is part of the recording format:
// append, never renumber.
type Kind uint16

const (
	KindInvalid Kind = iota
	KindGoCreate
	KindGoStart
	KindGoPark
	KindGoUnpark
	KindGoSched
	KindGoExit
	KindSchedule
	KindThreadCreate
	KindSyscallEnter
	KindSyscallExit
	KindStatus
	KindAlloc
	KindHeapGrow
	KindThreadStart
	KindChanSend
	KindChanRecv
	KindMalloc
	kindCount
)

var kindNames = [...]string{
	KindInvalid:      "Invalid",
	KindGoCreate:     "GoCreate",
	KindGoStart:      "GoStart",
	KindGoPark:       "GoPark",
	KindGoUnpark:     "GoUnpark",
	KindGoSched:      "GoSched",
	KindGoExit:       "GoExit",
	KindSchedule:     "Schedule",
	KindThreadCreate: "ThreadCreate",
	KindSyscallEnter: "SyscallEnter",
	KindSyscallExit:  "SyscallExit",
	KindStatus:       "Status",
	KindAlloc:        "Alloc",
	KindHeapGrow:     "HeapGrow",
	KindThreadStart:  "ThreadStart",
	KindChanSend:     "ChanSend",
	KindChanRecv:     "ChanRecv",
	KindMalloc:       "Malloc",
}

func (k Kind) String() string {
	if k < kindCount {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint16(k))
}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k > KindInvalid && k < kindCount }

// ParseKind returns the kind with the given name.
func ParseKind(name string) (Kind, bool) {
	for k, n := range kindNames {
		if n == name && Kind(k) != KindInvalid {
			return Kind(k), true
		}
	}
	return KindInvalid, false
}

// NoStack is the StackID of an event without a captured stack.
const NoStack = -1

// Flag bits of Event.Flags.
const (
	// FlagParked marks a GoCreate whose new goroutine starts in GoWaiting
	// (newproc1's parked argument, used by the runtime for coroutines).
	FlagParked uint8 = 1 << 0
	// FlagFromG0 marks an event whose probe ran on the M's g0 stack.
	FlagFromG0 uint8 = 1 << 1
)

// Event is one decoded scheduler event. Its layout mirrors struct gmp_event.
type Event struct {
	Ts      uint64 // CLOCK_MONOTONIC ns
	Goid    uint64 // subject goroutine; 0 when none
	Aux     uint64 // kind-specific, see the table
	PC      uint64 // kind-specific program counter
	PC2     uint64 // kind-specific program counter
	MID     int64  // m.id of the M on which the probe fired; -1 unknown
	TID     uint32 // kernel thread ID
	PID     int32  // p.id of the M's P; -1 when it holds none
	StackID int32  // NoStack, or the id of a captured user stack
	Kind    Kind
	Reason  uint8
	Flags   uint8
}

// Size is the encoded size of an Event in bytes.
const Size = 64

// ErrShort is returned when a buffer is too small for an event.
var ErrShort = errors.New("event: short buffer")

// ErrKind is returned when a decoded event has an unknown kind.
var ErrKind = errors.New("event: unknown kind")

// Decode decodes the little-endian wire form of an event from b.
func Decode(b []byte, ev *Event) error {
	if len(b) < Size {
		return ErrShort
	}
	le := binary.LittleEndian
	ev.Ts = le.Uint64(b[0:])
	ev.Goid = le.Uint64(b[8:])
	ev.Aux = le.Uint64(b[16:])
	ev.PC = le.Uint64(b[24:])
	ev.PC2 = le.Uint64(b[32:])
	ev.MID = int64(le.Uint64(b[40:]))
	ev.TID = le.Uint32(b[48:])
	ev.PID = int32(le.Uint32(b[52:]))
	ev.StackID = int32(le.Uint32(b[56:]))
	ev.Kind = Kind(le.Uint16(b[60:]))
	ev.Reason = b[62]
	ev.Flags = b[63]
	if !ev.Kind.Valid() {
		return fmt.Errorf("%w %d", ErrKind, uint16(ev.Kind))
	}
	return nil
}

// Encode appends the wire form of ev to b.
func Encode(b []byte, ev *Event) []byte {
	le := binary.LittleEndian
	b = le.AppendUint64(b, ev.Ts)
	b = le.AppendUint64(b, ev.Goid)
	b = le.AppendUint64(b, ev.Aux)
	b = le.AppendUint64(b, ev.PC)
	b = le.AppendUint64(b, ev.PC2)
	b = le.AppendUint64(b, uint64(ev.MID))
	b = le.AppendUint32(b, ev.TID)
	b = le.AppendUint32(b, uint32(ev.PID))
	b = le.AppendUint32(b, uint32(ev.StackID))
	b = le.AppendUint16(b, uint16(ev.Kind))
	b = append(b, ev.Reason, ev.Flags)
	return b
}

// G statuses as stored in g.atomicstatus (runtime/runtime2.go). The values are
// the same in every release gmpwatch supports; StatusScan is OR'ed in while
// the garbage collector scans the stack.
const (
	StatusIdle      = 0
	StatusRunnable  = 1
	StatusRunning   = 2
	StatusSyscall   = 3
	StatusWaiting   = 4
	StatusDead      = 6
	StatusCopystack = 8
	StatusPreempted = 9
	StatusLeaked    = 10 // go1.26+
	StatusDeadExtra = 11 // go1.26+
	StatusScan      = 0x1000
)

// StatusName names a G status the way golang.org/x/exp/trace names states.
func StatusName(s uint32) string {
	switch s &^ StatusScan {
	case StatusIdle:
		return "GoIdle"
	case StatusRunnable:
		return "GoRunnable"
	case StatusRunning:
		return "GoRunning"
	case StatusSyscall:
		return "GoSyscall"
	case StatusWaiting:
		return "GoWaiting"
	case StatusDead, StatusDeadExtra:
		return "GoDead"
	case StatusCopystack:
		return "GoCopystack"
	case StatusPreempted:
		return "GoPreempted"
	case StatusLeaked:
		return "GoLeaked"
	}
	return fmt.Sprintf("GoStatus(%d)", s)
}
