package tui

import (
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"

	"github.com/gmpwatch/gmpwatch/analysis/sched"
)

var (
	stTitle  = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("12"))
	stLabel  = lipgloss.NewStyle().Bold(true)
	stDim    = lipgloss.NewStyle().Faint(true)
	stWarn   = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("9"))
	stTabOn  = lipgloss.NewStyle().Bold(true).Reverse(true)
	stTabOff = lipgloss.NewStyle().Faint(true)
	stHead   = lipgloss.NewStyle().Bold(true).Underline(true)
	stSpark  = lipgloss.NewStyle().Foreground(lipgloss.Color("10"))
)

// fit cuts a plain line to the terminal width.
func (m *Model) fit(s string) string {
	if m.width <= 0 {
		return s
	}
	return ansi.Truncate(s, m.width, "…")
}

// View implements tea.Model. Every line fits the width; the whole fits the
// height (the panel's table gets what the fixed lines leave).
func (m *Model) View() string {
	var top []string
	add := func(style *lipgloss.Style, s string) {
		s = m.fit(s)
		if style != nil {
			s = style.Render(s)
		}
		top = append(top, s)
	}
	add(&stTitle, m.titleLine())
	add(nil, m.probeLine())
	if m.last == nil {
		add(&stDim, "waiting for the first interval…")
	}
	for _, l := range m.latencyLines() {
		add(nil, l)
	}
	add(nil, m.goroutineLine())
	add(nil, m.threadLine())
	top = append(top, m.tabLine())

	footer := m.fit("q quit  p pause  s sort  Tab panel  r reset  ? help")
	rows := m.height - len(top) - 1
	var body []string
	if m.help {
		body = m.helpLines()
	} else {
		body = m.panelLines(max(rows, 1))
	}
	if rows < 1 {
		rows = 1
	}
	if len(body) > rows {
		body = body[:rows]
	}
	for len(body) < rows {
		body = append(body, "")
	}
	return strings.Join(top, "\n") + "\n" + strings.Join(body, "\n") + "\n" + stDim.Render(footer)
}

func (m *Model) titleLine() string {
	i := m.info
	var b strings.Builder
	fmt.Fprintf(&b, "gmpwatch  PID %d  %s  %s", i.PID, filepath.Base(i.Exe), i.GoVersion)
	if g := m.gmp(); g != nil {
		fmt.Fprintf(&b, "  GOMAXPROCS %d", g.GOMAXPROCS)
	}
	now := time.Now()
	if m.last != nil && !m.last.At.IsZero() {
		now = m.last.At
	}
	if !i.ProcStart.IsZero() {
		fmt.Fprintf(&b, "  up %s", shortDur(now.Sub(i.ProcStart)))
	}
	fmt.Fprintf(&b, "  traced %s", shortDur(now.Sub(i.Started)))
	if m.paused {
		fmt.Fprintf(&b, "  PAUSED (held %d)", len(m.held))
	}
	return b.String()
}

func (m *Model) probeLine() string {
	var b strings.Builder
	fmt.Fprintf(&b, "probes %d on", len(m.info.Probes))
	var hits float64
	for _, r := range m.hitRate {
		hits += r
	}
	fmt.Fprintf(&b, " (%s hits/s)", count(uint64(hits)))
	var ev, lost uint64
	if m.last != nil {
		ev, lost = m.last.Probes.Events, m.last.Probes.Lost
	}
	fmt.Fprintf(&b, "  events %s (%s/s)  lost %s", count(ev), count(uint64(m.evRate)), count(lost))
	if m.last != nil && m.last.Probes.ReadErrors > 0 {
		fmt.Fprintf(&b, "  read errors %s", count(m.last.Probes.ReadErrors))
	}
	if m.last != nil && m.info.Interval > 0 {
		fmt.Fprintf(&b, "  gmpwatch CPU %.1f%%", 100*m.last.SelfCPU.Seconds()/m.info.Interval.Seconds())
	}
	budget := m.info.Budget
	if m.last != nil && m.last.Budget != "" {
		budget = m.last.Budget
	}
	if budget == "" {
		budget = "none set"
	}
	fmt.Fprintf(&b, "  budget %s", budget)
	return b.String()
}

