package daemon

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/cluster/manager"
)

// ioHold is what the cluster layer does to a primary's I/O besides opening
// and shutting the gate: hold requests (quorum lost with on-no-quorum
// suspend-io, a switchover's handoff) or fail them (io-error). Manual roles
// never set it.
type ioHold struct {
	mu      sync.Mutex
	mode    manager.IOMode // IOServe (nothing held), IOSuspend or IOFail
	changed chan struct{}  // closed and replaced at every change
	// lease is the primary's lease deadline (nil: not enforced here, as
	// with manual roles). Past it requests are held until it is renewed.
	lease           atomic.Pointer[time.Time]
	leaseHeldLogged atomic.Bool // one warning per expiry, not one per request
}

// leaseRecheck is how often a request held for an expired lease looks
// again: renewals come every tick (100 ms) and are not announced.
const leaseRecheck = 10 * time.Millisecond

// SetLease is the node manager's LeaseGate: the deadline after which this
// primary acknowledges nothing unless it is renewed, enforced here so that
// a stalled event loop cannot let the export run past its lease (the
// manager would have suspended I/O had it run). The zero time turns it
// off.
func (g *gate) SetLease(until time.Time) {
	if until.IsZero() {
		g.hold.lease.Store(nil)
		return
	}
	g.hold.lease.Store(&until)
}

// leaseExpired reports whether an enforced lease has run out. The
// deadline carries the monotonic reading of the clock it came from, so a
// wall-clock step does not move it.
func (h *ioHold) leaseExpired() bool {
	l := h.lease.Load()
	return l != nil && !time.Now().Before(*l)
}

// SetIO is the node manager's Gate: IOServe opens the export, IORefuse shuts
// it (requests fail with "not primary"), IOSuspend holds requests until the
// next change, IOFail fails them with EIO. Held requests go on with the
// next mode.
func (g *gate) SetIO(m manager.IOMode) {
	switch m {
	case manager.IOServe:
		g.primary.Store(true)
	case manager.IORefuse:
		g.primary.Store(false)
	}
	hm := m
	if m == manager.IORefuse {
		hm = manager.IOServe // nothing held: the shut gate refuses
	}
	h := &g.hold
	h.mu.Lock()
	if h.changed == nil {
		h.changed = make(chan struct{})
	}
	if h.mode != hm {
		h.mode = hm
		close(h.changed)
		h.changed = make(chan struct{})
	}
	h.mu.Unlock()
	g.log.Info("nbd export", "resource", g.resource, "io", m.String())
}

// errIOFailed is what a client gets while the primary fails I/O for lack
// of quorum: EIO on the wire.
type errIOFailed struct{ resource string }

func (e *errIOFailed) Error() string {
	return fmt.Sprintf("resource %s: I/O fails: the primary lost quorum (on-no-quorum: io-error)", e.resource)
}
func (e *errIOFailed) Is(target error) bool { return target == syscall.EIO }
func (e *errIOFailed) As(target any) bool {
	if p, ok := target.(*syscall.Errno); ok {
		*p = syscall.EIO
		return true
	}
	return false
}

// wait returns once requests may pass, with an error when they fail, or
// when ctx ends (the client went away) while held.
func (g *gate) wait(ctx context.Context) error {
	h := &g.hold
	for {
		h.mu.Lock()
		mode, ch := h.mode, h.changed
		h.mu.Unlock()
		switch mode {
		case manager.IOFail:
			return &errIOFailed{g.resource}
		case manager.IOSuspend:
			if ch == nil {
				return nil
			}
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return fmt.Errorf("resource %s: request held while I/O is suspended: %w", g.resource, ctx.Err())
			}
		}
		if h.leaseExpired() {
			if !h.leaseHeldLogged.Swap(true) {
				g.log.Warn("nbd export: the primary's lease ran out without the node manager suspending I/O (its loop is stalled?): holding requests until it is renewed", "resource", g.resource)
			}
			t := time.NewTimer(leaseRecheck)
			select {
			case <-ch:
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("resource %s: request held while the primary's lease is expired: %w", g.resource, ctx.Err())
			}
			t.Stop()
			continue
		}
		if h.leaseHeldLogged.Load() {
			h.leaseHeldLogged.Store(false)
		}
		return nil
	}
}
