// Command bench-overhead measures what gmpwatch costs the programs it traces
// (issue 6). As root, from the repository:
//
//	go run ./scripts/bench-overhead [-reps 5] [-d 10s]
//
// It builds the targets (testdata/storm: ping-pong, spawn and alloc on
// GOMAXPROCS=2; testdata/httpserver with a loopback load generator in this
// process, 127.0.0.1 only, bounded in time; testdata/bigbin, a ~48 MB binary
// with DWARF). Each configuration runs side by side with an untraced twin:
// two copies of the target start together, one under the configuration,
// and the ratio of their throughputs is the configuration's cost. On a
// shared machine whose speed drifts by tens of percent from one run to the
// next, the twins see the same drift (each gets about one core); the
// "untraced" configuration (two untraced twins) shows what is left of the
// noise. Configurations, interleaved and repeated:
//
//	untraced        the twin alone: the method's own spread (A/A)
//	default         gmpwatch's probes under the default budget (2%, windows)
//	max             every event (--overhead max)
//	rtrace          the target's own runtime/trace on (-trace FILE)
//	bpftrace        bpftrace counting hits on the same functions (if installed)
//	bpftrace-print  bpftrace printing a line per hit, as a tool delivering
//	                every event to user space does
//
// The traced configurations run gmpwatch in this process as the live command
// does: plan, attach, ring buffer read into the scheduler model
// (analysis/sched), budget windows (ebpf.Windowed). It prints, per workload,
// the ratio to the twin (median and min–max), gmpwatch's own CPU, and, from
// a run with the kernel's BPF run-time statistics on (they cost a little, so
// only there), what each probe hit cost; then the time from start to probes
// live on the big binary.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/budget"
	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/exectrace"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
	"github.com/gmpwatch/gmpwatch/ebpf"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

var (
	reps     = flag.Int("reps", 3, "repetitions of each configuration")
	dur      = flag.Duration("d", 10*time.Second, "length of one run")
	conns    = flag.Int("conns", 8, "load generator connections")
	only     = flag.String("only", "", "comma-separated workloads: storm,http,perhit,accuracy,startup (default all)")
	cfgList  = flag.String("configs", "untraced,default,max,rtrace,bpftrace,bpftrace-print", "configurations")
	cpuProf  = flag.String("cpuprofile", "", "write this process's CPU profile (gmpwatch's own cost) to `file`")
	progList = flag.String("programs", "schedule,execute,gopark,ready,goschedImpl,goexit0,newproc_runqput,newm,injectglist", "BPF programs attached")
)

func main() {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-overhead: run as root (BPF)")
		os.Exit(2)
	}
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-overhead:", err)
			os.Exit(2)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-overhead:", err)
		os.Exit(1)
	}
}

func want(w string) bool {
	return *only == "" || slices.Contains(strings.Split(*only, ","), w)
}

// result is one run of a target.
type result struct {
	ops    float64       // storm: operations; http: requests
	cpu    time.Duration // target CPU time
	self   time.Duration // gmpwatch's CPU time (this process's, storm only)
	hits   uint64        // probe hits (gmpwatch configurations)
	events uint64
	lost   uint64
	bpf    time.Duration // the programs' own run time (BPF stats)
	runs   uint64        // program runs
	rep    *budget.Report
}

// pair is one side-by-side run: the configuration and its untraced twin.
type pair struct{ x, twin result }

type workload struct {
	name    string
	configs []string
	run     func(cfg string) (pair, error)
}

