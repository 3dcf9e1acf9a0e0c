package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// runMain runs gmpwatch in process and returns its exit status and output.
func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), args, &cmdEnv{stdout: &stdout, stderr: &stderr, stdin: strings.NewReader("")})
	return code, stdout.String(), stderr.String()
}