func (m *Model) latencyLines() []string {
	var r *sched.Report
	if m.last != nil {
		r = m.last.Report
	}
	// Under a budget the runtime's own histogram is the exact figure and
	// goes first; the probes' figures come from the windows and include
	// the probes' own cost, and say so.
	label := "Sched latency"
	var out []string
	if m.last != nil && m.last.Runtime != "" {
		out = append(out, "Sched latency  runtime's own "+m.last.Runtime)
		label = "  in windows "
	}
	if r != nil {
		l := r.SchedLatency
		out = append(out, fmt.Sprintf("%-13s  last %-6s n %-7s p50 %-8s p90 %-8s p99 %-8s max %s",
			label, shortDur(time.Duration(r.DurationNs)), count(l.Count), sched.FormatNs(l.P50Ns), sched.FormatNs(l.P90Ns), sched.FormatNs(l.P99Ns), sched.FormatNs(l.MaxNs)))
	} else {
		out = append(out, label+"  last interval: none yet")
	}
	out = append(out, fmt.Sprintf("               total %-5s n %-7s p50 %-8s p90 %-8s p99 %-8s max %s",
		"", count(m.latN), sched.FormatNs(m.latQuantile(.5)), sched.FormatNs(m.latQuantile(.9)), sched.FormatNs(m.latQuantile(.99)), sched.FormatNs(m.latMax)))
	w := max(m.width-22, 8)
	out = append(out, "p99 over time  "+stSpark.Render(sparkline(m.p99Hist, w)))
	return out
}

func (m *Model) goroutineLine() string {
	if m.last == nil || m.last.Report == nil {
		return "Goroutines"
	}
	r := m.last.Report
	g := r.Goroutines
	sec := float64(r.DurationNs) / 1e9
	rate := func(n uint64) string {
		if sec <= 0 {
			return "-"
		}
		return count(uint64(float64(n)/sec + .5))
	}
	var b strings.Builder
	b.WriteString("Goroutines")
	if pg := m.last.Goroutines; pg != nil {
		st := pg.ByState
		fmt.Fprintf(&b, "  in process %s (running %d runnable %d waiting %d syscall %d", count(uint64(pg.Total)), st["running"], st["runnable"], st["waiting"], st["syscall"])
		if pg.Age >= time.Second {
			fmt.Fprintf(&b, ", read %s ago", shortDur(pg.Age))
		}
		b.WriteString(")")
	}
	fmt.Fprintf(&b, "  traced alive %s", count(g.Alive))
	if m.last.Goroutines == nil {
		fmt.Fprintf(&b, " (running %d runnable %d waiting %d syscall %d)", g.Running, g.Runnable, g.Waiting, g.Syscall)
	}
	fmt.Fprintf(&b, "  created %s/s exited %s/s  total created %s exited %s",
		rate(g.Created), rate(g.Exited), count(m.created), count(m.exited))
	s := b.String()
	if g.Untracked > 0 {
		s += fmt.Sprintf("  untracked %s", count(g.Untracked))
	}
	return s
}

