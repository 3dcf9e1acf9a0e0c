package gobin

import (
	"errors"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// ProbeSite is where a uprobe sits in a function and what that implies.
type ProbeSite struct {
	Offset uint64 // bytes from the function's entry
	Insn   string // the instruction at Offset, Go syntax
	// Refires: the probe precedes the stack check's branch, so a call that
	// grows its stack (morestack re-enters the function) fires it twice.
	Refires bool
	// FramePushed: the frame pointer was pushed before Offset, so the
	// caller's return address is at 8(SP) rather than 0(SP).
	FramePushed bool
}

// ErrPrologue is returned when a function's prologue cannot be decoded.
var ErrPrologue = errors.New("unrecognised prologue")

// maxPrologue bounds how many instructions are decoded looking for the end of
// the stack check: Go emits at most four (LEAQ/MOVQ+SUBQ, CMPQ, Jcc).
const maxPrologue = 6

// FindProbeSite decides where the entry probe of fn sits. Never on the
// stack-check compare: a probe there is single-stepped (about 14 times the
// cost of one the kernel emulates) and misses the caller in user stacks.
//
//   - CMPQ SP, 16(R14); JBE morestack; PUSHQ BP: the probe sits on the push,
//     which the kernel emulates; it runs only once the check has passed, so
//     it fires once per call.
//   - the same without a push next (go1.20 and older allocate the frame with
//     SUBQ first): the probe sits on the JBE, which the kernel emulates, and
//     may fire twice (Refires); the JBE's flags tell the hits apart. Go emits
//     no other branch there, and any other is refused.
//   - no stack check (NOSPLIT): offset 0.
func (b *Binary) FindProbeSite(fn Sym) (ProbeSite, error) {
	code, err := b.Code(fn)
	if err != nil {
		return ProbeSite{}, err
	}
	return probeSite(code, fn.Addr)
}

func probeSite(code []byte, pc uint64) (ProbeSite, error) {
	var insts []x86asm.Inst
	var offs []uint64
	off := uint64(0)
	for len(insts) < maxPrologue && off < uint64(len(code)) {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			break
		}
		insts = append(insts, in)
		offs = append(offs, off)
		off += uint64(in.Len)
	}
	if len(insts) == 0 {
		return ProbeSite{}, fmt.Errorf("%w: no instruction decodes at %#x", ErrPrologue, pc)
	}
	site := func(i int, refires bool) ProbeSite {
		pushed := false
		for _, in := range insts[:i] {
			if isPushBP(in) {
				pushed = true
			}
		}
		return ProbeSite{Offset: offs[i], Insn: x86asm.GoSyntax(insts[i], pc+offs[i], nil), Refires: refires, FramePushed: pushed}
	}
	for i, in := range insts {
		if !isStackGuardCmp(in) {
			continue
		}
		if i+1 >= len(insts) || !isCondJump(insts[i+1]) {
			return ProbeSite{}, fmt.Errorf("%w at %#x: stack check without a branch", ErrPrologue, pc+offs[i])
		}
		if i+2 < len(insts) && isPushBP(insts[i+2]) {
			return site(i+2, false), nil
		}
		if insts[i+1].Op != x86asm.JBE {
			// Only a JBE's flags say which hit re-enters.
			return ProbeSite{}, fmt.Errorf("%w at %#x: stack check branches with %v, not JBE", ErrPrologue, pc+offs[i+1], insts[i+1].Op)
		}
		return site(i+1, true), nil
	}
	return site(0, false), nil
}

// isStackGuardCmp matches CMPQ reg, 16(R14) or 24(R14): the comparison with
// g.stackguard0 (or stackguard1 in some assembly) that opens a Go prologue.
func isStackGuardCmp(in x86asm.Inst) bool {
	if in.Op != x86asm.CMP {
		return false
	}
	for _, a := range in.Args {
		if m, ok := a.(x86asm.Mem); ok && m.Base == x86asm.R14 && m.Index == 0 && (m.Disp == 0x10 || m.Disp == 0x18) {
			return true
		}
	}
	return false
}

func isCondJump(in x86asm.Inst) bool {
	switch in.Op {
	case x86asm.JBE, x86asm.JA, x86asm.JB, x86asm.JAE, x86asm.JLE, x86asm.JG, x86asm.JL, x86asm.JGE:
		return true
	}
	return false
}

func isPushBP(in x86asm.Inst) bool {
	return in.Op == x86asm.PUSH && in.Args[0] == x86asm.RBP
}

// CallSites returns the addresses of the CALL instructions in fn whose
// target is callee, in order.
func (b *Binary) CallSites(fn, callee Sym) ([]uint64, error) {
	var out []uint64
	err := b.walk(fn, func(pc uint64, in x86asm.Inst) {
		if in.Op != x86asm.CALL {
			return
		}
		if rel, ok := in.Args[0].(x86asm.Rel); ok && uint64(int64(pc)+int64(in.Len)+int64(rel)) == callee.Addr {
			out = append(out, pc)
		}
	})
	return out, err
}

// Returns lists the addresses of the RET instructions of fn.
func (b *Binary) Returns(fn Sym) ([]uint64, error) {
	var out []uint64
	err := b.walk(fn, func(pc uint64, in x86asm.Inst) {
		if in.Op == x86asm.RET {
			out = append(out, pc)
		}
	})
	return out, err
}

// InsnAt returns the instruction at pc in Go syntax.
func (b *Binary) InsnAt(pc uint64) (string, error) {
	code, err := b.ReadAt(pc, 16)
	if err != nil {
		return "", err
	}
	in, err := x86asm.Decode(code, 64)
	if err != nil {
		return "", fmt.Errorf("decode at %#x: %w", pc, err)
	}
	return x86asm.GoSyntax(in, pc, nil), nil
}

// walk decodes fn linearly. Go functions hold no data in their text, only
// INT3 padding after the last instruction, so a linear sweep is exact;
// undecodable bytes are skipped one at a time.
func (b *Binary) walk(fn Sym, visit func(pc uint64, in x86asm.Inst)) error {
	code, err := b.Code(fn)
	if err != nil {
		return err
	}
	for off := 0; off < len(code); {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil || in.Len == 0 {
			off++
			continue
		}
		visit(fn.Addr+uint64(off), in)
		off += in.Len
	}
	return nil
}

// ripRef is a RIP-relative memory operand of an instruction.
type ripRef struct {
	pc     uint64
	op     x86asm.Op
	target uint64    // absolute link-time address
	load   bool      // the memory operand is the source (second Go operand) of a MOV
	size   int       // memory access size in bytes
	next   x86asm.Op // the instruction that follows
}

// ripRefs lists the RIP-relative memory operands in fn, in order.
func (b *Binary) ripRefs(fn Sym) ([]ripRef, error) {
	var out []ripRef
	pending := 0 // refs of the previous instruction, waiting for their next
	err := b.walk(fn, func(pc uint64, in x86asm.Inst) {
		for ; pending > 0; pending-- {
			out[len(out)-pending].next = in.Op
		}
		for i, a := range in.Args {
			m, ok := a.(x86asm.Mem)
			if !ok || m.Base != x86asm.RIP {
				continue
			}
			target := uint64(int64(pc) + int64(in.Len) + m.Disp)
			// Intel operand order: Args[0] is the destination.
			out = append(out, ripRef{pc: pc, op: in.Op, target: target, load: i == 1, size: in.MemBytes})
			pending++
		}
	})
	return out, err
}
