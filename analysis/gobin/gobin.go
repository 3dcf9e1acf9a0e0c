// Package gobin reads what gmpwatch needs from a Go ELF executable: the Go
// release and build settings (debug/buildinfo), function and variable
// addresses (from .symtab, or from .gopclntab with debug/gosym when the binary
// is stripped), file offsets for uprobes, machine code for prologue analysis,
// and source positions for program counters.
//
// It reads files only; live processes are the business of analysis/procmem.
// Every reader is defensive: malformed input yields an error, never a panic.
package gobin

import (
	"bytes"
	"debug/buildinfo"
	"debug/dwarf"
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"
)

// Sentinel errors.
var (
	ErrNotELF          = errors.New("not an ELF file")
	ErrNotGo           = errors.New("not a Go binary")
	ErrUnsupportedArch = errors.New("unsupported architecture")
	ErrNoSymbol        = errors.New("symbol not found")
	ErrNoPclntab       = errors.New("no .gopclntab section")
)

// Sym is a function or variable.
type Sym struct {
	Name string
	Addr uint64 // link-time address
	Size uint64
}

// Binary is an open Go executable.
type Binary struct {
	Path      string
	GoVersion string // "go1.26.8"
	Arch      string // GOARCH, from the ELF machine
	// Stripped is true when the binary has neither .symtab nor DWARF.
	Stripped     bool
	HasSymtab    bool
	HasDWARF     bool
	PIE          bool
	CGO          bool
	ExternalLink bool
	Settings     map[string]string // build settings from the build info

	closer  io.Closer
	elf     *elf.File
	funcs   map[string]Sym // every function, by name
	byAddr  []Sym          // functions sorted by address
	vars    map[string]Sym // data symbols (.symtab only)
	table   *gosym.Table
	textLo  uint64 // Go text start (runtime.text)
	pclnErr error
}

// Open opens and indexes a Go binary.
func Open(path string) (*Binary, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	b, err := NewBinary(path, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	b.closer = f
	return b, nil
}

// NewBinary indexes a Go binary read from r; name is used in messages.
func NewBinary(name string, r io.ReaderAt) (b *Binary, err error) {
	defer Recover(name, &err)
	return newBinary(name, r)
}

// PanicError is a panic met while reading malformed input, turned into an
// error: the ELF, DWARF and pclntab readers of the standard library are not
// hardened, and bad input must give one line, not a crash.
type PanicError struct {
	Name  string
	Value any
	Stack []byte // where it panicked, for fuzz tests
}

func (e *PanicError) Error() string { return fmt.Sprintf("%s: malformed binary: %v", e.Name, e.Value) }

// Recover turns a panic into a *PanicError stored in *err. Use it deferred.
func Recover(name string, err *error) {
	if p := recover(); p != nil {
		*err = &PanicError{Name: name, Value: p, Stack: debug.Stack()}
	}
}

func newBinary(path string, f io.ReaderAt) (*Binary, error) {
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, ErrNotELF)
	}
	b := &Binary{Path: path, elf: ef, funcs: map[string]Sym{}, vars: map[string]Sym{}}
	switch ef.Machine {
	case elf.EM_X86_64:
		b.Arch = "amd64"
	case elf.EM_AARCH64:
		b.Arch = "arm64"
	default:
		b.Arch = strings.ToLower(strings.TrimPrefix(ef.Machine.String(), "EM_"))
	}
	bi, err := buildinfo.Read(f)
	if err != nil {
		if ef.Section(".gopclntab") == nil && ef.Section(".go.buildinfo") == nil {
			return nil, fmt.Errorf("%s: %w", path, ErrNotGo)
		}
		return nil, fmt.Errorf("%s: %w: build info: %v", path, ErrNotGo, err)
	}
	b.GoVersion = bi.GoVersion
	b.Settings = map[string]string{}
	for _, s := range bi.Settings {
		b.Settings[s.Key] = s.Value
	}
	b.PIE = ef.Type == elf.ET_DYN
	// The Go linker writes no .comment section; the external linker (gcc,
	// clang) writes one, stripped or not.
	b.ExternalLink = ef.Section(".comment") != nil || strings.Contains(b.Settings["-ldflags"], "linkmode=external")
	if b.Arch != "amd64" {
		return nil, fmt.Errorf("%s: %w %s (gmpwatch supports amd64)", path, ErrUnsupportedArch, b.Arch)
	}

	if syms, err := ef.Symbols(); err == nil && len(syms) > 0 {
		b.HasSymtab = true
		for _, s := range syms {
			sym := Sym{Name: s.Name, Addr: s.Value, Size: s.Size}
			switch elf.ST_TYPE(s.Info) {
			case elf.STT_FUNC:
				if _, dup := b.funcs[s.Name]; !dup {
					b.funcs[s.Name] = sym
				}
			case elf.STT_OBJECT:
				b.vars[s.Name] = sym
			}
			if s.Name == "runtime.text" {
				b.textLo = s.Value
			}
		}
	}
	b.CGO = b.isCgo()
	b.HasDWARF = ef.Section(".debug_info") != nil || ef.Section(".zdebug_info") != nil
	b.Stripped = !b.HasSymtab && !b.HasDWARF
	b.table, b.pclnErr = b.readPclntab()
	if b.table != nil {
		for i := range b.table.Funcs {
			fn := &b.table.Funcs[i]
			if _, ok := b.funcs[fn.Name]; !ok {
				b.funcs[fn.Name] = Sym{Name: fn.Name, Addr: fn.Entry, Size: fn.End - fn.Entry}
			}
		}
	}
	if len(b.funcs) == 0 {
		return nil, fmt.Errorf("%s: %w: no symbols and no usable .gopclntab: %v", path, ErrNotGo, b.pclnErr)
	}
	for name, s := range b.funcs {
		if s.Size > 0 && strings.Contains(name, ".") {
			b.byAddr = append(b.byAddr, s)
		}
	}
	sort.Slice(b.byAddr, func(i, j int) bool { return b.byAddr[i].Addr < b.byAddr[j].Addr })
	return b, nil
}

