package replicate

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/replicate/md"
	"github.com/tandem-ha/tandem/replicate/wire"
)

func TestLinkRefusesStrangers(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	if err := p.a.v.WriteAt(ctx, block('a', 0, 1), 0, true); err != nil {
		t.Fatal(err)
	}
	before := p.b.data.Bytes()
	good := wire.Config{Cluster: "testcluster", Resource: "r0", LocalNode: "alpha", PeerNode: "beta", Secret: []byte(testSecret), Timeout: 2 * time.Second}

	wrong := good
	wrong.Secret = []byte("a-wrong-secret-of-enough-length")
	if _, err := wire.Dial(ctx, p.b.addr, wrong); !errors.Is(err, wire.ErrAuth) {
		t.Fatalf("wrong secret: %v, want an authentication refusal", err)
	}
	other := good
	other.Cluster = "othercluster"
	if _, err := wire.Dial(ctx, p.b.addr, other); !errors.Is(err, wire.ErrCluster) {
		t.Fatalf("other cluster: %v, want a cluster refusal", err)
	}
	nc, err := net.Dial("tcp", p.b.addr)
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, 4096)
	_, _ = rand.Read(garbage)
	_, _ = nc.Write(garbage)
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := nc.Read(make([]byte, 1)); err == nil {
		t.Fatalf("garbage got %d bytes of answer", n)
	}
	nc.Close()

	// The real session is untouched and nothing was written.
	if s := p.b.v.Status(); s.Conn != Connected || s.PeerRole != Primary {
		t.Fatalf("after strangers: %+v", s)
	}
	if !bytes.Equal(p.b.data.Bytes(), before) {
		t.Fatal("a refused peer changed data")
	}
	if err := p.a.v.WriteAt(ctx, block('a', 4096, 1), 4096, true); err != nil {
		t.Fatal(err)
	}
	p.identical()
}

// fakePrimary is a hand-driven peer: it dials beta as alpha and speaks
// the session protocol frame by frame.
func fakeSession(t *testing.T, addr string, st peerState) (*wire.Conn, peerState, []byte) {
	t.Helper()
	cfg := wire.Config{Cluster: "testcluster", Resource: "r0", LocalNode: "alpha", PeerNode: "beta", Secret: []byte(testSecret), Timeout: 5 * time.Second}
	var c *wire.Conn
	var err error
	for range 100 { // beta may still be busy with a previous session
		if c, err = wire.Dial(context.Background(), addr, cfg); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(wire.Frame{Type: wire.State, Offset: stateHello, Epoch: st.Epoch, Payload: st.marshal()}); err != nil {
		t.Fatal(err)
	}
	_ = c.NetConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := c.Read()
	if err != nil || f.Type != wire.State || f.Offset != stateHello {
		t.Fatalf("expected beta's state: %+v, %v", f, err)
	}
	theirs, err := parseState(f.Payload)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := decideSession(st, theirs, "disconnect")
	if err := c.Write(wire.Frame{Type: wire.State, Offset: stateDecision, Epoch: st.Epoch, Payload: []byte{byte(d)}}); err != nil {
		t.Fatal(err)
	}
	f, err = c.Read()
	if err != nil || f.Type != wire.State || f.Offset != stateDecision {
		t.Fatalf("expected beta's decision: %+v, %v", f, err)
	}
	_ = c.NetConn().SetReadDeadline(time.Time{})
	return c, theirs, f.Payload
}

func TestStaleEpochRefused(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	// Beta learns epoch 5 (promotions elsewhere), then alpha goes away
	// and a deposed primary at an older epoch shows up in its place.
	ctx := context.Background()
	p.a.kill(false, 0)
	if err := p.b.v.adoptEpoch(5); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "beta Connecting", func() bool { return p.b.v.Status().Conn == Connecting })
	sb := p.b.v.meta().Superblock()
	st := peerState{Role: Primary, Disk: UpToDate, Flags: md.Consistent, Epoch: 3, Size: p.b.v.Size(), Gran: p.b.v.gran, Gen: genFromMD(sb.Gen), Proto: 'C'}

	c, _, dec := fakeSession(t, p.b.addr, st)
	if len(dec) == 0 || dec[0] != 255 || !strings.Contains(string(dec), "older epoch") {
		t.Fatalf("beta's answer to a primary at an older epoch: %q, want a refusal naming the epoch", dec)
	}
	c.Close()
	waitFor(t, 5*time.Second, "the refusal in beta's status", func() bool {
		s := p.b.v.Status()
		return strings.Contains(s.Reason, "older epoch") && s.Conn == Connecting
	})

	// At a current epoch the session is accepted, but a frame carrying
	// an older epoch drops it and changes nothing.
	st.Epoch = 6
	c, _, dec = fakeSession(t, p.b.addr, st)
	if !bytes.Equal(dec, []byte{byte(InSync)}) {
		t.Fatalf("beta's decision: %q, want InSync", dec)
	}
	waitFor(t, 5*time.Second, "beta connected to the fake primary", func() bool { return p.b.v.Status().Conn == Connected })
	before := p.b.data.Bytes()
	if err := c.Write(wire.Frame{Type: wire.Write, Seq: 1, Epoch: 4, Offset: 0, Length: 4096, Payload: block('x', 0, 1)}); err != nil {
		t.Fatal(err)
	}
	_ = c.NetConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := c.Read()
		if err != nil {
			break // dropped
		}
		if f.Type == wire.Written {
			t.Fatal("a write from an older epoch was acknowledged")
		}
		if f.Type == wire.Disconnect {
			break
		}
	}
	c.Close()
	waitFor(t, 5*time.Second, "beta drops the stale sender", func() bool {
		return strings.Contains(p.b.v.Status().Reason, "older epoch")
	})
	if !bytes.Equal(p.b.data.Bytes(), before) {
		t.Fatal("a stale write changed data")
	}
	if e := p.b.v.Status().Epoch; e != 6 {
		t.Fatalf("epoch %d, want 6 (learnt from the current primary)", e)
	}
	_ = ctx
}

