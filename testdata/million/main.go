// Command million holds -n goroutines (default 1,000,000, the seed's "one
// server holds a million") blocked on one channel, for the scale figures of
// gmpwatch dump. It prints "ready n=N" once all have started.
package main

import (
	"flag"
	"fmt"
	"sync"
	"time"
)

func main() {
	n := flag.Int("n", 1000000, "goroutines to hold")
	flag.Parse()
	ch := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(*n)
	for i := 0; i < *n; i++ {
		go func() {
			wg.Done()
			<-ch
		}()
	}
	wg.Wait()
	fmt.Printf("ready n=%d\n", *n)
	time.Sleep(24 * time.Hour)
}
