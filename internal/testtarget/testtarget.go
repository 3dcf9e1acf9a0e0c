// Package testtarget builds the Go programs in testdata/ with each toolchain
// the project supports (go1.26 installed, go1.27 through GOTOOLCHAIN, go1.19
// from Debian's golang-1.19-go) and each variant (plain, stripped, PIE, cgo),
// and starts them for tests. Builds are cached across test packages by the
// hash of their inputs.
//
// It also holds the house rule for tests that need something this machine may
// lack (root, a toolchain): outside CI they skip, with CI=true they fail.
package testtarget

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Toolchain is a Go release the tests build targets with.
type Toolchain string

const (
	Go126 Toolchain = "go1.26"
	Go127 Toolchain = "go1.27"
	Go119 Toolchain = "go1.19"
)

// Toolchains lists every toolchain, the installed one first.
var Toolchains = []Toolchain{Go126, Go127, Go119}

// Variant is a way of building a target.
type Variant string

const (
	Plain    Variant = "plain"
	Stripped Variant = "stripped" // -ldflags=-s -w
	PIE      Variant = "pie"      // -buildmode=pie
	CGO      Variant = "cgo"      // a cgo file added, so the binary is externally linked
)

// Variants lists every variant.
var Variants = []Variant{Plain, Stripped, PIE, CGO}

// Case is a target built one way with one toolchain: a row of the tests'
// tables.
type Case struct {
	Toolchain Toolchain
	Variant   Variant
}

// String names the case for t.Run, "go1.26-plain".
func (c Case) String() string { return string(c.Toolchain) + "-" + string(c.Variant) }

// InCI reports whether the tests run in CI (CI=true), where skipping is failing.
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips the test outside CI and fails it in CI.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("CI=true forbids skipping: %s", msg)
	}
	t.Skip(msg)
}

// RequireRoot skips (or in CI fails) a test that needs root: BPF, ptrace or
// reading another process's memory.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root")
	}
}

// RepoRoot returns the module root (the directory holding go.mod).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// goCommand returns the go command and extra environment for a toolchain.
func goCommand(tc Toolchain) (string, []string, error) {
	switch tc {
	case Go126:
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			p, err := exec.LookPath("go")
			if err != nil {
				return "", nil, fmt.Errorf("go1.26: %w", err)
			}
			goBin = p
		}
		return goBin, []string{"GOTOOLCHAIN=local"}, nil
	case Go127:
		p, err := exec.LookPath("go")
		if err != nil {
			return "", nil, fmt.Errorf("go1.27: %w", err)
		}
		return p, []string{"GOTOOLCHAIN=go1.27.3"}, nil
	case Go119:
		p := "/usr/lib/go-1.19/bin/go"
		if _, err := os.Stat(p); err != nil {
			return "", nil, fmt.Errorf("go1.19 (Debian's golang-1.19-go) not installed: %w", err)
		}
		return p, []string{"GOTOOLCHAIN=local"}, nil
	}
	return "", nil, fmt.Errorf("unknown toolchain %q", tc)
}

// cleanEnv is the environment for a build with another toolchain: nothing of
// the outer go command's settings leaks in.
func cleanEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOROOT", "GOFLAGS", "GOTOOLCHAIN", "GOPATH", "GOWORK", "GO111MODULE", "CGO_ENABLED", "GOEXPERIMENT":
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "GOWORK=off", "GOFLAGS=-mod=mod", "GO111MODULE=on")
	return append(env, extra...)
}

var buildMu sync.Mutex // one build at a time in a test binary: 2 cores

// CacheDir is where built targets are kept between test runs and packages.
func CacheDir() string {
	if d := os.Getenv("GMPWATCH_TARGET_CACHE"); d != "" {
		return d
	}
	d, err := os.UserCacheDir()
	if err != nil {
		d = os.TempDir()
	}
	return filepath.Join(d, "gmpwatch-testtargets")
}

// Build builds testdata/<name> (a directory holding one main package) with the
// toolchain and variant, and returns the path of the binary. A toolchain this
// machine lacks skips the test outside CI and fails it in CI.
func Build(t testing.TB, name string, tc Toolchain, v Variant) string {
	t.Helper()
	bin, err := BuildErr(name, tc, v)
	if err != nil {
		if _, _, terr := goCommand(tc); terr != nil {
			SkipOrFail(t, "%v", terr)
		}
		t.Fatalf("build %s with %s (%s): %v", name, tc, v, err)
	}
	return bin
}

