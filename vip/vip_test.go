package vip

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
)

const servicePort = 8080

func ipv4Segment(t *testing.T) *segment {
	return newSegment(t, map[string][]string{
		"a": {"198.51.100.1/24"},
		"b": {"198.51.100.2/24"},
		"c": {"198.51.100.3/24"},
	})
}

func ipv6Segment(t *testing.T) *segment {
	return newSegment(t, map[string][]string{
		"a": {"2001:db8::1/64"},
		"b": {"2001:db8::2/64"},
		"c": {"2001:db8::3/64"},
	})
}

func testConfig(addr string) Config {
	return Config{Address: netip.MustParsePrefix(addr), Interface: "eth0", Announce: DefaultAnnounce(), Probe: DefaultProbe()}
}

// The failover the cluster performs: C talks to the VIP on A; A lets go,
// B claims; C's neighbour cache names B at once and C's next connection
// reaches B, without C having to time out its old entry.
func testMove(t *testing.T, s *segment, addr string) {
	a, b, c := s.hosts["a"], s.hosts["b"], s.hosts["c"]
	cfg := testConfig(addr)
	ip := cfg.Address.Addr()
	ctx := testCtx(t)
	va, vb := a.vipOn(t, cfg), b.vipOn(t, cfg)
	a.serve(t, "tcp", servicePort)
	b.serve(t, "tcp", servicePort)

	if err := va.Claim(ctx); err != nil {
		t.Fatalf("a claims: %v", err)
	}
	if !a.holds(t, cfg.Address) {
		t.Fatal("a claimed but does not hold the address")
	}
	target := netip.AddrPortFrom(ip, servicePort)
	if got := c.dial(t, target); got != "a" {
		t.Fatalf("c reached %q through the VIP, want a", got)
	}
	if got := c.neighbour(t, ip); !sameMAC(got, a.mac) {
		t.Fatalf("c's neighbour entry for the VIP is %v, want a's %v", got, a.mac)
	}

	if err := va.Release(ctx); err != nil {
		t.Fatalf("a releases: %v", err)
	}
	if a.holds(t, cfg.Address) {
		t.Fatal("a released but still holds the address")
	}
	// The cache still points at A: only the announcement can fix that.
	if got := c.neighbour(t, ip); !sameMAC(got, a.mac) {
		t.Fatalf("before b's claim, c's entry is %v, want still a's %v", got, a.mac)
	}
	start := time.Now()
	if err := vb.Claim(ctx); err != nil {
		t.Fatalf("b claims: %v", err)
	}
	claim := time.Since(start)
	took := c.waitNeighbour(t, ip, b.mac)
	t.Logf("b's claim took %v (%d probes of %v); c's neighbour entry named b %v after it returned",
		claim, cfg.Probe.Count, cfg.Probe.Interval, took)
	if got := c.dial(t, target); got != "b" {
		t.Fatalf("after the move c reached %q, want b", got)
	}

	// Release is idempotent: not held is not an error, twice neither.
	for range 2 {
		if err := va.Release(ctx); err != nil {
			t.Fatalf("releasing an address not held: %v", err)
		}
	}
	if !b.holds(t, cfg.Address) {
		t.Fatal("a's second release took b's address")
	}
	if err := vb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vb.Release(ctx); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if held, err := vb.Held(); err != nil || held {
		t.Fatalf("after release Held = %v, %v", held, err)
	}
}

func TestMoveIPv4(t *testing.T) {
	t.Parallel()
	testMove(t, ipv4Segment(t), "198.51.100.100/24")
}

func TestMoveIPv6(t *testing.T) {
	t.Parallel()
	testMove(t, ipv6Segment(t), "2001:db8::100/64")
}