func (m *Model) threadLine() string {
	var b strings.Builder
	b.WriteString("Threads")
	if g := m.gmp(); g != nil {
		var sys, locked int
		for _, mr := range g.Ms {
			if mr.Syscall {
				sys++
			}
			if mr.Locked {
				locked++
			}
		}
		fmt.Fprintf(&b, "  Ms %d (idle %d, spinning %d, in syscall %d, locked %d)  idle Ps %d  global runq %d",
			len(g.Ms), g.IdleThreads, g.Spinning, sys, locked, g.IdleProcs, g.RunQueue)
	} else if m.last != nil && m.last.GMPErr != "" {
		fmt.Fprintf(&b, "  (memory read failed: %s)", m.last.GMPErr)
	}
	fmt.Fprintf(&b, "  created %d", m.threadsCreated)
	if len(m.threadsWhy) > 0 {
		why := make([]string, 0, len(m.threadsWhy))
		for fn, n := range m.threadsWhy {
			why = append(why, fmt.Sprintf("%s %d", strings.TrimPrefix(fn, "runtime."), n))
		}
		sort.Strings(why)
		fmt.Fprintf(&b, " (by %s)", strings.Join(why, ", "))
	}
	if m.heapGrows > 0 {
		fmt.Fprintf(&b, "  heap grew %d× %s", m.heapGrows, sched.FormatBytes(m.heapGrowBytes))
	}
	if g := m.gmp(); g != nil && g.HasGC {
		fmt.Fprintf(&b, "  GC cycles %d (+%d)", g.GCCycles, m.gcDelta)
	} else {
		b.WriteString("  GC cycles ?")
	}
	if m.last != nil && m.last.RSS > 0 {
		fmt.Fprintf(&b, "  RSS %s (%+.1f MiB)", mib(m.last.RSS), float64(m.rssDelta)/(1<<20))
	}
	return b.String()
}

func (m *Model) tabLine() string {
	var parts []string
	for p := Panel(0); p < numPanels; p++ {
		name := fmt.Sprintf(" %d %s ", p+1, p)
		if p == m.panel {
			parts = append(parts, stTabOn.Render(name))
		} else {
			parts = append(parts, stTabOff.Render(name))
		}
	}
	s := strings.Join(parts, "│") + stDim.Render("  sort: "+m.SortColumn())
	return ansi.Truncate(s, max(m.width, 1), "…")
}

func (m *Model) gmp() *GMP {
	if m.last == nil {
		return nil
	}
	return m.last.GMP
}

func (m *Model) helpLines() []string {
	l := []string{
		stLabel.Render("Keys"),
		"  q, Ctrl-C   quit (detaches every probe)",
		"  p, space    pause the display (data keeps being counted)",
		"  s           cycle the sort column of the panel",
		"  Tab, ←/→    switch panel (1-4 jump)",
		"  r           reset the counters (totals, latency since, trends)",
		"  ?           this help; any key closes it",
		"",
		stLabel.Render("What is shown"),
		"  Sched latency: runnable → running (every transition), from the probes.",
		"  Ps and Ms: read from the target's memory each interval (racy snapshot);",
		"    busy % from the probes. Sites: go statements; trend = alive change (leaks).",
		"  Counters are since start or the last r; lost events are never hidden.",
	}
	for i := range l {
		l[i] = m.fit(l[i])
	}
	return l
}

// table renders rows under headers; numeric columns right-aligned; the
// column flex is cut so that the line fits the width.
type table struct {
	head  []string
	right []bool
	rows  [][]string
}

func (m *Model) render(t table, n int) []string {
	w := make([]int, len(t.head))
	for i, h := range t.head {
		w[i] = len(h)
	}
	for _, r := range t.rows {
		for i, c := range r {
			w[i] = max(w[i], ansi.StringWidth(c))
		}
	}
	line := func(cells []string) string {
		var b strings.Builder
		for i, c := range cells {
			if i > 0 {
				b.WriteString("  ")
			}
			pad := strings.Repeat(" ", max(w[i]-ansi.StringWidth(c), 0))
			if t.right[i] {
				b.WriteString(pad + c)
			} else if i < len(cells)-1 {
				b.WriteString(c + pad)
			} else {
				b.WriteString(c)
			}
		}
		return m.fit(b.String())
	}
	out := []string{stHead.Render(line(t.head))}
	for i, r := range t.rows {
		if i >= n-1 {
			out = append(out, stDim.Render(m.fit(fmt.Sprintf("… %d more", len(t.rows)-i))))
			break
		}
		out = append(out, line(r))
	}
	return out
}

func (m *Model) panelLines(n int) []string {
	switch m.panel {
	case PanelSites:
		return m.sitesPanel(n)
	case PanelWaits:
		return m.waitsPanel(n)
	case PanelGMP:
		return m.gmpPanel(n)
	default:
		return m.threadsPanel(n)
	}
}

