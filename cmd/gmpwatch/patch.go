package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/gmpwatch/gmpwatch/patches"
)

func init() {
	register(&command{
		name:    "patch",
		usage:   "patch list|show|check|diff|build|new ...",
		summary: "build a program with a patched Go runtime (see gmpwatch patch help)",
		run:     runPatch,
	})
}

const patchUsage = `gmpwatch patch: try Go runtime patches on a program (go build -overlay; GOROOT is never written).

  gmpwatch patch list [-v] [--dir D]            the patches: name, Go releases, what and why
  gmpwatch patch show NAME [--dir D]            a patch's manifest: effect, parameter, probe points
  gmpwatch patch check NAME[=V] [--dir D]       does it apply to the Go in use (go env GOROOT GOVERSION)?
  gmpwatch patch diff NAME [--dir D]            print the unified diff
  gmpwatch patch build NAME[=V]... -o BIN [--dir D] -- [go build flags] PACKAGE
                                                apply to copies in the cache, go build -overlay
  gmpwatch patch new NAME [--work W]            copy GOROOT/src/runtime to W (default ./gmpwatch-patch-NAME) to edit
  gmpwatch patch new NAME --finish [--work W] [--dir D] --summary S [--why T] [--effect E]
                                                write D/NAME/patch.diff and manifest.json (D default ./patches)

A patch with a parameter is named with its value: preempt-slice=2ms. --dir adds a folder of
patches to the built-in ones. Patched builds are cached under $(os.UserCacheDir)/gmpwatch/patches.
`

// patchArgs is the parsed command line of a patch subcommand.
type patchArgs struct {
	pos                    []string
	dirs                   []string
	out, work              string
	summary, why, effect   string
	force, finish, verbose bool
	rest                   []string // after --
	sawDashDash            bool
}

func parsePatchArgs(args []string) (*patchArgs, error) {
	pa := &patchArgs{}
	valued := map[string]*string{"o": &pa.out, "work": &pa.work, "summary": &pa.summary, "why": &pa.why, "effect": &pa.effect}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pa.rest, pa.sawDashDash = args[i+1:], true
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pa.pos = append(pa.pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		takeVal := func() (string, error) {
			if hasVal {
				return val, nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("flag %s needs a value", a)
			}
			i++
			return args[i], nil
		}
		switch name {
		case "dir":
			v, err := takeVal()
			if err != nil {
				return nil, err
			}
			pa.dirs = append(pa.dirs, v)
		case "force", "finish", "v":
			if hasVal {
				return nil, fmt.Errorf("flag -%s takes no value", name)
			}
			switch name {
			case "force":
				pa.force = true
			case "finish":
				pa.finish = true
			default:
				pa.verbose = true
			}
		default:
			p, ok := valued[name]
			if !ok {
				return nil, fmt.Errorf("unknown flag %s (see gmpwatch patch help)", a)
			}
			v, err := takeVal()
			if err != nil {
				return nil, err
			}
			*p = v
		}
	}
	return pa, nil
}

func runPatch(ctx context.Context, env *cmdEnv, args []string) error {
	if len(args) == 0 {
		return usageErrorf("patch: name a subcommand: list, show, check, diff, build, new (see gmpwatch patch help)")
	}
	sub := args[0]
	if sub == "help" || sub == "-h" || sub == "--help" {
		fmt.Fprint(env.stdout, patchUsage)
		return nil
	}
	pa, err := parsePatchArgs(args[1:])
	if err != nil {
		return usageErrorf("patch %s: %v", sub, err)
	}
	if pa.sawDashDash && sub != "build" {
		return usageErrorf("patch %s: unexpected -- (only patch build passes arguments to go build)", sub)
	}
	switch sub {
	case "list":
		return patchList(env, pa)
	case "show", "diff", "check":
		if len(pa.pos) != 1 {
			return usageErrorf("patch %s: name one patch", sub)
		}
		set, err := patches.LoadSet(pa.dirs...)
		if err != nil {
			return usageErrorf("patch %s: %v", sub, err)
		}
		switch sub {
		case "show":
			return patchShow(env, set, pa.pos[0])
		case "diff":
			p, err := set.Get(pa.pos[0])
			if err != nil {
				return usageErrorf("patch diff: %v", err)
			}
			_, err = env.stdout.Write(p.Diff)
			return err
		default:
			return patchCheck(ctx, env, set, pa)
		}
	case "build":
		return patchBuild(ctx, env, pa)
	case "new":
		return patchNew(ctx, env, pa)
	}
	return usageErrorf("patch: unknown subcommand %q (list, show, check, diff, build, new)", sub)
}

