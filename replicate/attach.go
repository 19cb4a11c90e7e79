package replicate

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/replicate/disk"
	"github.com/tandem-ha/tandem/replicate/md"
	"github.com/tandem-ha/tandem/replicate/wire"
)

// Attaching a replacement disk under a running volume (DRBD's attach).
//
// A failed secondary takes the new disk as an Inconsistent replica and
// connects again: the usual setup makes it the target of a full sync.
//
// A diskless primary keeps serving its clients through the peer while
// the new disk syncs: its reads, writes and flushes go on going to the
// peer only (nothing is acknowledged without it), and the peer, as
// source, copies its disk to the new one. The writes applied on the
// source while that runs are what a resync read may have missed, so the
// source marks each one out of sync again, and a resync read over a range
// that such a write touched while the read was in flight does not clear
// its bits (rsToken). One pass over the disk (a few, while they still
// shrink what is left), then stateAttachReady: the primary stops its
// writes for the last pass (it holds its I/O lock, so none is in flight
// and every one it sent has been applied and marked), sends
// stateAttachFinal, and the source sends what is still marked and ends
// with stateResyncDone. The new disk is then UpToDate with the source's
// generations, and the primary's I/O is local again from its next write.

// ErrDiskAttached: attach-disk on a replica whose disk has not failed.
var ErrDiskAttached = errors.New("replicate: the local disk has not failed")

// attachStallBytes: the source stops its passes under diskless writes
// once this little is left; the last pass, with the writes stopped, is
// then short.
const attachStallBytes = 64 << 20

// attachPasses bounds those passes: writes as fast as the resync leave as
// much behind as they find.
const attachPasses = 4

// Attach replaces the failed local disk with a new one: data is its data
// area, meta the metadata area, on which md.Create wrote metadata for
// this resource and node. The new disk starts Inconsistent and becomes
// UpToDate through a full sync from the peer. Refused unless the local
// disk failed: on a diskless primary it needs the peer connected,
// UpToDate and with wire.FeatureAttach (its clients go on meanwhile); a
// primary whose disk failed with no peer to serve it lost what it
// acknowledged alone, and must be demoted, not repaired.
func (v *Volume) Attach(ctx context.Context, data nbd.Device, meta disk.Disk) error {
	if v.closed.Load() {
		return ErrClosed
	}
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if v.closed.Load() {
		return ErrClosed
	}
	if !v.failed.Load() || v.attaching.Load() {
		return v.attachRefusal()
	}
	v.waitDetached()
	if err := v.attachRefusal(); err != nil {
		return err
	}
	primary := v.primary.Load()
	v.mu.Lock()
	l := v.sess
	v.mu.Unlock()
	m, err := v.openNewDisk(data, meta, primary)
	if err != nil {
		return err
	}
	old := v.disk.Swap(&localDisk{data: data, meta: m, bm: m.Bitmap(), size: v.Size()})
	// The failed disk's metadata is not closed: that would write to it.
	_ = old
	if !primary {
		v.diskRepaired()
		v.mu.Lock()
		v.standalone, v.reason, v.sessionReason = false, "", false
		if v.sess == nil {
			v.conn = Connecting
		}
		v.mu.Unlock()
		v.log.Info("replicate: new disk attached: Inconsistent until a full sync from the peer", "peer", v.cfg.Peer)
		v.wake()
		v.announce()
		return nil
	}
	v.attachPending.Store(true)
	v.log.Info("replicate: new disk attached under the diskless primary: it syncs from the peer while I/O goes on through it", "peer", v.cfg.Peer)
	return l.startAttach()
}

// AttachCheck says whether Attach would take a new disk now, without
// touching anything: the daemon checks before it writes metadata on the
// new disk.
func (v *Volume) AttachCheck() error {
	if v.closed.Load() {
		return ErrClosed
	}
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	return v.attachRefusal()
}

// attachRefusal is why Attach refuses, nil if it may go on; under ioMu.
func (v *Volume) attachRefusal() error {
	if !v.failed.Load() || v.attaching.Load() {
		return fmt.Errorf("replicate: %s: attach: %w (disk %s)", v.cfg.Resource, ErrDiskAttached, v.diskState(v.meta().Superblock()))
	}
	primary := v.primary.Load()
	v.mu.Lock()
	l, peer, conn := v.sess, v.peer, v.conn
	v.mu.Unlock()
	switch {
	case primary && !v.diskless.Load():
		return fmt.Errorf("replicate: %s: attach: %w: this primary's disk failed with no peer to stand in, so what it acknowledged alone is gone with that disk; demote it and promote the peer (or promote --force here after attaching as secondary)", v.cfg.Resource, ErrDiskFailed)
	case primary && (l == nil || !l.active.Load() || peer == nil || peer.Disk != UpToDate || conn != Connected):
		return fmt.Errorf("replicate: %s: attach: %w: the new disk syncs from the peer, which serves this diskless primary; retry once it is connected (now %s)", v.cfg.Resource, ErrNotConnected, conn)
	case primary && !l.c.PeerHas(wire.FeatureAttach):
		return fmt.Errorf("replicate: %s: attach: the peer's tandem predates attaching a disk under a diskless primary: upgrade it, or demote this node and attach it as secondary: %w", v.cfg.Resource, ErrNotConnected)
	case !primary && l != nil:
		return fmt.Errorf("replicate: %s: attach: %w: the session of the failed disk is still ending; retry", v.cfg.Resource, ErrBusy)
	}
	return nil
}

