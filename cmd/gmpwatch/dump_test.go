package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// rsMainEnv makes the test binary run gmpwatch's Main when re-executed by
// rsExec: `dump --stop` ptraces the target, and a tracer must not be the
// target's parent (the parent's wait would take the ptrace stops), which
// the test process is.
const rsMainEnv = "GMPWATCH_RTSTATE_TEST_MAIN"

func init() {
	if os.Getenv(rsMainEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := Main(ctx, os.Args[1:], &cmdEnv{stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin})
		stop()
		// Peak RSS of this process image: the rusage of an exec'd child
		// also counts the parent's RSS at the fork, VmHWM does not.
		if b, err := os.ReadFile("/proc/self/status"); err == nil {
			if m := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(b); m != nil {
				fmt.Fprintf(os.Stderr, "vmhwm-kb %s\n", m[1])
			}
		}
		os.Exit(code)
	}
}

// rsCommand returns gmpwatch ARGS as a separate process.
func rsCommand(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), rsMainEnv+"=1")
	return cmd
}

// rsRun runs Main in this process.
func rsRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, &cmdEnv{stdout: &out, stderr: &errb, stdin: strings.NewReader("")})
	return code, out.String(), errb.String()
}

// dumpJSON is the part of dump --json the tests read.
type dumpJSON struct {
	Consistent bool `json:"consistent"`
	Allgs      int  `json:"allgs"`
	Skipped    int  `json:"skipped_total"`
	Total      int  `json:"goroutines_total"`
	Groups     []struct {
		Count      int       `json:"count"`
		Status     string    `json:"status"`
		WaitReason string    `json:"wait_reason"`
		CreatedAt  dumpFrame `json:"created_at"`
		Start      string    `json:"start_function"`
		Goids      []uint64  `json:"goids"`
	} `json:"groups"`
	Goroutines []struct {
		Goid       uint64    `json:"goid"`
		Status     string    `json:"status"`
		WaitReason string    `json:"wait_reason"`
		WaitingNS  *int64    `json:"waiting_ns"`
		CreatedAt  dumpFrame `json:"created_at"`
		Start      string    `json:"start_function"`
		Parent     uint64    `json:"parent_goid"`
	} `json:"goroutines"`
}

// holder is one goroutine as the holders target reports it.
type holder struct {
	kind, file, start string
	goid, parent      uint64
	line              int
}

var holderRe = regexp.MustCompile(`^holder kind=(\S+) goid=(\d+) parent=(\d+) file=(\S+) line=(\d+) start=(\S+)$`)

// startHolders starts testdata/holders and reads what it says of its
// goroutines.
func startHolders(t *testing.T, tc testtarget.Toolchain, v testtarget.Variant) (*testtarget.Process, []holder, time.Time) {
	t.Helper()
	bin := testtarget.Build(t, "holders", tc, v)
	started := time.Now()
	p := testtarget.Start(t, bin, "-chan", "7", "-sleep", "5", "-select", "3")
	var hs []holder
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		line := p.WaitLine(t, "", time.Until(deadline))
		if strings.HasPrefix(line, "ready ") {
			if line != "ready chan=7 sleep=5 select=3" {
				t.Fatalf("holders: %q", line)
			}
			return p, hs, started
		}
		m := holderRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		h := holder{kind: m[1], file: m[4], start: m[6]}
		h.goid, _ = strconv.ParseUint(m[2], 10, 64)
		h.parent, _ = strconv.ParseUint(m[3], 10, 64)
		h.line, _ = strconv.Atoi(m[5])
		hs = append(hs, h)
	}
	t.Fatal("holders did not get ready")
	return nil, nil, time.Time{}
}

var holderReason = map[string]string{"chan": "chan receive", "sleep": "sleep", "select": "select"}