func run() error {
	cal, err := ebpf.Calibrated("")
	if err != nil {
		return err
	}
	fmt.Printf("calibration: %v\n", cal)
	var wls []workload
	configs := strings.Split(*cfgList, ",")
	bt, _ := exec.LookPath("bpftrace")
	if bt == "" {
		configs = slices.DeleteFunc(configs, func(c string) bool { return strings.HasPrefix(c, "bpftrace") })
	}
	if want("storm") {
		bin, err := testtarget.BuildErr("storm", testtarget.Go126, testtarget.Plain)
		if err != nil {
			return err
		}
		wls = append(wls, workload{"storm", configs, func(cfg string) (pair, error) { return runStorm(bin, cfg, cal, bt) }})
	}
	if want("http") {
		bin, err := testtarget.BuildErr("httpserver", testtarget.Go126, testtarget.Plain)
		if err != nil {
			return err
		}
		cs := slices.DeleteFunc(slices.Clone(configs), func(c string) bool { return strings.HasPrefix(c, "bpftrace") })
		wls = append(wls, workload{"http", cs, func(cfg string) (pair, error) { return runHTTP(bin, cfg, cal) }})
	}
	for _, wl := range wls {
		res := map[string][]pair{}
		for r := 0; r < *reps; r++ {
			// Rotate the order so that no configuration always runs first.
			for i := range wl.configs {
				cfg := wl.configs[(i+r)%len(wl.configs)]
				x, err := wl.run(cfg)
				if err != nil {
					return fmt.Errorf("%s %s: %w", wl.name, cfg, err)
				}
				res[cfg] = append(res[cfg], x)
				fmt.Fprintf(os.Stderr, "%s rep %d %-14s %10.0f ops/s (twin %10.0f) ratio %.3f cpu %6.2fs hits %d\n",
					wl.name, r+1, cfg, x.x.ops/dur.Seconds(), x.twin.ops/dur.Seconds(), x.x.ops/x.twin.ops, x.x.cpu.Seconds(), x.x.hits)
			}
		}
		printTable(wl, res)
	}
	if want("storm") && want("perhit") {
		if err := perHit(cal); err != nil {
			return err
		}
	}
	if want("accuracy") {
		if err := accuracy(cal); err != nil {
			return err
		}
	}
	if want("startup") {
		if err := startup(cal); err != nil {
			return err
		}
	}
	return nil
}

