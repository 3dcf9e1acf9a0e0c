package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/procmem"
	"github.com/gmpwatch/gmpwatch/ebpf"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// tmuxPane drives one tmux session on a private server.
type tmuxPane struct {
	t      *testing.T
	socket string
}

func (p *tmuxPane) run(args ...string) string {
	p.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", p.socket}, args...)...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("tmux %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (p *tmuxPane) capture() string { return p.run("capture-pane", "-p", "-t", "live") }

// waitFor polls the pane until ok accepts it, and returns that screen.
func (p *tmuxPane) waitFor(what string, timeout time.Duration, ok func(screen string) bool) string {
	p.t.Helper()
	var s string
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if s = p.capture(); ok(s) {
			return s
		}
		if strings.Contains(s, "gmpwatch exited") && strings.Contains(s, "icanon") {
			break // the shell is done: nothing else will show
		}
	}
	p.t.Fatalf("pane never showed %s within %v; it shows:\n%s", what, timeout, s)
	return ""
}

func (p *tmuxPane) waitText(s string, timeout time.Duration) string {
	p.t.Helper()
	return p.waitFor(strconv.Quote(s), timeout, func(screen string) bool { return strings.Contains(screen, s) })
}

// screenRow returns the first line of screen containing s, split in fields.
func screenRow(screen, s string) []string {
	_, f := screenLine(screen, func(l string, _ []string) bool { return strings.Contains(l, s) })
	return f
}

// screenLine returns the index and fields of the first line ok accepts,
// -1 if none.
func screenLine(screen string, ok func(line string, fields []string) bool) (int, []string) {
	for i, l := range strings.Split(screen, "\n") {
		if f := strings.Fields(l); ok(l, f) {
			return i, f
		}
	}
	return -1, nil
}

// attached returns the probes of the plan that the live command attaches.
func attached(p *plan.Plan) []plan.Probe {
	progs := ebpf.AttachedPrograms(p, ebpf.Options{NoStacks: true})
	var out []plan.Probe
	for _, pr := range p.Probes {
		if slices.Contains(progs, pr.Program) {
			out = append(out, pr)
		}
	}
	return out
}

