package patches

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/bluekeyes/go-gitdiff/gitdiff"
)

// Toolchain is the Go in use: the go command run in Dir with Env, and what
// it reports as GOROOT and GOVERSION there (a go.mod toolchain line or
// GOTOOLCHAIN can select another release than the go on PATH).
type Toolchain struct {
	GoCmd      string   // "go" unless set
	Dir        string   // working directory of go commands; "" is the current one
	Env        []string // environment of go commands; nil is os.Environ()
	GOROOT     string
	GOVERSION  string
	GOMODCACHE string
}

// QueryToolchain asks the go command for GOROOT and GOVERSION.
func QueryToolchain(ctx context.Context, goCmd, dir string, env []string) (*Toolchain, error) {
	if goCmd == "" {
		goCmd = "go"
	}
	cmd := exec.CommandContext(ctx, goCmd, "env", "-json", "GOROOT", "GOVERSION", "GOMODCACHE")
	cmd.Dir, cmd.Env = dir, env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go env: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var v struct{ GOROOT, GOVERSION, GOMODCACHE string }
	if err := json.Unmarshal(out, &v); err != nil {
		return nil, fmt.Errorf("go env: %w", err)
	}
	if v.GOROOT == "" || v.GOVERSION == "" {
		return nil, fmt.Errorf("go env: no GOROOT or GOVERSION in %q", out)
	}
	return &Toolchain{GoCmd: goCmd, Dir: dir, Env: env, GOROOT: v.GOROOT, GOVERSION: v.GOVERSION, GOMODCACHE: v.GOMODCACHE}, nil
}

// HunkError says which hunk of a patch does not apply, and where.
type HunkError struct {
	Patch  string // patch name
	File   string // GOROOT/src-relative path
	Hunk   int    // 1-based index in the file's hunks
	Header string // "@@ -6626,3 +6626,11 @@"
	Line   int64  // line of the source where the hunk was expected
	Want   string // the first line of the hunk that is not there
	Have   string // what the source has at that line
	Reason string // set instead of Want/Have for other failures
}

func (e *HunkError) Error() string {
	where := fmt.Sprintf("patch %s: %s: hunk #%d (%s)", e.Patch, e.File, e.Hunk, e.Header)
	if e.Reason != "" {
		return fmt.Sprintf("%s does not apply: %s", where, e.Reason)
	}
	return fmt.Sprintf("%s does not apply at line %d: want %q, have %q (and its lines are nowhere else in the file)",
		where, e.Line, e.Want, e.Have)
}

// Is makes errors.Is(err, ErrNotApplicable) true.
func (e *HunkError) Is(target error) bool { return target == ErrNotApplicable }

// Applied is the result of applying patches in memory.
type Applied struct {
	Toolchain *Toolchain
	Selected  []*Selected
	// Files maps GOROOT/src-relative paths to their patched content.
	Files map[string][]byte
	// Offsets records, per patch and file, how far each hunk had to move
	// from the line its header names (0: where it says).
	Offsets map[string]map[string][]int64
}

// Apply applies the selected patches, in order, to the files of tc.GOROOT in
// memory. A later patch applies to the result of earlier ones. A hunk applies
// where its header says or, when the file has moved, where its old lines
// (context and removed lines) are found, nearest first; there is no fuzz. On
// any failure nothing is returned: a patch is never applied partly.
func Apply(tc *Toolchain, sel []*Selected) (*Applied, error) {
	a := &Applied{Toolchain: tc, Selected: sel, Files: map[string][]byte{}, Offsets: map[string]map[string][]int64{}}
	for _, s := range sel {
		a.Offsets[s.Name] = map[string][]int64{}
		for _, f := range s.files {
			name := fileName(f)
			src, ok := a.Files[name]
			if !ok {
				b, err := os.ReadFile(filepath.Join(tc.GOROOT, "src", filepath.FromSlash(name)))
				switch {
				case err == nil:
					src = b
				case errors.Is(err, fs.ErrNotExist) && f.IsNew:
					src = nil
				case errors.Is(err, fs.ErrNotExist):
					return nil, &HunkError{Patch: s.Name, File: name, Hunk: 1, Header: header(f, 0),
						Reason: fmt.Sprintf("%s does not exist in GOROOT %s", name, tc.GOROOT)}
				default:
					return nil, fmt.Errorf("patch %s: %w", s.Name, err)
				}
			}
			if f.IsNew && src != nil {
				return nil, &HunkError{Patch: s.Name, File: name, Hunk: 1, Header: header(f, 0),
					Reason: "the patch creates the file, but it exists already"}
			}
			out, offs, err := applyFile(s.Name, name, f, src)
			if err != nil {
				return nil, err
			}
			a.Files[name] = out
			a.Offsets[s.Name][name] = offs
		}
	}
	return a, nil
}