// openNewDisk opens the new disk's metadata and makes it an Inconsistent
// replica of this volume, all out of sync, at this node's epoch.
func (v *Volume) openNewDisk(data nbd.Device, meta disk.Disk, primary bool) (*md.Meta, error) {
	m, err := md.Open(meta)
	if err != nil {
		return nil, fmt.Errorf("replicate: %s: attach: opening the new disk's metadata: %w", v.cfg.Resource, err)
	}
	fail := func(err error) (*md.Meta, error) {
		_ = m.Close(false)
		return nil, fmt.Errorf("replicate: %s: attach: %w", v.cfg.Resource, err)
	}
	sb := m.Superblock()
	for _, n := range []struct{ what, have, want string }{
		{"cluster", sb.Cluster, v.cfg.Cluster}, {"resource", sb.Resource, v.cfg.Resource},
		{"node", sb.Node, v.cfg.Node}, {"peer", sb.Peer, v.cfg.Peer},
	} {
		if n.have != "" && n.have != n.want {
			return fail(fmt.Errorf("the new metadata belongs to %s %q, this volume is %q", n.what, n.have, n.want))
		}
	}
	switch {
	case sb.DataSize != v.Size() || sb.Granularity != v.gran:
		return fail(fmt.Errorf("the new metadata describes %d bytes at bitmap granularity %d, this volume has %d at %d", sb.DataSize, sb.Granularity, v.Size(), v.gran))
	case data.Size() < v.Size():
		return fail(fmt.Errorf("the new data area has %d bytes, the volume %d", data.Size(), v.Size()))
	}
	epoch := v.epoch.Load()
	old := v.meta().Superblock()
	err = m.Update(func(s *md.Superblock) {
		s.Flags = s.Flags&^(md.Consistent|md.Outdated|md.PeerOutdated|md.CrashedPrimary|md.WasPrimary) | md.FullSyncNeeded
		if primary {
			s.Flags |= md.WasPrimary
		}
		s.Epoch = max(s.Epoch, epoch)
		s.PromotedAt = old.PromotedAt
	})
	if err != nil {
		return fail(err)
	}
	m.Bitmap().Set(0, v.Size())
	if err := m.Bitmap().FlushAll(); err != nil {
		return fail(err)
	}
	m.SetDataSync(v.syncData)
	return m, nil
}

// startAttach makes this diskless primary the target of its new disk's
// sync: the peer, which serves it, is asked to copy its disk (after every
// write sent before).
func (l *link) startAttach() error {
	v := l.v
	p := newProgress(true, v.tunables().Resync.Checksum, v.Size(), v.now())
	v.mu.Lock()
	if v.sess != l || !l.active.Load() {
		v.mu.Unlock()
		return fmt.Errorf("replicate: %s: attach: %w", v.cfg.Resource, ErrPeerLost)
	}
	v.conn, v.resync = SyncTarget, p
	v.mu.Unlock()
	v.bm().Set(0, v.Size())
	l.attachOn.Store(true)
	v.attaching.Store(true)
	if _, ok := l.sendOrdered(wire.Frame{Type: wire.State, Offset: stateAttach}, 0); !ok {
		return fmt.Errorf("replicate: %s: attach: %w (the sync starts again at the next session)", v.cfg.Resource, ErrPeerLost)
	}
	v.announce()
	return nil
}

// attachFinal (primary) runs on stateAttachReady: with the I/O lock held
// no write is in flight, and every one sent was applied and marked on
// the source; the source's last pass then sends all the new disk lacks.
// The lock is held until the sync is done (finishTarget) or the link
// ends.
func (l *link) attachFinal() {
	defer l.background.Done()
	v := l.v
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if err := l.c.Write(wire.Frame{Type: wire.State, Offset: stateAttachFinal, Epoch: v.epoch.Load()}); err != nil {
		l.end(fmt.Sprintf("sending to the peer: %v", err), false)
		return
	}
	select {
	case <-l.attachDone:
	case <-l.stop:
	}
}

// attachSynced (primary, in finishTarget) leaves diskless: the new disk
// is UpToDate and the I/O lock still held by attachFinal.
func (l *link) attachSynced() {
	v := l.v
	v.diskRepaired()
	v.diskless.Store(false)
	v.attaching.Store(false)
	v.attachPending.Store(false)
	v.log.Info("replicate: the new disk is UpToDate: I/O is local again", "peer", v.cfg.Peer)
}

// attachEnded (primary, at teardown) goes back to plain diskless when the
// link ended before the new disk was synced; the next session starts the
// sync again (runSession), unless the new disk failed.
func (l *link) attachEnded() {
	v := l.v
	if !l.attachOn.Load() || !v.attaching.Load() {
		return
	}
	v.attaching.Store(false)
	if v.attachPending.Load() {
		v.log.Warn("replicate: the link ended during the new disk's sync: it starts again at the next session", "peer", v.cfg.Peer)
	}
}