func printTable(wl workload, res map[string][]pair) {
	fmt.Printf("\n%s (%d reps of %v, interleaved; ratio = throughput / its untraced twin's, run side by side)\n", wl.name, *reps, *dur)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\tops/s (median)\tratio median\tmin\tmax\thits/s\tevents lost\tgmpwatch CPU\tduty\tbudget report\t")
	ratio := map[string]float64{}
	for _, cfg := range wl.configs {
		rs := res[cfg]
		var ratios, opsps []float64
		var hits, lost, self float64
		for _, x := range rs {
			opsps = append(opsps, x.x.ops/dur.Seconds())
			ratios = append(ratios, x.x.ops/x.twin.ops)
			hits += float64(x.x.hits)
			lost += float64(x.x.lost)
			self += x.x.self.Seconds()
		}
		ratio[cfg] = median(ratios)
		duty, line := "", ""
		if last := rs[len(rs)-1].x.rep; last != nil {
			duty = fmt.Sprintf("%.2f%%", last.DutyCycle*100)
			line = fmt.Sprintf("est %.2f%% meas %.2f%% win %.0f+%.0fms/%.1fs", last.EstimatedCost*100, last.MeasuredCost*100, last.WindowMs, last.OpenCloseMs, last.PeriodMs/1e3)
		}
		hs, ls, ss := "", "", ""
		if hits > 0 {
			hs = fmt.Sprintf("%.0f", hits/float64(len(rs))/dur.Seconds())
			ls = fmt.Sprintf("%.0f", lost)
		}
		if self > 0 {
			ss = fmt.Sprintf("%.1f%%", 100*self/float64(len(rs))/dur.Seconds())
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t%s\t\n", cfg, median(opsps), median(ratios), slices.Min(ratios), slices.Max(ratios), hs, ls, ss, duty, line)
	}
	tw.Flush()
	for _, vs := range [][2]string{{"default", "rtrace"}, {"max", "bpftrace"}, {"max", "bpftrace-print"}} {
		if a, b := ratio[vs[0]], ratio[vs[1]]; a > 0 && b > 0 {
			fmt.Printf("%s vs %s: %.2fx the throughput (ratio of the median ratios)\n", vs[0], vs[1], a/b)
		}
	}
}

// perHit runs the storm under every event with the kernel's BPF run-time
// statistics on, and prints what a hit of each program cost: its own run
// time, and the target's CPU per hit against the calibrated floor.
func perHit(cal *ebpf.Calibration) error {
	bin, err := testtarget.BuildErr("storm", testtarget.Go126, testtarget.Plain)
	if err != nil {
		return err
	}
	c, err := ebpf.EnableRunTimeStats()
	if err != nil {
		return err
	}
	defer c.Close()
	var bpfNs []float64
	for r := 0; r < *reps; r++ {
		x, err := runStorm(bin, "max", cal, "")
		if err != nil {
			return err
		}
		if x.x.runs > 0 {
			bpfNs = append(bpfNs, float64(x.x.bpf)/float64(x.x.runs))
		}
	}
	if len(bpfNs) == 0 {
		return errors.New("per hit: no program runs counted")
	}
	floor := cal.PushNs
	m := median(bpfNs)
	fmt.Printf("\nper hit (storm, every event, %d runs): the programs' own run time %.0f ns (min %.0f, max %.0f) on a calibrated floor of %.0f ns (empty program on PUSHQ BP): %.2fx the floor\n",
		len(bpfNs), m, slices.Min(bpfNs), slices.Max(bpfNs), floor, (floor+m)/floor)
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// gmp is gmpwatch attached to a process as the live command does it.
type gmp struct {
	tr     *ebpf.Tracer
	win    *ebpf.Windowed
	cancel context.CancelFunc
	done   chan error
	n      int
	mu     sync.Mutex // the model is fed by the reader and told of windows
	model  *sched.Model
	plan   *plan.Plan
}

func startGmp(pid int, cfg string, cal *ebpf.Calibration) (*gmp, error) {
	p, err := plan.FromProcess(pid)
	if err != nil {
		return nil, err
	}
	// As the live view: no stacks; under a budget the aggregates give
	// latency, waits and sites, and the programs feeding only them stream
	// nothing; every event (max) streams everything without aggregates.
	opts := ebpf.Options{PID: pid, Programs: strings.Split(*progList, ","), NoStacks: true, NoAggregate: cfg == "max"}
	if cfg != "max" {
		opts.NoStreamPrograms = ebpf.KernelOnlyPrograms
	}
	tr, err := ebpf.Attach(p, opts)
	if err != nil {
		return nil, err
	}
	spec := budget.Default()
	if cfg == "max" {
		spec = budget.Spec{Max: true, Share: 1, FloorCores: budget.DefaultFloorCores}
	}
	g := &gmp{tr: tr, done: make(chan error, 2), n: 2, plan: p,
		model: sched.New(sched.Config{WaitReasons: p.WaitReasons})}
	g.win, err = ebpf.NewWindowed(tr, p, ebpf.WindowOptions{Budget: spec, Calibration: cal,
		OnWindow: func(open bool, mono time.Duration) {
			g.mu.Lock()
			defer g.mu.Unlock()
			if open {
				g.model.WindowOpened(uint64(mono))
			} else {
				g.model.WindowClosed(uint64(mono))
			}
		}})
	if err != nil {
		tr.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go func() {
		g.done <- tr.Run(ctx, func(ev *event.Event) {
			g.mu.Lock()
			g.model.Handle(ev)
			g.mu.Unlock()
		})
	}()
	go func() { g.done <- g.win.Run(ctx) }()
	return g, nil
}

// startGmpReader starts gmpwatch under the default budget and opens the
// target's runtime state with its plan: the accuracy runs compare the
// windows with the runtime's own histogram, read from memory.
func startGmpReader(pid int, cal *ebpf.Calibration) (*gmp, *rtstate.Reader, error) {
	g, err := startGmp(pid, "default", cal)
	if err != nil {
		return nil, nil, err
	}
	rt, err := rtstate.Open(g.plan)
	if err != nil {
		g.stop(&result{})
		return nil, nil, err
	}
	return g, rt, nil
}

// finish stops gmpwatch and returns the scheduling latency its windows saw,
// from the in-kernel aggregates as the live view reports it.
func (g *gmp) finish() (sched.Latency, error) {
	var r result
	err := g.stop(&r)
	g.mu.Lock()
	defer g.mu.Unlock()
	rep := g.model.Total(uint64(rtstate.MonoNow()))
	agg, aerr := g.tr.Aggregates()
	if aerr != nil {
		return rep.SchedLatency, errors.Join(err, aerr)
	}
	g.model.UseKernel(rep, &sched.KernelFigures{Latency: agg.SchedLatency})
	return rep.SchedLatency, err
}

func (g *gmp) stop(r *result) error {
	g.cancel()
	var errs []error
	for i := 0; i < g.n; i++ {
		errs = append(errs, <-g.done)
	}
	r.bpf, r.runs = g.tr.BPFRunTime()
	errs = append(errs, g.tr.Close())
	st := g.tr.Stats()
	for _, h := range st.Hits {
		r.hits += h
	}
	r.events, r.lost = st.Events, st.Lost
	rep := g.win.Report()
	r.rep = &rep
	return errors.Join(errs...)
}

// bpftraceRun starts bpftrace on fns of bin in pid — counting hits, or
// printing a line per hit (read and dropped here) — and returns once its
// probes are attached.
func bpftraceRun(bt, bin string, pid int, fns []string, print bool) (*exec.Cmd, error) {
	var probes []string
	for _, f := range fns {
		probes = append(probes, "uprobe:"+bin+":"+f)
	}
	action := "{ @[probe] = count(); }"
	if print {
		action = `{ printf("%s %d %d\n", probe, tid, nsecs); }`
	}
	script := strings.Join(probes, ",\n") + " " + action
	cmd := exec.Command(bt, "-p", strconv.Itoa(pid), "-e", script)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "Attaching") {
			go io.Copy(io.Discard, out)
			time.Sleep(300 * time.Millisecond) // "Attaching" precedes the attach
			return cmd, nil
		}
	}
	cmd.Wait()
	return nil, errors.New("bpftrace did not attach")
}

// stormFunctions are the runtime functions of the programs, for bpftrace.
func stormFunctions(bin string) []string {
	p, err := plan.FromFile(bin)
	if err != nil {
		return nil
	}
	set := map[string]bool{}
	for _, name := range strings.Split(*progList, ",") {
		for _, pr := range p.ProbesFor(name) {
			set[pr.Symbol] = true
		}
	}
	var out []string
	for s := range set {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// target is one running copy of a target program.
type target struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	sc  *bufio.Scanner
}

// start runs bin with args and waits for its first line, which must start
// with ready.
func start(bin, ready string, args ...string) (*target, string, error) {
	cmd := exec.Command(bin, args...)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	t := &target{cmd: cmd, in: in, sc: bufio.NewScanner(out)}
	if !t.sc.Scan() || !strings.HasPrefix(t.sc.Text(), ready) {
		t.kill()
		return nil, "", fmt.Errorf("%s: no %q line", filepath.Base(bin), ready)
	}
	return t, t.sc.Text(), nil
}

func (t *target) kill() { t.cmd.Process.Kill(); t.cmd.Wait() }

// finish reads the target's output to its end, waits for it and returns
// the last line starting with prefix and its CPU time.
func (t *target) finish(prefix string) (string, time.Duration, error) {
	var line string
	for t.sc.Scan() {
		if strings.HasPrefix(t.sc.Text(), prefix) {
			line = t.sc.Text()
		}
	}
	if err := t.cmd.Wait(); err != nil {
		return "", 0, err
	}
	return line, t.cmd.ProcessState.UserTime() + t.cmd.ProcessState.SystemTime(), nil
}

// tracing is what a configuration attached to a target.
type tracing struct {
	g  *gmp
	bc *exec.Cmd
}

func attachConfig(cfg, bin string, pid int, cal *ebpf.Calibration, bt string) (*tracing, error) {
	var tr tracing
	var err error
	switch cfg {
	case "default", "max":
		tr.g, err = startGmp(pid, cfg, cal)
	case "bpftrace", "bpftrace-print":
		tr.bc, err = bpftraceRun(bt, bin, pid, stormFunctions(bin), cfg == "bpftrace-print")
	}
	return &tr, err
}

func (tr *tracing) stop(r *result) error {
	if tr.bc != nil {
		tr.bc.Process.Signal(os.Interrupt)
		tr.bc.Wait()
	}
	if tr.g != nil {
		return tr.g.stop(r)
	}
	return nil
}

// selfCPU returns this process's CPU time (gmpwatch's, in the storm runs).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// twinCopy returns a copy of bin for the untraced twin: a uprobe is set on
// a file, and a tracer that filters processes in its handler (bpftrace -p)
// rather than when placing the breakpoint would trap in the twin too.
func twinCopy(bin string) (string, error) {
	twin := bin + ".twin"
	if fi, err := os.Stat(twin); err == nil && fi.Size() > 0 {
		return twin, nil
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	tmp := twin + ".tmp"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		return "", err
	}
	return twin, os.Rename(tmp, twin)
}

// twins is a side-by-side run: x under a configuration, twin untraced.
type twins struct {
	x, twin *target
	xLine   string // their first lines
	twLine  string
	tr      *tracing
	tmp     string // the runtime/trace file of rtrace
}

// startTwins starts bin's untraced twin (a copy) and bin under cfg (with
// -trace FILE for rtrace), both with args, waits for their first line
// (ready), and attaches cfg to bin's process.
func startTwins(bin, ready, cfg string, cal *ebpf.Calibration, bt string, args ...string) (*twins, error) {
	tbin, err := twinCopy(bin)
	if err != nil {
		return nil, err
	}
	tw := &twins{}
	if tw.twin, tw.twLine, err = start(tbin, ready, args...); err != nil {
		return nil, err
	}
	if cfg == "rtrace" {
		tw.tmp = filepath.Join(os.TempDir(), fmt.Sprintf("%s-%d.trace", filepath.Base(bin), os.Getpid()))
		args = append(slices.Clone(args), "-trace", tw.tmp)
	}
	if tw.x, tw.xLine, err = start(bin, ready, args...); err != nil {
		tw.close()
		return nil, err
	}
	if tw.tr, err = attachConfig(cfg, bin, tw.x.cmd.Process.Pid, cal, bt); err != nil {
		tw.close()
		return nil, err
	}
	return tw, nil
}

// close kills what still runs and removes the trace file.
func (tw *twins) close() {
	for _, t := range []*target{tw.x, tw.twin} {
		if t != nil {
			t.kill()
		}
	}
	if tw.tmp != "" {
		os.Remove(tw.tmp)
	}
}

// runStorm runs the storm under cfg side by side with an untraced twin.
func runStorm(bin, cfg string, cal *ebpf.Calibration, bt string) (pair, error) {
	var p pair
	tw, err := startTwins(bin, "ready", cfg, cal, bt, "-wait", "-d", dur.String())
	if err != nil {
		return p, err
	}
	defer tw.close()
	x, twin, tr := tw.x, tw.twin, tw.tr
	c0 := selfCPU()
	fmt.Fprintln(x.in, "go")
	fmt.Fprintln(twin.in, "go")
	for _, t := range []struct {
		t *target
		r *result
	}{{x, &p.x}, {twin, &p.twin}} {
		line, cpu, err := t.t.finish("ops ")
		if err != nil {
			return p, err
		}
		t.r.cpu = cpu
		i := strings.Index(line, "total=")
		if i < 0 {
			return p, fmt.Errorf("storm output %q", line)
		}
		if t.r.ops, err = strconv.ParseFloat(line[i+len("total="):], 64); err != nil {
			return p, err
		}
	}
	p.x.self = selfCPU() - c0
	return p, tr.stop(&p.x)
}

// runHTTP runs the HTTP server under cfg side by side with an untraced
// twin, each under its own load generator.
func runHTTP(bin, cfg string, cal *ebpf.Calibration) (pair, error) {
	var p pair
	tw, err := startTwins(bin, "listening 127.0.0.1:", cfg, cal, "", "-d", "2m")
	if err != nil {
		return p, err
	}
	defer tw.close()
	x, twin, tr, xl, tl := tw.x, tw.twin, tw.tr, tw.xLine, tw.twLine
	var wg sync.WaitGroup
	var errs [2]error
	var reqs [2]int64
	for i, l := range []string{xl, tl} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reqs[i], errs[i] = load(strings.TrimPrefix(l, "listening "), *dur)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return p, err
	}
	p.x.ops, p.twin.ops = float64(reqs[0]), float64(reqs[1])
	for _, t := range []struct {
		t *target
		r *result
	}{{x, &p.x}, {twin, &p.twin}} {
		t.t.in.Close()
		_, cpu, err := t.t.finish("")
		if err != nil {
			return p, err
		}
		t.r.cpu = cpu
	}
	return p, tr.stop(&p.x)
}

// load sends requests to addr (127.0.0.1 only) from *conns keep-alive
// connections for d, and returns how many succeeded.
func load(addr string, d time.Duration) (int64, error) {
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		return 0, fmt.Errorf("refusing to load %s: loopback only", addr)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: *conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	var n, fails atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for c := 0; c < *conns; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				url := "http://" + addr + "/work?n=20"
				if (i+c)%4 == 0 {
					url = "http://" + addr + "/sleep"
				}
				resp, err := client.Get(url)
				if err != nil {
					fails.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					n.Add(1)
				}
			}
		}(c)
	}
	wg.Wait()
	if f := fails.Load(); f > n.Load()/100 {
		return 0, fmt.Errorf("%d failed requests", f)
	}
	return n.Load(), nil
}

