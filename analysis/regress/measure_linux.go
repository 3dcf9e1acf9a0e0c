package regress

import (
	"context"
	"fmt"
	"os"
	"os/exec"
)

// Run implements Measurer: it starts argv (Start), kills it when ctx is
// done, and waits for its end (Finish).
func (m *HistogramMeasurer) Run(ctx context.Context, argv []string, stdout, stderr *os.File) (Outcome, error) {
	if len(argv) == 0 {
		return Outcome{ExitStatus: -1}, fmt.Errorf("%w: no command", ErrNotStarted)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	// Nil interfaces, not nil *os.File, for the streams not given.
	if stdout != nil {
		cmd.Stdout = stdout
	}
	if stderr != nil {
		cmd.Stderr = stderr
	}
	if err := m.Start(cmd); err != nil {
		return Outcome{ExitStatus: -1}, fmt.Errorf("%w: start %s: %w", ErrNotStarted, argv[0], err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			cmd.Process.Kill()
		case <-stop:
		}
	}()
	return m.Finish()
}
