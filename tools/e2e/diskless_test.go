package e2e_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// faultyDisk puts node's device behind a disk that fails on demand: the
// image is served by nbdkit through its error filter (every request
// fails with EIO while the trigger file exists) and mounted back as a
// file with nbdfuse, which the daemon opens in place of the image. fail
// creates the trigger, heal removes it.
func faultyDisk(t *testing.T, p *pair, n string) (fail, heal func()) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nbdkit", "nbdfuse", "fusermount3")
	dev := p.nodes[n].device
	dir := t.TempDir()
	backing, sock, trigger, mnt := filepath.Join(dir, "backing.img"), filepath.Join(dir, "nbdkit.sock"), filepath.Join(dir, "fail"), filepath.Join(dir, "mnt")
	if err := os.Rename(dev, backing); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	kit := testenv.Start(t, "nbdkit", "-f", "-U", sock, "--filter=error", "file", backing,
		"error=EIO", "error-rate=100%", "error-file="+trigger)
	kit.WaitFor(t, "nbdkit's socket", func() bool { _, err := os.Stat(sock); return err == nil })
	pidFile := filepath.Join(dir, "nbdfuse.pid")
	fuse := testenv.Start(t, "nbdfuse", "-P", pidFile, filepath.Join(mnt, "disk"), "--unix", sock)
	fuse.WaitFor(t, "nbdfuse's pid file", func() bool { _, err := os.Stat(pidFile); return err == nil })
	if err := os.Symlink(filepath.Join(mnt, "disk"), dev); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Lazily: a daemon of a failed test may still hold the file.
		if _, stderr, err := testenv.RunErr("fusermount3", "-u", "-z", mnt); err != nil {
			t.Errorf("fusermount3 -u %s: %v: %s", mnt, err, stderr)
		}
		select {
		case <-fuse.Exited():
		case <-time.After(30 * time.Second):
			fuse.Kill(t)
		}
		kit.Stop(t)
	})
	return func() { writeFile(t, trigger, "", 0o600) }, func() { os.Remove(trigger) }
}

