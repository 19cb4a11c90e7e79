package e2e_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// resourceStatus is node's status of resource, from its admin API.
func (p *pair) resourceStatus(n, resource string) (daemon.ResourceStatus, error) {
	nd, err := p.cfg.Node(n)
	if err != nil {
		return daemon.ResourceStatus{}, err
	}
	ns, err := daemon.NewClient(nd.AdminSocket, n).Status(p.t.Context(), resource)
	if err != nil {
		return daemon.ResourceStatus{}, err
	}
	if len(ns.Resources) != 1 {
		return daemon.ResourceStatus{}, fmt.Errorf("%d resources in the status", len(ns.Resources))
	}
	return ns.Resources[0], nil
}

// r1Size is the size of the resource the tests add.
const r1Size = 8 * mib

// addR1 appends a resource r1 (extents in the test's directory, its NBD
// export on the listener r0 uses; extra is more of its keys, indented as
// its name) to the pair's file and returns the file as it was.
func (p *pair) addR1(extra string) string {
	t := p.t
	t.Helper()
	var r1 strings.Builder
	fmt.Fprintf(&r1, "  - name: r1\n    size: %d\n%s    replicas:\n", r1Size, extra)
	for _, n := range []string{"alpha", "beta"} {
		dev := filepath.Join(p.dir, n+"-r1.img")
		writeFile(t, dev, "", 0o644)
		if err := os.Truncate(dev, r1Size); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&r1, "      %s:\n        device: %s\n        meta: %s\n        address: 127.0.0.1:%d\n        nbd-listen: %s\n",
			n, dev, filepath.Join(p.dir, n+"-r1.md"), testenv.FreePort(t), p.nodes[n].nbdAddr)
	}
	b, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.path, string(b)+r1.String(), 0o644)
	return string(b)
}

// sameR1 fails the test unless r1's replicas are byte-identical and hold
// want at its start.
func (p *pair) sameR1(want []byte) {
	p.t.Helper()
	a, err := os.ReadFile(filepath.Join(p.dir, "alpha-r1.img"))
	if err != nil {
		p.t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(p.dir, "beta-r1.img"))
	if err != nil {
		p.t.Fatal(err)
	}
	if !bytes.Equal(a, b) || !bytes.Equal(a[:len(want)], want) {
		p.t.Fatal("r1's replicas differ, or lack the client's writes")
	}
}

