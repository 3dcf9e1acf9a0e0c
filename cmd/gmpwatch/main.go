// Command gmpwatch shows what the Go scheduler is doing inside a running Go
// program: eBPF uprobes on the runtime's scheduler functions, and reads of the
// runtime's own state from /proc/PID/mem. See README.md.
//
// The command line only wires packages together: every subcommand lives in its
// own file and registers itself in commands; the logic is in analysis/ and ebpf/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one subcommand.
type command struct {
	name    string
	usage   string // one line: "inspect BINARY | -p PID [--json]"
	summary string
	// run does the work. It returns nil, an *exitError for a chosen status, or
	// any other error, which is printed on one line with status 2.
	run func(ctx context.Context, env *cmdEnv, args []string) error
}

// cmdEnv is what a subcommand may touch, so tests can run Main in process.
type cmdEnv struct {
	stdout, stderr io.Writer
	stdin          io.Reader
}

var commands = map[string]*command{}

func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("duplicate command " + c.name)
	}
	commands[c.name] = c
}

// exitError carries an exit status. A nil err means nothing more to print.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf reports bad input: printed on one line, exit status 2.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], &cmdEnv{stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin})
	stop()
	os.Exit(code)
}

// defaultCommand runs when the first argument is not a subcommand name
// (gmpwatch -p PID, gmpwatch -- CMD): the live view.
const defaultCommand = "top"

// Main runs gmpwatch with args and returns the exit status.
func Main(ctx context.Context, args []string, env *cmdEnv) int {
	name := defaultCommand
	if len(args) > 0 {
		switch a := args[0]; {
		case a == "help" || a == "-h" || a == "--help" || a == "-help":
			usage(env.stdout)
			return 0
		case !strings.HasPrefix(a, "-"):
			if _, ok := commands[a]; !ok {
				fmt.Fprintf(env.stderr, "gmpwatch: unknown command %q (see gmpwatch help)\n", a)
				return 2
			}
			name, args = a, args[1:]
		}
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(env.stderr, "gmpwatch: command %q is not built in\n", name)
		return 2
	}
	err := c.run(ctx, env, args)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(env.stderr, "gmpwatch %s: %v\n", c.name, oneLine(ee.err))
		}
		return ee.code
	}
	fmt.Fprintf(env.stderr, "gmpwatch %s: %v\n", c.name, oneLine(err))
	return 2
}

// oneLine keeps an error to one line: bad input gets one clear line.
func oneLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "gmpwatch: watch the Go scheduler (G, M, P) of a running program with eBPF.")
	fmt.Fprintln(w, "\nUsage:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  gmpwatch %-42s %s\n", commands[n].usage, commands[n].summary)
	}
	fmt.Fprintln(w, "\nWithout a command, gmpwatch -p PID or gmpwatch -- CMD ARGS runs the live view.")
}

// commandArgs returns the command given after "--" in args, where rest is
// what the flag set left unparsed (flag stops at "--" and drops it; it also
// stops at the first non-flag, which is then an error).
func commandArgs(args, rest []string) ([]string, error) {
	dashdash := len(args) >= len(rest)+1 && args[len(args)-len(rest)-1] == "--"
	switch {
	case len(rest) > 0 && !dashdash:
		return nil, usageErrorf("unexpected argument %q (put the command after --: gmpwatch -- CMD ARGS)", rest[0])
	case dashdash && len(rest) == 0:
		return nil, usageErrorf("no command after --")
	}
	return rest, nil
}
