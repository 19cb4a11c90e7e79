package e2e_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/tools/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const mib = 1 << 20

// server is a running `tandem serve` on a loopback port chosen by the
// kernel.
type server struct{ *testenv.TandemServe }

func (s *server) uri(name string) string { return "nbd://" + s.Addrs[0] + "/" + name }

// startServe runs `tandem serve` on a loopback port chosen by the kernel,
// waits for it to be ready and checks that its --pid-file names it.
func startServe(t *testing.T, args ...string) *server {
	t.Helper()
	pidFile := filepath.Join(t.TempDir(), "tandem.pid")
	s := &server{testenv.StartTandemServe(t, append([]string{"--listen", "127.0.0.1:0", "--pid-file", pidFile}, args...)...)}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("reading --pid-file: %v", err)
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || pid != s.Pid() {
		t.Fatalf("--pid-file holds %q, the process is %d", b, s.Pid())
	}
	return s
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
	out := testenv.Run(t, "qemu-io", qemuIOArgs(uri, cmds...)...)
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
