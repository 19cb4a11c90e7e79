package daemon

import (
	"errors"
	"slices"
	"testing"

	"github.com/tandem-ha/tandem/replicate"
)

// One resource goes down and up while the daemon runs: a resource
// without metadata stays down until create-md and tandem up; a
// Secondary taken down closes its volume and frees its devices for
// create-md while the other resource is untouched; the Primary is
// refused.
func TestUpAndDownOneResource(t *testing.T) {
	l := newLab(t)
	r1 := l.cfg.Resource("r1")
	if _, err := CreateMetadata(l.cfg, r1, "alpha", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, fs, _ := l.start(t, "alpha")
	c := l.client("alpha")
	ctx := t.Context()
	status := func(name string) ResourceStatus {
		t.Helper()
		ns, err := c.Status(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return ns.Resources[0]
	}
	if rs := status("r0"); rs.Up {
		t.Fatalf("r0 up without metadata: %+v", rs)
	} else {
		contains(t, "r0's reason", rs.Error, "then tandem up r0")
	}

	// Still no metadata: refused with the reason, nothing opened.
	if err := c.Up(ctx, "r0"); !errors.Is(err, ErrResourceDown) || fs.Get("r0") != nil {
		t.Fatalf("up without metadata: %v (volume %v)", err, fs.Get("r0"))
	} else {
		contains(t, "up's refusal", err.Error(), "create-md r0")
	}
	// The device is free while r0 is down.
	if _, err := CreateMetadata(l.cfg, l.cfg.Resource("r0"), "alpha", CreateOptions{}); err != nil {
		t.Fatalf("create-md while r0 is down: %v", err)
	}
	if err := c.Up(ctx, "r0"); err != nil {
		t.Fatalf("up after create-md: %v", err)
	}
	if rs := status("r0"); !rs.Up || rs.Error != "" {
		t.Fatalf("r0 after up: %+v", rs)
	}
	if err := c.Up(ctx, "r0"); err != nil {
		t.Fatalf("up of a resource that is up: %v, want nothing to do", err)
	}
	v0 := fs.Get("r0")

	// The Primary is refused; demoted, it goes down.
	if _, err := c.Promote(ctx, "r0", false); err != nil {
		t.Fatal(err)
	}
	if err := c.Down(ctx, "r0"); !errors.Is(err, replicate.ErrIsPrimary) {
		t.Fatalf("down of the Primary: %v, want is_primary", err)
	}
	if rs := status("r0"); !rs.Up || !rs.NBDServing {
		t.Fatalf("the refused down changed r0: %+v", rs)
	}
	if err := c.Demote(ctx, "r0"); err != nil {
		t.Fatal(err)
	}
	if err := c.Down(ctx, "r0"); err != nil {
		t.Fatalf("down of the Secondary: %v", err)
	}
	if calls := v0.Calls(); !slices.Contains(calls, "close") {
		t.Fatalf("r0's volume not closed by down: %v", calls)
	}
	rs := status("r0")
	if rs.Up || rs.Disk != replicate.Diskless {
		t.Fatalf("r0 after down: %+v", rs)
	}
	contains(t, "r0's reason", rs.Error, "tandem up")
	if err := c.Connect(ctx, "r0"); !errors.Is(err, ErrResourceDown) {
		t.Fatalf("connect of a down resource: %v", err)
	}
	if err := c.Down(ctx, "r0"); err != nil {
		t.Fatalf("down of a resource that is down: %v, want nothing to do", err)
	}
	if slices.Contains(fs.Get("r1").Calls(), "close") || !status("r1").Up {
		t.Fatal("r0's down touched r1")
	}
	// A replaced disk: new metadata while down, then up again.
	if _, err := CreateMetadata(l.cfg, l.cfg.Resource("r0"), "alpha", CreateOptions{Force: true}); err != nil {
		t.Fatalf("create-md --force while r0 is down: %v", err)
	}
	if err := c.Up(ctx, "r0"); err != nil {
		t.Fatal(err)
	}
	if fs.Get("r0") == v0 || !status("r0").Up {
		t.Fatal("up did not open a new volume")
	}
	if _, err := CreateMetadata(l.cfg, l.cfg.Resource("r0"), "alpha", CreateOptions{Force: true}); !errors.Is(err, ErrInUse) {
		t.Fatalf("create-md while r0 is up again: %v, want ErrInUse", err)
	}
}
