package regress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Outcome is what one measured run of a command gives.
type Outcome struct {
	Metrics Metrics
	// ExitStatus is the command's exit status, -1 if a signal ended it.
	ExitStatus int
	// Signal names the signal that ended the command, if one did.
	Signal string
	// GoVersion is the measured program's Go release, when known.
	GoVersion string
}

// ErrNotStarted: a measurer could not start the command, or stopped it
// before its first instruction (it could not be measured): the command did
// not run.
var ErrNotStarted = errors.New("command not started")

// Measurer measures one run of a command. A Measurer is used once.
type Measurer interface {
	// Method is how it measures: MethodEBPF or MethodRuntimeHistogram. A
	// measurer that decides at its run (one that falls back) tells, after
	// Run, the method it used.
	Method() string
	// Run starts argv under measurement, with an empty standard input and
	// its output to stdout and stderr (nil: discarded), waits for it to end
	// and returns what was measured. When ctx is done it kills the command
	// (SIGKILL) and returns what it can. A command that fails is no error:
	// its status is in the Outcome. An error means the run could not be
	// measured; it wraps ErrNotStarted when the command did not run.
	Run(ctx context.Context, argv []string, stdout, stderr *os.File) (Outcome, error)
}

// Runner runs commands N times under a Measurer.
type Runner struct {
	// N is the number of runs of each command.
	N int
	// NewMeasurer returns a fresh Measurer for each run.
	NewMeasurer func() Measurer
	// Method is NewMeasurer's method, recorded in the records; when empty,
	// the records take the method the first run's measurer used. Every run
	// of a record must be measured the same way.
	Method string
	// Progress receives a line per run ("run 3/10 new: ..."); may be nil.
	Progress io.Writer
	// OutputTail is how many bytes of a failed run's output are kept
	// (default 4096).
	OutputTail int
	// Timeout ends a run that takes longer (0: no limit).
	Timeout time.Duration
}

// Run runs cmd N times, and base N times when it is not empty, interleaved
// (base, new, new, base, base, new, ...: alternating which goes first
// spreads slow drifts of the machine over both). It stops at the first run
// that fails: that run is in the record, with its output, and the error
// wraps ErrFailedRun. The records hold every run made.
func (r *Runner) Run(ctx context.Context, cmd, base []string) (newRec, baseRec *Record, err error) {
	if r.N < 1 {
		return nil, nil, fmt.Errorf("need at least one run, have %d", r.N)
	}
	if len(cmd) == 0 {
		return nil, nil, errors.New("no command to run")
	}
	newRec = NewRecord("new", r.Method, cmd)
	if len(base) > 0 {
		baseRec = NewRecord("base", r.Method, base)
	}
	for i := 1; i <= r.N; i++ {
		order := []*Record{newRec}
		if baseRec != nil {
			order = []*Record{baseRec, newRec}
			if i%2 == 0 {
				order = []*Record{newRec, baseRec}
			}
		}
		for _, rec := range order {
			if err := ctx.Err(); err != nil {
				return newRec, baseRec, err
			}
			run := r.runOnce(ctx, rec.Command, i)
			rec.Runs = append(rec.Runs, run.Run)
			if rec.GoVersion == "" {
				rec.GoVersion = run.goVersion
			}
			if rec.Method == "" {
				rec.Method = run.method
			} else if run.method != "" && run.method != rec.Method {
				return newRec, baseRec, fmt.Errorf("run %d/%d of %s was measured by %s, the runs before by %s", i, r.N, rec.Label, run.method, rec.Method)
			}
			if r.Progress != nil {
				fmt.Fprintf(r.Progress, "run %d/%d %s: %s\n", i, r.N, rec.Label, run.progress())
			}
			if run.Failed() {
				return newRec, baseRec, fmt.Errorf("%w: run %d/%d of %s (%s): %s", ErrFailedRun, i, r.N, rec.Label, strings.Join(rec.Command, " "), describeFailure(&run.Run))
			}
		}
	}
	return newRec, baseRec, nil
}

type runResult struct {
	Run
	goVersion string
	method    string
}

func (r *runResult) progress() string {
	if r.Failed() {
		return "FAILED: " + describeFailure(&r.Run)
	}
	l := r.Metrics.SchedLatency
	return fmt.Sprintf("%v, %d latencies, p50 %v p99 %v max %v", time.Duration(r.WallNS).Round(time.Millisecond),
		l.Count, time.Duration(l.P50NS), time.Duration(l.P99NS), time.Duration(l.MaxNS))
}

func (r *Runner) runOnce(ctx context.Context, argv []string, index int) runResult {
	res := runResult{Run: Run{Index: index}}
	pr, pw, err := os.Pipe()
	if err != nil {
		res.ExitStatus = -1
		res.Error = err.Error()
		return res
	}
	defer pr.Close()
	tailSize := r.OutputTail
	if tailSize <= 0 {
		tailSize = 4096
	}
	out := &tailBuffer{max: tailSize}
	copied := make(chan struct{})
	go func() {
		io.Copy(out, pr)
		close(copied)
	}()

	// Cancellation and the timeout end runCtx: the measurer kills the
	// process and still sees it end.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if r.Timeout > 0 {
		runCtx, cancel = context.WithTimeout(ctx, r.Timeout)
		defer cancel()
	}
	m := r.NewMeasurer()
	start := time.Now()
	o, merr := m.Run(runCtx, argv, pw, pw)
	pw.Close()
	res.WallNS = time.Since(start).Nanoseconds()
	res.method = m.Method()
	// A background grandchild may keep the pipe open: wait a little, then
	// take what came.
	select {
	case <-copied:
	case <-time.After(2 * time.Second):
		pr.Close()
		<-copied
	}
	res.Metrics, res.ExitStatus, res.Signal, res.goVersion = o.Metrics, o.ExitStatus, o.Signal, o.GoVersion
	switch {
	case ctx.Err() != nil:
		res.Error = "cancelled"
	case runCtx.Err() != nil:
		res.Error = fmt.Sprintf("timed out after %v", r.Timeout)
	}
	if merr != nil && res.Error == "" {
		if errors.Is(merr, ErrNotStarted) {
			res.ExitStatus = -1
			res.Error = merr.Error()
		} else {
			res.Error = "not measured: " + merr.Error()
		}
	}
	if res.Failed() {
		res.Output = out.String()
	}
	return res
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	dropped int64
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.dropped += int64(over)
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dropped > 0 {
		return fmt.Sprintf("[%d bytes before this cut]\n%s", t.dropped, t.buf)
	}
	return string(t.buf)
}

// SplitCommand splits a command line the way a POSIX shell splits words:
// blanks separate, single quotes keep everything, double quotes keep all
// but backslash escapes of \ " $ `, a backslash outside quotes escapes the
// next character. It expands nothing.
func SplitCommand(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			inWord = true
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ' in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case c == '"':
			inWord = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\\\"$`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated \" in %q", s)
			}
		case c == '\\':
			inWord = true
			if i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			}
		default:
			inWord = true
			cur.WriteByte(c)
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}
