package rtstate

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"github.com/gmpwatch/gmpwatch/analysis/event"
)

// StatusName names a G status (the values of analysis/event) the way the
// runtime's tracebacks do (runtime.gStatusStrings), "leaked" for go1.26's
// leaked goroutines.
func StatusName(s uint32) string {
	switch s &^ event.StatusScan {
	case event.StatusIdle:
		return "idle"
	case event.StatusRunnable:
		return "runnable"
	case event.StatusRunning:
		return "running"
	case event.StatusSyscall:
		return "syscall"
	case event.StatusWaiting:
		return "waiting"
	case event.StatusDead, event.StatusDeadExtra:
		return "dead"
	case event.StatusCopystack:
		return "copystack"
	case event.StatusPreempted:
		return "preempted"
	case event.StatusLeaked:
		return "leaked"
	}
	return fmt.Sprintf("status(%d)", s)
}

// G is one goroutine as read from its runtime.g (48 bytes: a million of
// them are held at once).
type G struct {
	Goid uint64
	// WaitSince is the runtime's nanotime (CLOCK_MONOTONIC) that a GC
	// stamped on the goroutine when its stack scan found it blocked, 0 when
	// unset. The stamp is work.tstart, the end of the previous GC, so the
	// wait is approximate to a GC cycle, and unknown until a GC ran.
	WaitSince  int64
	ParentGoid uint64 // 0 when the release does not record it (before go1.21)
	GoPC       uint64 // runtime address of the go statement's call (a return address)
	StartPC    uint64 // runtime address of the goroutine's function
	Status     uint32 // without event.StatusScan
	// WaitReason indexes the plan's WaitReasons; meaningful when Status is
	// event.StatusWaiting (or event.StatusLeaked).
	WaitReason uint8
}

// Skipped counts the allgs entries that were not reported because what was
// read did not hold together: the runtime changed them while they were
// read, or a stale allgs array was read.
type Skipped struct {
	BadPointer    int `json:"bad_pointer"`     // nil, misaligned or duplicate entry in allgs
	Unreadable    int `json:"unreadable"`      // the runtime.g could not be read
	BadStatus     int `json:"bad_status"`      // not a known G status
	BadGoid       int `json:"bad_goid"`        // 0, or beyond sched.goidgen
	BadStack      int `json:"bad_stack"`       // stack bounds inverted or absurd
	BadWaitReason int `json:"bad_wait_reason"` // beyond the release's wait reasons
	BadPC         int `json:"bad_pc"`          // start PC not in a function (ScanOptions.ValidPC)
}

// Total is the number of skipped entries.
func (s Skipped) Total() int {
	return s.BadPointer + s.Unreadable + s.BadStatus + s.BadGoid + s.BadStack + s.BadWaitReason + s.BadPC
}

// GScan is one pass over runtime.allgs.
type GScan struct {
	AllgLen int // entries read from allgs
	Dead    int // dead (or idle) Gs kept by the runtime for reuse: not goroutines
	Skipped Skipped
	Mono    int64 // CLOCK_MONOTONIC at the end of the pass
	Reads   int   // read calls on the target's memory
	// Goroutines are the live goroutines, in goid order.
	Goroutines []G
}

// ScanOptions tune Goroutines.
type ScanOptions struct {
	// ValidPC, when set, is asked about each goroutine's start PC (a
	// runtime address); a goroutine whose start PC it rejects is skipped
	// as BadPC: a torn read.
	ValidPC func(pc uint64) bool
	// ChunkBytes bounds one read of g structs (default 1 MiB).
	ChunkBytes int
}

// maxAllgs bounds the allgs slice read: 64 Mi goroutines, 512 MiB of
// pointers, is past anything real and stops a garbage length.
const maxAllgs = 1 << 26

