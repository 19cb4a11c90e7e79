package testenv

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// recorder is a testing.TB whose Skipf and Fatalf record the outcome and end
// the goroutine, as the real ones do.
type recorder struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recorder) Helper() {}

func (r *recorder) Skipf(format string, args ...any) {
	r.skipped, r.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed, r.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls f with a recorder in its own goroutine so Goexit ends only it.
func run(t *testing.T, f func(tb testing.TB)) *recorder {
	t.Helper()
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

func TestInCI(t *testing.T) {
	for _, tc := range []struct {
		val  string
		want bool
	}{
		{"true", true}, {"1", true}, {"TRUE", true}, {"", false}, {"false", false}, {"0", false}, {"yes", false},
	} {
		t.Setenv("CI", tc.val)
		if got := InCI(); got != tc.want {
			t.Errorf("CI=%q: InCI() = %v, want %v", tc.val, got, tc.want)
		}
	}
}

func TestRequireToolPresent(t *testing.T) {
	for _, ci := range []string{"", "true"} {
		t.Setenv("CI", ci)
		r := run(t, func(tb testing.TB) { RequireTool(tb, "sh") })
		if r.skipped || r.failed {
			t.Fatalf("CI=%q: RequireTool(sh) skipped=%v failed=%v: %s", ci, r.skipped, r.failed, r.msg)
		}
	}
}

func TestRequireToolMissing(t *testing.T) {
	// An empty PATH makes every tool missing, including the known ones, so
	// the hint can be checked.
	t.Setenv("PATH", t.TempDir())

	t.Setenv("CI", "")
	r := run(t, func(tb testing.TB) { RequireTool(tb, "nbdinfo", "qemu-img") })
	if !r.skipped || r.failed {
		t.Fatalf("outside CI: skipped=%v failed=%v, want a skip", r.skipped, r.failed)
	}

	t.Setenv("CI", "true")
	r = run(t, func(tb testing.TB) { RequireTool(tb, "nbdinfo", "qemu-img") })
	if !r.failed || r.skipped {
		t.Fatalf("under CI: skipped=%v failed=%v, want a failure", r.skipped, r.failed)
	}
	for _, want := range []string{"nbdinfo", "qemu-img", "apt-get install -y libnbd-bin qemu-utils"} {
		if !strings.Contains(r.msg, want) {
			t.Errorf("message %q lacks %q", r.msg, want)
		}
	}

	r = run(t, func(tb testing.TB) { RequireTool(tb, "nbdsh", "strace") })
	if want := "apt-get install -y python3-libnbd strace"; !r.failed || !strings.Contains(r.msg, want) {
		t.Fatalf("RequireTool(nbdsh, strace) without them: failed=%v, message %q lacks %q", r.failed, r.msg, want)
	}
}

func TestRequireRoot(t *testing.T) {
	t.Setenv("CI", "true")
	r := run(t, func(tb testing.TB) { RequireRoot(tb) })
	if isRoot := os.Geteuid() == 0; r.failed == isRoot {
		t.Fatalf("uid %d under CI: failed=%v (%s)", os.Geteuid(), r.failed, r.msg)
	}
}

func TestRequireDeviceAlwaysSkips(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "nbd0")
	for _, ci := range []string{"", "true"} {
		t.Setenv("CI", ci)
		r := run(t, func(tb testing.TB) { RequireDevice(tb, absent) })
		if !r.skipped || r.failed {
			t.Fatalf("CI=%q, absent device: skipped=%v failed=%v", ci, r.skipped, r.failed)
		}
		if !strings.Contains(r.msg, absent) {
			t.Errorf("reason %q does not name the device", r.msg)
		}
	}

	// A regular file is not a device.
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := run(t, func(tb testing.TB) { RequireDevice(tb, f) }); !r.skipped {
		t.Fatalf("regular file accepted as a device")
	}

	// /dev/null is a (character) device and must be accepted.
	if r := run(t, func(tb testing.TB) { RequireDevice(tb, "/dev/null") }); r.skipped || r.failed {
		t.Fatalf("/dev/null refused: %s", r.msg)
	}
}

func TestFreeAddr(t *testing.T) {
	addr := FreeAddr(t)
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("FreeAddr() = %q (%v), want 127.0.0.1:PORT", addr, err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on the free address %s: %v", addr, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if p := FreePort(t); p <= 0 || p > 65535 {
		t.Fatalf("FreePort() = %d", p)
	}
}

func TestDebianPackage(t *testing.T) {
	if got := DebianPackage("nbdfuse"); got != "libnbd-bin" {
		t.Fatalf("DebianPackage(nbdfuse) = %q", got)
	}
	// nbdsh is a script in python3-libnbd, not in libnbd-bin.
	if got := DebianPackage("nbdsh"); got != "python3-libnbd" {
		t.Fatalf("DebianPackage(nbdsh) = %q", got)
	}
	if got := DebianPackage("no-such-tool"); got != "" {
		t.Fatalf("DebianPackage(no-such-tool) = %q", got)
	}
}

// A probe closes its port, so without the record of what was handed out
// the same port could come back while its first caller has not bound it.
func TestLoopbackPortNeverRepeats(t *testing.T) {
	seen := map[int]bool{}
	for range 2000 {
		p, err := LoopbackPort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		if p >= ephemeralStart() {
			t.Fatalf("port %d is in the ephemeral range (from %d)", p, ephemeralStart())
		}
		seen[p] = true
	}
}
