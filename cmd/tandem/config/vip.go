package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/vip"
)

// VIP is a resource's service address: clients reach the resource's NBD
// export there, on whichever node is primary.
type VIP struct {
	Address   netip.Prefix // e.g. 198.51.100.100/24
	Interface string       // default interface; a replica's VIPInterface overrides it
	Announce  vip.Announce
	Probe     vip.Probe

	lines lines
}

// vipKeys are the keys of resources[N].vip.
var vipKeys = []string{"address", "interface", "announce-count", "announce-interval",
	"announce-repeat-count", "announce-repeat-after", "probe-count", "probe-interval"}

// VIPFor returns the VIP as node uses it (its interface override applied),
// and false if the resource has no VIP or node holds no replica of it.
func (r *Resource) VIPFor(node string) (vip.Config, bool) {
	rp := r.Replica(node)
	if r.VIP == nil || rp == nil {
		return vip.Config{}, false
	}
	c := vip.Config{Address: r.VIP.Address, Interface: r.VIP.Interface, Announce: r.VIP.Announce, Probe: r.VIP.Probe}
	if rp.VIPInterface != "" {
		c.Interface = rp.VIPInterface
	}
	return c, true
}

// VIPs returns node's VIPs by resource (those of the resources it holds a
// replica of), ready for vip.NewSet.
func (c *Config) VIPs(node string) map[string]vip.Config {
	out := map[string]vip.Config{}
	for i := range c.Resources {
		if v, ok := c.Resources[i].VIPFor(node); ok {
			out[c.Resources[i].Name] = v
		}
	}
	return out
}

func (d *decoder) vip(e entry, path string) *VIP {
	v := &VIP{Announce: vip.DefaultAnnounce(), Probe: vip.DefaultProbe(), lines: lines{}}
	f, ok := d.mapping(e.val, path, vipKeys, v.lines)
	if !ok {
		return nil
	}
	d.required(e.key.Line, path, f, map[string]string{
		"address": "add address: ADDRESS/PREFIX (e.g. 198.51.100.100/24), where clients reach the resource",
	})
	if e, ok := f["address"]; ok {
		v.Address = d.vipAddress(e, path+".address")
	}
	if e, ok := f["interface"]; ok {
		v.Interface = d.interfaceName(e, path+".interface")
	}
	ints := []struct {
		key      string
		min, max int
		dst      *int
		meaning  string
	}{
		{"announce-count", 1, vip.MaxAnnounceCount, &v.Announce.Count, "gratuitous ARPs / neighbour advertisements sent at once when claiming"},
		{"announce-repeat-count", 0, vip.MaxAnnounceCount, &v.Announce.RepeatCount, "sent again after announce-repeat-after; 0 for none"},
		{"probe-count", 0, vip.MaxProbeCount, &v.Probe.Count, "probes for another holder before claiming; 0 skips the check"},
	}
	for _, k := range ints {
		if e, ok := f[k.key]; ok {
			p := path + "." + k.key
			if s, ok := d.scalar(e, p); ok {
				n, err := strconv.Atoi(s)
				if err != nil || n < k.min || n > k.max {
					d.add(e.val.Line, p, fmt.Sprintf("%q is not a whole number from %d to %d", s, k.min, k.max), "write the number of packets "+k.meaning)
				} else {
					*k.dst = n
				}
			}
		}
	}
	durs := []struct {
		key      string
		min, max time.Duration
		dst      *time.Duration
		meaning  string
	}{
		{"announce-interval", 0, vip.MaxAnnounceInterval, &v.Announce.Interval, "the gap between the packets of one burst, e.g. 0s (back to back) or 200ms"},
		{"announce-repeat-after", time.Millisecond, vip.MaxRepeatAfter, &v.Announce.RepeatAfter, "the delay of the second burst, e.g. 5s"},
		{"probe-interval", vip.MinProbeInterval, vip.MaxProbeInterval, &v.Probe.Interval, "how long each probe waits for an answer, e.g. 100ms"},
	}
	for _, k := range durs {
		if e, ok := f[k.key]; ok {
			p := path + "." + k.key
			if s, ok := d.scalar(e, p); ok {
				t, err := time.ParseDuration(strings.TrimSpace(s))
				switch {
				case err != nil:
					d.add(e.val.Line, p, fmt.Sprintf("%q is not a duration", s), "write a number with its unit (ms, s, m): "+k.meaning)
				case t < k.min || t > k.max:
					d.add(e.val.Line, p, fmt.Sprintf("%s is not from %v to %v", s, k.min, k.max), "write "+k.meaning)
				default:
					*k.dst = t
				}
			}
		}
	}
	return v
}

