// Command schedload is a deterministic-work scheduler workload for
// gmpwatch ci: ping-pong pairs of goroutines exchanging a fixed number of
// messages over unbuffered channels, and CPU-bound "spinner" goroutines
// doing a fixed amount of arithmetic in slices of -hold units, yielding
// (runtime.Gosched) between slices.
//
// The total work does not depend on -hold; how long a spinner holds its P
// before yielding does. A yielded spinner waits in the run queue behind the
// others for about (spinners/GOMAXPROCS - 1) slices, so raising -hold raises
// the scheduling latency (the tail most: spinner waits are a few percent of
// all waits, the ping-pong hand-offs being the rest) without changing what
// the program computes: a real scheduling-latency regression.
//
// Goroutines created by main: exactly 2*pairs + spinners. With -metrics it
// prints, at its very end, the runtime's own view (runtime/metrics) of the
// scheduling latencies and goroutines created, for tests to compare with
// what gmpwatch read from its memory.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"sync"
)

var (
	procs    = flag.Int("procs", 2, "GOMAXPROCS")
	pairs    = flag.Int("pairs", 2, "ping-pong pairs")
	rounds   = flag.Int("rounds", 10000, "round trips per pair")
	msgWork  = flag.Int("msgwork", 200, "work units per message")
	spinners = flag.Int("spinners", 4, "CPU-bound goroutines")
	iters    = flag.Int("iters", 600, "iterations per spinner, each ending with a yield")
	hold     = flag.Int("hold", 50000, "work units per spinner iteration: how long it holds the CPU")
	fail     = flag.Int("fail", 0, "exit with this status after the work (a failing command)")
	printMet = flag.Bool("metrics", false, "print the runtime's own metrics at the end")
)

// spin does n units of dependent arithmetic (an xorshift step each).
//
//go:noinline
func spin(n int, x uint64) uint64 {
	for i := 0; i < n; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return x
}

func main() {
	flag.Parse()
	if *hold < 0 || *iters < 0 || *rounds < 0 || *pairs < 0 || *spinners < 0 || *procs < 1 {
		fmt.Fprintln(os.Stderr, "schedload: bad flags")
		os.Exit(2)
	}
	runtime.GOMAXPROCS(*procs)

	var wg sync.WaitGroup
	var mu sync.Mutex
	var sum uint64
	add := func(x uint64) {
		mu.Lock()
		sum += x
		mu.Unlock()
	}
	for i := 0; i < *pairs; i++ {
		ping, pong := make(chan uint64), make(chan uint64)
		wg.Add(2)
		go func(seed uint64) { // the pinger
			defer wg.Done()
			x := seed
			for r := 0; r < *rounds; r++ {
				ping <- spin(*msgWork, x)
				x = <-pong
			}
			close(ping)
			add(x)
		}(uint64(i) + 1)
		go func() { // the ponger
			defer wg.Done()
			for x := range ping {
				pong <- spin(*msgWork, x)
			}
		}()
	}
	for i := 0; i < *spinners; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			x := seed
			for it := 0; it < *iters; it++ {
				x = spin(*hold, x)
				runtime.Gosched()
			}
			add(x)
		}(uint64(i) + 1001)
	}
	wg.Wait()
	fmt.Printf("schedload: pairs=%d rounds=%d spinners=%d iters=%d hold=%d goroutines=%d checksum=%x\n",
		*pairs, *rounds, *spinners, *iters, *hold, 2**pairs+*spinners, sum)
	if *printMet {
		printMetrics()
	}
	os.Exit(*fail)
}

// printMetrics prints the runtime's scheduling-latency histogram (one line
// per non-empty bucket: lower and upper bound in seconds, count) and the
// goroutine and thread counters, where the release has them.
func printMetrics() {
	s := []metrics.Sample{
		{Name: "/sched/latencies:seconds"},
		{Name: "/sched/goroutines-created:goroutines"},
		{Name: "/sched/threads/total:threads"},
	}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindFloat64Histogram {
		h := s[0].Value.Float64Histogram()
		var total uint64
		for i, c := range h.Counts {
			total += c
			if c > 0 {
				fmt.Printf("latency-bucket %g %g %d\n", h.Buckets[i], h.Buckets[i+1], c)
			}
		}
		fmt.Printf("latency-count %d\n", total)
	}
	if s[1].Value.Kind() == metrics.KindUint64 {
		fmt.Printf("goroutines-created %d\n", s[1].Value.Uint64())
	}
	if s[2].Value.Kind() == metrics.KindUint64 {
		fmt.Printf("threads %d\n", s[2].Value.Uint64())
	}
}
