// Package rtstate reads the Go runtime's scheduler state out of a live
// process, from its memory, without stopping it or asking it for anything:
// runtime.sched (run queue, idle and spinning counts, the runtime's own
// scheduling-latency histogram sched.timeToRun), runtime.allp, runtime.allm
// and every goroutine in runtime.allgs.
//
// Where things are comes from a probe plan (analysis/plan: link-time
// addresses of the runtime's globals, the load bias, struct field offsets,
// wait-reason names); the bytes come from a Memory such as analysis/procmem's
// Reader. Reads are batched: the allgs slice in one read, then the g structs
// in address order, several per read.
//
// A read of a running process races with the runtime. Nothing read is
// trusted: pointers, statuses, goroutine IDs, wait reasons and program
// counters are validated, and what fails is counted in Skipped instead of
// being reported as fact. Freeze stops every thread of the process for a
// consistent view.
package rtstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/procmem"
)

// Memory reads the target's memory at runtime (not link-time) addresses.
// *procmem.Reader is the implementation used by gmpwatch.
type Memory interface {
	ReadAt(b []byte, addr uint64) (int, error)
}

// ErrMissing is returned by New when the plan lacks a global or a struct
// field that rtstate cannot do without; the error names it.
var ErrMissing = errors.New("plan lacks what rtstate needs")

// Reader reads runtime state described by a plan.
type Reader struct {
	plan   *plan.Plan
	mem    Memory
	closer io.Closer // the memory Open opened
	off    offsets
	hist   HistFormat

	allgs, allglen, allp, allm, sched, gomaxprocs uint64 // runtime addresses
	ncpu, memstats                                uint64 // 0 when absent

	gRead int // bytes of each g that are read: through the last field used
}

// offsets are the struct fields rtstate uses. -1 means "this release has no
// such field".
type offsets struct {
	gStack, gStatus, gGoid, gWaitsince, gWaitreason, gParent, gGopc, gStartpc int64

	mAlllink int64
	mRead    int

	pID, pStatus, pRunqhead, pRunqtail, pRunnext, pCreated int64
	pRead                                                  int

	sGoidgen, sNmidle, sNpidle, sNmspinning, sRunqsize, sRunq, sTimeToRun, sCreated int64
	qSize                                                                           int64
	sRead                                                                           int

	numgc int64 // offset of numgc in runtime.memstats, -1 if unknown
}

// New checks that p has everything needed and returns a Reader of mem.
// Open reads the process p describes (p.PID, as plan.FromProcess fills it)
// through /proc/PID/mem. Close releases it.
func Open(p *plan.Plan) (*Reader, error) {
	mem, err := procmem.Open(p.PID)
	if err != nil {
		return nil, err
	}
	r, err := New(p, mem)
	if err != nil {
		mem.Close()
		return nil, fmt.Errorf("pid %d: %w", p.PID, err)
	}
	r.closer = mem
	return r, nil
}

// Close releases the memory Open opened; it does nothing for New's reader.
func (r *Reader) Close() error {
	if r.closer == nil {
		return nil
	}
	return r.closer.Close()
}