// While A holds the address, B's claim is refused, names A's MAC, and
// changes nothing on B.
func testConflict(t *testing.T, s *segment, addr string) {
	a, b := s.hosts["a"], s.hosts["b"]
	cfg := testConfig(addr)
	ctx := testCtx(t)
	va, vb := a.vipOn(t, cfg), b.vipOn(t, cfg)
	if err := va.Claim(ctx); err != nil {
		t.Fatalf("a claims: %v", err)
	}
	err := vb.Claim(ctx)
	if !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("b's claim while a holds the address: %v, want ErrAddressInUse", err)
	}
	var ce *ConflictError
	if !errors.As(err, &ce) || !sameMAC(ce.MAC, a.mac) {
		t.Fatalf("conflict error %v names %v, want a's MAC %v", err, ce, a.mac)
	}
	t.Logf("refused: %v", err)
	if b.holds(t, cfg.Address) {
		t.Fatal("b holds the address after a refused claim")
	}
	if !a.holds(t, cfg.Address) {
		t.Fatal("a lost the address")
	}
	// Once A lets go, B's claim goes through.
	if err := va.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vb.Claim(ctx); err != nil {
		t.Fatalf("b claims after a's release: %v", err)
	}
}

func TestConflictIPv4(t *testing.T) {
	t.Parallel()
	testConflict(t, ipv4Segment(t), "198.51.100.100/24")
}

// An IPv6 address someone added on B without nodad while A holds it fails
// the kernel's duplicate detection; B's claim must not take that for "held":
// it removes the address, probes, and refuses naming A's MAC.
func TestConflictIPv6DADFailed(t *testing.T) {
	t.Parallel()
	s := ipv6Segment(t)
	a, b := s.hosts["a"], s.hosts["b"]
	cfg := testConfig("2001:db8::100/64")
	ctx := testCtx(t)
	if err := a.vipOn(t, cfg).Claim(ctx); err != nil {
		t.Fatal(err)
	}
	inNS(t, b.ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/eth0/accept_dad", []byte("1"), 0o644)
	})
	plain := nlAddr(cfg.Address)
	plain.Flags = 0 // with duplicate address detection, as `ip addr add` does
	if err := b.nl.AddrAdd(b.eth, plain); err != nil {
		t.Fatal(err)
	}
	// The kernel's detection takes about a second (one solicitation, then
	// RetransTimer); bounded wait for its verdict.
	deadline := time.Now().Add(waitBound)
	for {
		have, err := findAddr(b.nl, b.eth, cfg.Address.Addr())
		if err != nil || have == nil {
			t.Fatalf("B's address: %v %v", have, err)
		}
		if have.Flags&syscall.IFA_F_DADFAILED != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B's kernel did not fail duplicate detection in %v (flags %#x)", waitBound, have.Flags)
		}
		time.Sleep(20 * time.Millisecond)
	}
	err := b.vipOn(t, cfg).Claim(ctx)
	var ce *ConflictError
	if !errors.As(err, &ce) || !sameMAC(ce.MAC, a.mac) {
		t.Fatalf("B's claim over a dadfailed address: %v, want a conflict naming %v", err, a.mac)
	}
	if b.holds(t, cfg.Address) {
		t.Fatal("the dadfailed address is still on B")
	}
}

func TestConflictIPv6(t *testing.T) {
	t.Parallel()
	testConflict(t, ipv6Segment(t), "2001:db8::100/64")
}

