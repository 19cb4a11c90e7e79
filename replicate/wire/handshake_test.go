package wire

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
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var testSecret = []byte("an example shared secret, 32 b.")

func testConfig(local, peer string, dialer bool) Config {
	return Config{
		Cluster:   "prod",
		Resource:  "r0",
		LocalNode: local,
		PeerNode:  peer,
		Secret:    testSecret,
		Dialer:    dialer,
		Timeout:   30 * time.Second, // a hang fails the test instead of blocking it forever
	}
}

// connPair returns two connected ends: the dialer's and the acceptor's.
func connPair(t *testing.T, transport string) (net.Conn, net.Conn) {
	t.Helper()
	if transport == "pipe" {
		d, a := net.Pipe()
		t.Cleanup(func() { d.Close(); a.Close() })
		return d, a
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		d.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { d.Close(); r.c.Close() })
	return d, r.c
}

type result struct {
	c   *Conn
	err error
}

// pair runs both ends of a handshake.
func pair(t *testing.T, transport string, dcfg, acfg Config) (d, a result) {
	t.Helper()
	dc, ac := connPair(t, transport)
	ch := make(chan result, 1)
	go func() {
		c, err := Handshake(context.Background(), ac, acfg)
		ch <- result{c, err}
	}()
	c, err := Handshake(context.Background(), dc, dcfg)
	d = result{c, err}
	a = <-ch
	for _, r := range []result{d, a} {
		if r.c != nil {
			t.Cleanup(func() { r.c.Close() })
		}
	}
	return d, a
}

// selfSigned makes a certificate for "localhost" and 127.0.0.1.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tandem test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

// exchange sends frames both ways over an established link and checks
// they arrive intact.
func exchange(t *testing.T, d, a *Conn) {
	t.Helper()
	frames := []Frame{
		{Type: State, Seq: 1, Payload: []byte(`{"gen":1}`)},
		{Type: Write, Flags: FlagFUA, Seq: 2, Epoch: 3, Offset: 4096, Length: 64 << 10, Payload: compressible(64 << 10)},
		{Type: Write, Seq: 3, Epoch: 3, Offset: 1 << 20, Length: 4096, Payload: random(t, 4096)},
		{Type: Flush, Seq: 4, Epoch: 3},
	}
	for _, dir := range []struct {
		name     string
		from, to *Conn
	}{{"dialer to acceptor", d, a}, {"acceptor to dialer", a, d}} {
		errc := make(chan error, 1)
		go func() {
			for _, f := range frames {
				if err := dir.from.Write(f); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		for _, want := range frames {
			got, err := dir.to.Read()
			if err != nil {
				t.Fatalf("%s: Read: %v", dir.name, err)
			}
			sameFrame(t, got, want)
		}
		if err := <-errc; err != nil {
			t.Fatalf("%s: Write: %v", dir.name, err)
		}
	}
}

func TestHandshakeHappyPath(t *testing.T) {
	cert, pool := selfSigned(t)
	for _, transport := range []string{"pipe", "tcp"} {
		for _, compression := range []string{"off", "s2", "zstd"} {
			for _, useTLS := range []bool{false, true} {
				name := transport + "/" + compression
				if useTLS {
					name += "/tls"
				}
				t.Run(name, func(t *testing.T) {
					dcfg, acfg := testConfig("alpha", "beta", true), testConfig("beta", "alpha", false)
					dcfg.Compression, acfg.Compression = compression, compression
					if useTLS {
						dcfg.TLS = &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}}
						acfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
					}
					d, a := pair(t, transport, dcfg, acfg)
					if d.err != nil || a.err != nil {
						t.Fatalf("handshake: dialer %v, acceptor %v", d.err, a.err)
					}
					want, _ := ParseCodec(compression)
					if d.c.Codec() != want || a.c.Codec() != want {
						t.Fatalf("codec: dialer %s, acceptor %s, want %s", d.c.Codec(), a.c.Codec(), want)
					}
					if p := d.c.Peer(); p.Node != "beta" || p.Cluster != "prod" || p.Resource != "r0" || p.Version != Version {
						t.Fatalf("dialer sees peer %+v", p)
					}
					if p := a.c.Peer(); p.Node != "alpha" {
						t.Fatalf("acceptor sees peer %q", p.Node)
					}
					if _, isTLS := d.c.NetConn().(*tls.Conn); isTLS != useTLS {
						t.Fatalf("dialer connection is TLS: %v, want %v", isTLS, useTLS)
					}
					if useTLS {
						st := d.c.NetConn().(*tls.Conn).ConnectionState()
						if st.Version != tls.VersionTLS13 {
							t.Fatalf("TLS version %#x, want 1.3", st.Version)
						}
					}
					exchange(t, d.c, a.c)
				})
			}
		}
	}
}

