package daemon

import (
	"context"
	"errors"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/replicate"
)

// The cluster layer's modes of a gate: a suspended request waits and goes
// on with the next mode; a failing gate gives EIO; a held request whose
// client leaves ends with its context.
func TestGateHold(t *testing.T) {
	g := newGate("r0", "alpha", 4096, slog.New(slog.DiscardHandler))
	g.SetIO(manager.IOSuspend)
	errc := make(chan error, 1)
	go func() { errc <- g.ReadAt(context.Background(), make([]byte, 512), 0) }()
	select {
	case err := <-errc:
		t.Fatalf("a request passed a suspended gate: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.SetIO(manager.IORefuse) // demoted: the held request fails as "not primary"
	select {
	case err := <-errc:
		if !errors.Is(err, replicate.ErrNotPrimary) || !errors.Is(err, syscall.EPERM) {
			t.Fatalf("held request after a demotion: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the held request was not released")
	}
	g.SetIO(manager.IOFail)
	if err := g.WriteAt(context.Background(), make([]byte, 512), 0, false); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write on a failing gate: %v, want EIO", err)
	}
	var errno syscall.Errno
	if err := g.Flush(context.Background()); !errors.As(err, &errno) || errno != syscall.EIO {
		t.Fatalf("flush on a failing gate: %v", err)
	}
	g.SetIO(manager.IOSuspend)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := g.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("held request whose client left: %v", err)
	}
	if g.primary.Load() {
		t.Fatal("the gate opened by itself")
	}
}

// writeOnly is a Volume that takes writes and nothing else.
type writeOnly struct {
	Volume
	writes chan struct{}
}

func (v *writeOnly) WriteAt(context.Context, []byte, int64, bool) error {
	v.writes <- struct{}{}
	return nil
}

// A gate that serves enforces the lease it was given: once the deadline
// passed, a request is held (no acknowledgement) until the lease is
// renewed, even though nobody suspended I/O (a stalled node manager); the
// zero lease turns the check off.
func TestGateHoldsPastTheLease(t *testing.T) {
	g := newGate("r0", "alpha", 4096, slog.New(slog.DiscardHandler))
	v := &writeOnly{writes: make(chan struct{}, 8)}
	g.setVolume(v)
	g.SetIO(manager.IOServe)
	write := func() chan error {
		errc := make(chan error, 1)
		go func() { errc <- g.WriteAt(context.Background(), make([]byte, 512), 0, false) }()
		return errc
	}
	g.SetLease(time.Now().Add(time.Hour))
	if err := <-write(); err != nil {
		t.Fatalf("write within the lease: %v", err)
	}
	<-v.writes

	g.SetLease(time.Now().Add(-time.Millisecond))
	errc := write()
	select {
	case err := <-errc:
		t.Fatalf("a write passed an expired lease: %v", err)
	case <-v.writes:
		t.Fatal("an expired lease let a write reach the volume")
	case <-time.After(100 * time.Millisecond):
	}
	g.SetLease(time.Now().Add(time.Hour)) // renewed: the held write goes on
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("held write after the renewal: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the held write was not released by the renewal")
	}
	<-v.writes

	g.SetLease(time.Now().Add(-time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := g.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("held request whose client left: %v", err)
	}
	g.SetLease(time.Time{}) // not enforced (manual roles, or not primary)
	if err := <-write(); err != nil {
		t.Fatalf("write with no lease enforced: %v", err)
	}
}
