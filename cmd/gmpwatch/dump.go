package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/procmem"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
)

func init() {
	register(&command{
		name:    "dump",
		usage:   "dump -p PID [--stop] [--summary] [--json]",
		summary: "every goroutine: status, wait reason, waiting since, creator; grouped",
		run:     runDump,
	})
}

const dumpUsage = "usage: gmpwatch dump -p PID [--stop] [--summary] [--json]"

func runDump(ctx context.Context, env *cmdEnv, args []string) error {
	fs := flag.NewFlagSet("dump", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	pid := fs.Int("p", 0, "process ID")
	asJSON := fs.Bool("json", false, "one JSON object")
	stop := fs.Bool("stop", false, "hold every thread of the process (ptrace) while reading, for a consistent view")
	summary := fs.Bool("summary", false, "groups only, not each goroutine")
	stopTimeout := fs.Duration("stop-timeout", 5*time.Second, "how long --stop waits for the threads to stop")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return usageErrorf("%v (%s)", err, dumpUsage)
	}
	if len(pos) > 0 {
		return usageErrorf("unexpected argument %q (%s)", pos[0], dumpUsage)
	}
	if *pid == 0 {
		return usageErrorf("give a process with -p PID (%s)", dumpUsage)
	}
	t, err := openTarget(*pid)
	if err != nil {
		return err
	}
	defer t.close()
	exe, err := procmem.ExePath(*pid)
	if err != nil {
		return usageErrorf("%v", err)
	}
	bin, err := gobin.Open(exe)
	if err != nil {
		return usageErrorf("pid %d: %v", *pid, err)
	}
	defer bin.Close()
	sym := gobin.NewSymbolizer(bin, t.plan.LoadBias)

	d, err := readDump(ctx, t, sym, *stop, *stopTimeout)
	if err != nil {
		return err
	}
	d.PID, d.Exe = *pid, t.plan.Exe
	w := bufio.NewWriterSize(env.stdout, 1<<16)
	if *asJSON {
		err = d.writeJSON(w, sym, !*summary)
	} else {
		err = d.writeText(w, sym, !*summary)
	}
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	return err
}

// dumpResult is one read of every goroutine.
type dumpResult struct {
	PID           int
	Exe           string
	GoVersion     string
	Layout        string
	Stopped       bool // read with every thread held
	FrozenThreads int
	ReadTime      time.Duration
	Scan          *rtstate.GScan
	Groups        []*dumpGroup
	waitReasons   func(uint8) string
}

// dumpGroup is the goroutines that share a creation site, a start
// function, a status and a wait reason.
type dumpGroup struct {
	GoPC, StartPC uint64
	Status        uint32
	WaitReason    uint8
	Goroutines    []*rtstate.G
	// MinWait, MaxWait are the shortest and longest known waits (ns), -1
	// when no goroutine of the group has a waitsince.
	MinWait, MaxWait int64
}

// readDump reads everything, holding the process for the reads with stop.
// The process is resumed before readDump returns, whatever happens: on
// error, on Ctrl-C (ctx), on a panic.
func readDump(ctx context.Context, t *target, sym *gobin.Symbolizer, stop bool, stopTimeout time.Duration) (_ *dumpResult, err error) {
	d := &dumpResult{GoVersion: t.plan.GoVersion, Layout: layoutNote(t.plan), waitReasons: t.plan.WaitReasons.Name}
	begin := time.Now()
	if stop {
		fz, err := rtstate.Freeze(t.plan.PID, stopTimeout)
		if err != nil {
			return nil, fmt.Errorf("--stop: %w", err)
		}
		defer func() {
			if rerr := fz.Resume(); rerr != nil && err == nil {
				err = fmt.Errorf("--stop: %w", rerr)
			}
		}()
		d.Stopped, d.FrozenThreads = true, fz.Threads()
	}
	d.Scan, err = t.rt.Goroutines(ctx, rtstate.ScanOptions{ValidPC: sym.ValidPC})
	if err != nil {
		if ctx.Err() != nil {
			if stop {
				return nil, fmt.Errorf("pid %d: interrupted; the process was resumed", t.plan.PID)
			}
			return nil, fmt.Errorf("pid %d: interrupted", t.plan.PID)
		}
		return nil, fmt.Errorf("pid %d: %w", t.plan.PID, err)
	}
	d.ReadTime = time.Since(begin)

	type key struct {
		gopc, startpc uint64
		status        uint32
		reason        uint8
	}
	groups := map[key]*dumpGroup{}
	for i := range d.Scan.Goroutines {
		g := &d.Scan.Goroutines[i]
		k := key{g.GoPC, g.StartPC, g.Status, g.WaitReason}
		grp := groups[k]
		if grp == nil {
			grp = &dumpGroup{GoPC: g.GoPC, StartPC: g.StartPC, Status: g.Status, WaitReason: g.WaitReason, MinWait: -1, MaxWait: -1}
			groups[k] = grp
			d.Groups = append(d.Groups, grp)
		}
		grp.Goroutines = append(grp.Goroutines, g)
		if w := waited(g, d.Scan.Mono); w >= 0 {
			if grp.MinWait < 0 || w < grp.MinWait {
				grp.MinWait = w
			}
			if w > grp.MaxWait {
				grp.MaxWait = w
			}
		}
	}
	slices.SortStableFunc(d.Groups, func(a, b *dumpGroup) int {
		if len(a.Goroutines) != len(b.Goroutines) {
			return len(b.Goroutines) - len(a.Goroutines)
		}
		return cmp.Compare(a.Goroutines[0].Goid, b.Goroutines[0].Goid)
	})
	return d, nil
}

