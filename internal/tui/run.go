package tui

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/term"
)

// isTerminal reports whether v is an *os.File on a terminal.
func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(f.Fd())
}

// CanRun reports whether the live view can run: out is a terminal, and
// keys come from in or, when in is not a terminal (redirected), from the
// controlling terminal /dev/tty.
func CanRun(in io.Reader, out io.Writer) bool {
	if !isTerminal(out) {
		return false
	}
	if isTerminal(in) {
		return true
	}
	tty, err := os.Open("/dev/tty")
	if err != nil {
		return false
	}
	tty.Close()
	return true
}

// Program is the live view running on a terminal, in the alternate screen.
// Bubble Tea restores the terminal however it ends: a key, Stop, the
// context ending, or a panic in the model.
type Program struct {
	p        *tea.Program
	done     chan struct{}
	stopOnce sync.Once
	err      error
}

// Start shows the live view on the terminal out, reading keys from in (or
// /dev/tty when in is not a terminal: see CanRun). It
// ends when the user quits (q or Ctrl-C; Done is then closed), on Stop, or
// when ctx ends. Signals are left to the caller.
func Start(ctx context.Context, info Info, in io.Reader, out io.Writer) *Program {
	pr := &Program{done: make(chan struct{})}
	input := tea.WithInput(in)
	if !isTerminal(in) {
		input = tea.WithInputTTY()
	}
	pr.p = tea.NewProgram(New(info),
		tea.WithContext(ctx),
		input,
		tea.WithOutput(out),
		tea.WithAltScreen(),
		tea.WithoutSignalHandler(),
	)
	go func() {
		defer close(pr.done)
		_, err := pr.p.Run()
		if err != nil && !errors.Is(err, tea.ErrProgramKilled) && !errors.Is(err, context.Canceled) {
			pr.err = err
		}
	}()
	return pr
}

// Send hands one interval's snapshot to the view; it does not block once
// the view has ended.
func (pr *Program) Send(s Snapshot) { pr.p.Send(SnapshotMsg(s)) }

// Done is closed when the view has ended and the terminal is restored.
func (pr *Program) Done() <-chan struct{} { return pr.done }

// Stop ends the view, waits until the terminal is restored and returns
// what made the view fail, if anything.
func (pr *Program) Stop() error {
	pr.stopOnce.Do(func() { pr.p.Quit() })
	<-pr.done
	return pr.err
}
