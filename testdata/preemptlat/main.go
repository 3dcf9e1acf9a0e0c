// Command preemptlat measures what the scheduler's time slice does to a
// latency-sensitive goroutine, for gmpwatch's runtime patch tests. It runs
// with GOMAXPROCS=1 unless -procs says otherwise.
//
// -mode ticker (default): a CPU-bound goroutine spins (without function
// calls, so only preemption stops it) while a ticker goroutine sleeps -tick
// in a loop and measures how late each wake-up is; it prints
//
//	preemptlat: mode=ticker samples=N p50=NS p90=NS max=NS spins=N
//
// -mode pingpong: two goroutines hand a token back and forth over unbuffered
// channels while a CPU-bound goroutine counts; it prints the CPU-bound
// goroutine's share of the run:
//
//	preemptlat: mode=pingpong exchanges=N cpu_ns=NS total_ns=NS cpu_share=F
//
// -mode spawn: creates exactly -n goroutines running main.spawned; each
// parks once on a channel receive (main waits until all have parked), then
// exits; it prints
//
//	preemptlat: mode=spawn created=N exited=N
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

var sink atomic.Uint64

// spin burns CPU without calls until stop is set; it returns its iterations.
func spin(stop *atomic.Bool) uint64 {
	var n, x uint64 = 0, 1
	for !stop.Load() {
		for i := 0; i < 1000; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
		n++
	}
	sink.Add(x)
	return n
}

func ticker(d, tick time.Duration) {
	var stop atomic.Bool
	spins := make(chan uint64, 1)
	go func() { spins <- spin(&stop) }()
	runtime.Gosched() // let the spinner take the P

	var lat []time.Duration
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		t0 := time.Now()
		time.Sleep(tick)
		lat = append(lat, time.Since(t0)-tick)
	}
	stop.Store(true)
	n := <-spins
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) == 0 {
		fmt.Println("preemptlat: no sample")
		os.Exit(1)
	}
	q := func(p float64) int64 { return int64(lat[int(p*float64(len(lat)-1))]) }
	fmt.Printf("preemptlat: mode=ticker samples=%d p50=%d p90=%d max=%d spins=%d\n",
		len(lat), q(0.5), q(0.9), int64(lat[len(lat)-1]), n)
}

func pingpong(d time.Duration) {
	var stop atomic.Bool
	var cpuNS atomic.Int64
	var wg sync.WaitGroup
	wg.Add(3)
	// The CPU-bound goroutine measures the time it gets in short steps.
	go func() {
		defer wg.Done()
		var x uint64 = 1
		for !stop.Load() {
			t0 := time.Now()
			for i := 0; i < 20000; i++ {
				x = x*6364136223846793005 + 1442695040888963407
			}
			// A gap much longer than a step means the goroutine was off CPU.
			if dt := time.Since(t0); dt < time.Millisecond {
				cpuNS.Add(int64(dt))
			}
		}
		sink.Add(x)
	}()
	ping, pong := make(chan int), make(chan int)
	var exchanges atomic.Int64
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			ping <- i
			<-pong
			exchanges.Add(1)
			if stop.Load() {
				close(ping)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for v := range ping {
			pong <- v
		}
	}()
	t0 := time.Now()
	time.Sleep(d)
	stop.Store(true)
	total := time.Since(t0)
	wg.Wait()
	fmt.Printf("preemptlat: mode=pingpong exchanges=%d cpu_ns=%d total_ns=%d cpu_share=%.3f\n",
		exchanges.Load(), cpuNS.Load(), int64(total), float64(cpuNS.Load())/float64(total))
}

var (
	spawnWG      sync.WaitGroup
	spawnC       = make(chan int)
	spawnExited  atomic.Int64
	spawnStarted atomic.Int64
)

// spawned takes no argument, so that the go statement starts it directly
// (g.startpc is main.spawned, not a wrapper).
func spawned() {
	spawnStarted.Add(1)
	<-spawnC
	spawnExited.Add(1)
	spawnWG.Done()
}

func spawn(n int) {
	spawnWG.Add(n)
	for i := 0; i < n; i++ {
		go spawned()
	}
	// Let them all park: each counts itself just before it parks.
	for spawnStarted.Load() < int64(n) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond)
	for i := 0; i < n; i++ {
		spawnC <- i
	}
	spawnWG.Wait()
	fmt.Printf("preemptlat: mode=spawn created=%d exited=%d\n", n, spawnExited.Load())
}

func main() {
	mode := flag.String("mode", "ticker", "ticker, pingpong or spawn")
	d := flag.Duration("d", time.Second, "how long to measure")
	tick := flag.Duration("tick", time.Millisecond, "ticker: sleep per wake-up")
	procs := flag.Int("procs", 1, "GOMAXPROCS")
	n := flag.Int("n", 100, "spawn: goroutines to create")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	switch *mode {
	case "ticker":
		ticker(*d, *tick)
	case "pingpong":
		pingpong(*d)
	case "spawn":
		spawn(*n)
	default:
		fmt.Fprintf(os.Stderr, "preemptlat: unknown mode %q\n", *mode)
		os.Exit(2)
	}
}
