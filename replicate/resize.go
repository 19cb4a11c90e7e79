package replicate

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/replicate/disk"
	"github.com/tandem-ha/tandem/replicate/md"
	"github.com/tandem-ha/tandem/replicate/wire"
)

// Growing a volume online (DRBD's resize, grow only). The primary drives
// it with its peer connected and in sync: it stops its I/O (ioMu), asks
// the peer to grow (stateResize, ordered after every write sent before),
// and once the peer has (stateResized), grows its own disk and lets I/O
// go on at the new size. Each side's metadata moves with md.Grow; the new
// range is out of sync on both (what the grown devices hold there is
// unknown) and the primary resyncs it to the peer at once, unless the
// caller knows both hold the same bytes there (assume-clean). NBD clients
// connected before keep the size they were told; new connections see the
// new one.
//
// If the peer grew and the primary then cannot, the primary's metadata
// write failed: its disk is failed like any other, and the primary goes on
// diskless through the peer, whose larger data area serves it. If the link
// drops between the two, the next setup finds different sizes and says
// so: both stay StandAlone until the admin finishes the resize (a restart
// of the smaller side with the new size grows it as a new session's
// secondary; see Config.Grow).

// ErrResizeRefused: the new size cannot be taken (not larger, not
// aligned, the peer or this node has no room or another configuration).
var ErrResizeRefused = errors.New("replicate: resize refused")

// resizeTimeout bounds the wait for the peer's answer: it writes a new
// copy of its metadata (the bitmap grows by a page per 128 MiB at 4 KiB
// granularity).
const resizeTimeout = 2 * time.Minute

// GrowTarget is a local disk made larger, as Config.Grow returns it.
type GrowTarget struct {
	// Data is the data area at the new size.
	Data nbd.Device
	// Meta is where the grown metadata goes: the area it is on, made
	// larger (InPlace: an external file), or a new area behind the new
	// end of the data (internal metadata), which must not overlap the
	// old one.
	Meta    disk.Disk
	InPlace bool
	// Release gives up what Grow opened when the volume does not take
	// it (nil: nothing to give up).
	Release func()
	// Done tells the caller the volume took it (nil: nothing to do).
	Done func()
}

func (t GrowTarget) release() {
	if t.Release != nil {
		t.Release()
	}
}

// ResizeOptions qualify Resize.
type ResizeOptions struct {
	// AssumeClean: both devices hold the same bytes in the new range, so
	// it is not resynced (DRBD's --assume-clean).
	AssumeClean bool
	// AssumePeerHasSpace: with no session (the peer down or
	// disconnected), grow this node alone; the peer grows when it next
	// connects, if its file says the same size and its device holds it
	// (else it stays StandAlone saying why). The new range is resynced
	// then. DRBD's --assume-peer-has-space.
	AssumePeerHasSpace bool
}

