package rtstate

import (
	"bytes"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// curGoid is the calling goroutine's ID, from its own traceback.
func curGoid() uint64 {
	b := make([]byte, 64)
	b = bytes.TrimPrefix(b[:runtime.Stack(b, false)], []byte("goroutine "))
	id, _ := strconv.ParseUint(string(b[:bytes.IndexByte(b, ' ')]), 10, 64)
	return id
}

// TestGMPOfSelf reads this test process's G/M/P picture while it holds a
// goroutine locked to its thread in a blocking read(2) and another one
// spinning on a P, and checks both where the process itself says they are.
func TestGMPOfSelf(t *testing.T) {
	testtarget.RequireRoot(t)
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("needs GOMAXPROCS >= 2")
	}
	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])

	type who struct {
		goid uint64
		tid  int
	}
	reader := make(chan who, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		reader <- who{curGoid(), syscall.Gettid()}
		var b [1]byte
		_, _ = syscall.Read(fds[0], b[:]) // blocks in the kernel: Gsyscall
	}()
	var stop atomic.Bool
	spinner := make(chan uint64, 1)
	spinDone := make(chan struct{})
	go func() {
		defer close(spinDone)
		spinner <- curGoid()
		for !stop.Load() {
		}
	}()
	defer func() {
		stop.Store(true)
		<-spinDone
		_, _ = syscall.Write(fds[1], []byte{1})
		<-readDone
	}()
	rd, spin := <-reader, <-spinner

	p, err := plan.FromProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	var g *GMP
	var inSyscall *M
	spinOnP := false
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if g, err = r.GMP(); err != nil {
			t.Fatal(err)
		}
		inSyscall, spinOnP = nil, false
		for i := range g.Ms {
			if m := &g.Ms[i]; m.TID == uint64(rd.tid) && m.Syscall {
				inSyscall = m
			}
		}
		for _, pm := range g.Ps {
			spinOnP = spinOnP || pm.G == spin
		}
		if inSyscall != nil && spinOnP {
			break
		}
	}
	if inSyscall == nil {
		t.Fatalf("no M on thread %d in a syscall: %+v", rd.tid, g.Ms)
	}
	if !inSyscall.Locked || inSyscall.G != rd.goid || inSyscall.GStatus != event.StatusSyscall || inSyscall.GStartPC == 0 || inSyscall.Idle {
		t.Errorf("the reader's M: %+v, want locked, running goroutine %d in a syscall", *inSyscall, rd.goid)
	}
	if !spinOnP {
		t.Errorf("spinning goroutine %d on no P: %+v", spin, g.Ps)
	}
	for _, pm := range g.Ps {
		if pm.G == spin {
			var m *M
			for i := range g.Ms {
				if g.Ms[i].ID == pm.M {
					m = &g.Ms[i]
				}
			}
			if m == nil || m.P != pm.ID || m.G != spin || pm.TID != m.TID || pm.Status != "running" {
				t.Errorf("P %+v and its M %+v disagree", pm, m)
			}
		}
	}
	if len(g.Ps) != runtime.GOMAXPROCS(0) || len(g.Ms) != g.Threads || g.Skipped != 0 {
		t.Errorf("%d Ps, %d Ms (allm holds %d), %d skipped", len(g.Ps), len(g.Ms), g.Threads, g.Skipped)
	}
	m0 := false
	for _, m := range g.Ms {
		m0 = m0 || (m.ID == 0 && m.TID == uint64(os.Getpid()))
	}
	if !m0 {
		t.Errorf("no M 0 on the main thread %d: %+v", os.Getpid(), g.Ms)
	}
}