func patchList(env *cmdEnv, pa *patchArgs) error {
	if len(pa.pos) != 0 {
		return usageErrorf("patch list: unexpected argument %q", pa.pos[0])
	}
	set, err := patches.LoadSet(pa.dirs...)
	if err != nil {
		return usageErrorf("patch list: %v", err)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tGO\tSOURCE\tSUMMARY")
	for _, p := range set.List() {
		name := p.Name
		if p.Param != nil {
			name += "=" + strings.ToUpper(p.Param.Name)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, strings.Join(p.Go, ","), p.Source, p.Summary)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range set.List() {
		fmt.Fprintf(env.stdout, "\n%s:\n  why: %s\n", p.Name, p.Why)
		if pa.verbose {
			fmt.Fprintf(env.stdout, "  effect: %s\n", p.Effect)
		}
	}
	return nil
}

func patchShow(env *cmdEnv, set *patches.Set, name string) error {
	p, err := set.Get(name)
	if err != nil {
		return usageErrorf("patch show: %v", err)
	}
	w := env.stdout
	fmt.Fprintf(w, "name:    %s (%s)\nfiles:   %s\ngo:      %s\nsummary: %s\nwhy:     %s\neffect:  %s\n",
		p.Name, p.Source, strings.Join(p.Files(), ", "), strings.Join(p.Go, ", "), p.Summary, p.Why, p.Effect)
	if p.Param != nil {
		fmt.Fprintf(w, "param:   %s=%s: %s", p.Name, strings.ToUpper(p.Param.Name), p.Param.Doc)
		if p.Param.Default != "" {
			fmt.Fprintf(w, " (default %s)", p.Param.Default)
		}
		fmt.Fprintln(w)
	}
	for _, pr := range p.Probes {
		fmt.Fprintf(w, "probe:   %s: %s\n", pr.Symbol, pr.Doc)
		for _, a := range pr.Args {
			fmt.Fprintf(w, "  %-7s %-8s %-4s %s\n", a.Name, a.Type, a.Reg, a.Doc)
		}
		for _, s := range pr.Sites {
			fmt.Fprintf(w, "  called in %s\n", s)
		}
	}
	if p.Notes != "" {
		fmt.Fprintf(w, "notes:   %s\n", p.Notes)
	}
	return nil
}

// selectForCheck selects a patch for checking: a required parameter gets a
// placeholder value, since the value does not change the diff.
func selectForCheck(set *patches.Set, spec string) ([]*patches.Selected, error) {
	name, _, hasValue := strings.Cut(spec, "=")
	p, err := set.Get(name)
	if err != nil {
		return nil, err
	}
	if p.Param != nil && !hasValue && p.Param.Default == "" {
		spec = name + "=" + p.Param.Min
		if p.Param.Min == "" {
			spec = name + "=10ms"
		}
	}
	return set.Select([]string{spec})
}

func patchCheck(ctx context.Context, env *cmdEnv, set *patches.Set, pa *patchArgs) error {
	sel, err := selectForCheck(set, pa.pos[0])
	if err != nil {
		return usageErrorf("patch check: %v", err)
	}
	tc, err := patches.QueryToolchain(ctx, "", "", nil)
	if err != nil {
		return fmt.Errorf("patch check: %w", err)
	}
	s := sel[0]
	verr := s.CheckVersion(tc.GOVERSION, tc.GOROOT)
	a, aerr := patches.Apply(tc, sel)
	switch {
	case aerr != nil:
		if verr != nil {
			return &exitError{code: 1, err: fmt.Errorf("%v; and %w", verr, aerr)}
		}
		return &exitError{code: 1, err: aerr}
	case verr != nil:
		return &exitError{code: 1, err: fmt.Errorf("%w (its hunks would apply; patch build refuses it unless --force)", verr)}
	}
	fmt.Fprintf(env.stdout, "%s applies cleanly to %s (GOROOT %s)\n", s.Name, tc.GOVERSION, tc.GOROOT)
	files := make([]string, 0, len(a.Offsets[s.Name]))
	for f := range a.Offsets[s.Name] {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		offs := a.Offsets[s.Name][f]
		moved := 0
		for _, o := range offs {
			if o != 0 {
				moved++
			}
		}
		fmt.Fprintf(env.stdout, "  %s: %d hunks", f, len(offs))
		if moved > 0 {
			fmt.Fprintf(env.stdout, ", %d at an offset %v", moved, offs)
		}
		fmt.Fprintln(env.stdout)
	}
	return nil
}

func patchBuild(ctx context.Context, env *cmdEnv, pa *patchArgs) error {
	if len(pa.pos) == 0 {
		return usageErrorf("patch build: name at least one patch (gmpwatch patch list)")
	}
	if pa.out == "" {
		return usageErrorf("patch build: give the output binary with -o BIN")
	}
	if !pa.sawDashDash || len(pa.rest) == 0 {
		return usageErrorf("patch build: give the package after --: patch build %s -o %s -- [go build flags] PACKAGE", strings.Join(pa.pos, " "), pa.out)
	}
	if err := patches.CheckBuildArgs(pa.rest); err != nil {
		return usageErrorf("patch build: %v", err)
	}
	set, err := patches.LoadSet(pa.dirs...)
	if err != nil {
		return usageErrorf("patch build: %v", err)
	}
	sel, err := set.Select(pa.pos)
	if err != nil {
		return usageErrorf("patch build: %v", err)
	}
	tc, err := patches.QueryToolchain(ctx, "", "", nil)
	if err != nil {
		return fmt.Errorf("patch build: %w", err)
	}
	if !pa.force {
		for _, s := range sel {
			if err := s.CheckVersion(tc.GOVERSION, tc.GOROOT); err != nil {
				return &exitError{code: 1, err: fmt.Errorf("%w (--force tries anyway)", err)}
			}
		}
	}
	a, err := patches.Apply(tc, sel)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("refused: %w", err)}
	}
	root, err := patches.CacheRoot()
	if err != nil {
		return err
	}
	ov, err := a.Write(root)
	if err != nil {
		return err
	}
	if err := patches.Build(ctx, tc, ov, pa.out, pa.rest, env.stdout, env.stderr); err != nil {
		return &exitError{code: 1, err: err}
	}
	fmt.Fprintf(env.stderr, "gmpwatch patch: built %s with %s (Go %s; overlay %s)\n", pa.out, strings.Join(ov.Labels, ", "), tc.GOVERSION, ov.File)
	return nil
}

