// Command paths is a gmpwatch test target that enters the runtime along each
// of the four paths at a known place, and prints what it did, with the source
// lines from runtime.Caller, so tests compare without hard-coding lines:
//
//	alloc FUNC FILE:LINE BYTES        allocated BYTES in 64 KiB objects at LINE
//	block FILE:LINE NS                a receive at LINE blocked for NS
//	leak FILE:LINE N                  N goroutines from the go statement at
//	                                  LINE, one every 10ms, blocked forever
//	threads N FILE:LINE NS            N goroutines locked to their threads,
//	                                  each in a blocking syscall of NS at LINE
//	                                  at once
//	done
//
// With -wait it prints "ready" and waits for a line on standard input first,
// so a tracer can attach. It exits with status -exit.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// here returns the file and line of its caller.
func here() (string, int) {
	_, file, line, _ := runtime.Caller(1)
	return file, line
}

var sink [][]byte

// allocate allocates n objects of 64 KiB and keeps them.
func allocate(n int) {
	file, line := here()
	for i := 0; i < n; i++ {
		sink = append(sink, make([]byte, 64<<10)) // line+2
	}
	fmt.Printf("alloc main.allocate %s:%d %d\n", file, line+2, n*64<<10)
}

// block receives on a channel that a sender fills after d.
func block(d time.Duration) {
	ch := make(chan int)
	go func() {
		time.Sleep(d)
		ch <- 1
	}()
	start := time.Now()
	file, line := here()
	<-ch
	fmt.Printf("block %s:%d %d\n", file, line+1, time.Since(start).Nanoseconds())
}

var never = make(chan int)

func leaked() { <-never }

// leak starts n goroutines that never end, one every interval.
func leak(n int, interval time.Duration) {
	var file string
	var line int
	for i := 0; i < n; i++ {
		file, line = here()
		go leaked()
		time.Sleep(interval)
	}
	fmt.Printf("leak %s:%d %d\n", file, line+1, n)
}

// lockedSyscalls runs n goroutines, each locked to its thread and in a
// blocking nanosleep(2) of d at the same time: the runtime needs a thread
// for each, and hands their Ps off.
func lockedSyscalls(n int, d time.Duration) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	var file string
	var line int
	var mu sync.Mutex
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			<-start
			ts := syscall.NsecToTimespec(d.Nanoseconds())
			mu.Lock()
			file, line = here()
			mu.Unlock()
			syscall.Syscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
		}()
	}
	close(start)
	wg.Wait()
	fmt.Printf("threads %d %s:%d %d\n", n, file, line+2, d.Nanoseconds())
}

func main() {
	wait := flag.Bool("wait", false, "print ready and wait for a line on stdin")
	exit := flag.Int("exit", 0, "exit status")
	blockFor := flag.Duration("block", 200*time.Millisecond, "how long the receive blocks")
	nleak := flag.Int("leak", 60, "goroutines to leak")
	flag.Parse()
	if *wait {
		fmt.Println("ready")
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			fmt.Fprintln(os.Stderr, "paths: read stdin:", err)
			os.Exit(1)
		}
	}
	// A program that never references runtime.MemProfile has memory
	// profiling disabled by the linker: keep it on, as any program that
	// imports runtime/pprof does.
	runtime.MemProfile(nil, false)
	allocate(1024)
	block(*blockFor)
	leak(*nleak, 10*time.Millisecond)
	lockedSyscalls(4, 100*time.Millisecond)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("gc %d\n", ms.NumGC)
	fmt.Println("done")
	os.Exit(*exit)
}
