package authority

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// testCA issues certificates for 127.0.0.1.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tandem test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// config is a node's TLS configuration: its certificate, this CA for both
// directions.
func (ca *testCA) config(t *testing.T, name string) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs:      ca.pool, ClientCAs: ca.pool, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS13,
	}
}

func TestTLS(t *testing.T) {
	ca := newTestCA(t)
	c := newTestCluster(t)
	for i := range c.cfgs {
		c.cfgs[i].TLS = ca.config(t, c.names[i])
	}
	c.startAll()
	l := c.leader()
	if _, err := c.propose(c.follower(), define("r0")); err != nil {
		t.Fatalf("forwarded proposal over TLS: %v", err)
	}
	c.sameEverywhere(l)
	addr := c.cfgs[l].Voters[l].Addr

	// The secret alone no longer gets in, nor does a certificate from
	// another CA with the secret.
	plain := &streamLayer{secrets: [][]byte{secret}}
	if conn, err := plain.dial(addr, time.Second, purposeForward); err == nil {
		conn.Close()
		t.Fatal("a plain connection with the right secret was accepted")
	}
	foreign := newTestCA(t).config(t, "intruder")
	foreign.RootCAs = ca.pool // it trusts the cluster; the cluster must not trust it
	other := &streamLayer{secrets: [][]byte{secret}, tls: foreign}
	if conn, err := other.dial(addr, time.Second, purposeForward); err == nil {
		conn.Close()
		t.Fatal("a certificate from another CA was accepted")
	}
	// Right certificate, wrong secret.
	wrong := &streamLayer{secrets: [][]byte{[]byte("wrong")}, tls: ca.config(t, "w2")}
	if _, err := wrong.dial(addr, time.Second, purposeForward); err == nil {
		t.Fatal("a wrong secret was accepted over TLS")
	}
	if _, err := c.propose(l, define("r1")); err != nil {
		t.Fatal(err)
	}
}
