package replicate

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// A protocol change reaches the write path through a new session: with
// the secondary's disk held, a protocol C write waits for it and a
// protocol A write does not.
func TestSetLinkChangesProtocolLive(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, protocol: "C"})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	workload(t, p.a.v, 4, 40, 1)
	before := p.a.v.Status().Session
	if s := p.a.v.Status(); s.Protocol != "C" || s.SessionProtocol != "C" || p.b.v.Status().SessionProtocol != "C" {
		t.Fatalf("protocol before the change: alpha %q/%q, beta's session %q", s.Protocol, s.SessionProtocol, p.b.v.Status().SessionProtocol)
	}

	// Hold beta's data writes: under C a write cannot complete.
	hold := make(chan struct{})
	p.b.data.SetFault(func(op string, off, n int64) error {
		if op == "write" {
			<-hold
		}
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- p.a.v.WriteAt(ctx, block('c', 0, 1), 0, false) }()
	select {
	case err := <-done:
		t.Fatalf("a protocol C write completed while the peer's disk was held: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	p.b.data.SetFault(nil)

	changed, err := p.a.v.SetLink(ctx, LinkSettings{Protocol: "A"})
	if err != nil || !changed {
		t.Fatalf("SetLink: changed %v, %v", changed, err)
	}
	if again, err := p.a.v.SetLink(ctx, LinkSettings{Protocol: "A", Compression: "off"}); err != nil || again {
		t.Fatalf("SetLink with the same settings: changed %v, %v", again, err)
	}
	p.waitConnected(10 * time.Second)
	sa, sb := p.a.v.Status(), p.b.v.Status()
	if sa.Session <= before || sa.Protocol != "A" || sa.SessionProtocol != "A" || sb.SessionProtocol != "A" || sb.Protocol != "C" {
		t.Fatalf("after SetLink: alpha session %d (was %d) protocol %q/%q, beta %q/%q", sa.Session, before, sa.Protocol, sa.SessionProtocol, sb.Protocol, sb.SessionProtocol)
	}

	hold = make(chan struct{})
	p.b.data.SetFault(func(op string, off, n int64) error {
		if op == "write" {
			<-hold
		}
		return nil
	})
	go func() { done <- p.a.v.WriteAt(ctx, block('a', 4096, 1), 4096, false) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		close(hold)
		t.Fatal("a protocol A write waited for the peer's disk")
	}
	close(hold)
	p.b.data.SetFault(nil)
	workload(t, p.a.v, 4, 40, 2)
	if err := p.a.v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p.waitConnected(10 * time.Second)
	p.identical()
	if d := p.a.degraded.Load(); d > 1 {
		t.Errorf("OnDegraded ran %d times for one reconnect", d)
	}
}

// Compression and TLS change with the next session; each side offers
// what it has, so the codec moves once both changed.
func TestSetLinkCompressionAndTLS(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	for _, n := range []*testNode{p.a, p.b} {
		if _, err := n.v.SetLink(ctx, LinkSettings{Protocol: "C", Compression: "zstd"}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "a zstd session", func() bool {
		s := p.a.v.Status()
		return s.Conn == Connected && s.SessionCompression == "zstd" && s.Compression == "zstd"
	})
	workload(t, p.a.v, 4, 40, 3)

	cert, pool := selfSignedCert(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	// One side with TLS, the other without: refused until both have it;
	// the primary goes on alone meanwhile.
	if _, err := p.a.v.SetLink(ctx, LinkSettings{Protocol: "C", Compression: "zstd", TLS: cfg}); err != nil {
		t.Fatal(err)
	}
	workload(t, p.a.v, 4, 40, 4)
	if s := p.a.v.Status(); s.Conn == Connected {
		t.Fatalf("connected with TLS on one side only: %+v", s)
	}
	// The status says why, after why the session ended.
	for _, n := range []*testNode{p.a, p.b} {
		waitFor(t, 10*time.Second, n.name+"'s status naming the TLS refusal", func() bool {
			r := n.v.Status().Reason
			return !strings.HasPrefix(r, "; ") && strings.Contains(r, "; since then the link is refused: ") && strings.Contains(r, "TLS refused")
		})
	}
	if _, err := p.b.v.SetLink(ctx, LinkSettings{Protocol: "C", Compression: "zstd", TLS: cfg}); err != nil {
		t.Fatal(err)
	}
	p.waitConnected(10 * time.Second)
	if _, ok := p.a.v.sessionConn().(*tls.Conn); !ok {
		t.Fatalf("the session after the change is not TLS: %T", p.a.v.sessionConn())
	}
	if err := p.a.v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p.identical()
}

func TestSetLinkRefusals(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	ctx := context.Background()
	before := p.a.v.Status().Session
	for _, bad := range []LinkSettings{{Protocol: "D"}, {Compression: "lz4"}} {
		if changed, err := p.a.v.SetLink(ctx, bad); err == nil || changed {
			t.Errorf("SetLink(%+v): changed %v, err %v", bad, changed, err)
		}
	}
	if s := p.a.v.Status(); s.Protocol != "C" || s.Compression != "off" || s.Session != before || s.Conn != Connected {
		t.Fatalf("invalid settings changed something: %+v", s)
	}

	// A diskless primary cannot restart its link: it could not come back.
	p2 := disklessPair(t, "C")
	_, err := p2.a.v.SetLink(ctx, LinkSettings{Protocol: "A"})
	if !errors.Is(err, ErrLinkInUse) || !strings.Contains(err.Error(), "diskless") {
		t.Fatalf("SetLink on a diskless primary: %v", err)
	}
	if s := p2.a.v.Status(); s.Protocol != "C" || s.Conn != Connected {
		t.Fatalf("the refused change did something: %+v", s)
	}
	_ = p2.a.v.Close(ctx) // the dead disk's metadata does not close clean
}

// Settings changed again and again while writers keep going: no write
// fails, none waits for an acknowledgement its session's peer will not
// send, and what the gaps left out of sync is resynced, so the replicas
// end identical.
func TestSetLinkUnderLoad(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	ld := startLoader(p.a.v, 6, p.a.v.Size(), 17)
	steps := []LinkSettings{{Protocol: "A"}, {Protocol: "B", Compression: "s2"}, {Protocol: "C", Compression: "zstd"}, {Protocol: "A", Compression: "zstd"}, {Protocol: "C"}}
	for i, s := range steps {
		before := ld.writes.Load()
		// beta changes too, half of the time first.
		first, second := p.a, p.b
		if i%2 == 1 {
			first, second = p.b, p.a
		}
		for _, n := range []*testNode{first, second} {
			if _, err := n.v.SetLink(ctx, s); err != nil {
				t.Fatalf("step %d, %s: %v", i, n.name, err)
			}
		}
		waitFor(t, 10*time.Second, "a new session and writes in it", func() bool {
			st := p.a.v.Status()
			return st.Conn != Connecting && st.SessionProtocol == s.Protocol && ld.writes.Load() > before+50
		})
	}
	ld.halt()
	if n := ld.errs.Load(); n > 0 {
		t.Fatalf("%d writes failed, the last: %v", n, ld.lastErr.Load())
	}
	if err := p.a.v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p.waitConnected(20 * time.Second)
	p.identical()
	t.Logf("%d writes over %d setting changes", ld.writes.Load(), len(steps))
}

// The link moves to new addresses while the volume runs: alpha's new
// listen address is bound before anything changes and its old one is
// closed; with alpha dialing nowhere, only beta dialing the new address
// can bring the session back, and it does; the writes of the gap are
// resynced. A listen address in use is refused and changes nothing.
func TestSetLinkAddresses(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	before := p.a.v.Status().Session
	busy := listen(t, "127.0.0.1:0")
	defer busy.Close()
	if changed, err := p.a.v.SetLink(ctx, LinkSettings{Listen: busy.Addr().String()}); err == nil || changed || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("SetLink to a listen address in use: changed %v, %v", changed, err)
	}
	if s := p.a.v.Status(); s.Session != before || s.Conn != Connected {
		t.Fatalf("the refused address changed something: %+v", s)
	}
	free := listen(t, "127.0.0.1:0")
	newAddr := free.Addr().String()
	free.Close()
	nowhere := listen(t, "127.0.0.1:0")
	nowhereAddr := nowhere.Addr().String()
	nowhere.Close()
	if _, err := p.b.v.SetLink(ctx, LinkSettings{PeerAddress: newAddr}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.a.v.SetLink(ctx, LinkSettings{Listen: newAddr, PeerAddress: nowhereAddr}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := p.a.v.WriteAt(ctx, block(byte(i), int64(i)*4096, 1), int64(i)*4096, false); err != nil {
			t.Fatalf("write while the link moves: %v", err)
		}
	}
	waitFor(t, 10*time.Second, "a session over the new address, in sync", func() bool {
		s := p.a.v.Status()
		return s.Conn == Connected && s.Session > before && s.OutOfSync == 0
	})
	if c, err := net.DialTimeout("tcp", p.a.addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("alpha's old listen address %s still accepts", p.a.addr)
	}
	if s := p.a.v.Status(); s.Protocol != "C" {
		t.Fatalf("the other settings moved: %+v", s)
	}
	p.identical()
}
