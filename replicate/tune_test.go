package replicate

import (
	"testing"
	"time"
)

// The link's timing changes in the running session: with the ping
// timeout raised, a silenced link stays up well past the old timeout;
// lowered again, the session ends. Settings that make no sense are
// refused and change nothing.
func TestTuneLinkTiming(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, proxy: true}) // ping timeout 1 s
	p.waitConnected(10 * time.Second)
	if err := p.a.v.Tune(Tunables{Timing: LinkTiming{PingInterval: time.Second, PingTimeout: time.Second}}); err == nil {
		t.Fatal("a ping timeout no longer than the interval accepted")
	}
	if got := p.a.v.tunables().Timing; got.PingTimeout != time.Second || got.PingInterval != 50*time.Millisecond {
		t.Fatalf("a refused timing changed the volume: %+v", got)
	}
	for _, n := range []*testNode{p.a, p.b} {
		if err := n.v.Tune(Tunables{Timing: LinkTiming{PingTimeout: time.Minute}}); err != nil {
			t.Fatal(err)
		}
		if got := n.v.tunables().Timing; got.PingTimeout != time.Minute || got.PingInterval != 50*time.Millisecond {
			t.Fatalf("%s: timing after Tune %+v (zero fields keep theirs)", n.name, got)
		}
	}
	session := p.a.v.Status().Session
	for _, r := range p.relays {
		r.freeze()
	}
	time.Sleep(2500 * time.Millisecond) // two and a half old timeouts
	if s := p.a.v.Status(); s.Conn != Connected || s.Session != session {
		t.Fatalf("the silenced session ended within the raised timeout: %s, session %d (was %d)", s.Conn, s.Session, session)
	}
	if err := p.a.v.Tune(Tunables{Timing: LinkTiming{PingTimeout: 700 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the session ended at the lowered timeout", func() bool { return p.a.v.Status().Conn != Connected })
}