// isCgo reports whether the binary links the cgo runtime. CGO_ENABLED=1 in
// the build settings alone does not mean it: a program without cgo packages
// is still linked internally and statically.
func (b *Binary) isCgo() bool {
	if _, ok := b.funcs["x_cgo_init"]; ok {
		return true
	}
	if _, ok := b.vars["_cgo_init"]; ok && b.ExternalLink {
		return true
	}
	if libs, err := b.elf.ImportedLibraries(); err == nil && len(libs) > 0 {
		return b.Settings["CGO_ENABLED"] == "1"
	}
	return b.ExternalLink && b.Settings["CGO_ENABLED"] == "1"
}

// Close releases the file opened by Open.
func (b *Binary) Close() error {
	if b.closer == nil {
		return nil
	}
	return b.closer.Close()
}

// ELF returns the underlying ELF file.
func (b *Binary) ELF() *elf.File { return b.elf }

// DWARF returns the binary's debug information.
func (b *Binary) DWARF() (*dwarf.Data, error) { return b.elf.DWARF() }

// Func returns the function with the given name. ABI wrappers are named
// apart (runtime.newproc.abi0), so the name denotes the ABIInternal body.
func (b *Binary) Func(name string) (Sym, error) {
	if s, ok := b.funcs[name]; ok {
		return s, nil
	}
	return Sym{}, fmt.Errorf("function %s: %w", name, ErrNoSymbol)
}

// Var returns a data symbol from .symtab. Stripped binaries have none: see
// FindGlobal for the fallback.
func (b *Binary) Var(name string) (Sym, bool) {
	s, ok := b.vars[name]
	return s, ok
}

// FuncAt returns the function containing pc (a link-time address).
func (b *Binary) FuncAt(pc uint64) (Sym, bool) {
	i := sort.Search(len(b.byAddr), func(i int) bool { return b.byAddr[i].Addr > pc }) - 1
	if i >= 0 && pc < b.byAddr[i].Addr+b.byAddr[i].Size {
		return b.byAddr[i], true
	}
	return Sym{}, false
}

// Frame is a source position.
type Frame struct {
	Func string `json:"function"`
	File string `json:"file"`
	Line int    `json:"line"`
}

// PCToFrame returns the source position of the instruction at pc (a
// link-time address). For a return address, such as g.gopc, pass pc-1 to get
// the call's line, as the runtime's tracebacks do.
func (b *Binary) PCToFrame(pc uint64) (Frame, bool) {
	if b.table == nil {
		return Frame{}, false
	}
	file, line, fn := b.table.PCToLine(pc)
	if fn == nil {
		return Frame{}, false
	}
	return Frame{Func: fn.Name, File: file, Line: line}, true
}

// Table returns the pclntab line table, or nil when it could not be read.
func (b *Binary) Table() *gosym.Table { return b.table }

// FileOffset converts a link-time virtual address in a loadable segment to
// its offset in the file, which is what uprobes attach to. It is right for
// PIE and non-PIE binaries alike.
func (b *Binary) FileOffset(addr uint64) (uint64, error) {
	for _, p := range b.elf.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_X == 0 {
			continue
		}
		if addr >= p.Vaddr && addr < p.Vaddr+p.Filesz {
			return addr - p.Vaddr + p.Off, nil
		}
	}
	return 0, fmt.Errorf("address %#x is in no executable segment", addr)
}

// ReadAt reads size bytes at a link-time address from the file's sections.
// A read past the end of the section returns the bytes up to it and an
// error wrapping io.ErrUnexpectedEOF.
func (b *Binary) ReadAt(addr, size uint64) ([]byte, error) {
	for _, s := range b.elf.Sections {
		if s.Type == elf.SHT_NOBITS || s.Addr == 0 || addr < s.Addr || addr >= s.Addr+s.Size {
			continue
		}
		var short error
		if addr+size > s.Addr+s.Size {
			size = s.Addr + s.Size - addr
			short = fmt.Errorf("read at %#x: %w at the end of %s", addr, io.ErrUnexpectedEOF, s.Name)
		}
		buf := make([]byte, size)
		if _, err := s.ReadAt(buf, int64(addr-s.Addr)); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read %s at %#x: %w", s.Name, addr, err)
		}
		return buf, short
	}
	return nil, fmt.Errorf("address %#x is in no section with file data", addr)
}

