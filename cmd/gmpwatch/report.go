package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/gmpwatch/gmpwatch/analysis/export"
	"github.com/gmpwatch/gmpwatch/analysis/paths"
	"github.com/gmpwatch/gmpwatch/analysis/record"
	"github.com/gmpwatch/gmpwatch/analysis/srcsites"
)

func init() {
	register(&command{
		name:    "report",
		usage:   "report FILE -f pprof|perfetto|jsonl|folded|text [-o OUT] [--src ./...]",
		summary: "render a recording",
		run:     runReport,
	})
}

type reportFlags struct {
	file    string
	format  string
	out     string
	src     string
	sample  string
	memRate int64
}

func parseReportFlags(args []string) (*reportFlags, error) {
	f := &reportFlags{}
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.format, "f", "text", "output `FORMAT`: "+strings.Join(export.Formats, ", "))
	fs.StringVar(&f.out, "o", "", "write to `OUT` instead of standard output")
	fs.StringVar(&f.src, "src", "", "package `patterns` of the program's source (space separated): list every go statement and channel operation with what was measured there")
	fs.StringVar(&f.sample, "sample", "blocking", "sample type of -f folded")
	fs.Int64Var(&f.memRate, "mem-profile-rate", paths.DefaultMemProfileRate, "the target's runtime.MemProfileRate, to scale sampled allocations")
	// FILE may come first or after the flags.
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		f.file, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return nil, usageErrorf("%v", err)
	}
	rest := fs.Args()
	if f.file == "" && len(rest) > 0 {
		f.file, rest = rest[0], rest[1:]
	}
	switch {
	case f.file == "":
		return nil, usageErrorf("no recording: gmpwatch report FILE -f FORMAT")
	case len(rest) > 0:
		return nil, usageErrorf("unexpected argument %q", rest[0])
	case !isExportFormat(f.format):
		return nil, usageErrorf("-f %q: unknown format (want one of %s)", f.format, strings.Join(export.Formats, ", "))
	}
	return f, nil
}

func runReport(ctx context.Context, env *cmdEnv, args []string) error {
	f, err := parseReportFlags(args)
	if err != nil {
		return err
	}
	rd, err := os.Open(f.file)
	if err != nil {
		return usageErrorf("%v", err)
	}
	rec, err := record.Read(rd)
	rd.Close()
	if err != nil {
		if errors.Is(err, record.ErrNotRecording) || errors.Is(err, record.ErrVersion) || errors.Is(err, record.ErrCorrupt) {
			return usageErrorf("%s: %v", f.file, err)
		}
		return usageErrorf("%s: %v", f.file, err)
	}
	if rec.Truncated != "" {
		fmt.Fprintf(env.stderr, "gmpwatch report: %s: incomplete recording, %s; rendering the %d events before it\n", f.file, rec.Truncated, len(rec.Events))
	}
	in := export.FromRecording(rec, export.Options{MemProfileRate: f.memRate})
	in.Sample = f.sample
	if f.src != "" {
		sites, err := srcsites.Load(strings.Fields(f.src))
		if err != nil {
			return usageErrorf("--src %s: %v", f.src, err)
		}
		var b strings.Builder
		if err := srcsites.WriteText(&b, srcsites.Join(sites, in.Paths.Report())); err != nil {
			return err
		}
		in.Sites = b.String()
	}
	var w io.Writer = env.stdout
	var file *os.File
	if f.out != "" {
		if file, err = os.Create(f.out); err != nil {
			return usageErrorf("%v", err)
		}
		w = file
	}
	rerr := export.Render(w, f.format, in)
	if file != nil {
		if cerr := file.Close(); rerr == nil {
			rerr = cerr
		}
	}
	if rerr != nil {
		return fmt.Errorf("render %s: %w", f.format, rerr)
	}
	return nil
}
