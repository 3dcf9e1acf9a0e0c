package ebpf

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

func TestCalibrate(t *testing.T) {
	testtarget.RequireRoot(t)
	path := filepath.Join(t.TempDir(), "run", "calibration.json")
	c, err := Calibrated(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%v", c)
	for name, v := range map[string]float64{"push": c.PushNs, "call": c.CallNs, "other": c.OtherNs} {
		if v < 100 || v > 100e3 {
			t.Errorf("%s: %.0f ns per hit, want 0.1 µs to 100 µs", name, v)
		}
	}
	if c.Source != "measured" || c.BootID == "" || c.Kernel == "" {
		t.Fatalf("first calibration: source %q boot %q kernel %q", c.Source, c.BootID, c.Kernel)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("not cached: %v", err)
	}
	again, err := Calibrated(path)
	if err != nil {
		t.Fatal(err)
	}
	if again.Source != "cached "+path || again.PushNs != c.PushNs || again.CallNs != c.CallNs {
		t.Fatalf("second call not from the cache: %+v", again)
	}
	// Another boot invalidates the cache.
	stale := *c
	stale.BootID = "another-boot"
	b, err := json.Marshal(&stale)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if fresh, err := Calibrated(path); err != nil || fresh.Source != "measured" {
		t.Fatalf("stale cache used: %+v %v", fresh, err)
	}
	costs := c.ProgramCosts([]plan.Probe{
		{Program: "execute", Insn: "PUSHQ BP"},
		{Program: "newproc_runqput", Insn: "CALL 0x458f60"},
		{Program: "gopark", Insn: "MOVQ SP, BP"},
	})
	if costs["execute"] != c.PushNs || costs["newproc_runqput"] != c.CallNs || costs["gopark"] != c.OtherNs {
		t.Fatalf("program costs %v", costs)
	}
}