// probeBytes reads the first byte of every probed instruction in the
// target's memory and in its executable file: uprobes put an int3 (0xcc)
// there while attached and restore the instruction when detached.
func probeBytes(t *testing.T, pid int, p *plan.Plan, probes []plan.Probe) (mem, file []byte) {
	t.Helper()
	r, err := procmem.Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f, err := os.Open(p.Exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, pr := range probes {
		var m, b [1]byte
		if _, err := r.ReadAt(m[:], pr.Address+p.LoadBias); err != nil {
			t.Fatalf("read %s probe at %#x: %v", pr.Symbol, pr.Address, err)
		}
		if _, err := f.ReadAt(b[:], int64(pr.FileOffset)); err != nil {
			t.Fatal(err)
		}
		mem, file = append(mem, m[0]), append(file, b[0])
	}
	return mem, file
}

// TestLiveViewTmux runs the real gmpwatch binary in a real terminal (tmux)
// against spawn: the sites panel shows spawn's go statement with the
// numbers spawn makes knowable, Tab walks the panels, s sorts, and q ends
// gmpwatch with status 0, the terminal out of the alternate screen and
// back in cooked mode, and every probe's breakpoint gone from the target,
// which runs on.
func TestLiveViewTmux(t *testing.T) {
	testtarget.RequireRoot(t)
	if _, err := exec.LookPath("tmux"); err != nil {
		testtarget.SkipOrFail(t, "tmux not installed: %v", err)
	}
	gmpwatch := gmpwatchBinary(t)

	const workers, parkers = 300, 7
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	target := testtarget.Start(t, bin, "-n", strconv.Itoa(workers), "-parkers", strconv.Itoa(parkers), "-linger")
	target.WaitLine(t, "ready", 10*time.Second)
	pid := target.PID()
	p, err := plan.FromProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	probes := attached(p)
	_, fileBytes := probeBytes(t, pid, p, probes)

	pane := &tmuxPane{t: t, socket: fmt.Sprintf("gmpwatch-test-%d-%d", os.Getpid(), time.Now().UnixNano())}
	// The shell reports gmpwatch's status and the terminal's mode after it.
	script := fmt.Sprintf("%s -p %d -i 200ms --overhead max; echo \"gmpwatch exited $?\"; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; echo; exec sleep 600", gmpwatch, pid)
	pane.run("new-session", "-d", "-s", "live", "-x", "160", "-y", "50", "sh", "-c", script)
	t.Cleanup(func() { _ = exec.Command("tmux", "-L", pane.socket, "kill-server").Run() })

	pane.waitText("1 Creation sites", 30*time.Second)
	if alt := strings.TrimSpace(pane.run("display", "-p", "-t", "live", "#{alternate_on}")); alt != "1" {
		t.Errorf("live view not in the alternate screen (alternate_on=%s)", alt)
	}
	screen := pane.waitText(fmt.Sprintf("PID %d  %s  go1.26.8  GOMAXPROCS", pid, filepath.Base(bin)), 10*time.Second)
	if !strings.Contains(screen, fmt.Sprintf("probes %d on", len(probes))) {
		t.Errorf("header does not say %d probes:\n%s", len(probes), screen)
	}
	memBytes, _ := probeBytes(t, pid, p, probes)
	for i, b := range memBytes {
		if b != 0xcc {
			t.Errorf("probe %s at %#x: byte %#x in the target while attached, want int3", probes[i].Symbol, probes[i].Address, b)
		}
	}

	// Let spawn create its goroutines: the worker site's row must show
	// exactly what spawn did (300 created and exited, none alive).
	io.WriteString(target.Stdin, "go\n")
	site := strings.TrimPrefix(target.WaitLine(t, "site ", 10*time.Second), "site ")
	target.WaitLine(t, "done ", 30*time.Second)
	fileLine := filepath.Base(filepath.Dir(site)) + "/" + filepath.Base(site) // spawn/main.go:LINE
	want := []string{"0", strconv.Itoa(workers), strconv.Itoa(workers)}
	screen = pane.waitFor("the worker site with "+strings.Join(want, " "), 15*time.Second, func(s string) bool {
		r := screenRow(s, fileLine)
		return len(r) >= 3 && strings.Join(r[:3], " ") == strings.Join(want, " ")
	})
	// The parkers' site (in main.main too, with 7 alive) tops the default
	// sort by alive goroutines, above the workers' site.
	parkersAt := func(s string) int {
		i, _ := screenLine(s, func(l string, f []string) bool {
			return len(f) >= 3 && f[0] == strconv.Itoa(parkers) && f[1] == strconv.Itoa(parkers) && f[2] == "0" &&
				strings.Contains(l, filepath.Dir(fileLine)+"/") && !strings.Contains(l, fileLine)
		})
		return i
	}
	workersAt := func(s string) int {
		i, _ := screenLine(s, func(l string, _ []string) bool { return strings.Contains(l, fileLine) })
		return i
	}
	if i, j := parkersAt(screen), workersAt(screen); i < 0 || i > j {
		t.Errorf("no parkers' site with %d alive above the workers' site:\n%s", parkers, screen)
	}

	// s: sort by created; the workers' site (300) moves first.
	pane.run("send-keys", "-t", "live", "s")
	screen = pane.waitText("sort: created", 5*time.Second)
	if i, j := parkersAt(screen), workersAt(screen); j < 0 || i < j {
		t.Errorf("sorted by created, the workers' site is not first:\n%s", screen)
	}

	// Tab: wait reasons, with the parkers waiting on a nil channel now.
	pane.run("send-keys", "-t", "live", "Tab")
	screen = pane.waitText("WAITING NOW", 5*time.Second)
	if r := screenRow(screen, "chan receive (nil chan)"); len(r) == 0 || r[0] != strconv.Itoa(parkers) {
		t.Errorf("wait reasons: want %d waiting on chan receive (nil chan), row %q:\n%s", parkers, r, screen)
	}
	if r := screenRow(screen, "chan receive"); len(r) == 0 {
		t.Errorf("wait reasons lack the workers' chan receive:\n%s", screen)
	}
	// Tab: Ps and Ms, one row per P and M0 on the process's own thread.
	pane.run("send-keys", "-t", "live", "Tab")
	screen = pane.waitText("P  STATUS", 5*time.Second)
	if i, _ := screenLine(screen, func(_ string, f []string) bool { return len(f) > 3 && f[0] == "M" && f[1] == "TID" && f[3] == "STATE" }); i < 0 {
		t.Errorf("Ps and Ms panel without its Ms:\n%s", screen)
	}
	// M0 is the process's first thread; one P row per GOMAXPROCS.
	if i, _ := screenLine(screen, func(_ string, f []string) bool { return len(f) >= 2 && f[0] == "0" && f[1] == strconv.Itoa(pid) }); i < 0 {
		t.Errorf("no M 0 on thread %d:\n%s", pid, screen)
	}
	if i, _ := screenLine(screen, func(_ string, f []string) bool {
		return len(f) >= 2 && f[0] == "1" && (f[1] == "idle" || f[1] == "running")
	}); i < 0 {
		t.Errorf("no row for P 1 (GOMAXPROCS 2):\n%s", screen)
	}
	// Tab: threads; Tab: back to the sites.
	pane.run("send-keys", "-t", "live", "Tab")
	pane.waitText("TOTAL BUSY", 5*time.Second)
	pane.run("send-keys", "-t", "live", "Tab")
	pane.waitText("GO STATEMENT", 5*time.Second)

	// q: gmpwatch ends, the terminal is back, the probes are gone.
	pane.run("send-keys", "-t", "live", "q")
	screen = pane.waitText("gmpwatch exited", 15*time.Second)
	if !strings.Contains(screen, "gmpwatch exited 0") {
		t.Errorf("gmpwatch did not exit 0:\n%s", screen)
	}
	screen = pane.waitText("icanon", 5*time.Second)
	if r := screenRow(screen, "icanon"); strings.Join(r, " ") != "icanon echo" {
		t.Errorf("terminal left in mode %q, want cooked (icanon echo)", r)
	}
	if alt := strings.TrimSpace(pane.run("display", "-p", "-t", "live", "#{alternate_on}")); alt != "0" {
		t.Errorf("terminal left in the alternate screen")
	}
	if !strings.Contains(screen, "gmpwatch report:") {
		t.Errorf("no final report after the live view:\n%s", screen)
	}
	memBytes, _ = probeBytes(t, pid, p, probes)
	for i := range memBytes {
		if memBytes[i] != fileBytes[i] {
			t.Errorf("probe %s at %#x: byte %#x in the target after exit, want the instruction's %#x", probes[i].Symbol, probes[i].Address, memBytes[i], fileBytes[i])
		}
	}
	if err := target.Wait(200 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("target ended with gmpwatch: %v", err)
	}
	io.WriteString(target.Stdin, "\n") // -linger: let it exit
	if err := target.Wait(10 * time.Second); err != nil {
		t.Errorf("target after the trace: %v", err)
	}
}

// TestLiveViewChoice: the live view is for terminals only; --json,
// --no-tui and a stdout that is not a terminal give the interval text.
func TestLiveViewChoice(t *testing.T) {
	f, err := parseTopFlags([]string{"--no-tui", "-p", "1"})
	if err != nil || !f.noTUI {
		t.Fatalf("--no-tui: %+v, %v", f, err)
	}
	var buf strings.Builder
	for _, f := range []*topFlags{{}, {json: true}, {noTUI: true}} {
		if wantLiveView(f, &cmdEnv{stdout: &buf, stderr: &buf, stdin: strings.NewReader("")}) {
			t.Errorf("%+v: live view on a strings.Builder", f)
		}
	}
}

// TestLiveViewCommandOutput runs `gmpwatch -- gosched` in the live view:
// the seed program's output goes to a log file that gmpwatch names at the
// end, not over the view, and the final report follows.
func TestLiveViewCommandOutput(t *testing.T) {
	testtarget.RequireRoot(t)
	if _, err := exec.LookPath("tmux"); err != nil {
		testtarget.SkipOrFail(t, "tmux not installed: %v", err)
	}
	gmpwatch := gmpwatchBinary(t)
	bin := testtarget.Build(t, "gosched", testtarget.Go126, testtarget.Plain)
	pane := &tmuxPane{t: t, socket: fmt.Sprintf("gmpwatch-test-cmd-%d-%d", os.Getpid(), time.Now().UnixNano())}
	script := fmt.Sprintf("%s -i 200ms -- %s; echo \"gmpwatch exited $?\"; exec sleep 600", gmpwatch, bin)
	pane.run("new-session", "-d", "-s", "live", "-x", "160", "-y", "50", "sh", "-c", script)
	t.Cleanup(func() { _ = exec.Command("tmux", "-L", pane.socket, "kill-server").Run() })

	screen := pane.waitText("gmpwatch exited 0", 60*time.Second)
	m := regexp.MustCompile(`The output of \S+ is in (\S+)\.`).FindStringSubmatch(screen)
	if m == nil {
		t.Fatalf("gmpwatch did not name the command's log:\n%s", screen)
	}
	t.Cleanup(func() { os.Remove(m[1]) })
	out, err := os.ReadFile(m[1])
	if err != nil {
		t.Fatal(err)
	}
	// How many of the 5 "Aario" are printed, and when, is up to the
	// scheduler (the seed's point): one on another P may come after
	// "Hello", before the process exits.
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) == 0 || len(lines) > 6 || strings.Count(string(out), "Hello\n") != 1 || strings.Count(string(out), "Aario\n") != len(lines)-1 {
		t.Errorf("log %s holds %q: want one Hello and up to 5 Aario", m[1], out)
	}
	if strings.Contains(screen, "Aario") {
		t.Errorf("the command's output reached the terminal:\n%s", screen)
	}
	if !strings.Contains(screen, "gmpwatch report:") || !strings.Contains(screen, "main.main") {
		t.Errorf("no final report after the live view:\n%s", screen)
	}
}