// TestHandshakeRefusals: each mismatch is refused by the side that sees
// it, and the other side learns why; neither returns a link.
func TestHandshakeRefusals(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(d, a *Config)
		// what each side must report
		dialer, acceptor error
		reason           string
	}{
		{"wrong secret on the dialer", func(d, a *Config) { d.Secret = []byte("not the shared secret at all...") },
			ErrAuth, ErrAuth, "authentication failed"},
		{"wrong secret on the acceptor", func(d, a *Config) { a.Secret = []byte("not the shared secret at all...") },
			ErrAuth, ErrAuth, "authentication failed"},
		{"secret differs by one byte", func(d, a *Config) {
			d.Secret = bytes.Clone(testSecret)
			d.Secret[len(d.Secret)-1] ^= 1
		}, ErrAuth, ErrAuth, "authentication failed"},
		{"wrong cluster", func(d, a *Config) { d.Cluster = "staging" }, ErrCluster, ErrCluster, `cluster "staging"`},
		{"wrong resource", func(d, a *Config) { d.Resource = "r1" }, ErrResource, ErrResource, `resource "r1"`},
		{"wrong node name", func(d, a *Config) { d.LocalNode = "gamma" }, ErrPeer, ErrPeer, `node "gamma"`},
		{"acceptor expects another peer", func(d, a *Config) { a.PeerNode = "gamma" }, ErrPeer, ErrPeer, `node "alpha"`},
		{"dialer expects another peer", func(d, a *Config) { d.PeerNode = "gamma" }, ErrPeer, ErrRefused, `node "beta"`},
		{"newer version on the dialer", func(d, a *Config) { d.ProtocolVersion = Version + 1 }, ErrVersion, ErrVersion,
			fmt.Sprintf("protocol version %d, this node speaks %d", Version+1, Version)},
		{"newer version on the acceptor", func(d, a *Config) { a.ProtocolVersion = Version + 1 }, ErrVersion, ErrVersion,
			fmt.Sprintf("protocol version %d, this node speaks %d", Version, Version+1)},
	} {
		for _, transport := range []string{"pipe", "tcp"} {
			t.Run(c.name+"/"+transport, func(t *testing.T) {
				dcfg, acfg := testConfig("alpha", "beta", true), testConfig("beta", "alpha", false)
				c.edit(&dcfg, &acfg)
				d, a := pair(t, transport, dcfg, acfg)
				if d.c != nil || a.c != nil {
					t.Fatalf("a link was established: dialer %v, acceptor %v", d.c != nil, a.c != nil)
				}
				if !errors.Is(d.err, c.dialer) || !errors.Is(a.err, c.acceptor) {
					t.Fatalf("dialer: %v (want %v)\nacceptor: %v (want %v)", d.err, c.dialer, a.err, c.acceptor)
				}
				t.Logf("dialer: %v\nacceptor: %v", d.err, a.err)
				// Whoever did not refuse was refused, with the reason.
				refusedSide := d.err
				if !errors.Is(refusedSide, ErrRefused) {
					refusedSide = a.err
				}
				if !errors.Is(refusedSide, ErrRefused) || !strings.Contains(refusedSide.Error(), c.reason) {
					t.Fatalf("no Refuse with %q reached the other side:\ndialer: %v\nacceptor: %v", c.reason, d.err, a.err)
				}
			})
		}
	}
}