// Resize grows the volume to size bytes on both replicas: run on the
// primary, connected to an UpToDate peer that announces
// wire.FeatureResize, with no resync or verify running. On a node (either
// role) whose last setup refused a peer of exactly size bytes, it grows
// this node alone and connects (a resize whose end it missed). Both nodes'
// Config.Grow must give a disk of that size. The new range is resynced
// to the peer unless assumeClean. Resize to the current size does
// nothing; a smaller one is refused (shrinking is not supported).
func (v *Volume) Resize(ctx context.Context, size int64, opts ResizeOptions) error {
	assumeClean := opts.AssumeClean
	if v.closed.Load() {
		return ErrClosed
	}
	res := v.cfg.Resource
	cur := v.Size()
	v.mu.Lock()
	alone := v.sess == nil && v.peerSize.Load() == size && size > cur
	v.mu.Unlock()
	switch {
	case v.cfg.Grow == nil:
		return fmt.Errorf("replicate: %s: resize: %w: this volume has no way to grow its disk", res, ErrResizeRefused)
	case !v.primary.Load() && !alone:
		return fmt.Errorf("replicate: %s: resize: %w: the primary grows both replicas; run it there", res, ErrNotPrimary)
	case v.failed.Load():
		return fmt.Errorf("replicate: %s: resize: %w: replace the disk first", res, ErrDiskFailed)
	case size == cur:
		return nil
	case size < cur:
		return fmt.Errorf("replicate: %s: resize to %d bytes: %w: the volume has %d and shrinking is not supported", res, size, ErrResizeRefused, cur)
	case size%md.BlockSize != 0:
		return fmt.Errorf("replicate: %s: resize to %d bytes: %w: not a multiple of %d", res, size, ErrResizeRefused, md.BlockSize)
	}
	if !v.resizing.CompareAndSwap(false, true) {
		return fmt.Errorf("replicate: %s: resize: %w: another resize runs", res, ErrBusy)
	}
	defer v.resizing.Store(false)
	if alone {
		return v.growAlone(ctx, size, true)
	}
	v.mu.Lock()
	noSession := v.sess == nil || !v.sess.active.Load()
	v.mu.Unlock()
	if noSession && opts.AssumePeerHasSpace && v.primary.Load() {
		return v.growAlone(ctx, size, false)
	}
	l, err := v.resizeLink()
	if err != nil {
		return err
	}
	tgt, err := v.cfg.Grow(ctx, size)
	if err != nil {
		return fmt.Errorf("replicate: %s: resize: %w", res, err)
	}
	taken := false
	defer func() {
		if !taken {
			tgt.release()
		}
	}()
	if tgt.Data.Size() < size {
		return fmt.Errorf("replicate: %s: resize: %w: the grown data area has %d bytes, not %d", res, ErrResizeRefused, tgt.Data.Size(), size)
	}

	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if l2, err := v.resizeLink(); err != nil {
		return err
	} else if l2 != l {
		return fmt.Errorf("replicate: %s: resize: %w: the session changed; retry", res, ErrPeerLost)
	}
	payload := make([]byte, 9)
	binary.BigEndian.PutUint64(payload, uint64(size))
	if assumeClean {
		payload[8] = 1
	}
	w, ok := l.sendOrdered(wire.Frame{Type: wire.State, Offset: stateResize, Payload: payload}, wire.State)
	if !ok {
		return fmt.Errorf("replicate: %s: resize: %w", res, ErrPeerLost)
	}
	wctx, cancel := context.WithTimeout(ctx, resizeTimeout)
	answer, err := l.waitPayload(wctx, w)
	cancel()
	if err != nil {
		// The peer may have grown: the next setup compares the sizes.
		l.end(fmt.Sprintf("no answer to a resize to %d bytes: %v", size, err), false)
		return fmt.Errorf("replicate: %s: resize: waiting for the peer: %w (the session was ended; tandem status says whether the peer grew)", res, err)
	}
	if len(answer) < 1 || answer[0] != 0 {
		why := "no reason given"
		if len(answer) > 1 {
			why = string(answer[1:])
		}
		return fmt.Errorf("replicate: %s: resize: %w: the peer: %s", res, ErrResizeRefused, why)
	}
	if err := v.growLocal(tgt, size, assumeClean); err != nil {
		taken = true // what grew was given up by growLocal
		return fmt.Errorf("replicate: %s: resize: %w", res, v.diskFailed("growing the metadata", err))
	}
	taken = true
	v.log.Info("replicate: resized", "from", cur, "to", size, "resync", !assumeClean)
	v.announce()
	if !assumeClean && l.holdBackground() {
		go func() {
			defer l.background.Done()
			if err := l.startResyncSource(v.ctx); err != nil {
				v.log.Warn("replicate: resync of the grown range", "err", err)
			}
		}()
	}
	return nil
}

// sizeMismatch records a peer of another size met at a setup and says
// what to do.
func (v *Volume) sizeMismatch(peer, local int64) string {
	v.peerSize.Store(peer)
	if peer > local {
		return fmt.Sprintf("the peer's data area is %d bytes, this node's %d: the peer grew in a resize whose end this node missed (the link dropped); run the resize again on this node (tandem resize), which grows it alone to the peer's size, and they connect", peer, local)
	}
	return fmt.Sprintf("the peer's data area is %d bytes, this node's %d: the peer missed the end of a resize (the link dropped); run the resize again on the peer (tandem resize there grows it alone to this node's size)", peer, local)
}

