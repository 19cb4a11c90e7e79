package vip

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
)

// arpConn speaks ARP for one address on one interface, through a raw
// AF_PACKET socket bound to the ARP EtherType. arp.Client is not used: it
// insists on an IPv4 address already on the interface to send from, and a
// probe must be sent from 0.0.0.0 precisely when the interface may have none.
type arpConn struct {
	c   *packet.Conn
	ifi *net.Interface
	ip  netip.Addr
}

func openARP(ns namespace, ifi *net.Interface, ip netip.Addr) (*arpConn, error) {
	var c *packet.Conn
	err := ns.run(func() error {
		var err error
		c, err = packet.Listen(ifi, packet.Raw, int(ethernet.EtherTypeARP), nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("vip: opening an ARP socket on %s: %w", ifi.Name, err)
	}
	return &arpConn{c: c, ifi: ifi, ip: ip}, nil
}

func (a *arpConn) Close() error { return a.c.Close() }

var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// send writes one ARP request to the broadcast address.
func (a *arpConn) send(senderIP netip.Addr) error {
	p, err := arp.NewPacket(arp.OperationRequest, a.ifi.HardwareAddr, senderIP, zeroMAC, a.ip)
	if err != nil {
		return fmt.Errorf("vip: building an ARP packet: %w", err)
	}
	b, err := arpFrame(p)
	if err != nil {
		return err
	}
	if _, err := a.c.WriteTo(b, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
		return fmt.Errorf("vip: sending ARP on %s: %w", a.ifi.Name, err)
	}
	return nil
}

func arpFrame(p *arp.Packet) ([]byte, error) {
	pb, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("vip: encoding an ARP packet: %w", err)
	}
	f := &ethernet.Frame{Destination: ethernet.Broadcast, Source: p.SenderHardwareAddr, EtherType: ethernet.EtherTypeARP, Payload: pb}
	b, err := f.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("vip: encoding an Ethernet frame: %w", err)
	}
	return b, nil
}

// announce sends one gratuitous ARP: a request with sender and target IP
// both the VIP. Linux updates an existing neighbour entry from it at once
// (even inside the locktime that ignores ordinary back-to-back replies); a
// request rather than a reply is what every stack accepts.
func (a *arpConn) announce() error { return a.send(a.ip) }

// probe sends count RFC 5227 probes (sender IP 0.0.0.0, so that no
// neighbour learns anything from them), waiting interval after each for
// an answer. Any ARP packet from another MAC that claims the address as its
// sender, or probes for it too, is a conflict.
func (a *arpConn) probe(ctx context.Context, count int, interval time.Duration) error {
	buf := make([]byte, 1500)
	for range count {
		if err := a.send(netip.IPv4Unspecified()); err != nil {
			return err
		}
		if err := readUntil(ctx, a.c, interval, buf, func(b []byte) error { return a.check(b) }); err != nil {
			return err
		}
	}
	return nil
}

// check returns a *ConflictError if the frame shows another owner.
func (a *arpConn) check(b []byte) error {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(b); err != nil || f.EtherType != ethernet.EtherTypeARP {
		return nil
	}
	var p arp.Packet
	if err := p.UnmarshalBinary(f.Payload); err != nil {
		return nil
	}
	// Ethernet and IPv4 only, as the kernel itself insists: anything else
	// is no statement about our address (and may carry no usable MAC).
	if p.HardwareType != 1 || p.ProtocolType != uint16(ethernet.EtherTypeIPv4) || len(p.SenderHardwareAddr) != 6 || !p.SenderIP.Is4() {
		return nil
	}
	if sameMAC(p.SenderHardwareAddr, a.ifi.HardwareAddr) {
		return nil // our own probe, seen on the way out
	}
	switch {
	case p.SenderIP == a.ip:
		how := "answered an ARP probe for it"
		if p.Operation == arp.OperationRequest {
			how = "sent an ARP request from it"
		}
		return &ConflictError{Address: a.ip, Interface: a.ifi.Name, MAC: cloneMAC(p.SenderHardwareAddr), How: how}
	case p.Operation == arp.OperationRequest && p.SenderIP.IsUnspecified() && p.TargetIP == a.ip:
		return &ConflictError{Address: a.ip, Interface: a.ifi.Name, MAC: cloneMAC(p.SenderHardwareAddr), How: "is probing for it at the same time"}
	}
	return nil
}

// deadliner is what readUntil needs of a raw socket.
type deadliner interface {
	ReadFrom([]byte) (int, net.Addr, error)
	SetReadDeadline(time.Time) error
}

// readUntil hands every frame that arrives within wait (or until ctx ends)
// to check, and stops at the first error check returns.
func readUntil(ctx context.Context, c deadliner, wait time.Duration, buf []byte, check func([]byte) error) error {
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.SetReadDeadline(deadline); err != nil {
		return fmt.Errorf("vip: setting a read deadline: %w", err)
	}
	for {
		if err := ctxDone(ctx); err != nil {
			return err
		}
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return ctxDone(ctx)
			}
			return fmt.Errorf("vip: reading: %w", err)
		}
		if err := check(buf[:n]); err != nil {
			return err
		}
	}
}

// ctxDone is ctx.Err(), and also DeadlineExceeded once ctx's deadline has
// passed: a socket deadline set from it can expire before the context's own
// timer has fired, and a claim must not go on as if there were time left.
func ctxDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

func sameMAC(a, b net.HardwareAddr) bool { return string(a) == string(b) }

func cloneMAC(m net.HardwareAddr) net.HardwareAddr { return append(net.HardwareAddr(nil), m...) }
