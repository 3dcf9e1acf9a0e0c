package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// TestOtherMountNamespace runs the target from a file that exists only in
// its own mount namespace (as in a container): gmpwatch, in the host's,
// reads it through /proc/PID/exe, inspects it, and traces it exactly.
func TestOtherMountNamespace(t *testing.T) {
	testtarget.RequireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		testtarget.SkipOrFail(t, "unshare: %v", err)
	}
	bin := testtarget.Build(t, "spawn", testtarget.Go126, testtarget.Stripped)
	hidden := filepath.Join(t.TempDir(), "ns")
	if err := os.Mkdir(hidden, 0o755); err != nil {
		t.Fatal(err)
	}
	inside := filepath.Join(hidden, "spawn")
	script := fmt.Sprintf("mount -t tmpfs none %s && cp %s %s && exec %s -n 200 -linger", hidden, bin, inside, inside)
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	stdin, _ := cmd.StdinPipe()
	stdoutPipe, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	out := bufio.NewReader(stdoutPipe)
	if line, err := out.ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("target said %q, %v", line, err)
	}
	pid := cmd.Process.Pid // sh exec'd the target
	if _, err := os.Stat(inside); err == nil {
		t.Fatalf("%s is visible from the host's mount namespace: the test proves nothing", inside)
	}

	code, stdout, errOut := runMain(t, "inspect", "--json", "-p", strconv.Itoa(pid))
	if code != 0 {
		t.Fatalf("inspect: exit %d: %s", code, errOut)
	}
	var p struct {
		Exe       string `json:"exe"`
		GoVersion string `json:"go_version"`
		Stripped  bool   `json:"stripped"`
	}
	if err := json.Unmarshal([]byte(stdout), &p); err != nil {
		t.Fatal(err)
	}
	if p.Exe != inside || p.GoVersion != "go1.26.8" || !p.Stripped {
		t.Errorf("inspect: %+v, want %s, go1.26.8, stripped", p, inside)
	}

	// Trace it: the creations at its go statement, exactly.
	var gmOut, gmErr topBuffer
	traced := make(chan int, 1)
	go func() {
		traced <- Main(t.Context(), []string{"--json", "--overhead", "max", "-i", "1h", "-p", strconv.Itoa(pid)}, &cmdEnv{stdout: &gmOut, stderr: &gmErr, stdin: strings.NewReader("")})
	}()
	topWaitFor(t, &gmErr, "Tracing PID", 30*time.Second)
	io.WriteString(stdin, "go\n")
	var site string
	for {
		line, err := out.ReadString('\n')
		if err != nil {
			t.Fatalf("target ended early: %v", err)
		}
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), "site "); ok {
			site = s
		}
		if strings.HasPrefix(line, "done ") {
			break
		}
	}
	io.WriteString(stdin, "go\n") // let it exit: the trace ends with it
	select {
	case code := <-traced:
		if code != 0 {
			t.Fatalf("trace: exit %d: %s", code, gmErr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("gmpwatch did not end with its target")
	}
	rs, _ := topReports(t, gmOut.String())
	final := rs[len(rs)-1]
	var created uint64
	for _, s := range final.CreationSites {
		if strings.HasSuffix(site, fmt.Sprintf("%s:%d", filepath.Base(s.File), s.Line)) {
			created = s.Created
		}
	}
	if created != 200 || final.LostEvents != 0 {
		t.Errorf("created %d at %s (lost %d), want 200; sites %+v", created, site, final.LostEvents, final.CreationSites)
	}
}
