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

// TestDemo runs demo.sh (one node, then two replicated daemons) with a
// freshly built tandem: it must print PASS, exit 0 and leave its work
// directory removed.
func TestDemo(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "bash", "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "sha256sum", "mountpoint", "jq", "cmp")
	bin := testenv.BuildTandem(t)

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
}
