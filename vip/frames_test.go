package vip

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
	"golang.org/x/net/bpf"
)

// The conflict rules on frames built by hand: what counts as another owner
// and what does not (our own frames, ordinary resolution by a neighbour).

var (
	ourMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
	theirMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
)

func arpBytes(t testing.TB, op arp.Operation, sha net.HardwareAddr, sip, tip string) []byte {
	t.Helper()
	p, err := arp.NewPacket(op, sha, netip.MustParseAddr(sip), zeroMAC, netip.MustParseAddr(tip))
	if err != nil {
		t.Fatal(err)
	}
	b, err := arpFrame(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestARPConflictRules(t *testing.T) {
	vip := "198.51.100.100"
	a := &arpConn{ifi: &net.Interface{Name: "eth0", HardwareAddr: ourMAC}, ip: netip.MustParseAddr(vip)}
	for _, c := range []struct {
		name     string
		frame    []byte
		conflict bool
	}{
		{"reply to our probe", arpBytes(t, arp.OperationReply, theirMAC, vip, "0.0.0.0"), true},
		{"their gratuitous ARP", arpBytes(t, arp.OperationRequest, theirMAC, vip, vip), true},
		{"their probe for it", arpBytes(t, arp.OperationRequest, theirMAC, "0.0.0.0", vip), true},
		{"our own probe", arpBytes(t, arp.OperationRequest, ourMAC, "0.0.0.0", vip), false},
		{"a neighbour resolving it", arpBytes(t, arp.OperationRequest, theirMAC, "198.51.100.3", vip), false},
		{"unrelated address", arpBytes(t, arp.OperationReply, theirMAC, "198.51.100.7", "0.0.0.0"), false},
		{"garbage", []byte{1, 2, 3}, false},
		{"no hardware address", func() []byte {
			b := arpBytes(t, arp.OperationReply, theirMAC, vip, "0.0.0.0")
			// hlen 0, then sender IP and target IP right after the header
			p := b[14:]
			p[4] = 0
			copy(p[8:12], netip.MustParseAddr(vip).AsSlice())
			copy(p[12:16], []byte{0, 0, 0, 0})
			return b
		}(), false},
	} {
		err := a.check(c.frame)
		var ce *ConflictError
		got := errors.As(err, &ce)
		if got != c.conflict {
			t.Errorf("%s: conflict %v (%v), want %v", c.name, got, err, c.conflict)
		}
		if got && (!sameMAC(ce.MAC, theirMAC) || !errors.Is(err, ErrAddressInUse)) {
			t.Errorf("%s: %v does not name %v or wrap ErrAddressInUse", c.name, err, theirMAC)
		}
	}
}

func ndBytes(t testing.TB, srcMAC net.HardwareAddr, m ndp.Message, src, dst string) []byte {
	t.Helper()
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	icmp, err := ndp.MarshalMessageChecksum(m, s, d)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ndFrame(srcMAC, s, d, icmp)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNDConflictRules(t *testing.T) {
	vip := netip.MustParseAddr("2001:db8::100")
	other := netip.MustParseAddr("2001:db8::7")
	n := &ndConn{ifi: &net.Interface{Name: "eth0", HardwareAddr: ourMAC}, ip: vip}
	tlla := []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: theirMAC}}
	for _, c := range []struct {
		name     string
		frame    []byte
		conflict bool
	}{
		{"answer to our detection", ndBytes(t, theirMAC, &ndp.NeighborAdvertisement{Override: true, TargetAddress: vip, Options: tlla}, "fe80::a", "ff02::1"), true},
		{"answer without the option names the frame's source", ndBytes(t, theirMAC, &ndp.NeighborAdvertisement{TargetAddress: vip}, "fe80::a", "ff02::1"), true},
		{"their detection for it", ndBytes(t, theirMAC, &ndp.NeighborSolicitation{TargetAddress: vip}, "::", "ff02::1:ff00:100"), true},
		{"our own detection", ndBytes(t, ourMAC, &ndp.NeighborSolicitation{TargetAddress: vip}, "::", "ff02::1:ff00:100"), false},
		{"a neighbour resolving it", ndBytes(t, theirMAC, &ndp.NeighborSolicitation{TargetAddress: vip}, "2001:db8::3", "ff02::1:ff00:100"), false},
		{"advertisement of another address", ndBytes(t, theirMAC, &ndp.NeighborAdvertisement{TargetAddress: other, Options: tlla}, "fe80::a", "ff02::1"), false},
	} {
		err := n.check(c.frame)
		var ce *ConflictError
		got := errors.As(err, &ce)
		if got != c.conflict {
			t.Errorf("%s: conflict %v (%v), want %v", c.name, got, err, c.conflict)
		}
		if got && !sameMAC(ce.MAC, theirMAC) {
			t.Errorf("%s: %v does not name %v", c.name, err, theirMAC)
		}
	}
}

// The socket filter passes neighbour solicitations and advertisements
// only, run in the bpf package's virtual machine.
func TestNDFilter(t *testing.T) {
	vm, err := bpf.NewVM(func() []bpf.Instruction {
		ins, ok := bpf.Disassemble(ndFilter)
		if !ok {
			t.Fatal("the filter does not disassemble")
		}
		return ins
	}())
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("2001:db8::100")
	echo := ndBytes(t, theirMAC, &ndp.NeighborSolicitation{TargetAddress: vip}, "2001:db8::3", "ff02::1:ff00:100")
	echo[14+40] = 128 // ICMPv6 echo request
	udp := ndBytes(t, theirMAC, &ndp.NeighborSolicitation{TargetAddress: vip}, "2001:db8::3", "ff02::1:ff00:100")
	udp[14+6] = 17
	for _, c := range []struct {
		name  string
		frame []byte
		pass  bool
	}{
		{"NS", ndBytes(t, theirMAC, &ndp.NeighborSolicitation{TargetAddress: vip}, "::", "ff02::1:ff00:100"), true},
		{"NA", ndBytes(t, theirMAC, &ndp.NeighborAdvertisement{TargetAddress: vip}, "fe80::a", "ff02::1"), true},
		{"echo", echo, false},
		{"UDP", udp, false},
	} {
		n, err := vm.Run(c.frame)
		if err != nil {
			t.Fatal(err)
		}
		if (n > 0) != c.pass {
			t.Errorf("%s: filter kept %d bytes, want pass=%v", c.name, n, c.pass)
		}
	}
}