// rawPeer speaks frames without the handshake's rules, as a broken or
// hostile peer would.
type rawPeer struct {
	conn net.Conn
	r    *Reader
	w    *Writer
}

func newRawPeer(c net.Conn) *rawPeer {
	return &rawPeer{conn: c, r: NewReader(c, Options{}), w: NewWriter(c, Options{})}
}

func (p *rawPeer) send(t *testing.T, f Frame) {
	t.Helper()
	if err := p.w.Write(f); err != nil {
		t.Fatalf("raw peer: sending %s: %v", f.Type, err)
	}
}

func (p *rawPeer) expect(t *testing.T, typ MsgType) Frame {
	t.Helper()
	f, err := p.r.Read()
	if err != nil {
		t.Fatalf("raw peer: waiting for %s: %v", typ, err)
	}
	if f.Type != typ {
		t.Fatalf("raw peer: got %s (%q), want %s", f.Type, f.Payload, typ)
	}
	return f
}

// expectClosed: the other side sends nothing more and closes.
func (p *rawPeer) expectClosed(t *testing.T) {
	t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	f, err := p.r.Read()
	if err == nil {
		t.Fatalf("raw peer: got %s after the refusal, want the connection closed", f.Type)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) && !isReset(err) {
		t.Fatalf("raw peer: %v, want the connection closed", err)
	}
}

func isReset(err error) bool { return strings.Contains(err.Error(), "connection reset") }

// rawHello is the Hello a peer named node would send.
func rawHello(node string, version uint32) (HelloInfo, []byte) {
	h := HelloInfo{Version: version, Cluster: "prod", Resource: "r0", Node: node, Codecs: supportedCodecs}
	rand.Read(h.Challenge[:])
	return h, h.marshal()
}

// acceptor runs Handshake as the acceptor on one end and returns the other
// end to the test.
func acceptor(t *testing.T, transport string, cfg Config) (*rawPeer, <-chan result) {
	t.Helper()
	d, a := connPair(t, transport)
	ch := make(chan result, 1)
	go func() {
		c, err := Handshake(context.Background(), a, cfg)
		if c != nil {
			t.Cleanup(func() { c.Close() })
		}
		ch <- result{c, err}
	}()
	return newRawPeer(d), ch
}

// TestNoDataAfterFailedAuth: a peer that fails authentication and goes on
// sending as if it had not (Ready and a Write pipelined behind its Auth)
// gets no link: the acceptor returns no Conn, answers Refuse and closes.
// The control case with the right MAC shows the Write would have been
// delivered.
func TestNoDataAfterFailedAuth(t *testing.T) {
	for _, goodMAC := range []bool{true, false} {
		name := "wrong MAC"
		if goodMAC {
			name = "right MAC (control)"
		}
		t.Run(name, func(t *testing.T) {
			peer, done := acceptor(t, "tcp", testConfig("beta", "alpha", false))
			me, hello := rawHello("alpha", Version)
			peer.send(t, Frame{Type: Hello, Payload: hello})
			theirHello := peer.expect(t, Hello).Payload
			them, err := parseHello(theirHello, Version)
			if err != nil {
				t.Fatal(err)
			}
			secret := testSecret
			if !goodMAC {
				secret = []byte("a guess at the shared secret....")
			}
			hs := &handshake{cfg: &Config{Secret: secret}}
			mac := hs.mac("alpha", "beta", them.Challenge, me.Challenge, hello, theirHello)
			data := Frame{Type: Write, Seq: 1, Epoch: 99, Offset: 0, Length: 5, Payload: []byte("EVIL!")}
			peer.w.Queue(Frame{Type: Auth, Payload: mac})
			peer.w.Queue(Frame{Type: Ready})
			peer.send(t, data)

			r := <-done
			if goodMAC {
				if r.err != nil {
					t.Fatalf("handshake with the right MAC: %v", r.err)
				}
				peer.expect(t, Auth)
				got, err := r.c.Read()
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				sameFrame(t, got, data)
				return
			}
			if r.c != nil || !errors.Is(r.err, ErrAuth) {
				t.Fatalf("handshake with a wrong MAC: conn %v, err %v; want no conn and ErrAuth", r.c != nil, r.err)
			}
			f := peer.expect(t, Refuse)
			if !bytes.Contains(f.Payload, []byte("authentication failed")) {
				t.Fatalf("Refuse says %q", f.Payload)
			}
			peer.expectClosed(t)
		})
	}
}

