package patches

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// toolchain returns the Go of a test toolchain, as the go command reports it
// in a folder outside any module.
func toolchain(t testing.TB, tc testtarget.Toolchain) *Toolchain {
	t.Helper()
	env := goEnv(tc)
	got, err := QueryToolchain(context.Background(), "go", t.TempDir(), env)
	if err != nil {
		testtarget.SkipOrFail(t, "toolchain %s: %v", tc, err)
	}
	return got
}

func goEnv(tc testtarget.Toolchain) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOROOT", "GOFLAGS", "GOTOOLCHAIN", "GOWORK", "GO111MODULE", "CGO_ENABLED", "GOEXPERIMENT":
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	if tc == testtarget.Go127 {
		return append(env, "GOTOOLCHAIN=go1.27.3")
	}
	return append(env, "GOTOOLCHAIN=local")
}

func TestBuiltin(t *testing.T) {
	ps, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"preempt-slice": true, "probe-points": true, "runnext-noinherit": true}
	for _, p := range ps {
		delete(want, p.Name)
		if p.Summary == "" || p.Why == "" || p.Effect == "" {
			t.Errorf("%s: manifest lacks summary, why or effect", p.Name)
		}
		if !p.Supports("go1.26.8") || !p.Supports("go1.27.3") || p.Supports("go1.25.1") {
			t.Errorf("%s: Go releases %v, want go1.26 and go1.27", p.Name, p.Go)
		}
		for _, f := range p.Files() {
			if !strings.HasPrefix(f, "runtime/") {
				t.Errorf("%s: changes %s outside runtime/", p.Name, f)
			}
		}
	}
	if len(want) > 0 {
		t.Errorf("missing built-in patches: %v", want)
	}
	s, err := LoadSet()
	if err != nil {
		t.Fatal(err)
	}
	pp, err := s.Get("probe-points")
	if err != nil {
		t.Fatal(err)
	}
	if len(pp.Probes) != 1 || pp.Probes[0].Symbol != ProbeGoStatus || len(pp.Probes[0].Args) != 9 {
		t.Fatalf("probe-points documents %+v, want %s with 9 arguments", pp.Probes, ProbeGoStatus)
	}
	regs := []string{"AX", "BX", "CX", "DIL", "ESI", "R8", "R9", "R10", "R11"}
	for i, a := range pp.Probes[0].Args {
		if a.Reg != regs[i] {
			t.Errorf("probe argument %d (%s) in %s, want %s", i, a.Name, a.Reg, regs[i])
		}
	}
}

func TestSelect(t *testing.T) {
	s, err := LoadSet()
	if err != nil {
		t.Fatal(err)
	}
	sel, err := s.Select([]string{"preempt-slice=2ms", "probe-points"})
	if err != nil {
		t.Fatal(err)
	}
	if sel[0].Label() != "preempt-slice=2ms" || sel[0].value != 2_000_000 || sel[1].Label() != "probe-points" {
		t.Fatalf("selected %s (%d), %s", sel[0].Label(), sel[0].value, sel[1].Label())
	}
	for spec, want := range map[string]string{
		"preempt-slice":          "needs a value",
		"preempt-slice=1ns":      "out of range",
		"preempt-slice=soon":     "invalid duration",
		"preempt-slice=2ms,evil": "want a duration",
		"probe-points=3":         "takes no value",
		"no-such-patch":          "unknown patch",
	} {
		if _, err := s.Select([]string{spec}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Select(%q) = %v, want an error containing %q", spec, err, want)
		}
	}
	if _, err := s.Select([]string{"probe-points", "probe-points"}); err == nil {
		t.Error("a patch named twice was accepted")
	}
}

