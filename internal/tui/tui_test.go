package tui

import (
	"slices"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"

	"github.com/gmpwatch/gmpwatch/analysis/sched"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newTestModel(t *testing.T) *Model {
	t.Helper()
	m := New(Info{PID: 4242, Exe: "/srv/app", GoVersion: "go1.26.8", Interval: time.Second,
		Probes: []string{"schedule", "execute", "gopark"}, Started: t0, ProcStart: t0.Add(-time.Hour)})
	send(t, m, tea.WindowSizeMsg{Width: 140, Height: 45})
	return m
}

func send(t *testing.T, m *Model, msg tea.Msg) tea.Cmd {
	t.Helper()
	nm, cmd := m.Update(msg)
	if nm != m {
		t.Fatalf("Update returned another model")
	}
	return cmd
}

func key(t *testing.T, m *Model, k string) tea.Cmd {
	t.Helper()
	var msg tea.KeyMsg
	switch k {
	case "tab":
		msg = tea.KeyMsg{Type: tea.KeyTab}
	case "shift+tab":
		msg = tea.KeyMsg{Type: tea.KeyShiftTab}
	case "ctrl+c":
		msg = tea.KeyMsg{Type: tea.KeyCtrlC}
	default:
		msg = tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(k)}
	}
	return send(t, m, msg)
}

// latency returns the interval report's latency of the given values, as
// the scheduler model makes it.
func latency(vs ...uint64) sched.Latency {
	var h sched.Histogram
	for _, v := range vs {
		h.Record(v)
	}
	return sched.Latency{Count: h.Count(), P50Ns: h.Quantile(.5), P90Ns: h.Quantile(.9), P99Ns: h.Quantile(.99), MaxNs: h.Max(), Histogram: h.Buckets()}
}

// snap makes the i-th one-second interval's snapshot around a report.
func snap(i int, r *sched.Report) SnapshotMsg {
	r.Kind = sched.KindInterval
	r.DurationNs = uint64(time.Second)
	return SnapshotMsg{At: t0.Add(time.Duration(i+1) * time.Second), Report: r,
		Probes: ProbeStats{Events: uint64(1000 * (i + 1)), Hits: map[string]uint64{"execute": uint64(500 * (i + 1))}}}
}

var (
	leak = sched.Site{Function: "main.serve", File: "/src/app/server.go", Line: 42, PC: "0x4a0001"}
	busy = sched.Site{Function: "main.work", File: "/src/app/pool.go", Line: 7, PC: "0x4a0002"}
)

// feedLeak feeds n intervals: the leak site gains one live goroutine an
// interval, the busy site creates and ends 100.
func feedLeak(t *testing.T, m *Model, n int) {
	for i := 0; i < n; i++ {
		l, b := leak, busy
		l.Created, l.Alive = 1, uint64(i+1)
		b.Created, b.Exited = 100, 100
		send(t, m, snap(i, &sched.Report{
			Goroutines:    sched.Goroutines{Created: 101, Exited: 100, Alive: uint64(i + 2), Waiting: uint64(i + 1), Running: 1},
			SchedLatency:  latency(1000, 2000, uint64(3000*(i+1))),
			CreationSites: []sched.Site{l, b},
			WaitReasons: []sched.WaitReason{
				{Reason: "chan receive", Count: 100, TotalNs: 5e6, WaitingNow: uint64(i + 1)},
				{Reason: "sleep", Count: 2, TotalNs: 9e8},
				{Reason: "select", Count: 300, TotalNs: 1e6},
			},
			ThreadsCreated: 1,
			ThreadsWhy:     []sched.ThreadReason{{Function: "runtime.startm", Count: 1}},
			HeapGrows:      1,
			HeapGrowBytes:  4 << 20,
			Procs:          []sched.Proc{{ID: 0, BusyNs: 2e8}, {ID: 1, BusyNs: 9e8}},
			Threads:        []sched.Thread{{MID: 0, TID: 4242, BusyNs: 2e8, GoroutinesRun: 10}, {MID: 3, TID: 4250, Created: true, BusyNs: 9e8, GoroutinesRun: 400}},
		}))
	}
}

