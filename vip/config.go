package vip

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Defaults of the announcement and the probe. The announcement follows
// keepalived (5 gratuitous ARPs at once, 5 more after 5 s: a switch or a
// neighbour that missed the first burst, or was busy learning, gets a second
// chance). The probe is shorter than RFC 5227's (3 probes 1 to 2 s apart)
// because it sits on the failover's critical path: a host that holds the
// address answers an ARP or neighbour solicitation within a millisecond, so
// 3 probes with 100 ms to answer each cost 0.3 s and still ride out a lost
// frame or two.
const (
	DefaultAnnounceCount       = 5
	DefaultAnnounceInterval    = 0
	DefaultAnnounceRepeatCount = 5
	DefaultAnnounceRepeatAfter = 5 * time.Second
	DefaultProbeCount          = 3
	DefaultProbeInterval       = 100 * time.Millisecond
)

// Bounds on the tuning, so that a typo cannot flood a segment or park a
// claim for an hour.
const (
	MaxAnnounceCount    = 100
	MaxAnnounceInterval = time.Second
	MaxRepeatAfter      = time.Hour
	MaxProbeCount       = 20
	MinProbeInterval    = 10 * time.Millisecond
	MaxProbeInterval    = 5 * time.Second
)

// MaxInterfaceName is the kernel's IFNAMSIZ minus the terminating zero.
const MaxInterfaceName = 15

// Config is one service address: the address with its prefix length, the
// interface it goes on, and how it is checked and announced.
type Config struct {
	// Address is the VIP and its prefix length, e.g. 198.51.100.100/24; the
	// prefix gives the kernel its on-link route, as with `ip addr add`.
	Address netip.Prefix
	// Interface is the link the address is added to, e.g. eth0.
	Interface string
	Announce  Announce
	Probe     Probe
}

// Announce says how a claim tells the segment about the new owner:
// gratuitous ARP requests (IPv4) or unsolicited neighbour advertisements
// with the override flag (IPv6). Linux sends none by itself when an address
// is added, so without them neighbours keep sending to the old MAC.
type Announce struct {
	Count       int           // sent at once when claiming, at least 1
	Interval    time.Duration // between the packets of one burst; 0 sends them back to back
	RepeatCount int           // sent again RepeatAfter later; 0 for no second burst
	RepeatAfter time.Duration // delay of the second burst
}

// Probe says how a claim checks that no other host answers for the address
// first: ARP probes with sender IP 0.0.0.0 (RFC 5227) or duplicate address
// detection neighbour solicitations from :: (RFC 4862).
type Probe struct {
	Count    int           // probes sent; 0 skips the check (not recommended)
	Interval time.Duration // time each probe waits for an answer
}

// DefaultAnnounce and DefaultProbe return the defaults above.
func DefaultAnnounce() Announce {
	return Announce{Count: DefaultAnnounceCount, Interval: DefaultAnnounceInterval,
		RepeatCount: DefaultAnnounceRepeatCount, RepeatAfter: DefaultAnnounceRepeatAfter}
}

func DefaultProbe() Probe {
	return Probe{Count: DefaultProbeCount, Interval: DefaultProbeInterval}
}

// ErrBadConfig is wrapped by every error Config.Check returns.
var ErrBadConfig = errors.New("vip: bad configuration")

// Check reports the first thing wrong with c, wrapping ErrBadConfig.
func (c Config) Check() error {
	if err := CheckAddress(c.Address); err != nil {
		return fmt.Errorf("%w: address %s: %v", ErrBadConfig, c.Address, err)
	}
	if err := CheckInterfaceName(c.Interface); err != nil {
		return fmt.Errorf("%w: interface %q: %v", ErrBadConfig, c.Interface, err)
	}
	a, p := c.Announce, c.Probe
	switch {
	case a.Count < 1 || a.Count > MaxAnnounceCount:
		return fmt.Errorf("%w: announce count %d is not from 1 to %d", ErrBadConfig, a.Count, MaxAnnounceCount)
	case a.Interval < 0 || a.Interval > MaxAnnounceInterval:
		return fmt.Errorf("%w: announce interval %v is not from 0 to %v", ErrBadConfig, a.Interval, MaxAnnounceInterval)
	case a.RepeatCount < 0 || a.RepeatCount > MaxAnnounceCount:
		return fmt.Errorf("%w: announce repeat count %d is not from 0 to %d", ErrBadConfig, a.RepeatCount, MaxAnnounceCount)
	case a.RepeatCount > 0 && (a.RepeatAfter <= 0 || a.RepeatAfter > MaxRepeatAfter):
		return fmt.Errorf("%w: announce repeat delay %v is not above 0 and at most %v", ErrBadConfig, a.RepeatAfter, MaxRepeatAfter)
	case p.Count < 0 || p.Count > MaxProbeCount:
		return fmt.Errorf("%w: probe count %d is not from 0 to %d", ErrBadConfig, p.Count, MaxProbeCount)
	case p.Count > 0 && (p.Interval < MinProbeInterval || p.Interval > MaxProbeInterval):
		return fmt.Errorf("%w: probe interval %v is not from %v to %v", ErrBadConfig, p.Interval, MinProbeInterval, MaxProbeInterval)
	}
	return nil
}

// CheckAddress refuses what cannot serve as a service address: no prefix
// length given, an address that is not unicast, IPv4-mapped IPv6, and the
// network or broadcast address of its own prefix (hosts on the segment
// would not treat it as a host; Linux even answers the broadcast address
// for every host on the subnet).
func CheckAddress(p netip.Prefix) error {
	if !p.IsValid() {
		return errors.New("not ADDRESS/PREFIX")
	}
	a := p.Addr()
	if a.Zone() != "" {
		return errors.New("has an IPv6 zone; name the interface instead")
	}
	switch {
	case a.Is4In6():
		return errors.New("is an IPv4-mapped IPv6 address; write the IPv4 address")
	case a.IsUnspecified():
		return errors.New("is the unspecified address")
	case a.IsLoopback():
		return errors.New("is a loopback address")
	case a.IsMulticast():
		return errors.New("is a multicast address")
	case a.IsLinkLocalUnicast():
		return errors.New("is a link-local address, which neighbours do not route to; use an address of the service network")
	case a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errors.New("is the broadcast address")
	}
	bits := a.BitLen()
	// /31 and /32 (RFC 3021) and /127, /128 (RFC 6164) have no network or
	// broadcast address to avoid.
	if p.Bits() >= bits-1 {
		return nil
	}
	if a == p.Masked().Addr() {
		if a.Is4() {
			return fmt.Errorf("is the network address of %s; use a host address inside it", p.Masked())
		}
		return fmt.Errorf("is the subnet-router anycast address of %s; use a host address inside it", p.Masked())
	}
	if a.Is4() && a == broadcast(p) {
		return fmt.Errorf("is the broadcast address of %s; use a host address inside it", p.Masked())
	}
	return nil
}

// broadcast is the last address of an IPv4 prefix.
func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// CheckInterfaceName applies the kernel's rules for a link name.
func CheckInterfaceName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > MaxInterfaceName:
		return fmt.Errorf("longer than %d characters", MaxInterfaceName)
	case name == "." || name == "..":
		return errors.New("not a link name")
	case strings.ContainsAny(name, "/: \t\n\x00"):
		return errors.New("contains '/', ':' or white space")
	}
	return nil
}
