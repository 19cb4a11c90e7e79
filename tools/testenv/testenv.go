// Package testenv decides what a test may assume about the machine it runs
// on: root, Debian tools, kernel devices, free loopback ports, and a built
// tandem binary.
//
// The rule it enforces: under CI (CI=true or CI=1) a missing prerequisite is
// a failure, because CI is supposed to have installed everything (`make
// deps`) and a silent skip would hide a broken set-up. Elsewhere the test is
// skipped with the reason, so a developer without root still gets a green
// run of what can run.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true or CI=1).
func InCI() bool {
	v := strings.TrimSpace(strings.ToLower(os.Getenv("CI")))
	return v == "true" || v == "1"
}

// missing fails the test under CI and skips it elsewhere.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("testenv: prerequisite missing under CI: "+format, args...)
		return
	}
	t.Skipf("testenv: skipped: "+format, args...)
}

// RequireRoot needs an effective uid of 0.
func RequireRoot(t testing.TB) {
	t.Helper()
	if uid := os.Geteuid(); uid != 0 {
		missing(t, "needs root (running as uid %d); run the tests as root, e.g. sudo make test", uid)
	}
}

// debianPackage maps a command to the Debian 12 package that ships it, so
// that the failure message says what to install.
var debianPackage = map[string]string{
	"nbdinfo":       "libnbd-bin",
	"nbdcopy":       "libnbd-bin",
	"nbdfuse":       "libnbd-bin",
	"nbdsh":         "libnbd-bin",
	"nbdkit":        "nbdkit",
	"nbd-server":    "nbd-server",
	"qemu-img":      "qemu-utils",
	"qemu-io":       "qemu-utils",
	"qemu-nbd":      "qemu-utils",
	"fio":           "fio",
	"fusermount3":   "fuse3",
	"mkfs.ext4":     "e2fsprogs",
	"e2fsck":        "e2fsprogs",
	"fsck.ext4":     "e2fsprogs",
	"losetup":       "mount",
	"mount":         "mount",
	"umount":        "mount",
	"ip":            "iproute2",
	"ipmi_sim":      "openipmi",
	"ipmitool":      "ipmitool",
	"fence_ipmilan": "fence-agents",
	"arping":        "arping",
	"tcpdump":       "tcpdump",
	"ping":          "iputils-ping",
}

// DebianPackage names the Debian package that provides the command name,
// or "" if testenv does not know it.
func DebianPackage(name string) string { return debianPackage[name] }

// RequireTool needs every named command on PATH (exec.LookPath).
func RequireTool(t testing.TB, names ...string) {
	t.Helper()
	var absent []string
	pkgs := map[string]bool{}
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			absent = append(absent, name)
			if p := debianPackage[name]; p != "" {
				pkgs[p] = true
			}
		}
	}
	if len(absent) == 0 {
		return
	}
	hint := "install it, or run `make deps` as root"
	if len(pkgs) > 0 {
		list := make([]string, 0, len(pkgs))
		for p := range pkgs {
			list = append(list, p)
		}
		sort.Strings(list)
		hint = "apt-get install -y " + strings.Join(list, " ") + " (or `make deps`)"
	}
	missing(t, "command %s not found on PATH: %s", strings.Join(absent, ", "), hint)
}

// RequireDevice needs the block device at path, e.g. /dev/nbd0.
//
// It always skips, even under CI, when the device is absent: kernel modules
// are a property of the host kernel, which CI cannot install (this test bed's
// kernel has no nbd module), so the kernel path is tested where it exists
// and reported as skipped, with the reason, everywhere else.
func RequireDevice(t testing.TB, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Skipf("testenv: skipped: device %s not available (%v); this kernel has no such device (for /dev/nbdX: no nbd kernel module, try `modprobe nbd`)", path, err)
		return
	}
	if fi.Mode()&os.ModeDevice == 0 {
		t.Skipf("testenv: skipped: %s exists but is not a device (mode %v)", path, fi.Mode())
	}
}

// FreeAddr returns a loopback TCP address "127.0.0.1:PORT" that was free a
// moment ago. Another process may take it before the caller binds it; tests
// that can pass a listener, or ":0", should do that instead.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: finding a free loopback port: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("testenv: closing probe listener: %v", err)
	}
	return addr
}

// FreePort returns a loopback TCP port that was free a moment ago (see
// FreeAddr for the caveat).
func FreePort(t testing.TB) int {
	t.Helper()
	_, port, err := net.SplitHostPort(FreeAddr(t))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil {
		t.Fatalf("testenv: parsing port %q: %v", port, err)
	}
	return p
}