// trendWindow is how many intervals the alive trend looks back.
const trendWindow = 10

func (a *siteAcc) trend() int64 {
	h := a.aliveHist
	if len(h) == 0 {
		return 0
	}
	from := a.base
	if len(h) > trendWindow {
		from = h[len(h)-1-trendWindow]
	}
	return int64(h[len(h)-1]) - int64(from)
}

// SiteRows returns the creation sites in display order, as "file:line"
// keys; for tests.
func (m *Model) SiteRows() []string {
	var out []string
	for _, a := range m.sortedSites() {
		out = append(out, fileLine(a.site))
	}
	return out
}

func (m *Model) sortedSites() []*siteAcc {
	ss := make([]*siteAcc, 0, len(m.sites))
	for _, a := range m.sites {
		ss = append(ss, a)
	}
	col := sortCols[PanelSites][m.sortIdx[PanelSites]]
	sort.SliceStable(ss, func(i, j int) bool {
		a, b := ss[i], ss[j]
		switch col {
		case "created":
			if a.created != b.created {
				return a.created > b.created
			}
		case "trend":
			if ta, tb := a.trend(), b.trend(); ta != tb {
				return ta > tb
			}
		case "site":
			if fa, fb := fileLine(a.site), fileLine(b.site); fa != fb {
				return fa < fb
			}
		}
		if a.site.Alive != b.site.Alive {
			return a.site.Alive > b.site.Alive
		}
		if a.created != b.created {
			return a.created > b.created
		}
		return a.site.PC < b.site.PC
	})
	return ss
}

func fileLine(s sched.Site) string {
	if s.File == "" {
		return s.PC
	}
	dir := filepath.Base(filepath.Dir(s.File))
	return dir + "/" + filepath.Base(s.File) + ":" + strconv.Itoa(s.Line)
}

func (m *Model) sitesPanel(n int) []string {
	t := table{
		head:  []string{"ALIVE", "CREATED", "EXITED", "NEW", "TREND", "ALIVE OVER TIME", "GO STATEMENT", "FUNCTION"},
		right: []bool{true, true, true, true, true, false, false, false},
	}
	for _, a := range m.sortedSites() {
		tr := a.trend()
		trs := strconv.FormatInt(tr, 10)
		if tr > 0 {
			trs = "+" + trs
		}
		h := a.aliveHist
		if len(h) > 16 {
			h = h[len(h)-16:]
		}
		t.rows = append(t.rows, []string{count(a.site.Alive), count(a.created), count(a.exited), count(a.lastNew), trs,
			sparkline(h, 16), fileLine(a.site), a.site.Function})
	}
	if len(t.rows) == 0 {
		return []string{stHead.Render(m.fit("Creation sites")), stDim.Render("no goroutine created since the start (or reset)")}
	}
	return m.render(t, n)
}

// WaitRows returns the wait reasons in display order; for tests.
func (m *Model) WaitRows() []string {
	var out []string
	for _, a := range m.sortedWaits() {
		out = append(out, a.reason)
	}
	return out
}

func (m *Model) sortedWaits() []*waitAcc {
	ws := make([]*waitAcc, 0, len(m.waits))
	for _, a := range m.waits {
		ws = append(ws, a)
	}
	col := sortCols[PanelWaits][m.sortIdx[PanelWaits]]
	sort.SliceStable(ws, func(i, j int) bool {
		a, b := ws[i], ws[j]
		switch col {
		case "waiting":
			if a.waiting != b.waiting {
				return a.waiting > b.waiting
			}
		case "count":
			if a.count != b.count {
				return a.count > b.count
			}
		case "reason":
			return a.reason < b.reason
		}
		if a.total != b.total {
			return a.total > b.total
		}
		return a.reason < b.reason
	})
	return ws
}

