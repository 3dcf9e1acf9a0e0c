package srcsites

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gmpwatch/gmpwatch/analysis/paths"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// lineOf returns the line of the first line in file that contains s.
func lineOf(t *testing.T, file, s string) int {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		if strings.Contains(sc.Text(), s) {
			return n
		}
	}
	t.Fatalf("%q not in %s", s, file)
	return 0
}

func TestLoadPaths(t *testing.T) {
	dir := filepath.Join(testtarget.RepoRoot(), "testdata", "paths")
	file := filepath.Join(dir, "main.go")
	sites, err := Load([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	has := func(kind, fn string, line int) bool {
		for _, s := range sites {
			if s.Kind == kind && s.Function == fn && s.Line == line && s.File == file {
				return true
			}
		}
		return false
	}
	for _, c := range []struct {
		kind, fn, text string
	}{
		{KindGo, "main.leak", "go leaked()"},
		{KindGo, "main.block", "go func() {"},
		{KindRecv, "main.block", "\t<-ch\n"[:4]},
		{KindSend, "main.block", "ch <- 1"},
		{KindRecv, "main.leaked", "func leaked() { <-never }"},
		{KindRecv, "main.lockedSyscalls", "<-start"},
	} {
		if line := lineOf(t, file, c.text); !has(c.kind, c.fn, line) {
			t.Errorf("no %s site in %s at line %d; sites: %+v", c.kind, c.fn, line, sites)
		}
	}

	// Join: the leak site measured, the block's go statement never ran.
	leakLine := lineOf(t, file, "go leaked()")
	r := &paths.Report{CG: paths.CG{Sites: []paths.GoSite{{Pos: paths.Pos{Function: "main.leak", File: "/build/elsewhere/paths/main.go", Line: leakLine}, Created: 60, Alive: 60, Leak: true}}}}
	ms := Join(sites, r)
	var ran, never int
	for _, m := range ms {
		if m.Ran {
			ran++
			if m.Kind != KindGo || m.Line != leakLine || m.Created != 60 || !m.Leak {
				t.Errorf("measured %+v", m)
			}
		} else {
			never++
		}
	}
	if ran != 1 || never != len(sites)-1 {
		t.Errorf("ran %d, never %d of %d", ran, never, len(sites))
	}
	var b strings.Builder
	WriteText(&b, ms)
	if !strings.Contains(b.String(), "created 60, alive 60, LEAK?") || !strings.Contains(b.String(), "never blocked") {
		t.Errorf("text:\n%s", b.String())
	}
}

func TestLoadBad(t *testing.T) {
	if _, err := Load([]string{"./no/such/dir"}); err == nil {
		t.Error("no error for a missing package")
	}
}