func patchNew(ctx context.Context, env *cmdEnv, pa *patchArgs) error {
	if len(pa.pos) != 1 {
		return usageErrorf("patch new: name one patch")
	}
	name := pa.pos[0]
	if !patches.ValidName(name) {
		return usageErrorf("patch new: name %q: use lower-case letters, digits and dashes", name)
	}
	work := pa.work
	if work == "" {
		work = "gmpwatch-patch-" + name
	}
	if !pa.finish {
		tc, err := patches.QueryToolchain(ctx, "", "", nil)
		if err != nil {
			return fmt.Errorf("patch new: %w", err)
		}
		w, err := patches.NewWork(tc, name, work, nil)
		if err != nil {
			return usageErrorf("patch new: %v", err)
		}
		fmt.Fprintf(env.stdout, "copied %s/src/%s (%s) to %s\nedit the files there, then: gmpwatch patch new %s --finish --work %s --summary '...'\n",
			tc.GOROOT, strings.Join(w.Pkgs, ", "), tc.GOVERSION, filepath.Join(work, "runtime"), name, work)
		return nil
	}
	w, err := patches.OpenWork(work)
	if err != nil {
		return usageErrorf("patch new --finish: %v", err)
	}
	if w.Name != name {
		return usageErrorf("patch new --finish: %s holds patch %q, not %q", work, w.Name, name)
	}
	out := "patches"
	if len(pa.dirs) > 1 {
		return usageErrorf("patch new --finish: give one --dir")
	} else if len(pa.dirs) == 1 {
		out = pa.dirs[0]
	}
	p, err := w.Finish(out, patches.Manifest{Summary: pa.summary, Why: pa.why, Effect: pa.effect})
	if err != nil {
		if errors.Is(err, patches.ErrNotApplicable) {
			return &exitError{code: 1, err: err}
		}
		return usageErrorf("patch new --finish: %v", err)
	}
	fmt.Fprintf(env.stdout, "wrote %s (%s; changes %s)\n", filepath.Join(out, p.Name), strings.Join(p.Go, ", "), strings.Join(p.Files(), ", "))
	return nil
}
