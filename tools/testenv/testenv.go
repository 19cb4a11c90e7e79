// Package testenv decides what a test may assume about the machine it runs
// on: root, Debian tools, kernel devices, free loopback ports, and a built
// tandem binary. It also runs the processes tests start (Start, Run,
// StartTandemServe), with every wait bounded and every process left
// running at the end of its test killed by its PID.
//
// The rule it enforces: under CI (CI=true or CI=1) a missing prerequisite is
// a failure, because CI is supposed to have installed everything (`make
// deps`) and a silent skip would hide a broken set-up. Elsewhere the test is
// skipped with the reason, so a developer without root still gets a green
// run of what can run.
package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
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
	"nbdsh":         "python3-libnbd", // a shell script around python3 -m nbd
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
	"strace":        "strace",
	"mountpoint":    "util-linux",
	"lsblk":         "util-linux",
	"sha256sum":     "coreutils",
}

// DebianPackage names the Debian package that provides the command name,
// or "" if testenv does not know it.
func DebianPackage(name string) string { return debianPackage[name] }

// RequireTool needs every named command on PATH (exec.LookPath). For
// nbdsh it also needs a python3 with the libnbd bindings (see Nbdsh).
func RequireTool(t testing.TB, names ...string) {
	t.Helper()
	var absent []string
	pkgs := map[string]bool{}
	for _, name := range names {
		what := name
		_, err := exec.LookPath(name)
		if err == nil && name == "nbdsh" {
			if _, err = nbdshPython(); err != nil {
				what = "nbdsh's python3 module nbd"
			}
		}
		if err != nil {
			absent = append(absent, what)
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
	missing(t, "not installed: %s: %s", strings.Join(absent, ", "), hint)
}

// Nbdsh requires nbdsh (see RequireTool) and returns the command line
// that runs it: `PYTHON3 -m nbd`, which is all the nbdsh script does.
// Running the module with a python3 known to have the bindings keeps nbdsh
// working when another python3 (pyenv, a venv) comes first on PATH.
func Nbdsh(t testing.TB) []string {
	t.Helper()
	RequireTool(t, "nbdsh")
	py, err := nbdshPython()
	if err != nil {
		t.Fatalf("testenv: %v", err) // RequireTool has checked it
	}
	return []string{py, "-m", "nbd"}
}

// nbdshPython finds a python3 that can import nbd (Debian's
// python3-libnbd): the first python3 on PATH, else the system one.
func nbdshPython() (string, error) {
	var candidates []string
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/bin/python3")
	var errs []string
	for _, p := range candidates {
		out, err := exec.Command(p, "-c", "import nbd").CombinedOutput()
		if err == nil {
			return p, nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v: %s", p, err, strings.TrimSpace(string(out))))
	}
	return "", fmt.Errorf("no python3 can import nbd (%s)", strings.Join(errs, "; "))
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
// that can pass a listener, or ":0", should do that instead. The port is
// drawn below the kernel's ephemeral range (ip_local_port_range), not
// from it: a port ":0" hands out is also the source port the next
// outgoing connection of any process may get, which made daemons fail to
// bind now and then.
func FreeAddr(t testing.TB) string {
	t.Helper()
	port, err := LoopbackPort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// handedOut holds every port LoopbackPort returned in this process: a
// probe closes its port, so a later draw would find it free again while
// the first caller has not bound it yet (two daemons of one test given
// the same port). Ports are a resource of the whole process, hence one
// set for it.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// LoopbackPort is FreeAddr's port, for harnesses outside a test. It never
// returns the same port twice in one process.
func LoopbackPort() (int, error) {
	lo, hi := 20000, ephemeralStart()
	if hi-lo < 1000 {
		lo = 1024
	}
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 200 {
		port := lo + rand.IntN(hi-lo)
		if handedOut.ports[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken: draw again
		}
		if err := l.Close(); err != nil {
			return 0, fmt.Errorf("closing the probe listener: %w", err)
		}
		handedOut.ports[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("no free loopback port in [%d, %d) after 200 draws", lo, hi)
}

// ephemeralStart is the first port of the kernel's ephemeral range
// (32768 when it cannot be read).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var start, end int
	if _, err := fmt.Sscanf(string(b), "%d %d", &start, &end); err != nil || start <= 1024 {
		return 32768
	}
	return start
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
