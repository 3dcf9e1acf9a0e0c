package gobin

import (
	"regexp"
	"strings"
	"sync"

	"golang.org/x/arch/x86/x86asm"
)

// Symbolize resolves pc, a runtime address of the target, to a source
// position. ret says pc is a return address (g.gopc, the frames of a stack
// above the first): the position is then that of the call before it, as the
// runtime's tracebacks give it. Every symbolizing consumer takes this type:
// a live Symbolizer, or a recording's symbol table.
type Symbolize func(pc uint64, ret bool) (Frame, bool)

// Symbolizer symbolizes the runtime addresses of a process whose executable
// is a Binary loaded with a bias (runtime address = link-time + bias), with
// the binary's .gopclntab, so it works on stripped binaries. Answers are
// cached: a million goroutines have a few distinct creation sites. It is
// safe for concurrent use.
type Symbolizer struct {
	bin  *Binary
	bias uint64

	mu     sync.Mutex
	frames map[symKey]frameOK
	starts map[uint64]string
}

type symKey struct {
	pc  uint64
	ret bool
}

type frameOK struct {
	f  Frame
	ok bool
}

// NewSymbolizer returns a symbolizer for a process running b with bias.
func NewSymbolizer(b *Binary, bias uint64) *Symbolizer {
	return &Symbolizer{bin: b, bias: bias, frames: map[symKey]frameOK{}, starts: map[uint64]string{}}
}

// Symbolize resolves pc; it has the type Symbolize.
func (s *Symbolizer) Symbolize(pc uint64, ret bool) (Frame, bool) {
	k := symKey{pc, ret}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.frames[k]; ok {
		return r.f, r.ok
	}
	var r frameOK
	link := pc - s.bias
	if ret {
		link--
	}
	if pc > s.bias {
		r.f, r.ok = s.bin.PCToFrame(link)
	}
	s.frames[k] = r
	return r.f, r.ok
}

// ValidPC reports whether pc is inside a function of the executable.
func (s *Symbolizer) ValidPC(pc uint64) bool {
	_, ok := s.Symbolize(pc, false)
	return ok
}

// goWrapper matches the functions the compiler makes for a go statement
// whose function takes arguments (go f(x) runs pkg.caller.gowrapN, which
// calls f(x)), named so since go1.22. Earlier releases name them like any
// closure (pkg.caller.funcN), so they are not resolved.
var goWrapper = regexp.MustCompile(`\.gowrap\d+$`)

// StartFunc names the function a goroutine starts with, from g.startpc.
// When that is a go-statement wrapper, it names the function the wrapper
// calls instead, as "f (via pkg.caller.gowrap1)"; if the wrapper inlined its
// callee, the wrapper's name stays. ok is false when pc is in no function.
func (s *Symbolizer) StartFunc(pc uint64) (string, bool) {
	s.mu.Lock()
	n, seen := s.starts[pc]
	s.mu.Unlock()
	if seen {
		return n, n != ""
	}
	f, ok := s.Symbolize(pc, false)
	name := ""
	if ok {
		name = f.Func
		if goWrapper.MatchString(name) {
			if callee := s.bin.firstCall(pc-s.bias, isRuntimeHelper); callee != "" {
				name = callee + " (via " + f.Func + ")"
			}
		}
	}
	s.mu.Lock()
	s.starts[pc] = name
	s.mu.Unlock()
	return name, ok
}

// isRuntimeHelper tells the runtime helpers a wrapper may call before its
// callee (stack growth, write barriers, panics) from the callee.
func isRuntimeHelper(name string) bool {
	for _, p := range []string{"runtime.morestack", "runtime.gcWriteBarrier", "runtime.panic", "runtime.wb", "runtime.deferreturn", "runtime.racefunc"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// firstCall returns the first function, other than those skip accepts, that
// the function containing pc (link-time) calls directly.
func (b *Binary) firstCall(pc uint64, skip func(string) bool) string {
	fn, ok := b.FuncAt(pc)
	if !ok {
		return ""
	}
	callee := ""
	_ = b.walk(fn, func(at uint64, in x86asm.Inst) {
		if callee != "" || in.Op != x86asm.CALL {
			return
		}
		if rel, ok := in.Args[0].(x86asm.Rel); ok {
			if c, ok := b.FuncAt(uint64(int64(at) + int64(in.Len) + int64(rel))); ok && !skip(c.Name) {
				callee = c.Name
			}
		}
	})
	return callee
}
