package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds against hangs on a shared, noisy machine. They only stop a hung
// test; nothing here asserts how fast anything is.
const (
	readyWait = 60 * time.Second // WaitFor: a process getting ready
	exitWait  = 60 * time.Second // Wait, Stop, Kill: a process exiting
	toolWait  = 3 * time.Minute  // Run, RunErr: one client run to completion
	// pipeWait bounds how long Wait keeps reading the output pipes after
	// the process exited, in case a grandchild inherited them.
	pipeWait = 5 * time.Second
	pollWait = 20 * time.Millisecond
)

// syncBuffer is a bytes.Buffer that a child process writes while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Proc is a child process a test started, tracked by the PID it started
// with and never looked up by name. Every wait on it is bounded.
type Proc struct {
	name   string // for messages: the command's base name
	cmd    *exec.Cmd
	stdout syncBuffer
	stderr syncBuffer
	exited chan struct{}
	err    error // Wait's result; valid once exited is closed
}

// Start runs name args... in the background, collecting its stdout and
// stderr. At the end of the test a process still running is killed by its
// PID and reaped.
func Start(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	p := &Proc{name: filepath.Base(name), exited: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.WaitDelay = pipeWait
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("testenv: starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.Kill(t) })
	return p
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stdout is what the process wrote to stdout so far.
func (p *Proc) Stdout() string { return p.stdout.String() }

// Stderr is what the process wrote to stderr so far.
func (p *Proc) Stderr() string { return p.stderr.String() }

// Exited is closed once the process has exited and been reaped.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Running reports whether the process has not exited yet.
func (p *Proc) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Err is the exit error (nil for status 0) once the process has exited,
// and nil while it runs.
func (p *Proc) Err() error {
	if p.Running() {
		return nil
	}
	return p.err
}

// Wait waits for the process to exit and returns its exit error (nil for
// status 0). The test fails if it is still running after a minute.
func (p *Proc) Wait(t testing.TB) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(exitWait):
		t.Fatalf("testenv: %s (pid %d) still running after %v\nstderr:\n%s", p.name, p.Pid(), exitWait, p.Stderr())
		return nil
	}
}

// Signal sends sig to the process by its PID; the test fails if that is
// not possible, e.g. because it has exited.
func (p *Proc) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("testenv: sending %v to %s (pid %d): %v", sig, p.name, p.Pid(), err)
	}
}

// Stop sends SIGTERM and returns the exit error as Wait does.
func (p *Proc) Stop(t testing.TB) error {
	t.Helper()
	p.Signal(t, syscall.SIGTERM)
	return p.Wait(t)
}

// Kill sends SIGKILL to the process if it is still running and reaps it.
// It reports a process that cannot be reaped as a test error rather than
// a fatal one, because it also runs as a cleanup.
func (p *Proc) Kill(t testing.TB) {
	t.Helper()
	if !p.Running() {
		return
	}
	_ = p.cmd.Process.Kill() // by PID: this process only
	select {
	case <-p.exited:
	case <-time.After(exitWait):
		t.Errorf("testenv: %s (pid %d) not reaped %v after SIGKILL", p.name, p.Pid(), exitWait)
	}
}

// WaitFor polls ready until it reports true. The test fails, with the
// process's output, if the process exits first or ready stays false for a
// minute; what says what was awaited ("the ready file", "strace to attach").
func (p *Proc) WaitFor(t testing.TB, what string, ready func() bool) {
	t.Helper()
	deadline := time.Now().Add(readyWait)
	for !ready() {
		select {
		case <-p.exited:
			if ready() {
				return
			}
			t.Fatalf("testenv: %s (pid %d) exited before %s: %v\nstdout:\n%s\nstderr:\n%s", p.name, p.Pid(), what, p.err, p.Stdout(), p.Stderr())
		case <-time.After(pollWait):
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: %s (pid %d): no %s after %v\nstdout:\n%s\nstderr:\n%s", p.name, p.Pid(), what, readyWait, p.Stdout(), p.Stderr())
		}
	}
}

// Run runs a command to completion, bounded in time, and returns its
// stdout; a non-zero exit fails the test with both outputs.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	stdout, stderr, err := RunErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout
}

// RunErr runs a command to completion, bounded in time, and returns its
// stdout, stderr and exit error. It does not use the test's context, which
// is already cancelled when cleanups (umount, losetup -d) run.
func RunErr(name string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), toolWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = pipeWait
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (killed after %v)", err, toolWait)
	}
	return o.String(), e.String(), err
}
