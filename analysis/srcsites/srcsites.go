// Package srcsites finds, in a program's source, the places where it enters
// the runtime along the paths gmpwatch measures: every go statement, channel
// send, channel receive (including range over a channel) and select. Analyzer
// is a golang.org/x/tools/go/analysis analyzer; Load runs it on packages
// loaded with golang.org/x/tools/go/packages, and Join pairs each site with
// what a recording measured there (goroutines created at a go statement,
// time blocked at a channel operation), listing the sites that never ran too.
package srcsites

import (
	"fmt"
	"go/ast"
	"go/token"
	"go/types"
	"io"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"golang.org/x/tools/go/analysis"
	"golang.org/x/tools/go/analysis/checker"
	"golang.org/x/tools/go/packages"

	"github.com/gmpwatch/gmpwatch/analysis/paths"
	"github.com/gmpwatch/gmpwatch/analysis/sched"
)

// Kinds of sites.
const (
	KindGo     = "go"
	KindSend   = "send"
	KindRecv   = "recv"
	KindSelect = "select"
)

// Site is one place in the source.
type Site struct {
	Kind     string `json:"kind"`
	Package  string `json:"package"`
	Function string `json:"function"` // enclosing function declaration
	File     string `json:"file"`     // absolute
	Line     int    `json:"line"`
	Col      int    `json:"col"`
}

// Analyzer reports the sites of a package as its result ([]Site).
var Analyzer = &analysis.Analyzer{
	Name:       "gmpsites",
	Doc:        "list go statements, channel sends and receives, and selects",
	Run:        run,
	ResultType: reflect.TypeOf([]Site(nil)),
}

func run(pass *analysis.Pass) (any, error) {
	var sites []Site
	for _, file := range pass.Files {
		var fn string
		add := func(kind string, p token.Pos) {
			pos := pass.Fset.Position(p)
			sites = append(sites, Site{Kind: kind, Package: pass.Pkg.Path(), Function: fn, File: pos.Filename, Line: pos.Line, Col: pos.Column})
		}
		for _, decl := range file.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			// The runtime names package main's functions main.F.
			prefix := pass.Pkg.Path()
			if pass.Pkg.Name() == "main" {
				prefix = "main"
			}
			fn = funcName(prefix, fd)
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.GoStmt:
					add(KindGo, n.Go)
				case *ast.SendStmt:
					add(KindSend, n.Arrow)
				case *ast.UnaryExpr:
					if n.Op == token.ARROW {
						add(KindRecv, n.OpPos)
					}
				case *ast.RangeStmt:
					if t := pass.TypesInfo.TypeOf(n.X); t != nil {
						if _, ok := t.Underlying().(*types.Chan); ok {
							add(KindRecv, n.For)
						}
					}
				case *ast.SelectStmt:
					add(KindSelect, n.Select)
					// The cases' operations block in the select, not on
					// their own: list the select only.
					for _, c := range n.Body.List {
						if cc, ok := c.(*ast.CommClause); ok {
							for _, s := range cc.Body {
								ast.Inspect(s, func(m ast.Node) bool { return inspectInner(m, add, pass) })
							}
						}
					}
					return false
				}
				return true
			})
		}
	}
	return sites, nil
}

// inspectInner handles the statements inside a select's cases.
func inspectInner(n ast.Node, add func(string, token.Pos), pass *analysis.Pass) bool {
	switch n := n.(type) {
	case *ast.GoStmt:
		add(KindGo, n.Go)
	case *ast.SendStmt:
		add(KindSend, n.Arrow)
	case *ast.UnaryExpr:
		if n.Op == token.ARROW {
			add(KindRecv, n.OpPos)
		}
	case *ast.SelectStmt:
		add(KindSelect, n.Select)
	}
	return true
}

// funcName names a declaration as the runtime does: pkg.F, pkg.(*T).M,
// pkg.T.M.
func funcName(pkg string, fd *ast.FuncDecl) string {
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return pkg + "." + fd.Name.Name
	}
	t := fd.Recv.List[0].Type
	if ix, ok := t.(*ast.IndexExpr); ok {
		t = ix.X
	}
	switch t := t.(type) {
	case *ast.StarExpr:
		if id, ok := t.X.(*ast.Ident); ok {
			return fmt.Sprintf("%s.(*%s).%s", pkg, id.Name, fd.Name.Name)
		}
	case *ast.Ident:
		return fmt.Sprintf("%s.%s.%s", pkg, t.Name, fd.Name.Name)
	}
	return pkg + "." + fd.Name.Name
}

