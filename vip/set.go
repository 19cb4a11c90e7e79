package vip

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Set is the service addresses of one node, one per resource, as the daemon
// drives them: claim on promote, release on demote, release all on
// shutdown. A resource without a VIP is allowed in calls and does nothing,
// so the caller need not know which resources have one.
type Set struct {
	vips  map[string]*VIP
	names []string // sorted, for a stable Status and ReleaseAll order
}

// NewSet checks every configuration and returns the set; nothing is touched
// until Claim. opts apply to every VIP (WithNetns, WithLogger...). Two
// resources may not share an address.
func NewSet(cfgs map[string]Config, opts ...Option) (*Set, error) {
	s := &Set{vips: map[string]*VIP{}}
	owner := map[string]string{}
	for name, c := range cfgs {
		s.names = append(s.names, name)
		if other, dup := owner[c.Address.Addr().String()]; dup {
			first, second := min(name, other), max(name, other)
			return nil, fmt.Errorf("%w: %s is the VIP of both %s and %s", ErrBadConfig, c.Address.Addr(), first, second)
		}
		owner[c.Address.Addr().String()] = name
	}
	slices.Sort(s.names)
	for _, name := range s.names {
		v, err := New(cfgs[name], opts...)
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", name, err)
		}
		v.log = v.log.With("resource", name)
		s.vips[name] = v
	}
	return s, nil
}

// Resources lists the resources that have a VIP, sorted.
func (s *Set) Resources() []string { return slices.Clone(s.names) }

// VIP returns the resource's VIP, or nil if it has none.
func (s *Set) VIP(resource string) *VIP { return s.vips[resource] }

// Claim claims the resource's VIP (see VIP.Claim); nil for a resource
// without one.
func (s *Set) Claim(ctx context.Context, resource string) error {
	if v := s.vips[resource]; v != nil {
		return v.Claim(ctx)
	}
	return nil
}

// Release releases the resource's VIP (see VIP.Release); nil for a resource
// without one.
func (s *Set) Release(ctx context.Context, resource string) error {
	if v := s.vips[resource]; v != nil {
		return v.Release(ctx)
	}
	return nil
}

// ReleaseAll releases every VIP, going on after a failure so that one bad
// interface does not leave the other addresses behind; the errors are
// joined, each naming its resource.
func (s *Set) ReleaseAll(ctx context.Context) error {
	var errs []error
	for _, name := range s.names {
		if err := s.vips[name].Release(ctx); err != nil {
			errs = append(errs, fmt.Errorf("resource %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Status inspects every VIP of the set (see Status), in Resources order.
func (s *Set) Status() []State {
	out := make([]State, len(s.names))
	for i, name := range s.names {
		v := s.vips[name]
		out[i] = inspect(v.cfg, v.ns)
	}
	return out
}

// Close stops pending repeats of every VIP and leaves the addresses.
func (s *Set) Close() {
	for _, name := range s.names {
		s.vips[name].Close()
	}
}

// String names the set's VIPs, for logs.
func (s *Set) String() string {
	parts := make([]string, len(s.names))
	for i, name := range s.names {
		parts[i] = name + "=" + s.vips[name].cfg.Address.String() + "@" + s.vips[name].cfg.Interface
	}
	return strings.Join(parts, " ")
}