// vipAddress reads ADDRESS/PREFIX and refuses what vip.CheckAddress refuses.
func (d *decoder) vipAddress(e entry, path string) netip.Prefix {
	s, ok := d.scalar(e, path)
	if !ok {
		return netip.Prefix{}
	}
	const fix = "write ADDRESS/PREFIX with the prefix length of the service network, e.g. 198.51.100.100/24 or 2001:db8::100/64"
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if _, aerr := netip.ParseAddr(s); aerr == nil {
			d.add(e.val.Line, path, fmt.Sprintf("%q has no prefix length", s), fix)
		} else {
			d.add(e.val.Line, path, fmt.Sprintf("%q is not ADDRESS/PREFIX", s), fix)
		}
		return netip.Prefix{}
	}
	if err := vip.CheckAddress(p); err != nil {
		d.add(e.val.Line, path, fmt.Sprintf("%s %v", s, err), "use a free host address of the service network")
		return netip.Prefix{}
	}
	return p
}

func (d *decoder) interfaceName(e entry, path string) string {
	s, ok := d.scalar(e, path)
	if !ok {
		return ""
	}
	if err := vip.CheckInterfaceName(s); err != nil {
		d.add(e.val.Line, path, fmt.Sprintf("%q is not an interface name: %v", s, err), "write the link's name as `ip link` shows it, e.g. eth0 or bond0.100")
		return ""
	}
	return s
}

// checkVIPs: every replica of a resource with a VIP knows its interface and
// has an NBD listener that accepts connections to the VIP; no address is the
// VIP of two resources, or a node's own address (releasing the VIP would take
// the node off the network); vip-interface is only given where there is a
// VIP.
func (c *Config) checkVIPs(ps *problems) {
	type use struct {
		resource string
		line     int
	}
	seen := map[netip.Addr]use{}
	for i := range c.Resources {
		r := &c.Resources[i]
		path := fmt.Sprintf("resources[%d]", i)
		if r.VIP == nil {
			for _, rp := range r.Replicas {
				if rp.VIPInterface != "" {
					ps.add(rp.lines.at("vip-interface"), path+".replicas."+rp.Node+".vip-interface",
						"vip-interface without a vip", "add a vip to the resource, or remove vip-interface")
				}
			}
			continue
		}
		v := r.VIP
		if !c.parsed {
			cfg := vip.Config{Address: v.Address, Interface: "x", Announce: v.Announce, Probe: v.Probe}
			if err := cfg.Check(); err != nil {
				ps.add(0, path+".vip", err.Error(), "see docs/configuration.md for the allowed values")
			}
		}
		// A key given with a bad value is reported as such already.
		_, ifaceGiven := v.lines["interface"]
		for _, rp := range r.Replicas {
			_, rpGiven := rp.lines["vip-interface"]
			if v.Interface == "" && rp.VIPInterface == "" && !ifaceGiven && !rpGiven {
				ps.add(rp.lines.at(""), path+".replicas."+rp.Node,
					"no interface for the VIP on "+rp.Node, "add interface: NAME to the vip, or vip-interface: NAME to this replica")
			}
		}
		if !v.Address.IsValid() {
			continue
		}
		ip := v.Address.Addr()
		for _, rp := range r.Replicas {
			if rp.NBDListen == "" || acceptsVIP(rp.NBDListen, ip) {
				continue
			}
			what := "nbd-listen " + rp.NBDListen
			if _, given := rp.lines["nbd-listen"]; !given {
				what += " (the default)"
			}
			any := "0.0.0.0"
			if ip.Is6() {
				any = "[::]"
			}
			ps.add(rp.lines.at("nbd-listen"), path+".replicas."+rp.Node+".nbd-listen",
				fmt.Sprintf("%s of %s does not accept connections to the VIP %s", what, rp.Node, ip),
				fmt.Sprintf(`set nbd-listen: "%s:%d" (every address; resources of one node can share it) or the VIP's own address`, any, DefaultNBDPort))
		}
		if first, dup := seen[ip]; dup {
			ps.add(v.lines.at("address"), path+".vip.address",
				fmt.Sprintf("%s is also the VIP of resource %s (line %d)", ip, first.resource, first.line),
				"give each resource its own service address")
		} else {
			seen[ip] = use{r.Name, v.lines.at("address")}
		}
		for j, n := range c.Nodes {
			if a, err := netip.ParseAddr(n.Address); err == nil && a.Unmap() == ip {
				ps.add(v.lines.at("address"), path+".vip.address",
					fmt.Sprintf("%s is the address of node %s (nodes[%d], line %d)", ip, n.Name, j, n.lines.at("address")),
					"use an address of its own for the VIP: releasing it would take the node off the network")
			}
		}
	}
}

