package gobin

import (
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// A globalRecipe finds a runtime variable in a binary without .symtab from
// the RIP-relative operands of a function that uses it. Each recipe is
// checked in the tests against .symtab of the unstripped twin, for every
// toolchain the tests build with.
type globalRecipe struct {
	fn   string // a function whose code refers to the variable
	pick func(refs []ripRef, offsets map[string]int64) (uint64, bool)
	how  string
}

var globalRecipes = map[string]globalRecipe{
	// allgadd: allgs = append(allgs, gp) loads and stores allgs more often
	// than anything else it touches.
	"runtime.allgs": {"runtime.allgadd", mostFrequentMov, "most used MOV operand of runtime.allgadd"},
	// allgadd ends with atomicstorep(&allgptr, ...) and
	// atomic.Storeuintptr(&allglen, ...): each a LEAQ then an XCHGQ.
	"runtime.allglen": {"runtime.allgadd", lastLeaXchg, "last LEAQ+XCHGQ operand of runtime.allgadd"},
	// mcommoninit: mp.alllink = allm; atomicstorep(unsafe.Pointer(&allm), mp)
	// is the only variable both loaded and taken the address of.
	"runtime.allm": {"runtime.mcommoninit", loadedAndLea, "operand both loaded and LEAQ'd in runtime.mcommoninit"},
	// gcComputeStartingStackSize ranges over allp: the only slice whose
	// pointer and length it loads.
	"runtime.allp": {"runtime.gcComputeStartingStackSize", sliceLoad, "slice loaded by runtime.gcComputeStartingStackSize"},
	// waitReason.String indexes waitReasonStrings: its only LEAQ.
	"runtime.waitReasonStrings": {"runtime.waitReason.String", lastLea, "LEAQ operand of runtime.waitReason.String"},
	// GOMAXPROCS reads gomaxprocs (int32) first.
	"runtime.gomaxprocs": {"runtime.GOMAXPROCS", firstLoad4, "first 4-byte load in runtime.GOMAXPROCS"},
	// pidleget reads sched.pidle first; the variable starts that far before.
	"runtime.sched": {"runtime.pidleget", schedFromPidle, "first load in runtime.pidleget less the offset of sched.pidle"},
	// resetCapacity's only load of a variable is memstats.numgc (a uint32:
	// l.lastEnabledCycle.Store(memstats.numgc + 1)), in go1.19 to go1.27;
	// go1.18 has no CPU limiter. Without the offset of mstats.numgc (a
	// release whose table lacks it) the variable stays unknown.
	"runtime.memstats": {"runtime.(*gcCPULimiterState).resetCapacity", memstatsFromNumgc, "only 4-byte load in runtime.(*gcCPULimiterState).resetCapacity less the offset of mstats.numgc"},
}

// GlobalNames lists the runtime variables gmpwatch can find without .symtab.
func GlobalNames() []string {
	return []string{"runtime.allgs", "runtime.allglen", "runtime.allm", "runtime.allp", "runtime.sched", "runtime.gomaxprocs", "runtime.waitReasonStrings", "runtime.memstats"}
}

// FindGlobal returns the link-time address of a runtime variable: from
// .symtab when present, otherwise by decoding a function that uses it.
// offsets gives struct field offsets ("sched.pidle"), needed by recipes that
// find a field rather than the start of a variable. how says which.
func (b *Binary) FindGlobal(name string, offsets map[string]int64) (addr uint64, how string, err error) {
	if s, ok := b.vars[name]; ok {
		return s.Addr, ".symtab", nil
	}
	r, ok := globalRecipes[name]
	if !ok {
		return 0, "", fmt.Errorf("variable %s: %w (no .symtab, and no way to find it in code)", name, ErrNoSymbol)
	}
	fn, err := b.Func(r.fn)
	if err != nil {
		return 0, "", fmt.Errorf("variable %s: %w", name, err)
	}
	refs, err := b.ripRefs(fn)
	if err != nil {
		return 0, "", fmt.Errorf("variable %s: decode %s: %w", name, r.fn, err)
	}
	addr, ok = r.pick(refs, offsets)
	if !ok || !b.isData(addr) {
		return 0, "", fmt.Errorf("variable %s: %w: %s: pattern not found", name, ErrNoSymbol, r.how)
	}
	return addr, r.how, nil
}

func (b *Binary) isData(addr uint64) bool {
	for _, s := range b.elf.Sections {
		switch s.Name {
		case ".data", ".bss", ".noptrdata", ".noptrbss":
			if addr >= s.Addr && addr < s.Addr+s.Size {
				return true
			}
		}
	}
	return false
}

func isMov(op x86asm.Op) bool {
	switch op {
	case x86asm.MOV, x86asm.MOVSXD, x86asm.MOVZX, x86asm.MOVSX:
		return true
	}
	return false
}

func mostFrequentMov(refs []ripRef, _ map[string]int64) (uint64, bool) {
	count := map[uint64]int{}
	best, n := uint64(0), 0
	for _, r := range refs {
		if !isMov(r.op) || r.size != 8 {
			continue
		}
		count[r.target]++
		if c := count[r.target]; c > n {
			best, n = r.target, c
		}
	}
	return best, n > 1
}

func lastLea(refs []ripRef, _ map[string]int64) (uint64, bool) {
	for i := len(refs) - 1; i >= 0; i-- {
		if refs[i].op == x86asm.LEA {
			return refs[i].target, true
		}
	}
	return 0, false
}

func lastLeaXchg(refs []ripRef, _ map[string]int64) (uint64, bool) {
	for i := len(refs) - 1; i >= 0; i-- {
		if refs[i].op == x86asm.LEA && refs[i].next == x86asm.XCHG {
			return refs[i].target, true
		}
	}
	return 0, false
}

func loadedAndLea(refs []ripRef, _ map[string]int64) (uint64, bool) {
	loaded := map[uint64]bool{}
	for _, r := range refs {
		if isMov(r.op) && r.load && r.size == 8 {
			loaded[r.target] = true
		}
	}
	for _, r := range refs {
		if r.op == x86asm.LEA && loaded[r.target] {
			return r.target, true
		}
	}
	return 0, false
}

func firstLoadN(refs []ripRef, size int) (uint64, bool) {
	for _, r := range refs {
		if isMov(r.op) && r.load && r.size == size {
			return r.target, true
		}
	}
	return 0, false
}

// sliceLoad finds the first variable T whose pointer word T and length
// word T+8 are both loaded: a slice header.
func sliceLoad(refs []ripRef, _ map[string]int64) (uint64, bool) {
	loaded := map[uint64]bool{}
	for _, r := range refs {
		if isMov(r.op) && r.load && r.size == 8 {
			loaded[r.target] = true
		}
	}
	for _, r := range refs {
		if isMov(r.op) && r.load && r.size == 8 && loaded[r.target+8] {
			return r.target, true
		}
	}
	return 0, false
}

func firstLoad4(refs []ripRef, _ map[string]int64) (uint64, bool) {
	return firstLoadN(refs, 4)
}

func schedFromPidle(refs []ripRef, offsets map[string]int64) (uint64, bool) {
	off, ok := offsets["sched.pidle"]
	if !ok {
		return 0, false
	}
	a, ok := firstLoadN(refs, 8)
	if !ok || a < uint64(off) {
		return 0, false
	}
	return a - uint64(off), true
}

// memstatsFromNumgc takes the one 4-byte variable load, memstats.numgc, and
// steps back to the start of runtime.memstats. Several distinct 4-byte
// loads mean the code is not the one the recipe was made from.
func memstatsFromNumgc(refs []ripRef, offsets map[string]int64) (uint64, bool) {
	off, ok := offsets["mstats.numgc"]
	if !ok {
		return 0, false
	}
	var numgc uint64
	for _, r := range refs {
		if !isMov(r.op) || !r.load || r.size != 4 {
			continue
		}
		if numgc != 0 && r.target != numgc {
			return 0, false
		}
		numgc = r.target
	}
	if numgc == 0 || numgc < uint64(off) {
		return 0, false
	}
	return numgc - uint64(off), true
}
