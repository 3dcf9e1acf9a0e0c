// Package layout gives the byte offsets of the fields of the Go runtime's
// scheduler structures (runtime.g, m, p, schedt, gobuf, gQueue, gList) in a
// given binary: read from the binary's own DWARF when it has any, otherwise
// from per-release tables (tables/, one file per Go release, in the format of
// /work/shared/go-runtime-layouts: written by WriteTable from DWARF).
//
// Keys are "struct.field" with the struct named as the runtime's code names
// its variables: "g.goid", "m.procid", "p.runqhead", "sched.timeToRun" (for
// runtime.schedt), "gobuf.sp", "gQueue.size", "gList.head", "mstats.numgc"
// (for runtime.mstats, the type of runtime.memstats; in the tables of
// go1.19, go1.26 and go1.27 only). Fields renamed
// between releases are stored under their newest name (g.trackingStamp was
// g.runnableStamp up to go1.19).
package layout

import (
	"bufio"
	"debug/dwarf"
	"embed"
	"errors"
	"fmt"
	"go/version"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Sources of a layout.
const (
	SourceDWARF = "dwarf"
	SourceTable = "table"
)

// Sentinel errors.
var (
	ErrNoLayout           = errors.New("no struct layout for this Go version")
	ErrUnsupportedVersion = errors.New("unsupported Go version")
)

// Oldest is the oldest Go release gmpwatch supports: the register ABI on
// amd64 and the go1.18 pclntab.
const Oldest = "go1.18"

// Layout is the set of field offsets of one binary.
type Layout struct {
	Source  string           // SourceDWARF or SourceTable
	Note    string           // which table, what was guessed
	Offsets map[string]int64 // "g.goid" → 152
	Types   map[string]string
	Sizes   map[string]int64 // "g" → 456
}

// structs maps the runtime's type names to the key prefixes.
var structs = map[string]string{
	"runtime.g":      "g",
	"runtime.m":      "m",
	"runtime.p":      "p",
	"runtime.schedt": "sched",
	"runtime.gobuf":  "gobuf",
	"runtime.gQueue": "gQueue",
	"runtime.gList":  "gList",
	"runtime.mstats": "mstats", // numgc: tables carry it for go1.19, go1.26, go1.27
}

// renamed maps an old field key to its newest name.
var renamed = map[string]string{
	"g.runnableStamp": "g.trackingStamp",
}

func newLayout(src string) *Layout {
	return &Layout{Source: src, Offsets: map[string]int64{}, Types: map[string]string{}, Sizes: map[string]int64{}}
}

func (l *Layout) set(prefix, field string, off int64, typ string) {
	key := prefix + "." + field
	if n, ok := renamed[key]; ok {
		key = n
	}
	l.Offsets[key] = off
	l.Types[key] = typ
}

// FromDWARF reads the layouts from a binary's DWARF.
func FromDWARF(d *dwarf.Data) (*Layout, error) {
	l := newLayout(SourceDWARF)
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			return nil, fmt.Errorf("read DWARF: %w", err)
		}
		if e == nil {
			break
		}
		if e.Tag != dwarf.TagStructType {
			if e.Children && e.Tag != dwarf.TagCompileUnit {
				r.SkipChildren()
			}
			continue
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		prefix, ok := structs[name]
		if !ok || l.Sizes[prefix] != 0 {
			if e.Children {
				r.SkipChildren()
			}
			continue
		}
		t, err := d.Type(e.Offset)
		if err != nil {
			return nil, fmt.Errorf("DWARF type %s: %w", name, err)
		}
		st, ok := t.(*dwarf.StructType)
		if !ok {
			continue
		}
		l.Sizes[prefix] = st.ByteSize
		for _, f := range st.Field {
			l.set(prefix, f.Name, f.ByteOffset, f.Type.String())
		}
		if e.Children {
			r.SkipChildren()
		}
	}
	if l.Sizes["g"] == 0 || l.Sizes["m"] == 0 {
		return nil, fmt.Errorf("DWARF has no runtime.g or runtime.m")
	}
	return l, nil
}

//go:embed tables/*.txt
var tables embed.FS

// Tables lists the releases with a table, oldest first.
func Tables() []string {
	ents, _ := tables.ReadDir("tables")
	var out []string
	seen := map[string]bool{}
	for _, e := range ents {
		if v, _, ok := strings.Cut(e.Name(), "-"); ok && !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return version.Compare(out[i], out[j]) < 0 })
	return out
}

// FromTable returns the table layout for a Go release. Tables are keyed on
// the minor release: a patch release other than the one the table was made
// with is assumed to keep its layout, and Note says so.
func FromTable(goVersion, arch string) (*Layout, error) {
	if !version.IsValid(goVersion) {
		return nil, fmt.Errorf("%w: %q is not a Go release", ErrUnsupportedVersion, goVersion)
	}
	if version.Compare(goVersion, Oldest) < 0 {
		return nil, fmt.Errorf("%w: %s is older than %s, the oldest gmpwatch supports", ErrUnsupportedVersion, goVersion, Oldest)
	}
	lang := version.Lang(goVersion)
	var match string
	for _, v := range Tables() {
		if version.Lang(v) == lang {
			match = v
		}
	}
	if match == "" {
		return nil, fmt.Errorf("%w %s (tables exist for %s; a binary with DWARF needs none)", ErrNoLayout, goVersion, strings.Join(Tables(), ", "))
	}
	name := path.Join("tables", match+"-"+arch+".txt")
	f, err := tables.Open(name)
	if err != nil {
		return nil, fmt.Errorf("%w %s on %s", ErrNoLayout, goVersion, arch)
	}
	defer f.Close()
	l, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("table %s: %w", name, err)
	}
	if match == goVersion {
		l.Note = fmt.Sprintf("table %s-%s (the exact release)", match, arch)
	} else {
		l.Note = fmt.Sprintf("table %s-%s: the layout of %s is assumed for %s (same minor release; guessed, not read)", match, arch, match, goVersion)
	}
	// gList is a single-field struct in every release; tables omit it.
	if _, ok := l.Offsets["gList.head"]; !ok {
		l.Offsets["gList.head"] = 0
	}
	return l, nil
}

