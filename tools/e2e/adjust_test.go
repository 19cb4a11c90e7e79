package e2e_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// A full sync crawling at 1 MiB/s speeds up once the file says 1G and
// the daemons are told: tandem adjust on the source, SIGHUP on the
// target, both real daemons. 64 MiB at the old rate would take a minute.
func TestAdjustSpeedsUpARunningSync(t *testing.T) {
	p := newPair(t, pairOptions{maxRate: "1M"})
	p.createMD()
	p.start("alpha")
	p.start("beta")
	p.tandem("alpha", "promote", "r0", "--force")
	p.tandem("alpha", "connect", "r0")
	p.tandem("beta", "connect", "r0")
	st := p.waitStatus("alpha", "the slow full sync", func(st daemon.ResourceStatus) bool { return st.Resync != nil })
	time.Sleep(time.Second)
	if st = p.status("alpha"); st.Resync == nil || st.Resync.LeftBytes < 32<<20 {
		t.Fatalf("at 1 MiB/s most of 64 MiB should be left after a second: %+v", st.Resync)
	}
	if out := p.tandem("alpha", "adjust", "--dry-run"); !strings.Contains(out, "nothing to change") {
		t.Fatalf("adjust --dry-run before the edit: %s", out)
	}
	b, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.path, strings.Replace(string(b), "max-rate: 1M", "max-rate: 1G", 1), 0o644)
	if out := p.tandem("alpha", "adjust"); !strings.Contains(out, "changed Resources[r0].Resync.MaxRate") {
		t.Fatalf("adjust: %s", out)
	}
	p.nodes["beta"].proc.Signal(t, syscall.SIGHUP)
	for _, n := range []string{"alpha", "beta"} {
		p.tandem(n, "wait", "r0", "--for", "in-sync", "--timeout", "30s")
	}
	p.sameData()
	p.nodes["beta"].proc.WaitFor(t, "beta's SIGHUP adjust in its log", func() bool {
		return strings.Contains(p.nodes["beta"].proc.Stderr(), "configuration adjusted")
	})
	if a, b := p.status("alpha"), p.status("beta"); !inSync(a) || !inSync(b) {
		t.Fatalf("after the sync: %+v / %+v", a, b)
	}
}

// The link's settings change on running daemons: the protocol, the
// compression and the TLS certificates (a new CA and certificates written
// over the old files, as a renewal does). alpha applies them first and
// cannot reach beta, which still has the old CA; it writes on alone. Once
// beta applies them too, the two reconnect with the new settings and
// resync what alpha wrote meanwhile.
func TestAdjustChangesTheLinkLive(t *testing.T) {
	testenv.RequireTool(t, "qemu-io")
	p := newTLSPair(t)
	before := p.status("alpha")
	if before.SessionProtocol != "C" || before.SessionCompression != "off" {
		t.Fatalf("the session before the change: %+v", before)
	}

	// A certificate file that does not load is refused: nothing changes.
	key := filepath.Join(p.dir, "lab-alpha-key.pem")
	good, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, key, "not a key\n", 0o600)
	if _, stderr, err := p.tandemErr("alpha", "adjust"); err == nil || !strings.Contains(stderr, "tls") {
		t.Fatalf("adjust with a broken key file: %v\n%s", err, stderr)
	}
	writeFile(t, key, string(good), 0o600)
	if st := p.status("alpha"); st.Session != before.Session || !inSync(st) {
		t.Fatalf("the refused adjust touched the session: %+v", st)
	}

	testenv.WriteCA(t, p.dir, "lab", "alpha", "beta")
	for _, n := range []string{"alpha", "beta"} {
		b, err := os.ReadFile(p.nodes[n].cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		s := strings.Replace(string(b), "    protocol: C\n", "    protocol: A\n", 1)
		s = strings.Replace(s, "    compression: off\n", "    compression: zstd\n", 1)
		writeFile(t, p.nodes[n].cfgPath, s, 0o644)
	}
	out := p.tandem("alpha", "adjust")
	for _, w := range []string{"Resources[r0].Protocol", "Resources[r0].Compression", "Resources[r0].TLS (files changed)"} {
		if !strings.Contains(out, w) {
			t.Errorf("adjust on alpha does not name %s: %s", w, out)
		}
	}
	p.nodes["alpha"].proc.WaitFor(t, "the old and the new CA refusing each other", func() bool {
		return strings.Contains(p.nodes["alpha"].proc.Stderr(), "certificate signed by unknown authority")
	})
	if st := p.status("alpha"); st.Conn != replicate.Connecting || st.Session != before.Session {
		t.Fatalf("alpha with the new CA, beta with the old: %+v", st)
	}
	// Both say why in their status, not only in the log.
	for _, n := range []string{"alpha", "beta"} {
		p.waitStatus(n, n+"'s status naming the TLS refusal", func(st daemon.ResourceStatus) bool {
			return strings.Contains(st.Reason, "since then the link is refused") && strings.Contains(st.Reason, "TLS refused")
		})
	}
	qemuIO(t, p.uri("alpha"), "write -P 0x62 2M 1M", "flush")

	p.nodes["beta"].proc.Signal(t, syscall.SIGHUP)
	for _, n := range []string{"alpha", "beta"} {
		p.tandem(n, "wait", "r0", "--for", "in-sync", "--timeout", "30s")
	}
	a, b := p.status("alpha"), p.status("beta")
	for _, st := range []daemon.ResourceStatus{a, b} {
		if st.Session <= before.Session || st.Protocol != "A" || st.SessionProtocol != "A" || st.SessionCompression != "zstd" {
			t.Errorf("%s after both adjusted: session %d (was %d), protocol %s/%s, compression %s/%s",
				st.Node, st.Session, before.Session, st.Protocol, st.SessionProtocol, st.Compression, st.SessionCompression)
		}
	}
	qemuIO(t, p.uri("alpha"), "write -P 0x63 3M 1M", "flush")
	p.waitStatus("alpha", "the last write to reach beta", inSync)
	p.stopBoth()
	p.sameData()
}

