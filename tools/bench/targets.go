package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/tools/testenv"
)

// Target names, in table order.
const (
	tTandem = "tandem"
	tNbdkit = "nbdkit"
	tQemu   = "qemu-nbd"
	tGoNBD  = "go-nbd"
	tRaw    = "raw"
	// tRepl is tandem replicated with protocol C to a peer on loopback.
	tRepl = "tandem-repl"
)

var allTargets = []string{tTandem, tRepl, tNbdkit, tQemu, tGoNBD, tRaw}

// target is one thing fio runs against: an NBD server serving the bench
// file, or the file itself.
type target struct {
	Name   string
	Server []string // server command line; nil for the raw file
	Port   int
	Engine []string // fio options that select this target
	// readyFile, when set, is created by the server once it listens.
	readyFile string
	proc      *process
	// pair runs the replicated target's two daemons (Server is nil).
	pair *pair
}

func (t *target) uri() string { return fmt.Sprintf("nbd://127.0.0.1:%d/bench", t.Port) }

// pids are the target's server processes: the daemon, or the replicated
// pair's primary then secondary; none for the raw file.
func (t *target) pids() []int {
	switch {
	case t.pair != nil:
		return []int{t.pair.Primary.proc.pid, t.pair.Secondary.proc.pid}
	case t.proc != nil:
		return []int{t.proc.pid}
	}
	return nil
}

// runs says whether the target takes part in workload row.
func (t *target) runs(row string) bool { return targetRuns(t.Name, row) }

// binaries are the executables the targets need.
type binaries struct {
	Tandem, GoNBD, NetPeer string
}

// newTarget describes target name serving file; work is a private
// directory for pid files and logs.
func newTarget(name, file string, size int64, bins binaries, work string) (*target, error) {
	t := &target{Name: name}
	if name == tRaw {
		// --invalidate=0: fio drops the file's page cache before a job by
		// default, which would send this target (and the servers measured
		// after it) to the disk while the servers read from memory.
		t.Engine = []string{"--ioengine=io_uring", "--direct=0", "--invalidate=0", "--filename=" + file, "--size=" + strconv.FormatInt(size, 10)}
		return t, nil
	}
	if name == tRepl {
		p, err := newPair(bins.Tandem, work, size)
		if err != nil {
			return nil, err
		}
		t.pair, t.Port = p, p.Primary.NBDPort
		t.Engine = []string{"--ioengine=nbd", "--uri=" + t.uri()}
		return t, nil
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	t.Port = port
	p := strconv.Itoa(port)
	pid := filepath.Join(work, name+".pid")
	switch name {
	case tTandem:
		t.readyFile = filepath.Join(work, name+".ready")
		t.Server = []string{bins.Tandem, "serve", "--listen", "127.0.0.1:" + p, "--export", "bench=" + file,
			"--pid-file", pid, "--ready-file", t.readyFile}
	case tNbdkit:
		// -f keeps nbdkit our child so it is waited for; -P still writes
		// the pid file, which nbdkit does once it listens. The file plugin
		// defaults to cache=default (page cache), like tandem.
		t.Server = []string{"nbdkit", "-f", "-P", pid, "-p", p, "-i", "127.0.0.1", "file", file}
		t.readyFile = pid
	case tQemu:
		// -t: stay up across fio's connections; -e 0: unlimited clients.
		t.Server = []string{"qemu-nbd", "-f", "raw", "-x", "bench", "-p", p, "-b", "127.0.0.1",
			"--discard=unmap", "-e", "0", "--cache=writeback", "--aio=threads", "-t", "--pid-file", pid, file}
		t.readyFile = pid
	case tGoNBD:
		t.Server = []string{bins.GoNBD, "-listen", "127.0.0.1:" + p, "-file", file, "-export", "bench"}
	default:
		return nil, fmt.Errorf("bench: unknown target %q (want one of %s)", name, strings.Join(allTargets, ","))
	}
	t.Engine = []string{"--ioengine=nbd", "--uri=" + t.uri()}
	return t, nil
}

// start runs the server and waits until an NBD client sees the export at
// its full size.
func (t *target) start(ctx context.Context, size int64, logPath string) error {
	if t.pair != nil {
		if err := t.pair.start(ctx); err != nil {
			return err
		}
		if err := probe(ctx, t.uri(), size); err != nil {
			return t.pair.withLogs(err)
		}
		return nil
	}
	if t.Server == nil {
		return nil
	}
	p, err := startProcess(t.Server, logPath)
	if err != nil {
		return fmt.Errorf("bench: starting %s: %w", t.Name, err)
	}
	t.proc = p
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var lastErr error
	for {
		if t.readyFile == "" || fileExists(t.readyFile) {
			lastErr = probe(ctx, t.uri(), size)
			if lastErr == nil {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("bench: %s exited during start-up (%v); log: %s", t.Name, p.err, tail(logPath))
		case <-ctx.Done():
			return fmt.Errorf("bench: %s not ready (last probe: %v); log: %s", t.Name, lastErr, tail(logPath))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop ends the server by its saved PID and waits for it.
func (t *target) stop() error {
	if t.pair != nil {
		return t.pair.stop()
	}
	if t.proc == nil {
		return nil
	}
	return t.proc.stopDefault()
}

// probe asks nbdinfo for the export's size: a full NBD handshake, so a
// server that listens but cannot serve is not taken for ready.
func probe(ctx context.Context, uri string, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nbdinfo", "--size", uri).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nbdinfo %s: %w: %s", uri, err, bytes.TrimSpace(out))
	}
	got, err := strconv.ParseInt(string(bytes.TrimSpace(out)), 10, 64)
	if err != nil {
		return fmt.Errorf("nbdinfo %s: %w", uri, err)
	}
	if got != size {
		return fmt.Errorf("nbdinfo %s: size %d, want %d", uri, got, size)
	}
	return nil
}

// process is a child we started; it is only ever signalled by its own PID.
type process struct {
	pid  int
	done chan struct{} // closed once Wait returned
	err  error         // Wait's result, valid after done
}

func startProcess(argv []string, logPath string) (*process, error) {
	// Appending: a daemon restarted during the resync row keeps one log.
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating log: %w", err)
	}
	defer lf.Close() // the child holds its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// If the benchmark itself is killed, take the servers with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stopDefault is stop with the grace the NBD servers get.
func (p *process) stopDefault() error { return p.stop(5 * time.Second) }

// stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (p *process) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("bench: signalling pid %d: %w", p.pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("bench: killing pid %d: %w", p.pid, err)
	}
	select {
	case <-p.done:
		return fmt.Errorf("bench: pid %d ignored SIGTERM for %v and was killed", p.pid, grace)
	case <-time.After(grace):
		return fmt.Errorf("bench: pid %d survived SIGKILL for %v", p.pid, grace)
	}
}

// freePort picks an unused loopback port below the ephemeral range (see
// testenv.LoopbackPort). Another process could take it before the server
// binds; start-up then fails loudly.
func freePort() (int, error) {
	p, err := testenv.LoopbackPort()
	if err != nil {
		return 0, fmt.Errorf("bench: finding a free port: %w", err)
	}
	return p, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// tail returns the end of a log file for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	const max = 2000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "(empty)"
	}
	return s
}