func (m *Model) waitsPanel(n int) []string {
	t := table{
		head:  []string{"WAITING NOW", "WAITS", "TOTAL TIME", "MEAN", "LAST INTERVAL", "REASON"},
		right: []bool{true, true, true, true, true, false},
	}
	for _, a := range m.sortedWaits() {
		mean := "-"
		if a.count > 0 {
			mean = sched.FormatNs(a.total / a.count)
		}
		t.rows = append(t.rows, []string{count(a.waiting), count(a.count), sched.FormatNs(a.total), mean, sched.FormatNs(a.lastNs), a.reason})
	}
	if len(t.rows) == 0 {
		return []string{stHead.Render(m.fit("Wait reasons")), stDim.Render("no wait seen since the start (or reset)")}
	}
	return m.render(t, n)
}

// busy returns P id → busy fraction of the last interval, from the probes.
func (m *Model) busy() map[int32]float64 {
	out := map[int32]float64{}
	if m.last == nil || m.last.Report == nil || m.last.Report.DurationNs == 0 {
		return out
	}
	r := m.last.Report
	for _, p := range r.Procs {
		out[p.ID] = float64(p.BusyNs) / float64(r.DurationNs)
	}
	return out
}

// PRowOrder returns the P IDs in display order; for tests.
func (m *Model) PRowOrder() []int32 {
	var out []int32
	for _, p := range m.sortedPs() {
		out = append(out, p.ID)
	}
	return out
}

func (m *Model) sortedPs() []PRow {
	g := m.gmp()
	if g == nil {
		return nil
	}
	ps := append([]PRow(nil), g.Ps...)
	busy := m.busy()
	col := sortCols[PanelGMP][m.sortIdx[PanelGMP]]
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		switch col {
		case "busy":
			if busy[a.ID] != busy[b.ID] {
				return busy[a.ID] > busy[b.ID]
			}
		case "runq":
			if a.RunQueue != b.RunQueue {
				return a.RunQueue > b.RunQueue
			}
		}
		return a.ID < b.ID
	})
	return ps
}

func (m *Model) gmpPanel(n int) []string {
	g := m.gmp()
	if g == nil {
		msg := "no memory read yet"
		if m.last != nil && m.last.GMPErr != "" {
			msg = "memory read failed: " + m.last.GMPErr
		}
		return []string{stHead.Render(m.fit("Ps and Ms")), stDim.Render(m.fit(msg))}
	}
	busy := m.busy()
	pt := table{
		head:  []string{"P", "STATUS", "RUNQ", "BUSY", "M", "TID", "G", "RUNNING"},
		right: []bool{true, false, true, true, true, true, true, false},
	}
	for _, p := range m.sortedPs() {
		q := strconv.FormatUint(uint64(p.RunQueue), 10)
		if p.RunNext {
			q += "+1"
		}
		b := "-"
		if v, ok := busy[p.ID]; ok {
			b = fmt.Sprintf("%.0f%%", 100*v)
		}
		mid, tid, gid, fn := "-", "-", "-", ""
		if p.M >= 0 {
			mid, tid = strconv.FormatInt(p.M, 10), strconv.FormatUint(p.TID, 10)
		}
		if p.G != 0 {
			gid, fn = strconv.FormatUint(p.G, 10), p.Func
		}
		pt.rows = append(pt.rows, []string{strconv.Itoa(int(p.ID)), p.Status, q, b, mid, tid, gid, fn})
	}
	nP := min(len(pt.rows)+1, max(n/2, 3))
	out := m.render(pt, nP)
	out = append(out, "")
	mt := table{
		head:  []string{"M", "TID", "P", "STATE", "LOCKED", "G", "RUNNING"},
		right: []bool{true, true, true, false, false, true, false},
	}
	ms := append([]MRow(nil), g.Ms...)
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].ID < ms[j].ID })
	for _, mr := range ms {
		p, gid := "-", "-"
		if mr.P >= 0 {
			p = strconv.Itoa(int(mr.P))
		}
		if mr.G != 0 {
			gid = strconv.FormatUint(mr.G, 10)
		}
		locked := ""
		if mr.Locked {
			locked = "locked"
		}
		mt.rows = append(mt.rows, []string{strconv.FormatInt(mr.ID, 10), strconv.FormatUint(mr.TID, 10), p, mState(mr), locked, gid, mr.Func})
	}
	out = append(out, m.render(mt, max(n-len(out), 2))...)
	if g.Skipped > 0 {
		out = append(out, stWarn.Render(m.fit(fmt.Sprintf("%d reads skipped (racing the runtime)", g.Skipped))))
	}
	return out
}

