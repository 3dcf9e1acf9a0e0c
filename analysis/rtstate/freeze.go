package rtstate

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// ErrAlreadyTraced is returned by Freeze when another tracer (a debugger,
// strace) holds a thread of the process.
var ErrAlreadyTraced = errors.New("process is already traced")

// Frozen is a process whose threads are all held in a ptrace stop
// (PTRACE_SEIZE + PTRACE_INTERRUPT). Nothing in it runs until Resume.
//
// Unlike SIGSTOP, this is invisible to the process's parent (no job-control
// stop in a shell), does not resume a process that someone else stopped,
// and cannot leave the process stopped behind: if gmpwatch dies, the kernel
// detaches its tracees and they run on.
//
// ptrace requests must come from the thread that attached, so every request
// runs on one locked OS thread. The caller of Freeze must not be the
// process's parent waiting on it: a parent's wait would take the ptrace
// stops.
type Frozen struct {
	pid     int
	req     chan func()
	threads map[int]int // tid → signal to deliver when detaching
	resumed bool
	err     error
}

// Freeze stops every thread of pid, including threads created while it
// works, within timeout. On error nothing stays stopped.
func Freeze(pid int, timeout time.Duration) (*Frozen, error) {
	f := &Frozen{pid: pid, req: make(chan func()), threads: map[int]int{}}
	go func() {
		// Never unlocked: the thread ends with the goroutine, which drops
		// whatever ptrace state is left on it.
		runtime.LockOSThread()
		for fn := range f.req {
			fn()
		}
	}()
	var err error
	f.do(func() { err = f.stopAll(time.Now().Add(timeout)) })
	if err != nil {
		if rerr := f.Resume(); rerr != nil {
			err = fmt.Errorf("%w (and resume: %v)", err, rerr)
		}
		return nil, err
	}
	return f, nil
}

// do runs fn on the tracing thread and waits for it.
func (f *Frozen) do(fn func()) {
	done := make(chan struct{})
	f.req <- func() { fn(); close(done) }
	<-done
}

// Threads returns the number of threads held.
func (f *Frozen) Threads() int { return len(f.threads) }

// Resume detaches from every thread, which lets it run on, delivering any
// signal that arrived while it was held. It is safe to call more than once.
func (f *Frozen) Resume() error {
	if f.resumed {
		return f.err
	}
	f.resumed = true
	var first error
	f.do(func() {
		for tid, sig := range f.threads {
			// PTRACE_DETACH with a signal: deliver what the stop took.
			_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_DETACH, uintptr(tid), 0, uintptr(sig), 0, 0)
			if e != 0 && e != unix.ESRCH && first == nil {
				first = fmt.Errorf("resume thread %d of %d: %w", tid, f.pid, e)
			}
		}
	})
	close(f.req)
	f.err = first
	return first
}

// tasks lists the thread IDs of pid.
func tasks(pid int) ([]int, error) {
	d, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(d))
	for _, e := range d {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, tid)
		}
	}
	return out, nil
}

// stopAll seizes and interrupts threads until a listing finds no new one:
// a stopped thread cannot create another, so this ends.
func (f *Frozen) stopAll(deadline time.Time) error {
	seen := map[int]bool{}
	for round := 0; ; round++ {
		tids, err := tasks(f.pid)
		if err != nil {
			return fmt.Errorf("freeze pid %d: list threads: %w", f.pid, err)
		}
		fresh := 0
		for _, tid := range tids {
			if seen[tid] {
				continue
			}
			seen[tid] = true
			fresh++
			if err := unix.PtraceSeize(tid); err != nil {
				if err == unix.ESRCH {
					continue // exited
				}
				if err == unix.EPERM {
					return fmt.Errorf("freeze pid %d: seize thread %d: %w (%w)", f.pid, tid, ErrAlreadyTraced, err)
				}
				return fmt.Errorf("freeze pid %d: seize thread %d: %w", f.pid, tid, err)
			}
			f.threads[tid] = 0
			if err := unix.PtraceInterrupt(tid); err != nil && err != unix.ESRCH {
				return fmt.Errorf("freeze pid %d: interrupt thread %d: %w", f.pid, tid, err)
			}
			if err := f.waitStop(tid, deadline); err != nil {
				return err
			}
		}
		if fresh == 0 {
			return nil
		}
		if round > 1000 {
			return fmt.Errorf("freeze pid %d: threads keep appearing", f.pid)
		}
	}
}

// waitStop waits until tid is in a ptrace stop, and remembers the signal to
// deliver on detach if the stop is a signal's.
func (f *Frozen) waitStop(tid int, deadline time.Time) error {
	for {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(tid, &ws, unix.WALL|unix.WNOHANG, nil)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.ECHILD:
			delete(f.threads, tid) // gone
			return nil
		case err != nil:
			return fmt.Errorf("freeze pid %d: wait for thread %d: %w", f.pid, tid, err)
		}
		if wpid == tid {
			if ws.Exited() || ws.Signaled() {
				delete(f.threads, tid)
				return nil
			}
			if ws.Stopped() {
				// status>>16 == PTRACE_EVENT_STOP: our interrupt (or a
				// group stop); otherwise a signal-delivery stop, whose
				// signal must be delivered when we let go.
				if uint32(ws)>>16&0xff != unix.PTRACE_EVENT_STOP {
					f.threads[tid] = int(ws.StopSignal())
				}
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("freeze pid %d: thread %d did not stop in time", f.pid, tid)
		}
		time.Sleep(200 * time.Microsecond)
	}
}
