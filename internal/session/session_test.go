package session

import (
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/plan"
)

func TestWatchExit(t *testing.T) {
	cmd := exec.Command("sleep", "0.2")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	start := time.Now()
	exited := watchExit(cmd.Process.Pid, stop)
	if !alive(cmd.Process.Pid) {
		t.Error("a running process is not alive")
	}
	go cmd.Wait()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("exit not seen")
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("exit seen after %v, before the process ended", d)
	}
}

func TestStartNoProcess(t *testing.T) {
	// PIDs above pid_max do not exist.
	_, err := Start(Config{PID: 1 << 30})
	if !errors.Is(err, plan.ErrNoProcess) {
		t.Errorf("err %v, want ErrNoProcess", err)
	}
}

func TestStartBadCommand(t *testing.T) {
	if _, err := Start(Config{Command: []string{"/no/such/program"}}); err == nil {
		t.Error("no error")
	}
}