func New(p *plan.Plan, mem Memory) (*Reader, error) {
	r := &Reader{plan: p, mem: mem}
	var missing []string
	need := func(key string) int64 {
		v, ok := p.Offset(key)
		if !ok {
			missing = append(missing, key)
			return 0
		}
		return v
	}
	opt := func(key string) int64 {
		if v, ok := p.Offset(key); ok {
			return v
		}
		return -1
	}
	global := func(name string, required bool) uint64 {
		g, ok := p.Globals[name]
		if !ok || g.Address == 0 {
			if required {
				missing = append(missing, name)
			}
			return 0
		}
		return g.Address + p.LoadBias
	}
	o := &r.off
	o.gStack = need("g.stack")
	o.gStatus = need("g.atomicstatus")
	o.gGoid = need("g.goid")
	o.gWaitsince = need("g.waitsince")
	o.gWaitreason = need("g.waitreason")
	o.gParent = opt("g.parentGoid") // go1.21+
	o.gGopc = need("g.gopc")
	o.gStartpc = need("g.startpc")

	o.mAlllink = need("m.alllink")

	o.pID = need("p.id")
	o.pStatus = need("p.status")
	o.pRunqhead = need("p.runqhead")
	o.pRunqtail = need("p.runqtail")
	o.pRunnext = need("p.runnext")
	o.pCreated = opt("p.goroutinesCreated") // go1.26+

	o.sGoidgen = need("sched.goidgen")
	o.sNmidle = need("sched.nmidle")
	o.sNpidle = need("sched.npidle")
	o.sNmspinning = need("sched.nmspinning")
	o.sTimeToRun = need("sched.timeToRun")
	o.sCreated = opt("sched.goroutinesCreated") // go1.26+
	// The global run queue's length: sched.runqsize up to go1.24,
	// sched.runq.size (a gQueue) from go1.25.
	o.sRunqsize = opt("sched.runqsize")
	o.sRunq, o.qSize = -1, -1
	if o.sRunqsize < 0 {
		o.sRunq = opt("sched.runq")
		o.qSize = opt("gQueue.size")
		if o.sRunq < 0 || o.qSize < 0 {
			missing = append(missing, "sched.runqsize or sched.runq+gQueue.size")
		}
	}
	// GC cycles: memstats.numgc, from DWARF, or from the tables of the
	// releases the tests can build (go1.19, go1.26, go1.27); without it stat
	// reports GC cycles as unknown.
	o.numgc = opt("mstats.numgc")

	r.allgs = global("runtime.allgs", true)
	r.allglen = global("runtime.allglen", true)
	r.allp = global("runtime.allp", true)
	r.allm = global("runtime.allm", true)
	r.sched = global("runtime.sched", true)
	// gomaxprocs is found through .symtab only: stripped binaries go
	// without, and GOMAXPROCS is then len(allp), which procresize keeps
	// equal to it.
	r.gomaxprocs = global("runtime.gomaxprocs", false)
	r.ncpu = global("runtime.ncpu", false)
	r.memstats = global("runtime.memstats", false)
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s (go %s, layout %s)", ErrMissing, strings.Join(missing, ", "), p.GoVersion, p.LayoutSource)
	}

	r.hist = HistFormatFor(p.GoVersion)
	r.gRead = int(maxOf(o.gStack+16, o.gStatus+4, o.gGoid+8, o.gWaitsince+8, o.gWaitreason+1, o.gParent+8, o.gGopc+8, o.gStartpc+8))
	o.mRead = int(o.mAlllink + 8)
	o.pRead = int(maxOf(o.pID+4, o.pStatus+4, o.pRunqhead+4, o.pRunqtail+4, o.pRunnext+8, o.pCreated+8))
	o.sRead = int(maxOf(o.sGoidgen+8, o.sNmidle+4, o.sNpidle+4, o.sNmspinning+4, o.sRunqsize+4, o.sRunq+o.qSize+4,
		o.sTimeToRun+int64(r.hist.Size()), o.sCreated+8))
	return r, nil
}

// HasGCCycles reports whether Sched can read the GC cycle count: it needs
// the runtime.memstats global (.symtab) and the "mstats.numgc" offset.
func (r *Reader) HasGCCycles() bool { return r.memstats != 0 && r.off.numgc >= 0 }

// HasCreated reports whether the release records goroutines created since
// start (go1.26+).
func (r *Reader) HasCreated() bool { return r.off.sCreated >= 0 && r.off.pCreated >= 0 }

// Plan returns the plan the reader was made with.
func (r *Reader) Plan() *plan.Plan { return r.plan }

// HistFormat returns the layout of sched.timeToRun in this target.
func (r *Reader) HistFormat() HistFormat { return r.hist }

// HistFormatFor returns the timeHistogram layout of a Go release
// ("go1.19.8"): go1.20 changed it. An unparsable version (a development
// build) gets the current layout.
func HistFormatFor(goVersion string) HistFormat {
	if major, minor, ok := parseGoVersion(goVersion); ok && major == 1 && minor < 20 {
		return HistGo118
	}
	return HistGo120
}

func parseGoVersion(v string) (major, minor int, ok bool) {
	v, found := strings.CutPrefix(v, "go")
	if !found {
		return 0, 0, false
	}
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	// "1.21rc2": keep the leading digits.
	m := parts[1]
	for i, c := range m {
		if c < '0' || c > '9' {
			m = m[:i]
			break
		}
	}
	minor, err2 := strconv.Atoi(m)
	return major, minor, err1 == nil && err2 == nil
}

func maxOf(v ...int64) int64 {
	var m int64
	for _, x := range v {
		if x > m {
			m = x
		}
	}
	return m
}

// read fills b from addr, failing on a short read.
func (r *Reader) read(b []byte, addr uint64, what string) error {
	n, err := r.mem.ReadAt(b, addr)
	if err != nil {
		return fmt.Errorf("read %s at %#x: %w", what, addr, err)
	}
	if n < len(b) {
		return fmt.Errorf("read %s at %#x: short read (%d of %d bytes)", what, addr, n, len(b))
	}
	return nil
}

func (r *Reader) readU64(addr uint64, what string) (uint64, error) {
	var b [8]byte
	if err := r.read(b[:], addr, what); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

func (r *Reader) readI32(addr uint64, what string) (int32, error) {
	var b [4]byte
	if err := r.read(b[:], addr, what); err != nil {
		return 0, err
	}
	return int32(binary.LittleEndian.Uint32(b[:])), nil
}

func u64(b []byte, off int64) uint64 { return binary.LittleEndian.Uint64(b[off:]) }
func u32(b []byte, off int64) uint32 { return binary.LittleEndian.Uint32(b[off:]) }

// plausiblePtr reports whether v can be a pointer to a heap object of the
// runtime: non-nil, 8-byte aligned, in the user half of the address space.
// (go1.26 randomizes the heap base, so no tighter range is assumed.)
func plausiblePtr(v uint64) bool {
	return v >= 4096 && v&7 == 0 && v < 1<<47
}
