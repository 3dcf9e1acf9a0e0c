// Package session is one tracing session of a Go process, shared by the
// commands that trace (the live view, record): start a command stopped before
// its first instruction (internal/launch) or take a running process by PID,
// build its probe plan, open its binary for symbols, attach the probes, fan
// the events out to sinks, watch the target end, and pass its exit status on.
//
// A session is used in this order: Start, Run, (the caller's loop, with
// Exited, Done and Lock), Stop, Finish. Close releases everything at any point
// and is safe to defer.
package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/procmem"
	"github.com/gmpwatch/gmpwatch/ebpf"
	"github.com/gmpwatch/gmpwatch/internal/launch"
)

// PermissionHint is what to do when BPF or /proc/PID/mem is refused.
const PermissionHint = "run as root, or grant CAP_BPF and CAP_PERFMON"

// Config says what to trace.
type Config struct {
	// PID is a running process to trace; or give Command.
	PID int
	// Command is started stopped before exec and released once the probes
	// are on; its standard streams are Stdin, Stdout and Stderr.
	Command        []string
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Programs are the BPF programs to attach; nil means ebpf's defaults.
	Programs []string
	// RingBytes sizes the ring buffer; 0 means ebpf's default.
	RingBytes int
	// NoStacks attaches without user-stack capture, which costs several
	// microseconds per captured event: the live view needs no stacks.
	NoStacks bool
	// AggregateOnly attaches the programs that feed the in-kernel
	// aggregates (ebpf.AggregateProgramsFor), plus newm for the threads'
	// count, and streams no event: for figures that need no per-event
	// record (Tracer.Aggregates, Stats). Programs is then ignored.
	AggregateOnly bool
	// Aggregates keeps the in-kernel aggregates next to the stream, and
	// NoStreamPrograms names programs that stream nothing (their figures
	// are in the aggregates): see ebpf.Options.
	Aggregates       bool
	NoStreamPrograms []string
}

// Session is an attached tracing session.
type Session struct {
	PID  int
	Plan *plan.Plan
	Bin  *gobin.Binary
	// Sym symbolizes the target's runtime addresses (shared by every sink).
	Sym    *gobin.Symbolizer
	Tracer *ebpf.Tracer

	child    *launch.Cmd // started, not yet released
	launched bool
	waitDone chan struct{} // closed when the launched command ended
	exitCode int

	mu        sync.Mutex // serializes sinks with Lock holders
	runCtx    context.Context
	stopRun   context.CancelFunc
	runErr    chan error
	readErr   error
	stopWatch chan struct{}
	exited    <-chan struct{}
	stopped   bool
	closeOnce sync.Once
}

// PermissionError is a refused read of the target or load of BPF, said in
// one line with what to do; it wraps the underlying error.
type PermissionError struct {
	PID int
	Err error
}

func (e *PermissionError) Error() string {
	return fmt.Sprintf("pid %d: permission denied: %s", e.PID, PermissionHint)
}

func (e *PermissionError) Unwrap() error { return e.Err }

// attachError turns an error of plan, procmem or ebpf into the one line a
// person reads, with the permission hint where it applies.
func attachError(pid int, err error) error {
	switch {
	case errors.Is(err, ebpf.ErrPermission):
		return err // its text is the hint
	case errors.Is(err, plan.ErrPermission), errors.Is(err, procmem.ErrPermission), errors.Is(err, os.ErrPermission):
		return &PermissionError{PID: pid, Err: err}
	}
	return err
}

// Start finds or starts the target, plans the probes, opens the binary and
// attaches. The probes are on when it returns; a launched command is still
// stopped until Run.
func Start(cfg Config) (s *Session, err error) {
	s = &Session{PID: cfg.PID, stopWatch: make(chan struct{})}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	if len(cfg.Command) > 0 {
		stdin := cfg.Stdin
		if stdin == nil {
			stdin = os.Stdin
		}
		s.child, err = launch.Start(cfg.Command[0], cfg.Command[1:], stdin, cfg.Stdout, cfg.Stderr)
		if err != nil {
			return s, err
		}
		s.launched = true
		s.PID = s.child.PID()
	} else if !procmem.Exists(s.PID) {
		return s, fmt.Errorf("pid %d: %w", s.PID, plan.ErrNoProcess)
	}
	pid := s.PID

	if s.Plan, err = plan.FromProcess(pid); err != nil {
		return s, attachError(pid, err)
	}
	exe, err := procmem.ExePath(pid)
	if err != nil {
		return s, attachError(pid, err)
	}
	if s.Bin, err = gobin.Open(exe); err == nil {
		s.Sym = gobin.NewSymbolizer(s.Bin, s.Plan.LoadBias)
	}
	if err != nil {
		return s, fmt.Errorf("pid %d: %w", pid, err)
	}
	// The in-kernel aggregates cost each hit 0.1-0.45 µs of BPF time; only
	// aggregate-only sessions read them.
	opts := ebpf.Options{PID: pid, Programs: cfg.Programs, RingBytes: cfg.RingBytes, NoStacks: cfg.NoStacks,
		NoAggregate: !cfg.AggregateOnly && !cfg.Aggregates, NoStreamPrograms: cfg.NoStreamPrograms}
	if cfg.AggregateOnly {
		opts.NoStream, opts.NoStacks = true, true
		opts.Programs = ebpf.AggregateProgramsFor(s.Plan)
		if len(s.Plan.ProbesFor("newm")) > 0 {
			opts.Programs = append(opts.Programs, "newm")
		}
	}
	s.Tracer, err = ebpf.Attach(s.Plan, opts)
	if err != nil {
		return s, attachError(pid, err)
	}
	return s, nil
}

