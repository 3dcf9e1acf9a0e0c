package patches

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// workState is the file patch new leaves in a work folder.
const workState = ".gmpwatch-patch.json"

// Work is a folder in which a patch is being written: copies of runtime
// files to edit, and the Go they were copied from.
type Work struct {
	Dir       string `json:"-"`
	Name      string `json:"name"`
	GOROOT    string `json:"goroot"`
	GOVERSION string `json:"goversion"`
	// Pkgs are the GOROOT/src folders copied ("runtime").
	Pkgs []string `json:"pkgs"`
}

// NewWork copies the .go and .s files of GOROOT/src/<pkg> for each pkg
// (default "runtime") into dir, to be edited and turned into a patch by
// Finish. dir must not exist or be empty.
func NewWork(tc *Toolchain, name, dir string, pkgs []string) (*Work, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("patch name %q: use lower-case letters, digits and dashes", name)
	}
	if len(pkgs) == 0 {
		pkgs = []string{"runtime"}
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("work folder %s exists and is not empty", dir)
	}
	w := &Work{Dir: dir, Name: name, GOROOT: tc.GOROOT, GOVERSION: tc.GOVERSION, Pkgs: pkgs}
	for _, pkg := range pkgs {
		if !validSrcPath(pkg + "/x.go") {
			return nil, fmt.Errorf("package folder %q: want a path under GOROOT/src", pkg)
		}
		src := filepath.Join(tc.GOROOT, "src", filepath.FromSlash(pkg))
		ents, err := os.ReadDir(src)
		if err != nil {
			return nil, fmt.Errorf("patch new: %w", err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(pkg))
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return nil, fmt.Errorf("patch new: %w", err)
		}
		for _, e := range ents {
			if !e.Type().IsRegular() || !(strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), ".s")) {
				continue
			}
			b, err := os.ReadFile(filepath.Join(src, e.Name()))
			if err != nil {
				return nil, fmt.Errorf("patch new: %w", err)
			}
			if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
				return nil, fmt.Errorf("patch new: %w", err)
			}
		}
	}
	js, _ := json.MarshalIndent(w, "", "\t")
	if err := os.WriteFile(filepath.Join(dir, workState), append(js, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("patch new: %w", err)
	}
	return w, nil
}

// OpenWork reads the state patch new left in dir.
func OpenWork(dir string) (*Work, error) {
	b, err := os.ReadFile(filepath.Join(dir, workState))
	if err != nil {
		return nil, fmt.Errorf("%s is not a patch work folder (made by gmpwatch patch new): %w", dir, err)
	}
	w := &Work{Dir: dir}
	if err := json.Unmarshal(b, w); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", dir, workState, err)
	}
	return w, nil
}

// Diff returns the unified diff of the work folder against GOROOT: changed
// and new files, in name order. Files removed from the work folder are
// ignored. It runs diff -u.
func (w *Work) Diff() ([]byte, error) {
	var out bytes.Buffer
	for _, pkg := range w.Pkgs {
		dst := filepath.Join(w.Dir, filepath.FromSlash(pkg))
		ents, err := os.ReadDir(dst)
		if err != nil {
			return nil, err
		}
		var names []string
		for _, e := range ents {
			if e.Type().IsRegular() && (strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), ".s")) {
				names = append(names, e.Name())
			}
		}
		sort.Strings(names)
		for _, n := range names {
			rel := pkg + "/" + n
			orig := filepath.Join(w.GOROOT, "src", filepath.FromSlash(rel))
			oldLabel := "a/" + rel
			ob, err := os.ReadFile(orig)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				orig, oldLabel = os.DevNull, os.DevNull
			case err != nil:
				return nil, err
			default:
				nb, err := os.ReadFile(filepath.Join(dst, n))
				if err != nil {
					return nil, err
				}
				if bytes.Equal(ob, nb) {
					continue
				}
			}
			d, err := unifiedDiff(orig, filepath.Join(dst, n), oldLabel, "b/"+rel)
			if err != nil {
				return nil, err
			}
			out.Write(d)
		}
	}
	return out.Bytes(), nil
}

func unifiedDiff(a, b, la, lb string) ([]byte, error) {
	cmd := exec.Command("diff", "-u", "--label", la, "--label", lb, a, b)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return out, nil // the files differ
	}
	if err != nil {
		return nil, fmt.Errorf("diff -u %s %s: %w: %s", a, b, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Finish writes the work folder's diff and a manifest into outDir/<name>/ and
// checks that the result loads and applies to the Go it was made from. m
// fills the manifest; an existing manifest there keeps its fields that m
// leaves empty, and gains the work folder's release.
func (w *Work) Finish(outDir string, m Manifest) (*Patch, error) {
	d, err := w.Diff()
	if err != nil {
		return nil, err
	}
	if len(d) == 0 {
		return nil, fmt.Errorf("patch %s: the work folder %s has no change against %s", w.Name, w.Dir, w.GOROOT)
	}
	dir := filepath.Join(outDir, w.Name)
	var old Manifest
	if b, err := os.ReadFile(filepath.Join(dir, ManifestFile)); err == nil {
		if err := json.Unmarshal(b, &old); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ManifestFile), err)
		}
	}
	m.Name = w.Name
	if m.Summary == "" {
		m.Summary = old.Summary
	}
	if m.Why == "" {
		m.Why = old.Why
	}
	if m.Effect == "" {
		m.Effect = old.Effect
	}
	if m.Param == nil {
		m.Param = old.Param
	}
	if m.Probes == nil {
		m.Probes = old.Probes
	}
	if m.Notes == "" {
		m.Notes = old.Notes
	}
	if len(m.Go) == 0 {
		m.Go = old.Go
	}
	if r := Release(w.GOVERSION); r != "" && !m.Supports(w.GOVERSION) {
		m.Go = append(m.Go, r)
	}
	if m.Summary == "" {
		return nil, fmt.Errorf("patch %s: give a summary (one line: what it changes)", w.Name)
	}
	js, err := json.MarshalIndent(&m, "", "\t")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, DiffFile), d, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), append(js, '\n'), 0o644); err != nil {
		return nil, err
	}
	ps, err := LoadDir(dir)
	if err != nil {
		return nil, err
	}
	p := ps[0]
	if _, err := Apply(&Toolchain{GOROOT: w.GOROOT, GOVERSION: w.GOVERSION}, []*Selected{{Patch: p}}); err != nil {
		return nil, fmt.Errorf("the diff written does not apply back: %w", err)
	}
	return p, nil
}
