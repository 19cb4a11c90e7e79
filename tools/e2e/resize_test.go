package e2e_test

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// Growing a resource online under two real daemons: both devices made
// larger (internal metadata, which moves behind the new end), the size
// set in the file, tandem resize on the primary while a client is
// connected; a new NBD connection sees the new size and writes past the
// old end, the new range resyncs to beta, and after a restart of both the
// metadata says the new size and the replicas are identical.
func TestResizeRealDaemons(t *testing.T) {
	testenv.RequireTool(t, "qemu-io", "nbdinfo")
	const old, grown = 16 * mib, 40 * mib
	p := newPair(t, pairOptions{size: old})
	p.initialSync()
	qemuIO(t, p.uri("alpha"), "write -P 0x41 0 2M", "write -P 0x42 15M 1M", "flush")

	// Refused while the devices and the file still say the old size.
	if _, stderr, err := p.tandemErr("alpha", "resize", "r0"); err != nil {
		t.Fatalf("resize to the size it has: %v %s, want nothing to do", err, stderr)
	}
	yaml, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	grownYAML := strings.Replace(string(yaml), fmt.Sprintf("size: %d\n", old), fmt.Sprintf("size: %d\n", grown), 1)
	writeFile(t, p.path, grownYAML, 0o644)
	if _, stderr, err := p.tandemErr("alpha", "resize", "r0"); err == nil || !strings.Contains(stderr, "too small for size") {
		t.Fatalf("resize before the devices grew: %v %s, want refused", err, stderr)
	}
	growDevices(t, p, grown)
	if _, stderr, err := p.tandemErr("beta", "resize", "r0"); err == nil || !strings.Contains(stderr, "not_primary") && !strings.Contains(stderr, "Primary") {
		t.Fatalf("resize on beta: %v %s, want refused (the primary grows both)", err, stderr)
	}
	out := p.tandem("alpha", "resize", "r0")
	if !strings.Contains(out, "grown to the configured size") {
		t.Fatalf("resize: %s", out)
	}
	if st := p.status("alpha"); st.Size != grown {
		t.Fatalf("alpha's size after resize: %d", st.Size)
	}
	if st := p.status("beta"); st.Size != grown {
		t.Fatalf("beta's size after resize: %d", st.Size)
	}
	if info, _, err := testenvRunErr("nbdinfo", "--size", p.uri("alpha")); err != nil || strings.TrimSpace(info) != fmt.Sprint(grown) {
		t.Fatalf("nbdinfo --size after resize: %q %v", info, err)
	}
	qemuIO(t, p.uri("alpha"), "write -P 0x43 30M 2M", "flush", "read -P 0x41 0 2M", "read -P 0x42 15M 1M", "read -P 0x43 30M 2M")
	p.waitStatus("alpha", "in sync at the new size", func(s daemon.ResourceStatus) bool { return inSync(s) && s.Size == grown })
	p.waitStatus("beta", "beta in sync", inSync)
	if out := p.tandem("alpha", "adjust", "--dry-run"); strings.Contains(out, "Size") {
		t.Fatalf("adjust still sees a size change after the resize:\n%s", out)
	}

	p.stopBoth()
	p.size = grown
	p.sameData()
	if !bytes.Equal(p.fileRange("beta", 30*mib, 2*mib), bytes.Repeat([]byte{0x43}, 2*mib)) {
		t.Fatal("beta lacks the write past the old end")
	}
	// Both restarted: the metadata is at the new place, in sync.
	p.start("alpha")
	p.start("beta")
	p.tandem("alpha", "promote", "r0")
	st := p.waitStatus("beta", "in sync after the restart", func(s daemon.ResourceStatus) bool { return inSync(s) && s.Size == grown })
	if st.LastResync != nil && st.LastResync.Full {
		t.Fatalf("a full sync after restarting the grown pair: %+v", st.LastResync)
	}
	p.stopBoth()
}

// The secondary's daemon is stopped during the resize: refused without
// --assume-peer-has-space, with it alpha grows alone and serves the new
// size. beta starts again with its old file and refuses to grow (its file
// says the old size: StandAlone, saying so); its file and device grown,
// tandem connect grows it at the setup and the new range resyncs.
func TestResizePeerAwayRealDaemons(t *testing.T) {
	testenv.RequireTool(t, "qemu-io")
	const old, grown = 16 * mib, 40 * mib
	p := newPair(t, pairOptions{size: old})
	p.initialSync()
	qemuIO(t, p.uri("alpha"), "write -P 0x51 0 1M", "flush")
	betaPath := p.path + ".beta"
	yaml, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, betaPath, string(yaml), 0o644)
	p.nodes["beta"].cfgPath = betaPath
	p.stop("beta")

	grownYAML := strings.Replace(string(yaml), fmt.Sprintf("size: %d\n", old), fmt.Sprintf("size: %d\n", grown), 1)
	writeFile(t, p.path, grownYAML, 0o644)
	growDevices(t, p, grown)
	if _, stderr, err := p.tandemErr("alpha", "resize", "r0"); err == nil || !strings.Contains(stderr, "not_connected") && !strings.Contains(stderr, "connect the peer first") {
		t.Fatalf("resize with beta down: %v %s, want refused", err, stderr)
	}
	p.tandem("alpha", "resize", "r0", "--assume-peer-has-space")
	if st := p.status("alpha"); st.Size != grown {
		t.Fatalf("alpha's size: %d", st.Size)
	}
	qemuIO(t, p.uri("alpha"), "write -P 0x52 30M 1M", "flush")

	p.start("beta") // its file still says the old size
	p.waitStatus("beta", "beta StandAlone, saying it cannot grow", func(st daemon.ResourceStatus) bool {
		return st.Conn == "StandAlone" && strings.Contains(st.Reason, "cannot grow")
	})
	writeFile(t, betaPath, grownYAML, 0o644)
	p.tandem("beta", "connect", "r0")
	p.waitStatus("alpha", "alpha in sync at the new size", func(st daemon.ResourceStatus) bool { return inSync(st) && st.Size == grown })
	p.waitStatus("beta", "beta grown and in sync", func(st daemon.ResourceStatus) bool { return inSync(st) && st.Size == grown })
	p.stopBoth()
	p.size = grown
	p.sameData()
	if !bytes.Equal(p.fileRange("beta", 30*mib, mib), bytes.Repeat([]byte{0x52}, mib)) {
		t.Fatal("beta lacks the write made past the old end while it was away")
	}
}

// growDevices makes both replicas' devices hold size bytes of data and
// their internal metadata (p.path must say that size already).
func growDevices(t *testing.T, p *pair, size int64) {
	t.Helper()
	cfg, err := config.Load(p.path)
	if err != nil {
		t.Fatal(err)
	}
	layout, err := daemon.Layout(cfg.Resource("r0"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alpha", "beta"} {
		if err := os.Truncate(p.nodes[n].device, size+layout.MetaSize()); err != nil {
			t.Fatal(err)
		}
	}
}