// acceptsVIP reports whether an NBD listener takes connections to ip: a TCP
// listener on ip itself or on a wildcard of its family. Go's "[::]" and ""
// listeners are dual-stack, "0.0.0.0" takes IPv4 only.
func acceptsVIP(listen string, ip netip.Addr) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false // unix:/path, which no client reaches through an address
	}
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	switch {
	case a == ip:
		return true
	case a.IsUnspecified() && a.Is6():
		return true
	case a.IsUnspecified():
		return ip.Is4()
	}
	return false
}

// checkLocalVIPs: the interface each of the node's VIPs goes on exists here.
func (c *Config) checkLocalVIPs(ps *problems, node string) {
	for i := range c.Resources {
		r := &c.Resources[i]
		vc, ok := r.VIPFor(node)
		if !ok || vc.Interface == "" {
			continue
		}
		if _, err := net.InterfaceByName(vc.Interface); err != nil {
			rp := r.Replica(node)
			line, key := r.VIP.lines.at("interface"), fmt.Sprintf("resources[%d].vip.interface", i)
			if rp.VIPInterface != "" {
				line, key = rp.lines.at("vip-interface"), fmt.Sprintf("resources[%d].replicas.%s.vip-interface", i, node)
			}
			ps.add(line, key, fmt.Sprintf("interface %s does not exist on this host (%v)", vc.Interface, err),
				"name a link that `ip link` lists here, or set vip-interface for this replica")
		}
	}
}

// canonVIP is the VIP in the configuration hash (see canonical).
type canonVIP struct {
	Address             string `json:"address"`
	Interface           string `json:"interface"`
	AnnounceCount       int    `json:"announce-count"`
	AnnounceInterval    int64  `json:"announce-interval-ns"`
	AnnounceRepeatCount int    `json:"announce-repeat-count"`
	AnnounceRepeatAfter int64  `json:"announce-repeat-after-ns"`
	ProbeCount          int    `json:"probe-count"`
	ProbeInterval       int64  `json:"probe-interval-ns"`
}

func (v *VIP) canonical() *canonVIP {
	if v == nil {
		return nil
	}
	return &canonVIP{
		Address: v.Address.String(), Interface: v.Interface,
		AnnounceCount: v.Announce.Count, AnnounceInterval: int64(v.Announce.Interval),
		AnnounceRepeatCount: v.Announce.RepeatCount, AnnounceRepeatAfter: int64(v.Announce.RepeatAfter),
		ProbeCount: v.Probe.Count, ProbeInterval: int64(v.Probe.Interval),
	}
}
