package ebpf

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/arch/x86/x86asm"
	"golang.org/x/sys/unix"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
)

// DefaultCalibrationPath is where Calibrated caches the calibration, keyed
// by boot and kernel: it holds for the life of the boot.
const DefaultCalibrationPath = "/run/gmpwatch/calibration.json"

// Calibration is the CPU time one uprobe hit costs the process it fires in,
// on this machine, measured with an empty BPF program: the floor that the
// kernel's trap, the instruction's emulation or single step, and the BPF
// dispatch cost whatever the program does.
type Calibration struct {
	BootID string `json:"boot_id"`
	Kernel string `json:"kernel"`
	// PushNs is the cost of a hit on PUSHQ BP, where the plan's probes sit
	// (after the stack check); CallNs on a CALL (newproc's runqput site);
	// OtherNs on an instruction the kernel single-steps (MOVQ).
	PushNs  float64 `json:"push_ns"`
	CallNs  float64 `json:"call_ns"`
	OtherNs float64 `json:"other_ns"`
	// AttachUs and DetachUs are the tracer's wall time to attach and to
	// detach one uprobe: the floor of a sampling window.
	AttachUs float64 `json:"attach_us"`
	DetachUs float64 `json:"detach_us"`
	// Links is the link kind measured (attach and detach times differ).
	Links    LinkKind  `json:"links"`
	Hits     int       `json:"hits"`   // calls per measurement
	Rounds   int       `json:"rounds"` // interleaved rounds (median taken)
	Measured time.Time `json:"measured"`
	// Source is "measured" or "cached <path>" (not stored).
	Source string `json:"-"`
}

// CostNs returns the per-hit cost of a probe on the instruction insn (Go
// syntax, as in plan.Probe.Insn).
func (c *Calibration) CostNs(insn string) float64 {
	op, _, _ := strings.Cut(strings.ToUpper(strings.TrimSpace(insn)), " ")
	switch {
	case strings.HasPrefix(op, "PUSH"):
		return c.PushNs
	case op == "CALL" || strings.HasPrefix(op, "J"):
		return c.CallNs
	}
	return c.OtherNs
}

// ProgramCosts returns each program's per-hit cost for the given probes
// (the costliest of its probes).
func (c *Calibration) ProgramCosts(probes []plan.Probe) map[string]float64 {
	out := map[string]float64{}
	for _, pr := range probes {
		out[pr.Program] = max(out[pr.Program], c.CostNs(pr.Insn))
	}
	return out
}

// String is one line for humans.
func (c *Calibration) String() string {
	return fmt.Sprintf("uprobe hit %.2f µs (push), %.2f µs (call), %.2f µs (single-step); %s attach %.0f µs, detach %.0f µs; %s",
		c.PushNs/1e3, c.CallNs/1e3, c.OtherNs/1e3, c.Links, c.AttachUs, c.DetachUs, c.Source)
}

// Calibrated returns the calibration cached at path for this boot and
// kernel, or measures it (Calibrate) and caches it. An unwritable cache is
// not an error. path "" means DefaultCalibrationPath.
func Calibrated(path string) (*Calibration, error) {
	if path == "" {
		path = DefaultCalibrationPath
	}
	boot, kernel := bootKey()
	if b, err := os.ReadFile(path); err == nil {
		var c Calibration
		if json.Unmarshal(b, &c) == nil && c.BootID == boot && c.Kernel == kernel && c.PushNs > 0 && c.Links == DefaultLinkKind() {
			c.Source = "cached " + path
			return &c, nil
		}
	}
	c, err := Calibrate(0)
	if err != nil {
		return nil, err
	}
	if b, err := json.MarshalIndent(c, "", "  "); err == nil {
		if os.MkdirAll(filepath.Dir(path), 0o755) == nil {
			tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
			if os.WriteFile(tmp, append(b, '\n'), 0o644) == nil {
				if os.Rename(tmp, path) != nil {
					os.Remove(tmp)
				}
			}
		}
	}
	return c, nil
}

func bootKey() (boot, kernel string) {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	return strings.TrimSpace(string(b)), kernel
}

// calibLeaf and calibTarget are what the calibration probes: calibTarget
// has a frame (PUSHQ BP after its stack check) and a CALL.
//
//go:noinline
func calibLeaf(x int) int { return x*3 + 1 }

//go:noinline
func calibTarget(x int) int { return calibLeaf(x) + x }

var calibSink int

