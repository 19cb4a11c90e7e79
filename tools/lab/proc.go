package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a process the lab started, as recorded in the directory: its PID
// and its start time (field 22 of /proc/PID/stat), which together name it
// even after the lab's own process has exited and the PID could be reused.
type proc struct {
	PID   int
	Start uint64
}

// procStart reads the start time of pid; ok is false when no such process
// exists or it is a zombie (dead, only not reaped yet).
func procStart(pid int) (uint64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), f[19] field 22 (starttime).
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, false
	}
	return st, true
}

// alive reports whether the recorded process still runs.
func (p proc) alive() bool {
	if p.PID <= 0 {
		return false
	}
	st, ok := procStart(p.PID)
	return ok && st == p.Start
}

func readProc(path string) (proc, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return proc{}, err
	}
	var p proc
	if _, err := fmt.Sscanf(string(b), "%d %d", &p.PID, &p.Start); err != nil {
		return proc{}, fmt.Errorf("lab: %s: not a process record: %w", path, err)
	}
	return p, nil
}

func writeProc(path string, p proc) error {
	return writeAtomic(path, fmt.Sprintf("%d %d\n", p.PID, p.Start), 0o644)
}

// startDetached starts argv in its own session with stdin from /dev/null
// and its output appended to logPath, records it at record, and does not
// wait for it: it outlives the lab command (init reaps it).
func startDetached(record, logPath string, argv []string) (proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return proc{}, fmt.Errorf("lab: opening log: %w", err)
	}
	defer logf.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return proc{}, err
	}
	defer null.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return proc{}, fmt.Errorf("lab: starting %s: %w", strings.Join(argv, " "), err)
	}
	p := proc{PID: cmd.Process.Pid}
	st, ok := procStart(p.PID)
	if !ok {
		_ = cmd.Wait()
		return proc{}, fmt.Errorf("lab: %s exited at once (see %s)", argv[0], logPath)
	}
	p.Start = st
	// Reap it if it dies while this process still runs; otherwise init will.
	go func() { _ = cmd.Wait() }()
	if err := writeProc(record, p); err != nil {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
		return proc{}, err
	}
	return p, nil
}

// stopRecorded signals the process recorded at path (if it still is the
// process recorded), waits up to grace for it to exit, then SIGKILLs it,
// and removes the record. A missing record is not an error.
func stopRecorded(path string, sig syscall.Signal, grace time.Duration) error {
	p, err := readProc(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := stopProc(p, sig, grace); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

// killWait bounds how long a SIGKILLed process may take to disappear.
const killWait = 10 * time.Second

func stopProc(p proc, sig syscall.Signal, grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	_ = syscall.Kill(p.PID, sig)
	if waitGone(p, grace) {
		return nil
	}
	if sig != syscall.SIGKILL && p.alive() {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	if !waitGone(p, killWait) {
		return fmt.Errorf("lab: pid %d still running %v after SIGKILL", p.PID, killWait)
	}
	return nil
}

func waitGone(p proc, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for p.alive() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// writeAtomic writes a complete file under a temporary name and renames
// it into place, so that a reader never sees half of it.
func writeAtomic(path, content string, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}
