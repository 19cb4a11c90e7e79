package daemon

import (
	"context"
	"fmt"
	"sync"
	"syscall"

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
		return nil
	}
}
