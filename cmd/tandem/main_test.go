package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/tandem-ha/tandem/tools/testenv"
)

// TestMain lets testenv build the tandem binary once for the end-to-end
// tests and remove it afterwards.
func TestMain(m *testing.M) { testenv.Main(m) }

// execute runs one command line in process and returns what it printed.
func execute(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRootCmd(&app{stdout: &out, stderr: &errb})
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}
