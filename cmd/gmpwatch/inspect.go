package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
)

func init() {
	register(&command{
		name:    "inspect",
		usage:   "inspect BINARY | -p PID [--json]",
		summary: "Go version, runtime symbols, struct offsets, wait reasons: the probe plan",
		run:     runInspect,
	})
}

func runInspect(ctx context.Context, env *cmdEnv, args []string) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	pid := fs.Int("p", 0, "inspect the running process PID")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := fs.Parse(args); err != nil {
		return usageErrorf("%v (usage: gmpwatch inspect BINARY | -p PID [--json])", err)
	}
	var p *plan.Plan
	var err error
	switch {
	case *pid != 0 && fs.NArg() == 0:
		p, err = plan.FromProcess(*pid)
	case *pid == 0 && fs.NArg() == 1:
		p, err = plan.FromFile(fs.Arg(0))
	default:
		return usageErrorf("give one BINARY or -p PID (usage: gmpwatch inspect BINARY | -p PID [--json])")
	}
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(p)
	}
	return writePlan(env.stdout, p)
}

// writePlan prints a plan for a person.
func writePlan(w io.Writer, p *plan.Plan) error {
	name := p.Path
	if p.Exe != "" {
		name = fmt.Sprintf("PID %d %s", p.PID, p.Exe)
	}
	yesno := func(b bool, yes, no string) string {
		if b {
			return yes
		}
		return no
	}
	fmt.Fprintf(w, "%s\n", name)
	fmt.Fprintf(w, "  Go %s, linux/%s, %s, %s, %s, %s\n", p.GoVersion, p.Arch,
		yesno(p.Stripped, "stripped", "not stripped"), yesno(p.PIE, "PIE", "not PIE"),
		yesno(p.CGO, "cgo", "no cgo"), yesno(p.ExternalLink, "externally linked", "internally linked"))
	if len(p.Patches) > 0 {
		fmt.Fprintf(w, "  runtime patches: %s\n", strings.Join(p.Patches, ", "))
	}
	if p.PID != 0 {
		fmt.Fprintf(w, "  load bias %#x\n", p.LoadBias)
	}
	if p.LayoutSource == plan.LayoutDWARF {
		fmt.Fprintf(w, "  struct layouts: from the binary's DWARF\n")
	} else {
		fmt.Fprintf(w, "  struct layouts: from a per-release table, not from this binary: %s\n", p.LayoutNote)
	}

	fmt.Fprintf(w, "\nRuntime functions (link address, file offset, probe at entry+offset):\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, n := range p.FunctionNames() {
		f := p.Functions[n]
		note := ""
		if f.Refires {
			note = "  (before the stack check's branch: may fire twice, deduplicated)"
		}
		fmt.Fprintf(tw, "  %s\t%#x\t%#x\t+%d\t%s%s\n", n, f.Address, f.FileOffset, f.ProbeOffset, f.ProbeInsn, note)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nProbes (program, where, file offset, instruction):\n")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, pr := range p.Probes {
		fmt.Fprintf(tw, "  %s\t%s+%d\t%#x\t%s\n", pr.Program, pr.Symbol, pr.Address-p.Functions[pr.Symbol].Address, pr.FileOffset, pr.Insn)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nRuntime variables (link address):\n")
	gnames := make([]string, 0, len(p.Globals))
	for n := range p.Globals {
		gnames = append(gnames, n)
	}
	sort.Strings(gnames)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, n := range gnames {
		fmt.Fprintf(tw, "  %s\t%#x\n", n, p.Globals[n].Address)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nStruct field offsets (bytes):\n")
	keys := make([]string, 0, len(p.Offsets))
	for k := range p.Offsets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	line := "  "
	for _, k := range keys {
		item := fmt.Sprintf("%s=%d", k, p.Offsets[k])
		if len(line)+len(item) > 100 {
			fmt.Fprintln(w, line)
			line = "  "
		}
		line += item + "  "
	}
	fmt.Fprintln(w, line)

	if len(p.WaitReasons) > 0 {
		fmt.Fprintf(w, "\nWait reasons (read from the %s; the numbering changes between releases):\n", p.WaitReasonSource)
		for i, r := range p.WaitReasons {
			if i > 0 {
				fmt.Fprintf(w, "  %3d  %s\n", i, r)
			}
		}
	}
	return nil
}
