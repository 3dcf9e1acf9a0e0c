package sched

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// FormatNs formats nanoseconds with three significant digits: "850ns",
// "12.3µs", "1.20ms", "2.50s".
func FormatNs(ns uint64) string {
	f := float64(ns)
	var v float64
	var unit string
	switch {
	case ns < 1000:
		return strconv.FormatUint(ns, 10) + "ns"
	case ns < 1e6:
		v, unit = f/1e3, "µs"
	case ns < 1e9:
		v, unit = f/1e6, "ms"
	default:
		v, unit = f/1e9, "s"
	}
	switch {
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64) + unit
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64) + unit
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + unit
}

// siteName is "function (file:line)" with the file's base name.
func siteName(s Site) string {
	if s.File == "" {
		return s.Function
	}
	file := s.File
	if i := strings.LastIndexByte(file, '/'); i >= 0 {
		file = file[i+1:]
	}
	return fmt.Sprintf("%s (%s:%d)", s.Function, file, s.Line)
}

// IntervalTopN is how many wait reasons and creation sites an interval
// block lists.
const IntervalTopN = 3

// WriteInterval writes the compact block for one interval: a few lines,
// the header line first.
func WriteInterval(w io.Writer, r *Report) error {
	var b strings.Builder
	g := r.Goroutines
	fmt.Fprintf(&b, "-- %s: events %d, lost %d | goroutines +%d -%d, alive %d (running %d, runnable %d, waiting %d, syscall %d) | threads +%d\n",
		FormatNs(r.DurationNs), r.Events, r.LostEvents, g.Created, g.Exited, g.Alive, g.Running, g.Runnable, g.Waiting, g.Syscall, r.ThreadsCreated)
	if g.Untracked > 0 || g.UntrackedEvents > 0 {
		fmt.Fprintf(&b, "   untracked goroutines: %d, events %d (state bound reached; alive is a lower bound)\n", g.Untracked, g.UntrackedEvents)
	}
	l := r.SchedLatency
	if l.Count > 0 {
		fmt.Fprintf(&b, "   latency  n=%d p50=%s p90=%s p99=%s max=%s\n", l.Count, FormatNs(l.P50Ns), FormatNs(l.P90Ns), FormatNs(l.P99Ns), FormatNs(l.MaxNs))
	} else {
		fmt.Fprintf(&b, "   latency  n=0\n")
	}
	var parts []string
	for i, wr := range r.WaitReasons {
		if i == IntervalTopN {
			parts = append(parts, fmt.Sprintf("+%d more", len(r.WaitReasons)-i))
			break
		}
		parts = append(parts, fmt.Sprintf("%s %d/%s (now %d)", wr.Reason, wr.Count, FormatNs(wr.TotalNs), wr.WaitingNow))
	}
	if len(parts) > 0 {
		fmt.Fprintf(&b, "   waits    %s\n", strings.Join(parts, ", "))
	}
	parts = parts[:0]
	for i, s := range r.CreationSites {
		if i == IntervalTopN {
			parts = append(parts, fmt.Sprintf("+%d more", len(r.CreationSites)-i))
			break
		}
		parts = append(parts, fmt.Sprintf("%s +%d -%d alive %d", siteName(s), s.Created, s.Exited, s.Alive))
	}
	if len(parts) > 0 {
		fmt.Fprintf(&b, "   sites    %s\n", strings.Join(parts, "; "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// FinalTopN is how many creation sites the final report lists.
const FinalTopN = 20

// WriteFinal writes the full report a person reads at the end of a trace.
func WriteFinal(w io.Writer, r *Report) error {
	var b strings.Builder
	g := r.Goroutines
	fmt.Fprintf(&b, "gmpwatch report: %s traced, %d events, %d lost\n", FormatNs(r.DurationNs), r.Events, r.LostEvents)
	if r.LostEvents > 0 {
		fmt.Fprintf(&b, "WARNING: %d events were lost; counts below miss them\n", r.LostEvents)
	}
	fmt.Fprintf(&b, "\nGoroutines: created %d, exited %d, alive %d (running %d, runnable %d, waiting %d, syscall %d); seen mid-life %d\n",
		g.Created, g.Exited, g.Alive, g.Running, g.Runnable, g.Waiting, g.Syscall, g.Preexisting)
	if g.Untracked > 0 || g.UntrackedEvents > 0 {
		fmt.Fprintf(&b, "WARNING: %d goroutines not tracked, %d events about untracked goroutines (state bound reached): alive is a lower bound, their latencies are not measured\n", g.Untracked, g.UntrackedEvents)
	}

	l := r.SchedLatency
	fmt.Fprintf(&b, "\nScheduling latency (runnable -> running): %d samples\n", l.Count)
	if l.Count > 0 {
		fmt.Fprintf(&b, "  p50 %s  p90 %s  p99 %s  max %s  mean %s\n", FormatNs(l.P50Ns), FormatNs(l.P90Ns), FormatNs(l.P99Ns), FormatNs(l.MaxNs), FormatNs(l.MeanNs))
		writeHistogram(&b, bucketsToPow2(l.Histogram))
	}

	if len(r.WaitReasons) > 0 {
		fmt.Fprintf(&b, "\nWait reasons (ended waits, and goroutines waiting now):\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "  reason\tcount\ttotal\tmean\twaiting now\t\n")
		for _, wr := range r.WaitReasons {
			mean := uint64(0)
			if wr.Count > 0 {
				mean = wr.TotalNs / wr.Count
			}
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%d\t\n", wr.Reason, wr.Count, FormatNs(wr.TotalNs), FormatNs(mean), wr.WaitingNow)
		}
		tw.Flush()
	}

	if len(r.CreationSites) > 0 {
		fmt.Fprintf(&b, "\nCreation sites (go statements):\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  created\texited\talive\tsite\n")
		for i, s := range r.CreationSites {
			if i == FinalTopN {
				fmt.Fprintf(tw, "  \t\t\t%d more sites\n", len(r.CreationSites)-i)
				break
			}
			where := s.Function
			if s.File != "" {
				where = fmt.Sprintf("%s %s:%d", s.Function, s.File, s.Line)
			}
			fmt.Fprintf(tw, "  %d\t%d\t%d\t%s\n", s.Created, s.Exited, s.Alive, where)
		}
		tw.Flush()
	}

	fmt.Fprintf(&b, "\nThreads: %d created%s; preemptions %d, yields %d; syscalls %d (%s)\n",
		r.ThreadsCreated, threadsWhy(r.ThreadsWhy), r.Preemptions, r.Yields, r.Syscalls.Count, FormatNs(r.Syscalls.TotalNs))
	if r.HeapGrows > 0 {
		fmt.Fprintf(&b, "Heap grew %d times, %s asked\n", r.HeapGrows, FormatBytes(r.HeapGrowBytes))
	}
	if len(r.Procs) > 0 {
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "  P\truns\tbusy\tbusy%%\t\n")
		for _, p := range r.Procs {
			fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\t\n", p.ID, p.GoroutinesRun, FormatNs(p.BusyNs), percent(p.BusyNs, r.DurationNs))
		}
		tw.Flush()
	}
	if len(r.Threads) > 0 {
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "  M\tTID\truns\tbusy\tbusy%%\t\n")
		for _, t := range r.Threads {
			id := strconv.FormatInt(t.MID, 10)
			if t.MID < 0 {
				id = "?"
			}
			if t.Created {
				id += "*"
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%s\t%s\t\n", id, t.TID, t.GoroutinesRun, FormatNs(t.BusyNs), percent(t.BusyNs, r.DurationNs))
		}
		tw.Flush()
		fmt.Fprintf(&b, "  (* created while traced)\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func percent(part, whole uint64) string {
	if whole == 0 {
		return "-"
	}
	return strconv.FormatFloat(100*float64(part)/float64(whole), 'f', 1, 64) + "%"
}

// bucketsToPow2 coarsens log-linear buckets to powers of two.
func bucketsToPow2(bs []Bucket) []Bucket {
	var h Histogram
	for _, b := range bs {
		h.counts[bucketOf(b.LoNs)] += b.Count
		h.n += b.Count
	}
	return h.Pow2Buckets()
}

// writeHistogram draws a log-scale histogram with bars of '#'.
func writeHistogram(b *strings.Builder, bs []Bucket) {
	const width = 40
	var max uint64
	for _, x := range bs {
		if x.Count > max {
			max = x.Count
		}
	}
	if max == 0 {
		return
	}
	tw := tabwriter.NewWriter(b, 0, 0, 1, ' ', tabwriter.AlignRight)
	for _, x := range bs {
		n := int((x.Count*width + max - 1) / max)
		fmt.Fprintf(tw, "  %s\t..\t%s\t%d\t |%s\n", FormatNs(x.LoNs), FormatNs(x.HiNs+1), x.Count, strings.Repeat("#", n))
	}
	tw.Flush()
}

// threadsWhy lists who asked for the threads: " (runtime.startm 3, ...)".
func threadsWhy(why []ThreadReason) string {
	if len(why) == 0 {
		return ""
	}
	parts := make([]string, len(why))
	for i, w := range why {
		parts[i] = fmt.Sprintf("%s %d", w.Function, w.Count)
	}
	return " (by " + strings.Join(parts, ", ") + ")"
}

// FormatBytes renders a byte count for people: 512 B, 4.0 MiB.
func FormatBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
