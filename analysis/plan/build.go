package plan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"go/version"
	"io"
	"sort"
	"unicode/utf8"

	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/layout"
	"github.com/gmpwatch/gmpwatch/analysis/procmem"
	"github.com/gmpwatch/gmpwatch/patches"
)

// functionSpecs lists the runtime functions a plan locates. Required ones
// must exist in every supported release; the others are used when present.
var functionSpecs = []struct {
	name     string
	required bool
}{
	{"runtime.schedule", true},
	{"runtime.execute", true},
	{"runtime.gopark", true},
	{"runtime.newproc1", true},
	{"runtime.newproc.func1", true},
	{"runtime.ready", true},
	{"runtime.goexit0", true},
	{"runtime.goschedImpl", true},
	{"runtime.casgstatus", true},
	{"runtime.newm", true},
	{"runtime.newosproc", true},
	{"runtime.entersyscall", true},
	{"runtime.exitsyscall", true},
	{"runtime.mallocgc", true},
	{"runtime.injectglist", false},
	{"runtime.newproc", true},
	{"runtime.chansend", true},
	{"runtime.chanrecv", true},
	{"runtime.gdestroy", false}, // go1.22+
	{"runtime.runqput", false},
	{"runtime.mProf_Malloc", false},
	{"runtime.(*mheap).grow", false},
	// Added by the probe-points runtime patch (patches/probe-points): one
	// stable attach point with every transition's data in its arguments.
	{patches.ProbeGoStatus, false},
}

// probeSpecs maps BPF program names to the function whose entry they probe.
// The creation probe is placed apart (see createProbes).
var probeSpecs = []struct {
	program, function string
	optional          bool
}{
	{"schedule", "runtime.schedule", false},
	{"execute", "runtime.execute", false},
	{"gopark", "runtime.gopark", false},
	{"ready", "runtime.ready", false},
	{"goschedImpl", "runtime.goschedImpl", false},
	{"goexit0", "runtime.goexit0", false},
	{"newm", "runtime.newm", false},
	{"injectglist", "runtime.injectglist", true},
	{"casgstatus", "runtime.casgstatus", false},
	{"entersyscall", "runtime.entersyscall", false},
	{"exitsyscall", "runtime.exitsyscall", false},
	{"newosproc", "runtime.newosproc", false},
	{"mallocgc", "runtime.mallocgc", false},
	{"mProf_Malloc", "runtime.mProf_Malloc", true},
	// newproc runs on the goroutine that executes the go statement: the
	// one place where its user stack (the creation stack) is at hand.
	{"newproc", "runtime.newproc", false},
	{"chansend", "runtime.chansend", false},
	{"chanrecv", "runtime.chanrecv", false},
	{"mheap_grow", "runtime.(*mheap).grow", true},
	{"probe_points", patches.ProbeGoStatus, true},
}

// globalNames are the runtime variables a plan locates.
var globalNames = []string{
	"runtime.allgs", "runtime.allglen", "runtime.allp", "runtime.allm", "runtime.sched",
	"runtime.gomaxprocs", "runtime.waitReasonStrings", "runtime.memstats",
	// .symtab only: absent from stripped plans.
	"runtime.ncpu", "runtime.work", "runtime.mheap_", "runtime.buildVersion",
}

// requiredGlobals must be found, with or without .symtab.
var requiredGlobals = map[string]bool{
	"runtime.allgs": true, "runtime.allglen": true, "runtime.allp": true, "runtime.allm": true,
	"runtime.sched": true, "runtime.waitReasonStrings": true,
}

// FromFile builds the plan of a Go executable.
func FromFile(path string) (*Plan, error) {
	b, err := gobin.Open(path)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return fromBinary(b)
}

// FromReader builds the plan of a Go executable read from r; name is used
// in messages and as the plan's Path.
func FromReader(name string, r io.ReaderAt) (*Plan, error) {
	b, err := gobin.NewBinary(name, r)
	if err != nil {
		return nil, err
	}
	return fromBinary(b)
}