func TestSizeMismatchRefused(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	p.a.kill(false, 0)
	waitFor(t, 5*time.Second, "beta Connecting", func() bool { return p.b.v.Status().Conn == Connecting })
	sb := p.b.v.meta().Superblock()
	st := peerState{Role: Secondary, Disk: UpToDate, Flags: md.Consistent, Size: p.b.v.Size() * 2, Gran: p.b.v.gran, Gen: genFromMD(sb.Gen), Proto: 'C'}
	c, _, dec := fakeSession(t, p.b.addr, st)
	defer c.Close()
	if len(dec) == 0 || dec[0] != 255 || !strings.Contains(string(dec), "bytes") {
		t.Fatalf("beta's answer to a peer of another size: %q", dec)
	}
	waitFor(t, 5*time.Second, "beta StandAlone", func() bool { return p.b.v.Status().Conn == StandAlone })
}

// selfSignedCert makes a CA-signed-by-itself certificate for localhost.
func selfSignedCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tandem test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// An orderly Disconnect can arrive in the middle of a setup (the peer's
// admin disconnected, or its link settings changed): in the bitmap
// exchange it ends the attempt and the node reconnects; it is not a
// protocol violation that leaves it StandAlone.
func TestDisconnectDuringBitmapExchange(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	p.a.kill(false, 0)
	waitFor(t, 5*time.Second, "beta Connecting", func() bool { return p.b.v.Status().Conn == Connecting })
	sb := p.b.v.meta().Superblock()
	// A primary that wrote on alone: a bitmap resync from it.
	gen := genFromMD(sb.Gen)
	gen.Bitmap, gen.Current = gen.Current, gen.Current+1
	st := peerState{Role: Primary, Disk: UpToDate, Flags: md.Consistent, Epoch: sb.Epoch + 1, Size: p.b.v.Size(), Gran: p.b.v.gran, Gen: gen, Proto: 'C'}
	c, _, dec := fakeSession(t, p.b.addr, st)
	if !bytes.Equal(dec, []byte{byte(TargetBitmap)}) {
		t.Fatalf("beta's decision: %q, want TargetBitmap", dec)
	}
	if err := c.Write(wire.Frame{Type: wire.Disconnect}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, 5*time.Second, "beta back to Connecting after the setup ended", func() bool {
		s := p.b.v.Status()
		return s.Conn == Connecting && strings.Contains(s.Reason, "closed the session")
	})
	if s := p.b.v.Status(); s.Conn == StandAlone {
		t.Fatalf("beta StandAlone after an orderly Disconnect: %s", s.Reason)
	}
}
