package sched

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"golang.org/x/tools/txtar"
)

var update = flag.Bool("update", false, "rewrite the golden outputs in testdata/*.txtar")

// A test case in testdata/*.txtar holds these files:
//
//	config        optional "key value" lines: max_goroutines N
//	waitreasons   "index name" lines: the target's wait-reason table
//	symbols       "lo hi function file line" lines: a symbol table, PCs in [lo, hi)
//	events        one event or directive a line (see parseEventLine)
//	out.txt       golden: the interval blocks and the final text report
//	out.jsonl     golden: the same reports, one JSON object a line
//
// Directives in events: "snapshot" reports the interval so far and starts the
// next; "lost N" sets the tracer's lost-event count to N.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txtar")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test cases: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txtar"), func(t *testing.T) {
			ar, err := txtar.ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			sec := map[string]string{}
			for _, f := range ar.Files {
				sec[f.Name] = string(f.Data)
			}
			cfg := Config{
				WaitReasons: parseWaitReasons(t, sec["waitreasons"]),
				Symbolize:   parseSymbols(t, sec["symbols"]).lookup,
			}
			parseConfig(t, sec["config"], &cfg)
			txt, jsonl := run(t, cfg, sec["events"])
			if *update {
				setSection(ar, "out.txt", txt)
				setSection(ar, "out.jsonl", jsonl)
				if err := os.WriteFile(file, txtar.Format(ar), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got, want := txt, sec["out.txt"]; got != want {
				t.Errorf("out.txt differs (run with -update to accept):\n--- got\n%s\n--- want\n%s", got, want)
			}
			if got, want := jsonl, sec["out.jsonl"]; got != want {
				t.Errorf("out.jsonl differs (run with -update to accept):\n--- got\n%s\n--- want\n%s", got, want)
			}
		})
	}
}

func setSection(ar *txtar.Archive, name, data string) {
	for i := range ar.Files {
		if ar.Files[i].Name == name {
			ar.Files[i].Data = []byte(data)
			return
		}
	}
	ar.Files = append(ar.Files, txtar.File{Name: name, Data: []byte(data)})
}

// run feeds the events to a model and returns the text and JSON outputs.
func run(t *testing.T, cfg Config, events string) (txt, jsonl string) {
	t.Helper()
	m := New(cfg)
	var tb, jb bytes.Buffer
	emit := func(r *Report) {
		if r.Kind == KindInterval {
			WriteInterval(&tb, r)
		} else {
			WriteFinal(&tb, r)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		jb.Write(b)
		jb.WriteByte('\n')
	}
	sc := bufio.NewScanner(strings.NewReader(events))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		switch f[0] {
		case "snapshot":
			emit(m.Snapshot(0))
			m.Reset(0)
			continue
		case "lost":
			v, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("events:%d: %v", n, err)
			}
			m.SetLost(v)
			continue
		}
		ev, err := parseEventLine(f)
		if err != nil {
			t.Fatalf("events:%d: %v", n, err)
		}
		// Every event goes through the wire form, as from the tracer.
		var dec event.Event
		if err := event.Decode(event.Encode(nil, &ev), &dec); err != nil {
			t.Fatalf("events:%d: %v", n, err)
		}
		m.Handle(&dec)
	}
	emit(m.Total(0))
	return tb.String(), jb.String()
}

// parseEventLine parses "TS KIND key=value...". Keys: g (goid), aux, pc, pc2,
// m (m.id, default -1), tid, p (p.id, default -1), reason, flags (parked,
// g0, joined by |). Numbers are decimal or 0x-hex.
func parseEventLine(f []string) (event.Event, error) {
	ev := event.Event{MID: -1, PID: -1, StackID: event.NoStack}
	if len(f) < 2 {
		return ev, fmt.Errorf("want TS KIND [key=value...], got %q", strings.Join(f, " "))
	}
	ts, err := strconv.ParseUint(f[0], 0, 64)
	if err != nil {
		return ev, fmt.Errorf("timestamp: %w", err)
	}
	ev.Ts = ts
	k, ok := event.ParseKind(f[1])
	if !ok {
		return ev, fmt.Errorf("unknown kind %q", f[1])
	}
	ev.Kind = k
	for _, kv := range f[2:] {
		key, val, ok := strings.Cut(kv, "=")
		if !ok {
			return ev, fmt.Errorf("want key=value, got %q", kv)
		}
		if key == "flags" {
			for _, fl := range strings.Split(val, "|") {
				switch fl {
				case "parked":
					ev.Flags |= event.FlagParked
				case "g0":
					ev.Flags |= event.FlagFromG0
				default:
					return ev, fmt.Errorf("unknown flag %q", fl)
				}
			}
			continue
		}
		n, err := strconv.ParseInt(val, 0, 64)
		if err != nil {
			u, uerr := strconv.ParseUint(val, 0, 64)
			if uerr != nil {
				return ev, fmt.Errorf("%s: %w", key, err)
			}
			n = int64(u)
		}
		switch key {
		case "g":
			ev.Goid = uint64(n)
		case "aux":
			ev.Aux = uint64(n)
		case "pc":
			ev.PC = uint64(n)
		case "pc2":
			ev.PC2 = uint64(n)
		case "m":
			ev.MID = n
		case "tid":
			ev.TID = uint32(n)
		case "p":
			ev.PID = int32(n)
		case "reason":
			ev.Reason = uint8(n)
		default:
			return ev, fmt.Errorf("unknown key %q", key)
		}
	}
	return ev, nil
}

func parseConfig(t *testing.T, s string, cfg *Config) {
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "max_goroutines":
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("config: %v", err)
			}
			cfg.MaxGoroutines = n
		default:
			t.Fatalf("config: unknown key %q", f[0])
		}
	}
}

func parseWaitReasons(t *testing.T, s string) plan.WaitReasons {
	var w plan.WaitReasons
	for _, line := range strings.Split(s, "\n") {
		idx, name, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		i, err := strconv.Atoi(idx)
		if err != nil || i < 0 || i > 255 {
			t.Fatalf("waitreasons: bad index %q", idx)
		}
		for len(w) <= i {
			w = append(w, "")
		}
		w[i] = strings.TrimSpace(name)
	}
	return w
}

// symtab is a small symbol table: function ranges with one line each.
type symtab []symRange

type symRange struct {
	lo, hi uint64
	frame  gobin.Frame
}

func parseSymbols(t *testing.T, s string) symtab {
	var tab symtab
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 5 {
			t.Fatalf("symbols: want lo hi function file line, got %q", line)
		}
		lo, err1 := strconv.ParseUint(f[0], 0, 64)
		hi, err2 := strconv.ParseUint(f[1], 0, 64)
		ln, err3 := strconv.Atoi(f[4])
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("symbols: bad line %q", line)
		}
		tab = append(tab, symRange{lo, hi, gobin.Frame{Func: f[2], File: f[3], Line: ln}})
	}
	sort.Slice(tab, func(i, j int) bool { return tab[i].lo < tab[j].lo })
	return tab
}

func (tab symtab) lookup(pc uint64, ret bool) (gobin.Frame, bool) {
	if ret {
		pc-- // the call before a return address
	}
	i := sort.Search(len(tab), func(i int) bool { return tab[i].hi > pc })
	if i < len(tab) && tab[i].lo <= pc {
		return tab[i].frame, true
	}
	return gobin.Frame{}, false
}