// waited is how long g has been blocked (ns), -1 when unknown: the runtime
// sets g.waitsince only when a GC finds the goroutine blocked, so this is
// "at least since".
func waited(g *rtstate.G, now int64) int64 {
	if g.WaitSince <= 0 || (g.Status != event.StatusWaiting && g.Status != event.StatusSyscall && g.Status != event.StatusLeaked) {
		return -1
	}
	return now - g.WaitSince
}

func (d *dumpResult) state(status uint32, reason uint8) (string, string) {
	st := rtstate.StatusName(status)
	if status == event.StatusWaiting || status == event.StatusLeaked {
		return st, d.waitReasons(reason)
	}
	return st, ""
}

func siteString(f gobin.Frame, ok bool, pc uint64) string {
	if !ok {
		return fmt.Sprintf("?(pc %#x)", pc)
	}
	return fmt.Sprintf("%s:%d (%s)", f.File, f.Line, f.Func)
}

func durString(ns int64) string {
	if ns < 0 {
		return "?"
	}
	return time.Duration(ns).Round(time.Millisecond).String()
}

func (d *dumpResult) writeText(w *bufio.Writer, sym *gobin.Symbolizer, each bool) error {
	sc := d.Scan
	how := "racy snapshot: read while the process ran, so a goroutine may have moved on (--stop for a consistent view)"
	if d.Stopped {
		how = fmt.Sprintf("consistent snapshot: %d threads held for %v", d.FrozenThreads, d.ReadTime.Round(100*time.Microsecond))
	}
	fmt.Fprintf(w, "gmpwatch dump: PID %d %s (%s, %s)\n", d.PID, d.Exe, d.GoVersion, d.Layout)
	fmt.Fprintf(w, "%d goroutines in %d groups; %s\n", len(sc.Goroutines), len(d.Groups), how)
	fmt.Fprintf(w, "allgs: %d entries, %d dead (kept for reuse), %d skipped", sc.AllgLen, sc.Dead, sc.Skipped.Total())
	if n := sc.Skipped.Total(); n > 0 {
		b, _ := json.Marshal(sc.Skipped)
		fmt.Fprintf(w, " %s", b)
	}
	fmt.Fprintf(w, "; read in %v\n", d.ReadTime.Round(100*time.Microsecond))
	fmt.Fprintf(w, "waiting: from g.waitsince, which a GC stamps on a blocked goroutine with the previous GC's end (no value: no GC since it blocked)\n")
	for _, grp := range d.Groups {
		st, reason := d.state(grp.Status, grp.WaitReason)
		if reason != "" {
			st += " (" + reason + ")"
		}
		cf, cok := sym.Symbolize(grp.GoPC, true)
		start, sok := sym.StartFunc(grp.StartPC)
		if !sok {
			start = fmt.Sprintf("?(pc %#x)", grp.StartPC)
		}
		fmt.Fprintf(w, "\n%d × %s, created at %s, start %s", len(grp.Goroutines), st, siteString(cf, cok, grp.GoPC), start)
		if grp.MaxWait >= 0 {
			if grp.MinWait == grp.MaxWait {
				fmt.Fprintf(w, ", waiting %s", durString(grp.MaxWait))
			} else {
				fmt.Fprintf(w, ", waiting %s to %s", durString(grp.MinWait), durString(grp.MaxWait))
			}
		}
		w.WriteByte('\n')
		if !each {
			continue
		}
		var line []byte
		for _, g := range grp.Goroutines {
			line = append(line[:0], "    goroutine "...)
			line = strconv.AppendUint(line, g.Goid, 10)
			if g.ParentGoid != 0 {
				line = append(line, " parent "...)
				line = strconv.AppendUint(line, g.ParentGoid, 10)
			}
			if ws := waited(g, sc.Mono); ws >= 0 {
				line = append(line, " waiting "...)
				line = append(line, durString(ws)...)
			}
			line = append(line, '\n')
			if _, err := w.Write(line); err != nil {
				return err
			}
		}
	}
	return nil
}

// dumpFrame is a source position in the JSON output.
type dumpFrame struct {
	Function string `json:"function"`
	File     string `json:"file"`
	Line     int    `json:"line"`
	PC       uint64 `json:"pc"`
}

func frameJSON(f gobin.Frame, ok bool, pc uint64) []byte {
	v := dumpFrame{PC: pc}
	if ok {
		v.Function, v.File, v.Line = f.Func, f.File, f.Line
	}
	b, _ := json.Marshal(v)
	return b
}

