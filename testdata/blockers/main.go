// Command blockers is a gmpwatch test target that blocks one goroutine at a
// time, each for a known duration (-d), in each of these ways, in order:
// chan receive, chan send, select, time.Sleep, sync.Mutex, a pipe read (the
// network poller). For each it prints
// "blocked KIND goroutine waited MS" once the block ends, then "done".
//
// It prints "ready" and waits for a line on standard input first, so a tracer
// can attach before the work.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"
)

var d time.Duration

// report prints how long the blocked goroutine waited.
func report(kind string, start time.Time) {
	fmt.Printf("blocked %s waited %dms\n", kind, time.Since(start).Milliseconds())
}

// run starts block in a goroutine, waits d, calls unblock and waits for the
// goroutine to finish.
func run(kind string, block func(), unblock func()) {
	done := make(chan struct{})
	start := time.Now()
	go func() {
		block()
		report(kind, start)
		close(done)
	}()
	time.Sleep(d)
	unblock()
	<-done
}

func main() {
	flag.DurationVar(&d, "d", 50*time.Millisecond, "how long each block lasts")
	flag.Parse()
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fmt.Fprintln(os.Stderr, "blockers: read stdin:", err)
		os.Exit(1)
	}

	recv := make(chan int)
	run("chan-receive", func() { <-recv }, func() { recv <- 1 })

	send := make(chan int)
	run("chan-send", func() { send <- 1 }, func() { <-send })

	a, b := make(chan int), make(chan int)
	run("select", func() {
		select {
		case <-a:
		case <-b:
		}
	}, func() { b <- 1 })

	run("sleep", func() { time.Sleep(d) }, func() {})

	var mu sync.Mutex
	mu.Lock()
	run("mutex", func() { mu.Lock(); mu.Unlock() }, func() { mu.Unlock() })

	// A pipe is pollable: the reader parks in the network poller ("IO
	// wait") and is made runnable by netpoll through injectglist.
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "blockers:", err)
		os.Exit(1)
	}
	run("io", func() { _, _ = r.Read(make([]byte, 1)) }, func() { _, _ = w.Write([]byte{1}) })

	fmt.Println("done")
}
