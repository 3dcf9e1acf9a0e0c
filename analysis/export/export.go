// Package export renders a gmpwatch session (a recording, or a live run) in
// the formats the Go world reads:
//
//   - pprof: a gzipped profile.proto (github.com/google/pprof/profile) with
//     the sample types goroutines/count (goroutines created, by creation
//     stack; label start_function), alive/count (of those, still alive at
//     the end), delay/nanoseconds (scheduling delay, runnable to running, by
//     the stack at which the goroutine became runnable: its park stack when
//     it was readied, its creation stack when it was created, as
//     `go tool trace -pprof=sched` charges it; first runs included, which
//     that tool leaves out), blocks/count and blocking/nanoseconds
//     (time parked, by park stack; label reason = the wait reason),
//     alloc_objects/count and alloc_space/bytes (sampled allocations scaled
//     as the heap profile is) and threads/count (threads created, by the
//     stack that asked). `go tool pprof -sample_index=blocking FILE`.
//   - perfetto: Chrome trace-event JSON for ui.perfetto.dev: process "Ps"
//     with a track per P and process "Ms" with a track per M; a slice per
//     goroutine run on both; instants for create, park and ready; a flow from
//     each create to the new goroutine's first run; counters "goroutines"
//     (alive) and "threads" (created).
//   - jsonl: one event per line, see JSONLSchema.
//   - folded: folded stacks ("root;...;leaf value"), one sample type
//     (blocking by default), for flame graph tools.
//   - text: the report of the live command, then the four paths.
package export

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/paths"
	"github.com/gmpwatch/gmpwatch/analysis/record"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
)

// Formats are the names Render accepts.
var Formats = []string{"pprof", "perfetto", "jsonl", "folded", "text"}

// ErrFormat is returned for an unknown format name.
var ErrFormat = errors.New("unknown format")

// Input is what the exports render.
type Input struct {
	Meta  record.Meta
	Stats record.Stats
	// Sched is the final report of the scheduler model.
	Sched *sched.Report
	// Paths is the paths model fed with the same events.
	Paths *paths.Model
	// Replay calls fn for every event in order; nil when the events were
	// not kept (perfetto and jsonl need them).
	Replay func(fn func(ev *event.Event))
	// Symbolize resolves PCs; shared with Paths.
	Symbolize gobin.Symbolize
	// Truncated says where a damaged recording stopped ("" when whole).
	Truncated string
	// Sites is an extra text section (source sites from --src), or "".
	Sites string
	// Sample names the folded sample type; "" means "blocking".
	Sample string
}

// Render writes in in format to w.
func Render(w io.Writer, format string, in *Input) error {
	switch format {
	case "pprof":
		p, err := Profile(in)
		if err != nil {
			return err
		}
		return p.Write(w)
	case "perfetto":
		return Perfetto(w, in)
	case "jsonl":
		return JSONL(w, in)
	case "folded":
		return Folded(w, in)
	case "text":
		return Text(w, in)
	}
	return fmt.Errorf("%w %q (want one of %s)", ErrFormat, format, strings.Join(Formats, ", "))
}

// Options tune FromRecording.
type Options struct {
	MemProfileRate int64
}

// FromRecording replays a recording into the scheduler and paths models.
// The scheduler report ends at the last event, as the record command's own
// rendering does.
func FromRecording(rec *record.Recording, opts Options) *Input {
	sym := rec.Symbolize
	in := &Input{Meta: rec.Meta, Stats: rec.Stats, Symbolize: sym, Truncated: rec.Truncated}
	var wr []string
	if rec.Meta.Plan != nil {
		wr = rec.Meta.Plan.WaitReasons
	}
	sm := sched.New(sched.Config{WaitReasons: wr, Symbolize: sym})
	pm := paths.New(paths.Config{WaitReasons: wr, Symbolize: sym, Stacks: func(id int32) []uint64 { return rec.Stacks[id] },
		MemProfileRate: opts.MemProfileRate})
	if rec.Stats.GCCycles != nil {
		pm.SetGCCycles(*rec.Stats.GCCycles)
	}
	for i := range rec.Events {
		sm.Handle(&rec.Events[i])
		pm.Handle(&rec.Events[i])
	}
	sm.SetLost(rec.Stats.Lost)
	in.Sched = sm.Total(0)
	in.Paths = pm
	in.Replay = func(fn func(ev *event.Event)) {
		for i := range rec.Events {
			fn(&rec.Events[i])
		}
	}
	return in
}

// Text writes the live command's final report, the four paths and, with
// the recording's probe counters, what each probe cost.
func Text(w io.Writer, in *Input) error {
	if in.Truncated != "" {
		if _, err := fmt.Fprintf(w, "NOTE: incomplete recording, %s\n", in.Truncated); err != nil {
			return err
		}
	}
	if err := sched.WriteFinal(w, in.Sched); err != nil {
		return err
	}
	if err := paths.WriteText(w, in.Paths.Report()); err != nil {
		return err
	}
	if len(in.Meta.Programs) > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "\nProbes on: %s\n", strings.Join(in.Meta.Programs, ", "))
		names := make([]string, 0, len(in.Stats.Hits))
		for n := range in.Stats.Hits {
			names = append(names, n)
		}
		sort.Strings(names)
		secs := in.Stats.Duration.Seconds()
		for _, n := range names {
			rate := 0.0
			if secs > 0 {
				rate = float64(in.Stats.Hits[n]) / secs
			}
			fmt.Fprintf(&b, "  %-16s %d hits (%.0f/s)\n", n, in.Stats.Hits[n], rate)
		}
		if _, err := io.WriteString(w, b.String()); err != nil {
			return err
		}
	}
	if in.Sites != "" {
		if _, err := io.WriteString(w, "\n"+in.Sites); err != nil {
			return err
		}
	}
	return nil
}