func mState(m MRow) string {
	switch {
	case m.Syscall:
		return "syscall"
	case m.Spinning:
		return "spinning"
	case m.Idle:
		return "idle"
	case m.G != 0:
		return "running"
	case m.P >= 0:
		return "scheduling"
	}
	return "-"
}

// ThreadRows returns the thread IDs in display order; for tests.
func (m *Model) ThreadRows() []uint32 {
	var out []uint32
	for _, a := range m.sortedThreads() {
		out = append(out, a.th.TID)
	}
	return out
}

func (m *Model) sortedThreads() []*threadAcc {
	ts := make([]*threadAcc, 0, len(m.threads))
	for _, a := range m.threads {
		ts = append(ts, a)
	}
	col := sortCols[PanelThreads][m.sortIdx[PanelThreads]]
	sort.SliceStable(ts, func(i, j int) bool {
		a, b := ts[i], ts[j]
		switch col {
		case "busy":
			if a.busy != b.busy {
				return a.busy > b.busy
			}
		case "runs":
			if a.runs != b.runs {
				return a.runs > b.runs
			}
		}
		if a.th.MID != b.th.MID {
			return a.th.MID < b.th.MID
		}
		return a.th.TID < b.th.TID
	})
	return ts
}

func (m *Model) threadsPanel(n int) []string {
	var dur uint64
	if m.last != nil && m.last.Report != nil {
		dur = m.last.Report.DurationNs
	}
	t := table{
		head:  []string{"M", "TID", "CREATED", "RUNS", "BUSY", "TOTAL RUNS", "TOTAL BUSY"},
		right: []bool{true, true, false, true, true, true, true},
	}
	for _, a := range m.sortedThreads() {
		mid := "?"
		if a.th.MID >= 0 {
			mid = strconv.FormatInt(a.th.MID, 10)
		}
		created := "before attach"
		if a.th.Created {
			created = "while traced"
		}
		runs, busy := "-", "-"
		if a.lastSeq == m.seq {
			runs = count(a.th.GoroutinesRun)
			if dur > 0 {
				busy = fmt.Sprintf("%.0f%%", 100*float64(a.th.BusyNs)/float64(dur))
			}
		}
		t.rows = append(t.rows, []string{mid, strconv.FormatUint(uint64(a.th.TID), 10), created, runs, busy, count(a.runs), sched.FormatNs(a.busy)})
	}
	if len(t.rows) == 0 {
		return []string{stHead.Render(m.fit("Threads")), stDim.Render("no thread seen running goroutines yet")}
	}
	return m.render(t, n)
}

// sparkline draws the last width values, scaled to their maximum.
func sparkline(v []uint64, width int) string {
	const bars = "▁▂▃▄▅▆▇█"
	r := []rune(bars)
	if len(v) > width {
		v = v[len(v)-width:]
	}
	var hi uint64
	for _, x := range v {
		hi = max(hi, x)
	}
	var b strings.Builder
	for _, x := range v {
		i := 0
		if hi > 0 {
			i = int(x * uint64(len(r)-1) / hi)
		}
		b.WriteRune(r[i])
	}
	return b.String()
}

// count formats a count compactly: 999, 12.3k, 4.56M.
func count(n uint64) string {
	switch {
	case n < 10000:
		return strconv.FormatUint(n, 10)
	case n < 1e6:
		return strconv.FormatFloat(float64(n)/1e3, 'f', 1, 64) + "k"
	case n < 1e9:
		return strconv.FormatFloat(float64(n)/1e6, 'f', 2, 64) + "M"
	}
	return strconv.FormatFloat(float64(n)/1e9, 'f', 2, 64) + "G"
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// shortDur formats a duration to the second, or ms below a second.
func shortDur(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
