package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/replicate"
)

// gate is the NBD export of one resource. It always exists, so clients see
// the same export list on both nodes, but it passes I/O to the volume only
// while this node is Primary; otherwise every request fails with EPERM
// (and the export is advertised read-only), and the daemon logs why. The
// primary bit is set by the daemon after a promotion succeeded, cleared
// before a demotion starts, and reconciled with the volume's status.
type gate struct {
	resource string
	node     string
	size     atomic.Int64 // while down; an open volume says its own (a resize grows it)
	log      *slog.Logger

	vol     atomic.Pointer[volumeRef] // nil while the resource is down
	primary atomic.Bool
	hold    ioHold // the cluster layer's suspend/fail (hold.go)

	mu      sync.Mutex
	lastLog time.Time
	refused int64 // since lastLog
}

type volumeRef struct{ Volume }

var (
	_ nbd.Device     = (*gate)(nil)
	_ nbd.Extenter   = (*gate)(nil)
	_ nbd.Cacher     = (*gate)(nil)
	_ nbd.FileSource = (*gate)(nil)
)

func newGate(resource, node string, size int64, log *slog.Logger) *gate {
	g := &gate{resource: resource, node: node, log: log}
	g.size.Store(size)
	return g
}

func (g *gate) setVolume(v Volume) {
	if v == nil {
		g.vol.Store(nil)
		g.primary.Store(false)
		return
	}
	g.vol.Store(&volumeRef{v})
}

// errNotServing is what a client of a non-primary export gets: EPERM on
// the wire, and a message in the daemon's log.
type errNotServing struct{ resource, node, why string }

func (e *errNotServing) Error() string {
	return fmt.Sprintf("resource %s is not served by node %s: %s; connect to the primary", e.resource, e.node, e.why)
}
func (e *errNotServing) Is(target error) bool {
	return target == replicate.ErrNotPrimary || target == syscall.EPERM
}
func (e *errNotServing) As(target any) bool {
	if p, ok := target.(*syscall.Errno); ok {
		*p = syscall.EPERM
		return true
	}
	return false
}

// serving returns the volume if requests may pass.
func (g *gate) serving(ctx context.Context) (Volume, error) {
	if err := g.wait(ctx); err != nil {
		return nil, err
	}
	ref := g.vol.Load()
	var why string
	switch {
	case ref == nil:
		why = "the resource is down on this node (see tandem status)"
	case !g.primary.Load():
		why = "it is not Primary here"
	default:
		return ref.Volume, nil
	}
	g.noteRefusal(why)
	return nil, &errNotServing{g.resource, g.node, why}
}

// available refuses new NBD clients while no request could pass: they are
// told at connect time, as DRBD refuses to open a Secondary, instead of
// opening a device whose every request fails. A client that connected
// while this node was primary keeps its session and gets EPERM after a
// demotion, then reconnects (to the VIP, on the new primary).
func (g *gate) available() error {
	var why string
	switch {
	case g.vol.Load() == nil:
		why = "the resource is down on this node (see tandem status)"
	case !g.primary.Load():
		why = "it is not Primary here"
	default:
		return nil
	}
	g.noteRefusal("connect refused: " + why)
	return &errNotServing{g.resource, g.node, why}
}

// noteRefusal logs refused requests at most once a second, with a count.
func (g *gate) noteRefusal(why string) {
	g.mu.Lock()
	g.refused++
	now := time.Now()
	if now.Sub(g.lastLog) < time.Second {
		g.mu.Unlock()
		return
	}
	n := g.refused
	g.refused, g.lastLog = 0, now
	g.mu.Unlock()
	g.log.Warn("nbd request refused", "resource", g.resource, "why", why, "refused", n)
}

// Size is what a new NBD connection is told: the volume's size (larger
// after tandem resize), or the configured one while the resource is down.
func (g *gate) Size() int64 {
	if ref := g.vol.Load(); ref != nil {
		return ref.Size()
	}
	return g.size.Load()
}

func (g *gate) Features() nbd.Features {
	ref := g.vol.Load()
	if ref == nil || !g.primary.Load() {
		return nbd.Features{ReadOnly: true, Flush: true, MultiConn: true}
	}
	return ref.Features()
}

func (g *gate) ReadAt(ctx context.Context, p []byte, off int64) error {
	v, err := g.serving(ctx)
	if err != nil {
		return err
	}
	return v.ReadAt(ctx, p, off)
}

func (g *gate) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	v, err := g.serving(ctx)
	if err != nil {
		return err
	}
	return v.WriteAt(ctx, p, off, fua)
}

func (g *gate) Flush(ctx context.Context) error {
	v, err := g.serving(ctx)
	if err != nil {
		return err
	}
	return v.Flush(ctx)
}

func (g *gate) Trim(ctx context.Context, off, length int64, fua bool) error {
	v, err := g.serving(ctx)
	if err != nil {
		return err
	}
	return v.Trim(ctx, off, length, fua)
}

func (g *gate) Zero(ctx context.Context, off, length int64, flags nbd.ZeroFlags) error {
	v, err := g.serving(ctx)
	if err != nil {
		return err
	}
	return v.Zero(ctx, off, length, flags)
}

// Extents and Cache pass on only when the volume has them (Features says
// whether the server may call them at all).
func (g *gate) Extents(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	v, err := g.serving(ctx)
	if err != nil {
		return nil, err
	}
	if e, ok := v.(nbd.Extenter); ok {
		return e.Extents(ctx, off, length)
	}
	return []nbd.Extent{{Length: length}}, nil
}

func (g *gate) Cache(ctx context.Context, off, length int64) error {
	v, err := g.serving(ctx)
	if err != nil {
		return err
	}
	if c, ok := v.(nbd.Cacher); ok {
		return c.Cache(ctx, off, length)
	}
	return nil
}

// FileRange lets reads go out with sendfile when the volume allows it; a
// refusal falls back to ReadAt, which reports it.
func (g *gate) FileRange(off, length int64) (*os.File, int64, bool) {
	ref := g.vol.Load()
	if ref == nil || !g.primary.Load() {
		return nil, 0, false
	}
	if fs, ok := ref.Volume.(nbd.FileSource); ok {
		return fs.FileRange(off, length)
	}
	return nil, 0, false
}
