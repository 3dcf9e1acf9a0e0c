package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
	"github.com/gmpwatch/gmpwatch/patches"
)

func TestPatchListShowDiff(t *testing.T) {
	code, out, errs := runMain(t, "patch", "list")
	if code != 0 {
		t.Fatalf("patch list: %d %s", code, errs)
	}
	for _, want := range []string{"preempt-slice=SLICE", "probe-points", "runnext-noinherit", "go1.26,go1.27", "why:"} {
		if !strings.Contains(out, want) {
			t.Errorf("patch list lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runMain(t, "patch", "show", "probe-points")
	if code != 0 || !strings.Contains(out, patches.ProbeGoStatus) || !strings.Contains(out, "R11") {
		t.Errorf("patch show probe-points: %d\n%s", code, out)
	}
	code, out, _ = runMain(t, "patch", "diff", "runnext-noinherit")
	if code != 0 || !strings.HasPrefix(out, "--- a/runtime/proc.go\n+++ b/runtime/proc.go\n@@ ") || !strings.Contains(out, "+\t\treturn next.ptr(), false") {
		t.Errorf("patch diff: %d\n%s", code, out)
	}
}

func TestPatchBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"patch"},
		{"patch", "frobnicate"},
		{"patch", "check", "no-such-patch"},
		{"patch", "diff"},
		{"patch", "build", "probe-points", "--", "."},             // no -o
		{"patch", "build", "probe-points", "-o", "x"},             // no package
		{"patch", "build", "preempt-slice", "-o", "x", "--", "."}, // no value
		{"patch", "build", "probe-points", "-o", "x", "--", "-overlay=y", "."},
		{"patch", "list", "--bogus"},
		{"patch", "new", "Bad_Name"},
	} {
		code, out, errs := runMain(t, args...)
		if code != 2 || strings.Count(errs, "\n") != 1 || out != "" {
			t.Errorf("%q: status %d, stdout %q, stderr %q: want status 2 and one line", args, code, out, errs)
		}
	}
}

func TestPatchCheck(t *testing.T) {
	code, out, errs := runMain(t, "patch", "check", "probe-points")
	if code != 0 || !strings.Contains(out, "probe-points applies cleanly to go1.26") {
		t.Fatalf("patch check: %d %q %q", code, out, errs)
	}
	// A patch for another release is refused, saying so.
	dir := t.TempDir()
	copyPatch(t, "runnext-noinherit", dir, "old-only", `{"name":"old-only","summary":"s","go":["go1.19"]}`, nil)
	code, _, errs = runMain(t, "patch", "check", "old-only", "--dir", dir)
	if code != 1 || !strings.Contains(errs, "old-only is made for go1.19; the Go in use is go1.26") {
		t.Errorf("check of a go1.19 patch: %d %q", code, errs)
	}
	cache := t.TempDir()
	t.Setenv("GMPWATCH_PATCH_CACHE", cache)
	code, _, errs = runMain(t, "patch", "build", "old-only", "--dir", dir, "-o", filepath.Join(t.TempDir(), "bin"), "--", ".")
	if code != 1 || !strings.Contains(errs, "made for go1.19") || strings.Count(errs, "\n") != 1 {
		t.Errorf("build of a go1.19 patch: %d %q", code, errs)
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 0 {
		t.Errorf("refused build left %d entries in the cache", len(ents))
	}
}

// copyPatch writes a copy of a built-in patch under dir/name with another
// manifest, its diff changed by edit.
func copyPatch(t *testing.T, from, dir, name, manifest string, edit func(string) string) {
	t.Helper()
	var b bytes.Buffer
	if code := Main(context.Background(), []string{"patch", "diff", from}, &cmdEnv{stdout: &b, stderr: os.Stderr}); code != 0 {
		t.Fatalf("patch diff %s: %d", from, code)
	}
	d := b.String()
	if edit != nil {
		d = edit(d)
	}
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(p, patches.DiffFile), []byte(d), 0o644)
	os.WriteFile(filepath.Join(p, patches.ManifestFile), []byte(manifest), 0o644)
}

