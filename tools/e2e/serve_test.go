package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/tools/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// Bounds against hangs on a shared, noisy machine; never performance
// assertions.
const (
	readyWait = 60 * time.Second
	exitWait  = 60 * time.Second
	toolWait  = 3 * time.Minute
)

const mib = 1 << 20

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

// proc is a child process the test started, tracked by its PID.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout syncBuffer
	stderr syncBuffer
	exited chan struct{}
	err    error // Wait's result; valid once exited is closed
}

// start runs name args... in the background. At the end of the test a
// process still running is killed by its PID and reaped.
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, exited: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// wait waits (bounded) for the process to exit and returns Wait's error.
func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(exitWait):
		t.Fatalf("%s (pid %d) still running after %v\nstderr:\n%s", p.name, p.cmd.Process.Pid, exitWait, p.stderr.String())
		return nil
	}
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// server is a running `tandem serve`.
type server struct {
	*proc
	pid  int    // from --pid-file
	addr string // first line of --ready-file
}

func (s *server) uri(name string) string { return "nbd://" + s.addr + "/" + name }

// startServe runs `tandem serve` on a loopback port chosen by the kernel
// and waits for its ready file.
func startServe(t *testing.T, args ...string) *server {
	t.Helper()
	bin := testenv.BuildTandem(t)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "tandem.pid")
	readyFile := filepath.Join(dir, "tandem.ready")
	args = append([]string{"serve", "--listen", "127.0.0.1:0", "--pid-file", pidFile, "--ready-file", readyFile}, args...)
	s := &server{proc: start(t, bin, args...)}
	deadline := time.Now().Add(readyWait)
	for {
		if b, err := os.ReadFile(readyFile); err == nil && len(b) > 0 {
			s.addr = strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
			break
		}
		if !s.running() {
			t.Fatalf("tandem serve exited before it was ready: %v\n%s", s.err, s.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("tandem serve not ready after %v\n%s", readyWait, s.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("reading --pid-file: %v", err)
	}
	s.pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || s.pid != s.cmd.Process.Pid {
		t.Fatalf("--pid-file holds %q, the process is %d", b, s.cmd.Process.Pid)
	}
	return s
}

// signal sends sig to the server by its saved PID.
func (s *server) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(s.pid, sig); err != nil {
		t.Fatalf("kill -%d %d: %v", sig, s.pid, err)
	}
}

// run runs a client to completion and returns stdout; a non-zero exit
// fails the test.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), toolWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

// qemuIOArgs builds a qemu-io command line. Writeback cache mode: qemu sends
// FUA only where a command asks for it.
func qemuIOArgs(uri string, cmds ...string) []string {
	args := []string{"-t", "writeback", "-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return append(args, uri)
}

func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	out := run(t, "qemu-io", qemuIOArgs(uri, cmds...)...)
	if strings.Contains(out, "failed") {
		t.Fatalf("qemu-io: %s", out)
	}
	return out
}

func isPattern(b []byte, v byte) bool {
	for _, c := range b {
		if c != v {
			return false
		}
	}
	return true
}

func describe(b []byte) string {
	if len(b) > 16 {
		return fmt.Sprintf("% x...", b[:16])
	}
	return fmt.Sprintf("% x", b)
}
