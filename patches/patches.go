// Package patches holds gmpwatch's Go runtime patches and the logic to use
// them: list them, check that one applies to the Go in use, apply patches to
// copies of the runtime files in a cache directory, write the overlay file and
// run go build -overlay, so a program can be built with a patched runtime
// without writing to GOROOT.
//
// A patch is a folder holding patch.diff, a unified diff against files under
// $(go env GOROOT)/src (paths "a/runtime/proc.go", "b/runtime/proc.go"; a new
// file comes from /dev/null), and manifest.json (see Manifest). The shipped
// patches are embedded in the binary; more can be read from any folder.
//
// A patched binary records which patches it carries in a string in its
// read-only data (see Detect), because its Go version string does not change.
package patches

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bluekeyes/go-gitdiff/gitdiff"
)

//go:embed */manifest.json */patch.diff
var builtin embed.FS

// File names inside a patch folder.
const (
	ManifestFile = "manifest.json"
	DiffFile     = "patch.diff"
)

// Sentinel errors callers match with errors.Is.
var (
	// ErrUnknownPatch: no patch of that name in the built-in set or the folders given.
	ErrUnknownPatch = errors.New("unknown patch")
	// ErrWrongGo: the patch's manifest does not list the Go release in use.
	ErrWrongGo = errors.New("patch not made for this Go release")
	// ErrBadPatch: the patch folder is malformed (manifest, diff or parameter).
	ErrBadPatch = errors.New("malformed patch")
	// ErrNotApplicable: a hunk does not apply; the error is also a *HunkError.
	ErrNotApplicable = errors.New("patch does not apply")
)

// Manifest describes a patch (manifest.json).
type Manifest struct {
	Name    string `json:"name"`
	Summary string `json:"summary"` // one line: what it changes
	Why     string `json:"why"`     // why a runtime engineer wants it
	Effect  string `json:"effect"`  // what to expect when running a patched binary
	// Go lists the releases the patch is made and tested for ("go1.26").
	Go []string `json:"go"`
	// Param, when set, is the patch's build-time parameter, given as
	// NAME=VALUE to patch build.
	Param *Param `json:"param,omitempty"`
	// Probes documents the attach points the patch adds.
	Probes []Probe `json:"probes,omitempty"`
	// Notes is anything else a user must know.
	Notes string `json:"notes,omitempty"`
}

// Param is a patch's build-time parameter. Its value becomes a constant in
// the generated runtime file that the patched code refers to.
type Param struct {
	Name    string `json:"name"`
	Doc     string `json:"doc"`
	Kind    string `json:"kind"`              // "duration": a Go duration, the constant is in nanoseconds
	Const   string `json:"const"`             // the runtime constant defined from the value
	Default string `json:"default,omitempty"` // empty: the value is required
	Min     string `json:"min,omitempty"`
	Max     string `json:"max,omitempty"`
}

// Probe documents a function a patch adds as an attach point.
type Probe struct {
	Symbol string     `json:"symbol"` // as in .gopclntab: "runtime.gmpwatchProbeGoStatus"
	Doc    string     `json:"doc"`
	Args   []ProbeArg `json:"args"`
	Sites  []string   `json:"sites"` // where the runtime calls it
}

// ProbeArg is one argument of a probe function.
type ProbeArg struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Reg  string `json:"reg"` // amd64 ABIInternal register at the function's entry
	Doc  string `json:"doc"`
}

// Patch is a loaded patch.
type Patch struct {
	Manifest
	Diff   []byte
	Source string // "builtin" or the folder it was read from
	files  []*gitdiff.File
}

// Files returns the GOROOT/src-relative paths the patch changes or adds.
func (p *Patch) Files() []string {
	var out []string
	for _, f := range p.files {
		out = append(out, fileName(f))
	}
	return out
}

// ProbeGoStatus is the symbol of the probe function added by probe-points.
const ProbeGoStatus = "runtime.gmpwatchProbeGoStatus"

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidName reports whether name can name a patch: lower-case letters,
// digits and dashes.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Builtin returns the patches shipped with gmpwatch.
func Builtin() ([]*Patch, error) { return loadFS(builtin, "builtin") }

// LoadDir reads the patches in dir: each subfolder holding a manifest.json,
// or dir itself when it holds one.
func LoadDir(dir string) ([]*Patch, error) {
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); err == nil {
		p, err := loadOne(os.DirFS(dir), ".", dir)
		if err != nil {
			return nil, err
		}
		return []*Patch{p}, nil
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("patch folder: %w", err)
	}
	return loadFS(os.DirFS(dir), dir)
}

