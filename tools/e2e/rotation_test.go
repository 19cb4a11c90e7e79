package e2e_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// The middle of a secret rotation between real daemons with the cluster
// layer: beta already proves the new secret and accepts the old, alpha and
// the witness still prove the old and accept the new. Gossip, the
// authority log and the replication link all work across them: alpha is
// promoted (which needs the log's quorum), beta connects and syncs, and
// writes replicate. A beta that proves the new secret to nodes that do not
// accept it yet is refused.
func TestSecretRotation(t *testing.T) {
	t.Parallel()
	testenv.RequireTool(t, "qemu-io")
	p := clusterPair(t)
	text, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	oldFile := p.cfg.SecretFile
	newFile := filepath.Join(p.dir, "secret.new")
	writeFile(t, newFile, "the-next-secret-0123456789abcdef\n", 0o600)
	mid := func(name, own, accept string) string {
		s := strings.Replace(string(text), "secret-file: "+oldFile+"\n",
			"secret-file: "+own+"\naccept-secret-files: ["+accept+"]\n", 1)
		if s == string(text) {
			t.Fatalf("no secret-file line in\n%s", text)
		}
		path := filepath.Join(p.dir, name+".yaml")
		writeFile(t, path, s, 0o644)
		return path
	}
	old := mid("old-accepts-new", oldFile, newFile)
	p.nodes["alpha"].cfgPath, p.nodes["witness"].cfgPath = old, old
	p.nodes["beta"].cfgPath = mid("new-accepts-old", newFile, oldFile)
	for _, n := range []string{"witness", "alpha", "beta"} {
		p.start(n)
	}
	p.waitStatus("alpha", "alpha promoted by the cluster layer mid-rotation", serving)
	p.waitStatus("beta", "beta in sync mid-rotation", inSync)
	qemuIO(t, p.uri("alpha"), "write -P 0x7e 0 1M", "flush")
	p.waitStatus("beta", "beta in sync after the write", inSync)
	ns := p.clusterStatus("beta")
	if !ns.ClusterLayer.Quorum || ns.ClusterLayer.Members["alpha"] != "Alive" || ns.ClusterLayer.Members["witness"] != "Alive" {
		t.Fatalf("beta's cluster view mid-rotation: %+v", ns.ClusterLayer.Status)
	}
	if !strings.Contains(p.nodes["beta"].proc.Stderr(), "secret rotation in progress") {
		t.Errorf("beta does not log that it accepts another secret")
	}

	// Round 2 on beta without round 1 on the others: refused.
	p.stop("beta")
	strict := strings.Replace(string(text), "secret-file: "+oldFile+"\n", "secret-file: "+newFile+"\n", 1)
	strictPath := filepath.Join(p.dir, "new-only.yaml")
	writeFile(t, strictPath, strict, 0o644)
	p.nodes["alpha"].cfgPath, p.nodes["witness"].cfgPath = p.path, p.path
	p.stop("alpha")
	p.stop("witness")
	for _, n := range []string{"witness", "alpha"} {
		p.start(n)
	}
	p.waitStatus("alpha", "alpha primary again", func(st daemon.ResourceStatus) bool { return st.Role == replicate.Primary })
	p.nodes["beta"].cfgPath = strictPath
	p.start("beta")
	p.nodes["beta"].proc.WaitFor(t, "beta refused for its secret", func() bool {
		return strings.Contains(p.nodes["beta"].proc.Stderr(), "authentication failed")
	})
	if st := p.status("beta"); st.Conn == replicate.Connected {
		t.Fatalf("beta connected with a secret alpha does not accept: %+v", st)
	}
	p.stop("beta")
	p.stop("alpha")
	p.stop("witness")
}
