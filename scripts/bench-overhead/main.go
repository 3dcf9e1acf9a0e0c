// Command bench-overhead measures what gmpwatch costs the programs it traces
// (issue 6). As root, from the repository:
//
//	go run ./scripts/bench-overhead [-reps 3] [-d 10s]
//
// It builds the targets (testdata/storm: ping-pong, spawn and alloc on
// GOMAXPROCS=2; testdata/httpserver with a loopback load generator in this
// process, 127.0.0.1 only, bounded in time; testdata/bigbin, a ~48 MB binary
// with DWARF), then runs each configuration interleaved and repeated:
//
//	untraced   the target alone
//	default    gmpwatch's probes under the default budget (2%, windows)
//	max        every event (--overhead max)
//	rtrace     the target's own runtime/trace on (-trace FILE)
//	bpftrace   bpftrace counting hits on the same functions (if installed)
//
// The traced configurations run gmpwatch in this process as the live command
// does: plan, attach, ring buffer read into the scheduler model
// (analysis/sched), budget windows (ebpf.Windowed). It prints, per workload,
// the throughput ratio to the untraced run of the same repetition (median
// and min–max), the CPU each probe hit cost the target, the calibrated
// floor, and the time from start to probes live on the big binary.
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/budget"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
	"github.com/gmpwatch/gmpwatch/ebpf"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

var (
	reps     = flag.Int("reps", 3, "repetitions of each configuration")
	dur      = flag.Duration("d", 10*time.Second, "length of one run")
	conns    = flag.Int("conns", 8, "load generator connections")
	only     = flag.String("only", "", "comma-separated workloads: storm,http,startup (default all)")
	cfgList  = flag.String("configs", "untraced,default,max,rtrace,bpftrace", "configurations (untraced first)")
	progList = flag.String("programs", "schedule,execute,gopark,ready,goschedImpl,goexit0,newproc_runqput,newm,injectglist", "BPF programs attached")
)

func main() {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-overhead: run as root (BPF)")
		os.Exit(2)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-overhead:", err)
		os.Exit(1)
	}
}

func want(w string) bool {
	return *only == "" || slices.Contains(strings.Split(*only, ","), w)
}

// result is one run.
type result struct {
	ops    float64       // storm: operations; http: requests
	cpu    time.Duration // target CPU time
	hits   uint64        // probe hits (gmpwatch configurations)
	events uint64
	lost   uint64
	bpf    time.Duration // the programs' own run time (BPF stats)
	runs   uint64        // program runs
	rep    *budget.Report
}

type workload struct {
	name    string
	configs []string
	run     func(cfg string) (result, error)
}

func run() error {
	cal, err := ebpf.Calibrated("")
	if err != nil {
		return err
	}
	if c, err := ebpf.EnableRunTimeStats(); err == nil {
		defer c.Close()
	} else {
		fmt.Fprintln(os.Stderr, "bench-overhead:", err)
	}
	fmt.Printf("calibration: %v\n", cal)
	var wls []workload
	var configs []string
	for _, c := range strings.Split(*cfgList, ",") {
		if c != "bpftrace" {
			configs = append(configs, c)
		}
	}
	if len(configs) == 0 || configs[0] != "untraced" {
		return errors.New("-configs must start with untraced")
	}
	bt, _ := exec.LookPath("bpftrace")
	if !strings.Contains(*cfgList, "bpftrace") {
		bt = ""
	}
	if want("storm") {
		bin, err := testtarget.BuildErr("storm", testtarget.Go126, testtarget.Plain)
		if err != nil {
			return err
		}
		cs := configs
		if bt != "" {
			cs = append(slices.Clone(cs), "bpftrace")
		}
		wls = append(wls, workload{"storm", cs, func(cfg string) (result, error) { return runStorm(bin, cfg, cal, bt) }})
	}
	if want("http") {
		bin, err := testtarget.BuildErr("httpserver", testtarget.Go126, testtarget.Plain)
		if err != nil {
			return err
		}
		wls = append(wls, workload{"http", configs, func(cfg string) (result, error) { return runHTTP(bin, cfg, cal) }})
	}
	for _, wl := range wls {
		res := map[string][]result{}
		for r := 0; r < *reps; r++ {
			// Rotate the order so that no configuration always runs first.
			for i := range wl.configs {
				cfg := wl.configs[(i+r)%len(wl.configs)]
				x, err := wl.run(cfg)
				if err != nil {
					return fmt.Errorf("%s %s: %w", wl.name, cfg, err)
				}
				res[cfg] = append(res[cfg], x)
				fmt.Fprintf(os.Stderr, "%s rep %d %-8s %12.0f ops/s cpu %6.2fs hits %d\n", wl.name, r+1, cfg, x.ops/dur.Seconds(), x.cpu.Seconds(), x.hits)
			}
		}
		printTable(wl, res, cal)
	}
	if want("startup") {
		if err := startup(cal); err != nil {
			return err
		}
	}
	return nil
}

