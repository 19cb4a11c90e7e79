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

// useTLS gives each data node a configuration with a tls block naming its
// own certificate (on one host the nodes cannot share the paths).
func (p *pair) useTLS(t *testing.T, certs map[string]string) {
	t.Helper()
	b, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alpha", "beta"} {
		prefix := filepath.Join(p.dir, certs[n])
		block := "    tls:\n      cert: " + prefix + "-" + n + ".pem\n      key: " + prefix + "-" + n + "-key.pem\n      ca: " + prefix + "-ca.pem\n    replicas:\n"
		cfg := strings.Replace(string(b), "    replicas:\n", block, 1)
		path := filepath.Join(p.dir, n+"-tls.yaml")
		writeFile(t, path, cfg, 0o644)
		p.nodes[n].cfgPath = path
	}
}

// newTLSPair is a pair over TLS, both nodes' certificates of one CA
// (dir/lab-*.pem), in sync, with 1 MiB of 0x61 written through alpha at
// 1 MiB and replicated.
func newTLSPair(t *testing.T) *pair {
	t.Helper()
	p := newPair(t, pairOptions{size: 8 * mib})
	testenv.WriteCA(t, p.dir, "lab", "alpha", "beta")
	p.useTLS(t, map[string]string{"alpha": "lab", "beta": "lab"})
	p.initialSync()
	qemuIO(t, p.uri("alpha"), "write -P 0x61 1M 1M", "flush")
	p.waitStatus("alpha", "the write to reach beta", inSync)
	return p
}

func TestTLSLink(t *testing.T) {
	t.Parallel()
	testenv.RequireTool(t, "qemu-io")

	t.Run("same CA", func(t *testing.T) {
		t.Parallel()
		p := newTLSPair(t)
		p.stopBoth()
		p.sameData()
	})

	t.Run("certificate of another name", func(t *testing.T) {
		t.Parallel()
		p := newPair(t, pairOptions{size: 8 * mib})
		// beta presents a certificate of the right CA that names gamma.
		testenv.WriteCA(t, p.dir, "lab", "alpha", "gamma")
		for _, suffix := range []string{".pem", "-key.pem"} {
			if err := os.Rename(filepath.Join(p.dir, "lab-gamma"+suffix), filepath.Join(p.dir, "lab-beta"+suffix)); err != nil {
				t.Fatal(err)
			}
		}
		p.useTLS(t, map[string]string{"alpha": "lab", "beta": "lab"})
		p.createMD()
		p.start("alpha")
		p.start("beta")
		st := p.waitStatus("alpha", "the refusal of beta's certificate", func(st daemon.ResourceStatus) bool {
			return strings.Contains(st.Reason, "node beta") || strings.Contains(st.Reason, "not beta")
		})
		if st.Conn == replicate.Connected {
			t.Errorf("alpha accepted a certificate naming gamma for beta: %+v", st)
		}
		t.Logf("alpha: %s", st.Reason)
		p.stopBoth()
	})

	t.Run("foreign CA", func(t *testing.T) {
		t.Parallel()
		p := newPair(t, pairOptions{size: 8 * mib})
		testenv.WriteCA(t, p.dir, "lab", "alpha")
		testenv.WriteCA(t, p.dir, "rogue", "beta")
		p.useTLS(t, map[string]string{"alpha": "lab", "beta": "rogue"})
		p.createMD()
		p.start("alpha")
		p.start("beta")
		for _, n := range []string{"alpha", "beta"} {
			st := p.waitStatus(n, "the TLS refusal", func(st daemon.ResourceStatus) bool { return strings.Contains(st.Reason, "TLS") })
			if st.Conn == replicate.Connected {
				t.Errorf("%s connected to a peer of another CA: %+v", n, st)
			}
			t.Logf("%s: %s", n, st.Reason)
		}
		p.stopBoth()
	})
}
