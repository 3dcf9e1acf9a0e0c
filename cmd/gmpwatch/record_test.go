package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/gmpwatch/gmpwatch/analysis/export"
	"github.com/gmpwatch/gmpwatch/analysis/record"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

func TestRecordFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-o", "x"},                       // nothing to record
		{"-p", "1", "-o", "x", "--", "y"}, // both
		{"--", "y"},                       // no -o
		{"-p", "1", "-o", "x", "-f", "svg"},
		{"-p", "1", "-o", "x", "-d", "-1s"},
		{"-p", "1", "-o", "x", "stray"},
		{"-p", "1", "-o", "x", "-r", "out"}, // -r without -f
	} {
		if _, err := parseRecordFlags(args); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	f, err := parseRecordFlags([]string{"-o", "out", "-d", "30s", "-f", "pprof", "--probes", "execute, gopark", "--", "prog", "-x"})
	if err != nil || f.duration != 30*time.Second || f.format != "pprof" || strings.Join(f.probes, ",") != "execute,gopark" || strings.Join(f.cmd, " ") != "prog -x" {
		t.Errorf("%+v %v", f, err)
	}
}

// goldenRecording is a real recording of testdata/paths (go1.26.8).
var goldenRecording = filepath.Join("..", "..", "analysis", "export", "testdata", "paths-go1.26.8.rec")

// TestReportBadInput: bad, corrupt and newer files are refused in one line
// with status 2; a truncated one renders and says where it stopped.
func TestReportBadInput(t *testing.T) {
	dir := t.TempDir()
	good, err := os.ReadFile(goldenRecording)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newer := append([]byte{}, good...)
	newer[8] = record.Version + 1
	corruptMeta := append([]byte{}, good...)
	corruptMeta[30] ^= 0xff
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"report", filepath.Join(dir, "missing"), "-f", "text"}, "no such file"},
		{[]string{"report", write("garbage", []byte("hello, world\n")), "-f", "text"}, "not a gmpwatch recording"},
		{[]string{"report", write("newer", newer), "-f", "text"}, "recording from a newer gmpwatch"},
		{[]string{"report", write("corrupt", corruptMeta), "-f", "text"}, "corrupt recording"},
		{[]string{"report", goldenRecording, "-f", "svg"}, "unknown format"},
		{[]string{"report", "-f", "text"}, "no recording"},
		{[]string{"report", goldenRecording, "--src", "./no/such/pkg"}, "--src"},
	} {
		code, stdout, stderr, _ := runTopMain(t, context.Background(), nil, c.args...)
		if code != 2 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: status %d, stdout %q, stderr %q (want %q)", c.args, code, stdout, stderr, c.want)
		}
	}

	// Truncated: everything before the cut, and where it stopped.
	cut := write("cut", good[:len(good)*2/3])
	code, stdout, stderr, _ := runTopMain(t, context.Background(), nil, "report", cut, "-f", "text")
	if code != 0 || !strings.Contains(stderr, "incomplete recording, stopped at byte") || !strings.Contains(stdout, "NOTE: incomplete recording") ||
		!strings.Contains(stdout, "Goroutines: created") {
		t.Errorf("truncated: status %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
}

// pathsTarget holds what testdata/paths printed.
type pathsTarget struct {
	gcCycles           int64 // the target's own runtime.MemStats.NumGC at its end
	allocFunc, allocAt string
	allocBytes         int64
	blockAt            string
	blockNs            int64
	leakAt             string
	leaked             int64
	threads            int64
	syscallAt          string
	syscallNs          int64
}

func parsePathsOutput(t *testing.T, lines []string) pathsTarget {
	t.Helper()
	var p pathsTarget
	for _, l := range lines {
		f := strings.Fields(l)
		switch {
		case len(f) == 4 && f[0] == "alloc":
			p.allocFunc, p.allocAt = f[1], f[2]
			p.allocBytes, _ = strconv.ParseInt(f[3], 10, 64)
		case len(f) == 3 && f[0] == "block":
			p.blockAt = f[1]
			p.blockNs, _ = strconv.ParseInt(f[2], 10, 64)
		case len(f) == 3 && f[0] == "leak":
			p.leakAt = f[1]
			p.leaked, _ = strconv.ParseInt(f[2], 10, 64)
		case len(f) == 2 && f[0] == "gc":
			p.gcCycles, _ = strconv.ParseInt(f[1], 10, 64)
		case len(f) == 4 && f[0] == "threads":
			p.threads, _ = strconv.ParseInt(f[1], 10, 64)
			p.syscallAt = f[2]
			p.syscallNs, _ = strconv.ParseInt(f[3], 10, 64)
		}
	}
	if p.blockAt == "" || p.leakAt == "" || p.allocAt == "" || p.threads == 0 {
		t.Fatalf("target output incomplete: %q", lines)
	}
	return p
}

// atLine sums a pprof sample type over samples with a frame at FILE:LINE.
func atLine(p *profile.Profile, typ, fileLine string) (int64, bool) {
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == typ {
			idx = i
		}
	}
	var sum int64
	found := false
	for _, s := range p.Sample {
		hit := false
		for _, l := range s.Location {
			for _, ln := range l.Line {
				if fmt.Sprintf("%s:%d", ln.Function.Filename, ln.Line) == fileLine {
					hit = true
				}
			}
		}
		if hit {
			found = true
			sum += s.Value[idx]
		}
	}
	return sum, found
}

