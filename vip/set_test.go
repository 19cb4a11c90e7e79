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

// A VIP added to a running set is claimed like the others; a removed one
// is released and no longer claimed; Add checks as NewSet does.
func TestSetAddAndRemove(t *testing.T) {
	t.Parallel()
	s := newSegment(t, map[string][]string{"a": {"198.51.100.1/24"}})
	a := s.hosts["a"]
	ctx := testCtx(t)
	set, err := NewSet(map[string]Config{"db": testConfig("198.51.100.100/24")}, WithNetns(a.ns), WithLogger(testLogger(t, "a")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	for _, bad := range []struct {
		name string
		c    Config
	}{{"db", testConfig("198.51.100.102/24")}, {"web", testConfig("198.51.100.100/24")}, {"web", testConfig("198.51.100.0/24")}} {
		if err := set.Add(bad.name, bad.c); !errors.Is(err, ErrBadConfig) {
			t.Fatalf("Add(%s, %s): %v", bad.name, bad.c.Address, err)
		}
	}
	if err := set.Add("web", testConfig("198.51.100.101/24")); err != nil {
		t.Fatal(err)
	}
	if got := set.Resources(); len(got) != 2 || got[1] != "web" {
		t.Fatalf("Resources() = %v", got)
	}
	if err := set.Claim(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	web := netip.MustParsePrefix("198.51.100.101/24")
	if !a.holds(t, web) {
		t.Fatal("the added VIP is not held after its claim")
	}
	if err := set.Remove(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if a.holds(t, web) || len(set.Resources()) != 1 {
		t.Fatalf("after Remove: held %v, resources %v", a.holds(t, web), set.Resources())
	}
	if err := set.Claim(ctx, "web"); err != nil || a.holds(t, web) {
		t.Fatalf("a claim of the removed resource: %v, held %v", err, a.holds(t, web))
	}
	if err := set.Remove(ctx, "web"); err != nil {
		t.Fatalf("removing it twice: %v", err)
	}
}
