// Command gosched is the seed note's Gosched example: five goroutines print
// "Aario", main yields with runtime.Gosched and prints "Hello". How many
// "Aario" lines appear before the program ends is up to the scheduler.
//
// With -wait it first prints "ready" and waits for a line on standard input,
// so a tracer can attach before the work. With -loop N it then yields N times
// in a row before the example: a workload for measuring the cost of probes.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
)

func main() {
	wait := flag.Bool("wait", false, "print ready and wait for a line on stdin first")
	loop := flag.Int("loop", 0, "then call runtime.Gosched this many times, alone (a probe-cost workload)")
	flag.Parse()
	if *wait {
		fmt.Println("ready")
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	}
	for i := 0; i < *loop; i++ {
		runtime.Gosched()
	}

	for i := 0; i < 5; i++ {
		go fmt.Println("Aario")
	}
	runtime.Gosched() // 让出CPU，给其他协程运行

	fmt.Println("Hello")
}