func TestTotalsAndLatency(t *testing.T) {
	m := newTestModel(t)
	feedLeak(t, m, 3)
	v := m.View()
	for _, want := range []string{
		"PID 4242  app  go1.26.8", "up 1h0m3s", "traced 3s",
		"probes 3 on (500 hits/s)", "events 3000 (1000/s)", "lost 0",
		"total created 303 exited 300", "created 101/s exited 100/s", "traced alive 4 (running 1",
		"created 3 (by startm 3)", // threads, and who asked for them
		"heap grew 3× 12.0 MiB",
	} {
		if !strings.Contains(v, want) {
			t.Errorf("view lacks %q:\n%s", want, v)
		}
	}
	// Since start: 9 latencies; the max is the last interval's 9µs, the
	// median 2µs (bucket upper bounds, as sched.Histogram.Quantile).
	var all sched.Histogram
	for i := 0; i < 3; i++ {
		for _, v := range []uint64{1000, 2000, uint64(3000 * (i + 1))} {
			all.Record(v)
		}
	}
	for _, q := range []float64{.5, .9, .99} {
		if got, want := m.latQuantile(q), all.Quantile(q); got != want {
			t.Errorf("q%v since start = %d, want %d (sched.Histogram over the same values)", q, got, want)
		}
	}
	if m.latN != 9 || m.latMax != 9000 {
		t.Errorf("since start n=%d max=%d, want 9 and 9000", m.latN, m.latMax)
	}
	if !strings.Contains(v, "n 9 ") || !strings.Contains(v, "max 9.00µs") {
		t.Errorf("total latency line wrong:\n%s", v)
	}
}

func TestSitesSortAndTrend(t *testing.T) {
	m := newTestModel(t)
	feedLeak(t, m, 14)
	if got := m.SiteRows(); !slices.Equal(got, []string{"app/server.go:42", "app/pool.go:7"}) {
		t.Errorf("by alive: %v", got)
	}
	// The leak's trend: +10 over the last 10 intervals.
	if row := line(m.View(), "app/server.go:42"); !strings.Contains(row, "+10") || !strings.HasPrefix(strings.TrimSpace(row), "14  ") {
		t.Errorf("leak row %q, want 14 alive and trend +10", row)
	}
	for _, c := range []struct {
		col  string
		want []string
	}{
		{"created", []string{"app/pool.go:7", "app/server.go:42"}},
		{"trend", []string{"app/server.go:42", "app/pool.go:7"}},
		{"site", []string{"app/pool.go:7", "app/server.go:42"}},
		{"alive", []string{"app/server.go:42", "app/pool.go:7"}},
	} {
		key(t, m, "s")
		if m.SortColumn() != c.col {
			t.Fatalf("sort column %q, want %q", m.SortColumn(), c.col)
		}
		if !strings.Contains(m.View(), "sort: "+c.col) {
			t.Errorf("view does not name sort column %q", c.col)
		}
		if got := m.SiteRows(); !slices.Equal(got, c.want) {
			t.Errorf("by %s: %v, want %v", c.col, got, c.want)
		}
	}
}

func TestPanelsAndWaitSort(t *testing.T) {
	m := newTestModel(t)
	feedLeak(t, m, 2)
	headers := []string{"GO STATEMENT", "WAITING NOW", "no memory read yet", "TOTAL BUSY"}
	for i := 0; i < 2*len(headers); i++ {
		p := Panel(i % len(headers))
		if m.Panel() != p {
			t.Fatalf("after %d tabs panel %v, want %v", i, m.Panel(), p)
		}
		if v := m.View(); !strings.Contains(v, headers[p]) {
			t.Errorf("panel %v: no %q in\n%s", p, headers[p], v)
		}
		key(t, m, "tab")
	}
	key(t, m, "shift+tab")
	if m.Panel() != PanelThreads {
		t.Errorf("shift+tab from the sites: %v", m.Panel())
	}
	key(t, m, "2")
	if got := m.WaitRows(); !slices.Equal(got, []string{"sleep", "chan receive", "select"}) {
		t.Errorf("waits by time: %v", got)
	}
	if row := line(m.View(), "sleep"); !strings.Contains(row, "1.80s") || !strings.Contains(row, "450ms") {
		t.Errorf("sleep row %q: want 1.80s total, 450ms mean", row)
	}
	key(t, m, "s") // waiting now
	if got := m.WaitRows(); got[0] != "chan receive" {
		t.Errorf("waits by waiting now: %v", got)
	}
	key(t, m, "s") // count
	if got := m.WaitRows(); !slices.Equal(got, []string{"select", "chan receive", "sleep"}) {
		t.Errorf("waits by count: %v", got)
	}
	// The sort of one panel is its own.
	key(t, m, "1")
	if m.SortColumn() != "alive" {
		t.Errorf("sites sort changed with the waits': %q", m.SortColumn())
	}
	// Threads: by busy, the created one first.
	key(t, m, "4")
	if got := m.ThreadRows(); !slices.Equal(got, []uint32{4250, 4242}) {
		t.Errorf("threads by busy: %v", got)
	}
	if row := line(m.View(), "4250"); !strings.Contains(row, "while traced") || !strings.Contains(row, "90%") {
		t.Errorf("thread row %q", row)
	}
}

