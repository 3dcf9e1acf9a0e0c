package gobin

import (
	"errors"
	"strings"
	"testing"
)

// Prologues as Go's amd64 back end emits them (and two it never does), with
// the probe site each must get.
func TestProbeSite(t *testing.T) {
	const (
		cmpSP   = "\x49\x3b\x66\x10"     // CMPQ SP, 16(R14)
		cmpR12  = "\x4d\x3b\x66\x10"     // CMPQ R12, 16(R14)
		leaR12  = "\x4c\x8d\x64\x24\x80" // LEAQ -0x80(SP), R12
		jbe     = "\x76\x20"             // JBE +0x20
		ja      = "\x77\x20"             // JA +0x20
		pushBP  = "\x55"                 // PUSHQ BP
		subSP   = "\x48\x83\xec\x18"     // SUBQ $0x18, SP
		movBPSP = "\x48\x89\xe5"         // MOVQ SP, BP
		nop     = "\x90"
	)
	for _, tc := range []struct {
		name    string
		code    string
		offset  uint64
		insn    string // prefix of the Go syntax
		refires bool
		pushed  bool
		err     bool
	}{
		{name: "go1.21+ push after the check", code: cmpSP + jbe + pushBP + movBPSP, offset: 6, insn: "PUSHQ BP", pushed: false},
		{name: "go1.20- frame by SUBQ", code: cmpSP + jbe + subSP + pushBP, offset: 4, insn: "JBE", refires: true},
		{name: "big frame through R12", code: leaR12 + cmpR12 + jbe + subSP, offset: 9, insn: "JBE", refires: true},
		{name: "nosplit", code: subSP + pushBP, offset: 0, insn: "SUBQ"},
		{name: "frame pushed before the check", code: pushBP + movBPSP + cmpSP + jbe + subSP, offset: 8, insn: "JBE", refires: true, pushed: true},
		{name: "check branching with JA", code: cmpSP + ja + subSP, err: true},
		{name: "check without a branch", code: cmpSP + nop + nop, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			site, err := probeSite([]byte(tc.code), 0x401000)
			if tc.err {
				if !errors.Is(err, ErrPrologue) {
					t.Fatalf("site %+v, err %v; want ErrPrologue", site, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if site.Offset != tc.offset || !strings.HasPrefix(site.Insn, tc.insn) || site.Refires != tc.refires || site.FramePushed != tc.pushed {
				t.Errorf("site %+v, want offset %d at %q, refires %v, frame pushed %v", site, tc.offset, tc.insn, tc.refires, tc.pushed)
			}
		})
	}
}
