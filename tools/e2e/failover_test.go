package e2e_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// clusterPair is a pair with the cluster layer: gossip and authority
// addresses on every node, and a manual fencing level on the data nodes
// (there is no BMC on loopback: the admin's `tandem fence confirm` is the
// fence).
func clusterPair(t *testing.T) *pair {
	t.Helper()
	p := newPair(t, pairOptions{size: 16 * mib})
	b, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	dataDir := regexp.MustCompile(`(?m)^    data-dir: (.*)/(alpha|beta|witness)$`)
	text := dataDir.ReplaceAllStringFunc(string(b), func(line string) string {
		name := dataDir.FindStringSubmatch(line)[2]
		add := fmt.Sprintf("\n    gossip: 127.0.0.1:%d\n    authority: 127.0.0.1:%d", testenv.FreePort(t), testenv.FreePort(t))
		if name != "witness" {
			add += "\n    fencing:\n      - type: manual"
		}
		return line + add
	})
	writeFile(t, p.path, text, 0o644)
	if p.cfg, err = config.Load(p.path); err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	if !p.cfg.ClusterLayer() {
		t.Fatal("the configuration does not enable the cluster layer")
	}
	const gen = "0x5c1e4f2a9b3d7e60"
	for _, n := range []string{"alpha", "beta"} {
		p.tandem(n, "create-md", "r0", "--new-blank", "--generation", gen)
	}
	return p
}

// startCluster starts the three daemons and waits until the cluster layer
// has promoted alpha and beta is in sync.
func (p *pair) startCluster() {
	p.t.Helper()
	for _, n := range []string{"witness", "alpha", "beta"} {
		p.start(n)
	}
	p.waitStatus("alpha", "alpha promoted by the cluster layer", serving)
	p.waitStatus("beta", "beta in sync", inSync)
}

func (p *pair) clusterStatus(n string) daemon.NodeStatus {
	p.t.Helper()
	var ns daemon.NodeStatus
	out := p.tandem(n, "status", "--json")
	if err := json.Unmarshal([]byte(out), &ns); err != nil || ns.ClusterLayer == nil {
		p.t.Fatalf("status --json of %s: %v\n%s", n, err, out)
	}
	return ns
}

func serving(st daemon.ResourceStatus) bool {
	return st.Role == replicate.Primary && st.NBDServing
}