// growAlone grows this node without its peer (the new range out of sync,
// so the next session resyncs it): to finish a resize that the peer
// finished and this node missed (the peer refused at the last setup for
// having exactly size bytes; then it connects again), or, with
// AssumePeerHasSpace, ahead of a peer that grows when it connects.
func (v *Volume) growAlone(ctx context.Context, size int64, connect bool) error {
	res := v.cfg.Resource
	tgt, err := v.cfg.Grow(ctx, size)
	if err != nil {
		return fmt.Errorf("replicate: %s: resize: %w", res, err)
	}
	if tgt.Data.Size() < size {
		tgt.release()
		return fmt.Errorf("replicate: %s: resize: %w: the grown data area has %d bytes, not %d", res, ErrResizeRefused, tgt.Data.Size(), size)
	}
	v.ioMu.Lock()
	v.mu.Lock()
	sess := v.sess
	v.mu.Unlock()
	if sess != nil {
		v.ioMu.Unlock()
		tgt.release()
		return fmt.Errorf("replicate: %s: resize: %w: a session started meanwhile; retry", res, ErrBusy)
	}
	err = v.growLocal(tgt, size, false)
	v.ioMu.Unlock()
	if err != nil {
		return fmt.Errorf("replicate: %s: resize: %w", res, v.diskFailed("growing the metadata", err))
	}
	v.peerSize.Store(0)
	v.announce()
	if !connect {
		v.log.Info("replicate: resized alone; the peer grows when it connects", "to", size)
		return nil
	}
	v.log.Info("replicate: resized alone to the peer's size; connecting", "to", size)
	return v.Connect(ctx)
}

// resizeLink is the session Resize needs: connected, the peer UpToDate
// and able to grow, nothing else running.
func (v *Volume) resizeLink() (*link, error) {
	res := v.cfg.Resource
	v.mu.Lock()
	l, peer, conn, busy := v.sess, v.peer, v.conn, v.resync != nil || v.verify != nil
	v.mu.Unlock()
	switch {
	case l == nil || !l.active.Load() || peer == nil:
		return nil, fmt.Errorf("replicate: %s: resize: %w: both replicas grow together; connect the peer first", res, ErrNotConnected)
	case busy || conn != Connected:
		return nil, fmt.Errorf("replicate: %s: resize: %w: the link is %s; wait until it is Connected", res, ErrBusy, conn)
	case peer.Disk != UpToDate:
		return nil, fmt.Errorf("replicate: %s: resize: %w: the peer is %s; resize once it is UpToDate", res, ErrNotConnected, peer.Disk)
	case !l.c.PeerHas(wire.FeatureResize):
		return nil, fmt.Errorf("replicate: %s: resize: %w: the peer's tandem predates online resize; upgrade it", res, ErrNotConnected)
	}
	return l, nil
}

// growLocal moves this node's metadata to the grown disk and takes it. The
// caller holds ioMu (no I/O in flight) and gave up the target on failure.
func (v *Volume) growLocal(tgt GrowTarget, size int64, assumeClean bool) error {
	old := v.disk.Load()
	m, err := old.meta.Grow(tgt.Meta, size, md.GrowOptions{InPlace: tgt.InPlace, AssumeClean: assumeClean})
	if err != nil {
		tgt.release()
		return err
	}
	v.disk.Store(&localDisk{data: tgt.Data, meta: m, bm: m.Bitmap(), size: size})
	if tgt.Done != nil {
		tgt.Done()
	}
	return nil
}

// onResize (secondary) grows this replica as the primary asks, after
// every write the primary sent before, and answers.
func (l *link) onResize(f wire.Frame) error {
	v := l.v
	if len(f.Payload) != 9 || f.Payload[8] > 1 {
		return fmt.Errorf("%w: a resize with a %d-byte payload", errProtocol, len(f.Payload))
	}
	size := int64(binary.BigEndian.Uint64(f.Payload))
	if size <= 0 || size > math.MaxInt64/2 {
		return fmt.Errorf("%w: a resize to %d bytes", errProtocol, size)
	}
	if !l.holdBackground() {
		return nil
	}
	go func() {
		defer l.background.Done()
		err := l.growForPeer(f.Seq, size, f.Payload[8] == 1)
		answer := []byte{0}
		if err != nil {
			v.log.Warn("replicate: the primary's resize refused", "size", size, "err", err)
			answer = append([]byte{1}, err.Error()...)
		}
		if werr := l.c.Write(wire.Frame{Type: wire.State, Offset: stateResized, Seq: f.Seq, Epoch: v.epoch.Load(), Payload: answer}); werr != nil {
			l.end(fmt.Sprintf("sending to the peer: %v", werr), false)
		}
	}()
	return nil
}