// TestAdjustChangesClusterPoliciesLive: with the cluster layer running,
// `tandem adjust` on every node makes beta the preferred primary of r0
// with failback auto and a short failback-after: the record takes the
// new preference and the cluster switches r0 over to beta by itself,
// with alpha's writes on it; no daemon restarts.
func TestAdjustChangesClusterPoliciesLive(t *testing.T) {
	t.Parallel()
	testenv.RequireTool(t, "qemu-io")
	p := clusterPair(t)
	p.startCluster()
	qemuIO(t, p.uri("alpha"), "write -P 0x71 1M 2M", "flush")
	pids := map[string]int{}
	for _, n := range []string{"witness", "alpha", "beta"} {
		pids[n] = p.nodes[n].proc.Pid()
	}

	b, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "    protocol: C\n", "    protocol: C\n    preferred-primary: beta\n    failback: auto\n", 1)
	s += "timing:\n  failback-after: 2s\n"
	writeFile(t, p.path, s, 0o644)
	for _, n := range []string{"witness", "alpha", "beta"} {
		out := p.tandem(n, "adjust")
		for _, w := range []string{"Resources[r0].PreferredPrimary", "Resources[r0].Failback", "Timing.FailbackAfter"} {
			if !strings.Contains(out, w) {
				t.Errorf("adjust on %s does not name %s: %s", n, w, out)
			}
		}
	}
	p.waitStatus("beta", "beta primary after the failback to its new preference", serving)
	p.waitStatus("alpha", "alpha secondary and in sync", func(st daemon.ResourceStatus) bool { return inSync(st) && st.Role == replicate.Secondary })
	if res := p.clusterStatus("alpha").ClusterLayer.Record.Resource("r0"); res == nil || res.Preferred != "beta" || res.Primary != "beta" {
		t.Fatalf("record after the adjust: %+v", res)
	}
	if out := qemuIO(t, p.uri("beta"), "read -P 0x71 1M 2M"); strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("beta lacks alpha's writes: %s", out)
	}
	for n, pid := range pids {
		if got := p.nodes[n].proc.Pid(); got != pid {
			t.Errorf("%s restarted (pid %d, was %d)", n, got, pid)
		}
	}

	// A restart-only key still refuses the whole file.
	writeFile(t, p.path, strings.Replace(s, "    failback: auto\n", "    failback: manual\n    al-extents: 61\n", 1), 0o644)
	if _, stderr, err := p.tandemErr("beta", "adjust"); err == nil || !strings.Contains(stderr, "ALExtents") {
		t.Fatalf("adjust with al-extents: %v\n%s", err, stderr)
	}
}

// The replication link moves to new ports under two real daemons: the
// file edited, alpha adjusts (it listens on its new port at once and
// closes the old one; beta, not adjusted yet, cannot reach it) and
// writes on alone, then beta adjusts; they connect over the new ports,
// the gap resyncs, and the replicas are identical.
func TestAdjustMovesTheLink(t *testing.T) {
	testenv.RequireTool(t, "qemu-io")
	p := newPair(t, pairOptions{size: 16 * mib})
	p.initialSync()
	before := p.status("alpha")
	res := p.cfg.Resource("r0")
	oldA, oldB := res.Replica("alpha").Address, res.Replica("beta").Address
	newA, newB := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	b, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "address: "+oldA+"\n", "address: "+newA+"\n", 1)
	s = strings.Replace(s, "address: "+oldB+"\n", "address: "+newB+"\n", 1)
	if s == string(b) {
		t.Fatal("the replicas' addresses are not in the file")
	}
	writeFile(t, p.path, s, 0o644)
	out := p.tandem("alpha", "adjust")
	if !strings.Contains(out, "Resources[r0].Replicas[alpha].Address") || !strings.Contains(out, "Resources[r0].Replicas[beta].Address") {
		t.Fatalf("adjust on alpha: %s", out)
	}
	if c, err := net.DialTimeout("tcp", oldA, time.Second); err == nil {
		c.Close()
		t.Fatalf("alpha still listens on its old address %s", oldA)
	}
	qemuIO(t, p.uri("alpha"), "write -P 0x6a 1M 1M", "flush")
	p.tandem("beta", "adjust")
	st := p.waitStatus("alpha", "connected over the new ports, in sync", func(st daemon.ResourceStatus) bool {
		return inSync(st) && st.Session > before.Session
	})
	if out := p.tandem("alpha", "adjust", "--dry-run"); !strings.Contains(out, "nothing to change") {
		t.Fatalf("adjust after the move still finds changes: %s (status %+v)", out, st)
	}
	p.waitStatus("beta", "beta in sync", inSync)
	p.stopBoth()
	p.sameData()
}