// TestHandshakeOutOfOrder: frames other than the expected one are refused,
// in particular data before authentication.
func TestHandshakeOutOfOrder(t *testing.T) {
	for _, c := range []struct {
		name  string
		first bool // send the frame instead of Hello
		f     Frame
	}{
		{"Write instead of Hello", true, Frame{Type: Write, Payload: []byte("data")}},
		{"Auth instead of Hello", true, Frame{Type: Auth, Payload: make([]byte, 32)}},
		{"Write instead of Auth", false, Frame{Type: Write, Payload: []byte("data")}},
		{"Ready instead of Auth", false, Frame{Type: Ready}},
	} {
		t.Run(c.name, func(t *testing.T) {
			peer, done := acceptor(t, "tcp", testConfig("beta", "alpha", false))
			if !c.first {
				_, hello := rawHello("alpha", Version)
				peer.send(t, Frame{Type: Hello, Payload: hello})
				peer.expect(t, Hello)
			}
			peer.send(t, c.f)
			r := <-done
			if r.c != nil || !errors.Is(r.err, ErrProtocol) {
				t.Fatalf("conn %v, err %v; want ErrProtocol", r.c != nil, r.err)
			}
			peer.expect(t, Refuse)
			peer.expectClosed(t)
		})
	}
}

func TestHandshakeOldVersion(t *testing.T) {
	peer, done := acceptor(t, "pipe", testConfig("beta", "alpha", false))
	// An older build: only the version is meaningful to the acceptor, the
	// rest of its Hello may be laid out differently.
	hello := []byte{0, 0, 0, byte(Version - 1), 0xde, 0xad}
	go peer.w.Write(Frame{Type: Hello, Payload: hello})
	f := peer.expect(t, Refuse)
	if f.Payload[0] != refuseVersion || !strings.Contains(string(f.Payload), fmt.Sprintf("protocol version %d, this node speaks %d", Version-1, Version)) {
		t.Fatalf("Refuse %q", f.Payload)
	}
	r := <-done
	if r.c != nil || !errors.Is(r.err, ErrVersion) {
		t.Fatalf("conn %v, err %v; want ErrVersion", r.c != nil, r.err)
	}
	peer.expectClosed(t)
}