// startup measures, on a ~48 MB binary with DWARF, the time from start to
// probes live: the probe plan from the process, the attach, and the budget
// windows with the per-boot calibration cached, as the live command does.
func startup(cal *ebpf.Calibration) error {
	bin := filepath.Join(testtarget.CacheDir(), "bigbin-nocompressdwarf")
	if _, err := os.Stat(bin); err != nil {
		c := exec.Command("go", "build", "-ldflags=-compressdwarf=false", "-o", bin, "./testdata/bigbin")
		c.Dir = testtarget.RepoRoot()
		c.Stderr = os.Stderr
		if err := c.Run(); err != nil {
			return fmt.Errorf("build bigbin: %w", err)
		}
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return err
	}
	var plans, attaches, totals []float64
	for i := 0; i < *reps; i++ {
		cmd := exec.Command(bin)
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			return err
		}
		sc := bufio.NewScanner(out)
		sc.Scan()
		t0 := time.Now()
		p, err := plan.FromProcess(cmd.Process.Pid)
		if err != nil {
			cmd.Process.Kill()
			return err
		}
		t1 := time.Now()
		tr, err := ebpf.Attach(p, ebpf.Options{Programs: strings.Split(*progList, ",")})
		if err != nil {
			cmd.Process.Kill()
			return err
		}
		c2, err := ebpf.Calibrated("")
		if err != nil {
			return err
		}
		if _, err := ebpf.NewWindowed(tr, p, ebpf.WindowOptions{Calibration: c2}); err != nil {
			return err
		}
		t2 := time.Now()
		tr.Close()
		in.Close()
		cmd.Wait()
		plans = append(plans, ms(t1.Sub(t0)))
		attaches = append(attaches, ms(t2.Sub(t1)))
		totals = append(totals, ms(t2.Sub(t0)))
	}
	fmt.Printf("\nstart to probes live, %.1f MB binary with DWARF (%d runs): median %.0f ms (min %.0f, max %.0f): plan %.0f ms, attach+windows %.0f ms\n",
		float64(fi.Size())/1e6, *reps, median(totals), slices.Min(totals), slices.Max(totals), median(plans), median(attaches))
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// accuracy compares the scheduling latency gmpwatch reports under the
// default budget with the runtime's own and with an execution trace's, on
// the storm and on the HTTP server: per repetition, one run under gmpwatch
// in which the target's own /sched/latencies over the same interval is read
// too, and a separate run under runtime/trace (with its own histogram).
func accuracy(cal *ebpf.Calibration) error {
	for _, w := range []struct {
		name string
		run  func(bin string, cal *ebpf.Calibration) (*accRun, error)
	}{{"storm", accuracyStorm}, {"httpserver", accuracyHTTP}} {
		bin, err := testtarget.BuildErr(w.name, testtarget.Go126, testtarget.Plain)
		if err != nil {
			return err
		}
		var runs []*accRun
		for rep := 0; rep < *reps; rep++ {
			r, err := w.run(bin, cal)
			if err != nil {
				return fmt.Errorf("accuracy %s: %w", w.name, err)
			}
			fmt.Fprintf(os.Stderr, "accuracy %s rep %d: memory p50 %s p99 %s; own p50 %s p99 %s; windows p50 %s p99 %s; trace p50 %s p99 %s\n", w.name, rep+1,
				ns(r.mem.Quantile(0.5)), ns(r.mem.Quantile(0.99)), ns(r.own.Quantile(0.5)), ns(r.own.Quantile(0.99)),
				ns(float64(r.win.P50Ns)), ns(float64(r.win.P99Ns)), ns(float64(r.trace.Quantile(0.5))), ns(float64(r.trace.Quantile(0.99))))
			runs = append(runs, r)
		}
		printAccuracy(w.name, runs)
	}
	return nil
}