func printTable(wl workload, res map[string][]result, cal *ebpf.Calibration) {
	fmt.Printf("\n%s (%d reps of %v, interleaved; ratio = throughput / untraced of the same rep)\n", wl.name, *reps, *dur)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\tops/s (median)\tratio median\tmin\tmax\thits/s\tcpu-ns/hit\tbpf-ns/hit\tduty\tbudget report\t")
	base := res["untraced"]
	for _, cfg := range wl.configs {
		rs := res[cfg]
		var ratios, opsps, perHit []float64
		var hits float64
		var bpf time.Duration
		var runs uint64
		for i, x := range rs {
			bpf += x.bpf
			runs += x.runs
			opsps = append(opsps, x.ops/dur.Seconds())
			ratios = append(ratios, x.ops/base[i].ops)
			hits += float64(x.hits)
			if x.hits > 0 {
				// CPU per op traced minus untraced, times ops, per hit.
				extra := float64(x.cpu)/x.ops - float64(base[i].cpu)/base[i].ops
				perHit = append(perHit, extra*x.ops/float64(x.hits))
			}
		}
		duty, line := "", ""
		if last := rs[len(rs)-1].rep; last != nil {
			duty = fmt.Sprintf("%.2f%%", last.DutyCycle*100)
			line = fmt.Sprintf("est %.2f%% meas %.2f%% win %.0f+%.0fms/%.1fs", last.EstimatedCost*100, last.MeasuredCost*100, last.WindowMs, last.OpenCloseMs, last.PeriodMs/1e3)
		}
		ph := ""
		if len(perHit) > 0 {
			ph = fmt.Sprintf("%.0f", median(perHit))
		}
		hs := ""
		if hits > 0 {
			hs = fmt.Sprintf("%.0f", hits/float64(len(rs))/dur.Seconds())
		}
		bs := ""
		if runs > 0 {
			bs = fmt.Sprintf("%.0f", float64(bpf)/float64(runs))
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t%s\t\n", cfg, median(opsps), median(ratios), slices.Min(ratios), slices.Max(ratios), hs, ph, bs, duty, line)
	}
	tw.Flush()
	fmt.Printf("calibrated floor (empty program): %.0f ns/hit on PUSHQ BP, %.0f on CALL, %.0f single-stepped\n", cal.PushNs, cal.CallNs, cal.OtherNs)
	if d, r := res["default"], res["rtrace"]; len(d) > 0 && len(r) > 0 {
		var vs []float64
		for i := range d {
			vs = append(vs, d[i].ops/r[i].ops)
		}
		fmt.Printf("default vs runtime/trace: %.2fx (median)\n", median(vs))
	}
	if d, r := res["max"], res["bpftrace"]; len(d) > 0 && len(r) > 0 {
		var vs []float64
		for i := range d {
			vs = append(vs, d[i].ops/r[i].ops)
		}
		fmt.Printf("max vs bpftrace: %.2fx (median)\n", median(vs))
	}
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
}

func startGmp(pid int, cfg string, cal *ebpf.Calibration) (*gmp, error) {
	p, err := plan.FromProcess(pid)
	if err != nil {
		return nil, err
	}
	tr, err := ebpf.Attach(p, ebpf.Options{PID: pid, Programs: strings.Split(*progList, ",")})
	if err != nil {
		return nil, err
	}
	spec := budget.Default()
	if cfg == "max" {
		spec = budget.Spec{Max: true, Share: 1, FloorCores: budget.DefaultFloorCores}
	}
	win, err := ebpf.NewWindowed(tr, p, ebpf.WindowOptions{Budget: spec, Calibration: cal})
	if err != nil {
		tr.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &gmp{tr: tr, win: win, cancel: cancel, done: make(chan error, 2), n: 2}
	model := sched.New(sched.Config{WaitReasons: p.WaitReasons})
	go func() { g.done <- tr.Run(ctx, model.Handle) }()
	go func() { g.done <- win.Run(ctx) }()
	return g, nil
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

// bpftraceRun starts bpftrace counting hits on fns of bin in pid, and
// returns once its probes are attached.
func bpftraceRun(bt, bin string, pid int, fns []string) (*exec.Cmd, error) {
	var probes []string
	for _, f := range fns {
		probes = append(probes, "uprobe:"+bin+":"+f)
	}
	script := strings.Join(probes, ",\n") + " { @[probe] = count(); }"
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

func runStorm(bin, cfg string, cal *ebpf.Calibration, bt string) (result, error) {
	var r result
	args := []string{"-wait", "-d", dur.String()}
	tmp := ""
	if cfg == "rtrace" {
		tmp = filepath.Join(os.TempDir(), fmt.Sprintf("storm-%d.trace", os.Getpid()))
		defer os.Remove(tmp)
		args = append(args, "-trace", tmp)
	}
	cmd := exec.Command(bin, args...)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		return r, errors.New("storm: no ready line")
	}
	var g *gmp
	var bc *exec.Cmd
	switch cfg {
	case "default", "max":
		var err error
		if g, err = startGmp(cmd.Process.Pid, cfg, cal); err != nil {
			return r, err
		}
	case "bpftrace":
		var err error
		if bc, err = bpftraceRun(bt, bin, cmd.Process.Pid, stormFunctions(bin)); err != nil {
			return r, err
		}
	}
	fmt.Fprintln(in, "go")
	var line string
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "ops ") {
			line = sc.Text()
		}
	}
	if err := cmd.Wait(); err != nil {
		return r, err
	}
	r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if g != nil {
		if err := g.stop(&r); err != nil {
			return r, err
		}
	}
	if bc != nil {
		bc.Process.Signal(os.Interrupt)
		bc.Wait()
	}
	i := strings.Index(line, "total=")
	if i < 0 {
		return r, fmt.Errorf("storm output %q", line)
	}
	n, err := strconv.ParseFloat(line[i+len("total="):], 64)
	r.ops = n
	return r, err
}

func runHTTP(bin, cfg string, cal *ebpf.Calibration) (result, error) {
	var r result
	args := []string{"-d", "2m"}
	if cfg == "rtrace" {
		tmp := filepath.Join(os.TempDir(), fmt.Sprintf("http-%d.trace", os.Getpid()))
		defer os.Remove(tmp)
		args = append(args, "-trace", tmp)
	}
	cmd := exec.Command(bin, args...)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "listening 127.0.0.1:") {
		return r, errors.New("httpserver: no listening line")
	}
	addr := strings.TrimPrefix(sc.Text(), "listening ")
	var g *gmp
	if cfg == "default" || cfg == "max" {
		var err error
		if g, err = startGmp(cmd.Process.Pid, cfg, cal); err != nil {
			return r, err
		}
	}
	reqs, err := load(addr, *dur)
	if err != nil {
		return r, err
	}
	in.Close()
	for sc.Scan() {
	}
	if err := cmd.Wait(); err != nil {
		return r, err
	}
	r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	r.ops = float64(reqs)
	if g != nil {
		if err := g.stop(&r); err != nil {
			return r, err
		}
	}
	return r, nil
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