// TestAdjustAddsAndRemovesAResourceRealDaemons: a resource added to the
// file of two running daemons comes up on both with tandem adjust, on the
// NBD listener r0 uses, syncs and takes writes from a real client; r0's
// session is not touched. Taken down and removed from the file, it is no
// longer exported, and its replicas are byte-identical.
func TestAdjustAddsAndRemovesAResourceRealDaemons(t *testing.T) {
	testenv.RequireTool(t, "qemu-io", "nbdinfo")
	p := newPair(t, pairOptions{size: 16 * mib})
	p.initialSync()
	qemuIO(t, p.uri("alpha"), "write -P 0x21 0 1M", "flush")
	before := p.status("alpha")

	original := p.addR1("")
	for _, n := range []string{"alpha", "beta"} {
		p.tandem(n, "create-md", "r1") // the daemons do not hold r1's files yet
	}
	orig := filepath.Join(p.dir, "before.yaml")
	writeFile(t, orig, original, 0o644)
	if out, _, _ := testenvRunErr(p.bin, "--config", orig, "config", "diff", p.path); !strings.Contains(out, "Resources[r1] (added)\ttandem adjust applies it") {
		t.Fatalf("config diff: %s", out)
	}
	for _, n := range []string{"alpha", "beta"} {
		out := p.tandem(n, "adjust")
		if !strings.Contains(out, "Resources[r1] (added)") || !strings.Contains(out, "r1 added and up") {
			t.Fatalf("adjust on %s: %s", n, out)
		}
	}
	p.tandem("alpha", "promote", "r1", "--force")
	p.tandem("alpha", "connect", "r1")
	p.tandem("beta", "connect", "r1")
	for _, n := range []string{"alpha", "beta"} {
		if out := p.tandem(n, "wait", "r1", "--for", "in-sync", "--timeout", "60s"); !strings.Contains(out, "r1: in-sync after") {
			t.Fatalf("%s: tandem wait r1: %s", n, out)
		}
	}
	uri1 := "nbd://" + p.nodes["alpha"].nbdAddr + "/r1"
	qemuIO(t, uri1, "write -P 0x5e 0 2M", "write -P 0x7f 6M 1M", "flush")
	if out := qemuIO(t, uri1, "read -P 0x5e 0 2M"); !strings.Contains(out, "read 2097152/2097152") {
		t.Fatalf("reading r1 back: %s", out)
	}
	list, _, err := testenvRunErr("nbdinfo", "--list", "nbd://"+p.nodes["alpha"].nbdAddr)
	if err != nil || !strings.Contains(list, `export="r0"`) || !strings.Contains(list, `export="r1"`) {
		t.Fatalf("nbdinfo --list on alpha: %v\n%s", err, list)
	}
	if st := p.status("alpha"); st.Session != before.Session || !inSync(st) {
		t.Fatalf("r0 after adding r1: session %d (was %d), %+v", st.Session, before.Session, st)
	}

	// Removing it: refused while up, then after down on both nodes.
	writeFile(t, p.path, original, 0o644)
	if _, stderr, err := p.tandemErr("beta", "adjust"); err == nil || !strings.Contains(stderr, "tandem down r1 first") {
		t.Fatalf("adjust removing an up r1 on beta: %v %s", err, stderr)
	}
	p.tandem("alpha", "demote", "r1")
	for _, n := range []string{"alpha", "beta"} {
		p.tandem(n, "down", "r1")
		if out := p.tandem(n, "adjust"); !strings.Contains(out, "Resources[r1] (removed)") {
			t.Fatalf("adjust removing r1 on %s: %s", n, out)
		}
		if _, err := p.resourceStatus(n, "r1"); err == nil {
			t.Fatalf("%s still has r1", n)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, _, err = testenvRunErr("nbdinfo", "--list", "nbd://"+p.nodes["alpha"].nbdAddr)
		if err == nil && !strings.Contains(list, `export="r1"`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || strings.Contains(list, `export="r1"`) {
		t.Fatalf("alpha still exports r1 after the removal: %v\n%s", err, list)
	}
	qemuIO(t, p.uri("alpha"), "write -P 0x22 1M 1M", "flush")
	p.waitStatus("beta", "r0 in sync", inSync)
	if st := p.status("alpha"); st.Session != before.Session || st.Role != replicate.Primary {
		t.Fatalf("r0 after removing r1: session %d (was %d), %+v", st.Session, before.Session, st)
	}
	p.stopBoth()
	p.sameData()
	p.sameR1(bytes.Repeat([]byte{0x5e}, 2*mib))
}

// TestAdjustAddsAndRemovesAResourceUnderTheClusterLayer: three real
// daemons with the cluster layer; r1, added to every node's file with
// beta preferred, is promoted on beta by the cluster layer itself, takes
// a real client's writes, and is removed again once down; r0 stays on
// alpha throughout and no daemon restarts.
func TestAdjustAddsAndRemovesAResourceUnderTheClusterLayer(t *testing.T) {
	t.Parallel()
	testenv.RequireTool(t, "qemu-io")
	p := clusterPair(t)
	p.startCluster()
	pids := map[string]int{}
	for _, n := range []string{"witness", "alpha", "beta"} {
		pids[n] = p.nodes[n].proc.Pid()
	}
	original := p.addR1("    preferred-primary: beta\n")
	for _, n := range []string{"alpha", "beta"} {
		p.tandem(n, "create-md", "r1", "--new-blank", "--generation", "0x1d2c3b4a59687706")
	}
	for _, n := range []string{"witness", "alpha", "beta"} {
		if out := p.tandem(n, "adjust"); !strings.Contains(out, "Resources[r1] (added)") {
			t.Fatalf("adjust on %s: %s", n, out)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := p.resourceStatus("beta", "r1")
		if err == nil && serving(st) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("beta does not serve r1: %+v %v\n%s", st, err, tail(p.nodes["beta"].proc.Stderr(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
	uri1 := "nbd://" + p.nodes["beta"].nbdAddr + "/r1"
	qemuIO(t, uri1, "write -P 0x4d 0 1M", "flush")
	if res := p.clusterStatus("alpha").ClusterLayer.Record.Resource("r1"); res == nil || res.Primary != "beta" || res.Preferred != "beta" {
		t.Fatalf("the record of r1: %+v", res)
	}
	if st := p.status("alpha"); !serving(st) {
		t.Fatalf("r0 after adding r1: %+v", st)
	}

	// Removal: the secondary first, then the primary once demoted.
	writeFile(t, p.path, original, 0o644)
	p.tandem("alpha", "down", "r1")
	p.tandem("alpha", "adjust")
	if _, stderr, err := p.tandemErr("beta", "demote", "r1"); err != nil {
		var lines []string
		for _, n := range []string{"alpha", "beta"} {
			for _, l := range strings.Split(p.nodes[n].proc.Stderr(), "\n") {
				if strings.Contains(l, "r1") && !strings.Contains(l, "memberlist") {
					lines = append(lines, l)
				}
			}
		}
		t.Fatalf("demote r1 on beta: %v %s\n%s", err, stderr, strings.Join(lines, "\n"))
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		_, stderr, err := p.tandemErr("beta", "down", "r1")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("down r1 on beta: %v %s", err, stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, n := range []string{"witness", "beta"} {
		if out := p.tandem(n, "adjust"); !strings.Contains(out, "Resources[r1] (removed)") {
			t.Fatalf("adjust removing r1 on %s: %s", n, out)
		}
	}
	for _, n := range []string{"alpha", "beta"} {
		if _, err := p.resourceStatus(n, "r1"); err == nil {
			t.Fatalf("%s still has r1", n)
		}
		for _, rs := range p.clusterStatus(n).ClusterLayer.Resources {
			if rs.Resource == "r1" {
				t.Fatalf("%s's cluster layer still runs r1: %+v", n, rs)
			}
		}
	}
	qemuIO(t, p.uri("alpha"), "write -P 0x4e 1M 1M", "flush")
	for n, pid := range pids {
		if got := p.nodes[n].proc.Pid(); got != pid {
			t.Errorf("%s restarted (pid %d, was %d)", n, got, pid)
		}
	}
	p.stopBoth()
	p.sameData()
	p.sameR1(bytes.Repeat([]byte{0x4d}, mib))
}