// Parse reads the table format: a block per struct, `runtime.NAME size=N
// (0xN)`, then `  field off=N (0xN) type=T` or `  field MISSING`.
func Parse(r io.Reader) (*Layout, error) {
	l := newLayout(SourceTable)
	sc := bufio.NewScanner(r)
	prefix := ""
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		fields := strings.Fields(line)
		if !strings.HasPrefix(line, " ") {
			p, ok := structs[fields[0]]
			if !ok || len(fields) < 2 || !strings.HasPrefix(fields[1], "size=") {
				return nil, fmt.Errorf("line %d: want `runtime.NAME size=N`", n)
			}
			size, err := strconv.ParseInt(strings.TrimPrefix(fields[1], "size="), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			prefix = p
			l.Sizes[prefix] = size
			continue
		}
		if prefix == "" {
			return nil, fmt.Errorf("line %d: field before any struct", n)
		}
		if len(fields) == 2 && fields[1] == "MISSING" {
			continue
		}
		if len(fields) < 2 || !strings.HasPrefix(fields[1], "off=") {
			return nil, fmt.Errorf("line %d: want `field off=N`", n)
		}
		offStr, rest := strings.TrimPrefix(fields[1], "off="), fields[2:]
		if offStr == "" && len(rest) > 0 { // "off=   0" splits on the padding
			offStr, rest = rest[0], rest[1:]
		}
		off, err := strconv.ParseInt(offStr, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		typ := ""
		for _, f := range rest {
			if t, ok := strings.CutPrefix(f, "type="); ok {
				typ = t
			}
		}
		l.set(prefix, fields[0], off, typ)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if l.Sizes["g"] == 0 {
		return nil, errors.New("no runtime.g block")
	}
	return l, nil
}

// TableFields lists, per struct, the fields the tables record.
var TableFields = []struct {
	Struct string
	Fields []string
}{
	{"runtime.m", []string{"g0", "morebuf", "procid", "gsignal", "tls", "mstartfn", "curg", "caughtsig", "p", "nextp", "oldp", "id", "mallocing", "locks", "spinning", "blocked", "incgo", "alllink", "schedlink", "lockedg", "waitunlockf", "syscalltick", "libcallsp", "vdsoSP", "vdsoPC", "mOS"}},
	{"runtime.g", []string{"stack", "stackguard0", "_panic", "_defer", "m", "sched", "syscallsp", "syscallpc", "syscallbp", "param", "atomicstatus", "stackLock", "goid", "schedlink", "waitsince", "waitreason", "preempt", "tracking", "trackingSeq", "trackingStamp", "runnableTime", "lockedm", "parentGoid", "gopc", "ancestors", "startpc", "waiting", "labels", "timer", "bubble", "trace"}},
	{"runtime.gobuf", []string{"sp", "pc", "g", "ctxt", "lr", "bp"}},
	{"runtime.p", []string{"id", "status", "link", "schedtick", "syscalltick", "m", "mcache", "goidcache", "runqhead", "runqtail", "runq", "runnext", "gFree", "timers", "goroutinesCreated"}},
	{"runtime.gQueue", []string{"head", "tail", "size"}},
	{"runtime.schedt", []string{"goidgen", "lastpoll", "lock", "midle", "nmidle", "mnext", "maxmcount", "ngsys", "nGsyscallNoP", "pidle", "npidle", "nmspinning", "runq", "runqsize", "gcwaiting", "stopwait", "timeToRun", "idleTime", "totalMutexWaitTime", "goroutinesCreated"}},
	// runtime.memstats: numgc counts completed GC cycles. Only the tables of
	// the releases whose builds were checked have this block; without it a
	// stripped binary's GC count is unknown.
	{"runtime.mstats", []string{"numgc"}},
}

// WriteTable writes l in the table format, with the fields of TableFields.
func (l *Layout) WriteTable(w io.Writer) error {
	bw := bufio.NewWriter(w)
	for _, s := range TableFields {
		p := structs[s.Struct]
		size, ok := l.Sizes[p]
		if !ok {
			continue
		}
		fmt.Fprintf(bw, "%s size=%d (%#x)\n", s.Struct, size, size)
		for _, f := range s.Fields {
			key := p + "." + f
			if off, ok := l.Offsets[key]; ok {
				fmt.Fprintf(bw, "  %-20s off=%4d (0x%03x) type=%s\n", f, off, off, l.Types[key])
			} else {
				fmt.Fprintf(bw, "  %-20s MISSING\n", f)
			}
		}
	}
	return bw.Flush()
}
