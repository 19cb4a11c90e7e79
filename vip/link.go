package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
)

// findLink returns the interface called name, wrapping ErrNoInterface when
// there is none.
func findLink(h *netlink.Handle, ns namespace, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) {
			return nil, fmt.Errorf("%w: %s in %s", ErrNoInterface, name, ns)
		}
		return nil, fmt.Errorf("vip: looking up interface %s in %s: %w", name, ns, err)
	}
	return l, nil
}

// usable refuses a link that cannot carry the announcement: administratively
// down, or without carrier (a veth whose peer is gone, an unplugged NIC).
// Adding the address would succeed, but no neighbour would hear of it.
func usable(l netlink.Link) error {
	a := l.Attrs()
	if a.Flags&net.FlagUp == 0 {
		return fmt.Errorf("%w: %s is administratively down (ip link set %s up)", ErrInterfaceDown, a.Name, a.Name)
	}
	switch a.OperState {
	case netlink.OperDown, netlink.OperLowerLayerDown, netlink.OperNotPresent:
		return fmt.Errorf("%w: %s has no carrier (state %s)", ErrInterfaceDown, a.Name, a.OperState)
	}
	if len(a.HardwareAddr) != 6 {
		return fmt.Errorf("vip: %s has no Ethernet address (%q): ARP and neighbour discovery need one", a.Name, a.HardwareAddr)
	}
	return nil
}

// netInterface is what the raw socket libraries want; built from netlink so
// that it describes the link in its namespace, not in the caller's.
func netInterface(l netlink.Link) *net.Interface {
	a := l.Attrs()
	return &net.Interface{Index: a.Index, MTU: a.MTU, Name: a.Name, HardwareAddr: a.HardwareAddr, Flags: a.Flags}
}

// addrsOn lists the addresses of family on the link. A dump that the kernel
// interrupts (addresses changed meanwhile) is retried, a few times only.
func addrsOn(h *netlink.Handle, l netlink.Link, family int) ([]netlink.Addr, error) {
	var err error
	for range 5 {
		var as []netlink.Addr
		as, err = h.AddrList(l, family)
		if err == nil {
			return as, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	what := "the namespace"
	if l != nil {
		what = l.Attrs().Name
	}
	return nil, fmt.Errorf("vip: listing the addresses of %s: %w", what, err)
}

// findAddr returns the entry for ip on the link (any prefix length), or nil.
func findAddr(h *netlink.Handle, l netlink.Link, ip netip.Addr) (*netlink.Addr, error) {
	as, err := addrsOn(h, l, family(ip))
	if err != nil {
		return nil, err
	}
	for i := range as {
		if a, ok := netip.AddrFromSlice(as[i].IP); ok && a.Unmap() == ip {
			return &as[i], nil
		}
	}
	return nil, nil
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// nlAddr is the netlink form of the VIP. IPv4 gets its broadcast address
// (as `ip addr add ... brd +` and IPaddr2 do); IPv6 gets nodad, because the
// claim did its own duplicate check and the address must be usable at once,
// not tentative for a second.
func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is4() {
		if p.Bits() < 31 {
			a.Broadcast = broadcast(p).AsSlice()
		}
	} else {
		a.Flags = syscall.IFA_F_NODAD
	}
	return a
}
