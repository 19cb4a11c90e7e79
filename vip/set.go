package vip

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Set is the service addresses of one node, one per resource, as the daemon
// drives them: claim on promote, release on demote, release all on
// shutdown. A resource without a VIP is allowed in calls and does nothing,
// so the caller need not know which resources have one.
type Set struct {
	opts []Option
	// mu guards vips and names: Add and Remove change them while the
	// node manager claims and releases (a resource added or removed by
	// tandem adjust).
	mu    sync.RWMutex
	vips  map[string]*VIP
	names []string // sorted, for a stable Status and ReleaseAll order
}

// NewSet checks every configuration and returns the set; nothing is touched
// until Claim. opts apply to every VIP (WithNetns, WithLogger...). Two
// resources may not share an address.
func NewSet(cfgs map[string]Config, opts ...Option) (*Set, error) {
	s := &Set{vips: map[string]*VIP{}, opts: opts}
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
func (s *Set) Resources() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.names)
}

// VIP returns the resource's VIP, or nil if it has none.
func (s *Set) VIP(resource string) *VIP {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.vips[resource]
}

// each is the VIPs now, in Resources order.
func (s *Set) each() ([]string, []*VIP) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	vs := make([]*VIP, len(s.names))
	for i, name := range s.names {
		vs[i] = s.vips[name]
	}
	return slices.Clone(s.names), vs
}

// Add gives one more resource its VIP, checked as NewSet checks them
// (with NewSet's options); nothing is touched until Claim.
func (s *Set) Add(resource string, c Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vips[resource] != nil {
		return fmt.Errorf("%w: resource %s has a VIP already", ErrBadConfig, resource)
	}
	for _, name := range s.names {
		if s.vips[name].cfg.Address.Addr() == c.Address.Addr() {
			return fmt.Errorf("%w: %s is the VIP of %s already", ErrBadConfig, c.Address.Addr(), name)
		}
	}
	v, err := New(c, s.opts...)
	if err != nil {
		return fmt.Errorf("resource %s: %w", resource, err)
	}
	v.log = v.log.With("resource", resource)
	s.vips[resource] = v
	s.names = append(s.names, resource)
	slices.Sort(s.names)
	return nil
}

// Remove takes a resource's VIP out of the set, releasing it first if
// this node holds it; nil for a resource without one.
func (s *Set) Remove(ctx context.Context, resource string) error {
	s.mu.Lock()
	v := s.vips[resource]
	delete(s.vips, resource)
	s.names = slices.DeleteFunc(s.names, func(n string) bool { return n == resource })
	s.mu.Unlock()
	if v == nil {
		return nil
	}
	defer v.Close()
	if err := v.Release(ctx); err != nil {
		return fmt.Errorf("resource %s: %w", resource, err)
	}
	return nil
}

// Claim claims the resource's VIP (see VIP.Claim); nil for a resource
// without one.
func (s *Set) Claim(ctx context.Context, resource string) error {
	if v := s.VIP(resource); v != nil {
		return v.Claim(ctx)
	}
	return nil
}

// Release releases the resource's VIP (see VIP.Release); nil for a resource
// without one.
func (s *Set) Release(ctx context.Context, resource string) error {
	if v := s.VIP(resource); v != nil {
		return v.Release(ctx)
	}
	return nil
}

// ReleaseAll releases every VIP, going on after a failure so that one bad
// interface does not leave the other addresses behind; the errors are
// joined, each naming its resource.
func (s *Set) ReleaseAll(ctx context.Context) error {
	var errs []error
	names, vs := s.each()
	for i, v := range vs {
		if err := v.Release(ctx); err != nil {
			errs = append(errs, fmt.Errorf("resource %s: %w", names[i], err))
		}
	}
	return errors.Join(errs...)
}

// Status inspects every VIP of the set (see Status), in Resources order.
func (s *Set) Status() []State {
	_, vs := s.each()
	out := make([]State, len(vs))
	for i, v := range vs {
		out[i] = inspect(v.cfg, v.ns)
	}
	return out
}

// Close stops pending repeats of every VIP and leaves the addresses.
func (s *Set) Close() {
	_, vs := s.each()
	for _, v := range vs {
		v.Close()
	}
}

// String names the set's VIPs, for logs.
func (s *Set) String() string {
	names, vs := s.each()
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = names[i] + "=" + v.cfg.Address.String() + "@" + v.cfg.Interface
	}
	return strings.Join(parts, " ")
}
