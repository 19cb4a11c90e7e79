package testenv

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestProcWaitAndOutput(t *testing.T) {
	p := Start(t, "sh", "-c", "echo out; echo err >&2; exit 3")
	err := p.Wait(t)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Wait() = %v, want exit status 3", err)
	}
	if p.Running() || p.Err() != err {
		t.Fatalf("after Wait: Running()=%v Err()=%v", p.Running(), p.Err())
	}
	if p.Stdout() != "out\n" || p.Stderr() != "err\n" {
		t.Fatalf("stdout %q, stderr %q", p.Stdout(), p.Stderr())
	}
}

func TestProcStop(t *testing.T) {
	p := Start(t, "sleep", "600")
	if !p.Running() || p.Err() != nil {
		t.Fatalf("a fresh sleep: Running()=%v Err()=%v", p.Running(), p.Err())
	}
	err := p.Stop(t)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("Stop() = %v, want an exit error", err)
	}
	if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("sleep ended with %v, want killed by SIGTERM", ws)
	}
}

// TestProcCleanupKills: a process still running when its test ends is
// killed and reaped by the cleanup Start registered.
func TestProcCleanupKills(t *testing.T) {
	var p *Proc
	t.Run("leaves sleep running", func(t *testing.T) {
		p = Start(t, "sleep", "600")
	})
	if p.Running() {
		t.Fatalf("sleep (pid %d) still running after its test ended", p.Pid())
	}
	var ee *exec.ExitError
	if !errors.As(p.Err(), &ee) {
		t.Fatalf("sleep ended with %v, want killed", p.Err())
	}
	if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("sleep ended with %v, want killed by SIGKILL", ws)
	}
}

func TestProcWaitFor(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "flag")
	p := Start(t, "sh", "-c", `echo ready > "$0"; exec sleep 600`, flag)
	p.WaitFor(t, "the flag file", func() bool {
		_, err := os.Stat(flag)
		return err == nil
	})
	if !p.Running() {
		t.Fatalf("sh exited: %v", p.Err())
	}

	// A process that exits before it is ready fails the test, and says so.
	r := run(t, func(tb testing.TB) {
		q := Start(tb, "sh", "-c", "echo gave up >&2; exit 1")
		q.WaitFor(tb, "the impossible", func() bool { return false })
	})
	if !r.failed {
		t.Fatalf("WaitFor on an exited process did not fail the test")
	}
	for _, want := range []string{"exited before the impossible", "gave up"} {
		if !strings.Contains(r.msg, want) {
			t.Errorf("message %q lacks %q", r.msg, want)
		}
	}
}

func TestRun(t *testing.T) {
	stdout, stderr, err := RunErr("sh", "-c", "echo a; echo b >&2; exit 2")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || stdout != "a\n" || stderr != "b\n" {
		t.Fatalf("RunErr = %q, %q, %v; want a, b, exit status 2", stdout, stderr, err)
	}
	if out := Run(t, "echo", "hi"); out != "hi\n" {
		t.Fatalf("Run(echo hi) = %q", out)
	}
	r := run(t, func(tb testing.TB) { Run(tb, "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 1") })
	if !r.failed {
		t.Fatalf("a failing command did not fail the test")
	}
	for _, want := range []string{"to-stdout", "to-stderr", "exit status 1"} {
		if !strings.Contains(r.msg, want) {
			t.Errorf("message %q lacks %q", r.msg, want)
		}
	}
}

// TestNbdsh runs nbdsh the way the real-client tests do; a python3 on PATH
// without the bindings (pyenv) must not break it.
func TestNbdsh(t *testing.T) {
	RequireTool(t, "nbdsh")
	fake := t.TempDir()
	if err := os.WriteFile(filepath.Join(fake, "python3"), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", fake+string(os.PathListSeparator)+os.Getenv("PATH"))
	nbdsh := Nbdsh(t)
	if nbdsh[0] == filepath.Join(fake, "python3") {
		t.Fatalf("Nbdsh chose the python3 without the bindings")
	}
	if out := Run(t, nbdsh[0], append(nbdsh[1:], "-c", `print("libnbd", h.get_version())`)...); !strings.HasPrefix(out, "libnbd ") {
		t.Fatalf("nbdsh printed %q", out)
	}
}