// Goroutines reads every goroutine: the allgs slice of pointers in one read,
// then the g structs sorted by address, several per read (ChunkBytes). It
// checks ctx between reads.
func (r *Reader) Goroutines(ctx context.Context, opt ScanOptions) (*GScan, error) {
	chunk := opt.ChunkBytes
	if chunk <= 0 {
		chunk = 1 << 20
	}
	if chunk < r.gRead {
		chunk = r.gRead
	}
	sc := &GScan{}
	// allglen first: the runtime stores the array before the length, so
	// allglen <= len(allgs) of the array read after it.
	n, err := r.readU64(r.allglen, "runtime.allglen")
	if err != nil {
		return nil, err
	}
	var hdr [24]byte
	if err := r.read(hdr[:], r.allgs, "runtime.allgs"); err != nil {
		return nil, err
	}
	arr, alen := binary.LittleEndian.Uint64(hdr[0:]), binary.LittleEndian.Uint64(hdr[8:])
	sc.Reads += 2
	if alen < n {
		n = alen
	}
	if n > maxAllgs || (n > 0 && !plausiblePtr(arr)) {
		return nil, fmt.Errorf("read runtime.allgs: implausible slice (%#x, len %d, allglen %d)", arr, alen, n)
	}
	sc.AllgLen = int(n)
	if n == 0 {
		sc.Mono = MonoNow()
		return sc, nil
	}

	raw := make([]byte, 8*n)
	if err := r.read(raw, arr, "runtime.allgs array"); err != nil {
		return nil, err
	}
	sc.Reads++
	// Read in address order; sort by goid at the end.
	ptrs := make([]uint64, 0, n)
	for i := uint64(0); i < n; i++ {
		p := binary.LittleEndian.Uint64(raw[8*i:])
		if !plausiblePtr(p) {
			sc.Skipped.BadPointer++
			continue
		}
		ptrs = append(ptrs, p)
	}
	raw = nil
	slices.Sort(ptrs)

	all := make([]G, len(ptrs)) // Status 0 marks an empty slot

	// Workers read disjoint address ranges into disjoint slots of all.
	workers := min(runtime.GOMAXPROCS(0), 4)
	if len(ptrs) < 4096 {
		workers = 1
	}
	parts := make([]GScan, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		lo, hi := w*len(ptrs)/workers, (w+1)*len(ptrs)/workers
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = r.readGs(ctx, ptrs[lo:hi], chunk, all[lo:hi], &parts[w])
		}()
	}
	wg.Wait()
	for w := range parts {
		if errs[w] != nil {
			return nil, errs[w]
		}
		sc.add(&parts[w])
	}
	sc.Mono = MonoNow()

	// Validate goids against the generator read after the pass, so that
	// goroutines created during it pass.
	var sb [8]byte
	if err := r.read(sb[:], r.sched+uint64(r.off.sGoidgen), "sched.goidgen"); err != nil {
		return nil, err
	}
	goidgen := binary.LittleEndian.Uint64(sb[:])
	ptrs = nil
	live := all[:0]
	for _, g := range all {
		if g.Status == 0 {
			continue // not live, or skipped
		}
		if g.Goid == 0 || g.Goid > goidgen || g.ParentGoid > goidgen {
			sc.Skipped.BadGoid++
			continue
		}
		if opt.ValidPC != nil && !opt.ValidPC(g.StartPC) {
			sc.Skipped.BadPC++
			continue
		}
		if g.WaitSince < 0 || g.WaitSince > sc.Mono {
			g.WaitSince = 0 // torn or not yet meaningful
		}
		live = append(live, g)
	}
	sc.Goroutines = live
	sortByGoid(sc.Goroutines, goidgen)
	// Two Gs with one goid: a G reused while the pass ran. Keep the first.
	out := sc.Goroutines[:0]
	for i, g := range sc.Goroutines {
		if i > 0 && g.Goid == sc.Goroutines[i-1].Goid {
			sc.Skipped.BadGoid++
			continue
		}
		out = append(out, g)
	}
	sc.Goroutines = out
	return sc, nil
}

// readGs reads the g structs at ptrs (sorted by address), several per read,
// into out[i] for ptrs[i], counting in sc.
func (r *Reader) readGs(ctx context.Context, ptrs []uint64, chunk int, out []G, sc *GScan) error {
	buf := make([]byte, chunk)
	small := make([]byte, r.gRead)
	gsz := uint64(r.gRead)
	const gap = 4096 // read through gaps up to this size rather than split
	for i := 0; i < len(ptrs); {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := ptrs[i]
		end := start + gsz
		j := i + 1
		for j < len(ptrs) && ptrs[j] <= end+gap && ptrs[j]+gsz-start <= uint64(chunk) {
			if ptrs[j]+gsz > end {
				end = ptrs[j] + gsz
			}
			j++
		}
		got, _ := r.mem.ReadAt(buf[:end-start], start)
		sc.Reads++
		for k := i; k < j; k++ {
			p := ptrs[k]
			if k > i && p == ptrs[k-1] {
				sc.Skipped.BadPointer++ // duplicate
				continue
			}
			var b []byte
			if got > 0 && p+gsz <= start+uint64(got) {
				b = buf[p-start : p-start+gsz]
			} else {
				// Part of the window is unmapped (a stale pointer): this
				// g alone.
				m, err := r.mem.ReadAt(small, p)
				sc.Reads++
				if err != nil || m < len(small) {
					sc.Skipped.Unreadable++
					continue
				}
				b = small
			}
			r.decodeG(b, sc, &out[k])
		}
		i = j
	}
	return nil
}

