// Package regress is gmpwatch's scheduler-latency regression check for CI:
// the per-run record that `gmpwatch ci run` writes (a versioned JSON
// document), the comparison of two records with the statistics benchstat
// uses (golang.org/x/perf/benchmath: medians with confidence intervals and
// the Mann-Whitney U test), the verdict (regression or not, or too few runs
// for any verdict), and the renderers (text, benchstat lines, markdown,
// JUnit XML).
//
// It also defines how one run is measured (Measurer) and runs a command N
// times, interleaved with a baseline command, under a Measurer (Runner).
package regress

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Schema identifies a gmpwatch CI record; Version is bumped on any change
// that an older reader would misread.
const (
	Schema  = "gmpwatch.ci.record"
	Version = 1
)

// Measurement methods, as stored in Record.Method.
const (
	// MethodEBPF: uprobes on the runtime's scheduler, every transition.
	MethodEBPF = "ebpf"
	// MethodRuntimeHistogram: the runtime's own sched.timeToRun histogram
	// (about 1 transition in 8 is sampled), read from the process's memory
	// when it exits.
	MethodRuntimeHistogram = "runtime-histogram"
)

// Sentinel errors. Callers match them with errors.Is.
var (
	// ErrBadRecord: the file is not a gmpwatch CI record or is malformed.
	ErrBadRecord = errors.New("not a valid gmpwatch ci record")
	// ErrTooFewRuns: the two records hold too few runs for the test to
	// ever reach significance.
	ErrTooFewRuns = errors.New("too few runs")
	// ErrFailedRun: a record holds a run whose command failed.
	ErrFailedRun = errors.New("a run failed")
	// ErrIncomparable: the records were measured in different ways.
	ErrIncomparable = errors.New("records are not comparable")
)

// Record is what `gmpwatch ci run` writes: every run of one command.
type Record struct {
	Schema  string `json:"schema"`
	Version int    `json:"version"`
	// Label names the side of a comparison: "base" or "new" by default.
	Label string `json:"label,omitempty"`
	// Command is the command line that was run (argv).
	Command []string `json:"command"`
	// Method is how each run was measured: MethodEBPF or MethodRuntimeHistogram.
	Method string `json:"method"`
	// GoVersion is the measured program's Go release, when known.
	GoVersion string `json:"go_version,omitempty"`
	Runs      []Run  `json:"runs"`
}

// Run is one run of the command.
type Run struct {
	// Index is the 1-based number of the run within its record.
	Index int `json:"index"`
	// ExitStatus is the command's exit status; -1 when a signal ended it.
	ExitStatus int `json:"exit_status"`
	// Signal names the signal that ended the command, if one did.
	Signal string `json:"signal,omitempty"`
	// WallNS is the run's elapsed time. It is recorded, never compared:
	// timing on a shared CI runner is not what this check is about.
	WallNS int64 `json:"wall_ns"`
	// Output holds the tail of the command's output when the run failed.
	Output string `json:"output,omitempty"`
	// Error says why a run could not be measured, if it could not.
	Error   string  `json:"error,omitempty"`
	Metrics Metrics `json:"metrics"`
}

// Failed reports whether the run's command failed or the run could not be measured.
func (r *Run) Failed() bool { return r.ExitStatus != 0 || r.Signal != "" || r.Error != "" }

// Latency is a scheduling-latency distribution: the time from a goroutine
// becoming runnable to it running.
type Latency struct {
	// Count is the number of latencies in the distribution (with
	// MethodRuntimeHistogram, the sampled ones: about 1 in 8).
	Count  uint64 `json:"count"`
	P50NS  int64  `json:"p50_ns"`
	P90NS  int64  `json:"p90_ns"`
	P99NS  int64  `json:"p99_ns"`
	P999NS int64  `json:"p99_9_ns"`
	MaxNS  int64  `json:"max_ns"`
}

// Metrics is what one run measured. A nil pointer or map is "not measured"
// (the method could not see it), which is different from zero.
type Metrics struct {
	SchedLatency Latency `json:"sched_latency"`
	// GoroutinesCreated counts goroutines created during the run.
	GoroutinesCreated *int64 `json:"goroutines_created,omitempty"`
	// ThreadsCreated counts OS threads (Ms) the runtime created. With
	// MethodRuntimeHistogram it is the Ms on runtime.allm at exit: a thread
	// that ended with a locked goroutine is not counted.
	ThreadsCreated *int64 `json:"threads_created,omitempty"`
	// BlockedNSByReason is the total time goroutines spent blocked, by
	// wait reason ("chan receive", "select", ...). The runtime keeps no
	// such total: MethodRuntimeHistogram leaves it nil.
	BlockedNSByReason map[string]int64 `json:"blocked_ns_by_reason,omitempty"`
}

// NewRecord returns an empty record for a command.
func NewRecord(label, method string, command []string) *Record {
	return &Record{Schema: Schema, Version: Version, Label: label, Method: method, Command: command}
}

// Validate checks the record's schema and contents.
func (r *Record) Validate() error {
	if r.Schema != Schema {
		return fmt.Errorf("%w: schema %q, want %q", ErrBadRecord, r.Schema, Schema)
	}
	if r.Version < 1 || r.Version > Version {
		return fmt.Errorf("%w: version %d, this gmpwatch reads versions 1 to %d", ErrBadRecord, r.Version, Version)
	}
	switch r.Method {
	case MethodEBPF, MethodRuntimeHistogram:
	default:
		return fmt.Errorf("%w: unknown method %q", ErrBadRecord, r.Method)
	}
	for i := range r.Runs {
		run := &r.Runs[i]
		l := run.Metrics.SchedLatency
		if l.P50NS < 0 || l.P50NS > l.P90NS || l.P90NS > l.P99NS || l.P99NS > l.P999NS || l.P999NS > l.MaxNS {
			return fmt.Errorf("%w: run %d: latency quantiles out of order (p50 %d, p90 %d, p99 %d, p99.9 %d, max %d)",
				ErrBadRecord, run.Index, l.P50NS, l.P90NS, l.P99NS, l.P999NS, l.MaxNS)
		}
	}
	return nil
}

// FirstFailure returns the first failed run, or nil.
func (r *Record) FirstFailure() *Run {
	for i := range r.Runs {
		if r.Runs[i].Failed() {
			return &r.Runs[i]
		}
	}
	return nil
}

// ReadRecord reads and validates a record.
func ReadRecord(rd io.Reader) (*Record, error) {
	dec := json.NewDecoder(rd)
	dec.DisallowUnknownFields()
	var r Record
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// LoadRecord reads and validates the record in a file.
func LoadRecord(path string) (*Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := ReadRecord(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// Write writes the record as indented JSON.
func (r *Record) Write(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// Save writes the record to a file, atomically, making its directory.
func (r *Record) Save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := r.Write(f); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}