// BuildErr is Build without a testing.TB, for benchmarks and scripts.
func BuildErr(name string, tc Toolchain, v Variant) (string, error) {
	src := filepath.Join(RepoRoot(), "testdata", name)
	files, err := filepath.Glob(filepath.Join(src, "*.go"))
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("no Go files in %s", src)
	}
	goBin, extra, err := goCommand(tc)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", name, tc, v)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", filepath.Base(f), len(b))
		h.Write(b)
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	out := filepath.Join(CacheDir(), fmt.Sprintf("%s-%s-%s-%s", name, tc, v, key))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}

	buildMu.Lock()
	defer buildMu.Unlock()
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(CacheDir(), "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if err := os.WriteFile(filepath.Join(work, filepath.Base(f)), b, 0o644); err != nil {
			return "", err
		}
	}
	// go 1.19 as the language version: every toolchain accepts it.
	if err := os.WriteFile(filepath.Join(work, "go.mod"), []byte("module gmpwatch.test/"+name+"\n\ngo 1.19\n"), 0o644); err != nil {
		return "", err
	}
	args := []string{"build", "-o", out + ".tmp"}
	env := cleanEnv(extra)
	switch v {
	case Plain:
		env = append(env, "CGO_ENABLED=0")
	case Stripped:
		env = append(env, "CGO_ENABLED=0")
		args = append(args, "-ldflags=-s -w")
	case PIE:
		env = append(env, "CGO_ENABLED=0")
		args = append(args, "-buildmode=pie")
	case CGO:
		env = append(env, "CGO_ENABLED=1")
		cgo := "package main\n\n// int gmpwatch_cgo_marker(void) { return 42; }\nimport \"C\"\n\nvar _ = C.gmpwatch_cgo_marker\n"
		if err := os.WriteFile(filepath.Join(work, "zz_cgo.go"), []byte(cgo), 0o644); err != nil {
			return "", err
		}
	default:
		return "", fmt.Errorf("unknown variant %q", v)
	}
	args = append(args, ".")
	cmd := exec.Command(goBin, args...)
	cmd.Dir = work
	cmd.Env = env
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s %s: %v\n%s", goBin, strings.Join(args, " "), err, b)
	}
	if err := os.Rename(out+".tmp", out); err != nil {
		return "", err
	}
	return out, nil
}

// Process is a started target.
type Process struct {
	Cmd    *exec.Cmd
	Stdin  io.WriteCloser // the target's standard input, open until the test ends
	Stdout *bufio.Reader  // the target's standard output, after any lines read by WaitLine
	done   chan struct{}
	err    error
}

// Start starts bin with args; the process is killed when the test ends.
func Start(t testing.TB, bin string, args ...string) *Process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	// Our own pipe, not StdoutPipe: Wait runs as soon as the target exits
	// and would close StdoutPipe's reader under lines not read yet.
	out, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = w
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	err = cmd.Start()
	w.Close()
	if err != nil {
		out.Close()
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &Process{Cmd: cmd, Stdin: in, Stdout: bufio.NewReader(out), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		<-p.done
		out.Close()
	})
	return p
}

// PID returns the process ID.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// WaitLine reads the target's standard output until a line starting with
// prefix, and returns that line. It fails the test after timeout.
func (p *Process) WaitLine(t testing.TB, prefix string, timeout time.Duration) string {
	t.Helper()
	type res struct {
		line string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		for {
			line, err := p.Stdout.ReadString('\n')
			if strings.HasPrefix(line, prefix) {
				ch <- res{strings.TrimRight(line, "\n"), nil}
				return
			}
			if err != nil {
				ch <- res{"", err}
				return
			}
		}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("target ended before printing %q: %v", prefix, r.err)
		}
		return r.line
	case <-time.After(timeout):
		t.Fatalf("target did not print %q within %v", prefix, timeout)
	}
	return ""
}

// Wait waits for the process to exit and returns its error.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("target still running after %v", timeout)
	}
}

// Drain copies what is left of the target's output to w in the background.
func (p *Process) Drain(w io.Writer) { go io.Copy(w, p.Stdout) }
