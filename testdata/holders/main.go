// Command holders holds a known number of goroutines in known states, for
// the tests of gmpwatch dump and stat: -chan N blocked receiving from a
// channel, -sleep M in time.Sleep, -select K in a select with two cases.
//
// Each goroutine reports what the runtime itself says of it, so that tests
// hard-code nothing: its goid, parent goid and the file:line of the go
// statement that created it (the "created by" lines of its own
// runtime.Stack) and its start function (the outermost frame of
// runtime.Callers). Once all are parked, as runtime.Stack of all goroutines
// shows, it runs two GCs, which stamp g.waitsince on every blocked
// goroutine, and prints one "holder" line per goroutine and a "ready" line.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"time"
)

type report struct {
	kind          string
	goid, parent  uint64
	createdFile   string
	createdLine   int
	startFunction string
}

var reports = make(chan report, 1024)

var (
	goidRe = regexp.MustCompile(`^goroutine (\d+) `)
	// "created by main.startChan in goroutine 1\n\t/path/main.go:102 +0x25";
	// " in goroutine N" since go1.21.
	createdRe = regexp.MustCompile(`created by \S+(?: in goroutine (\d+))?\n\t(\S+):(\d+)`)
)

// self reports the calling goroutine as the runtime sees it: goid, parent
// goid (0 before go1.21, whose tracebacks do not say), the go statement
// that created it (the runtime's own traceback of g.gopc) and its start
// function (the outermost frame of runtime.Callers).
func self(kind string) {
	buf := make([]byte, 4096)
	buf = buf[:runtime.Stack(buf, false)]
	var r report
	r.kind = kind
	if m := goidRe.FindSubmatch(buf); m != nil {
		r.goid, _ = strconv.ParseUint(string(m[1]), 10, 64)
	}
	if m := createdRe.FindSubmatch(buf); m != nil {
		r.parent, _ = strconv.ParseUint(string(m[1]), 10, 64)
		r.createdFile = string(m[2])
		r.createdLine, _ = strconv.Atoi(string(m[3]))
	}
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(1, pcs)])
	for {
		f, more := frames.Next()
		if f.Function != "runtime.goexit" && f.Function != "" {
			r.startFunction = f.Function
		}
		if !more {
			break
		}
	}
	reports <- r
}

// The holders take no arguments, so that each go statement starts them
// directly: g.startpc is the holder itself, not a compiler-made wrapper.
var ch, a, b = make(chan int), make(chan int), make(chan int)

//go:noinline
func chanHolder() {
	self("chan")
	<-ch
}

//go:noinline
func sleeper() {
	self("sleep")
	time.Sleep(24 * time.Hour)
}

//go:noinline
func selecter() {
	self("select")
	select {
	case <-a:
	case <-b:
	}
}

func startChan(n int) {
	for i := 0; i < n; i++ {
		go chanHolder()
	}
}

func startSleep(n int) {
	for i := 0; i < n; i++ {
		go sleeper()
	}
}

func startSelect(n int) {
	for i := 0; i < n; i++ {
		go selecter()
	}
}

var stateRe = regexp.MustCompile(`(?m)^goroutine (\d+) \[([^\],]+)`)

// parked waits until every goroutine in want is in its state, as the
// runtime's own traceback of all goroutines says.
func parked(want map[uint64]string) bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	got := map[uint64]string{}
	for _, m := range stateRe.FindAllSubmatch(buf, -1) {
		id, _ := strconv.ParseUint(string(m[1]), 10, 64)
		got[id] = string(bytes.TrimSpace(m[2]))
	}
	for id, st := range want {
		if got[id] != st {
			return false
		}
	}
	return true
}

func main() {
	nChan := flag.Int("chan", 7, "goroutines blocked receiving from a channel")
	nSleep := flag.Int("sleep", 5, "goroutines sleeping")
	nSelect := flag.Int("select", 3, "goroutines blocked in a select")
	flag.Parse()
	total := *nChan + *nSleep + *nSelect
	if total > cap(reports) {
		fmt.Fprintln(os.Stderr, "holders: too many goroutines")
		os.Exit(2)
	}

	startChan(*nChan)
	startSleep(*nSleep)
	startSelect(*nSelect)

	state := map[string]string{"chan": "chan receive", "sleep": "sleep", "select": "select"}
	want := map[uint64]string{}
	var all []report
	for i := 0; i < total; i++ {
		r := <-reports
		all = append(all, r)
		want[r.goid] = state[r.kind]
	}
	for !parked(want) {
		time.Sleep(5 * time.Millisecond)
	}
	// The GC's stack scan stamps g.waitsince of a blocked goroutine with
	// work.tstart, which only mark termination sets: the second GC stamps
	// the first one's end, after every holder blocked.
	runtime.GC()
	runtime.GC()
	for _, r := range all {
		fmt.Printf("holder kind=%s goid=%d parent=%d file=%s line=%d start=%s\n",
			r.kind, r.goid, r.parent, r.createdFile, r.createdLine, r.startFunction)
	}
	fmt.Printf("ready chan=%d sleep=%d select=%d\n", *nChan, *nSleep, *nSelect)
	time.Sleep(24 * time.Hour)
}
