package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/budget"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
	"github.com/gmpwatch/gmpwatch/ebpf"
	"github.com/gmpwatch/gmpwatch/internal/session"
)

func init() {
	register(&command{
		name:    "top",
		usage:   "[top] -p PID | -- CMD ARGS [-i 1s] [-d DUR] [--json] [--no-tui] [--overhead 2%|max]",
		summary: "trace the scheduler: a summary every interval and a final report",
		run:     runTop,
	})
}

// topFlags are the parsed arguments of the top command.
type topFlags struct {
	pid      int
	interval time.Duration
	duration time.Duration
	json     bool
	noTUI    bool // interval text even on a terminal
	overhead budget.Spec
	cmd      []string // after --
}

func parseTopFlags(args []string) (*topFlags, error) {
	f := &topFlags{}
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.IntVar(&f.pid, "p", 0, "trace the running process `PID`")
	fs.DurationVar(&f.interval, "i", time.Second, "print a summary every `interval`")
	fs.DurationVar(&f.duration, "d", 0, "stop after `duration` (0: until Ctrl-C or the target exits)")
	fs.BoolVar(&f.json, "json", false, "print every summary and the final report as one JSON object a line")
	fs.BoolVar(&f.noTUI, "no-tui", false, "print interval text instead of the live view on a terminal")
	overhead := fs.String("overhead", "2%", "probe cost budget: a share of the target's CPU time (hot probes are sampled in windows), or max: every event")
	if err := fs.Parse(args); err != nil {
		return nil, usageErrorf("%v", err)
	}
	var err error
	if f.cmd, err = commandArgs(args, fs.Args()); err != nil {
		return nil, err
	}
	if f.overhead, err = budget.Parse(*overhead); err != nil {
		return nil, usageErrorf("--overhead: %v", err)
	}
	switch {
	case f.pid != 0 && len(f.cmd) > 0:
		return nil, usageErrorf("give -p PID or -- CMD, not both")
	case f.pid == 0 && len(f.cmd) == 0:
		return nil, usageErrorf("nothing to trace: give -p PID or -- CMD ARGS")
	case f.pid < 0:
		return nil, usageErrorf("-p %d: not a process ID", f.pid)
	case f.interval <= 0:
		return nil, usageErrorf("-i %v: the interval must be positive", f.interval)
	case f.duration < 0:
		return nil, usageErrorf("-d %v: the duration must not be negative", f.duration)
	}
	return f, nil
}