// checkHolders compares a dump with what the holders said, exactly.
func checkHolders(t *testing.T, d *dumpJSON, hs []holder, minWait, maxWait time.Duration) {
	t.Helper()
	if len(hs) != 15 {
		t.Fatalf("holders reported %d goroutines, want 15", len(hs))
	}
	byGoid := map[uint64]int{}
	for i, g := range d.Goroutines {
		if _, dup := byGoid[g.Goid]; dup {
			t.Errorf("goroutine %d listed twice", g.Goid)
		}
		byGoid[g.Goid] = i
	}
	if len(d.Goroutines) != d.Total {
		t.Errorf("goroutines_total %d, %d listed", d.Total, len(d.Goroutines))
	}
	for _, h := range hs {
		i, ok := byGoid[h.goid]
		if !ok {
			t.Errorf("%s holder goroutine %d missing from the dump", h.kind, h.goid)
			continue
		}
		g := d.Goroutines[i]
		if g.Status != "waiting" || g.WaitReason != holderReason[h.kind] {
			t.Errorf("goroutine %d: %s (%s), want waiting (%s)", h.goid, g.Status, g.WaitReason, holderReason[h.kind])
		}
		if g.CreatedAt.File != h.file || g.CreatedAt.Line != h.line {
			t.Errorf("goroutine %d: created at %s:%d, the runtime says %s:%d", h.goid, g.CreatedAt.File, g.CreatedAt.Line, h.file, h.line)
		}
		if g.Start != h.start {
			t.Errorf("goroutine %d: start %q, the runtime says %q", h.goid, g.Start, h.start)
		}
		if g.Parent != h.parent { // 0 on both sides before go1.21
			t.Errorf("goroutine %d: parent %d, the runtime says %d", h.goid, g.Parent, h.parent)
		}
		if g.WaitingNS == nil {
			t.Errorf("goroutine %d: no waiting time after two GCs", h.goid)
		} else if w := time.Duration(*g.WaitingNS); w < minWait || w > maxWait {
			t.Errorf("goroutine %d: waiting %v, want between %v and %v", h.goid, w, minWait, maxWait)
		}
	}
	// Groups: exactly 7, 5 and 3 goroutines at the three go statements.
	for kind, n := range map[string]int{"chan": 7, "sleep": 5, "select": 3} {
		var want []uint64
		var line int
		for _, h := range hs {
			if h.kind == kind {
				want = append(want, h.goid)
				line = h.line
			}
		}
		slices.Sort(want)
		found := false
		for _, g := range d.Groups {
			if g.CreatedAt.Line != line || g.CreatedAt.File != hs[0].file {
				continue
			}
			found = true
			got := slices.Clone(g.Goids)
			slices.Sort(got)
			if g.Count != n || !slices.Equal(got, want) || g.Status != "waiting" || g.WaitReason != holderReason[kind] {
				t.Errorf("group at line %d: %d × %s (%s) %v, want %d × waiting (%s) %v", line, g.Count, g.Status, g.WaitReason, got, n, holderReason[kind], want)
			}
		}
		if !found {
			t.Errorf("no group created at %s:%d", hs[0].file, line)
		}
	}
}

