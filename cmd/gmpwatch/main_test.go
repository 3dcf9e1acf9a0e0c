package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// runMain runs gmpwatch in process and returns its exit status and output.
func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), args, &cmdEnv{stdout: &stdout, stderr: &stderr, stdin: strings.NewReader("")})
	return code, stdout.String(), stderr.String()
}

// built is the gmpwatch binary, built once per test run for the tests that
// need a real process (a terminal, a signal, another user).
var built struct {
	once      sync.Once
	dir, path string
	err       error
}

// gmpwatchBinary returns the path of the gmpwatch command built from this
// tree, in a directory every user may read and search.
func gmpwatchBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "gmpwatch-bin-"); built.err != nil {
			return
		}
		if built.err = os.Chmod(built.dir, 0o755); built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "gmpwatch")
		cmd := exec.Command("go", "build", "-o", built.path, ".")
		cmd.Dir = filepath.Join(testtarget.RepoRoot(), "cmd", "gmpwatch")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}