// The announcement is Count packets at once and RepeatCount more after
// RepeatAfter; Release cancels a pending repeat. Counted on the wire, in C.
func TestAnnounceCounts(t *testing.T) {
	t.Parallel()
	s := ipv4Segment(t)
	b, c := s.hosts["b"], s.hosts["c"]
	cfg := testConfig("198.51.100.100/24")
	cfg.Announce = Announce{Count: 3, RepeatCount: 2, RepeatAfter: time.Hour}
	ip := cfg.Address.Addr()

	tick := make(chan time.Time)
	var asked []time.Duration
	after := func(d time.Duration) <-chan time.Time { asked = append(asked, d); return tick }

	// C's raw ARP socket, opened before the claim so it misses nothing.
	var pc *packet.Conn
	inNS(t, c.ns, func() error {
		var err error
		pc, err = packet.Listen(netInterface(c.eth), packet.Raw, int(ethernet.EtherTypeARP), nil)
		return err
	})
	t.Cleanup(func() { pc.Close() })
	buf := make([]byte, 1500)
	// countGARPs counts B's gratuitous ARPs for the VIP until wait passes
	// with none (bounded: a segment that never falls silent fails).
	countGARPs := func(wait time.Duration) int {
		n := 0
		for end := time.Now().Add(waitBound); time.Now().Before(end); {
			_ = pc.SetReadDeadline(time.Now().Add(wait))
			k, _, err := pc.ReadFrom(buf)
			if err != nil {
				return n
			}
			var f ethernet.Frame
			var p arp.Packet
			if f.UnmarshalBinary(buf[:k]) != nil || p.UnmarshalBinary(f.Payload) != nil {
				continue
			}
			if p.Operation == arp.OperationRequest && p.SenderIP == ip && p.TargetIP == ip && sameMAC(p.SenderHardwareAddr, b.mac) {
				n++
			}
		}
		t.Fatalf("ARP kept arriving for %v", waitBound)
		return n
	}

	vb := b.vipOn(t, cfg, WithAfter(after))
	ctx := testCtx(t)
	if err := vb.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countGARPs(300 * time.Millisecond); n != 3 {
		t.Fatalf("C saw %d gratuitous ARPs after the claim, want 3", n)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := vb.WaitAnnounced(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitAnnounced before the repeat was due: %v, want DeadlineExceeded", err)
	}
	select {
	case tick <- time.Now():
	case <-time.After(waitBound):
		t.Fatal("the repeat never waited for its delay")
	}
	if len(asked) != 1 || asked[0] != time.Hour {
		t.Fatalf("repeat delays asked: %v, want [1h]", asked)
	}
	if err := vb.WaitAnnounced(ctx); err != nil {
		t.Fatalf("waiting for the repeat: %v", err)
	}
	if n := countGARPs(300 * time.Millisecond); n != 2 {
		t.Fatalf("C saw %d gratuitous ARPs in the repeat, want 2", n)
	}

	// A claim again (a restarted daemon) re-announces without probing,
	// and Release stops its pending repeat: nothing more is sent.
	if err := vb.Claim(ctx); err != nil {
		t.Fatalf("claiming an address already held: %v", err)
	}
	if n := countGARPs(300 * time.Millisecond); n != 3 {
		t.Fatalf("C saw %d gratuitous ARPs after the second claim, want 3", n)
	}
	if err := vb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case tick <- time.Now():
		t.Fatal("a repeat was still waiting after Release")
	case <-time.After(100 * time.Millisecond):
	}
	if n := countGARPs(200 * time.Millisecond); n != 0 {
		t.Fatalf("C saw %d gratuitous ARPs after the release, want 0", n)
	}
}

// A missing or down interface is refused with its sentinel; Release of a
// VIP on a missing interface is not an error.
func TestInterfaceProblems(t *testing.T) {
	t.Parallel()
	s := ipv4Segment(t)
	b := s.hosts["b"]
	ctx := testCtx(t)

	cfg := testConfig("198.51.100.100/24")
	cfg.Interface = "eth9"
	v := b.vipOn(t, cfg)
	if err := v.Claim(ctx); !errors.Is(err, ErrNoInterface) {
		t.Fatalf("claim on a missing interface: %v, want ErrNoInterface", err)
	}
	if err := v.Release(ctx); err != nil {
		t.Fatalf("release on a missing interface: %v", err)
	}
	st := Status([]Config{cfg}, WithNetns(b.ns))
	if !errors.Is(st[0].Err, ErrNoInterface) || st[0].Held {
		t.Fatalf("status of a VIP on a missing interface: %+v", st[0])
	}

	// A claim whose context ends during the probe changes nothing.
	cfg = testConfig("198.51.100.100/24")
	v = b.vipOn(t, cfg)
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if err := v.Claim(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("claim with a context shorter than the probe: %v, want DeadlineExceeded", err)
	}
	if b.holds(t, cfg.Address) {
		t.Fatal("a claim cut short during the probe added the address")
	}

	// No carrier: the bridge side of B's veth goes down.
	port, err := s.bridgeNL.LinkByName("p-b")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.bridgeNL.LinkSetDown(port); err != nil {
		t.Fatal(err)
	}
	if err := v.Claim(ctx); !errors.Is(err, ErrInterfaceDown) || !strings.Contains(err.Error(), "no carrier") {
		t.Fatalf("claim on a link without carrier: %v, want ErrInterfaceDown (no carrier)", err)
	}
	if err := b.nl.LinkSetDown(b.eth); err != nil {
		t.Fatal(err)
	}
	if err := v.Claim(ctx); !errors.Is(err, ErrInterfaceDown) || !strings.Contains(err.Error(), "administratively down") {
		t.Fatalf("claim on a down interface: %v, want ErrInterfaceDown", err)
	}
	if b.holds(t, cfg.Address) {
		t.Fatal("a refused claim added the address")
	}
}

