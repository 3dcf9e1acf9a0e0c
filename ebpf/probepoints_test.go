package ebpf

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
	"github.com/gmpwatch/gmpwatch/patches"
)

// buildProbePoints builds testdata/spawn against the runtime patched with
// probe-points, the way `gmpwatch patch build` does.
func buildProbePoints(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	set, err := patches.LoadSet()
	if err != nil {
		t.Fatal(err)
	}
	sel, err := set.Select([]string{"probe-points"})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := patches.QueryToolchain(ctx, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	root, err := patches.CacheRoot()
	if err != nil {
		t.Fatal(err)
	}
	ov, err := patches.Prepare(tc, sel, root)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "spawn-probe-points")
	var log bytes.Buffer
	pkg := filepath.Join(testtarget.RepoRoot(), "testdata", "spawn")
	if err := patches.Build(ctx, tc, ov, out, []string{pkg}, &log, &log); err != nil {
		t.Fatalf("patch build: %v\n%s", err, log.String())
	}
	return out
}

// TestProbePoints traces a binary carrying the probe-points runtime patch
// with the default programs: the transitions come from the patch's one
// attach point instead of the stock probes, and the run must satisfy the
// same exact checks as the stock probes do in TestSpawn (n created at the
// go statement, n exited, parents, readiers, threads, Ps).
func TestProbePoints(t *testing.T) {
	testtarget.RequireRoot(t)
	const n = 500
	bin := buildProbePoints(t)
	b := openBin(t, bin)
	worker := funcAddr(t, b, "main.worker")

	tg := startTarget(t, bin, nil, "-n", strconv.Itoa(n), "-linger")
	tg.expect(t, "ready")
	p, err := plan.FromProcess(tg.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(p.Patches, "probe-points") {
		t.Fatalf("plan patches %v, want probe-points", p.Patches)
	}
	progs := AttachedPrograms(p, Options{})
	for _, stock := range []string{"execute", "gopark", "ready", "goexit0", "newproc_runqput"} {
		if slices.Contains(progs, stock) {
			t.Errorf("stock program %s attached to a probe-points binary: %v", stock, progs)
		}
	}
	c := trace(t, p, Options{NoStacks: true})
	attached := map[string]bool{}
	for _, pr := range c.tr.Probes() {
		attached[pr.Program] = true
	}
	if !attached["probe_points"] || attached["execute"] {
		t.Fatalf("attached %v, want probe_points and no execute", attached)
	}
	tg.send(t)
	site := strings.TrimPrefix(tg.expect(t, "site "), "site ")
	tg.expect(t, "done ")
	tasks := threads(t, tg.cmd.Process.Pid)
	tg.send(t)
	tg.wait(t)
	evs, st := c.stop(t)
	checkStats(t, st)
	checkSpawn(t, b, p, evs, tasks, worker+p.LoadBias, site, n)
	checkParksOnce(t, evs)
	if st.Hits["probe_points"] == 0 {
		t.Errorf("no hits counted for probe_points: %v", st.Hits)
	}
}
