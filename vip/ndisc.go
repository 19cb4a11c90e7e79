package vip

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
)

// ndConn speaks neighbour discovery for one IPv6 address on one interface,
// at the Ethernet level: ndp encodes and decodes the messages, an AF_PACKET
// socket carries them. ndp.Conn (an ICMPv6 socket) cannot be used for the
// duplicate check, because RFC 4862 requires its solicitation to come from
// the unspecified address and the kernel replaces :: with a source of its
// choosing on an ICMPv6 socket; at the Ethernet level we also learn the MAC
// of whoever answers.
type ndConn struct {
	c   *packet.Conn
	ifi *net.Interface
	ip  netip.Addr
}

// ndFilter keeps only ICMPv6 neighbour solicitations and advertisements
// (next header 58 at byte 20 of the frame, ICMPv6 type at byte 54), so a
// busy IPv6 link does not flood the socket with storage traffic.
var ndFilter = func() []bpf.RawInstruction {
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 14 + 6, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 58, SkipTrue: 4},
		bpf.LoadAbsolute{Off: 14 + 40, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 135, SkipTrue: 1},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 136, SkipTrue: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		panic("vip: assembling the neighbour discovery filter: " + err.Error())
	}
	return prog
}()

func openND(ns namespace, ifi *net.Interface, ip netip.Addr) (*ndConn, error) {
	var c *packet.Conn
	err := ns.run(func() error {
		var err error
		c, err = packet.Listen(ifi, packet.Raw, int(ethernet.EtherTypeIPv6), &packet.Config{Filter: ndFilter})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("vip: opening a neighbour discovery socket on %s: %w", ifi.Name, err)
	}
	return &ndConn{c: c, ifi: ifi, ip: ip}, nil
}

func (n *ndConn) Close() error { return n.c.Close() }

var allNodes = netip.MustParseAddr("ff02::1")

// multicastMAC is the Ethernet group of an IPv6 multicast address (RFC 2464).
func multicastMAC(ip netip.Addr) net.HardwareAddr {
	b := ip.As16()
	return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// send wraps m in an IPv6 header (hop limit 255, which receivers insist on)
// and an Ethernet frame.
func (n *ndConn) send(m ndp.Message, src, dst netip.Addr) error {
	icmp, err := ndp.MarshalMessageChecksum(m, src, dst)
	if err != nil {
		return fmt.Errorf("vip: encoding %v: %w", m.Type(), err)
	}
	b, err := ndFrame(n.ifi.HardwareAddr, src, dst, icmp)
	if err != nil {
		return err
	}
	mac := multicastMAC(dst)
	if _, err := n.c.WriteTo(b, &packet.Addr{HardwareAddr: mac}); err != nil {
		return fmt.Errorf("vip: sending %v on %s: %w", m.Type(), n.ifi.Name, err)
	}
	return nil
}

func ndFrame(srcMAC net.HardwareAddr, src, dst netip.Addr, icmp []byte) ([]byte, error) {
	ip6 := make([]byte, 40, 40+len(icmp))
	ip6[0] = 6 << 4
	binary.BigEndian.PutUint16(ip6[4:6], uint16(len(icmp)))
	ip6[6] = 58 // ICMPv6
	ip6[7] = ndp.HopLimit
	s, d := src.As16(), dst.As16()
	copy(ip6[8:24], s[:])
	copy(ip6[24:40], d[:])
	f := &ethernet.Frame{Destination: multicastMAC(dst), Source: srcMAC, EtherType: ethernet.EtherTypeIPv6, Payload: append(ip6, icmp...)}
	b, err := f.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("vip: encoding an Ethernet frame: %w", err)
	}
	return b, nil
}

// announce sends one unsolicited neighbour advertisement to all nodes, with
// the override flag: a neighbour that has an entry for the address replaces
// the old MAC with ours (RFC 4861 7.2.6). It carries the target link-layer
// address option, without which the override would mean nothing.
func (n *ndConn) announce() error {
	na := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: n.ip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: n.ifi.HardwareAddr}},
	}
	return n.send(na, n.ip, allNodes)
}

// probe is duplicate address detection (RFC 4862 5.4): count neighbour
// solicitations for the address from ::, to its solicited-node group,
// waiting interval after each. A host that holds the address answers with
// an advertisement to all nodes; one that runs its own detection for it
// sends a solicitation from :: as well. Either, from another MAC, is a
// conflict.
func (n *ndConn) probe(ctx context.Context, count int, interval time.Duration) error {
	group, err := ndp.SolicitedNodeMulticast(n.ip)
	if err != nil {
		return fmt.Errorf("vip: solicited-node group of %s: %w", n.ip, err)
	}
	buf := make([]byte, 1500)
	for range count {
		if err := n.send(&ndp.NeighborSolicitation{TargetAddress: n.ip}, netip.IPv6Unspecified(), group); err != nil {
			return err
		}
		if err := readUntil(ctx, n.c, interval, buf, n.check); err != nil {
			return err
		}
	}
	return nil
}

// check returns a *ConflictError if the frame shows another owner.
func (n *ndConn) check(b []byte) error {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(b); err != nil || f.EtherType != ethernet.EtherTypeIPv6 {
		return nil
	}
	if sameMAC(f.Source, n.ifi.HardwareAddr) {
		return nil // our own, seen on the way out
	}
	p := f.Payload
	if len(p) < 40 || p[0]>>4 != 6 || p[6] != 58 || p[7] != ndp.HopLimit {
		return nil
	}
	plen := int(binary.BigEndian.Uint16(p[4:6]))
	if 40+plen > len(p) {
		return nil
	}
	src, _ := netip.AddrFromSlice(p[8:24])
	m, err := ndp.ParseMessage(p[40 : 40+plen])
	if err != nil {
		return nil
	}
	switch m := m.(type) {
	case *ndp.NeighborAdvertisement:
		if m.TargetAddress != n.ip {
			return nil
		}
		mac := cloneMAC(f.Source)
		for _, o := range m.Options {
			if l, ok := o.(*ndp.LinkLayerAddress); ok && l.Direction == ndp.Target && len(l.Addr) == 6 {
				mac = cloneMAC(l.Addr)
			}
		}
		return &ConflictError{Address: n.ip, Interface: n.ifi.Name, MAC: mac, How: "answered duplicate address detection for it"}
	case *ndp.NeighborSolicitation:
		if m.TargetAddress == n.ip && src.IsUnspecified() {
			return &ConflictError{Address: n.ip, Interface: n.ifi.Name, MAC: cloneMAC(f.Source), How: "is running duplicate address detection for it at the same time"}
		}
	}
	return nil
}
