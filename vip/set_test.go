package vip

import (
	"errors"
	"net/netip"
	"testing"
)

func TestNewSetRefusesSharedAddress(t *testing.T) {
	a, b := testConfig("198.51.100.100/24"), testConfig("198.51.100.100/25")
	if _, err := NewSet(map[string]Config{"db": a, "web": b}); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("two resources on one address: %v", err)
	}
	bad := testConfig("198.51.100.0/24")
	if _, err := NewSet(map[string]Config{"db": bad}); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("a network address: %v", err)
	}
}

// A node's VIPs, IPv4 and IPv6, claimed per resource and all released at
// shutdown; a resource without a VIP is a no-op.
func TestSet(t *testing.T) {
	t.Parallel()
	s := newSegment(t, map[string][]string{"a": {"198.51.100.1/24", "2001:db8::1/64"}})
	a := s.hosts["a"]
	ctx := testCtx(t)
	set, err := NewSet(map[string]Config{"db": testConfig("198.51.100.100/24"), "web": testConfig("2001:db8::100/64")},
		WithNetns(a.ns), WithLogger(testLogger(t, "a")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	if got := set.Resources(); len(got) != 2 || got[0] != "db" || got[1] != "web" {
		t.Fatalf("Resources() = %v", got)
	}
	for _, r := range []string{"db", "web", "novip"} {
		if err := set.Claim(ctx, r); err != nil {
			t.Fatalf("claim %s: %v", r, err)
		}
	}
	for _, p := range []string{"198.51.100.100/24", "2001:db8::100/64"} {
		if !a.holds(t, netip.MustParsePrefix(p)) {
			t.Errorf("%s not held after the claims", p)
		}
	}
	for _, st := range set.Status() {
		if !st.Held || st.Err != nil {
			t.Errorf("status %s: held %v err %v", st.Config.Address, st.Held, st.Err)
		}
	}
	if err := set.Release(ctx, "novip"); err != nil {
		t.Fatal(err)
	}
	if err := set.ReleaseAll(ctx); err != nil {
		t.Fatalf("release all: %v", err)
	}
	for _, st := range set.Status() {
		if st.Held {
			t.Errorf("%s still held after ReleaseAll", st.Config.Address)
		}
	}
	if err := set.ReleaseAll(ctx); err != nil {
		t.Fatalf("second release all: %v", err)
	}
}