// Status reports which of several VIPs (IPv4 and IPv6, one per resource)
// this node holds, and an address found on another interface.
func TestStatus(t *testing.T) {
	t.Parallel()
	s := newSegment(t, map[string][]string{"a": {"198.51.100.1/24", "2001:db8::1/64"}})
	a := s.hosts["a"]
	ctx := testCtx(t)
	v4, v6, other := testConfig("198.51.100.100/24"), testConfig("2001:db8::100/64"), testConfig("198.51.100.101/24")
	for _, c := range []Config{v4, v6} {
		if err := a.vipOn(t, c).Claim(ctx); err != nil {
			t.Fatal(err)
		}
	}
	lo, err := a.nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.nl.AddrAdd(lo, nlAddr(netip.MustParsePrefix("198.51.100.101/32"))); err != nil {
		t.Fatal(err)
	}
	st := Status([]Config{v4, v6, other}, WithNetns(a.ns))
	for i, want := range []bool{true, true, false} {
		if st[i].Err != nil || st[i].Held != want {
			t.Errorf("%s: held %v err %v, want held %v", st[i].Config.Address, st[i].Held, st[i].Err, want)
		}
	}
	if st[0].Prefix != v4.Address {
		t.Errorf("prefix found %v, want %v", st[0].Prefix, v4.Address)
	}
	if len(st[2].Elsewhere) != 1 || st[2].Elsewhere[0] != "lo" {
		t.Errorf("address on lo: Elsewhere = %v, want [lo]", st[2].Elsewhere)
	}
}

// Two nodes claiming one address at the same moment never both end up
// holding it: each sees the other's probe (RFC 5227's simultaneous probe
// rule, and its DAD counterpart) or, if one was quicker, its announcement.
func testSimultaneous(t *testing.T, s *segment, addr string) {
	a, b := s.hosts["a"], s.hosts["b"]
	cfg := testConfig(addr)
	ctx := testCtx(t)
	va, vb := a.vipOn(t, cfg), b.vipOn(t, cfg)
	for round := range 3 {
		var errs [2]error
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, v := range []*VIP{va, vb} {
			wg.Go(func() { <-start; errs[i] = v.Claim(ctx) })
		}
		close(start)
		wg.Wait()
		ea, eb := errs[0], errs[1]
		for _, err := range []error{ea, eb} {
			if err != nil && !errors.Is(err, ErrAddressInUse) {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		ha, hb := a.holds(t, cfg.Address), b.holds(t, cfg.Address)
		t.Logf("round %d: claims %v / %v; a holds %v, b holds %v", round, ea, eb, ha, hb)
		switch {
		case ha && hb:
			t.Fatalf("round %d: both hosts hold %s", round, addr)
		case ea == nil && eb == nil:
			t.Fatalf("round %d: both claims succeeded", round)
		case ea == nil && !ha, eb == nil && !hb:
			t.Fatalf("round %d: a claim succeeded but its host does not hold the address", round)
		}
		for _, v := range []*VIP{va, vb} {
			if err := v.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestSimultaneousIPv4(t *testing.T) {
	t.Parallel()
	testSimultaneous(t, ipv4Segment(t), "198.51.100.100/24")
}

func TestSimultaneousIPv6(t *testing.T) {
	t.Parallel()
	testSimultaneous(t, ipv6Segment(t), "2001:db8::100/64")
}