// TestDumpHolders checks dump against a target that holds 7 goroutines in
// a channel receive, 5 asleep and 3 in a select, and says of each its goid,
// parent, creation line and start function as its own runtime sees them:
// every release, plain and stripped, racy and with --stop.
func TestDumpHolders(t *testing.T) {
	testtarget.RequireRoot(t)
	for _, tc := range testtarget.Toolchains {
		for _, v := range []testtarget.Variant{testtarget.Plain, testtarget.Stripped} {
			t.Run(fmt.Sprintf("%s-%s", tc, v), func(t *testing.T) {
				p, hs, started := startHolders(t, tc, v)
				time.Sleep(300 * time.Millisecond)
				pid := strconv.Itoa(p.PID())

				code, out, errs := rsRun(t, "dump", "-p", pid, "--json")
				if code != 0 {
					t.Fatalf("dump: exit %d: %s", code, errs)
				}
				var d dumpJSON
				if err := json.Unmarshal([]byte(out), &d); err != nil {
					t.Fatalf("dump --json: %v", err)
				}
				if d.Consistent {
					t.Error("a dump without --stop says it is consistent")
				}
				checkHolders(t, &d, hs, 300*time.Millisecond, time.Since(started))

				// --stop, from a process that is not the target's parent.
				cmd := rsCommand("dump", "-p", pid, "--json", "--stop")
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				out2, err := cmd.Output()
				if err != nil {
					t.Fatalf("dump --stop: %v: %s", err, stderr.String())
				}
				var ds dumpJSON
				if err := json.Unmarshal(out2, &ds); err != nil {
					t.Fatalf("dump --stop --json: %v", err)
				}
				if !ds.Consistent || ds.Skipped != 0 {
					t.Errorf("dump --stop: consistent=%v skipped=%d", ds.Consistent, ds.Skipped)
				}
				checkHolders(t, &ds, hs, 300*time.Millisecond, time.Since(started))
				rsCheckRunning(t, p.PID())

				// The text form says the same, grouped.
				code, text, _ := rsRun(t, "dump", "-p", pid)
				if code != 0 || !strings.Contains(text, "racy snapshot") ||
					!strings.Contains(text, fmt.Sprintf("7 × waiting (chan receive), created at %s:", hs[0].file)) {
					t.Errorf("dump text:\n%s", text)
				}
			})
		}
	}
}

// rsCheckRunning fails unless every thread of pid is untraced and not
// stopped: --stop let go of all of them.
func rsCheckRunning(t *testing.T, pid int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		if err != nil {
			continue // thread ended
		}
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			if f[0] == "State:" && (f[1] == "t" || f[1] == "T") {
				t.Errorf("thread %s of %d left %s", e.Name(), pid, strings.Join(f[1:], " "))
			}
			if f[0] == "TracerPid:" && f[1] != "0" {
				t.Errorf("thread %s of %d still traced by %s", e.Name(), pid, f[1])
			}
		}
	}
}

// rsTraced reports whether any thread of pid is traced.
func rsTraced(pid int) bool {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		if i := bytes.Index(b, []byte("TracerPid:\t")); i >= 0 && !bytes.HasPrefix(b[i+len("TracerPid:\t"):], []byte("0\n")) {
			return true
		}
	}
	return false
}

// TestDumpStopAlwaysResumes interrupts (Ctrl-C) and kills a dump --stop
// while it holds a target of 300,000 goroutines, and checks that the
// target runs on each time.
func TestDumpStopAlwaysResumes(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "million", testtarget.Go126, testtarget.Plain)
	p := testtarget.Start(t, bin, "-n", "300000")
	p.WaitLine(t, "ready", 120*time.Second)
	pid := strconv.Itoa(p.PID())
	for _, sig := range []os.Signal{os.Interrupt, os.Kill} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := rsCommand("dump", "-p", pid, "--stop", "--summary")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for !rsTraced(p.PID()) {
				if time.Now().After(deadline) {
					cmd.Process.Kill()
					t.Fatal("dump --stop never held the target")
				}
				time.Sleep(200 * time.Microsecond)
			}
			cmd.Process.Signal(sig)
			err := cmd.Wait()
			if sig == os.Interrupt {
				// Either interrupted (status 2, one line) or it had
				// finished reading; both must leave the target running.
				t.Logf("dump --stop after Ctrl-C: %v %s", err, strings.TrimSpace(stderr.String()))
			}
			time.Sleep(50 * time.Millisecond)
			rsCheckRunning(t, p.PID())
		})
	}
}

