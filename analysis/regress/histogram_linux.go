package regress

import (
	"debug/elf"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/procmem"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
)

// RuntimeCounters is what a RuntimeReader reads from a Go process.
type RuntimeCounters struct {
	GoVersion string
	// TimeToRun is the runtime's sched.timeToRun histogram, cumulative
	// since the process started.
	TimeToRun rtstate.Histogram
	// GoroutinesCreated and ThreadsCreated are nil when the release does
	// not record them.
	GoroutinesCreated *int64
	ThreadsCreated    *int64
}

// RuntimeReader reads the runtime's own counters from the memory of a
// process that is stopped (at its exit, by HistogramMeasurer); it must not
// write to the process. ReadRuntime is the one gmpwatch uses.
type RuntimeReader func(pid int) (RuntimeCounters, error)

// planCache keeps the plan of each executable ci has measured: building one
// (symbols, DWARF layouts) costs far more than a run of a small benchmark,
// and ci runs the same binary again and again. Only the load bias (PIE
// under ASLR) changes from run to run.
var planCache sync.Map // exeKey -> *plan.Plan

type exeKey struct {
	dev, ino    uint64
	size, mtime int64
}

// processPlan returns plan.FromProcess(pid), from the cache when the
// executable is one already seen.
func processPlan(pid int) (*plan.Plan, error) {
	exe, err := procmem.ExePath(pid)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(exe, &st); err != nil {
		return plan.FromProcess(pid)
	}
	key := exeKey{uint64(st.Dev), st.Ino, st.Size, st.Mtim.Nano()}
	if v, ok := planCache.Load(key); ok {
		cached := v.(*plan.Plan)
		ef, err := elf.Open(exe)
		if err != nil {
			return nil, fmt.Errorf("pid %d: %w", pid, err)
		}
		defer ef.Close()
		bias, err := procmem.LoadBias(pid, ef)
		if err != nil {
			return nil, err
		}
		p := *cached
		p.PID, p.LoadBias = pid, bias
		return &p, nil
	}
	p, err := plan.FromProcess(pid)
	if err != nil {
		return nil, err
	}
	planCache.Store(key, p)
	return p, nil
}

// ReadRuntime reads a Go process's counters with the memory reader of
// analysis/rtstate, located by plan.FromProcess.
func ReadRuntime(pid int) (RuntimeCounters, error) {
	p, err := processPlan(pid)
	if err != nil {
		return RuntimeCounters{}, err
	}
	r, err := rtstate.Open(p)
	if err != nil {
		return RuntimeCounters{}, fmt.Errorf("runtime state of %d: %w", pid, err)
	}
	defer r.Close()
	s, err := r.Sched()
	if err != nil {
		return RuntimeCounters{}, fmt.Errorf("runtime.sched of %d: %w", pid, err)
	}
	c := RuntimeCounters{GoVersion: p.GoVersion, TimeToRun: s.TimeToRun}
	if s.HasCreated {
		n := int64(s.GoroutinesCreated)
		c.GoroutinesCreated = &n
	}
	threads := int64(s.Threads)
	c.ThreadsCreated = &threads
	return c, nil
}

// HistogramMeasurer measures a run with the runtime's own scheduling-latency
// histogram (sched.timeToRun, what /sched/latencies:seconds reports),
// read from the child's memory when it exits. It needs no BPF and no
// privilege beyond being the child's parent: the child is started under
// ptrace (PTRACE_TRACEME), stopped at its exit (PTRACE_O_TRACEEXIT) while
// its memory is still there, read, and let go. Only the child's main
// thread is traced; a signal sent to that thread costs a round trip through
// gmpwatch (a few microseconds), the same for base and new.
//
// The measured program must be the command itself (go test -c, then run
// the test binary), not a program the command starts.
type HistogramMeasurer struct {
	// Read reads the stopped process; nil means ReadRuntime.
	Read RuntimeReader

	started bool
	done    chan traceResult
}

type traceResult struct {
	out Outcome
	err error
}

// Method implements Measurer.
func (*HistogramMeasurer) Method() string { return MethodRuntimeHistogram }

