package demo_test

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/tools/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestDemo runs demo.sh (one node, two replicated daemons, then the lab's
// automatic failover) with a freshly built tandem: it must print PASS and
// the failover's measurements, exit 0, and leave neither its work
// directory nor a lab namespace behind.
func TestDemo(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "bash", "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "sha256sum", "mountpoint", "jq", "cmp",
		"ip", "nft", "ipmi_sim", "qemu-nbd", "qemu-io", "timeout")
	bin := testenv.BuildTandem(t)
	netnsBefore := labNetns(t)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "demo.sh")
	cmd.Env = append(os.Environ(), "TANDEM="+bin, "KEEP=0")
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "PASS") {
		t.Fatalf("demo.sh did not end with PASS:\n%s", out)
	}
	if m := regexp.MustCompile(`(/tmp/tandem-demo\.[A-Za-z0-9]+)/`).FindSubmatch(out); m == nil {
		t.Errorf("demo.sh did not name its work directory:\n%s", out)
	} else if _, err := os.Stat(string(m[1])); !os.IsNotExist(err) {
		t.Errorf("demo.sh left %s behind (stat: %v)", m[1], err)
	}
	// The story's claims, each printed only after the script checked it.
	for _, want := range []string{
		`I/O at the VIP resumed [0-9]+\.[0-9]{3} s after the crash`,
		// promote and vip may swap (see tools/lab's TestClusterLayerFailover).
		`(?m)^ +detect: .*\n +fence: .*\n +commit: .*\n +(promote: .*\n +vip|vip: .*\n +promote): .*\n +serve: `,
		`written and fsynced on ext4 [0-9]+\.[0-9]{3} s after the crash`,
		`all [0-9]+ checksums match, read from bravo`,
		`alpha Secondary/UpToDate, Connected, bravo Primary/UpToDate, Connected`,
		`alpha-r0\.img and bravo-r0\.img: the first 256 MiB are identical`,
	} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf("demo.sh output lacks %q", want)
		}
	}
	if left := labNetns(t); len(left) > len(netnsBefore) {
		t.Errorf("demo.sh left lab namespaces behind: before %v, after %v", netnsBefore, left)
	}
	if t.Failed() {
		t.Logf("demo.sh output:\n%s", out)
	}
}

// labNetns lists the lab's network namespaces on the machine (any lab's).
func labNetns(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "tandem-lab-") {
			names = append(names, e.Name())
		}
	}
	return names
}