// TestPatchBuildCorrupted: a patch with a hunk that does not match is
// refused by check and build with the hunk, and build leaves no cache entry.
func TestPatchBuildCorrupted(t *testing.T) {
	dir := t.TempDir()
	copyPatch(t, "runnext-noinherit", dir, "broken", `{"name":"broken","summary":"s","go":["go1.26","go1.27"]}`,
		func(s string) string {
			return strings.Replace(s, "-\t\treturn next.ptr(), true", "-\t\treturn next.ptr(), maybe", 1)
		})
	code, _, errs := runMain(t, "patch", "check", "broken", "--dir", dir)
	if code != 1 || !strings.Contains(errs, "broken: runtime/proc.go: hunk #1 (@@ -") || !strings.Contains(errs, `want "\t\treturn next.ptr(), maybe"`) {
		t.Errorf("check: %d %q", code, errs)
	}
	cache := t.TempDir()
	t.Setenv("GMPWATCH_PATCH_CACHE", cache)
	out := filepath.Join(t.TempDir(), "bin")
	code, _, errs = runMain(t, "patch", "build", "probe-points", "broken", "--dir", dir, "-o", out, "--", ".")
	if code != 1 || !strings.Contains(errs, "refused: patch broken: runtime/proc.go: hunk #1") {
		t.Errorf("build: %d %q", code, errs)
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 0 {
		t.Errorf("refused build left %d entries in the cache", len(ents))
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("refused build wrote the binary")
	}
}

// TestPatchBuild builds a small program with a patch through the command and
// finds the patch in the binary.
func TestPatchBuild(t *testing.T) {
	work := t.TempDir()
	os.WriteFile(filepath.Join(work, "go.mod"), []byte("module tiny\n\ngo 1.19\n"), 0o644)
	os.WriteFile(filepath.Join(work, "main.go"), []byte("package main\n\nimport \"fmt\"\n\nfunc main() {\n\tc := make(chan int)\n\tgo func() { c <- 42 }()\n\tfmt.Println(\"tiny:\", <-c)\n}\n"), 0o644)
	t.Chdir(work)
	t.Setenv("GOTOOLCHAIN", "local")
	t.Setenv("CGO_ENABLED", "0")
	bin := filepath.Join(work, "tiny")
	code, _, errs := runMain(t, "patch", "build", "preempt-slice=2ms", "probe-points", "runnext-noinherit", "-o", bin, "--", "-ldflags=-s -w", ".")
	if code != 0 {
		t.Fatalf("patch build: %d %s", code, errs)
	}
	if !strings.Contains(errs, "built "+bin+" with preempt-slice=2ms, probe-points, runnext-noinherit") {
		t.Errorf("build message %q", errs)
	}
	got, err := patches.DetectFile(bin)
	if err != nil || strings.Join(got, " ") != "preempt-slice=2ms probe-points runnext-noinherit" {
		t.Errorf("detected %v, %v", got, err)
	}
	if out, err := exec.Command(bin).CombinedOutput(); err != nil || string(out) != "tiny: 42\n" {
		t.Errorf("patched program: %v %q", err, out)
	}
	// GOROOT is only read.
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatal(err)
	}
	rt := filepath.Join(strings.TrimSpace(string(goroot)), "src", "runtime")
	for _, f := range []string{"zz_gmpwatch_patches.go", "gmpwatch_probes.go"} {
		if _, err := os.Stat(filepath.Join(rt, f)); err == nil {
			t.Errorf("%s was written into GOROOT", f)
		}
	}
	if b, err := os.ReadFile(filepath.Join(rt, "proc.go")); err != nil || bytes.Contains(b, []byte("gmpwatch")) {
		t.Errorf("GOROOT's proc.go was patched (%v)", err)
	}
}