func TestGMPPanel(t *testing.T) {
	m := newTestModel(t)
	s := snap(0, &sched.Report{Procs: []sched.Proc{{ID: 0, BusyNs: 25e7}, {ID: 1, BusyNs: 75e7}}})
	s.GMP = &GMP{GOMAXPROCS: 2, IdleThreads: 1, Spinning: 1,
		Ps: []PRow{{ID: 0, Status: "running", RunQueue: 3, RunNext: true, M: 0, TID: 4242, G: 17, Func: "main.handler"},
			{ID: 1, Status: "idle", M: -1}},
		Ms: []MRow{{ID: 2, TID: 4250, P: -1, Syscall: true, G: 9, Func: "main.reader"}, {ID: 0, TID: 4242, P: 0, G: 17, Func: "main.handler", Locked: true},
			{ID: 1, TID: 4243, P: -1, Idle: true}},
		GCCycles: 12, HasGC: true}
	s.Goroutines = &Goroutines{Total: 1006, ByState: map[string]int{"running": 2, "waiting": 1003, "syscall": 1}, Age: 3 * time.Second}
	send(t, m, s)
	key(t, m, "3")
	v := m.View()
	for _, want := range []string{"GOMAXPROCS 2", "Ms 3 (idle 1, spinning 1, in syscall 1, locked 1)", "GC cycles 12",
		"in process 1006 (running 2 runnable 0 waiting 1003 syscall 1, read 3s ago)  traced alive 0  created"} {
		if !strings.Contains(v, want) {
			t.Errorf("no %q in\n%s", want, v)
		}
	}
	if f := strings.Fields(line(v, "main.handler")); strings.Join(f, " ") != "0 running 3+1 25% 0 4242 17 main.handler" {
		t.Errorf("P0 row %q", f)
	}
	if f := strings.Fields(line(v, "main.reader")); strings.Join(f, " ") != "2 4250 - syscall 9 main.reader" {
		t.Errorf("M2 row %q", f)
	}
	if f := strings.Fields(line(v, "4243")); strings.Join(f, " ") != "1 4243 - idle -" {
		t.Errorf("M1 row %q", f)
	}
	if got := m.PRowOrder(); !slices.Equal(got, []int32{0, 1}) {
		t.Errorf("Ps by id: %v", got)
	}
	key(t, m, "s")
	if got := m.PRowOrder(); !slices.Equal(got, []int32{1, 0}) {
		t.Errorf("Ps by busy: %v", got)
	}
	key(t, m, "s")
	if got := m.PRowOrder(); !slices.Equal(got, []int32{0, 1}) {
		t.Errorf("Ps by run queue: %v", got)
	}
	// A failed read says so instead of showing stale rows.
	s2 := snap(1, &sched.Report{})
	s2.GMPErr = "read runtime.allp: no such process"
	send(t, m, s2)
	if v := m.View(); !strings.Contains(v, "memory read failed: read runtime.allp") {
		t.Errorf("no read error shown:\n%s", v)
	}
}

func TestPause(t *testing.T) {
	m := newTestModel(t)
	feedLeak(t, m, 2)
	before := m.View()
	key(t, m, "p")
	if !m.Paused() {
		t.Fatal("p did not pause")
	}
	for i := 2; i < 5; i++ {
		l := leak
		l.Created, l.Alive = 1, uint64(i+1)
		send(t, m, snap(i, &sched.Report{Goroutines: sched.Goroutines{Created: 1}, CreationSites: []sched.Site{l}}))
	}
	v := m.View()
	if !strings.Contains(v, "PAUSED (held 3)") {
		t.Errorf("no pause note:\n%s", v)
	}
	if strip(v) != strip(strings.Replace(before, "traced 2s", "traced 2s  PAUSED (held 3)", 1)) {
		t.Errorf("paused view changed:\n%s\nwas\n%s", v, before)
	}
	key(t, m, "p")
	if m.Paused() || !strings.Contains(m.View(), "total created 205") {
		t.Errorf("resume did not apply the held intervals:\n%s", m.View())
	}
}

