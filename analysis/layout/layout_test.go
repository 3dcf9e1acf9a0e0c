package layout

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"strings"
	"testing"

	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// TestTables checks every table against RUNTIME-FACTS.md's summary of the
// layouts (g.goid, g.waitreason, m.procid, m.p, sched.timeToRun per release).
func TestTables(t *testing.T) {
	facts := map[string]map[string]int64{
		"go1.19": {"g.goid": 152, "g.waitreason": 176, "g.gopc": 296, "m.procid": 72, "m.p": 208, "sched.timeToRun": 312},
		"go1.21": {"g.goid": 152, "g.parentGoid": 272, "g.gopc": 280, "m.procid": 72, "sched.timeToRun": 320},
		"go1.23": {"g.goid": 160, "g.waitreason": 184, "g.atomicstatus": 152, "g.parentGoid": 280, "p.runqhead": 392},
		"go1.25": {"g.goid": 152, "m.procid": 64, "m.curg": 184, "m.p": 200, "sched.timeToRun": 344},
		"go1.26": {"g.goid": 152, "g.parentGoid": 280, "g.gopc": 288, "g.startpc": 304, "m.p": 208, "m.id": 232, "p.runqhead": 400, "sched.timeToRun": 360},
	}
	if got := len(Tables()); got < 10 {
		t.Fatalf("%d tables, want go1.18 to go1.27", got)
	}
	for _, v := range Tables() {
		l, err := FromTable(v, "amd64")
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		for _, s := range []string{"g", "m", "p", "sched", "gobuf", "gQueue"} {
			if l.Sizes[s] <= 0 {
				t.Errorf("%s: no size for %s", v, s)
			}
		}
		for key, want := range facts[v[:6]] {
			if got, ok := l.Offsets[key]; !ok || got != want {
				t.Errorf("%s: %s = %d, RUNTIME-FACTS says %d", v, key, got, want)
			}
		}
		if !strings.Contains(l.Note, "exact release") {
			t.Errorf("%s: note %q", v, l.Note)
		}
		// Round trip through the table format.
		var buf bytes.Buffer
		if err := l.WriteTable(&buf); err != nil {
			t.Fatal(err)
		}
		back, err := Parse(&buf)
		if err != nil {
			t.Fatalf("%s: reparse: %v", v, err)
		}
		for _, s := range TableFields {
			for _, f := range s.Fields {
				key := structs[s.Struct] + "." + f
				if back.Offsets[key] != l.Offsets[key] {
					t.Errorf("%s: %s %d after round trip, was %d", v, key, back.Offsets[key], l.Offsets[key])
				}
			}
		}
	}
	if _, ok := mustTable(t, "go1.25.14").Offsets["sched.runqsize"]; ok {
		t.Error("go1.25 has no sched.runqsize")
	}
	if _, ok := mustTable(t, "go1.24.13").Offsets["sched.runqsize"]; !ok {
		t.Error("go1.24 has sched.runqsize")
	}
	if _, ok := mustTable(t, "go1.20.14").Offsets["g.parentGoid"]; ok {
		t.Error("go1.20 has no g.parentGoid")
	}
}

// TestTablesNumgc checks the offset of runtime.mstats.numgc in the tables of
// the releases this machine builds against the DWARF of a build by each:
// the go1.19.13 table is checked against go1.19.8, the same minor release.
// The other tables lack it, so a stripped binary's GC count stays unknown.
func TestTablesNumgc(t *testing.T) {
	for _, tc := range testtarget.Toolchains {
		t.Run(string(tc), func(t *testing.T) {
			bin := testtarget.Build(t, "gosched", tc, testtarget.Plain)
			info, err := buildinfo.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			d, err := f.DWARF()
			if err != nil {
				t.Fatal(err)
			}
			want, err := FromDWARF(d)
			if err != nil {
				t.Fatal(err)
			}
			w, ok := want.Offsets["mstats.numgc"]
			if !ok || w < 4096 { // past the heap stats and pause_ns in every release
				t.Fatalf("DWARF of %s: mstats.numgc = %d, %v", info.GoVersion, w, ok)
			}
			l := mustTable(t, info.GoVersion)
			if got, ok := l.Offsets["mstats.numgc"]; !ok || got != w {
				t.Errorf("table for %s: mstats.numgc = %d (%v), DWARF says %d (%s)", info.GoVersion, got, ok, w, l.Note)
			}
			if l.Sizes["mstats"] != want.Sizes["mstats"] {
				t.Errorf("table for %s: mstats size %d, DWARF says %d", info.GoVersion, l.Sizes["mstats"], want.Sizes["mstats"])
			}
		})
	}
	for _, v := range []string{"go1.18.10", "go1.25.14"} {
		if off, ok := mustTable(t, v).Offsets["mstats.numgc"]; ok {
			t.Errorf("%s: mstats.numgc = %d from a table never checked against a build", v, off)
		}
	}
}

func mustTable(t *testing.T, v string) *Layout {
	l, err := FromTable(v, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestFromTableVersions(t *testing.T) {
	l, err := FromTable("go1.26.2", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(l.Note, "go1.26.8") || !strings.Contains(l.Note, "assumed for go1.26.2") {
		t.Errorf("a guessed patch release must say so: %q", l.Note)
	}
	for v, want := range map[string]error{
		"go1.17.13": ErrUnsupportedVersion,
		"go1.99.1":  ErrNoLayout,
		"devel":     ErrUnsupportedVersion,
	} {
		if _, err := FromTable(v, "amd64"); !errors.Is(err, want) {
			t.Errorf("FromTable(%s) = %v, want %v", v, err, want)
		}
	}
	if _, err := FromTable("go1.26.8", "arm64"); err != nil {
		t.Errorf("arm64 table: %v", err)
	}
	if _, err := FromTable("go1.19.8", "riscv64"); !errors.Is(err, ErrNoLayout) {
		t.Errorf("riscv64: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("runtime.g size=456 (0x1c8)\n  goid off= 152 (0x098) type=uint64\n  x MISSING\n")
	f.Add("runtime.g size=1\n  a off=\n")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = Parse(strings.NewReader(s))
	})
}