func header(f *gitdiff.File, i int) string {
	if i >= len(f.TextFragments) {
		return "no hunk"
	}
	h := f.TextFragments[i].Header()
	if j := strings.Index(h[2:], "@@"); j >= 0 {
		h = h[:j+4]
	}
	return strings.TrimSpace(h)
}

// splitLines splits b into lines that keep their "\n".
func splitLines(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			out = append(out, b)
			break
		}
		out = append(out, b[:i+1])
		b = b[i+1:]
	}
	return out
}

// applyFile relocates the hunks of f in src and applies them with gitdiff.
func applyFile(patch, name string, f *gitdiff.File, src []byte) ([]byte, []int64, error) {
	lines := splitLines(src)
	// Work on copies of the fragments: relocating must not change the patch.
	cp := *f
	cp.TextFragments = make([]*gitdiff.TextFragment, len(f.TextFragments))
	offs := make([]int64, len(f.TextFragments))
	next := int64(0) // first line a later hunk may use (0-based)
	for i, frag := range f.TextFragments {
		fc := *frag
		var old [][]byte
		for _, l := range frag.Lines {
			if l.Old() {
				old = append(old, []byte(l.Line))
			}
		}
		want := frag.OldPosition - 1
		if frag.OldPosition == 0 {
			want = 0
		}
		at, ok := locate(lines, old, want, next)
		if !ok {
			he := &HunkError{Patch: patch, File: name, Hunk: i + 1, Header: header(f, i), Line: want + 1}
			he.Line, he.Want, he.Have = firstMismatch(lines, old, bestPartial(lines, old, want, next))
			return nil, nil, he
		}
		offs[i] = at - want
		fc.OldPosition += offs[i]
		fc.NewPosition += offs[i]
		cp.TextFragments[i] = &fc
		next = at + int64(len(old))
	}
	var out bytes.Buffer
	if err := gitdiff.Apply(&out, bytes.NewReader(src), &cp); err != nil {
		he := &HunkError{Patch: patch, File: name, Hunk: 1, Header: header(f, 0), Reason: err.Error()}
		var ae *gitdiff.ApplyError
		if errors.As(err, &ae) {
			if ae.Fragment > 0 {
				he.Hunk, he.Header = ae.Fragment, header(f, ae.Fragment-1)
			}
			if ae.Line > 0 {
				he.Reason = fmt.Sprintf("line %d: %v", ae.Line, err)
			}
		}
		return nil, nil, he
	}
	return out.Bytes(), offs, nil
}

// locate finds old in lines at or nearest to want, not before min.
func locate(lines, old [][]byte, want, min int64) (int64, bool) {
	n := int64(len(lines))
	match := func(at int64) bool {
		if at < min || at+int64(len(old)) > n {
			return false
		}
		for j, l := range old {
			if !bytes.Equal(lines[at+int64(j)], l) {
				return false
			}
		}
		return true
	}
	if len(old) == 0 {
		return want, want <= n && want >= min
	}
	for d := int64(0); d <= n; d++ {
		if match(want - d) {
			return want - d, true
		}
		if d > 0 && match(want+d) {
			return want + d, true
		}
	}
	return 0, false
}

// bestPartial returns the position near want (within 2000 lines, not before
// min) where most lines of old match, nearest first: where the hunk was
// meant to go, for the error message.
func bestPartial(lines, old [][]byte, want, min int64) int64 {
	best, bestN := want, -1
	for d := int64(0); d <= 2000; d++ {
		cands := []int64{want - d, want + d}
		if d == 0 {
			cands = cands[:1]
		}
		for _, at := range cands {
			if at < min || at >= int64(len(lines)) {
				continue
			}
			n := 0
			for j, l := range old {
				if at+int64(j) < int64(len(lines)) && bytes.Equal(lines[at+int64(j)], l) {
					n++
				}
			}
			if n > bestN {
				best, bestN = at, n
			}
		}
	}
	return best
}

// firstMismatch reports the first line of old that differs from lines at want.
func firstMismatch(lines, old [][]byte, want int64) (int64, string, string) {
	for j, l := range old {
		at := want + int64(j)
		have := "(end of file)"
		if at < int64(len(lines)) {
			have = strings.TrimSuffix(string(lines[at]), "\n")
		}
		if at >= int64(len(lines)) || !bytes.Equal(lines[at], l) {
			return at + 1, strings.TrimSuffix(string(l), "\n"), have
		}
	}
	return want + 1, "", ""
}

// Check reports whether the patch applies to tc: nil, an error wrapping
// ErrWrongGo, or a *HunkError. Offsets say how far hunks moved.
func Check(tc *Toolchain, s *Selected) (*Applied, error) {
	if err := s.CheckVersion(tc.GOVERSION, tc.GOROOT); err != nil {
		return nil, err
	}
	return Apply(tc, []*Selected{s})
}