// Calibrate measures the per-hit cost of a uprobe in this process: one
// thread calls a function hits times (0 means 5000), with and without an
// empty BPF program on it, rounds interleaved, and takes the median of the
// thread's CPU time differences. It needs the privileges of Attach.
func Calibrate(hits int) (*Calibration, error) {
	if hits <= 0 {
		hits = 5000
	}
	const rounds = 5
	boot, kernel := bootKey()
	kind := DefaultLinkKind()
	c := &Calibration{BootID: boot, Kernel: kernel, Hits: hits, Rounds: rounds, Measured: time.Now().UTC(), Source: "measured", Links: kind}

	sites, err := calibSites()
	if err != nil {
		return nil, fmt.Errorf("calibrate: %w", err)
	}
	ps := &ebpf.ProgramSpec{
		Name:         "gmp_calib",
		Type:         ebpf.Kprobe,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		License:      "GPL",
	}
	kind.prepareSpec(map[string]*ebpf.ProgramSpec{"": ps})
	prog, err := ebpf.NewProgram(ps)
	if err != nil {
		return nil, fmt.Errorf("calibrate: load bpf program: %w", classify(err))
	}
	defer prog.Close()
	ex, err := link.OpenExecutable(sites.exe)
	if err != nil {
		return nil, fmt.Errorf("calibrate: %w", err)
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	loop := func() time.Duration {
		t0 := threadCPU()
		s := 0
		for i := 0; i < hits; i++ {
			s += calibTarget(i)
		}
		calibSink += s
		return threadCPU() - t0
	}
	var attach, detach []time.Duration
	measure := func(off uint64) (float64, error) {
		var diffs []float64
		for r := 0; r < rounds; r++ {
			base := loop()
			t0 := time.Now()
			l, err := kind.attach(ex, "gmpwatch_calibrate", prog, off, os.Getpid(), 0)
			if err != nil {
				return 0, fmt.Errorf("calibrate: attach: %w", classify(err))
			}
			attach = append(attach, time.Since(t0))
			traced := loop()
			t0 = time.Now()
			l.Close()
			detach = append(detach, time.Since(t0))
			diffs = append(diffs, float64(traced-base)/float64(hits))
		}
		slices.Sort(diffs)
		return max(diffs[len(diffs)/2], 1), nil
	}
	loop() // warm up
	if c.PushNs, err = measure(sites.push); err != nil {
		return nil, err
	}
	if c.CallNs, err = measure(sites.call); err != nil {
		return nil, err
	}
	if c.OtherNs, err = measure(sites.other); err != nil {
		return nil, err
	}
	c.AttachUs = medianUs(attach)
	c.DetachUs = medianUs(detach)
	return c, nil
}

func medianUs(ds []time.Duration) float64 {
	slices.Sort(ds)
	return float64(ds[len(ds)/2]) / 1e3
}

func threadCPU() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

type calibSiteSet struct {
	exe               string
	push, call, other uint64 // file offsets
}

// calibSites finds, in calibTarget's code in memory, the PUSHQ BP, the
// first instruction after it (MOVQ SP, BP: single-stepped) and the CALL,
// and turns their addresses into file offsets of the executable mapping.
func calibSites() (calibSiteSet, error) {
	var s calibSiteSet
	if runtime.GOARCH != "amd64" {
		return s, fmt.Errorf("calibration on %s: %w", runtime.GOARCH, plan.ErrUnsupportedArch)
	}
	// A func value points to a funcval whose first word is the code.
	fn := calibTarget
	codePtr := **(**unsafe.Pointer)(unsafe.Pointer(&fn))
	entry := uintptr(codePtr)
	code := unsafe.Slice((*byte)(codePtr), 96)
	var push, other, call uintptr
	for off := 0; off < len(code); {
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			break
		}
		pc := entry + uintptr(off)
		switch {
		case push == 0 && inst.Op == x86asm.PUSH && inst.Args[0] == x86asm.RBP:
			push = pc
		case push != 0 && other == 0:
			other = pc
		case inst.Op == x86asm.CALL && call == 0:
			call = pc
		}
		off += inst.Len
	}
	if push == 0 || other == 0 || call == 0 {
		return s, errors.New("calibration function without PUSHQ BP, MOVQ and CALL")
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return s, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || !strings.Contains(fields[1], "x") {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		foff, err3 := strconv.ParseUint(fields[2], 16, 64)
		if err1 != nil || err2 != nil || err3 != nil || uint64(entry) < start || uint64(entry) >= end {
			continue
		}
		s.exe = fields[5]
		at := func(pc uintptr) uint64 { return uint64(pc) - start + foff }
		s.push, s.call, s.other = at(push), at(call), at(other)
		return s, nil
	}
	return s, errors.New("calibration function not in a mapped file")
}

// EnableRunTimeStats turns on the kernel's BPF run-time statistics
// (BPF_STATS_RUN_TIME) until the returned closer is closed, so that
// BPFRunTime can tell the programs' own share of a hit's cost. The
// statistics cost every BPF program on the machine a little: benchmarks
// only.
func EnableRunTimeStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable bpf run-time stats: %w", classify(err))
	}
	return c, nil
}

// BPFRunTime returns the time the tracer's programs ran and how many times,
// from the kernel's run-time statistics (zero unless EnableRunTimeStats is
// on). Read it before Close.
func (t *Tracer) BPFRunTime() (time.Duration, uint64) {
	var d time.Duration
	var n uint64
	for _, prog := range t.coll.Programs {
		if st, err := prog.Stats(); err == nil {
			d += st.Runtime
			n += st.RunCount
		}
	}
	return d, n
}
