package launch

import (
	"bufio"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// procState returns the state letter of /proc/PID/stat.
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return strings.Fields(s[i+1:])[0]
}

// procPC returns the user instruction pointer of a stopped task from
// /proc/PID/syscall (its last field).
func procPC(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	pc, err := strconv.ParseUint(strings.TrimPrefix(f[len(f)-1], "0x"), 16, 64)
	if err != nil {
		t.Fatalf("parse /proc/%d/syscall %q: %v", pid, b, err)
	}
	return pc
}

func entry(t *testing.T, bin string) uint64 {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC {
		t.Fatalf("%s: want a static non-PIE executable", bin)
	}
	return f.Entry
}

func TestStartStoppedAtEntry(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c, err := Start(bin, []string{"-n", "7"}, inR, outW, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Kill()

	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	// Stopped: traced-stop state, the instruction pointer on the ELF entry,
	// and nothing printed, however long we wait.
	if st := procState(t, c.PID()); st != "t" {
		t.Fatalf("state before release = %q, want t (tracing stop)", st)
	}
	if pc, want := procPC(t, c.PID()), entry(t, bin); pc != want {
		t.Fatalf("pc before release = %#x, want the entry %#x", pc, want)
	}
	select {
	case l := <-lines:
		t.Fatalf("child printed %q before release", l)
	case <-time.After(300 * time.Millisecond):
	}
	if pc, want := procPC(t, c.PID()), entry(t, bin); pc != want {
		t.Fatalf("pc after waiting = %#x, want the entry %#x", pc, want)
	}

	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(); err != ErrReleased {
		t.Fatalf("second Release = %v, want ErrReleased", err)
	}
	if l := <-lines; l != "ready" {
		t.Fatalf("first line %q, want ready", l)
	}
	fmt.Fprintln(inW, "go")
	inW.Close()
	var got []string
	for l := range lines {
		got = append(got, l)
		if strings.HasPrefix(l, "done") {
			break
		}
	}
	if len(got) == 0 || got[len(got)-1] != "done 7" {
		t.Fatalf("output %q, want it to end in done 7", got)
	}
	st, err := c.Wait()
	outW.Close()
	if err != nil || ExitCode(st) != 0 {
		t.Fatalf("wait: %v, exit code %d", err, ExitCode(st))
	}
}

func TestExitStatusPassedOn(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	c, err := Start(bin, []string{"-n", "-1"}, nil, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	st, err := c.Wait()
	if err == nil || ExitCode(st) != 2 {
		t.Fatalf("wait: %v, exit code %d, want 2", err, ExitCode(st))
	}
}

func TestKillStopped(t *testing.T) {
	testtarget.RequireRoot(t)
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Plain)
	c, err := Start(bin, nil, nil, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	st, err := c.Wait()
	if err == nil || ExitCode(st) != 128+int(syscall.SIGKILL) {
		t.Fatalf("wait: %v, exit code %d, want %d", err, ExitCode(st), 128+int(syscall.SIGKILL))
	}
}

func TestStartMissing(t *testing.T) {
	if _, err := Start("/nonexistent/gmpwatch-no-such-cmd", nil, nil, nil, nil); err == nil {
		t.Fatal("Start of a missing command succeeded")
	}
}
