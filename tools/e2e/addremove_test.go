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

	const size = 8 * mib
	var r1 strings.Builder
	fmt.Fprintf(&r1, "  - name: r1\n    size: %d\n    replicas:\n", size)
	for _, n := range []string{"alpha", "beta"} {
		dev := filepath.Join(p.dir, n+"-r1.img")
		writeFile(t, dev, "", 0o644)
		if err := os.Truncate(dev, size); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&r1, "      %s:\n        device: %s\n        meta: %s\n        address: 127.0.0.1:%d\n        nbd-listen: %s\n",
			n, dev, filepath.Join(p.dir, n+"-r1.md"), testenv.FreePort(t), p.nodes[n].nbdAddr)
	}
	b, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	original := string(b)
	writeFile(t, p.path, original+r1.String(), 0o644)
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
	a, err := os.ReadFile(filepath.Join(p.dir, "alpha-r1.img"))
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(filepath.Join(p.dir, "beta-r1.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, bb) || !bytes.Equal(a[:2*mib], bytes.Repeat([]byte{0x5e}, 2*mib)) {
		t.Fatal("r1's replicas differ, or lack the client's writes")
	}
}
