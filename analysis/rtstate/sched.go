package rtstate

import (
	"encoding/binary"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// P statuses as stored in p.status (runtime/runtime2.go), the same in every
// release gmpwatch supports (go1.26 no longer uses syscall).
const (
	PIdle    = 0
	PRunning = 1
	PSyscall = 2
	PGCStop  = 3
	PDead    = 4
)

// PStatusName names a P status.
func PStatusName(s uint32) string {
	switch s {
	case PIdle:
		return "idle"
	case PRunning:
		return "running"
	case PSyscall:
		return "syscall"
	case PGCStop:
		return "gcstop"
	case PDead:
		return "dead"
	}
	return "pstatus(" + strconv.FormatUint(uint64(s), 10) + ")"
}

// Proc is one P of runtime.allp.
type Proc struct {
	ID     int32  `json:"id"`
	Status string `json:"status"`
	// RunQueue is the length of the P's local run queue (runqtail -
	// runqhead, as GODEBUG=schedtrace prints it); RunNext says whether the
	// runnext slot holds a goroutine as well.
	RunQueue uint32 `json:"runqueue"`
	RunNext  bool   `json:"runnext"`
}

// Sched is one reading of the scheduler's global state.
type Sched struct {
	Mono       int64 // CLOCK_MONOTONIC (the runtime's nanotime) when read
	GOMAXPROCS int32
	NCPU       int32 // 0 when unknown
	Threads    int   // Ms on runtime.allm
	// From runtime.sched.
	IdleThreads     int32 // nmidle
	SpinningThreads int32 // nmspinning
	IdleProcs       int32 // npidle
	RunQueue        int32 // global run queue length
	GoidGen         uint64
	Procs           []Proc
	// GoroutinesCreated counts goroutines created since the process
	// started (go1.26+: sched.goroutinesCreated plus each P's count);
	// HasCreated is false on releases that do not record it.
	GoroutinesCreated uint64
	HasCreated        bool
	// GCCycles is memstats.numgc, completed GC cycles; HasGC is false when
	// the plan does not know where it is.
	GCCycles uint32
	HasGC    bool
	// TimeToRun is sched.timeToRun, the runtime's scheduling-latency
	// histogram (/sched/latencies:seconds), cumulative since start.
	TimeToRun Histogram
	// Skipped counts Ps and Ms whose read failed validation (racing).
	Skipped int

	allpLen int
}

// MonoNow returns CLOCK_MONOTONIC in nanoseconds, the clock of the runtime's
// nanotime (g.waitsince and the like).
func MonoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// maxThreads bounds the walk of runtime.allm, which a racing read could turn
// into a cycle.
const maxThreads = 1 << 20

// Sched reads the scheduler's global state: runtime.sched, gomaxprocs, allp
// and allm. It does not read the goroutines (see Goroutines).
func (r *Reader) Sched() (*Sched, error) {
	s := &Sched{Mono: MonoNow()}
	o := &r.off

	sb := make([]byte, o.sRead)
	if err := r.read(sb, r.sched, "runtime.sched"); err != nil {
		return nil, err
	}
	if r.gomaxprocs != 0 {
		gmp, err := r.readI32(r.gomaxprocs, "runtime.gomaxprocs")
		if err != nil {
			return nil, err
		}
		s.GOMAXPROCS = gmp
	}
	if r.ncpu != 0 {
		if n, err := r.readI32(r.ncpu, "runtime.ncpu"); err == nil {
			s.NCPU = n
		}
	}
	s.GoidGen = u64(sb, o.sGoidgen)
	s.IdleThreads = int32(u32(sb, o.sNmidle))
	s.IdleProcs = int32(u32(sb, o.sNpidle))
	s.SpinningThreads = int32(u32(sb, o.sNmspinning))
	if o.sRunqsize >= 0 {
		s.RunQueue = int32(u32(sb, o.sRunqsize))
	} else {
		s.RunQueue = int32(u32(sb, o.sRunq+o.qSize))
	}
	if s.RunQueue < 0 {
		s.RunQueue, s.Skipped = 0, s.Skipped+1
	}
	if o.sCreated >= 0 && o.pCreated >= 0 {
		s.GoroutinesCreated = u64(sb, o.sCreated)
		s.HasCreated = true
	}
	h, err := DecodeHistogram(r.hist, sb[o.sTimeToRun:])
	if err != nil {
		return nil, err
	}
	s.TimeToRun = h

	if err := r.readProcs(s); err != nil {
		return nil, err
	}
	if r.gomaxprocs == 0 {
		s.GOMAXPROCS = int32(s.allpLen)
	}
	if err := r.countThreads(s); err != nil {
		return nil, err
	}
	if n, err := r.GCCycles(); err == nil {
		s.GCCycles, s.HasGC = n, true
	}
	return s, nil
}

// GCCycles reads memstats.numgc, the GC cycles completed, alone: one 4-byte
// read, cheap enough to poll.
func (r *Reader) GCCycles() (uint32, error) {
	if !r.HasGCCycles() {
		return 0, fmt.Errorf("runtime.memstats.numgc: %w", ErrMissing)
	}
	var b [4]byte
	if err := r.read(b[:], r.memstats+uint64(r.off.numgc), "runtime.memstats.numgc"); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

// readProcs reads runtime.allp and each P.
func (r *Reader) readProcs(s *Sched) error {
	o := &r.off
	var hdr [24]byte
	if err := r.read(hdr[:], r.allp, "runtime.allp"); err != nil {
		return err
	}
	ptr, n := binary.LittleEndian.Uint64(hdr[0:]), binary.LittleEndian.Uint64(hdr[8:])
	s.allpLen = int(n)
	if n == 0 {
		return nil
	}
	if n > 1<<16 || !plausiblePtr(ptr) {
		return fmt.Errorf("read runtime.allp: implausible slice (%#x, len %d)", ptr, n)
	}
	ptrs := make([]byte, 8*n)
	if err := r.read(ptrs, ptr, "runtime.allp array"); err != nil {
		return err
	}
	pb := make([]byte, o.pRead)
	for i := uint64(0); i < n; i++ {
		pp := binary.LittleEndian.Uint64(ptrs[8*i:])
		if !plausiblePtr(pp) {
			s.Skipped++
			continue
		}
		if err := r.read(pb, pp, "runtime.p"); err != nil {
			s.Skipped++
			continue
		}
		id := int32(u32(pb, o.pID))
		st := u32(pb, o.pStatus)
		q := u32(pb, o.pRunqtail) - u32(pb, o.pRunqhead)
		if id != int32(i) || st > PDead || q > 256 {
			// A P being resized or a torn read: not reported as fact.
			s.Skipped++
			continue
		}
		if st == PDead {
			continue
		}
		s.Procs = append(s.Procs, Proc{ID: id, Status: PStatusName(st), RunQueue: q, RunNext: u64(pb, o.pRunnext) != 0})
		if s.HasCreated {
			s.GoroutinesCreated += u64(pb, o.pCreated)
		}
	}
	return nil
}

// countThreads walks runtime.allm through m.alllink.
func (r *Reader) countThreads(s *Sched) error {
	o := &r.off
	mp, err := r.readU64(r.allm, "runtime.allm")
	if err != nil {
		return err
	}
	mb := make([]byte, o.mRead)
	seen := make(map[uint64]bool)
	for mp != 0 && len(seen) < maxThreads {
		if !plausiblePtr(mp) || seen[mp] {
			s.Skipped++
			break
		}
		seen[mp] = true
		if err := r.read(mb, mp, "runtime.m"); err != nil {
			s.Skipped++
			break
		}
		s.Threads++
		mp = u64(mb, o.mAlllink)
	}
	return nil
}