// TestHandshakeGarbage: bytes that are not our protocol get nothing back
// (not even a Hello) and fail fast, long before the timeout.
func TestHandshakeGarbage(t *testing.T) {
	valid := rawFrame(header{typ: Hello}, []byte("x"))
	corruptHeader := bytes.Clone(valid)
	corruptHeader[20] ^= 0xff
	junk := make([]byte, 4096)
	rand.Read(junk)
	junk[0] = 'X' // not 'T': random bytes could start with the magic
	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"random bytes", junk, ErrBadMagic},
		{"HTTP request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ErrBadMagic},
		{"four bytes and silence", []byte("SSH-"), ErrBadMagic},
		{"TLS ClientHello on a plaintext port", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc}, ErrBadMagic},
		{"magic then a corrupt header", corruptHeader, ErrHeaderChecksum},
		{"a frame cut short", valid[:30], io.ErrUnexpectedEOF},
		{"Hello announcing a huge payload", rawFrame(header{typ: Hello}, make([]byte, handshakeMaxPayload+1)), ErrTooLarge},
		{"compressed Hello", rawFrame(header{typ: Hello, flags: FlagCompressedS2}, []byte("x")), ErrBadFlags},
	} {
		for _, role := range []string{"acceptor", "dialer"} {
			t.Run(c.name+"/"+role, func(t *testing.T) {
				d, a := connPair(t, "tcp")
				cfg := testConfig("beta", "alpha", false)
				mine, theirs := a, d
				if role == "dialer" {
					cfg = testConfig("alpha", "beta", true)
					mine, theirs = d, a
				}
				ch := make(chan result, 1)
				go func() {
					c, err := Handshake(context.Background(), mine, cfg)
					ch <- result{c, err}
				}()
				peer := newRawPeer(theirs)
				if role == "dialer" {
					peer.expect(t, Hello)
				}
				theirs.Write(c.b)
				if c.want == io.ErrUnexpectedEOF {
					theirs.(*net.TCPConn).CloseWrite()
				}
				r := <-ch
				if r.c != nil || !errors.Is(r.err, c.want) {
					t.Fatalf("conn %v, err %v; want %v", r.c != nil, r.err, c.want)
				}
				if errors.Is(r.err, os.ErrDeadlineExceeded) {
					t.Fatalf("waited for the timeout: %v", r.err)
				}
				// Nothing came back: the stream ends right away.
				peer.expectClosed(t)
			})
		}
	}
}

// goroutines waits (bounded) for the goroutine count to fall back to n.
func goroutinesBackTo(t *testing.T, n int) {
	t.Helper()
	var now int
	for range 500 {
		if now = runtime.NumGoroutine(); now <= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	t.Fatalf("%d goroutines, want %d:\n%s", now, n, buf[:runtime.Stack(buf, true)])
}

// handshakeOrHang fails the test when a handshake with a 100 ms timeout is
// still running after a minute: the timeout was ignored. (A generous bound
// that only a hang reaches, not a timing assertion.)
func handshakeOrHang(t *testing.T, conn net.Conn, cfg Config) (*Conn, error) {
	t.Helper()
	ch := make(chan result, 1)
	go func() {
		c, err := Handshake(context.Background(), conn, cfg)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-time.After(time.Minute):
		conn.Close()
		t.Fatalf("handshake still running a minute after its %v timeout", cfg.Timeout)
		return nil, nil
	}
}

// TestHandshakeSilentPeer: a peer that never speaks costs the timeout and
// nothing more; nothing is left running.
func TestHandshakeSilentPeer(t *testing.T) {
	for _, role := range []string{"acceptor", "dialer"} {
		for _, transport := range []string{"pipe", "tcp"} {
			t.Run(role+"/"+transport, func(t *testing.T) {
				d, a := connPair(t, transport)
				base := runtime.NumGoroutine()
				cfg := testConfig("beta", "alpha", false)
				mine, theirs := a, d
				if role == "dialer" {
					cfg = testConfig("alpha", "beta", true)
					mine, theirs = d, a
				}
				if role == "dialer" && transport == "pipe" {
					// Take the dialer's Hello, then stay silent.
					go io.Copy(io.Discard, theirs)
				}
				cfg.Timeout = 100 * time.Millisecond
				c, err := handshakeOrHang(t, mine, cfg)
				if c != nil || !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("conn %v, err %v; want a deadline error", c != nil, err)
				}
				theirs.Close()
				goroutinesBackTo(t, base)
			})
		}
	}
	t.Run("TLS acceptor", func(t *testing.T) {
		cert, _ := selfSigned(t)
		_, a := connPair(t, "tcp")
		base := runtime.NumGoroutine()
		cfg := testConfig("beta", "alpha", false)
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		cfg.Timeout = 100 * time.Millisecond
		if c, err := handshakeOrHang(t, a, cfg); c != nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("conn %v, err %v; want a deadline error", c != nil, err)
		}
		goroutinesBackTo(t, base)
	})
}

