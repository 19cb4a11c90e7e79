package fence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/fence/fencetest"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// scriptAgent writes a shell agent that saves its stdin, prints something on
// both outputs and exits with the status in the file "code" (if any) or the
// status named by its action in "code-ACTION".
func scriptAgent(t *testing.T, body string) (path, dir string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "fence_test")
	fencetest.WriteFile(t, path, fmt.Sprintf("#!/bin/sh\nd=%q\n%s", dir, body), 0o755)
	return path, dir
}

const recordingAgent = `cat > "$d/stdin"
action=$(sed -n 's/^action=//p' "$d/stdin")
echo "out: doing $action"
echo "err: password is s3cret" >&2
if [ -f "$d/code-$action" ]; then exit "$(cat "$d/code-$action")"; fi
exit 0
`

func TestAgentProtocol(t *testing.T) {
	path, dir := scriptAgent(t, recordingAgent)
	var logs logBuffer
	a, err := NewAgent(AgentConfig{
		Path:    path,
		Options: map[string]string{"ip": "192.0.2.1", "username": "admin", "password": "s3cret", "lanplus": "1"},
		Plug:    "beta",
		Timeout: 10 * time.Second,
		Log:     slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := a.Off(ctx, Request{}); err != nil {
		t.Fatalf("Off: %v", err)
	}
	stdin, err := os.ReadFile(filepath.Join(dir, "stdin"))
	if err != nil {
		t.Fatal(err)
	}
	want := "action=off\nip=192.0.2.1\nlanplus=1\npassword=s3cret\nusername=admin\nplug=beta\n"
	if string(stdin) != want {
		t.Fatalf("agent's stdin:\n%s\nwant:\n%s", stdin, want)
	}
	l := logs.String()
	if !strings.Contains(l, "out: doing off") || !strings.Contains(l, "exit=0") {
		t.Fatalf("the agent's output and exit status are not logged:\n%s", l)
	}
	if strings.Contains(l, "s3cret") {
		t.Fatalf("the password appears in the log:\n%s", l)
	}

	// Status: 0 on, 2 off, 1 and anything else an error.
	for _, c := range []struct {
		code    string
		want    State
		wantErr bool
	}{{"0", StateOn, false}, {"2", StateOff, false}, {"1", StateUnknown, true}, {"3", StateUnknown, true}} {
		fencetest.WriteFile(t, filepath.Join(dir, "code-status"), c.code, 0o644)
		st, err := a.Status(ctx)
		if st != c.want || (err != nil) != c.wantErr {
			t.Errorf("status with exit %s = %v, %v; want %v, error %v", c.code, st, err, c.want, c.wantErr)
		}
		if c.wantErr && !errors.Is(err, ErrAgent) {
			t.Errorf("status exit %s: %v does not wrap ErrAgent", c.code, err)
		}
	}
	// Off, on and reboot: 0 success, anything else failure (2 too).
	for _, action := range []Action{ActionOff, ActionOn, ActionReboot} {
		for _, code := range []string{"1", "2"} {
			fencetest.WriteFile(t, filepath.Join(dir, "code-"+string(action)), code, 0o644)
			var err error
			switch action {
			case ActionOff:
				err = a.Off(ctx, Request{})
			case ActionOn:
				err = a.On(ctx)
			case ActionReboot:
				err = a.Reboot(ctx, Request{})
			}
			if !errors.Is(err, ErrAgent) || !strings.Contains(err.Error(), "exit status "+code) {
				t.Errorf("%s with exit %s: %v; want ErrAgent naming the status", action, code, err)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("the error shows the password: %v", err)
			}
		}
	}
}

func TestAgentPasswordFile(t *testing.T) {
	path, dir := scriptAgent(t, recordingAgent)
	pw := filepath.Join(dir, "pw")
	fencetest.WriteFile(t, pw, "from-file\n", 0o600)
	a, err := NewAgent(AgentConfig{Path: path, PasswordFile: pw, Options: map[string]string{"ip": "h"}, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.On(context.Background()); err != nil {
		t.Fatal(err)
	}
	stdin, _ := os.ReadFile(filepath.Join(dir, "stdin"))
	if string(stdin) != "action=on\nip=h\npassword=from-file\n" {
		t.Fatalf("stdin with a password file:\n%s", stdin)
	}
	os.Remove(pw)
	if err := a.On(context.Background()); err == nil || !strings.Contains(err.Error(), "password file") {
		t.Fatalf("On without its password file: %v", err)
	}
}

func TestAgentTimeoutKillsProcessGroup(t *testing.T) {
	// The agent starts a child that would outlive it, then hangs. On
	// timeout both must be gone: the whole process group is killed.
	path, dir := scriptAgent(t, `cat > /dev/null
sleep 600 &
echo $! > "$d/child.pid"
echo "started" >&2
sleep 600
`)
	a, err := NewAgent(AgentConfig{Path: path, Timeout: 500 * time.Millisecond, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = a.Off(context.Background(), Request{})
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "killed") || !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Off of a hung agent: %v; want it killed on timeout", err)
	}
	if took > 10*time.Second {
		t.Fatalf("the 500 ms timeout was not honoured: %v", took)
	}
	b, err := os.ReadFile(filepath.Join(dir, "child.pid"))
	if err != nil {
		t.Fatalf("the agent did not start its child: %v", err)
	}
	child, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	// The child was reparented to init (or a subreaper) once the agent's
	// shell died: poll, bounded, until it is gone.
	deadline := time.Now().Add(10 * time.Second)
	for alive(child) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(child, syscall.SIGKILL) // by its saved PID
			t.Fatalf("the agent's child %d survived the timeout", child)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The caller's context ends a run too.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	a2, _ := NewAgent(AgentConfig{Path: path, Timeout: time.Minute, Log: testLogger(t)})
	if _, err := a2.Status(ctx); err == nil {
		t.Fatal("Status of a hung agent succeeded")
	}
	if b, err := os.ReadFile(filepath.Join(dir, "child.pid")); err == nil {
		c, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		deadline := time.Now().Add(10 * time.Second)
		for alive(c) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(c) {
			_ = syscall.Kill(c, syscall.SIGKILL)
			t.Fatalf("child %d survived the caller's cancellation", c)
		}
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Field 3, after the parenthesised command name, is the state.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

func TestAgentNotRunnable(t *testing.T) {
	dir := t.TempDir()
	noexec := filepath.Join(dir, "fence_noexec")
	fencetest.WriteFile(t, noexec, "#!/bin/sh\nexit 0\n", 0o644)
	for _, p := range []string{filepath.Join(dir, "absent"), noexec} {
		a, err := NewAgent(AgentConfig{Path: p, Log: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Off(context.Background(), Request{}); !errors.Is(err, ErrAgent) {
			t.Errorf("Off through %s: %v; want ErrAgent", p, err)
		}
	}
	// Options that would break the protocol are refused up front.
	for _, o := range []map[string]string{{"action": "on"}, {"plug": "x"}, {"a=b": "c"}, {"ip": "h\naction=on"}} {
		if _, err := NewAgent(AgentConfig{Path: "/bin/true", Options: o}); err == nil {
			t.Errorf("NewAgent accepted options %v", o)
		}
	}
	if _, err := NewAgent(AgentConfig{Path: "fence_ipmilan"}); err == nil {
		t.Error("NewAgent accepted a relative path")
	}
}

func TestAgentOutputBounded(t *testing.T) {
	path, _ := scriptAgent(t, "cat >/dev/null\nhead -c 1000000 /dev/zero | tr '\\0' x\nexit 0\n")
	a, err := NewAgent(AgentConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	r, err := a.run(context.Background(), ActionOn)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.stdout) > agentOutputLimit+100 || !strings.HasSuffix(r.stdout, "[output truncated]") {
		t.Fatalf("kept %d bytes of a 1 MB output", len(r.stdout))
	}
}

// fenceIPMILan is the real fence_ipmilan aimed at the simulator.
func fenceIPMILan(t *testing.T, s *sim) *Agent {
	t.Helper()
	testenv.RequireTool(t, "fence_ipmilan")
	path, err := lookPath("fence_ipmilan")
	if err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(t.TempDir(), "pw")
	fencetest.WriteFile(t, pw, simPassword+"\n", 0o600)
	a, err := NewAgent(AgentConfig{
		Path: path,
		Options: map[string]string{"ip": "127.0.0.1", "ipport": strconv.Itoa(s.Port), "username": simUser,
			"lanplus": "1", "cipher": "3", "power_wait": "0"},
		PasswordFile: pw,
		Timeout:      30 * time.Second,
		Log:          testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAgentFenceIPMILan(t *testing.T) {
	s := startSim(t, false)
	a := fenceIPMILan(t, s)
	ctx := context.Background()
	if st, err := a.Status(ctx); err != nil || st != StateOn {
		t.Fatalf("fence_ipmilan status = %v, %v; want on", st, err)
	}
	if err := a.Off(ctx, Request{}); err != nil {
		t.Fatalf("fence_ipmilan off: %v", err)
	}
	if !s.VictimDead() {
		t.Fatal("fence_ipmilan off succeeded, victim alive")
	}
	if st, err := a.Status(ctx); err != nil || st != StateOff {
		t.Fatalf("fence_ipmilan status after off = %v, %v; want off", st, err)
	}
	// go-ipmi and fence_ipmilan agree.
	if st, err := s.ipmi(t, nil).Status(ctx); err != nil || st != StateOff {
		t.Fatalf("go-ipmi status after fence_ipmilan off = %v, %v", st, err)
	}
	if err := a.On(ctx); err != nil {
		t.Fatalf("fence_ipmilan on: %v", err)
	}
	if got := s.IpmitoolStatus(t); got != "on" {
		t.Fatalf("ipmitool says %s after fence_ipmilan on", got)
	}
}
