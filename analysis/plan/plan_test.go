package plan_test

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/layout"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// nmSymbols runs `go tool nm` (the installed toolchain reads every release's
// binaries) and returns name → address.
func nmSymbols(t *testing.T, bin string) map[string]uint64 {
	t.Helper()
	out, err := exec.Command("go", "tool", "nm", bin).Output()
	if err != nil {
		t.Fatalf("go tool nm %s: %v", bin, err)
	}
	syms := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		addr, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			continue
		}
		name := strings.Join(f[2:], " ")
		if _, dup := syms[name]; !dup {
			syms[name] = addr
		}
	}
	return syms
}

// sectionOf returns the name and start of the section holding addr.
func sectionOf(t *testing.T, bin string, addr uint64) (string, uint64) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, s := range f.Sections {
		if s.Addr != 0 && addr >= s.Addr && addr < s.Addr+s.Size {
			return s.Name, s.Addr
		}
	}
	t.Fatalf("%#x is in no section of %s", addr, bin)
	return "", 0
}

func dwarfLayout(t *testing.T, bin string) *layout.Layout {
	t.Helper()
	b, err := gobin.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	d, err := b.DWARF()
	if err != nil {
		t.Fatalf("%s: DWARF: %v", bin, err)
	}
	l, err := layout.FromDWARF(d)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestPlanAgainstTwin checks every build of the seed program against what
// the Go tools say of its unstripped twin: function addresses equal `go tool
// nm`; variables equal it (for a stripped build: at the same offset in the
// same section, since dropping .symtab moves the data); struct offsets equal
// the twin's DWARF; probes sit past the stack check on the instruction the
// plan names, at a file offset holding that instruction.
func TestPlanAgainstTwin(t *testing.T) {
	for _, tc := range testtarget.Toolchains {
		for _, v := range testtarget.Variants {
			t.Run(fmt.Sprintf("%s/%s", tc, v), func(t *testing.T) {
				bin := testtarget.Build(t, "gosched", tc, v)
				twin := bin
				if v == testtarget.Stripped {
					twin = testtarget.Build(t, "gosched", tc, testtarget.Plain)
				}
				p, err := plan.FromFile(bin)
				if err != nil {
					t.Fatalf("FromFile: %v", err)
				}
				checkPlan(t, p, bin, twin, v)
			})
		}
	}
}

func checkPlan(t *testing.T, p *plan.Plan, bin, twin string, v testtarget.Variant) {
	t.Helper()
	if !strings.HasPrefix(p.GoVersion, "go1.") || p.Arch != "amd64" {
		t.Errorf("version %q arch %q", p.GoVersion, p.Arch)
	}
	if got, want := p.Stripped, v == testtarget.Stripped; got != want {
		t.Errorf("stripped = %v, want %v", got, want)
	}
	if got, want := p.PIE, v == testtarget.PIE; got != want {
		t.Errorf("pie = %v, want %v", got, want)
	}
	if got, want := p.CGO, v == testtarget.CGO; got != want {
		t.Errorf("cgo = %v, want %v", got, want)
	}
	if got, want := p.ExternalLink, v == testtarget.CGO; got != want {
		t.Errorf("external_link = %v, want %v", got, want)
	}
	wantSource := plan.LayoutDWARF
	if v == testtarget.Stripped {
		wantSource = plan.LayoutTable
	}
	if p.LayoutSource != wantSource {
		t.Errorf("layout_source = %q, want %q (%s)", p.LayoutSource, wantSource, p.LayoutNote)
	}

	nm := nmSymbols(t, twin)
	for _, name := range []string{"runtime.schedule", "runtime.execute", "runtime.gopark", "runtime.newproc1",
		"runtime.ready", "runtime.goexit0", "runtime.casgstatus", "runtime.newm", "runtime.newosproc",
		"runtime.entersyscall", "runtime.exitsyscall", "runtime.mallocgc"} {
		f, ok := p.Functions[name]
		if !ok {
			t.Errorf("function %s missing", name)
			continue
		}
		if want, ok := nm[name]; !ok || f.Address != want {
			t.Errorf("%s at %#x, go tool nm says %#x", name, f.Address, want)
		}
		checkProbeSite(t, bin, name, f)
	}
	for name, g := range p.Globals {
		want, ok := nm[name]
		if !ok {
			t.Errorf("global %s: not in go tool nm", name)
			continue
		}
		if bin == twin {
			if g.Address != want {
				t.Errorf("global %s at %#x, go tool nm says %#x", name, g.Address, want)
			}
			continue
		}
		gs, gbase := sectionOf(t, bin, g.Address)
		ws, wbase := sectionOf(t, twin, want)
		if gs != ws || g.Address-gbase != want-wbase {
			t.Errorf("global %s at %s+%#x, twin has it at %s+%#x", name, gs, g.Address-gbase, ws, want-wbase)
		}
	}
	for _, name := range []string{"runtime.allgs", "runtime.allglen", "runtime.allp", "runtime.allm", "runtime.sched", "runtime.waitReasonStrings"} {
		if _, ok := p.Globals[name]; !ok {
			t.Errorf("global %s missing", name)
		}
	}

	want := dwarfLayout(t, twin)
	for _, key := range []string{"g.goid", "g.atomicstatus", "g.waitreason", "g.m", "g.gopc", "g.startpc",
		"m.id", "m.procid", "m.curg", "m.p", "p.id", "p.status", "p.runqhead", "p.runqtail", "sched.timeToRun"} {
		got, ok := p.Offsets[key]
		if !ok {
			t.Errorf("offset %s missing", key)
			continue
		}
		if got != want.Offsets[key] {
			t.Errorf("offset %s = %d, DWARF of the twin says %d", key, got, want.Offsets[key])
		}
	}
	if _, ok := want.Offsets["g.parentGoid"]; ok && p.Offsets["g.parentGoid"] != want.Offsets["g.parentGoid"] {
		t.Errorf("offset g.parentGoid = %d, want %d", p.Offsets["g.parentGoid"], want.Offsets["g.parentGoid"])
	}
	if v == testtarget.Stripped {
		// Every field the table has must agree with the twin's DWARF.
		for key, off := range p.Offsets {
			if w, ok := want.Offsets[key]; ok && w != off {
				t.Errorf("table offset %s = %d, DWARF of the twin says %d", key, off, w)
			}
		}
	}

	// Symbolization reads .gopclntab (.data.rel.ro.gopclntab in old PIEs).
	b, err := gobin.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, name := range []string{"runtime.gopark", "runtime.execute"} {
		f := p.Functions[name]
		if fr, ok := b.PCToFrame(f.Address + f.ProbeOffset); !ok || fr.Func != name || fr.Line == 0 || !strings.HasSuffix(fr.File, "proc.go") {
			t.Errorf("PCToFrame(%s+%d) = %+v, %v", name, f.ProbeOffset, fr, ok)
		}
	}

	var create int
	for _, pr := range p.Probes {
		if pr.Program == "newproc_runqput" {
			create++
			if !strings.HasPrefix(pr.Insn, "CALL ") {
				t.Errorf("creation probe on %q, want the CALL of runqput", pr.Insn)
			}
		}
	}
	if create != 1 {
		t.Errorf("%d creation probes at the runqput call, want 1", create)
	}
}

// checkProbeSite decodes the file at the probe's file offset: the bytes there
// must be the instruction the plan names, and never the stack-check compare.
func checkProbeSite(t *testing.T, bin, name string, f plan.Function) {
	t.Helper()
	file, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	code := make([]byte, 16)
	if _, err := file.ReadAt(code, int64(f.FileOffset+f.ProbeOffset)); err != nil {
		t.Fatalf("%s: read at file offset %#x: %v", name, f.FileOffset+f.ProbeOffset, err)
	}
	in, err := x86asm.Decode(code, 64)
	if err != nil {
		t.Fatalf("%s: decode at the probe: %v", name, err)
	}
	if got := x86asm.GoSyntax(in, f.Address+f.ProbeOffset, nil); got != f.ProbeInsn {
		t.Errorf("%s: file has %q at the probe, plan says %q", name, got, f.ProbeInsn)
	}
	if in.Op == x86asm.CMP {
		t.Errorf("%s: probe on the stack-check compare %q", name, f.ProbeInsn)
	}
	if !f.Refires && f.ProbeOffset > 0 && !(in.Op == x86asm.PUSH && in.Args[0] == x86asm.RBP) {
		t.Errorf("%s: probe past the stack check on %q, want the frame push", name, f.ProbeInsn)
	}
	if f.Refires && !strings.HasPrefix(f.ProbeInsn, "J") {
		t.Errorf("%s: refiring probe on %q, want the stack check's branch", name, f.ProbeInsn)
	}
}

// goroot returns the source tree of a toolchain's release.
func goroot(t *testing.T, tc testtarget.Toolchain) string {
	t.Helper()
	var cmd *exec.Cmd
	switch tc {
	case testtarget.Go119:
		return "/usr/lib/go-1.19"
	case testtarget.Go127:
		cmd = exec.Command("go", "env", "GOROOT")
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=go1.27.3")
	default:
		cmd = exec.Command("go", "env", "GOROOT")
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	}
	out, err := cmd.Output()
	if err != nil {
		testtarget.SkipOrFail(t, "go env GOROOT for %s: %v", tc, err)
	}
	return strings.TrimSpace(string(out))
}

// sourceWaitReasons parses runtime/runtime2.go of a release: the iota
// constants give the numbering, the waitReasonStrings literal the names.
func sourceWaitReasons(t *testing.T, root string) []string {
	t.Helper()
	path := filepath.Join(root, "src", "runtime", "runtime2.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	index := map[string]int{}
	names := map[string]string{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok {
			continue
		}
		for _, spec := range gd.Specs {
			vs, ok := spec.(*ast.ValueSpec)
			if !ok {
				continue
			}
			switch {
			case gd.Tok == token.CONST && len(vs.Names) == 1 && strings.HasPrefix(vs.Names[0].Name, "waitReason"):
				if _, seen := index[vs.Names[0].Name]; !seen && (len(index) > 0 || vs.Names[0].Name == "waitReasonZero") {
					index[vs.Names[0].Name] = len(index)
				}
			case gd.Tok == token.VAR && len(vs.Names) == 1 && vs.Names[0].Name == "waitReasonStrings":
				lit := vs.Values[0].(*ast.CompositeLit)
				for _, e := range lit.Elts {
					kv := e.(*ast.KeyValueExpr)
					s, _ := strconv.Unquote(kv.Value.(*ast.BasicLit).Value)
					names[kv.Key.(*ast.Ident).Name] = s
				}
			}
		}
	}
	out := make([]string, len(index))
	for n, i := range index {
		out[i] = names[n]
	}
	for len(out) > 0 && out[len(out)-1] == "" {
		out = out[:len(out)-1]
	}
	if len(out) < 20 {
		t.Fatalf("%s: parsed only %d wait reasons", path, len(out))
	}
	return out
}

// TestWaitReasonsFromProcess starts the target built by each release, plain
// and stripped, and reads its wait reasons: they must be the strings of that
// release's runtime source, in its numbering.
func TestWaitReasonsFromProcess(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range testtarget.Toolchains {
		want := sourceWaitReasons(t, goroot(t, tc))
		for _, v := range []testtarget.Variant{testtarget.Plain, testtarget.Stripped, testtarget.PIE} {
			t.Run(fmt.Sprintf("%s/%s", tc, v), func(t *testing.T) {
				proc := testtarget.Start(t, testtarget.Build(t, "gosched", tc, v), "-wait")
				proc.WaitLine(t, "ready", 10*time.Second)
				p, err := plan.FromProcess(proc.PID())
				if err != nil {
					t.Fatalf("FromProcess: %v", err)
				}
				if p.PID != proc.PID() || !strings.HasSuffix(p.Exe, filepath.Base(proc.Cmd.Path)) {
					t.Errorf("pid %d exe %q", p.PID, p.Exe)
				}
				if p.WaitReasonSource != "process" {
					t.Errorf("wait reasons read from the %s, want the process", p.WaitReasonSource)
				}
				if (p.LoadBias != 0) != (v == testtarget.PIE) {
					t.Errorf("load bias %#x for %s", p.LoadBias, v)
				}
				got := []string(p.WaitReasons)
				if len(got) != len(want) {
					t.Errorf("%d wait reasons, the source has %d", len(got), len(want))
				}
				for i := 0; i < len(want) && i < len(got); i++ {
					if got[i] != want[i] {
						t.Errorf("wait reason %d = %q, source says %q", i, got[i], want[i])
					}
				}
			})
		}
	}
}

// TestWaitReasonsFromBinary reads the same table from the file of every
// build (for a PIE, with its relocations applied).
func TestWaitReasonsFromBinary(t *testing.T) {
	for _, tc := range testtarget.Toolchains {
		want := sourceWaitReasons(t, goroot(t, tc))
		for _, v := range testtarget.Variants {
			p, err := plan.FromFile(testtarget.Build(t, "gosched", tc, v))
			if err != nil {
				t.Fatalf("%s/%s: %v", tc, v, err)
			}
			if p.WaitReasonSource != "binary" || strings.Join(p.WaitReasons, "|") != strings.Join(want, "|") {
				t.Errorf("%s/%s: wait reasons from the %s differ from the source:\n got %q\nwant %q", tc, v, p.WaitReasonSource, p.WaitReasons, want)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "text")
	os.WriteFile(text, []byte("hello"), 0o644)
	if _, err := plan.FromFile(text); !errors.Is(err, plan.ErrNotELF) {
		t.Errorf("text file: %v, want ErrNotELF", err)
	}
	if _, err := plan.FromFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want not exist", err)
	}
	cc, err := exec.LookPath("cc")
	if err == nil {
		src := filepath.Join(dir, "c.c")
		os.WriteFile(src, []byte("int main(void){return 0;}\n"), 0o644)
		if out, err := exec.Command(cc, "-o", filepath.Join(dir, "c"), src).CombinedOutput(); err == nil {
			if _, err := plan.FromFile(filepath.Join(dir, "c")); !errors.Is(err, plan.ErrNotGo) {
				t.Errorf("C binary: %v, want ErrNotGo", err)
			}
		} else {
			t.Logf("cc: %s", out)
		}
	}
	if _, err := plan.FromProcess(1 << 30); !errors.Is(err, plan.ErrNoProcess) {
		t.Errorf("missing pid: %v, want ErrNoProcess", err)
	}

	// An arm64 binary: cross-built by the installed toolchain.
	arm := filepath.Join(dir, "arm64")
	src := filepath.Join(testtarget.RepoRoot(), "testdata", "gosched")
	cmd := exec.Command("go", "build", "-o", arm, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOARCH=arm64", "CGO_ENABLED=0", "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cross build: %v\n%s", err, out)
	}
	if _, err := plan.FromFile(arm); !errors.Is(err, plan.ErrUnsupportedArch) {
		t.Errorf("arm64 binary: %v, want ErrUnsupportedArch", err)
	}
}

// FuzzFromReader feeds mutated binaries to the whole reader stack (ELF,
// build info, .symtab, .gopclntab, DWARF, prologue decoding): any input must
// give a plan or an error, never a panic.
func FuzzFromReader(f *testing.F) {
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Add([]byte{})
	if bin, err := testtarget.BuildErr("gosched", testtarget.Go126, testtarget.Stripped); err == nil {
		if b, err := os.ReadFile(bin); err == nil {
			f.Add(b)
			f.Add(b[:len(b)/2])
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := plan.FromReader("fuzz", bytes.NewReader(data))
		if err == nil && p == nil {
			t.Fatal("nil plan without an error")
		}
		var pe *gobin.PanicError
		if errors.As(err, &pe) && panickedIn(pe.Stack, "github.com/gmpwatch/") {
			t.Fatalf("panic in gmpwatch's own code: %v\n%s", pe.Value, pe.Stack)
		}
	})
}

func TestPanickedIn(t *testing.T) {
	var err error
	func() {
		defer gobin.Recover("test", &err)
		var m map[string]int
		m["x"] = 1 // a panic in this package
	}()
	var pe *gobin.PanicError
	if !errors.As(err, &pe) {
		t.Fatalf("Recover gave %v", err)
	}
	if !panickedIn(pe.Stack, "github.com/gmpwatch/") {
		t.Errorf("panic in plan_test not attributed to gmpwatch:\n%s", pe.Stack)
	}
	if panickedIn(pe.Stack, "debug/elf") {
		t.Error("panic in plan_test attributed to debug/elf")
	}
}

// panickedIn reports whether the first frame below the panic, runtime
// frames skipped, belongs to a package with the given prefix. Panics inside
// the standard library's readers are recovered on purpose.
func panickedIn(stack []byte, prefix string) bool {
	lines := strings.Split(string(stack), "\n")
	start := 0
	for i, l := range lines {
		if strings.HasPrefix(l, "panic(") {
			start = i + 2
		}
	}
	for i := start; i < len(lines); i += 2 {
		fn := lines[i]
		if strings.HasPrefix(fn, "runtime.") || strings.HasPrefix(fn, "gobin.Recover") || fn == "" {
			continue
		}
		return strings.HasPrefix(fn, prefix)
	}
	return false
}