// attachDiskFailed (primary) handles an error of the new disk during its
// sync: the disk is given up (attach-disk again with another one), and
// the session ends, to reconnect as a plain diskless primary.
func (l *link) attachDiskFailed(err error) {
	v := l.v
	v.attachPending.Store(false)
	v.log.Error("replicate: the new disk failed during its sync: given up; the primary stays diskless", "err", err)
	l.end(fmt.Sprintf("the new disk failed during its sync (%v); this primary stays diskless: attach another disk", err), true)
}

// ---- the source's side: the secondary serving the diskless primary ----

// rsToken is a resync read in flight on the source of an attach: a write
// applied over its range meanwhile marks it dirty, and a dirty token does
// not clear its bits (the next pass sends the range again).
type rsToken struct {
	off, end int64
	dirty    bool
}

// beginAttachSource (receive loop) starts the sync of the primary's new
// disk from this replica.
func (l *link) beginAttachSource(seq uint64) error {
	v := l.v
	if v.primary.Load() || !l.peerDiskGone.Load() || v.diskState(v.meta().Superblock()) != UpToDate {
		return fmt.Errorf("%w: the peer attaches a disk, and this node is %s, %s (serving it: %v)", errProtocol, v.role(), v.diskState(v.meta().Superblock()), l.peerDiskGone.Load())
	}
	if l.peerAttach.Swap(true) {
		return fmt.Errorf("%w: the peer attaches a disk twice in one session", errProtocol)
	}
	v.bm().Set(0, v.Size())
	if err := v.bm().FlushAll(); err != nil {
		return fmt.Errorf("replicate: recording the peer's new disk: %w", err)
	}
	if l.holdBackground() {
		go l.attachSource(seq)
	}
	return nil
}

// attachSource runs the sync of the primary's new disk as source.
func (l *link) attachSource(seq uint64) {
	v := l.v
	// Every write sent before the request is applied, and so either in
	// the data the passes read or marked by its applier.
	l.rord.waitBefore(seq, 0, math.MaxInt64)
	p := newProgress(true, v.tunables().Resync.Checksum, v.Size(), v.now())
	l.sourceRun(p, func() error {
		for pass := 0; pass < attachPasses; pass++ {
			if err := l.runResync(p, true); err != nil {
				return err
			}
			if v.bm().OutOfSyncBytes() <= attachStallBytes {
				break
			}
		}
		if err := l.c.Write(wire.Frame{Type: wire.State, Offset: stateAttachReady, Epoch: v.epoch.Load()}); err != nil {
			return fmt.Errorf("replicate: attach: %w", err)
		}
		select {
		case <-l.attachGo:
		case <-l.stop:
			return ErrPeerLost
		}
		if err := l.runResync(p, false); err != nil {
			return err
		}
		return l.finishSource()
	})
}

// attachTrack registers a resync read about to start (nil outside an
// attach).
func (l *link) attachTrack(off, n int64) *rsToken {
	if !l.peerAttach.Load() {
		return nil
	}
	t := &rsToken{off: off, end: off + n}
	l.attMu.Lock()
	l.attTokens[t] = struct{}{}
	l.attMu.Unlock()
	return t
}

// attachClear clears the bits of a confirmed range unless the token says
// a write touched it since the read (nil: outside an attach, always).
// Under attMu with the check: a write marks its range before or after,
// never between.
func (l *link) attachClear(t *rsToken, off, n int64) {
	if t == nil {
		l.v.bm().Clear(off, n)
		return
	}
	l.attMu.Lock()
	if !t.dirty {
		l.v.bm().Clear(off, n)
	}
	l.attMu.Unlock()
}

// attachRelease forgets a token.
func (l *link) attachRelease(t *rsToken) {
	if t == nil {
		return
	}
	l.attMu.Lock()
	delete(l.attTokens, t)
	l.attMu.Unlock()
}

// attachWritten (applier, after the write and before its ack) marks an
// application write of the diskless primary: the new disk does not have
// it until a resync read taken after it is confirmed.
func (l *link) attachWritten(off, n int64) {
	l.attMu.Lock()
	l.v.bm().Set(off, n)
	for t := range l.attTokens {
		if t.off < off+n && off < t.end {
			t.dirty = true
		}
	}
	l.attMu.Unlock()
}

// onAttachState handles the attach's State kinds.
func (l *link) onAttachState(f wire.Frame) error {
	v := l.v
	switch f.Offset {
	case stateAttach:
		return l.beginAttachSource(f.Seq)
	case stateAttachReady:
		if !l.attachOn.Load() || !v.attaching.Load() {
			return fmt.Errorf("%w: the peer is ready to end an attach this node did not start", errProtocol)
		}
		if l.holdBackground() {
			go l.attachFinal()
		}
	case stateAttachFinal:
		if !l.peerAttach.Load() {
			return fmt.Errorf("%w: the peer ends an attach this node does not serve", errProtocol)
		}
		l.attachGoOnce.Do(func() { close(l.attachGo) })
	}
	return nil
}
