package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"text/tabwriter"

	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/procmem"
)

func init() {
	register(&command{
		name:    "ps",
		usage:   "ps [--json]",
		summary: "list the Go processes on this machine",
		run:     runPs,
	})
}

// goProcess is one row of gmpwatch ps.
type goProcess struct {
	PID       int    `json:"pid"`
	GoVersion string `json:"go_version"`
	Path      string `json:"path"`
	Stripped  bool   `json:"stripped"`
	PIE       bool   `json:"pie"`
}

func runPs(ctx context.Context, env *cmdEnv, args []string) error {
	fs := flag.NewFlagSet("ps", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "one JSON object per process")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return usageErrorf("usage: gmpwatch ps [--json]")
	}
	procs, unreadable := listGoProcesses()
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		for _, p := range procs {
			if err := enc.Encode(p); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tGO\tSTRIPPED\tPIE\tBINARY")
	for _, p := range procs {
		fmt.Fprintf(tw, "%d\t%s\t%v\t%v\t%s\n", p.PID, p.GoVersion, p.Stripped, p.PIE, p.Path)
	}
	tw.Flush()
	if unreadable > 0 {
		fmt.Fprintf(env.stderr, "%d processes could not be read (run as root to see them all)\n", unreadable)
	}
	return nil
}

// listGoProcesses reads every /proc/PID/exe and keeps the Go ones. Binaries
// shared by several processes are read once.
func listGoProcesses() (procs []goProcess, unreadable int) {
	ents, _ := os.ReadDir("/proc")
	seen := map[string]*gobin.Identity{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := procmem.ExePath(pid)
		if err != nil {
			if errors.Is(err, procmem.ErrPermission) {
				unreadable++
			}
			continue
		}
		name := procmem.ExeName(pid)
		id, ok := seen[name]
		if !ok {
			if v, err := gobin.Identify(exe); err == nil {
				id = &v
			}
			seen[name] = id
		}
		if id == nil {
			continue
		}
		procs = append(procs, goProcess{PID: pid, GoVersion: id.GoVersion, Path: name, Stripped: id.Stripped, PIE: id.PIE})
	}
	sort.Slice(procs, func(i, j int) bool { return procs[i].PID < procs[j].PID })
	return procs, unreadable
}