// TestDumpMillionScale measures dump on 1,000,000 goroutines (opt-in:
// GMPWATCH_SCALE=1): wall time and peak RSS of the gmpwatch process. The
// goal is < 3 s and < 256 MB; the test asserts generous bounds and logs the
// figures.
func TestDumpMillionScale(t *testing.T) {
	if os.Getenv("GMPWATCH_SCALE") != "1" {
		t.Skip("set GMPWATCH_SCALE=1 to measure dump on a million goroutines")
	}
	testtarget.RequireRoot(t)
	n := 1000000
	bin := testtarget.Build(t, "million", testtarget.Go126, testtarget.Plain)
	p := testtarget.Start(t, bin, "-n", strconv.Itoa(n))
	p.WaitLine(t, "ready", 300*time.Second)
	pid := strconv.Itoa(p.PID())
	for _, args := range [][]string{
		{"dump", "-p", pid, "--summary"},
		{"dump", "-p", pid, "--json"},
		{"dump", "-p", pid},
		{"dump", "-p", pid, "--stop", "--json"},
	} {
		t.Run(strings.Join(args[3:], " "), func(t *testing.T) {
			f, err := os.CreateTemp(t.TempDir(), "dump")
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd := rsCommand(args...)
			cmd.Stdout = f
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			begin := time.Now()
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v: %v: %s", args, err, stderr.String())
			}
			wall := time.Since(begin)
			ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
			m := regexp.MustCompile(`vmhwm-kb (\d+)`).FindStringSubmatch(stderr.String())
			if m == nil {
				t.Fatalf("no peak RSS reported: %s", stderr.String())
			}
			rss, _ := strconv.ParseInt(m[1], 10, 64)
			rss <<= 10
			st, _ := f.Stat()
			t.Logf("gmpwatch %s on %d goroutines: %v wall, %.1f MB peak RSS, %.1f MB written, user %v sys %v",
				strings.Join(args, " "), n, wall.Round(time.Millisecond), float64(rss)/1e6, float64(st.Size())/1e6,
				time.Duration(ru.Utime.Nano()).Round(time.Millisecond), time.Duration(ru.Stime.Nano()).Round(time.Millisecond))
			if rss > 256<<20 {
				t.Errorf("peak RSS %.1f MB, want < 256 MB", float64(rss)/1e6)
			}
			if wall > 15*time.Second {
				t.Errorf("took %v; the goal is 3 s", wall)
			}
			if args[len(args)-1] == "--json" {
				f.Seek(0, 0)
				var d dumpJSON
				if err := json.NewDecoder(f).Decode(&d); err != nil {
					t.Fatal(err)
				}
				held := 0
				for _, g := range d.Groups {
					if strings.HasSuffix(g.CreatedAt.File, "/main.go") && g.CreatedAt.Function == "main.main" {
						held += g.Count
					}
				}
				if held != n {
					t.Errorf("%d goroutines created in main.main, want %d (skipped %d)", held, n, d.Skipped)
				}
			}
		})
	}
}

// TestDumpRacingTarget dumps, without --stop, a target that creates,
// wakes and ends goroutines as fast as it can: every dump must succeed, and
// every goroutine it lists must hold together (a known status, a wait
// reason when waiting, a creation site and a start function that
// symbolize); what did not is counted as skipped, not printed.
func TestDumpRacingTarget(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "latmetrics", testtarget.Go126, testtarget.Plain)
	p := testtarget.Start(t, bin, "-pairs", "8", "-rounds", "400000", "-spawn", "200000")
	p.WaitLine(t, "ready", 60*time.Second)
	syscall.Kill(p.PID(), syscall.SIGUSR2)
	pid := strconv.Itoa(p.PID())
	known := map[string]bool{"runnable": true, "running": true, "syscall": true, "waiting": true, "preempted": true, "copystack": true}
	skipped, listed := 0, 0
	for i := 0; i < 10; i++ {
		code, out, errs := rsRun(t, "dump", "-p", pid, "--json")
		if code != 0 {
			t.Fatalf("dump %d: exit %d: %s", i, code, errs)
		}
		var d dumpJSON
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("dump %d: %v", i, err)
		}
		skipped += d.Skipped
		listed += len(d.Goroutines)
		for _, g := range d.Goroutines {
			if !known[g.Status] || (g.Status == "waiting") != (g.WaitReason != "") ||
				g.CreatedAt.Function == "" || g.CreatedAt.Line == 0 || g.Start == "" || g.Goid == 0 {
				t.Errorf("dump %d: goroutine %+v does not hold together", i, g)
			}
		}
	}
	t.Logf("10 racy dumps of a churning target: %d goroutines listed, %d entries skipped", listed, skipped)
}