func total(p *profile.Profile, typ string) int64 {
	var sum int64
	for i, st := range p.SampleType {
		if st.Type == typ {
			for _, s := range p.Sample {
				sum += s.Value[i]
			}
		}
	}
	return sum
}

// TestRecordPaths records testdata/paths under the probes and checks every
// format against what the target says it did.
func TestRecordPaths(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "paths", testtarget.Go126, testtarget.Plain)
	dir := t.TempDir()
	rec := filepath.Join(dir, "paths.rec")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The exit status passes through; -f text renders the live models.
	code, stdout, stderr, _ := runTopMain(t, ctx, nil, "record", "-o", rec, "-f", "text", "--probes", "default,syscall", "--", bin, "-exit", "3")
	if code != 3 {
		t.Fatalf("status %d, want the target's 3; stderr:\n%s", code, stderr)
	}
	if !strings.HasPrefix(stderr, "Recording PID ") || !strings.Contains(stderr, "Recorded ") || !strings.Contains(stderr, " (0 lost) ") {
		t.Errorf("stderr: %q", stderr)
	}
	i := strings.Index(stdout, "gmpwatch report: ")
	if i < 0 {
		t.Fatalf("no report in stdout:\n%s", stdout)
	}
	live := stdout[i:]
	target := parsePathsOutput(t, strings.Split(stdout[:i], "\n"))

	// report renders the same numbers as the live run.
	code, fromFile, stderr, _ := runTopMain(t, ctx, nil, "report", rec, "-f", "text")
	if code != 0 || fromFile != live {
		t.Errorf("report differs from the live run (status %d, stderr %q):\nlive:\n%s\nreport:\n%s", code, stderr, live, fromFile)
	}
	// GC cycles, counted by the runtime, read from its memory: the target's
	// last GC comes before its final quiet phase (locked sleeps).
	if want := fmt.Sprintf("GC cycles: %d ", target.gcCycles); target.gcCycles == 0 || !strings.Contains(live, want) {
		t.Errorf("text lacks %q (the target counted %d):\n%s", want, target.gcCycles, live)
	}
	leakSite := fmt.Sprintf("alive %d", target.leaked)
	if !strings.Contains(live, target.leakAt) || !strings.Contains(live, leakSite) || !strings.Contains(live, "LEAK? alive kept rising") {
		t.Errorf("text: no leak at %s with %s:\n%s", target.leakAt, leakSite, live)
	}

	// pprof, parsed back.
	out := filepath.Join(dir, "paths.pb.gz")
	if code, _, stderr, _ := runTopMain(t, ctx, nil, "report", rec, "-f", "pprof", "-o", out); code != 0 {
		t.Fatalf("pprof: status %d: %s", code, stderr)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	p, err := profile.Parse(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckValid(); err != nil {
		t.Fatal(err)
	}
	if n, _ := atLine(p, "goroutines", target.leakAt); n != target.leaked {
		t.Errorf("goroutines created at %s: %d, target leaked %d", target.leakAt, n, target.leaked)
	}
	if n, _ := atLine(p, "alive", target.leakAt); n != target.leaked {
		t.Errorf("alive at %s: %d, target leaked %d", target.leakAt, n, target.leaked)
	}
	if total(p, "delay") <= 0 || total(p, "blocking") <= 0 {
		t.Errorf("no scheduling delay or blocking: %d %d", total(p, "delay"), total(p, "blocking"))
	}
	// The four threads locked in simultaneous blocking syscalls need
	// threads of their own; some may be reused from earlier ones.
	if n := total(p, "threads"); n < 2 {
		t.Errorf("threads created: %d", n)
	}

	t.Run("syscalls", func(t *testing.T) {
		// The locked goroutines' nanosleeps, at their line, each about NS;
		// sysmon hands their Ps off.
		want := fmt.Sprintf("%s: %d calls, total ", target.syscallAt, target.threads)
		i := strings.Index(live, want)
		if i < 0 {
			t.Fatalf("no %q in:\n%s", want, live)
		}
		var tot string
		fmt.Sscanf(live[i+len(want):], "%s", &tot)
		d, err := time.ParseDuration(strings.TrimSuffix(strings.ReplaceAll(tot, "µ", "u"), ","))
		if lo, hi := time.Duration(target.threads*target.syscallNs), time.Duration(target.threads*target.syscallNs)*13/10; err != nil || d < lo || d > hi {
			t.Errorf("syscall time at %s: %s, want %v..%v", target.syscallAt, tot, lo, hi)
		}
		if strings.Contains(live, "P handed off 0 times") {
			t.Errorf("no P hand-off while %d goroutines slept %v in syscalls", target.threads, time.Duration(target.syscallNs))
		}
	})
	t.Run("blocking-at-channel-line", func(t *testing.T) {
		// Needs the user stack at the park (BPF side): without it the park
		// is charged to the caller of gopark, runtime.chanrecv.
		ns, found := atLine(p, "blocking", target.blockAt)
		if !found {
			t.Fatalf("no blocking sample at the receive %s (target blocked %v there): the recording carries no park stacks "+
				"(GoPark.StackID = -1), so the park is charged to runtime.chanrecv; needs the BPF side's user stack at gopark",
				target.blockAt, time.Duration(target.blockNs))
		}
		t.Logf("blocking at %s: %v, target measured %v", target.blockAt, time.Duration(ns), time.Duration(target.blockNs))
		if d := float64(ns-target.blockNs) / float64(target.blockNs); d > 0.1 || d < -0.1 {
			t.Errorf("blocking at %s: %v, target measured %v (off by %.0f%%)", target.blockAt, time.Duration(ns), time.Duration(target.blockNs), d*100)
		}
	})
	t.Run("alloc-in-function", func(t *testing.T) {
		// Needs the mProf_Malloc probe and its user stack (BPF side).
		bytes, found := atLine(p, "alloc_space", target.allocAt)
		if !found {
			t.Fatalf("no sampled allocation at %s (%s allocated %d bytes): the recording has %d Alloc events; needs the BPF side's "+
				"mProf_Malloc probe with the user stack", target.allocAt, target.allocFunc, target.allocBytes, total(p, "alloc_objects"))
		}
		t.Logf("alloc_space at %s: %d, target allocated %d", target.allocAt, bytes, target.allocBytes)
		// Sampling: each 64 KiB object is sampled with probability
		// 1-exp(-64/512) = 0.118 at the default rate, so the target's
		// 1024 give ~120 samples (sd ~10): within a factor of 2 of the
		// truth is 6 sd. (256 objects gave ~30, and 15 once.)
		if bytes < target.allocBytes/2 || bytes > target.allocBytes*2 {
			t.Errorf("alloc_space at %s: %d, target allocated %d", target.allocAt, bytes, target.allocBytes)
		}
	})

	// perfetto: tracks per P and M, slices.
	code, js, _, _ := runTopMain(t, ctx, nil, "report", rec, "-f", "perfetto")
	var tr export.Trace
	if err := json.Unmarshal([]byte(js), &tr); code != 0 || err != nil {
		t.Fatalf("perfetto: status %d, %v", code, err)
	}
	tracks := map[int]int{}
	slices := map[int]int{}
	for _, e := range tr.TraceEvents {
		switch {
		case e.Ph == "M" && e.Name == "thread_name":
			tracks[e.Pid]++
		case e.Ph == "X":
			slices[e.Pid]++
			if e.Dur == nil || *e.Dur < 0 {
				t.Errorf("slice without duration: %+v", e)
			}
		}
	}
	if tracks[1] < 1 || tracks[2] < 2 || slices[1] < 100 || slices[2] < 100 {
		t.Errorf("perfetto: tracks %v slices %v", tracks, slices)
	}

	// jsonl: one line per event.
	r, err := os.Open(rec)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := record.Read(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	code, jl, _, _ := runTopMain(t, ctx, nil, "report", rec, "-f", "jsonl")
	if n := strings.Count(jl, "\n") - strings.Count(jl, `{"kind":"Stacks"`); code != 0 || n != len(rd.Events) {
		t.Errorf("jsonl: status %d, %d lines for %d events", code, n, len(rd.Events))
	}

	// --src: the go statement that leaked, with its count.
	code, withSrc, stderr, _ := runTopMain(t, ctx, nil, "report", rec, "-f", "text", "--src", filepath.Join(testtarget.RepoRoot(), "testdata", "paths"))
	leakLine := target.leakAt[strings.LastIndexByte(target.leakAt, ':'):]
	if code != 0 || !bytes.Contains([]byte(withSrc), []byte(fmt.Sprintf("testdata/paths/main.go%s (main.leak): created %d, alive %d", leakLine, target.leaked, target.leaked))) {
		t.Errorf("--src: status %d %s\n%s", code, stderr, withSrc)
	}
	blockLine := target.blockAt[strings.LastIndexByte(target.blockAt, ':'):]
	if want := fmt.Sprintf("testdata/paths/main.go%s (main.block): blocked 1 times", blockLine); !strings.Contains(withSrc, want) {
		t.Errorf("--src: no %q in\n%s", want, withSrc)
	}
}

// TestRecordAttachPID records a running process (-p) until it exits.
func TestRecordAttachPID(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "paths", testtarget.Go126, testtarget.Plain)
	proc := testtarget.Start(t, bin, "-wait", "-leak", "20")
	proc.WaitLine(t, "ready", 30*time.Second)
	rec := filepath.Join(t.TempDir(), "pid.rec")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type result struct {
		code   int
		stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, _, stderr, _ := runTopMain(t, ctx, nil, "record", "-p", strconv.Itoa(proc.PID()), "-o", rec, "-flush", "100ms")
		done <- result{code, stderr}
	}()
	// The Meta block is written once the probes are on.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if st, err := os.Stat(rec); err == nil && st.Size() > 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("recording never started")
		}
	}
	proc.Stdin.Write([]byte("\n"))
	leak := strings.Fields(proc.WaitLine(t, "leak ", 30*time.Second))
	var res result
	select {
	case res = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("record did not end when the target exited")
	}
	if res.code != 0 {
		t.Fatalf("status %d: %s", res.code, res.stderr)
	}
	code, out, stderr, _ := runTopMain(t, ctx, nil, "report", rec, "-f", "text")
	if code != 0 || stderr != "" {
		t.Fatalf("report: %d %s", code, stderr)
	}
	if want := fmt.Sprintf("%s  start main.leaked: created 20, exited 0, alive 20", leak[1]); !strings.Contains(out, want) {
		t.Errorf("no %q in:\n%s", want, out)
	}
}