// writeJSON writes one object; goroutines are appended by hand so that a
// million of them stream out without a million allocations.
func (d *dumpResult) writeJSON(w *bufio.Writer, sym *gobin.Symbolizer, each bool) error {
	sc := d.Scan
	head := struct {
		PID        int             `json:"pid"`
		Exe        string          `json:"exe"`
		GoVersion  string          `json:"go_version"`
		Layout     string          `json:"layout"`
		Consistent bool            `json:"consistent"` // read with the process stopped (--stop)
		Threads    int             `json:"stopped_threads,omitempty"`
		ReadNS     int64           `json:"read_ns"`
		Allgs      int             `json:"allgs"`
		Dead       int             `json:"dead"`
		Skipped    rtstate.Skipped `json:"skipped"`
		SkippedN   int             `json:"skipped_total"`
		Total      int             `json:"goroutines_total"`
	}{d.PID, d.Exe, d.GoVersion, d.Layout, d.Stopped, d.FrozenThreads, d.ReadTime.Nanoseconds(),
		sc.AllgLen, sc.Dead, sc.Skipped, sc.Skipped.Total(), len(sc.Goroutines)}
	b, err := json.Marshal(head)
	if err != nil {
		return err
	}
	w.Write(b[:len(b)-1])

	created := map[uint64][]byte{}
	createdAt := func(pc uint64) []byte {
		if b, ok := created[pc]; ok {
			return b
		}
		f, ok := sym.Symbolize(pc, true)
		b := frameJSON(f, ok, pc)
		created[pc] = b
		return b
	}
	starts := map[uint64][]byte{}
	startFn := func(pc uint64) []byte {
		if b, ok := starts[pc]; ok {
			return b
		}
		name, ok := sym.StartFunc(pc)
		b, _ := json.Marshal(name)
		if !ok {
			b = []byte(`null`)
		}
		starts[pc] = b
		return b
	}
	quoted := map[string][]byte{}
	quote := func(s string) []byte {
		if b, ok := quoted[s]; ok {
			return b
		}
		b, _ := json.Marshal(s)
		quoted[s] = b
		return b
	}

	w.WriteString(`,"groups":[`)
	var buf []byte
	for i, grp := range d.Groups {
		st, reason := d.state(grp.Status, grp.WaitReason)
		buf = append(buf[:0], `{"count":`...)
		buf = strconv.AppendInt(buf, int64(len(grp.Goroutines)), 10)
		buf = append(buf, `,"status":`...)
		buf = append(buf, quote(st)...)
		buf = append(buf, `,"wait_reason":`...)
		buf = append(buf, quote(reason)...)
		buf = append(buf, `,"created_at":`...)
		buf = append(buf, createdAt(grp.GoPC)...)
		buf = append(buf, `,"start_function":`...)
		buf = append(buf, startFn(grp.StartPC)...)
		if grp.MaxWait >= 0 {
			buf = append(buf, `,"min_waiting_ns":`...)
			buf = strconv.AppendInt(buf, grp.MinWait, 10)
			buf = append(buf, `,"max_waiting_ns":`...)
			buf = strconv.AppendInt(buf, grp.MaxWait, 10)
		}
		buf = append(buf, `,"goids":[`...)
		for j, g := range grp.Goroutines {
			if j > 0 {
				buf = append(buf, ',')
			}
			buf = strconv.AppendUint(buf, g.Goid, 10)
			if len(buf) > 1<<16 {
				w.Write(buf)
				buf = buf[:0]
			}
		}
		buf = append(buf, "]}"...)
		if i < len(d.Groups)-1 {
			buf = append(buf, ',')
		}
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	w.WriteString(`]`)
	if each {
		w.WriteString(`,"goroutines":[`)
		for i := range sc.Goroutines {
			g := &sc.Goroutines[i]
			st, reason := d.state(g.Status, g.WaitReason)
			buf = buf[:0]
			if i > 0 {
				buf = append(buf, ",\n"...)
			}
			buf = append(buf, `{"goid":`...)
			buf = strconv.AppendUint(buf, g.Goid, 10)
			buf = append(buf, `,"status":`...)
			buf = append(buf, quote(st)...)
			if reason != "" {
				buf = append(buf, `,"wait_reason":`...)
				buf = append(buf, quote(reason)...)
			}
			if ws := waited(g, sc.Mono); ws >= 0 {
				buf = append(buf, `,"waiting_ns":`...)
				buf = strconv.AppendInt(buf, ws, 10)
			}
			buf = append(buf, `,"created_at":`...)
			buf = append(buf, createdAt(g.GoPC)...)
			buf = append(buf, `,"start_function":`...)
			buf = append(buf, startFn(g.StartPC)...)
			if g.ParentGoid != 0 {
				buf = append(buf, `,"parent_goid":`...)
				buf = strconv.AppendUint(buf, g.ParentGoid, 10)
			}
			buf = append(buf, '}')
			if _, err := w.Write(buf); err != nil {
				return err
			}
		}
		w.WriteString(`]`)
	}
	_, err = w.WriteString("}\n")
	return err
}
