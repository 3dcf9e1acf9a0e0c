// Command genlayout writes the layout table of a Go release from the DWARF of
// a binary built by it, in the format of analysis/layout/tables. Tables are
// the fallback for stripped binaries; this is how a release gets one:
//
//	GOTOOLCHAIN=go1.27.3 go build -o /tmp/t ./testdata/gosched
//	go run ./scripts/genlayout /tmp/t > analysis/layout/tables/go1.27.3-amd64.txt
package main

import (
	"fmt"
	"os"

	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/layout"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: genlayout BINARY")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "genlayout:", err)
		os.Exit(1)
	}
}

func run(path string) error {
	b, err := gobin.Open(path)
	if err != nil {
		return err
	}
	defer b.Close()
	d, err := b.DWARF()
	if err != nil {
		return fmt.Errorf("%s has no DWARF: %w", path, err)
	}
	l, err := layout.FromDWARF(d)
	if err != nil {
		return err
	}
	return l.WriteTable(os.Stdout)
}