func runTop(ctx context.Context, env *cmdEnv, args []string) (err error) {
	f, err := parseTopFlags(args)
	if err != nil {
		return err
	}

	// The target: a running process, or a command started stopped before
	// its first instruction and released once the probes are on. Under the
	// live view a command's output would draw over the screen: it goes to a
	// log file, named at the end, and it reads no terminal input.
	live := wantLiveView(f, env)
	childIn, childOut, childErr := env.stdin, env.stdout, env.stderr
	if live && len(f.cmd) > 0 {
		childIn = strings.NewReader("") // keystrokes are the view's
		logf, err := os.CreateTemp("", "gmpwatch-"+filepath.Base(f.cmd[0])+"-*.log")
		if err != nil {
			return err
		}
		defer func() {
			logf.Close()
			fmt.Fprintf(env.stderr, "The output of %s is in %s.\n", f.cmd[0], logf.Name())
		}()
		childOut, childErr = logf, logf
	}
	// Under a budget, the figures that need no per-event record come from
	// the in-kernel aggregates, and the programs that feed nothing else
	// stream no event.
	budgeted := !f.overhead.Max
	cfg := session.Config{PID: f.pid, Command: f.cmd, NoStacks: true, Stdin: childIn, Stdout: childOut, Stderr: childErr}
	if budgeted {
		cfg.Aggregates, cfg.NoStreamPrograms = true, ebpf.KernelOnlyPrograms
	}
	sess, err := session.Start(cfg)
	if err != nil {
		return err
	}
	defer sess.Close()
	pid, p := sess.PID, sess.Plan

	model := sched.New(sched.Config{WaitReasons: p.WaitReasons, Symbolize: sess.Sym.Symbolize})

	fmt.Fprintf(env.stderr, "Tracing PID %d (%s): %d probes. Ctrl-C to end.\n", pid, p.GoVersion, len(sess.Tracer.Probes()))

	if err := sess.Run(model.Handle); err != nil {
		return err
	}
	// Under a budget the hot probes come and go in windows; the model is
	// told, so it measures nothing across the time they were off.
	var win *ebpf.Windowed
	var exact *runtimeSampler
	var kern *kernelReader
	stopWindows := func() {}
	if budgeted {
		kern = &kernelReader{tr: sess.Tracer}
		cal, err := ebpf.Calibrated("")
		if err != nil {
			return fmt.Errorf("calibrate the probe cost: %w", err)
		}
		win, err = ebpf.NewWindowed(sess.Tracer, p, ebpf.WindowOptions{Budget: f.overhead, Calibration: cal,
			OnWindow: func(open bool, mono time.Duration) {
				sess.Lock()
				defer sess.Unlock()
				if open {
					model.WindowOpened(uint64(mono))
				} else {
					model.WindowClosed(uint64(mono))
				}
			}})
		if err != nil {
			return err
		}
		wctx, wstop := context.WithCancel(ctx)
		winDone := make(chan struct{})
		go func() {
			defer close(winDone)
			win.Run(wctx)
		}()
		// The windows end before the trace's end is taken, so that no
		// window closes after it (a busy span would outlast the trace).
		stopWindows = func() {
			wstop()
			<-winDone
		}
		defer stopWindows()
		// The figures the runtime counts itself stay exact: read them
		// from its memory each interval.
		exact = newRuntimeSampler(ctx, p, sess.Launched(), f.interval)
		defer exact.close()
	}
	if sess.Launched() {
		defer func() {
			// Ended before the command: it runs on untraced; pass on its
			// status when it ends.
			if code := sess.Finish(ctx); err == nil && code != 0 {
				err = &exitError{code: code}
			}
		}()
	}

	// On a terminal, the live view (tui.go) shows the intervals; quitting it
	// ends ctx. It is closed, restoring the terminal, before the final report.
	var lv *liveView
	if live {
		lv, ctx = startLiveView(ctx, env, sess, f.interval, f.overhead.String())
		if win != nil {
			lv.budget = func() string { return win.Report().Line() }
		}
		if exact != nil {
			lv.allgs = exact.allgs // one scan for both
		}
		defer lv.close()
	}

	emit := func(r *sched.Report, rt *runtimeFigures) error {
		if lv != nil {
			if r.Kind != sched.KindFinal {
				lv.show(r, rt)
				return nil
			}
			lv.close()
		}
		var over *budget.Report
		if win != nil {
			rep := win.Report()
			over = &rep
		}
		if f.json {
			b, err := json.Marshal(struct {
				*sched.Report
				Overhead *budget.Report  `json:"overhead,omitempty"`
				Runtime  *runtimeFigures `json:"runtime,omitempty"`
			}{r, over, rt})
			if err != nil {
				return err
			}
			b = append(b, '\n')
			_, err = env.stdout.Write(b)
			return err
		}
		write := sched.WriteInterval
		if r.Kind == sched.KindFinal {
			write = sched.WriteFinal
		}
		if err := write(env.stdout, r); err != nil || over == nil {
			return err
		}
		if _, err := fmt.Fprintf(env.stdout, "Overhead: %s\n", over.Line()); err != nil || rt == nil {
			return err
		}
		return writeRuntimeFigures(env.stdout, rt)
	}

	if err := sess.Loop(ctx, f.duration, f.interval, func() error {
		now := session.MonotonicNow()
		lost := sess.Stats().Lost
		rt := exact.interval(ctx)
		var agg *ebpf.Aggregates
		if kern != nil {
			agg = kern.interval()
		}
		sess.Lock()
		model.SetLost(lost)
		r := model.Snapshot(now)
		if agg != nil {
			model.UseKernel(r, kernelFigures(agg, exact.scan()))
		}
		model.Reset(now)
		sess.Unlock()
		if err := emit(r, rt); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		return nil
	}); err != nil {
		return err
	}

	// Drain what the ring buffer holds, detach every probe, report.
	stopWindows()
	now := session.MonotonicNow()
	readErr := sess.Stop()
	rt := exact.total(context.Background())
	sess.Lock()
	model.SetLost(sess.Stats().Lost)
	final := model.Total(now)
	if kern != nil {
		if agg := kern.total(); agg != nil {
			model.UseKernel(final, kernelFigures(agg, exact.scan()))
		}
	}
	sess.Unlock()
	if err := emit(final, rt); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return readErr
}