func TestHandshakeContextCancel(t *testing.T) {
	_, a := connPair(t, "pipe")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Handshake(ctx, a, testConfig("beta", "alpha", false)) // 30 s timeout
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("after cancel: %v, want context.Canceled", err)
	}
	// The context's own deadline counts too when it is sooner.
	_, a2 := connPair(t, "pipe")
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := Handshake(ctx2, a2, testConfig("beta", "alpha", false)); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("context deadline: %v", err)
	}
}

func TestHandshakeTLSRequires13(t *testing.T) {
	cert, _ := selfSigned(t)
	d, a := connPair(t, "tcp")
	cfg := testConfig("beta", "alpha", false)
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	ch := make(chan error, 1)
	go func() { _, err := Handshake(context.Background(), a, cfg); ch <- err }()
	old := tls.Client(d, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12})
	if err := old.Handshake(); err == nil {
		t.Fatal("a TLS 1.2 client completed the TLS handshake")
	}
	if err := <-ch; err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("acceptor: %v, want a TLS handshake error", err)
	}
}

// TestHandshakeTLSRelay: an attacker in the middle terminates TLS on both
// sides (the nodes do not verify certificates here) and relays the
// handshake byte for byte. The MACs are bound to each TLS session, so the
// relayed proofs do not verify and neither side gets a link.
func TestHandshakeTLSRelay(t *testing.T) {
	nodeCert, _ := selfSigned(t)
	evilCert, _ := selfSigned(t)
	dialerSide, proxyFront := connPair(t, "tcp")
	proxyBack, acceptorSide := connPair(t, "tcp")
	go func() {
		front := tls.Server(proxyFront, &tls.Config{Certificates: []tls.Certificate{evilCert}})
		back := tls.Client(proxyBack, &tls.Config{InsecureSkipVerify: true})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); io.Copy(back, front); back.Close() }()
		go func() { defer wg.Done(); io.Copy(front, back); front.Close() }()
		wg.Wait()
	}()
	dcfg, acfg := testConfig("alpha", "beta", true), testConfig("beta", "alpha", false)
	dcfg.TLS = &tls.Config{InsecureSkipVerify: true}
	acfg.TLS = &tls.Config{Certificates: []tls.Certificate{nodeCert}}
	ch := make(chan result, 1)
	go func() { c, err := Handshake(context.Background(), acceptorSide, acfg); ch <- result{c, err} }()
	dc, derr := Handshake(context.Background(), dialerSide, dcfg)
	a := <-ch
	if dc != nil || a.c != nil {
		t.Fatalf("a relayed handshake succeeded: dialer %v, acceptor %v", derr, a.err)
	}
	if !errors.Is(a.err, ErrAuth) || !errors.Is(derr, ErrAuth) {
		t.Fatalf("dialer: %v\nacceptor: %v\nwant ErrAuth on both", derr, a.err)
	}
}

func TestHandshakeConfig(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*Config)
	}{
		{"short secret", func(c *Config) { c.Secret = []byte("short") }},
		{"no secret", func(c *Config) { c.Secret = nil }},
		{"same node names", func(c *Config) { c.PeerNode = c.LocalNode }},
		{"no cluster", func(c *Config) { c.Cluster = "" }},
		{"long resource name", func(c *Config) { c.Resource = strings.Repeat("r", 256) }},
		{"unknown compression", func(c *Config) { c.Compression = "lz4" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, a := connPair(t, "pipe")
			cfg := testConfig("alpha", "beta", true)
			c.edit(&cfg)
			if _, err := Handshake(context.Background(), d, cfg); !errors.Is(err, ErrConfig) {
				t.Fatalf("%v, want ErrConfig", err)
			}
			// The connection is closed, nothing was sent.
			if n, err := a.Read(make([]byte, 1)); err == nil {
				t.Fatalf("read %d bytes from a refused configuration", n)
			}
		})
	}
}