// Relocated reads size bytes at a link-time address as the dynamic loader
// leaves them: for a PIE, a pointer-sized word that an R_X86_64_RELATIVE
// relocation targets holds its addend (a link-time address, the load bias
// not added). Use it to read static pointers, such as string headers, from
// the file before (or without) reading the process.
func (b *Binary) Relocated(addr, size uint64) ([]byte, error) {
	buf, err := b.ReadAt(addr, size)
	if buf == nil || b.elf.Type != elf.ET_DYN {
		return buf, err
	}
	size = uint64(len(buf))
	const relaSize, rX86_64Relative = 24, 8
	for _, s := range b.elf.Sections {
		if s.Type != elf.SHT_RELA {
			continue
		}
		data, err := s.Data()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", s.Name, err)
		}
		le := binary.LittleEndian
		for i := 0; i+relaSize <= len(data); i += relaSize {
			off := le.Uint64(data[i:])
			if off < addr || off+8 > addr+size || le.Uint64(data[i+8:])&0xffffffff != rX86_64Relative {
				continue
			}
			le.PutUint64(buf[off-addr:], le.Uint64(data[i+16:]))
		}
	}
	return buf, err
}

// Code returns the machine code of a function.
func (b *Binary) Code(s Sym) ([]byte, error) {
	if s.Size == 0 || s.Size > 1<<24 {
		return nil, fmt.Errorf("function %s: implausible size %d", s.Name, s.Size)
	}
	return b.ReadAt(s.Addr, s.Size)
}

// readPclntab opens .gopclntab with debug/gosym. From go1.18 the table is
// relative to runtime.text, and go1.26 writes 0 in the header's textStart:
// the start comes from .symtab, else from runtime.firstmoduledata, else from
// .text (right for internally linked binaries).
func (b *Binary) readPclntab() (*gosym.Table, error) {
	sec := b.elf.Section(".gopclntab")
	if sec == nil {
		// go1.20 and older name it so in PIE binaries.
		sec = b.elf.Section(".data.rel.ro.gopclntab")
	}
	if sec == nil {
		return nil, ErrNoPclntab
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .gopclntab: %w", err)
	}
	if b.textLo == 0 {
		b.textLo = b.moduleTextStart(sec.Addr)
	}
	if b.textLo == 0 {
		if t := b.elf.Section(".text"); t != nil {
			b.textLo = t.Addr
		}
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, b.textLo))
	if err != nil {
		return nil, fmt.Errorf("parse .gopclntab: %w", err)
	}
	return tab, nil
}

// moduleTextStart finds runtime.firstmoduledata, whose first word points to
// the pclntab header, and returns its text field. The offset of text in
// moduledata is the same in go1.18 to go1.27: pcHeader, six slices and
// findfunctab, minpc and maxpc precede it.
func (b *Binary) moduleTextStart(pclntab uint64) uint64 {
	const textOff = 8 + 6*24 + 8 + 8 + 8
	sec := b.elf.Section(".noptrdata")
	if sec == nil {
		return 0
	}
	data, err := sec.Data()
	if err != nil {
		return 0
	}
	var key [8]byte
	binary.LittleEndian.PutUint64(key[:], pclntab)
	for off := 0; off+textOff+8 <= len(data); off += 8 {
		i := bytes.Index(data[off:], key[:])
		if i < 0 {
			return 0
		}
		off += i
		if off%8 != 0 || off+textOff+8 > len(data) {
			off -= off % 8
			continue
		}
		minpc := binary.LittleEndian.Uint64(data[off+8+6*24+8:])
		text := binary.LittleEndian.Uint64(data[off+textOff:])
		if text != 0 && minpc >= text && b.isExecutable(text) {
			return text
		}
	}
	return 0
}

func (b *Binary) isExecutable(addr uint64) bool {
	_, err := b.FileOffset(addr)
	return err == nil
}

// Identity is what a quick look at an executable tells: enough for listing
// processes without indexing every binary's symbols.
type Identity struct {
	GoVersion string
	Stripped  bool
	PIE       bool
}

// Identify reads the build info and section headers of path only.
func Identify(path string) (id Identity, err error) {
	defer Recover(path, &err)
	ef, err := elf.Open(path)
	if err != nil {
		return Identity{}, fmt.Errorf("%s: %w", path, ErrNotELF)
	}
	defer ef.Close()
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return Identity{}, fmt.Errorf("%s: %w", path, ErrNotGo)
	}
	return Identity{
		GoVersion: bi.GoVersion,
		Stripped:  ef.Section(".symtab") == nil && ef.Section(".debug_info") == nil,
		PIE:       ef.Type == elf.ET_DYN,
	}, nil
}
