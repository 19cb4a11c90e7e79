package fence

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// ProgramRun is how one run of an external program ended.
type ProgramRun struct {
	// Code is the exit status; -1 when it did not run or died by a signal.
	Code int
	// Stdout and Stderr are the first agentOutputLimit bytes of each.
	Stdout, Stderr string
	// Exit says how it ended ("exit status 1", "signal: killed").
	Exit string
	Took time.Duration
}

// RunProgram runs path with stdin as its input, in a process group of its
// own, and waits for it. When ctx ends first the whole group is killed, so
// a hung program and anything it started cannot outlive the call; the
// caller tells that case by ctx.Err(). env nil inherits the daemon's
// environment. The error is only for a program that could not be run (or
// waited for); an exit status, even non-zero, is in Code.
//
// Fence agents and the daemon's alert programs run through here.
func RunProgram(ctx context.Context, path string, env []string, stdin string) (ProgramRun, error) {
	var stdout, stderr limitedBuffer
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The group's id is the program's pid, which cannot be reused
		// while the program is not reaped yet (Cancel runs before Wait
		// reaps it).
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	// If something the program started escaped its group and holds the
	// pipes, stop reading after a while rather than hang.
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	err := cmd.Run()
	r := ProgramRun{Code: -1, Stdout: stdout.String(), Stderr: stderr.String(), Took: time.Since(start)}
	if cmd.ProcessState != nil {
		r.Code = cmd.ProcessState.ExitCode()
		r.Exit = cmd.ProcessState.String()
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return r, err
	}
	return r, nil
}

// limitedBuffer keeps the first agentOutputLimit bytes written to it and
// accepts (drops) the rest, so the agent never blocks on a full pipe.
type limitedBuffer struct {
	b         bytes.Buffer
	truncated bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	room := agentOutputLimit - l.b.Len()
	if room <= 0 {
		l.truncated = len(p) > 0 || l.truncated
		return len(p), nil
	}
	if len(p) > room {
		l.b.Write(p[:room])
		l.truncated = true
		return len(p), nil
	}
	l.b.Write(p)
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	if l.truncated {
		return l.b.String() + "\n[output truncated]"
	}
	return l.b.String()
}
