// Command spawn is a gmpwatch test target whose scheduler behaviour is known
// exactly: after it reads a line from standard input it creates exactly -n
// goroutines from one go statement, whose file:line it prints ("site"), and
// whose start function is main.worker. Every goroutine blocks (a channel
// receive, with -sweep at a stack depth that varies from one to the next)
// until all are created, then exits; spawn prints "done N" and exits.
// With -parkers K it first starts K goroutines (go parker(i), one statement)
// that park forever at stack depths 0..K-1, and prints "parkers K".
//
// Output, in order: "ready", then after the input line "site FILE:LINE",
// "start main.worker", "done N". With -linger it then waits for a second
// line before exiting, so a test can look at its threads.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

var (
	release = make(chan struct{})
	wg      sync.WaitGroup
	started sync.WaitGroup
)

var (
	sweep int          // -sweep
	next  atomic.Int32 // numbers the workers
)

// worker is the start function of every spawned goroutine.
func worker() {
	d := 0
	if sweep > 0 {
		d = int(next.Add(1)) % sweep
	}
	descend(d, block)
}

func block() {
	started.Done()
	<-release
	wg.Done()
}

// descend recurses d frames deep, then calls fn: goroutines that block at
// every stack depth make some of them grow their stack right in gopark.
//
//go:noinline
func descend(d int, fn func()) {
	if d > 0 {
		descend(d-1, fn)
		return
	}
	fn()
}

var (
	nilChan chan int
	parking sync.WaitGroup
)

// parker is the start function of the -parkers goroutines: parker i parks
// forever i frames deep, on a receive from a nil channel, which calls gopark
// first thing (nothing at the same depth grows the stack before it).
// parking.Done comes just before the park, so main also waits for the
// parks themselves (parked) before it goes on.
func parker(i int) {
	descend(i, func() {
		parking.Done()
		<-nilChan
	})
}

// parked returns once k goroutines are parked on a nil channel, as the
// runtime's own goroutine dump says: a parker preempted between
// parking.Done and its receive would otherwise park after "done", or never
// if spawn exits first.
func parked(k int) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n == len(buf) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if bytes.Count(buf[:n], []byte("[chan receive (nil chan)")) >= k {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func main() {
	n := flag.Int("n", 100, "goroutines to create")
	wait := flag.Bool("wait", true, "print ready and wait for a line on stdin first")
	flag.IntVar(&sweep, "sweep", 0, "workers recurse 0..sweep-1 frames deep before blocking")
	parkers := flag.Int("parkers", 0, "goroutines parked forever, at stack depths 0..parkers-1 (before the workers)")
	linger := flag.Bool("linger", false, "after done, wait for another line on stdin before exiting")
	flag.Parse()
	if *n < 0 {
		fmt.Fprintln(os.Stderr, "spawn: -n must be >= 0")
		os.Exit(2)
	}
	in := bufio.NewReader(os.Stdin)
	if *wait {
		fmt.Println("ready")
		if _, err := in.ReadString('\n'); err != nil {
			fmt.Fprintln(os.Stderr, "spawn: read stdin:", err)
			os.Exit(1)
		}
	}
	if *parkers > 0 {
		parking.Add(*parkers)
		for i := 0; i < *parkers; i++ {
			go parker(i)
		}
		parking.Wait()
		parked(*parkers)
		fmt.Printf("parkers %d\n", *parkers)
	}
	wg.Add(*n)
	started.Add(*n)
	_, file, line, _ := runtime.Caller(0)
	for i := 0; i < *n; i++ {
		go worker() // the site: line of runtime.Caller above + 2
	}
	fmt.Printf("site %s:%d\n", file, line+2)
	fmt.Println("start main.worker")
	started.Wait()
	close(release)
	wg.Wait()
	// The workers have called wg.Done but may not have exited yet: wait
	// until the runtime no longer counts them (it stops when goexit0 frees
	// the g), so "done" means every worker's life has ended.
	for runtime.NumGoroutine() > 1+*parkers {
		time.Sleep(100 * time.Microsecond)
	}
	fmt.Printf("done %d\n", *n)
	if *linger {
		_, _ = in.ReadString('\n')
	}
}