// TestCompressionMismatch: nodes whose configurations disagree still link,
// uncompressed, and say so in the log.
func TestCompressionMismatch(t *testing.T) {
	var logs safeBuffer
	dcfg, acfg := testConfig("alpha", "beta", true), testConfig("beta", "alpha", false)
	dcfg.Compression, acfg.Compression = "s2", "zstd"
	acfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	d, a := pair(t, "pipe", dcfg, acfg)
	if d.err != nil || a.err != nil {
		t.Fatalf("dialer %v, acceptor %v", d.err, a.err)
	}
	if d.c.Codec() != CodecOff || a.c.Codec() != CodecOff {
		t.Fatalf("codecs %s and %s, want off", d.c.Codec(), a.c.Codec())
	}
	if !strings.Contains(logs.String(), "compression differs") {
		t.Fatalf("no warning logged: %q", logs.String())
	}
	exchange(t, d.c, a.c)
}

// TestNegotiate: a peer that cannot decode the configured codec gets an
// uncompressed link.
func TestNegotiate(t *testing.T) {
	for _, c := range []struct {
		mine, theirs Codec
		codecs       uint32
		want         Codec
	}{
		{CodecS2, CodecS2, supportedCodecs, CodecS2},
		{CodecZstd, CodecZstd, supportedCodecs, CodecZstd},
		{CodecS2, CodecS2, 1 << CodecZstd, CodecOff},
		{CodecS2, CodecZstd, supportedCodecs, CodecOff},
		{CodecOff, CodecOff, supportedCodecs, CodecOff},
		{Codec(9), Codec(9), 0xffffffff, CodecOff},
	} {
		h := &handshake{cfg: &Config{}, me: HelloInfo{Compression: c.mine}, peer: HelloInfo{Compression: c.theirs, Codecs: c.codecs}}
		if got := h.negotiate(); got != c.want {
			t.Errorf("mine %s, theirs %s, peer decodes %#b: %s, want %s", c.mine, c.theirs, c.codecs, got, c.want)
		}
	}
}

// TestMAC: every input changes the proof, the direction matters, and the
// length prefixes keep shifted names apart.
func TestMAC(t *testing.T) {
	h := &handshake{cfg: &Config{Secret: testSecret}}
	var c1, c2 [32]byte
	c1[0], c2[0] = 1, 2
	base := h.mac("alpha", "beta", c1, c2, []byte("h1"), []byte("h2"))
	variants := map[string][]byte{
		"reflected":       h.mac("beta", "alpha", c2, c1, []byte("h2"), []byte("h1")),
		"names shifted":   h.mac("alph", "abeta", c1, c2, []byte("h1"), []byte("h2")),
		"challenges swap": h.mac("alpha", "beta", c2, c1, []byte("h1"), []byte("h2")),
		"hello changed":   h.mac("alpha", "beta", c1, c2, []byte("h1x"), []byte("h2")),
		"hellos shifted":  h.mac("alpha", "beta", c1, c2, []byte("h"), []byte("1h2")),
	}
	hb := &handshake{cfg: &Config{Secret: testSecret}, binding: []byte("tls")}
	variants["TLS binding"] = hb.mac("alpha", "beta", c1, c2, []byte("h1"), []byte("h2"))
	hs := &handshake{cfg: &Config{Secret: []byte("an example shared secret, 32 c.")}}
	variants["other secret"] = hs.mac("alpha", "beta", c1, c2, []byte("h1"), []byte("h2"))
	for name, m := range variants {
		if bytes.Equal(m, base) {
			t.Errorf("%s: same MAC", name)
		}
	}
	if again := h.mac("alpha", "beta", c1, c2, []byte("h1"), []byte("h2")); !bytes.Equal(again, base) || len(base) != 32 {
		t.Fatal("MAC is not deterministic or not 32 bytes")
	}
}

func TestHelloRoundTrip(t *testing.T) {
	h, _ := rawHello("alpha", Version)
	h.Compression = CodecZstd
	b := h.marshal()
	got, err := parseHello(b, Version)
	if err != nil || got != h {
		t.Fatalf("parse(marshal(h)) = %+v, %v; want %+v", got, err, h)
	}
	for n := range len(b) {
		if _, err := parseHello(b[:n], Version); err == nil {
			t.Errorf("Hello cut to %d bytes parsed", n)
		}
	}
	if _, err := parseHello(append(b, 0), Version); err == nil {
		t.Error("Hello with a trailing byte parsed")
	}
}

func TestDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan result, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			ch <- result{nil, err}
			return
		}
		c, err := Handshake(context.Background(), nc, testConfig("beta", "alpha", false))
		ch <- result{c, err}
	}()
	cfg := testConfig("alpha", "beta", false) // Dial sets Dialer itself
	d, err := Dial(context.Background(), ln.Addr().String(), cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer d.Close()
	a := <-ch
	if a.err != nil {
		t.Fatalf("acceptor: %v", a.err)
	}
	defer a.c.Close()
	exchange(t, d, a.c)
}

type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Mid-rotation of the cluster secret: one side proves the new secret and
// accepts the old, the other proves the old and accepts the new; they
// connect. Accepting is per side: a side that does not list the other's
// secret refuses it.
func TestHandshakeRotatingSecret(t *testing.T) {
	next := []byte("the next cluster secret, rolled in")
	for _, transport := range []string{"pipe", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			dcfg, acfg := testConfig("alpha", "beta", true), testConfig("beta", "alpha", false)
			dcfg.Secret, dcfg.AcceptSecrets = next, [][]byte{testSecret}
			acfg.AcceptSecrets = [][]byte{next}
			d, a := pair(t, transport, dcfg, acfg)
			if d.err != nil || a.err != nil {
				t.Fatalf("handshake mid-rotation: dialer %v, acceptor %v", d.err, a.err)
			}
			exchange(t, d.c, a.c)

			dcfg, acfg = testConfig("alpha", "beta", true), testConfig("beta", "alpha", false)
			dcfg.Secret, dcfg.AcceptSecrets = next, [][]byte{testSecret}
			d, a = pair(t, transport, dcfg, acfg) // the acceptor does not accept next yet
			if !errors.Is(a.err, ErrAuth) || d.err == nil {
				t.Fatalf("a secret the acceptor does not accept: dialer %v, acceptor %v", d.err, a.err)
			}
		})
	}
}

// TestHandshakeTLSMismatchIsErrTLS: certificates from another CA, and a
// peer without TLS, are a refusal (ErrTLS) that the volume logs and shows,
// not a network error retried in silence.
func TestHandshakeTLSMismatchIsErrTLS(t *testing.T) {
	certA, poolA := selfSigned(t)
	certB, poolB := selfSigned(t)
	tlsFor := func(c tls.Certificate, trust *x509.CertPool) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{c}, RootCAs: trust, ClientCAs: trust,
			ClientAuth: tls.RequireAndVerifyClientCert, ServerName: "localhost"}
	}
	for _, c := range []struct {
		name          string
		dialer, accep *tls.Config
		dialerToo     bool // the dialer sees ErrTLS as well
	}{
		{"another CA", tlsFor(certA, poolA), tlsFor(certB, poolB), true},
		{"the acceptor does not trust the dialer", tlsFor(certA, poolB), tlsFor(certB, poolB), true},
		// The dialer only sees the connection close.
		{"a peer without TLS", tlsFor(certA, poolA), nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, a := connPair(t, "tcp")
			dcfg, acfg := testConfig("alpha", "beta", true), testConfig("beta", "alpha", false)
			dcfg.TLS, acfg.TLS = c.dialer, c.accep
			ch := make(chan error, 1)
			go func() {
				_, err := Handshake(context.Background(), a, acfg)
				a.Close()
				ch <- err
			}()
			_, derr := Handshake(context.Background(), d, dcfg)
			d.Close()
			aerr := <-ch
			if !errors.Is(aerr, ErrTLS) {
				t.Errorf("acceptor: %v, want ErrTLS", aerr)
			}
			if derr == nil || c.dialerToo && !errors.Is(derr, ErrTLS) {
				t.Errorf("dialer: %v, want ErrTLS", derr)
			}
		})
	}
}