func TestRelease(t *testing.T) {
	for in, want := range map[string]string{"go1.26.8": "go1.26", "go1.27rc1": "go1.27", "go1.27.3 X:nocoverageredesign": "go1.27", "devel go1.28-abc": ""} {
		if got := Release(in); got != want {
			t.Errorf("Release(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestApplyReleases applies every built-in patch, alone and all together, to
// the runtime sources of each claimed release.
func TestApplyReleases(t *testing.T) {
	s, err := LoadSet()
	if err != nil {
		t.Fatal(err)
	}
	all, err := s.Select([]string{"preempt-slice=2ms", "probe-points", "runnext-noinherit"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tcName := range []testtarget.Toolchain{testtarget.Go126, testtarget.Go127} {
		tc := toolchain(t, tcName)
		if Release(tc.GOVERSION) != string(tcName) {
			t.Fatalf("%s: go env GOVERSION says %s", tcName, tc.GOVERSION)
		}
		for _, sel := range all {
			if _, err := Check(tc, sel); err != nil {
				t.Errorf("%s on %s: %v", sel.Name, tc.GOVERSION, err)
			}
		}
		a, err := Apply(tc, all)
		if err != nil {
			t.Fatalf("all patches on %s: %v", tc.GOVERSION, err)
		}
		proc := string(a.Files["runtime/proc.go"])
		for _, want := range []string{"const forcePreemptNS = gmpwatchPreemptSliceNS", "return next.ptr(), false", "gmpwatchProbe(newg, _Gdead, status"} {
			if !strings.Contains(proc, want) {
				t.Errorf("%s: patched proc.go lacks %q", tc.GOVERSION, want)
			}
		}
		if _, ok := a.Files["runtime/gmpwatch_probes.go"]; !ok {
			t.Errorf("%s: probe-points did not add gmpwatch_probes.go", tc.GOVERSION)
		}
	}
}

// writePatch writes a patch folder holding manifest and diff under dir.
func writePatch(t *testing.T, dir, name, manifest, diff string) {
	t.Helper()
	d := filepath.Join(dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, ManifestFile), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, DiffFile), []byte(diff), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRefuseOtherRelease: a patch whose manifest does not list the Go in use
// is refused with a message naming both, and nothing is written.
func TestRefuseOtherRelease(t *testing.T) {
	b, _ := builtin.ReadFile("runnext-noinherit/" + DiffFile)
	dir := t.TempDir()
	writePatch(t, dir, "old-only", `{"name":"old-only","summary":"s","go":["go1.19"]}`, string(b))
	s, err := LoadSet(dir)
	if err != nil {
		t.Fatal(err)
	}
	sel, err := s.Select([]string{"old-only"})
	if err != nil {
		t.Fatal(err)
	}
	tc := toolchain(t, testtarget.Go126)
	cache := t.TempDir()
	_, err = Prepare(tc, sel, cache)
	if !errors.Is(err, ErrWrongGo) {
		t.Fatalf("Prepare = %v, want ErrWrongGo", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "old-only is made for go1.19") || !strings.Contains(msg, "the Go in use is "+tc.GOVERSION) {
		t.Errorf("message %q does not name the patch's release and the Go in use", msg)
	}
	assertEmpty(t, cache)
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	var found []string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && p != dir {
			found = append(found, p)
		}
		return nil
	})
	if len(found) > 0 {
		t.Errorf("cache %s holds %v after a refused patch", dir, found)
	}
}

// TestRefuseCorrupted: a patch whose second hunk does not match the runtime
// is refused naming that hunk, even though its first hunk applies, and the
// cache holds nothing; so is a good patch followed by a bad one.
func TestRefuseCorrupted(t *testing.T) {
	b, _ := builtin.ReadFile("preempt-slice/" + DiffFile)
	diff := string(b)
	// The second hunk's context: "// preempted." exists once in proc.go.
	bad := strings.Replace(diff, " // preempted.\n", " // preempted, corrupted.\n", 1)
	if bad == diff {
		t.Fatal("the preempt-slice diff changed: update the corruption")
	}
	m, _ := builtin.ReadFile("preempt-slice/" + ManifestFile)
	dir := t.TempDir()
	writePatch(t, dir, "preempt-slice", string(m), bad) // overrides the built-in one
	s, err := LoadSet(dir)
	if err != nil {
		t.Fatal(err)
	}
	tc := toolchain(t, testtarget.Go126)
	for _, specs := range [][]string{{"preempt-slice=2ms"}, {"probe-points", "preempt-slice=2ms"}} {
		sel, err := s.Select(specs)
		if err != nil {
			t.Fatal(err)
		}
		cache := t.TempDir()
		_, err = Prepare(tc, sel, cache)
		var he *HunkError
		if !errors.As(err, &he) || !errors.Is(err, ErrNotApplicable) {
			t.Fatalf("%v: Prepare = %v, want a *HunkError", specs, err)
		}
		if he.Patch != "preempt-slice" || he.File != "runtime/proc.go" || he.Hunk != 2 || he.Want != "// preempted, corrupted." || he.Have != "// preempted." {
			t.Errorf("%v: hunk error %+v, want hunk #2 of runtime/proc.go wanting the corrupted line", specs, he)
		}
		if !strings.Contains(err.Error(), "hunk #2 (@@ -") {
			t.Errorf("message %q does not show the hunk header", err)
		}
		assertEmpty(t, cache)
	}
}

// TestRelocate applies hunks to a file whose lines moved, and refuses one
// whose lines are gone, on a GOROOT made for the test.
func TestRelocate(t *testing.T) {
	root := t.TempDir()
	var lines []string
	for i := 1; i <= 40; i++ {
		lines = append(lines, "line"+string(rune('A'+i%26))+strings.Repeat("x", i))
	}
	orig := strings.Join(lines, "\n") + "\n"
	diff := "--- a/runtime/x.go\n+++ b/runtime/x.go\n@@ -9,3 +9,3 @@\n " + lines[8] + "\n-" + lines[9] + "\n+changed\n " + lines[10] + "\n"
	dir := t.TempDir()
	writePatch(t, dir, "moved", `{"name":"moved","summary":"s","go":["go1.26"]}`, diff)
	ps, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	sel := []*Selected{{Patch: ps[0]}}
	tc := &Toolchain{GOROOT: root, GOVERSION: "go1.26.8"}
	write := func(content string) {
		os.MkdirAll(filepath.Join(root, "src", "runtime"), 0o755)
		if err := os.WriteFile(filepath.Join(root, "src", "runtime", "x.go"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("new1\nnew2\nnew3\n" + orig)
	a, err := Apply(tc, sel)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Offsets["moved"]["runtime/x.go"]; len(got) != 1 || got[0] != 3 {
		t.Errorf("offsets %v, want [3]", got)
	}
	if want := "new1\nnew2\nnew3\n" + strings.Replace(orig, lines[9]+"\n", "changed\n", 1); string(a.Files["runtime/x.go"]) != want {
		t.Errorf("patched file differs from the expected one")
	}
	write(strings.Replace(orig, lines[9], "someone else's change", 1))
	_, err = Apply(tc, sel)
	var he *HunkError
	if !errors.As(err, &he) || he.Line != 10 || he.Want != lines[9] || he.Have != "someone else's change" {
		t.Fatalf("Apply = %v (%+v), want hunk #1 failing at line 10", err, he)
	}
}
