// Command latmetrics exposes its own runtime/metrics so that tests can
// compare what gmpwatch stat reads from its memory with what the runtime
// reports of itself: on SIGUSR1 it prints one "metrics" line with the
// /sched/latencies:seconds histogram (the runtime's sched.timeToRun), the
// goroutines created (go1.26+) and the GC cycles; on SIGUSR2 it runs a burst
// of scheduling work (goroutines ping-ponging over channels, new goroutines,
// one GC) and prints "burst". It starts with a small burst, then prints
// "ready".
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// burst makes goroutines wait for each other: pairs ping-pong rounds times
// over unbuffered channels, and spawn goroutines each yield a few times.
func burst(pairs, rounds, spawn int) {
	var wg sync.WaitGroup
	for p := 0; p < pairs; p++ {
		ping, pong := make(chan int), make(chan int)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				ping <- i
				<-pong
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				<-ping
				pong <- i
			}
		}()
	}
	for i := 0; i < spawn; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 3; j++ {
				runtime.Gosched()
			}
		}()
	}
	wg.Wait()
	runtime.GC()
}

func printMetrics(seq int) {
	s := []metrics.Sample{
		{Name: "/sched/latencies:seconds"},
		{Name: "/sched/goroutines-created:goroutines"}, // go1.26+
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	metrics.Read(s)
	h := s[0].Value.Float64Histogram()
	counts := make([]string, len(h.Counts))
	for i, c := range h.Counts {
		counts[i] = strconv.FormatUint(c, 10)
	}
	bounds := make([]string, len(h.Buckets))
	for i, b := range h.Buckets {
		bounds[i] = strconv.FormatFloat(b, 'g', -1, 64)
	}
	created := "none"
	if s[1].Value.Kind() == metrics.KindUint64 {
		created = strconv.FormatUint(s[1].Value.Uint64(), 10)
	}
	gc := "none"
	if s[2].Value.Kind() == metrics.KindUint64 {
		gc = strconv.FormatUint(s[2].Value.Uint64(), 10)
	}
	fmt.Printf("metrics seq=%d created=%s gc=%s counts=%s buckets=%s\n",
		seq, created, gc, strings.Join(counts, ","), strings.Join(bounds, ","))
}

func main() {
	pairs := flag.Int("pairs", 4, "goroutine pairs that ping-pong in a burst")
	rounds := flag.Int("rounds", 2000, "round trips of each pair in a burst")
	spawn := flag.Int("spawn", 200, "goroutines created in a burst")
	flag.Parse()

	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	first, firstSpawn := *rounds, *spawn
	if first > 2000 {
		first = 2000
	}
	if firstSpawn > 200 {
		firstSpawn = 200
	}
	burst(*pairs, first, firstSpawn)
	fmt.Println("ready")
	seq := 0
	for sig := range sigs {
		seq++
		switch sig {
		case syscall.SIGUSR1:
			printMetrics(seq)
		case syscall.SIGUSR2:
			burst(*pairs, *rounds, *spawn)
			fmt.Printf("burst seq=%d\n", seq)
		}
	}
}