func TestReset(t *testing.T) {
	m := newTestModel(t)
	feedLeak(t, m, 3)
	key(t, m, "r")
	v := m.View()
	if !strings.Contains(v, "total created 0 exited 0") || m.latN != 0 {
		t.Errorf("reset kept the totals:\n%s", v)
	}
	// The leak's goroutines are still alive: its row stays, counted anew.
	if row := strings.Fields(line(v, "app/server.go:42")); len(row) < 3 || row[0] != "3" || row[1] != "0" {
		t.Errorf("leak row after reset %q", row)
	}
	if line(v, "app/pool.go:7") != "" {
		t.Errorf("a site with nothing alive survived the reset")
	}
	if !strings.Contains(v, "events 3000") || !strings.Contains(v, "lost 0") {
		t.Errorf("reset hid the probe counters:\n%s", v)
	}
	feedLeak(t, m, 1)
	if !strings.Contains(m.View(), "total created 101") {
		t.Errorf("counting after the reset:\n%s", m.View())
	}
}

func TestHelpAndQuit(t *testing.T) {
	m := newTestModel(t)
	key(t, m, "?")
	if v := m.View(); !strings.Contains(v, "Keys") || !strings.Contains(v, "cycle the sort column") {
		t.Errorf("no help:\n%s", m.View())
	}
	if cmd := key(t, m, "x"); cmd != nil || strings.Contains(m.View(), "cycle the sort column") {
		t.Errorf("a key did not close the help")
	}
	for _, k := range []string{"q", "ctrl+c"} {
		cmd := key(t, m, k)
		if cmd == nil {
			t.Fatalf("%s: no command", k)
		}
		if _, ok := cmd().(tea.QuitMsg); !ok {
			t.Errorf("%s does not quit", k)
		}
	}
	// Keys typed together arrive as one message: each counts.
	send(t, m, tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("ps")})
	if !m.Paused() || m.SortColumn() != "created" {
		t.Errorf("ps together: paused %v, sort %q", m.Paused(), m.SortColumn())
	}
	if cmd := send(t, m, tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("pq")}); cmd == nil {
		t.Errorf("q in a batch of keys did not quit")
	}
}

func TestResize(t *testing.T) {
	m := newTestModel(t)
	feedLeak(t, m, 20)
	for _, sz := range [][2]int{{140, 45}, {60, 18}, {30, 8}, {200, 60}} {
		send(t, m, tea.WindowSizeMsg{Width: sz[0], Height: sz[1]})
		for p := 0; p < int(numPanels); p++ {
			v := m.View()
			lines := strings.Split(v, "\n")
			if len(lines) > sz[1] && sz[1] >= 12 {
				t.Errorf("%dx%d panel %d: %d lines", sz[0], sz[1], p, len(lines))
			}
			for _, l := range lines {
				if w := ansi.StringWidth(l); w > sz[0] {
					t.Errorf("%dx%d panel %d: line %d wide: %q", sz[0], sz[1], p, w, l)
				}
			}
			key(t, m, "tab")
		}
	}
}

// line returns the first line of v containing s, without styling.
func line(v, s string) string {
	for _, l := range strings.Split(strip(v), "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

func strip(s string) string { return ansi.Strip(s) }

// TestBudgetHeader: the header shows the budget's state each interval when
// the session has one (duty cycle, measured cost), else the configured one.
func TestBudgetHeader(t *testing.T) {
	m := newTestModel(t)
	feedLeak(t, m, 1)
	if v := m.View(); !strings.Contains(v, "budget none set") {
		t.Errorf("no budget: header lacks %q:\n%s", "budget none set", v)
	}
	s := snap(1, &sched.Report{})
	s.Budget = "2%: duty 5.0%, est. 1.4%, measured 1.9% of target CPU"
	send(t, m, s)
	if v := m.View(); !strings.Contains(v, "budget 2%: duty 5.0%") {
		t.Errorf("header lacks the budget's state:\n%s", v)
	}
	if v := m.View(); strings.Contains(v, "runtime's own") {
		t.Errorf("a runtime latency line without runtime figures:\n%s", v)
	}
	s = snap(2, &sched.Report{})
	s.Runtime = "n 1234    p50 241ns"
	send(t, m, s)
	if v := m.View(); !strings.Contains(v, "Sched latency  runtime's own n 1234    p50 241ns") || !strings.Contains(v, "  in windows   last ") {
		t.Errorf("the runtime's own latency is not shown first, the windows' after it:\n%s", v)
	}
}
