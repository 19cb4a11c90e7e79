package e2e_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// writeCA makes a CA in dir/NAME-ca.pem and, for each node, a certificate
// naming it (DNS SAN) in dir/NAME-NODE.pem with its key in
// dir/NAME-NODE-key.pem.
func writeCA(t *testing.T, dir, name string, nodes ...string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	writePEM(t, filepath.Join(dir, name+"-ca.pem"), "CERTIFICATE", caDER, 0o644)
	for i, n := range nodes {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: n},
			DNSNames: []string{n}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, filepath.Join(dir, name+"-"+n+".pem"), "CERTIFICATE", der, 0o644)
		writePEM(t, filepath.Join(dir, name+"-"+n+"-key.pem"), "EC PRIVATE KEY", kder, 0o600)
	}
}

func writePEM(t *testing.T, path, kind string, der []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), mode); err != nil {
		t.Fatal(err)
	}
}

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
	writeCA(t, p.dir, "lab", "alpha", "beta")
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
		writeCA(t, p.dir, "lab", "alpha", "gamma")
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
		writeCA(t, p.dir, "lab", "alpha")
		writeCA(t, p.dir, "rogue", "beta")
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