// The primary's disk starts failing under two real daemons: the request
// that hits it and every later one a client makes are served by the
// secondary, and the client sees no error; the secondary's daemon killed
// and started again, the diskless primary fails requests meanwhile and is
// served again once it is back; demoted, the old primary lets go, the secondary takes
// over with every write, and the old disk, working again, comes back as a
// full sync target.
func TestDisklessPrimaryRealDaemons(t *testing.T) {
	testenv.RequireTool(t, "qemu-io")
	p := newPair(t, pairOptions{size: 16 * mib})
	fail, heal := faultyDisk(t, p, "alpha")
	p.initialSync()
	qemuIO := func(n string, cmds ...string) string {
		t.Helper()
		out, stderr, _ := testenvRunErr("qemu-io", qemuIOArgs(p.uri(n), cmds...)...)
		return out + stderr
	}
	if out := qemuIO("alpha", "write -P 0x71 0 2M"); strings.Contains(out, "failed") {
		t.Fatalf("qemu-io before the fault: %s", out)
	}
	fail()
	if out := qemuIO("alpha", "write -P 0x72 4M 64k"); strings.Contains(out, "error") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io write that meets the fault: %s, want it done through beta", out)
	}
	p.waitStatus("alpha", "alpha Diskless", func(s daemon.ResourceStatus) bool { return s.Disk == replicate.Diskless })
	p.waitStatus("beta", "beta holding everything for alpha", func(s daemon.ResourceStatus) bool {
		return s.PeerDisk == replicate.Diskless && s.OutOfSync == p.size
	})
	out := qemuIO("alpha", "write -P 0x73 6M 1M", "flush", "read -P 0x71 0 2M", "read -P 0x72 4M 64k", "read -P 0x73 6M 1M")
	if strings.Contains(out, "failed") || strings.Contains(out, "error") || strings.Count(out, "read ") != 3 {
		t.Fatalf("qemu-io through the diskless primary:\n%s", out)
	}
	if !bytes.Equal(p.fileRange("beta", 6*mib, mib), bytes.Repeat([]byte{0x73}, mib)) {
		t.Fatal("beta's disk does not hold the write made through the diskless primary")
	}

	// beta's daemon dies: alpha's requests fail; back, it serves alpha
	// again, with what it held and without a resync.
	before := p.status("alpha").Session
	p.nodes["beta"].proc.Kill(t)
	p.waitStatus("alpha", "alpha Connecting without beta", func(s daemon.ResourceStatus) bool { return s.Conn == replicate.Connecting })
	if out := qemuIO("alpha", "read -P 0x73 6M 64k"); !strings.Contains(out, "error") && !strings.Contains(out, "failed") {
		t.Fatalf("a read through the diskless primary without beta: %s, want an I/O error", out)
	}
	p.start("beta")
	p.waitStatus("alpha", "alpha served by beta again", func(s daemon.ResourceStatus) bool {
		return s.Conn == replicate.Connected && s.Disk == replicate.Diskless && s.Session > before
	})
	out = qemuIO("alpha", "write -P 0x74 8M 1M", "flush", "read -P 0x71 0 2M", "read -P 0x73 6M 1M", "read -P 0x74 8M 1M")
	if strings.Contains(out, "failed") || strings.Contains(out, "error") || strings.Count(out, "read ") != 3 {
		t.Fatalf("qemu-io through the diskless primary after beta came back:\n%s", out)
	}
	if st := p.status("beta"); st.Resync != nil || st.OutOfSync != p.size || st.PeerDisk != replicate.Diskless {
		t.Fatalf("beta serving the diskless primary again (no resync, everything still out of sync for it): %+v", st)
	}

	p.tandem("alpha", "demote", "r0")
	p.waitStatus("alpha", "alpha detached", func(s daemon.ResourceStatus) bool {
		return s.Conn == replicate.StandAlone && strings.Contains(s.Reason, "disk failed")
	})
	p.waitStatus("beta", "beta without alpha", func(s daemon.ResourceStatus) bool { return s.Conn == replicate.Connecting })
	p.tandem("beta", "promote", "r0")
	if out := qemuIO("beta", "read -P 0x71 0 2M", "read -P 0x73 6M 1M", "read -P 0x74 8M 1M"); strings.Contains(out, "failed") || strings.Count(out, "read ") != 3 {
		t.Fatalf("qemu-io on beta after the takeover:\n%s", out)
	}

	// Its daemon stops with an error (the metadata could not be closed
	// clean on the failed disk), which it says.
	if err := p.nodes["alpha"].proc.Stop(t); err == nil || !strings.Contains(p.nodes["alpha"].proc.Stderr(), "input/output error") {
		t.Fatalf("alpha's daemon stopping on its failed disk: %v, want an error naming it", err)
	}
	heal()
	p.start("alpha")
	seen := p.lastResync("alpha") // restarted: this resync only
	if seen == nil || seen.TotalBytes < p.size {
		t.Fatalf("alpha's resync on its old disk: %+v, want all %d bytes", seen, p.size)
	}
	p.waitStatus("alpha", "alpha in sync", inSync)
	p.stopBoth()
	p.sameData()
}

// Under the cluster layer a primary whose disk fails hands the resource
// over without fencing: it goes on diskless through the secondary until
// the machine demotes it, the secondary is promoted at the next epoch,
// and nothing acknowledged is lost.
func TestClusterDisklessPrimaryHandsOver(t *testing.T) {
	testenv.RequireTool(t, "qemu-io")
	p := clusterPair(t)
	fail, heal := faultyDisk(t, p, "alpha")
	p.startCluster()
	qemuIO(t, p.uri("alpha"), "write -P 0x5a 1M 2M", "flush")

	fail()
	out, stderr, _ := testenvRunErr("qemu-io", qemuIOArgs(p.uri("alpha"), "write -P 0x11 8M 64k")...)
	if strings.Contains(out+stderr, "error") || strings.Contains(out+stderr, "failed") {
		t.Fatalf("the write that meets the fault: %s%s, want it done through beta", out, stderr)
	}
	p.waitStatus("beta", "beta promoted after alpha's disk failed", serving)
	if st := p.status("alpha"); st.Role != replicate.Secondary {
		t.Fatalf("alpha after handing over: %+v", st)
	}
	if b := qemuIO(t, p.uri("beta"), "read -P 0x5a 1M 2M", "read -P 0x11 8M 64k"); strings.Contains(b, "Pattern verification failed") {
		t.Fatalf("beta lacks what alpha acknowledged: %s", b)
	}
	res := p.clusterStatus("beta").ClusterLayer.Record.Resource("r0")
	if res == nil || res.Primary != "beta" || res.Epoch < 2 || res.State("alpha") != "Failed" {
		t.Fatalf("record after the handover: %+v", res)
	}
	if strings.Contains(p.nodes["beta"].proc.Stderr(), "fence confirm alpha") {
		t.Fatal("beta asked for a fence: a primary that demoted itself needs none")
	}
	qemuIO(t, p.uri("beta"), "write -P 0x6b 4M 1M", "flush")

	_ = p.nodes["alpha"].proc.Stop(t) // it cannot close the failed disk's metadata clean
	heal()
	p.start("alpha")
	p.waitStatus("alpha", "alpha back on its healed disk, resynced", inSync)
	if b := p.fileRange("alpha", 4*mib, mib); !isPattern(b, 0x6b) {
		t.Fatalf("alpha lacks beta's writes after the resync: %s", describe(b))
	}
}