// A killed primary is replaced automatically once it is fenced: here the
// fence is an admin's confirmation (manual level), so the failover waits
// for it, alerts, then goes on; the old primary comes back as secondary and
// resyncs.
func TestClusterFailover(t *testing.T) {
	t.Parallel()
	testenv.RequireTool(t, "qemu-io")
	p := clusterPair(t)
	p.startCluster()
	qemuIO(t, p.uri("alpha"), "write -P 0x5a 1M 2M", "flush")

	p.nodes["alpha"].proc.Kill(t)
	killed := time.Now()
	// The manual level has no confirmation: fencing fails, nothing is
	// promoted, beta alerts and retries.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(p.nodes["beta"].proc.Stderr(), "fence confirm alpha") {
		if time.Now().After(deadline) {
			t.Fatalf("beta never alerted about fencing alpha:\n%s", tail(p.nodes["beta"].proc.Stderr(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := p.status("beta"); st.Role == replicate.Primary {
		t.Fatal("beta promoted without a fence")
	}
	out := p.tandem("beta", "fence", "confirm", "alpha", "--yes")
	if !strings.Contains(out, "recorded as off") {
		t.Fatalf("fence confirm: %s", out)
	}
	p.waitStatus("beta", "beta promoted after the confirmation", serving)
	t.Logf("beta serves %v after alpha was killed (including the wait for the confirmation)", time.Since(killed).Round(time.Millisecond))
	if b := []byte(qemuIO(t, p.uri("beta"), "read -P 0x5a 1M 2M")); strings.Contains(string(b), "Pattern verification failed") {
		t.Fatalf("beta lacks what alpha acknowledged: %s", b)
	}
	qemuIO(t, p.uri("beta"), "write -P 0x6b 4M 1M", "flush")

	ns := p.clusterStatus("beta")
	res := ns.ClusterLayer.Record.Resource("r0")
	if res == nil || res.Primary != "beta" || res.Epoch != 2 || res.LastFailover == nil || res.LastFailover.How != "fenced" {
		t.Fatalf("record after the failover: %+v", res)
	}
	f := ns.ClusterLayer.LastFailover["r0"]
	if f == nil || len(f.Steps) == 0 || f.Steps[len(f.Steps)-1].Name != "serve" {
		t.Fatalf("beta's failover timeline: %+v", f)
	}
	for _, s := range f.Steps {
		t.Logf("failover step %-12s %.3fs (elapsed %.3fs) %s", s.Name, s.Seconds, s.Elapsed, s.Detail)
	}
	human := p.tandem("beta", "status")
	if !strings.Contains(human, "cluster layer: quorum") || !strings.Contains(human, "fenced") {
		t.Fatalf("tandem status:\n%s", human)
	}

	p.start("alpha")
	st := p.waitStatus("alpha", "alpha back as secondary, resynced", inSync)
	if st.Role != replicate.Secondary {
		t.Fatalf("alpha came back as %s", st.Role)
	}
	p.waitStatus("beta", "beta in sync", inSync)
	if b := p.fileRange("alpha", 4*mib, mib); !isPattern(b, 0x6b) {
		t.Fatalf("alpha lacks beta's writes after the resync: %s", describe(b))
	}

	// A switchover moves it back, without fencing.
	out = p.tandem("witness", "switchover", "r0", "--to", "alpha")
	if !strings.Contains(out, "switchover of r0 to alpha") {
		t.Fatalf("switchover: %s", out)
	}
	p.waitStatus("alpha", "alpha primary after the switchover", serving)
	p.waitStatus("beta", "beta secondary and in sync", func(st daemon.ResourceStatus) bool { return inSync(st) && st.Role == replicate.Secondary })

	// What beta's daemon streamed meanwhile: the failover step by step,
	// the fencing confirmation an admin gave, and the switchover. And the
	// witness, which holds no replica, sees both data nodes' replicas
	// through gossip.
	evs := p.tandem("beta", "events", "--json", "--now")
	for _, want := range []string{`"kind":"failover"`, `"kind":"admin"`, `fence-confirm`, `"kind":"volume"`} {
		if !strings.Contains(evs, want) {
			t.Errorf("beta's events lack %s:\n%s", want, tail(evs, 40))
		}
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		ns := p.clusterStatus("witness")
		a, b := ns.Nodes["alpha"], ns.Nodes["beta"]
		if len(a.Resources) == 1 && a.Resources[0].Role == "Primary" && a.Resources[0].Disk == "UpToDate" &&
			len(b.Resources) == 1 && b.Resources[0].Role == "Secondary" && b.Resources[0].Disk == "UpToDate" && b.Resources[0].Conn == "Connected" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the witness's gossiped view of the data nodes never showed alpha Primary, beta Secondary UpToDate: %+v", ns.Nodes)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if human := p.tandem("witness", "status"); !strings.Contains(human, "r0 Secondary/UpToDate/Connected") {
		t.Errorf("the witness's status does not show beta's replica:\n%s", human)
	}

	// A clean stop of the primary hands the resource over first: beta
	// takes it without fencing.
	p.stop("alpha")
	if !strings.Contains(p.nodes["alpha"].proc.Stderr(), "handing the resource over") {
		t.Fatalf("alpha's log does not show the handover:\n%s", tail(p.nodes["alpha"].proc.Stderr(), 30))
	}
	p.waitStatus("beta", "beta primary after alpha stopped", serving)
	res = p.clusterStatus("beta").ClusterLayer.Record.Resource("r0")
	if res.Primary != "beta" || res.LastFailover == nil || res.LastFailover.How != "demoted" {
		t.Fatalf("record after a clean stop of the primary: %+v %+v", res, res.LastFailover)
	}
	p.stop("beta")
	p.stop("witness")
	p.sameData()
}

// TestTransferLeadershipCommand: `tandem transfer-leadership` on the
// authority log's leader moves the leadership; asked of a follower it is
// refused and names the leader; tandem status shows the leader.
func TestTransferLeadershipCommand(t *testing.T) {
	t.Parallel()
	p := clusterPair(t)
	p.startCluster()
	leaderOf := func(n string) string {
		if a := p.clusterStatus(n).Authority; a != nil {
			return a.Leader
		}
		return ""
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, to := range []string{"alpha", "witness"} {
		leader := leaderOf("beta")
		if leader == to {
			continue
		}
		for _, n := range []string{"witness", "alpha", "beta"} {
			if n == leader {
				continue
			}
			_, stderr, err := p.tandemErr(n, "transfer-leadership", to)
			if err == nil || !strings.Contains(stderr, "does not lead") || !strings.Contains(stderr, leader) {
				t.Fatalf("transfer-leadership on follower %s: %v\n%s", n, err, stderr)
			}
			break
		}
		if out := p.tandem(leader, "transfer-leadership", to); !strings.Contains(out, "handed from "+leader+" to "+to) {
			t.Fatalf("transfer-leadership on %s: %s", leader, out)
		}
		for _, n := range []string{"witness", "alpha", "beta"} {
			for leaderOf(n) != to {
				if time.Now().After(deadline) {
					t.Fatalf("%s sees leader %q, want %s", n, leaderOf(n), to)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	if out := p.tandem("alpha", "status"); !strings.Contains(out, "authority log: leader witness (this node: Follower") {
		t.Fatalf("tandem status:\n%s", out)
	}
	// The log still commits: a switchover goes through it.
	if out := p.tandem("alpha", "switchover", "r0"); !strings.Contains(out, "switchover of r0") {
		t.Fatalf("switchover after the transfers: %s", out)
	}
	p.waitStatus("beta", "beta primary after the switchover", serving)
}