// TestRecordVariants: the recording renders the go statement's line for
// stripped, PIE and older-toolchain targets, from the recording alone.
func TestRecordVariants(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range []testtarget.Case{
		{Toolchain: testtarget.Go126, Variant: testtarget.Stripped},
		{Toolchain: testtarget.Go126, Variant: testtarget.PIE},
		{Toolchain: testtarget.Go127, Variant: testtarget.Plain},
		{Toolchain: testtarget.Go119, Variant: testtarget.PIE},
	} {
		t.Run(tc.String(), func(t *testing.T) {
			bin := testtarget.Build(t, "paths", tc.Toolchain, tc.Variant)
			dir := t.TempDir()
			rec := filepath.Join(dir, "r.rec")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			code, stdout, stderr, _ := runTopMain(t, ctx, nil, "record", "-o", rec, "--", bin, "-leak", "15")
			if code != 0 {
				t.Fatalf("status %d: %s", code, stderr)
			}
			target := parsePathsOutput(t, strings.Split(stdout, "\n"))
			// Render without the binary: move it away.
			if err := os.Rename(bin, bin+".away"); err == nil {
				defer os.Rename(bin+".away", bin)
			}
			out := filepath.Join(dir, "p.pb.gz")
			if code, _, stderr, _ := runTopMain(t, ctx, nil, "report", rec, "-f", "pprof", "-o", out); code != 0 {
				t.Fatalf("report: %d %s", code, stderr)
			}
			f, _ := os.Open(out)
			p, err := profile.Parse(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := atLine(p, "alive", target.leakAt); n != target.leaked {
				t.Errorf("alive at %s: %d, target leaked %d", target.leakAt, n, target.leaked)
			}
		})
	}
}