// Load loads the packages matching patterns (relative to the current
// directory) and returns their sites, sorted by file and line.
func Load(patterns []string) ([]Site, error) {
	cfg := &packages.Config{Mode: packages.LoadSyntax, Tests: false}
	pkgs, err := packages.Load(cfg, patterns...)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", strings.Join(patterns, " "), err)
	}
	var errs []string
	packages.Visit(pkgs, nil, func(p *packages.Package) {
		for _, e := range p.Errors {
			errs = append(errs, e.Error())
		}
	})
	if len(errs) > 0 {
		return nil, fmt.Errorf("load %s: %s", strings.Join(patterns, " "), errs[0])
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("load %s: no packages", strings.Join(patterns, " "))
	}
	g, err := checker.Analyze([]*analysis.Analyzer{Analyzer}, pkgs, nil)
	if err != nil {
		return nil, fmt.Errorf("analyze: %w", err)
	}
	var sites []Site
	for _, act := range g.Roots {
		if act.Err != nil {
			return nil, fmt.Errorf("analyze %s: %w", act.Package.PkgPath, act.Err)
		}
		sites = append(sites, act.Result.([]Site)...)
	}
	sort.Slice(sites, func(i, j int) bool {
		if sites[i].File != sites[j].File {
			return sites[i].File < sites[j].File
		}
		if sites[i].Line != sites[j].Line {
			return sites[i].Line < sites[j].Line
		}
		return sites[i].Col < sites[j].Col
	})
	return sites, nil
}

// Measured is a site with what a recording measured at it.
type Measured struct {
	Site
	Ran bool `json:"ran"`
	// go statements
	Created uint64 `json:"created,omitempty"`
	Alive   int64  `json:"alive,omitempty"`
	Leak    bool   `json:"leak,omitempty"`
	// channel operations and selects: parks at this line
	Blocked   uint64 `json:"blocked,omitempty"`
	BlockedNs uint64 `json:"blocked_ns,omitempty"`
	Reasons   string `json:"reasons,omitempty"`
	// channel probes (--probes with chansend/chanrecv)
	Ops uint64 `json:"ops,omitempty"`
}

// sameSite matches a source site to a position from the binary's line
// table, whose path may be the build machine's (trimpath, a temporary build
// directory): the same line of a file of the same name, and the same path,
// or the same last two path elements, or the same function (a closure's
// frames are named after their enclosing function, main.f.func1).
func sameSite(s Site, file string, line int, fn string) bool {
	if s.Line != line || filepath.Base(s.File) != filepath.Base(file) {
		return false
	}
	if s.File == file || fn == s.Function || strings.HasPrefix(fn, s.Function+".") {
		return true
	}
	tail := func(p string) string {
		parts := strings.Split(filepath.ToSlash(p), "/")
		if len(parts) > 2 {
			parts = parts[len(parts)-2:]
		}
		return strings.Join(parts, "/")
	}
	return tail(s.File) == tail(file)
}

// Join pairs every site with the report's numbers at its file and line.
func Join(sites []Site, r *paths.Report) []Measured {
	out := make([]Measured, 0, len(sites))
	for _, s := range sites {
		m := Measured{Site: s}
		switch s.Kind {
		case KindGo:
			for _, g := range r.CG.Sites {
				if sameSite(s, g.File, g.Line, g.Function) {
					m.Ran = true
					m.Created += g.Created
					m.Alive += g.Alive
					m.Leak = m.Leak || g.Leak
				}
			}
		default:
			var reasons []string
			for _, b := range r.CC.Sites {
				if b.User && sameSite(s, b.File, b.Line, b.Function) {
					m.Ran = true
					m.Blocked += b.Count
					m.BlockedNs += b.TotalNs
					reasons = append(reasons, b.Reason)
				}
			}
			m.Reasons = strings.Join(reasons, ", ")
			for _, c := range r.CC.Chans {
				if sameSite(s, c.File, c.Line, c.Function) {
					m.Ran = true
					m.Ops += c.Send + c.Recv
				}
			}
		}
		out = append(out, m)
	}
	return out
}

// WriteText lists the sites.
func WriteText(w io.Writer, ms []Measured) error {
	var b strings.Builder
	never := 0
	for _, m := range ms {
		if !m.Ran {
			never++
		}
	}
	fmt.Fprintf(&b, "Source sites: %d (%d never seen running or blocking)\n", len(ms), never)
	for _, m := range ms {
		where := fmt.Sprintf("%s:%d", m.File, m.Line)
		switch {
		case m.Kind == KindGo && m.Ran:
			leak := ""
			if m.Leak {
				leak = ", LEAK? alive kept rising"
			}
			fmt.Fprintf(&b, "  %-6s %s (%s): created %d, alive %d%s\n", m.Kind, where, m.Function, m.Created, m.Alive, leak)
		case m.Ran:
			fmt.Fprintf(&b, "  %-6s %s (%s): blocked %d times, %s (%s)", m.Kind, where, m.Function, m.Blocked, sched.FormatNs(m.BlockedNs), m.Reasons)
			if m.Ops > 0 {
				fmt.Fprintf(&b, ", %d operations", m.Ops)
			}
			b.WriteString("\n")
		case m.Kind == KindGo:
			fmt.Fprintf(&b, "  %-6s %s (%s): no goroutine created\n", m.Kind, where, m.Function)
		default:
			fmt.Fprintf(&b, "  %-6s %s (%s): never blocked (or not measured)\n", m.Kind, where, m.Function)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