// The diskless primary's disk replaced online under two real daemons: a
// blank file put where the failed disk was, tandem attach-disk gives it
// to the running volume; a client goes on writing through the peer while
// it syncs in full, and once it is UpToDate the primary serves on its own
// disk (beta killed, its requests still succeed) and the replicas end
// byte-identical. Refused first on beta's healthy disk, and over a disk
// that holds beta's metadata.
func TestAttachDiskRealDaemons(t *testing.T) {
	testenv.RequireTool(t, "qemu-io")
	p := newPair(t, pairOptions{size: 16 * mib, maxRate: "4M"})
	fail, _ := faultyDisk(t, p, "alpha")
	p.initialSync()
	qemuIO := func(n string, cmds ...string) {
		t.Helper()
		out, stderr, _ := testenvRunErr("qemu-io", qemuIOArgs(p.uri(n), cmds...)...)
		if out += stderr; strings.Contains(out, "failed") || strings.Contains(out, "error") {
			t.Fatalf("qemu-io %q on %s:\n%s", cmds, n, out)
		}
	}
	qemuIO("alpha", "write -P 0x61 0 2M")
	fail()
	qemuIO("alpha", "write -P 0x62 4M 64k")
	p.waitStatus("alpha", "alpha Diskless", func(s daemon.ResourceStatus) bool { return s.Disk == replicate.Diskless })

	if _, stderr, err := p.tandemErr("beta", "attach-disk", "r0"); err == nil || !strings.Contains(stderr, "has not failed") {
		t.Fatalf("attach-disk on beta's healthy disk: %v %s, want refused", err, stderr)
	}
	dev := p.nodes["alpha"].device
	if err := os.Remove(dev); err != nil { // the symlink to the failed disk
		t.Fatal(err)
	}
	beta, err := os.ReadFile(p.nodes["beta"].device)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dev, string(beta), 0o600)
	if _, stderr, err := p.tandemErr("alpha", "attach-disk", "r0"); err == nil || !strings.Contains(stderr, "foreign_disk") && !strings.Contains(stderr, `node "beta"`) {
		t.Fatalf("attach-disk over beta's metadata: %v %s, want refused", err, stderr)
	}
	if st := p.status("alpha"); st.Disk != replicate.Diskless || st.Conn != replicate.Connected {
		t.Fatalf("alpha after a refused attach-disk: %+v, want still Diskless and served", st)
	}
	// The replacement: blank, of the device's size.
	if err := os.Truncate(dev, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, int64(len(beta))); err != nil {
		t.Fatal(err)
	}
	if out := p.tandem("alpha", "attach-disk", "r0"); !strings.Contains(out, "new disk attached") {
		t.Fatalf("attach-disk: %s", out)
	}
	// Writes and reads while it syncs (4 MB/s: about four seconds).
	qemuIO("alpha", "write -P 0x63 6M 1M", "flush", "read -P 0x61 0 2M", "read -P 0x62 4M 64k")
	if st := p.status("alpha"); st.Disk == replicate.UpToDate {
		t.Logf("alpha's new disk was UpToDate already after the writes during its sync")
	}
	p.waitStatus("alpha", "alpha's new disk in sync", inSync)
	qemuIO("alpha", "write -P 0x64 8M 1M", "flush")

	// Its own disk now: without beta, alpha still serves, degraded.
	p.nodes["beta"].proc.Kill(t)
	p.waitStatus("alpha", "alpha without beta", func(s daemon.ResourceStatus) bool { return s.Conn == replicate.Connecting })
	qemuIO("alpha", "read -P 0x61 0 2M", "read -P 0x62 4M 64k", "read -P 0x63 6M 1M", "read -P 0x64 8M 1M", "write -P 0x65 10M 64k", "flush")
	p.start("beta")
	p.waitStatus("alpha", "alpha and beta in sync", inSync)
	p.waitStatus("beta", "beta in sync", inSync)
	p.stopBoth()
	p.sameData()
	if !bytes.Equal(p.fileRange("alpha", 10*mib, 64<<10), bytes.Repeat([]byte{0x65}, 64<<10)) {
		t.Fatal("alpha's new disk lacks the write made on it without beta")
	}
}