// TestPatchNew makes a patch with new and --finish, then checks, diffs and
// lists it from its folder.
func TestPatchNew(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("GOTOOLCHAIN", "local")
	code, out, errs := runMain(t, "patch", "new", "comment-only", "--work", "w")
	if code != 0 || !strings.Contains(out, "copied") {
		t.Fatalf("patch new: %d %q %q", code, out, errs)
	}
	code, _, errs = runMain(t, "patch", "new", "comment-only", "--finish", "--work", "w", "--dir", "out", "--summary", "s")
	if code != 2 || !strings.Contains(errs, "no change") {
		t.Errorf("finish without a change: %d %q", code, errs)
	}
	p := filepath.Join("w", "runtime", "proc.go")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(b), "// forcePreemptNS is the time slice given to a G before it is\n",
		"// forcePreemptNS is the time slice given to a G before it is\n// (a comment added by TestPatchNew)\n", 1)
	if edited == string(b) {
		t.Fatal("proc.go has no forcePreemptNS comment")
	}
	os.WriteFile(p, []byte(edited), 0o644)
	os.WriteFile(filepath.Join("w", "runtime", "zz_new_file.go"), []byte("package runtime\n\nconst gmpwatchTestNew = 1\n"), 0o644)
	code, out, errs = runMain(t, "patch", "new", "comment-only", "--finish", "--work", "w", "--dir", "out", "--summary", "adds a comment", "--why", "to test")
	if code != 0 || !strings.Contains(out, "changes runtime/proc.go, runtime/zz_new_file.go") {
		t.Fatalf("finish: %d %q %q", code, out, errs)
	}
	code, out, errs = runMain(t, "patch", "check", "comment-only", "--dir", "out")
	if code != 0 || !strings.Contains(out, "applies cleanly") {
		t.Errorf("check of the new patch: %d %q %q", code, out, errs)
	}
	code, out, _ = runMain(t, "patch", "diff", "comment-only", "--dir", "out")
	if code != 0 || !strings.Contains(out, "+// (a comment added by TestPatchNew)") || !strings.Contains(out, "--- /dev/null\n+++ b/runtime/zz_new_file.go") {
		t.Errorf("diff of the new patch: %d\n%s", code, out)
	}
	code, out, _ = runMain(t, "patch", "list", "--dir", "out")
	if code != 0 || !strings.Contains(out, "comment-only") || !strings.Contains(out, "adds a comment") {
		t.Errorf("list with --dir: %d\n%s", code, out)
	}
}

// TestPreemptSliceUnderGmpwatch builds the CPU-bound plus latency-sensitive
// target with the forced-preemption slice at 2ms and at 50ms and traces each
// under gmpwatch: the scheduling latency gmpwatch measures (runnable to
// running) follows the slice, since with GOMAXPROCS=1 the ticker goroutine
// waits for the spinning one to be preempted.
func TestPreemptSliceUnderGmpwatch(t *testing.T) {
	testtarget.RequireRoot(t)
	pkg := filepath.Join(testtarget.RepoRoot(), "testdata", "preemptlat")
	p99 := map[string]uint64{}
	for _, slice := range []string{"2ms", "50ms"} {
		bin := filepath.Join(t.TempDir(), "preemptlat-"+slice)
		if code, _, errOut := runMain(t, "patch", "build", "preempt-slice="+slice, "-o", bin, "--", pkg); code != 0 {
			t.Fatalf("patch build preempt-slice=%s: exit %d: %s", slice, code, errOut)
		}
		code, stdout, errOut, _ := runTopMain(t, context.Background(), strings.NewReader(""), "--json", "--overhead", "max", "--", bin, "-mode", "ticker", "-d", "1500ms")
		if code != 0 {
			t.Fatalf("gmpwatch -- preemptlat (%s): exit %d: %s", slice, code, errOut)
		}
		rs, other := topReports(t, stdout)
		final := rs[len(rs)-1]
		if final.Kind != "final" || final.SchedLatency.Count < 20 || final.LostEvents != 0 {
			t.Fatalf("%s: final report %+v", slice, final.SchedLatency)
		}
		p99[slice] = final.SchedLatency.P99Ns
		t.Logf("preempt-slice=%s: gmpwatch p50 %v p99 %v max %v over %d samples; target: %s", slice,
			time.Duration(final.SchedLatency.P50Ns), time.Duration(final.SchedLatency.P99Ns), time.Duration(final.SchedLatency.MaxNs),
			final.SchedLatency.Count, topLine(other, "preemptlat:"))
	}
	if p99["50ms"] < 4*p99["2ms"] {
		t.Errorf("p99 scheduling latency %v with a 50ms slice, %v with 2ms: want at least 4x", time.Duration(p99["50ms"]), time.Duration(p99["2ms"]))
	}
}
