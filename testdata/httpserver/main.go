// Command httpserver is a net/http server for the overhead benchmark: it
// listens on 127.0.0.1 (an ephemeral port), prints "listening ADDR", serves
// GET /work?n=N (N rounds of SHA-256 over a small buffer, a JSON answer) and
// GET /sleep (a 1 ms timer: a parked goroutine per request), and exits when
// its standard input closes or after -d, printing "served N".
//
// With -trace FILE the runtime's execution tracer records the run. GET
// /latencies answers the runtime's own scheduling-latency histogram
// (/sched/latencies:seconds, cumulative): "latency-bucket LO HI N" per
// non-empty bucket (seconds), then "latency-count N".
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/metrics"
	"runtime/trace"
	"strconv"
	"sync/atomic"
	"time"
)

var (
	dur = flag.Duration("d", time.Minute, "exit after this long")
	trc = flag.String("trace", "", "write a runtime/trace of the run to this file")
)

func main() {
	flag.Parse()
	if *trc != "" {
		f, err := os.Create(*trc)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := trace.Start(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer f.Close()
		defer trace.Stop()
	}
	var served atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/work", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		sum := sha256.Sum256([]byte(r.URL.Path))
		for i := 0; i < n; i++ {
			sum = sha256.Sum256(sum[:])
		}
		served.Add(1)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"n": n, "sum": hex.EncodeToString(sum[:])})
	})
	mux.HandleFunc("/latencies", func(w http.ResponseWriter, r *http.Request) {
		m := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
		metrics.Read(m)
		h := m[0].Value.Float64Histogram()
		var total uint64
		for i, c := range h.Counts {
			if c > 0 {
				total += c
				fmt.Fprintf(w, "latency-bucket %g %g %d\n", h.Buckets[i], h.Buckets[i+1], c)
			}
		}
		fmt.Fprintf(w, "latency-count %d\n", total)
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond)
		served.Add(1)
		io.WriteString(w, "ok\n")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("listening", ln.Addr())
	go http.Serve(ln, mux)
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(*dur):
	}
	fmt.Println("served", served.Load())
}
