package e2e_test

import (
	"os"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// A secondary's disk is replaced while both daemons run, without
// restarting either: tandem down releases the device, a blank disk and
// create-md --force take its place, tandem up brings it back as a full
// sync target, and the replicas end byte-identical while the primary
// serves throughout. The primary's own down is refused.
func TestDiskReplacedWithoutRestart(t *testing.T) {
	t.Parallel()
	testenv.RequireTool(t, "qemu-io")
	p := newPair(t, pairOptions{size: 16 * mib})
	p.initialSync()
	qemuIO := func(cmds ...string) {
		t.Helper()
		out, stderr, err := testenvRunErr("qemu-io", qemuIOArgs(p.uri("alpha"), cmds...)...)
		if err != nil || strings.Contains(out+stderr, "failed") {
			t.Fatalf("qemu-io %v: %v\n%s%s", cmds, err, out, stderr)
		}
	}
	qemuIO("write -P 0x61 0 4M")

	if _, stderr, err := p.tandemErr("alpha", "down", "r0"); err == nil || !strings.Contains(stderr, "demote") {
		t.Fatalf("down on the Primary: %v %s, want a refusal saying demote", err, stderr)
	}
	if out := p.tandem("beta", "down", "r0"); !strings.Contains(out, "down") {
		t.Fatalf("down on beta: %s", out)
	}
	st := p.status("beta")
	if st.Up || st.Disk != replicate.Diskless || !strings.Contains(st.Error, "tandem up") {
		t.Fatalf("beta after down: %+v", st)
	}
	p.waitStatus("alpha", "alpha without beta", func(s daemon.ResourceStatus) bool { return s.Conn != replicate.Connected })
	qemuIO("write -P 0x62 8M 2M") // degraded, recorded for beta

	// The new disk: blank, then metadata, while beta's daemon runs.
	dev := p.nodes["beta"].device
	fi, err := os.Stat(dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, fi.Size()); err != nil {
		t.Fatal(err)
	}
	p.tandem("beta", "create-md", "r0", "--force")
	if out := p.tandem("beta", "up", "r0"); !strings.Contains(out, "up") {
		t.Fatalf("up on beta: %s", out)
	}
	seen := p.lastResync("beta") // its volume was reopened: this resync only
	if seen == nil || !seen.Full {
		t.Fatalf("resync onto the new disk: %+v, want a full sync", seen)
	}
	p.waitStatus("beta", "beta in sync on its new disk", inSync)
	qemuIO("write -P 0x63 12M 1M", "read -P 0x61 0 4M", "read -P 0x62 8M 2M")
	p.waitStatus("alpha", "alpha in sync", inSync)
	p.stopBoth()
	p.sameData()
}