// add adds the counts of o to sc.
func (sc *GScan) add(o *GScan) {
	sc.Dead += o.Dead
	sc.Reads += o.Reads
	s, t := &sc.Skipped, o.Skipped
	s.BadPointer += t.BadPointer
	s.Unreadable += t.Unreadable
	s.BadStatus += t.BadStatus
	s.BadGoid += t.BadGoid
	s.BadStack += t.BadStack
	s.BadWaitReason += t.BadWaitReason
	s.BadPC += t.BadPC
}

// decodeG validates one g's bytes and stores it in out, leaving out zero
// (Status 0) when it is not a live goroutine.
func (r *Reader) decodeG(b []byte, sc *GScan, out *G) {
	o := &r.off
	st := u32(b, o.gStatus) &^ event.StatusScan
	switch st {
	case event.StatusDead, event.StatusDeadExtra, event.StatusIdle:
		sc.Dead++
		return
	case event.StatusRunnable, event.StatusRunning, event.StatusSyscall, event.StatusWaiting, event.StatusCopystack, event.StatusPreempted, event.StatusLeaked:
	default:
		sc.Skipped.BadStatus++
		return
	}
	lo, hi := u64(b, o.gStack), u64(b, o.gStack+8)
	if lo == 0 || hi <= lo || hi-lo > 1<<30 {
		sc.Skipped.BadStack++
		return
	}
	g := G{
		Goid:      u64(b, o.gGoid),
		Status:    st,
		WaitSince: int64(u64(b, o.gWaitsince)),
		GoPC:      u64(b, o.gGopc),
		StartPC:   u64(b, o.gStartpc),
	}
	if st == event.StatusWaiting || st == event.StatusLeaked {
		g.WaitReason = b[o.gWaitreason]
		if wr := r.plan.WaitReasons; len(wr) > 0 && int(g.WaitReason) >= len(wr) {
			sc.Skipped.BadWaitReason++
			return
		}
	}
	if o.gParent >= 0 {
		g.ParentGoid = u64(b, o.gParent)
	}
	*out = g
}

// Counts counts goroutines by status name.
func (sc *GScan) Counts() map[string]int {
	m := make(map[string]int)
	for _, g := range sc.Goroutines {
		m[StatusName(g.Status)]++
	}
	return m
}

// sortByGoid sorts gs by goid. A million 48-byte structs sort slowly through
// a comparison function, so when goids fit in 38 bits it sorts packed
// goid<<26|index keys and permutes gs in place.
func sortByGoid(gs []G, goidgen uint64) {
	byGoid := func(a, b G) int { return cmp.Compare(a.Goid, b.Goid) }
	if slices.IsSortedFunc(gs, byGoid) {
		return
	}
	const idxBits = 26
	if goidgen >= 1<<(64-idxBits) || len(gs) >= 1<<idxBits {
		slices.SortFunc(gs, byGoid)
		return
	}
	keys := make([]uint64, len(gs))
	for i := range gs {
		keys[i] = gs[i].Goid<<idxBits | uint64(i)
	}
	slices.Sort(keys)
	// Position i takes the G from src(i); follow each cycle once, marking
	// a done position by pointing it at itself.
	const mask = 1<<idxBits - 1
	src := func(i int) int { return int(keys[i] & mask) }
	for i := range gs {
		if src(i) == i {
			continue
		}
		tmp := gs[i]
		j := i
		for {
			k := src(j)
			keys[j] = keys[j]&^mask | uint64(j)
			if k == i {
				gs[j] = tmp
				break
			}
			gs[j] = gs[k]
			j = k
		}
	}
}