// accRun is one repetition of the accuracy check.
type accRun struct {
	// mem is the runtime's histogram read by gmpwatch from memory, own the
	// target's own reading of it (runtime/metrics), over the same interval.
	mem, own *rtstate.Histogram
	win      sched.Latency // gmpwatch's windows
	// trace is the separate traced run's latencies, tracedOwn its own
	// histogram.
	trace     *exectrace.Latencies
	tracedOwn *rtstate.Histogram
}

func printAccuracy(name string, runs []*accRun) {
	type row struct {
		name string
		q    func(r *accRun, q float64) float64
		n    func(r *accRun) float64
	}
	hist := func(h func(*accRun) *rtstate.Histogram) (func(*accRun, float64) float64, func(*accRun) float64) {
		return func(r *accRun, q float64) float64 { return h(r).Quantile(q) }, func(r *accRun) float64 { return float64(h(r).Total()) }
	}
	memQ, memN := hist(func(r *accRun) *rtstate.Histogram { return r.mem })
	ownQ, ownN := hist(func(r *accRun) *rtstate.Histogram { return r.own })
	trOwnQ, trOwnN := hist(func(r *accRun) *rtstate.Histogram { return r.tracedOwn })
	rows := []row{
		{"runtime histogram, read by gmpwatch (exact figure)", memQ, memN},
		{"target's own /sched/latencies:seconds", ownQ, ownN},
		{"gmpwatch windows (probes on: their cost included)", func(r *accRun, q float64) float64 {
			if q == 0.5 {
				return float64(r.win.P50Ns)
			}
			return float64(r.win.P99Ns)
		}, func(r *accRun) float64 { return float64(r.win.Count) }},
		{"runtime/trace of a separate run (x/exp/trace)", func(r *accRun, q float64) float64 { return float64(r.trace.Quantile(q)) },
			func(r *accRun) float64 { return float64(len(r.trace.Samples)) }},
		{"that traced run's own /sched/latencies:seconds", trOwnQ, trOwnN},
	}
	fmt.Printf("\naccuracy (%s, default budget, %d reps of %v): scheduling latency, median over the reps (min–max)\n", name, len(runs), *dur)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "source\tp50\tp99\tsamples\t")
	for _, rw := range rows {
		var p50, p99, n []float64
		for _, r := range runs {
			p50, p99, n = append(p50, rw.q(r, 0.5)), append(p99, rw.q(r, 0.99)), append(n, rw.n(r))
		}
		spread := func(v []float64) string {
			return fmt.Sprintf("%s (%s–%s)", ns(median(v)), ns(slices.Min(v)), ns(slices.Max(v)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t\n", rw.name, spread(p50), spread(p99), median(n))
	}
	tw.Flush()
	var same50, same99, near50, near99 int
	for _, r := range runs {
		for _, c := range []struct {
			q          float64
			same, near *int
		}{{0.5, &same50, &near50}, {0.99, &same99, &near99}} {
			if r.mem.BucketOf(r.mem.Quantile(c.q)) == r.own.BucketOf(r.own.Quantile(c.q)) {
				*c.same++
			}
			d := r.mem.BucketOf(r.mem.Quantile(c.q)) - r.mem.BucketOf(float64(r.trace.Quantile(c.q)))
			if d >= -1 && d <= 1 {
				*c.near++
			}
		}
	}
	fmt.Printf("gmpwatch's exact figure vs the target's own: same bucket p50 %d/%d, p99 %d/%d; vs the trace of a separate run: within one bucket p50 %d/%d, p99 %d/%d\n",
		same50, len(runs), same99, len(runs), near50, len(runs), near99, len(runs))
}

// traceLatencies reads a runtime/trace file's scheduling latencies and
// removes the file.
func traceLatencies(path string) (*exectrace.Latencies, error) {
	defer os.Remove(path)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return exectrace.SchedLatencies(f)
}

// accuracyStorm: storm prints its own histogram over the run (-metrics),
// gmpwatch reads the runtime's before "go" and after the counts (-hold).
func accuracyStorm(bin string, cal *ebpf.Calibration) (*accRun, error) {
	x, _, err := start(bin, "ready", "-wait", "-d", dur.String(), "-metrics", "-hold", "1s")
	if err != nil {
		return nil, err
	}
	defer x.kill()
	g, rt, err := startGmpReader(x.cmd.Process.Pid, cal)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	s0, err := rt.Sched()
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(x.in, "go")
	own := newHist(rt.HistFormat())
	var s1 *rtstate.Sched
	for x.sc.Scan() {
		line := x.sc.Text()
		addBucketLine(own, line)
		if strings.HasPrefix(line, "ops ") {
			s1, err = rt.Sched() // the target holds on for a second
			break
		}
	}
	if s1 == nil {
		return nil, fmt.Errorf("storm ended without its counts: %v", err)
	}
	r := &accRun{own: own}
	if r.win, err = g.finish(); err != nil {
		return nil, err
	}
	mem, _ := s1.TimeToRun.Sub(s0.TimeToRun)
	r.mem = &mem

	tmp := filepath.Join(os.TempDir(), fmt.Sprintf("storm-acc-%d.trace", os.Getpid()))
	out, err := exec.Command(bin, "-d", dur.String(), "-trace", tmp, "-metrics").Output()
	if err != nil {
		os.Remove(tmp)
		return nil, err
	}
	r.tracedOwn = newHist(rt.HistFormat())
	for _, line := range strings.Split(string(out), "\n") {
		addBucketLine(r.tracedOwn, line)
	}
	r.trace, err = traceLatencies(tmp)
	return r, err
}

// accuracyHTTP: the server answers its own histogram at /latencies, read
// around the load together with gmpwatch's read of its memory.
func accuracyHTTP(bin string, cal *ebpf.Calibration) (*accRun, error) {
	x, l, err := start(bin, "listening 127.0.0.1:", "-d", "2m")
	if err != nil {
		return nil, err
	}
	defer x.kill()
	addr := strings.TrimPrefix(l, "listening ")
	g, rt, err := startGmpReader(x.cmd.Process.Pid, cal)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	f := rt.HistFormat()
	own0, err := serverLatencies(addr, f)
	if err != nil {
		return nil, err
	}
	s0, err := rt.Sched()
	if err != nil {
		return nil, err
	}
	if _, err := load(addr, *dur); err != nil {
		return nil, err
	}
	s1, err := rt.Sched()
	if err != nil {
		return nil, err
	}
	own1, err := serverLatencies(addr, f)
	if err != nil {
		return nil, err
	}
	r := &accRun{}
	if r.win, err = g.finish(); err != nil {
		return nil, err
	}
	mem, _ := s1.TimeToRun.Sub(s0.TimeToRun)
	own, _ := own1.Sub(*own0)
	r.mem, r.own = &mem, &own
	x.in.Close()

	tmp := filepath.Join(os.TempDir(), fmt.Sprintf("http-acc-%d.trace", os.Getpid()))
	y, l, err := start(bin, "listening 127.0.0.1:", "-d", "2m", "-trace", tmp)
	if err != nil {
		return nil, err
	}
	defer y.kill()
	addr = strings.TrimPrefix(l, "listening ")
	t0, err := serverLatencies(addr, f)
	if err != nil {
		return nil, err
	}
	if _, err := load(addr, *dur); err != nil {
		return nil, err
	}
	t1, err := serverLatencies(addr, f)
	if err != nil {
		return nil, err
	}
	tracedOwn, _ := t1.Sub(*t0)
	r.tracedOwn = &tracedOwn
	y.in.Close()
	if _, _, err := y.finish(""); err != nil {
		return nil, err
	}
	r.trace, err = traceLatencies(tmp)
	return r, err
}

// serverLatencies fetches the HTTP server's own histogram (/latencies).
func serverLatencies(addr string, f rtstate.HistFormat) (*rtstate.Histogram, error) {
	resp, err := http.Get("http://" + addr + "/latencies")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	h := newHist(f)
	for _, line := range strings.Split(string(b), "\n") {
		addBucketLine(h, line)
	}
	return h, nil
}

func ns(v float64) string { return sched.FormatNs(uint64(v)) }

// newHist returns an empty histogram in the runtime's layout f.
func newHist(f rtstate.HistFormat) *rtstate.Histogram {
	b := rtstate.Bounds(f)
	return &rtstate.Histogram{Bounds: b, Counts: make([]uint64, len(b)-1)}
}

// addBucketLine adds storm's "latency-bucket LO HI N" line (seconds) to h;
// other lines are ignored.
func addBucketLine(h *rtstate.Histogram, line string) {
	var lo, hi float64
	var c uint64
	if n, _ := fmt.Sscanf(line, "latency-bucket %g %g %d", &lo, &hi, &c); n == 3 {
		h.Counts[h.BucketOf(lo*1e9)] += c
	}
}