func loadFS(fsys fs.FS, source string) ([]*Patch, error) {
	ms, err := fs.Glob(fsys, "*/"+ManifestFile)
	if err != nil {
		return nil, err
	}
	var out []*Patch
	for _, m := range ms {
		p, err := loadOne(fsys, path.Dir(m), source)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func loadOne(fsys fs.FS, dir, source string) (*Patch, error) {
	where := source
	if dir != "." {
		where = source + "/" + dir
	}
	mb, err := fs.ReadFile(fsys, path.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadPatch, where, err)
	}
	p := &Patch{Source: where}
	if err := json.Unmarshal(mb, &p.Manifest); err != nil {
		return nil, fmt.Errorf("%w: %s/%s: %w", ErrBadPatch, where, ManifestFile, err)
	}
	if !ValidName(p.Name) {
		return nil, fmt.Errorf("%w: %s: name %q: use lower-case letters, digits and dashes", ErrBadPatch, where, p.Name)
	}
	if dir != "." && path.Base(dir) != p.Name {
		return nil, fmt.Errorf("%w: %s: manifest names %q, folder is %q", ErrBadPatch, where, p.Name, path.Base(dir))
	}
	if len(p.Go) == 0 {
		return nil, fmt.Errorf("%w: %s: manifest lists no Go release", ErrBadPatch, where)
	}
	if p.Param != nil {
		if p.Param.Kind != "duration" || !validIdent(p.Param.Const) || p.Param.Name == "" {
			return nil, fmt.Errorf("%w: %s: param needs a name, kind \"duration\" and a Go identifier as const", ErrBadPatch, where)
		}
	}
	p.Diff, err = fs.ReadFile(fsys, path.Join(dir, DiffFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadPatch, where, err)
	}
	if err := p.parse(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadPatch, where, err)
	}
	return p, nil
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func validIdent(s string) bool { return identRE.MatchString(s) }

// parse parses the diff and checks its paths.
func (p *Patch) parse() error {
	files, _, err := gitdiff.Parse(strings.NewReader(string(p.Diff)))
	if err != nil {
		return fmt.Errorf("%s: %w", DiffFile, err)
	}
	if len(files) == 0 {
		return fmt.Errorf("%s: no file changes", DiffFile)
	}
	for _, f := range files {
		if f.IsBinary || f.IsDelete || f.IsRename || f.IsCopy {
			return fmt.Errorf("%s: %s: only text changes and new files are supported", DiffFile, fileName(f))
		}
		name := fileName(f)
		if !validSrcPath(name) {
			return fmt.Errorf("%s: path %q: want a path under GOROOT/src such as runtime/proc.go", DiffFile, name)
		}
	}
	p.files = files
	return nil
}

// fileName returns the GOROOT/src-relative path a diff file changes: its
// new name without the "b/" (or "a/") prefix, as patch -p1 reads it.
func fileName(f *gitdiff.File) string {
	n := f.NewName
	if n == "" {
		n = f.OldName
	}
	for _, p := range []string{"b/", "a/"} {
		if strings.HasPrefix(n, p) {
			return n[len(p):]
		}
	}
	return n
}

func validSrcPath(p string) bool {
	return p != "" && !path.IsAbs(p) && path.Clean(p) == p && !strings.HasPrefix(p, "../") &&
		p != ".." && strings.HasSuffix(p, ".go") && strings.Contains(p, "/")
}

// Set is the patches a command can name: the built-in ones and those of any
// extra folders (which may override a built-in one of the same name).
type Set struct {
	byName map[string]*Patch
}

// LoadSet loads the built-in patches and those in dirs.
func LoadSet(dirs ...string) (*Set, error) {
	s := &Set{byName: map[string]*Patch{}}
	ps, err := Builtin()
	if err != nil {
		return nil, err
	}
	for _, d := range dirs {
		more, err := LoadDir(d)
		if err != nil {
			return nil, err
		}
		ps = append(ps, more...)
	}
	for _, p := range ps {
		s.byName[p.Name] = p
	}
	return s, nil
}

// List returns the patches sorted by name.
func (s *Set) List() []*Patch {
	out := make([]*Patch, 0, len(s.byName))
	for _, p := range s.byName {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns the patch called name.
func (s *Set) Get(name string) (*Patch, error) {
	if p, ok := s.byName[name]; ok {
		return p, nil
	}
	var names []string
	for _, p := range s.List() {
		names = append(names, p.Name)
	}
	return nil, fmt.Errorf("%w %q (have: %s)", ErrUnknownPatch, name, strings.Join(names, ", "))
}

// Selected is a patch chosen for a build, with its parameter value.
type Selected struct {
	*Patch
	Value string // the parameter value as given, or the default
	value int64  // parsed: nanoseconds for a duration
}

// Label names the selection as recorded in a binary: "preempt-slice=2ms".
func (s *Selected) Label() string {
	if s.Param == nil {
		return s.Name
	}
	return s.Name + "=" + s.Value
}

// Select resolves specs such as "probe-points" or "preempt-slice=2ms".
func (s *Set) Select(specs []string) ([]*Selected, error) {
	var out []*Selected
	seen := map[string]bool{}
	for _, spec := range specs {
		name, value, hasValue := strings.Cut(spec, "=")
		p, err := s.Get(name)
		if err != nil {
			return nil, err
		}
		if seen[name] {
			return nil, fmt.Errorf("patch %s named twice", name)
		}
		seen[name] = true
		sel := &Selected{Patch: p}
		switch {
		case p.Param == nil && hasValue:
			return nil, fmt.Errorf("%w: patch %s takes no value (got %q)", ErrBadPatch, name, spec)
		case p.Param != nil:
			if !hasValue {
				value = p.Param.Default
			}
			if value == "" {
				return nil, fmt.Errorf("patch %s needs a value: %s=%s (%s)", name, name, exampleValue(p.Param), p.Param.Doc)
			}
			v, err := parseParam(p.Param, value)
			if err != nil {
				return nil, fmt.Errorf("patch %s: %w", name, err)
			}
			sel.Value, sel.value = value, v
		}
		out = append(out, sel)
	}
	return out, nil
}

func exampleValue(p *Param) string {
	if p.Min != "" {
		return p.Min
	}
	return "VALUE"
}

var labelValueRE = regexp.MustCompile(`^[0-9a-zA-Z.]+$`)

func parseParam(p *Param, value string) (int64, error) {
	if !labelValueRE.MatchString(value) {
		return 0, fmt.Errorf("%s %q: want a duration such as 2ms", p.Name, value)
	}
	d, err := time.ParseDuration(value)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", p.Name, err)
	}
	for _, b := range []struct {
		s    string
		less bool
	}{{p.Min, true}, {p.Max, false}} {
		if b.s == "" {
			continue
		}
		lim, err := time.ParseDuration(b.s)
		if err != nil {
			return 0, fmt.Errorf("%w: %s bound %q: %w", ErrBadPatch, p.Name, b.s, err)
		}
		if (b.less && d < lim) || (!b.less && d > lim) {
			return 0, fmt.Errorf("%s %v out of range [%s, %s]", p.Name, d, p.Min, p.Max)
		}
	}
	return int64(d), nil
}

// Release returns the release of a Go version: "go1.26" for "go1.26.8" or
// "go1.27rc1 X:foo", "" when it has none (a devel build).
func Release(goversion string) string {
	m := releaseRE.FindStringSubmatch(goversion)
	if m == nil {
		return ""
	}
	return "go1." + m[1]
}

var releaseRE = regexp.MustCompile(`^go1\.(\d+)`)

// Supports reports whether the manifest lists the release of goversion.
func (m *Manifest) Supports(goversion string) bool {
	r := Release(goversion)
	for _, g := range m.Go {
		if g == r {
			return true
		}
	}
	return false
}

// CheckVersion returns an error wrapping ErrWrongGo when the patch is not
// made for goversion.
func (m *Manifest) CheckVersion(goversion, goroot string) error {
	if m.Supports(goversion) {
		return nil
	}
	return fmt.Errorf("%w: %s is made for %s; the Go in use is %s (GOROOT %s)",
		ErrWrongGo, m.Name, strings.Join(m.Go, ", "), goversion, goroot)
}

// constDecl is the Go declaration of a selected parameter's constant.
func (s *Selected) constDecl() string {
	if s.Param == nil {
		return ""
	}
	return fmt.Sprintf("// %s is %s of patch %s (%s=%s).\nconst %s = %s\n",
		s.Param.Const, s.Param.Name, s.Name, s.Name, s.Value, s.Param.Const, strconv.FormatInt(s.value, 10))
}
