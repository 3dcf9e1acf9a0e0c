// Command storm is a scheduler storm for the overhead benchmark: for -d it
// runs, side by side, ping-pong pairs over unbuffered channels, a spawner
// creating short goroutines in batches, and allocators, and prints how many
// operations each finished ("ops pingpong=N spawn=N alloc=N total=N").
// GOMAXPROCS is -procs (2). Throughput under tracing against untraced is the overhead.
//
// With -wait it prints "ready" and starts when a line arrives on stdin (a
// tracer attaches in between). With -trace FILE the runtime's execution
// tracer (runtime/trace) records the whole run into FILE. With -hold D it
// waits D after printing the counts, so that a reader of its memory sees
// the final counters. With -metrics it prints, before the counts, the
// runtime's own scheduling-latency histogram (/sched/latencies:seconds) over
// the run: "latency-bucket LO HI N" per non-empty bucket (seconds), then
// "latency-count N".
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/trace"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

var (
	dur    = flag.Duration("d", 3*time.Second, "how long to run")
	pairs  = flag.Int("pairs", 2, "ping-pong pairs")
	batch  = flag.Int("batch", 64, "goroutines per spawn batch")
	allocs = flag.Int("allocators", 1, "allocating goroutines")
	wait   = flag.Bool("wait", false, "print ready and wait for a line on stdin")
	trc    = flag.String("trace", "", "write a runtime/trace of the run to this file")
	procs  = flag.Int("procs", 2, "GOMAXPROCS")
	hold   = flag.Duration("hold", 0, "after printing the counts, wait this long before exiting")
	mets   = flag.Bool("metrics", false, "print the runtime's own scheduling-latency histogram over the run")
)

var sink atomic.Pointer[[]byte]

func main() {
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	if *wait {
		fmt.Println("ready")
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	if *trc != "" {
		f, err := os.Create(*trc)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer trace.Stop()
	}
	var before metrics.Float64Histogram
	if *mets {
		before = schedLatencies()
	}
	var stop atomic.Bool
	var pp, sp, al atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < *pairs; i++ {
		a, b := make(chan int), make(chan int)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for v := range a {
				b <- v + 1
			}
			close(b)
		}()
		go func() {
			defer wg.Done()
			n := 0
			for !stop.Load() {
				a <- n
				n = <-b
				pp.Add(1)
			}
			close(a)
			for range b {
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		var bw sync.WaitGroup
		for !stop.Load() {
			bw.Add(*batch)
			for j := 0; j < *batch; j++ {
				go func(j int) {
					x := j
					for k := 0; k < 50; k++ {
						x = x*31 + k
					}
					if x == -1 {
						println(x)
					}
					bw.Done()
				}(j)
			}
			bw.Wait()
			sp.Add(int64(*batch))
		}
	}()
	for i := 0; i < *allocs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				b := make([]byte, 64+n%4096)
				sink.Store(&b)
				al.Add(1)
			}
		}()
	}
	time.Sleep(*dur)
	stop.Store(true)
	wg.Wait()
	if *mets {
		after := schedLatencies()
		var total uint64
		for i, c := range after.Counts {
			if d := c - before.Counts[i]; d > 0 {
				total += d
				fmt.Printf("latency-bucket %g %g %d\n", after.Buckets[i], after.Buckets[i+1], d)
			}
		}
		fmt.Printf("latency-count %d\n", total)
	}
	fmt.Printf("ops pingpong=%d spawn=%d alloc=%d total=%d\n", pp.Load(), sp.Load(), al.Load(), pp.Load()+sp.Load()+al.Load())
	time.Sleep(*hold)
}

// schedLatencies reads the runtime's /sched/latencies:seconds.
func schedLatencies() metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	h := s[0].Value.Float64Histogram()
	return metrics.Float64Histogram{Counts: slices.Clone(h.Counts), Buckets: slices.Clone(h.Buckets)}
}