// Start implements Measurer.
func (m *HistogramMeasurer) Start(cmd *exec.Cmd) error {
	if m.started {
		return errors.New("measurer already used")
	}
	m.started = true
	if m.Read == nil {
		m.Read = ReadRuntime
	}
	m.done = make(chan traceResult, 1)
	startErr := make(chan error, 1)
	go func() {
		// Every ptrace request must come from the thread that started
		// the tracee. The thread is never unlocked: it ends with this
		// goroutine.
		runtime.LockOSThread()
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Ptrace = true
		if err := cmd.Start(); err != nil {
			startErr <- err
			return
		}
		startErr <- nil
		out, err := m.trace(cmd.Process.Pid)
		cmd.Process.Release()
		m.done <- traceResult{out, err}
	}()
	return <-startErr
}

// Finish implements Measurer.
func (m *HistogramMeasurer) Finish() (Outcome, error) {
	if m.done == nil {
		return Outcome{}, errors.New("measurer not started")
	}
	r := <-m.done
	return r.out, r.err
}

func wait4(pid int, ws *unix.WaitStatus) error {
	for {
		_, err := unix.Wait4(pid, ws, unix.WALL, nil)
		if err != unix.EINTR {
			return err
		}
	}
}

// trace follows the child from its exec to its end. It returns the
// outcome, with the error of the memory read if that failed.
func (m *HistogramMeasurer) trace(pid int) (Outcome, error) {
	var out Outcome
	var readErr error = fmt.Errorf("process %d ended without an exit stop", pid)
	var ws unix.WaitStatus
	first := true
	for {
		if err := wait4(pid, &ws); err != nil {
			return out, fmt.Errorf("wait for %d: %w", pid, err)
		}
		switch {
		case ws.Exited():
			out.ExitStatus = ws.ExitStatus()
			return out, readErr
		case ws.Signaled():
			out.ExitStatus = -1
			out.Signal = unix.SignalName(ws.Signal())
			if out.Signal == "" {
				out.Signal = ws.Signal().String()
			}
			return out, readErr
		case !ws.Stopped():
			continue
		}
		sig := ws.StopSignal()
		inject := 0
		switch {
		case first && sig == unix.SIGTRAP:
			// The stop after the successful execve.
			first = false
			if err := unix.PtraceSetOptions(pid, unix.PTRACE_O_TRACEEXIT|unix.PTRACE_O_TRACEEXEC|unix.PTRACE_O_EXITKILL); err != nil {
				unix.Kill(pid, unix.SIGKILL)
				return out, fmt.Errorf("ptrace options of %d: %w", pid, err)
			}
		case sig == unix.SIGTRAP && ws.TrapCause() == unix.PTRACE_EVENT_EXIT:
			// Exiting, memory still mapped: read the runtime.
			c, err := m.Read(pid)
			readErr = err
			if err == nil {
				out.GoVersion = c.GoVersion
				out.Metrics = Metrics{
					SchedLatency:      LatencyFromHistogram(c.TimeToRun),
					GoroutinesCreated: c.GoroutinesCreated,
					ThreadsCreated:    c.ThreadsCreated,
				}
			}
		case sig == unix.SIGTRAP && ws.TrapCause() == unix.PTRACE_EVENT_EXEC:
			// The command exec'd another program: that one is measured.
		case isStopSignal(sig) && isGroupStop(pid):
			// A group-stop (SIGSTOP and the like): resume it.
		default:
			// A signal for the program: deliver it.
			inject = int(sig)
		}
		if err := unix.PtraceCont(pid, inject); err != nil && err != unix.ESRCH {
			return out, fmt.Errorf("ptrace continue %d: %w", pid, err)
		}
	}
}

func isStopSignal(s unix.Signal) bool {
	return s == unix.SIGSTOP || s == unix.SIGTSTP || s == unix.SIGTTIN || s == unix.SIGTTOU
}

// isGroupStop tells a group-stop from a signal-delivery-stop: only the
// latter has signal information (ptrace(2), "Group-stop").
func isGroupStop(pid int) bool {
	var info [128]byte
	_, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GETSIGINFO, uintptr(pid), 0, uintptr(unsafe.Pointer(&info[0])), 0, 0)
	return errno == unix.EINVAL
}
