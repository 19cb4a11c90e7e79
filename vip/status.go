package vip

import "net/netip"

// State is what Status found for one configured address.
type State struct {
	Config Config
	// Held: the address is on the configured interface.
	Held bool
	// Prefix is the address as found there, when held; its length may
	// differ from the configured one (added by hand, or an old config).
	Prefix netip.Prefix
	// Elsewhere names other interfaces of the namespace that carry the
	// address: a misconfiguration, since neighbours may reach it there.
	Elsewhere []string
	// Err is why the interface could not be inspected, e.g. wrapping
	// ErrNoInterface; Held is false then.
	Err error
}

// Status inspects the interfaces (of the namespace WithNetns names, else the
// caller's) for each configured address. It reads only; no daemon is
// needed. Options other than WithNetns are ignored.
func Status(cfgs []Config, opts ...Option) []State {
	var v VIP
	for _, o := range opts {
		o(&v)
	}
	out := make([]State, len(cfgs))
	for i, c := range cfgs {
		out[i] = inspect(c, v.ns)
	}
	return out
}

// inspect is Status for one address.
func inspect(cfg Config, ns namespace) State {
	st := State{Config: cfg}
	h, err := ns.netlink()
	if err != nil {
		st.Err = err
		return st
	}
	defer h.Close()
	ip := cfg.Address.Addr()
	// Every address of the family in the namespace, to find the VIP on
	// other links too.
	all, err := addrsOn(h, nil, family(ip))
	if err != nil {
		st.Err = err
		return st
	}
	l, lerr := findLink(h, ns, cfg.Interface)
	for i := range all {
		a, ok := netip.AddrFromSlice(all[i].IP)
		if !ok || a.Unmap() != ip {
			continue
		}
		if lerr == nil && all[i].LinkIndex == l.Attrs().Index {
			st.Held = true
			st.Prefix = prefixOf(&all[i])
			continue
		}
		name := "?"
		if ol, err := h.LinkByIndex(all[i].LinkIndex); err == nil {
			name = ol.Attrs().Name
		}
		st.Elsewhere = append(st.Elsewhere, name)
	}
	st.Err = lerr
	return st
}
