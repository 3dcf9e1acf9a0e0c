// Command pathsbpf is the test target of gmpwatch's BPF programs for the
// runtime's four paths and syscalls (ebpf/paths_test.go). It prints "ready",
// waits for a line on standard input, runs each phase once and prints what it
// did, with source lines from runtime.Caller, so the tests compare exact
// numbers and lines without hard-coding them:
//
//	park FILE:LINE NS                 main.parkHere blocked in a receive at LINE
//	create FILE:LINE N CFILE:CLINE    main.spawner ran the go statement at LINE N
//	                                  times; main.runCreate called it at CLINE
//	alloc FILE:LINE N SIZE KEPT RATE  main.allocLoop made N SIZE-byte slices at
//	                                  LINE, kept KEPT bytes; MemProfileRate RATE
//	malloc SIZE N                     main.mallocLoop made N SIZE-byte slices
//	chan PTR N                        N sends and N receives on channel PTR
//	grow PTR N                        N sends on channel PTR from stack depths
//	                                  0..N-1 (some grow the stack in chansend)
//	syscall N NS...                   main.readBlocking made N blocking reads
//	                                  of a pipe; each took NS (its own clock)
//	fast N                            main.fastSyscalls made N getppid calls
//	threads N                         N goroutines locked to their threads
//	                                  blocked in reads at once
//	done
//
// Then it waits for another line and exits. The program refers to
// runtime.MemProfile, without which the linker turns the memory profiler off
// (MemProfileRate 0) and runtime.mProf_Malloc never runs.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

func here() (string, int) {
	_, file, line, _ := runtime.Caller(1)
	return file, line
}

//go:noinline
func parkHere(ch chan int) {
	file, line := here()
	start := time.Now()
	<-ch
	fmt.Printf("park %s:%d %d\n", file, line+2, time.Since(start).Nanoseconds())
}

func runPark(d time.Duration) {
	ch := make(chan int)
	go func() {
		time.Sleep(d)
		ch <- 1
	}()
	parkHere(ch)
}

func worker(wg *sync.WaitGroup) { wg.Done() }

//go:noinline
func spawner(n int, wg *sync.WaitGroup) (string, int) {
	file, line := here()
	for i := 0; i < n; i++ {
		go worker(wg)
	}
	return file, line + 2
}

//go:noinline
func runCreate(n int) {
	var wg sync.WaitGroup
	wg.Add(n)
	cfile, cline := here()
	file, line := spawner(n, &wg)
	wg.Wait()
	fmt.Printf("create %s:%d %d %s:%d\n", file, line, n, cfile, cline+1)
}

var sink []byte
var kept [][]byte

//go:noinline
func allocLoop(n, size int) {
	file, line := here()
	keptBytes := 0
	for i := 0; i < n; i++ {
		sink = make([]byte, size)
		if i%4 == 0 {
			kept = append(kept, sink)
			keptBytes += size
		}
	}
	fmt.Printf("alloc %s:%d %d %d %d %d\n", file, line+3, n, size, keptBytes, runtime.MemProfileRate)
}

//go:noinline
func mallocLoop(n, size int) {
	for i := 0; i < n; i++ {
		sink = make([]byte, size)
	}
	fmt.Printf("malloc %d %d\n", size, n)
}

//go:noinline
func chans(n int) {
	ch := make(chan int, n)
	for i := 0; i < n; i++ {
		ch <- i
	}
	for i := 0; i < n; i++ {
		<-ch
	}
	fmt.Printf("chan %p %d\n", ch, n)
}

//go:noinline
func deep(n int, ch chan int) {
	if n > 0 {
		deep(n-1, ch)
		return
	}
	ch <- n
}

// growers sends once on a channel from each of n goroutines, at stack depths
// 0..n-1: some grow their stack in chansend's prologue.
func growers(n int) {
	ch := make(chan int, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(d int) {
			defer wg.Done()
			deep(d, ch)
		}(i)
	}
	wg.Wait()
	fmt.Printf("grow %p %d\n", ch, n)
}

func pipe() (r, w int) {
	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil {
		fmt.Fprintln(os.Stderr, "pathsbpf: pipe:", err)
		os.Exit(1)
	}
	return fds[0], fds[1]
}

// readBlocking reads one byte from the blocking descriptor fd and returns how
// long the read took.
//
//go:noinline
func readBlocking(fd int) time.Duration {
	var b [1]byte
	start := time.Now()
	_, _, e := syscall.Syscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), 1)
	d := time.Since(start)
	if e != 0 {
		fmt.Fprintln(os.Stderr, "pathsbpf: read:", e)
		os.Exit(1)
	}
	return d
}

func runSyscalls(n int, d time.Duration) {
	r, w := pipe()
	var took []string
	for i := 0; i < n; i++ {
		go func() {
			time.Sleep(d)
			syscall.Write(w, []byte{1})
		}()
		took = append(took, fmt.Sprint(readBlocking(r).Nanoseconds()))
	}
	syscall.Close(r)
	syscall.Close(w)
	fmt.Printf("syscall %d %s\n", n, strings.Join(took, " "))
}

//go:noinline
func getppid() { syscall.Syscall(syscall.SYS_GETPPID, 0, 0, 0) }

//go:noinline
func fastSyscalls(n int) {
	for i := 0; i < n; i++ {
		getppid()
	}
	fmt.Printf("fast %d\n", n)
}

// lockedThreads blocks n goroutines, each locked to its thread, in reads
// at once, then releases them.
func lockedThreads(n int, d time.Duration) {
	r, w := pipe()
	var wg sync.WaitGroup
	started := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			started <- struct{}{}
			readBlocking(r)
		}()
	}
	for i := 0; i < n; i++ {
		<-started
	}
	time.Sleep(d)
	syscall.Write(w, make([]byte, n))
	wg.Wait()
	syscall.Close(r)
	syscall.Close(w)
	fmt.Printf("threads %d\n", n)
}

func main() {
	nthreads := flag.Int("threads", 6, "goroutines locked to blocked threads")
	nsys := flag.Int("syscalls", 5, "blocking reads")
	block := flag.Duration("block", 50*time.Millisecond, "how long reads and the park block")
	// The reference to runtime.MemProfile keeps the memory profiler on.
	memprof := flag.Bool("memprofile", false, "call runtime.MemProfile before exiting")
	flag.Parse()
	in := bufio.NewReader(os.Stdin)
	fmt.Println("ready")
	if _, err := in.ReadString('\n'); err != nil {
		fmt.Fprintln(os.Stderr, "pathsbpf: read stdin:", err)
		os.Exit(1)
	}
	runPark(*block)
	runCreate(100)
	allocLoop(16384, 8192)
	mallocLoop(1000, 12345)
	chans(1000)
	growers(300)
	runSyscalls(*nsys, *block)
	fastSyscalls(1000)
	lockedThreads(*nthreads, *block)
	fmt.Println("done")
	in.ReadString('\n')
	if *memprof {
		runtime.MemProfile(nil, false)
	}
}