// FromProcess builds the plan of a running Go process: the plan of its
// executable (read through /proc/PID/exe, which works across mount
// namespaces), its load bias, and the wait-reason names read from its memory.
func FromProcess(pid int) (*Plan, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	exe, err := procmem.ExePath(pid)
	if err != nil {
		return nil, err
	}
	b, err := gobin.Open(exe)
	if err != nil {
		if !procmem.Exists(pid) {
			return nil, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		return nil, fmt.Errorf("pid %d (%s): %w", pid, procmem.ExeName(pid), err)
	}
	defer b.Close()
	p, err := fromBinary(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	p.PID, p.Exe = pid, procmem.ExeName(pid)
	if p.LoadBias, err = procmem.LoadBias(pid, b.ELF()); err != nil {
		return nil, err
	}
	mem, err := procmem.Open(pid)
	if err != nil {
		return nil, err
	}
	defer mem.Close()
	// The names the process holds win over the file's. A PIE stopped at
	// exec (gmpwatch -- CMD) is not relocated yet and its string headers
	// hold no usable pointers: then the file's names, read by fromBinary
	// with the relocations applied, stand.
	wr := p.Globals["runtime.waitReasonStrings"]
	if w, err := readWaitReasons(mem, wr.Address+p.LoadBias, wr.Size); err == nil {
		p.WaitReasons, p.WaitReasonSource = w, "process"
	}
	return p, nil
}

// fileMemory reads link-time addresses from a binary, relocated as the
// dynamic loader would (less the load bias).
type fileMemory struct{ b *gobin.Binary }

func (f fileMemory) ReadAt(buf []byte, addr uint64) (int, error) {
	data, err := f.b.Relocated(addr, uint64(len(buf)))
	return copy(buf, data), err
}

func fromBinary(b *gobin.Binary) (_ *Plan, err error) {
	defer gobin.Recover(b.Path, &err)
	if version.IsValid(b.GoVersion) && version.Compare(b.GoVersion, layout.Oldest) < 0 {
		return nil, fmt.Errorf("%s is %s: %w (oldest supported: %s)", b.Path, b.GoVersion, ErrUnsupportedVersion, layout.Oldest)
	}
	p := &Plan{
		Path:         b.Path,
		GoVersion:    b.GoVersion,
		Arch:         b.Arch,
		Stripped:     b.Stripped,
		PIE:          b.PIE,
		CGO:          b.CGO,
		ExternalLink: b.ExternalLink,
		Functions:    map[string]Function{},
		Globals:      map[string]Global{},
	}

	if p.Patches, err = patches.Detect(b.ELF()); err != nil {
		return nil, fmt.Errorf("%s: %w", b.Path, err)
	}
	lay, err := readLayout(b)
	if err != nil {
		return nil, err
	}
	p.LayoutSource, p.LayoutNote, p.Offsets, p.Sizes = lay.Source, lay.Note, lay.Offsets, lay.Sizes

	for _, spec := range functionSpecs {
		fn, err := b.Func(spec.name)
		if err != nil {
			if spec.required {
				return nil, fmt.Errorf("%s: %w: %s", b.Path, ErrMissingSymbol, spec.name)
			}
			continue
		}
		f, err := locate(b, fn)
		if err != nil {
			if spec.required {
				return nil, fmt.Errorf("%s: %s: %w", b.Path, spec.name, err)
			}
			continue
		}
		p.Functions[spec.name] = f
	}

	for _, spec := range probeSpecs {
		f, ok := p.Functions[spec.function]
		if !ok {
			continue
		}
		p.Probes = append(p.Probes, Probe{
			Program: spec.program, Symbol: spec.function,
			Address: f.Address + f.ProbeOffset, FileOffset: f.FileOffset + f.ProbeOffset,
			Insn: f.ProbeInsn, Refires: f.Refires, FramePushed: f.FramePushed, Optional: spec.optional,
		})
	}
	cp, err := createProbes(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.Path, err)
	}
	p.Probes = append(p.Probes, cp...)

	for _, name := range globalNames {
		addr, _, err := b.FindGlobal(name, lay.Offsets)
		if err != nil {
			if requiredGlobals[name] {
				return nil, fmt.Errorf("%s: %w", b.Path, err)
			}
			continue
		}
		g := Global{Address: addr}
		if s, ok := b.Var(name); ok {
			g.Size = s.Size
		}
		p.Globals[name] = g
	}
	// The wait-reason table is static data: the binary holds it too.
	wr := p.Globals["runtime.waitReasonStrings"]
	if p.WaitReasons, err = readWaitReasons(fileMemory{b}, wr.Address, wr.Size); err != nil {
		return nil, fmt.Errorf("%s: wait reasons: %w", b.Path, err)
	}
	p.WaitReasonSource = "binary"
	return p, nil
}

// readLayout prefers the binary's own DWARF: a runtime built with -overlay
// patches can change a struct while its version string stays the same.
func readLayout(b *gobin.Binary) (*layout.Layout, error) {
	var dwarfErr error
	if b.HasDWARF {
		d, err := b.DWARF()
		if err == nil {
			l, err := layout.FromDWARF(d)
			if err == nil {
				return l, nil
			}
			dwarfErr = err
		} else {
			dwarfErr = err
		}
	}
	l, err := layout.FromTable(b.GoVersion, b.Arch)
	if err != nil {
		if dwarfErr != nil {
			return nil, fmt.Errorf("%s: DWARF unusable (%v) and %w", b.Path, dwarfErr, err)
		}
		return nil, fmt.Errorf("%s: stripped, and %w", b.Path, err)
	}
	if dwarfErr != nil {
		l.Note += "; DWARF present but unusable: " + dwarfErr.Error()
	}
	return l, nil
}

func locate(b *gobin.Binary, fn gobin.Sym) (Function, error) {
	off, err := b.FileOffset(fn.Addr)
	if err != nil {
		return Function{}, err
	}
	site, err := b.FindProbeSite(fn)
	if err != nil {
		return Function{}, err
	}
	return Function{
		Address: fn.Addr, Size: fn.Size, FileOffset: off,
		ProbeOffset: site.Offset, ProbeInsn: site.Insn, Refires: site.Refires, FramePushed: site.FramePushed,
	}, nil
}

// createProbes places the goroutine-creation probe. newproc runs, on the
// system stack, newg := newproc1(...); runqput(pp, newg, true): at that CALL
// (which the kernel emulates) BX holds newg, whose goid, gopc and startpc
// newproc1 has just written. Without that call site, the RETs of newproc1
// (AX = newg) serve; they are single-stepped, so about 14 times dearer.
func createProbes(b *gobin.Binary) ([]Probe, error) {
	closure, err1 := b.Func("runtime.newproc.func1")
	np1, err2 := b.Func("runtime.newproc1")
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	if rq, err := b.Func("runtime.runqput"); err == nil {
		calls, _ := b.CallSites(closure, np1)
		puts, _ := b.CallSites(closure, rq)
		if len(calls) == 1 {
			for _, pc := range puts {
				if pc > calls[0] {
					return []Probe{instrProbe(b, "newproc_runqput", closure.Name, pc)}, nil
				}
			}
		}
	}
	rets, err := b.Returns(np1)
	if err != nil || len(rets) == 0 {
		return nil, fmt.Errorf("no place for the goroutine-creation probe in %s or %s", closure.Name, np1.Name)
	}
	var out []Probe
	for _, pc := range rets {
		out = append(out, instrProbe(b, "newproc1_ret", np1.Name, pc))
	}
	return out, nil
}

func instrProbe(b *gobin.Binary, program, symbol string, pc uint64) Probe {
	off, _ := b.FileOffset(pc)
	insn, _ := b.InsnAt(pc)
	return Probe{Program: program, Symbol: symbol, Address: pc, FileOffset: off, Insn: insn}
}

// memReader is what readWaitReasons needs: a process's memory.
type memReader interface {
	ReadAt(b []byte, addr uint64) (int, error)
}

// maxWaitReasons bounds the table: waitReason is a uint8.
const maxWaitReasons = 256

// readWaitReasons reads runtime.waitReasonStrings, a [N]string. Without
// .symtab its length is unknown: entries are read while they look like
// strings (index 0 is the empty waitReasonZero).
func readWaitReasons(mem memReader, addr, size uint64) (WaitReasons, error) {
	n := uint64(maxWaitReasons)
	if size > 0 {
		n = size / 16
	}
	hdr := make([]byte, n*16)
	got, err := mem.ReadAt(hdr, addr)
	if got < 32 {
		return nil, fmt.Errorf("read waitReasonStrings at %#x: %w", addr, err)
	}
	hdr = hdr[:got-got%16]
	le := binary.LittleEndian
	type strHdr struct{ ptr, len uint64 }
	var hs []strHdr
	for i := 0; i+16 <= len(hdr); i += 16 {
		h := strHdr{le.Uint64(hdr[i:]), le.Uint64(hdr[i+8:])}
		if i > 0 && (h.ptr == 0 || h.len == 0 || h.len > 128) {
			break
		}
		hs = append(hs, h)
	}
	if len(hs) < 2 {
		return nil, errors.New("waitReasonStrings does not hold strings")
	}
	// The strings are consecutive in rodata: read their span at once.
	lo, hi := ^uint64(0), uint64(0)
	for _, h := range hs[1:] {
		lo, hi = min(lo, h.ptr), max(hi, h.ptr+h.len)
	}
	if hi-lo > 1<<20 {
		hi = lo + 1<<20
	}
	blob := make([]byte, hi-lo)
	if _, err := mem.ReadAt(blob, lo); err != nil {
		// Not consecutive after all: one read per string.
		blob = nil
	}
	out := make(WaitReasons, len(hs))
	for i, h := range hs[1:] {
		var s []byte
		if blob != nil && h.ptr >= lo && h.ptr+h.len <= hi {
			s = blob[h.ptr-lo : h.ptr-lo+h.len]
		} else {
			s = make([]byte, h.len)
			if _, err := mem.ReadAt(s, h.ptr); err != nil {
				return nil, fmt.Errorf("read wait reason %d: %w", i+1, err)
			}
		}
		if !utf8.Valid(s) {
			return nil, fmt.Errorf("wait reason %d is not text", i+1)
		}
		out[i+1] = string(s)
	}
	return out, nil
}

// FunctionNames returns the names of the located functions, sorted.
func (p *Plan) FunctionNames() []string {
	names := make([]string, 0, len(p.Functions))
	for n := range p.Functions {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
