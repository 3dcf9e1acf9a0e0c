package rtstate

import (
	"regexp"
	"strings"

	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"golang.org/x/arch/x86/x86asm"
)

// Symbolizer turns the target's runtime program counters into functions and
// source lines with the executable's .gopclntab (analysis/gobin, which
// handles stripped binaries), caching each answer: a million goroutines have
// a few distinct creation sites.
type Symbolizer struct {
	bin    *gobin.Binary
	bias   uint64
	calls  map[uint64]frameOK
	funcs  map[uint64]frameOK
	starts map[uint64]string
}

type frameOK struct {
	f  gobin.Frame
	ok bool
}

// NewSymbolizer symbolizes runtime addresses of a process whose executable
// is bin, loaded with the given bias (runtime = link-time + bias).
func NewSymbolizer(bin *gobin.Binary, bias uint64) *Symbolizer {
	return &Symbolizer{bin: bin, bias: bias, calls: map[uint64]frameOK{}, funcs: map[uint64]frameOK{}, starts: map[uint64]string{}}
}

// CallSite returns the source position of the call whose return address is
// pc, such as g.gopc (the go statement): the line of pc-1, as the runtime's
// "created by" traceback line does.
func (s *Symbolizer) CallSite(pc uint64) (gobin.Frame, bool) {
	if r, ok := s.calls[pc]; ok {
		return r.f, r.ok
	}
	var r frameOK
	if pc > s.bias {
		r.f, r.ok = s.bin.PCToFrame(pc - 1 - s.bias)
	}
	s.calls[pc] = r
	return r.f, r.ok
}

// Func returns the function that starts at or contains pc, such as
// g.startpc, with the source position of pc.
func (s *Symbolizer) Func(pc uint64) (gobin.Frame, bool) {
	if r, ok := s.funcs[pc]; ok {
		return r.f, r.ok
	}
	var r frameOK
	if pc >= s.bias {
		r.f, r.ok = s.bin.PCToFrame(pc - s.bias)
	}
	s.funcs[pc] = r
	return r.f, r.ok
}

// ValidPC reports whether pc is inside a function of the executable; it
// suits ScanOptions.ValidPC.
func (s *Symbolizer) ValidPC(pc uint64) bool {
	_, ok := s.Func(pc)
	return ok
}

// goWrapper matches the functions the compiler makes for a go statement
// whose function takes arguments (go f(x) runs pkg.caller.gowrapN, which
// calls f(x)), named so since go1.22. Earlier releases name them like any
// closure (pkg.caller.funcN), so they are not resolved.
var goWrapper = regexp.MustCompile(`\.gowrap\d+$`)

// StartFunc names the function a goroutine starts with, from g.startpc.
// When that is a go-statement wrapper, it names the function the wrapper
// calls instead, as "f (via pkg.caller.gowrap1)"; if the wrapper inlined
// its callee, the wrapper's name stays. ok is false when pc is in no
// function.
func (s *Symbolizer) StartFunc(pc uint64) (name string, ok bool) {
	if n, ok := s.starts[pc]; ok {
		return n, n != ""
	}
	f, ok := s.Func(pc)
	if ok {
		name = f.Func
		if goWrapper.MatchString(name) {
			if callee := s.wrappedCall(pc - s.bias); callee != "" {
				name = callee + " (via " + f.Func + ")"
			}
		}
	}
	s.starts[pc] = name
	return name, ok
}

// isHelper tells the runtime helpers a wrapper may call before its callee
// (stack growth, write barriers, panics) from the callee.
func isHelper(name string) bool {
	for _, p := range []string{"runtime.morestack", "runtime.gcWriteBarrier", "runtime.panic", "runtime.wb", "runtime.deferreturn", "runtime.racefunc"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// wrappedCall returns the first function other than a runtime helper that
// the function at pc (link-time) calls directly; amd64 only.
func (s *Symbolizer) wrappedCall(pc uint64) string {
	fn, ok := s.bin.FuncAt(pc)
	if !ok || s.bin.Arch != "amd64" {
		return ""
	}
	code, err := s.bin.Code(fn)
	if err != nil {
		return ""
	}
	for off := 0; off < len(code); {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil || in.Len == 0 {
			off++
			continue
		}
		if in.Op == x86asm.CALL {
			if rel, ok := in.Args[0].(x86asm.Rel); ok {
				target := uint64(int64(fn.Addr) + int64(off) + int64(in.Len) + int64(rel))
				if c, ok := s.bin.FuncAt(target); ok && !isHelper(c.Name) {
					return c.Name
				}
			}
		}
		off += in.Len
	}
	return ""
}
