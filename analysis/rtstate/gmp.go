package rtstate

import (
	"encoding/binary"
	"fmt"

	"github.com/gmpwatch/gmpwatch/analysis/event"
)

// M is one M of runtime.allm: a thread and what it is doing.
type M struct {
	ID  int64  // m.id
	TID uint64 // m.procid, the thread ID (0 before the thread started)
	// P is the ID of the P the M holds (m.p), -1 when none.
	P int32
	// Spinning: looking for work (m.spinning). Blocked: asleep on a note
	// (m.blocked), which is how an idle M (stopm) waits; Idle is Blocked
	// without a P and without a goroutine.
	Spinning, Blocked, Idle bool
	// Locked: a goroutine is locked to this thread (m.lockedg set,
	// runtime.LockOSThread or cgo callbacks); false when the layout lacks
	// the field.
	Locked bool
	// Syscall: its goroutine is in a system call (status Gsyscall).
	Syscall bool
	// G is the user goroutine it runs (m.curg), 0 when on g0 (scheduling)
	// or idle; GStatus and GStartPC describe it.
	G        uint64
	GStatus  uint32
	GStartPC uint64
}

// PM is one P of runtime.allp with the M that holds it and that M's
// goroutine: the M:N mapping at one instant.
type PM struct {
	Proc
	M        int64  // m.id of the M holding it, -1 when none
	TID      uint64 // that M's thread ID
	G        uint64 // the goroutine running on it, 0 when none
	GStatus  uint32
	GStartPC uint64
}

// GMP is one reading of the G/M/P picture: the scheduler's global state,
// every P with its M and goroutine, every M. Like every read of a running
// process it is a racy snapshot: fields that fail validation are left out
// and counted in Skipped.
type GMP struct {
	*Sched
	Ps []PM
	Ms []M
	// Skipped counts Ms and goroutines whose read failed validation.
	Skipped int
}

// gmpOffsets are the fields GMP reads beyond those of New; -1 when absent.
type gmpOffsets struct {
	mProcid, mCurg, mP, mID, mSpinning, mBlocked, mLockedg int64
	mRead                                                  int
}

func (r *Reader) gmpOffsets() gmpOffsets {
	opt := func(key string) int64 {
		if v, ok := r.plan.Offset(key); ok {
			return v
		}
		return -1
	}
	o := gmpOffsets{
		mProcid:   opt("m.procid"),
		mCurg:     opt("m.curg"),
		mP:        opt("m.p"),
		mID:       opt("m.id"),
		mSpinning: opt("m.spinning"),
		mBlocked:  opt("m.blocked"),
		mLockedg:  opt("m.lockedg"),
	}
	o.mRead = int(maxOf(r.off.mAlllink+8, o.mProcid+8, o.mCurg+8, o.mP+8, o.mID+8, o.mSpinning+1, o.mBlocked+1, o.mLockedg+8))
	return o
}

// GMP reads the scheduler's state (as Sched does), then walks runtime.allm
// for each M's thread, P, flags and goroutine, and links every P to the M
// holding it. It needs m.curg, m.p and m.id in the plan; the flags it
// lacks read as false.
func (r *Reader) GMP() (*GMP, error) {
	s, err := r.Sched()
	if err != nil {
		return nil, err
	}
	o := r.gmpOffsets()
	if o.mCurg < 0 || o.mP < 0 || o.mID < 0 {
		return nil, fmt.Errorf("%w: m.curg, m.p or m.id (go %s)", ErrMissing, r.plan.GoVersion)
	}
	out := &GMP{Sched: s}

	// P addresses, to name the P an M holds.
	pid := map[uint64]int32{}
	var hdr [16]byte
	if err := r.read(hdr[:], r.allp, "runtime.allp"); err != nil {
		return nil, err
	}
	ptr, n := binary.LittleEndian.Uint64(hdr[0:]), binary.LittleEndian.Uint64(hdr[8:])
	if n > 0 && n <= 1<<16 && plausiblePtr(ptr) {
		ptrs := make([]byte, 8*n)
		if err := r.read(ptrs, ptr, "runtime.allp array"); err != nil {
			return nil, err
		}
		for i := uint64(0); i < n; i++ {
			pid[binary.LittleEndian.Uint64(ptrs[8*i:])] = int32(i)
		}
	}

	mp, err := r.readU64(r.allm, "runtime.allm")
	if err != nil {
		return nil, err
	}
	mb := make([]byte, o.mRead)
	gb := make([]byte, r.gRead)
	seen := map[uint64]bool{}
	for mp != 0 && len(seen) < maxThreads {
		if !plausiblePtr(mp) || seen[mp] {
			out.Skipped++
			break
		}
		seen[mp] = true
		if err := r.read(mb, mp, "runtime.m"); err != nil {
			out.Skipped++
			break
		}
		m := M{ID: int64(u64(mb, o.mID)), P: -1}
		if o.mProcid >= 0 {
			m.TID = u64(mb, o.mProcid)
		}
		if pp := u64(mb, o.mP); pp != 0 {
			if id, ok := pid[pp]; ok {
				m.P = id
			} else {
				out.Skipped++
			}
		}
		m.Spinning = o.mSpinning >= 0 && mb[o.mSpinning] != 0
		m.Blocked = o.mBlocked >= 0 && mb[o.mBlocked] != 0
		m.Locked = o.mLockedg >= 0 && u64(mb, o.mLockedg) != 0
		if gp := u64(mb, o.mCurg); gp != 0 {
			if plausiblePtr(gp) && r.read(gb, gp, "runtime.g") == nil {
				st := u32(gb, r.off.gStatus) &^ event.StatusScan
				switch {
				case st == event.StatusDead || st == event.StatusDeadExtra:
					// An extra M's parked g (cgo callbacks): no goroutine.
				case st <= event.StatusLeaked:
					m.G, m.GStatus, m.GStartPC = u64(gb, r.off.gGoid), st, u64(gb, r.off.gStartpc)
					m.Syscall = st == event.StatusSyscall
				default:
					out.Skipped++
				}
			} else {
				out.Skipped++
			}
		}
		m.Idle = m.Blocked && m.P < 0 && m.G == 0
		out.Ms = append(out.Ms, m)
		mp = u64(mb, r.off.mAlllink)
	}

	byP := map[int32]*M{}
	for i := range out.Ms {
		if m := &out.Ms[i]; m.P >= 0 {
			byP[m.P] = m
		}
	}
	for _, p := range s.Procs {
		pm := PM{Proc: p, M: -1}
		if m, ok := byP[p.ID]; ok {
			pm.M, pm.TID, pm.G, pm.GStatus, pm.GStartPC = m.ID, m.TID, m.G, m.GStatus, m.GStartPC
		}
		out.Ps = append(out.Ps, pm)
	}
	return out, nil
}
