// Package launch starts a command stopped before its first instruction, so
// that probes can be attached to the new process before any of its code runs
// (`gmpwatch -- CMD`), and then lets it run.
//
// The child is started under ptrace (PTRACE_TRACEME before execve): the kernel
// stops it with SIGTRAP once execve has replaced its image, with the
// instruction pointer at the program's entry. Release detaches, and the
// process runs from there, untraced. All ptrace requests come from one locked
// OS thread, as the kernel requires.
package launch

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// ErrReleased is returned by Release when the process was already released
// or killed.
var ErrReleased = errors.New("launch: process already released")

// Cmd is a started, stopped (until Release) child process.
type Cmd struct {
	cmd *exec.Cmd

	reqs chan request // to the tracer thread
	done chan struct{}

	mu       sync.Mutex
	released bool

	waitOnce sync.Once
	waitErr  error
	state    *os.ProcessState
}

type request struct {
	detach bool // PTRACE_DETACH; else kill
	reply  chan error
}

// Start starts name with args, stopped at its first instruction. The child
// inherits the environment. Call Release to let it run, or Kill.
func Start(name string, args []string, stdin io.Reader, stdout, stderr io.Writer) (*Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	c := &Cmd{cmd: cmd, reqs: make(chan request), done: make(chan struct{})}

	started := make(chan error, 1)
	go c.tracer(started)
	if err := <-started; err != nil {
		return nil, err
	}
	return c, nil
}

// tracer runs on its own locked OS thread: it starts the child (becoming its
// tracer), waits for the post-exec stop, and serves Release and Kill.
func (c *Cmd) tracer(started chan<- error) {
	runtime.LockOSThread()
	// The thread stays locked and exits with the goroutine: it was the
	// tracer and should not be reused.
	defer close(c.done)

	if err := c.cmd.Start(); err != nil {
		started <- fmt.Errorf("start %s: %w", c.cmd.Path, err)
		return
	}
	pid := c.cmd.Process.Pid
	var ws syscall.WaitStatus
	for {
		_, err := syscall.Wait4(pid, &ws, syscall.WALL, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			started <- fmt.Errorf("start %s: wait for exec stop: %w", c.cmd.Path, err)
			return
		}
		break
	}
	if !ws.Stopped() {
		// It died before the exec completed (or exec failed in the child).
		started <- fmt.Errorf("start %s: child did not stop after exec (status %v)", c.cmd.Path, ws)
		_ = c.cmd.Wait()
		return
	}
	// Make sure the tracee dies with us if gmpwatch dies while it is stopped.
	_ = syscall.PtraceSetOptions(pid, 0x100000 /* PTRACE_O_EXITKILL */)
	started <- nil

	for req := range c.reqs {
		var err error
		if req.detach {
			err = syscall.PtraceDetach(pid)
			if err != nil {
				err = fmt.Errorf("release %d: %w", pid, err)
			}
		} else {
			err = c.cmd.Process.Kill()
		}
		req.reply <- err
		if req.detach || err == nil {
			return
		}
	}
}

// PID returns the child's process ID.
func (c *Cmd) PID() int { return c.cmd.Process.Pid }

// Path returns the resolved path of the started executable.
func (c *Cmd) Path() string { return c.cmd.Path }

func (c *Cmd) send(detach bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.released {
		return ErrReleased
	}
	reply := make(chan error, 1)
	select {
	case c.reqs <- request{detach: detach, reply: reply}:
	case <-c.done:
		return ErrReleased
	}
	err := <-reply
	if err == nil {
		c.released = true
	}
	return err
}

// Release lets the stopped child run its first instruction and on.
func (c *Cmd) Release() error { return c.send(true) }

// Kill kills the child, stopped or running.
func (c *Cmd) Kill() error {
	if err := c.send(false); err != ErrReleased {
		return err
	}
	// Already released: an ordinary kill.
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// Wait waits for the child to exit (after Release or Kill) and returns its
// state; err is as exec.Cmd.Wait's (an *exec.ExitError for a non-zero exit or
// a signal).
func (c *Cmd) Wait() (*os.ProcessState, error) {
	c.waitOnce.Do(func() {
		c.waitErr = c.cmd.Wait()
		c.state = c.cmd.ProcessState
		c.mu.Lock()
		if !c.released {
			c.released = true
			close(c.reqs)
		}
		c.mu.Unlock()
	})
	return c.state, c.waitErr
}

// ExitCode returns the exit status to pass on for a process state: the exit
// code, or 128+signal for a process killed by a signal (as a shell does).
func ExitCode(st *os.ProcessState) int {
	if st == nil {
		return -1
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}
