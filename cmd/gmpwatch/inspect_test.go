package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

func TestInspectJSON(t *testing.T) {
	bin := testtarget.Build(t, "gosched", testtarget.Go126, testtarget.Stripped)
	code, out, errOut := runMain(t, "inspect", "--json", bin)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got struct {
		GoVersion    string                       `json:"go_version"`
		Arch         string                       `json:"arch"`
		Stripped     *bool                        `json:"stripped"`
		PIE          *bool                        `json:"pie"`
		LayoutSource string                       `json:"layout_source"`
		Offsets      map[string]int64             `json:"offsets"`
		Functions    map[string]map[string]any    `json:"functions"`
		Globals      map[string]map[string]uint64 `json:"globals"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, out)
	}
	if got.GoVersion != "go1.26.8" || got.Arch != "amd64" || got.Stripped == nil || !*got.Stripped || got.PIE == nil || *got.PIE || got.LayoutSource != "table" {
		t.Errorf("header: %+v", got)
	}
	for _, k := range []string{"g.goid", "g.atomicstatus", "g.waitreason", "g.m", "g.gopc", "g.startpc", "g.parentGoid",
		"m.id", "m.procid", "m.curg", "m.p", "p.id", "p.status", "p.runqhead", "p.runqtail", "sched.timeToRun"} {
		if _, ok := got.Offsets[k]; !ok {
			t.Errorf("offsets lack %s", k)
		}
	}
	// go1.26.8 values, from ../shared/go-runtime-layouts/go1.26.8-amd64.txt.
	for k, want := range map[string]int64{"g.goid": 152, "g.waitreason": 176, "m.procid": 64, "m.p": 208, "sched.timeToRun": 360} {
		if got.Offsets[k] != want {
			t.Errorf("offset %s = %d, want %d", k, got.Offsets[k], want)
		}
	}
	for _, k := range []string{"runtime.schedule", "runtime.execute", "runtime.gopark", "runtime.newproc1", "runtime.ready",
		"runtime.goexit0", "runtime.casgstatus", "runtime.newm", "runtime.newosproc", "runtime.entersyscall",
		"runtime.exitsyscall", "runtime.mallocgc"} {
		f, ok := got.Functions[k]
		if !ok {
			t.Errorf("functions lack %s", k)
			continue
		}
		if f["address"].(float64) == 0 || f["file_offset"].(float64) == 0 {
			t.Errorf("%s: %v", k, f)
		}
		if _, ok := f["probe_offset"]; !ok {
			t.Errorf("%s has no probe_offset", k)
		}
	}
	for _, k := range []string{"runtime.allgs", "runtime.allglen", "runtime.allp", "runtime.allm", "runtime.sched", "runtime.waitReasonStrings"} {
		if got.Globals[k]["address"] == 0 {
			t.Errorf("globals lack %s", k)
		}
	}
}

func TestInspectProcessText(t *testing.T) {
	testtarget.RequireRoot(t)
	proc := testtarget.Start(t, testtarget.Build(t, "gosched", testtarget.Go119, testtarget.Plain), "-wait")
	proc.WaitLine(t, "ready", 10*time.Second)
	code, out, errOut := runMain(t, "inspect", "-p", strconv.Itoa(proc.PID()))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"Go go1.19.8, linux/amd64", "from the binary's DWARF", "runtime.gopark", "Wait reasons (read from the process;", " 14  chan receive"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestInspectBadInput(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	os.WriteFile(text, []byte("not a binary"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"inspect", filepath.Join(dir, "nope")}, "no such file"},
		{[]string{"inspect", text}, "not an ELF file"},
		{[]string{"inspect", "/bin/sh"}, "not a Go binary"},
		{[]string{"inspect", "-p", "1073741824"}, "no such process"},
		{[]string{"inspect"}, "give one BINARY or -p PID"},
		{[]string{"inspect", "--bogus"}, "flag provided but not defined"},
		{[]string{"frobnicate"}, "unknown command"},
	} {
		code, out, errOut := runMain(t, tc.args...)
		if code != 2 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

func TestPs(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "gosched", testtarget.Go126, testtarget.Stripped)
	proc := testtarget.Start(t, bin, "-wait")
	proc.WaitLine(t, "ready", 10*time.Second)
	code, out, errOut := runMain(t, "ps", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var p goProcess
		if err := json.Unmarshal([]byte(line), &p); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if p.PID == proc.PID() {
			found = true
			if p.GoVersion != "go1.26.8" || !p.Stripped || p.Path != bin {
				t.Errorf("ps row %+v, want go1.26.8 stripped %s", p, bin)
			}
		}
	}
	if !found {
		t.Errorf("pid %d not listed:\n%s", proc.PID(), out)
	}
}

// TestInspectPatched builds a target with the probe-points runtime patch and
// checks that inspect reports the patch and plans a probe on its function.
func TestInspectPatched(t *testing.T) {
	out := filepath.Join(t.TempDir(), "gosched-patched")
	pkg := filepath.Join(testtarget.RepoRoot(), "testdata", "gosched")
	if code, _, errOut := runMain(t, "patch", "build", "probe-points", "-o", out, "--", "-ldflags=-s -w", pkg); code != 0 {
		t.Fatalf("patch build: exit %d: %s", code, errOut)
	}
	code, stdout, errOut := runMain(t, "inspect", "--json", out)
	if code != 0 {
		t.Fatalf("inspect: exit %d: %s", code, errOut)
	}
	var p struct {
		Patches []string `json:"patches"`
		Probes  []struct {
			Program, Symbol string
		} `json:"probes"`
	}
	if err := json.Unmarshal([]byte(stdout), &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Patches) != 1 || p.Patches[0] != "probe-points" {
		t.Errorf("patches = %v, want [probe-points]", p.Patches)
	}
	found := false
	for _, pr := range p.Probes {
		found = found || (pr.Program == "probe_points" && pr.Symbol == "runtime.gmpwatchProbeGoStatus")
	}
	if !found {
		t.Errorf("no probe_points probe in %+v", p.Probes)
	}
	if code, text, _ := runMain(t, "inspect", out); code != 0 || !strings.Contains(text, "runtime patches: probe-points") {
		t.Errorf("text output lacks the patch line:\n%s", text)
	}
}