func (l *link) growForPeer(seq uint64, size int64, assumeClean bool) error {
	v := l.v
	l.rord.waitBefore(seq, 0, math.MaxInt64)
	l.applying.Wait()
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	switch {
	case v.primary.Load():
		return fmt.Errorf("%w: this node is primary too", ErrResizeRefused)
	case v.failed.Load():
		return fmt.Errorf("%w: this node's disk failed", ErrResizeRefused)
	case v.Size() == size:
		return nil // a retry after the answer was lost
	case v.Size() > size:
		return fmt.Errorf("%w: this node has %d bytes already, more than %d", ErrResizeRefused, v.Size(), size)
	case v.cfg.Grow == nil:
		return fmt.Errorf("%w: this node's volume has no way to grow its disk", ErrResizeRefused)
	}
	tgt, err := v.cfg.Grow(v.ctx, size)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrResizeRefused, err)
	}
	if tgt.Data.Size() < size {
		tgt.release()
		return fmt.Errorf("%w: the grown data area has %d bytes, not %d", ErrResizeRefused, tgt.Data.Size(), size)
	}
	if err := v.growLocal(tgt, size, assumeClean); err != nil {
		return fmt.Errorf("%w: %v", ErrResizeRefused, v.diskFailed("growing the metadata", err))
	}
	v.log.Info("replicate: resized for the primary", "to", size, "resync", !assumeClean)
	v.announce()
	return nil
}

// sendOrdered queues f with the next sequence number, after every frame
// sent before (the peer's appliers order it after the writes it follows),
// registering an answer of type need (0: none).
func (l *link) sendOrdered(f wire.Frame, need wire.MsgType) (*waiter, bool) {
	v := l.v
	v.sending.Add(1)
	v.seqMu.Lock()
	v.nextSeq++
	f.Seq = v.nextSeq
	w, ok := l.queueLocked(f, need, -1, 0)
	v.seqMu.Unlock()
	if v.sending.Add(-1) == 0 {
		l.flush()
	}
	return w, ok
}

// growsAtSetup says whether a setup mends a size difference itself: a
// secondary smaller than its primary grows to it (growHere on the
// secondary, growThere on the primary), as after a resize the secondary
// missed (Resize with AssumePeerHasSpace, or the secondary down). Both
// sides compute it from the two Hellos, so they agree.
func growsAtSetup(local, peer peerState, peerCanResize bool) (growHere, growThere bool) {
	if local.Gran != peer.Gran || !peerCanResize {
		return false, false
	}
	growHere = local.Role != Primary && peer.Role == Primary && peer.Size > local.Size
	growThere = local.Role == Primary && peer.Role != Primary && peer.Size < local.Size
	return growHere, growThere
}

// growToPeer (secondary, in a setup: ioMu held) grows this replica to the
// primary's size, the new range out of sync.
func (v *Volume) growToPeer(size int64) error {
	if v.cfg.Grow == nil {
		return fmt.Errorf("%w: this volume has no way to grow its disk", ErrResizeRefused)
	}
	if v.failed.Load() {
		return fmt.Errorf("%w: this node's disk failed", ErrResizeRefused)
	}
	tgt, err := v.cfg.Grow(v.ctx, size)
	if err != nil {
		return err
	}
	if tgt.Data.Size() < size {
		tgt.release()
		return fmt.Errorf("%w: the grown data area has %d bytes, not %d", ErrResizeRefused, tgt.Data.Size(), size)
	}
	if err := v.growLocal(tgt, size, false); err != nil {
		return v.diskFailed("growing the metadata", err)
	}
	v.log.Info("replicate: grown to the primary's size at connect", "to", size)
	return nil
}