// Launched reports whether the session started the target.
func (s *Session) Launched() bool { return s.launched }

// Run starts reading events, calling sink for each under the session's lock
// (ev is reused: copy it to keep it), and lets a launched command run.
func (s *Session) Run(sink func(ev *event.Event)) error {
	s.runCtx, s.stopRun = context.WithCancel(context.Background())
	s.runErr = make(chan error, 1)
	go func() {
		s.runErr <- s.Tracer.Run(s.runCtx, func(ev *event.Event) {
			s.mu.Lock()
			sink(ev)
			s.mu.Unlock()
		})
	}()
	if s.child == nil {
		s.exited = watchExit(s.PID, s.stopWatch)
		return nil
	}
	if err := s.child.Release(); err != nil {
		return err
	}
	c := s.child
	s.child = nil // released: it runs on its own now
	done := make(chan struct{})
	go func() {
		st, _ := c.Wait()
		s.exitCode = launch.ExitCode(st)
		close(done)
	}()
	s.waitDone = done
	s.exited = done
	return nil
}

// Lock holds off the sinks, so the caller can read what they built.
func (s *Session) Lock() { s.mu.Lock() }

// Unlock lets the sinks run again.
func (s *Session) Unlock() { s.mu.Unlock() }

// Exited is closed when the target ends (exits or is killed).
func (s *Session) Exited() <-chan struct{} { return s.exited }

// ReadDone delivers the event reader's error if it stops on its own; after
// it delivered, Stop does not wait for it again.
func (s *Session) ReadDone() <-chan error { return s.runErr }

// SetReadErr records the reader's error received from ReadDone.
func (s *Session) SetReadErr(err error) {
	s.readErr = err
	s.runErr = nil
}

// Loop calls tick every period until ctx ends, duration (if > 0) has
// passed, the target exits, or reading the events fails (kept for Stop). It
// returns the first error tick returns.
func (s *Session) Loop(ctx context.Context, duration, period time.Duration, tick func() error) error {
	var deadline <-chan time.Time
	if duration > 0 {
		tm := time.NewTimer(duration)
		defer tm.Stop()
		deadline = tm.C
	}
	tk := time.NewTicker(period)
	defer tk.Stop()
	for {
		select {
		case <-tk.C:
			if err := tick(); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		case <-deadline:
			return nil
		case <-s.Exited():
			return nil
		case err := <-s.ReadDone():
			s.SetReadErr(err)
			return nil
		}
	}
}

// Stop drains what the ring buffer holds into the sinks, detaches every
// probe and returns the reader's error, if any.
func (s *Session) Stop() error {
	if s.stopped {
		return s.readErr
	}
	s.stopped = true
	if s.stopRun != nil {
		s.stopRun()
		if s.runErr != nil {
			s.readErr = <-s.runErr
			s.runErr = nil
		}
	}
	if s.Tracer != nil {
		s.Tracer.Close()
	}
	if s.readErr != nil {
		return fmt.Errorf("pid %d: %w", s.PID, s.readErr)
	}
	return nil
}

// stackSource is what the loader implements once it captures user stacks:
// every stack captured so far by ID (IDs are never reused in a session).
type stackSource interface {
	Stacks() map[int32][]uint64
}

// Stacks returns the user stacks the tracer captured so far, by the
// StackID the events carry; nil while the loader captures none.
func (s *Session) Stacks() map[int32][]uint64 {
	if src, ok := any(s.Tracer).(stackSource); ok {
		return src.Stacks()
	}
	return nil
}

// Stats are the tracer's counters.
func (s *Session) Stats() ebpf.Stats { return s.Tracer.Stats() }

// Finish waits for a launched command to end and returns its exit status (0
// for an attached process). When ctx is done (Ctrl-C, SIGTERM) the command,
// which got the terminal's signal too, is given 100ms and then SIGTERM; it is
// killed after 5s only then.
func (s *Session) Finish(ctx context.Context) int {
	done := s.waitDone
	if done == nil {
		return 0
	}
	if ctx.Err() != nil {
		select {
		case <-done:
		case <-time.After(100 * time.Millisecond):
			_ = syscall.Kill(s.PID, syscall.SIGTERM)
		}
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		if ctx.Err() != nil {
			_ = syscall.Kill(s.PID, syscall.SIGKILL)
		}
		<-done
	}
	return s.exitCode
}

// Close detaches, closes the binary, and kills a command never released. It
// does not wait for a released command: see Finish.
func (s *Session) Close() {
	s.closeOnce.Do(func() {
		close(s.stopWatch)
		if s.stopRun != nil {
			s.stopRun()
		}
		if s.Tracer != nil {
			s.Tracer.Close()
		}
		if s.Bin != nil {
			s.Bin.Close()
		}
		if s.child != nil { // not released: never leave it stopped
			_ = s.child.Kill()
			_, _ = s.child.Wait()
			s.child = nil
		}
	})
}

// MonotonicNow is the event clock (CLOCK_MONOTONIC, as bpf_ktime_get_ns).
func MonotonicNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0 // the model then uses the last event's time
	}
	return uint64(ts.Nano())
}

// watchExit closes the returned channel when process pid exits (or is
// killed). It uses a pidfd, which also sees a zombie as exited, and falls
// back to polling /proc.
func watchExit(pid int, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fd, err := unix.PidfdOpen(pid, 0)
		if err == nil {
			defer unix.Close(fd)
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			for {
				select {
				case <-stop:
					return
				default:
				}
				n, err := unix.Poll(fds, 200)
				if n > 0 || (err != nil && err != unix.EINTR) {
					return
				}
			}
		}
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if !alive(pid) {
					return
				}
			}
		}
	}()
	return done
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}
