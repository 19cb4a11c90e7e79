package replicate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/replicate/md"
	"github.com/tandem-ha/tandem/replicate/wire"
)

const (
	// resyncChunk is the most one resync frame carries.
	resyncChunk = 1 << 20
	// resyncWindow is how many chunks may await the target's ack.
	resyncWindow = 16
	// maxResyncGranularity: a chunk must hold whole bitmap bits, or a bit
	// could never be cleared.
	maxResyncGranularity = 16 << 20
	// digestSize: SHA-256 truncated; collisions stay far out of reach for
	// comparing two replicas of the same block.
	digestSize = 16
)

// progress tracks a resync or verify.
type progress struct {
	full, checksum bool
	total          int64
	start          time.Time
	done           atomic.Int64 // verify: bytes compared
	sent           atomic.Int64
	paused         atomic.Bool
}

func newProgress(full, checksum bool, total int64, now time.Time) *progress {
	return &progress{full: full, checksum: checksum, total: total, start: now}
}

// snapshot computes the public view; left < 0 means "from done" (verify),
// otherwise it is what the bitmap still marks (resync).
func (p *progress) snapshot(now time.Time, left int64) Progress {
	done := p.done.Load()
	if left >= 0 {
		left = min(left, p.total)
		done = p.total - left
	} else {
		left = p.total - done
	}
	out := Progress{Full: p.full, Checksum: p.checksum, TotalBytes: p.total, DoneBytes: done, LeftBytes: left, SentBytes: p.sent.Load(), Paused: p.paused.Load()}
	if p.total > 0 {
		out.Percent = float64(done) * 100 / float64(p.total)
	} else {
		out.Percent = 100
	}
	if el := now.Sub(p.start).Seconds(); el > 0 {
		out.Rate = float64(done) / el
		if out.Rate > 0 {
			out.ETASeconds = float64(left) / out.Rate
		}
	}
	return out
}

// digests returns the truncated SHA-256 of every granule of b.
func digests(b []byte, gran int64) []byte {
	out := make([]byte, 0, (int64(len(b))+gran-1)/gran*digestSize)
	for off := int64(0); off < int64(len(b)); off += gran {
		sum := sha256.Sum256(b[off:min(off+gran, int64(len(b)))])
		out = append(out, sum[:digestSize]...)
	}
	return out
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, resyncChunk); return &b }}

func getBuf(n int64) *[]byte {
	if n > resyncChunk {
		b := make([]byte, n)
		return &b
	}
	return bufPool.Get().(*[]byte)
}

func putBuf(b *[]byte) {
	if cap(*b) == resyncChunk {
		bufPool.Put(b)
	}
}

// readOrdered reads [off, off+n) at a point of the ordered stream and
// queues the frame mk builds from it, all under seqMu: the read sees
// every earlier write and none of the later ones, and the peer handles
// the frame at the same point of its order. So a resync read can never
// carry older data over a newer application write.
func (l *link) readOrdered(off, n int64, mk func(seq uint64, data []byte) wire.Frame, need wire.MsgType, keep bool) (*waiter, []byte, error) {
	v := l.v
	b := getBuf(n)
	buf := (*b)[:n]
	v.sending.Add(1)
	v.seqMu.Lock()
	v.nextSeq++
	seq := v.nextSeq
	v.ord.waitBefore(seq, off, off+n)
	err := v.data().ReadAt(v.ctx, buf, off)
	var w *waiter
	ok := false
	if err == nil {
		w, ok = l.queueLocked(mk(seq, buf), need, -1, 0)
	}
	v.seqMu.Unlock()
	if v.sending.Add(-1) == 0 {
		l.flush()
	}
	var out []byte
	if keep && err == nil {
		out = append([]byte(nil), buf...)
	}
	putBuf(b)
	if err != nil {
		return nil, nil, v.diskFailed("resync read", err)
	}
	if !ok {
		return nil, nil, ErrPeerLost
	}
	return w, out, nil
}

// queueInSync tells the target that a range is equal on both sides.
func (l *link) queueInSync(off, n int64) {
	v := l.v
	v.sending.Add(1)
	v.seqMu.Lock()
	v.nextSeq++
	l.queueLocked(wire.Frame{Type: wire.ResyncRequest, Seq: v.nextSeq, Offset: uint64(off), Length: uint32(n)}, 0, -1, 0)
	v.seqMu.Unlock()
	if v.sending.Add(-1) == 0 {
		l.flush()
	}
}

// resyncSource runs a resync as source on an established link.
func (l *link) resyncSource(full bool) {
	v := l.v
	p := newProgress(full, v.tunables().Resync.Checksum, v.bm().OutOfSyncBytes(), v.now())
	l.sourceRun(p, func() error {
		if err := l.runResync(p, false); err != nil {
			return err
		}
		return l.finishSource()
	})
}

// sourceRun runs a resync as source (run), with its status and logs;
// l.background was added for it.
func (l *link) sourceRun(p *progress, run func() error) {
	defer l.background.Done()
	v := l.v
	v.mu.Lock()
	if v.sess != l {
		v.mu.Unlock()
		return
	}
	v.resync, v.conn = p, SyncSource
	v.mu.Unlock()
	v.log.Info("replicate: resync started as source", "bytes", p.total, "full", p.full, "checksum", p.checksum, "attach", l.peerAttach.Load())
	err := run()
	v.mu.Lock()
	if v.sess == l && v.resync == p {
		v.resync = nil
		if err == nil {
			v.conn = Connected
			last := p.snapshot(v.now(), 0)
			v.lastResync = &last
		}
	}
	v.mu.Unlock()
	if err != nil {
		v.log.Warn("replicate: resync interrupted", "err", err, "left", v.bm().OutOfSyncBytes())
		return
	}
	v.log.Info("replicate: resync finished as source", "sent", p.sent.Load())
}

// runResync sends what the bitmap marks until none is left, or, with
// pass, once through it.
func (l *link) runResync(p *progress, pass bool) error {
	v := l.v
	tn := v.tunables()
	ctl := newRateController(tn.Resync, v.now())
	sem := make(chan struct{}, resyncWindow)
	var wg sync.WaitGroup
	var failed atomic.Value
	fail := func(err error) { failed.CompareAndSwap(nil, err) }
	chunk := max(int64(resyncChunk), v.gran)
	cursor := int64(0)
	for {
		if err, _ := failed.Load().(error); err != nil {
			wg.Wait()
			return err
		}
		select {
		case <-l.stop:
			wg.Wait()
			return ErrPeerLost
		default:
		}
		if v.syncPaused() != nil || l.peerPaused() != nil {
			p.paused.Store(true)
			v.log.Info("replicate: resync paused by the administrator", "left", v.bm().OutOfSyncBytes(), "here", v.syncPaused() != nil, "on_the_target", l.peerPaused() != nil)
			// Until neither side holds it (a nil channel never fires).
			for local, peer := v.syncPaused(), l.peerPaused(); local != nil || peer != nil; local, peer = v.syncPaused(), l.peerPaused() {
				select {
				case <-l.stop:
					p.paused.Store(false)
					wg.Wait()
					return ErrPeerLost
				case <-local:
				case <-peer:
				}
			}
			p.paused.Store(false)
			v.log.Info("replicate: resync resumed", "left", v.bm().OutOfSyncBytes())
			// The pause is not owed back as a burst.
			ctl = newRateController(tn.Resync, v.now())
		}
		if cur := v.tunables(); cur != tn {
			// tandem adjust: the new rate from the next chunk on.
			tn = cur
			ctl = newRateController(tn.Resync, v.now())
		}
		off, n, ok := v.bm().NextSet(cursor)
		if !ok {
			wg.Wait()
			if err, _ := failed.Load().(error); err != nil {
				return err
			}
			if _, _, again := v.bm().NextSet(0); !again || pass {
				return nil
			}
			cursor = 0
			continue
		}
		n = min(n, chunk)
		cursor = off + n
		if d := ctl.delay(v.now(), n, v.appBytes.Load()); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-l.stop:
				t.Stop()
				wg.Wait()
				return ErrPeerLost
			case <-t.C:
			}
		}
		sem <- struct{}{}
		ctl.sent(v.now(), n)
		wg.Add(1)
		if p.checksum {
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := l.resyncChecksum(off, n, p); err != nil {
					fail(err)
				}
			}()
			continue
		}
		tok := l.attachTrack(off, n)
		w, _, err := l.readOrdered(off, n, func(seq uint64, b []byte) wire.Frame {
			return wire.Frame{Type: wire.ResyncData, Seq: seq, Offset: uint64(off), Length: uint32(n), Payload: b}
		}, wire.Written, false)
		if err != nil {
			l.attachRelease(tok)
			<-sem
			wg.Done()
			fail(err)
			continue
		}
		p.sent.Add(n)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer l.attachRelease(tok)
			if err := l.wait(v.ctx, w); err != nil {
				fail(err)
				return
			}
			l.cleared(off, n, tok)
		}()
	}
}

// cleared clears source bits the target confirmed, writing the bitmap
// now and then so a restart does not redo everything.
func (l *link) cleared(off, n int64, tok *rsToken) {
	v := l.v
	if !l.clearConfirmed(off, n, tok) {
		return
	}
	if l.srcCleared.Add(n) >= 32<<20 {
		l.srcCleared.Store(0)
		if err := v.bm().FlushAll(); err != nil {
			v.log.Warn("replicate: writing the bitmap during resync", "err", err)
		}
	}
}

// clearConfirmed clears the source's bits of a range the target holds
// as this side read it, unless the link was lost meanwhile. The target's
// confirmation covers the data of the read, not writes to the range made
// after it: those reached the peer (and sit in the transfer log, whose
// bits the teardown sets if the link is lost) or were written without it
// (and set their own bits once they saw the link gone). So a clear is
// only safe while the link is up, atomically with the teardown, which
// marks the link inactive and dead under pendMu before it sets the
// transfer log's bits; a write that finds no link got there after that.
//
// During an attach, tok (taken before the read) says whether a write
// touched the range since: then the bits stay (attach.go).
func (l *link) clearConfirmed(off, n int64, tok *rsToken) bool {
	if h := l.v.beforeResyncClear.Load(); h != nil {
		(*h)(off, n)
	}
	l.pendMu.Lock()
	defer l.pendMu.Unlock()
	if l.dead || !l.active.Load() {
		return false
	}
	l.attachClear(tok, off, n)
	return true
}

// resyncChecksum compares digests of a chunk first and sends only the
// granules that differ.
func (l *link) resyncChecksum(off, n int64, p *progress) error {
	v := l.v
	// One token for the chunk: a write to it after the digests were
	// read makes them (and the data read later) possibly stale.
	tok := l.attachTrack(off, n)
	defer l.attachRelease(tok)
	w, local, err := l.readOrdered(off, n, func(seq uint64, _ []byte) wire.Frame {
		return wire.Frame{Type: wire.VerifyRequest, Seq: seq, Offset: uint64(off), Length: uint32(n)}
	}, wire.VerifyDigest, true)
	if err != nil {
		return err
	}
	mine := digests(local, v.gran)
	theirs, err := l.waitPayload(v.ctx, w)
	if err != nil {
		return err
	}
	if len(theirs) != len(mine) {
		return fmt.Errorf("%w: %d digest bytes for %d bytes at %d, expected %d", errProtocol, len(theirs), n, off, len(mine))
	}
	for _, r := range compareDigests(mine, theirs, off, n, v.gran) {
		if !r.differ {
			if !l.clearConfirmed(r.off, r.n, tok) {
				return ErrPeerLost
			}
			l.queueInSync(r.off, r.n)
			continue
		}
		w, _, err := l.readOrdered(r.off, r.n, func(seq uint64, b []byte) wire.Frame {
			return wire.Frame{Type: wire.ResyncData, Seq: seq, Offset: uint64(r.off), Length: uint32(r.n), Payload: b}
		}, wire.Written, false)
		if err != nil {
			return err
		}
		p.sent.Add(r.n)
		if err := l.wait(v.ctx, w); err != nil {
			return err
		}
		l.cleared(r.off, r.n, tok)
	}
	return nil
}

type digestRun struct {
	off, n int64
	differ bool
}

// compareDigests splits [off, off+n) into runs of granules that are equal
// or differ.
func compareDigests(mine, theirs []byte, off, n, gran int64) []digestRun {
	var runs []digestRun
	for i := 0; i*digestSize < len(mine); i++ {
		d := !bytes.Equal(mine[i*digestSize:(i+1)*digestSize], theirs[i*digestSize:(i+1)*digestSize])
		o := off + int64(i)*gran
		ln := min(gran, off+n-o)
		if k := len(runs) - 1; k >= 0 && runs[k].differ == d && runs[k].off+runs[k].n == o {
			runs[k].n += ln
			continue
		}
		runs = append(runs, digestRun{off: o, n: ln, differ: d})
	}
	return runs
}

// finishSource ends a resync on the source: the bitmap's base generation
// goes to the history, and the target takes this side's generations.
func (l *link) finishSource() error {
	v := l.v
	// Not once this side wrote without the peer (the link went after the
	// last confirmation): the bitmap records against the generation that
	// the degraded write moved to, which must stay its base.
	v.degMu.Lock()
	// Serving a diskless primary, the rotation is the one that recorded
	// its disk failure (peerDiskLost), not a write without the peer.
	if v.rotated && !l.peerAttach.Load() {
		v.degMu.Unlock()
		return fmt.Errorf("replicate: finishing resync: written without the peer meanwhile: %w", ErrPeerLost)
	}
	err := v.meta().Update(func(s *md.Superblock) {
		g := genFromMD(s.Gen)
		g.pushHistory(g.Bitmap)
		g.Bitmap = 0
		s.Gen = genToMD(g)
		s.Flags &^= md.PeerOutdated | md.CrashedPrimary
	})
	v.degMu.Unlock()
	if err != nil {
		return fmt.Errorf("replicate: finishing resync: %w", err)
	}
	if err := v.bm().FlushAll(); err != nil {
		return fmt.Errorf("replicate: finishing resync: %w", err)
	}
	st := v.localState()
	return l.c.Write(wire.Frame{Type: wire.State, Offset: stateResyncDone, Epoch: st.Epoch, Payload: st.marshal()})
}

// startResyncSource starts a resync from this side on an established,
// idle link (after a verify with repair) and waits for it.
func (l *link) startResyncSource(ctx context.Context) error {
	v := l.v
	if err := l.c.Write(wire.Frame{Type: wire.State, Offset: stateResyncBegin, Epoch: v.epoch.Load()}); err != nil {
		return fmt.Errorf("replicate: starting resync: %w", err)
	}
	if !l.holdBackground() {
		return ErrPeerLost
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.resyncSource(false)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if v.bm().Dirty() {
		return fmt.Errorf("replicate: repair resync did not finish: %w", ErrPeerLost)
	}
	return nil
}

// PauseSync holds every resync to or from this node (the running one and
// those of later sessions) before its next chunk, until ResumeSync
// (DRBD's pause-sync, from either side). As source this node holds its
// own loop; as target it asks the source to hold (stateSyncPause), again
// at each new session. Application writes go on, replicated and marked
// as usual. A pause is not persistent: a restarted daemon resyncs.
// Refused on a sync target whose source's tandem predates the request.
func (v *Volume) PauseSync(ctx context.Context) error {
	if v.closed.Load() {
		return ErrClosed
	}
	v.mu.Lock()
	if v.conn == SyncTarget && v.sess != nil && !v.sess.c.PeerHas(wire.FeatureTargetPause) {
		v.mu.Unlock()
		return fmt.Errorf("replicate: %s: pause-sync: the resync is driven by its source, whose tandem is older: pause it on %s: %w", v.cfg.Resource, v.cfg.Peer, ErrIsSyncTarget)
	}
	if v.syncResumed == nil {
		v.syncResumed = make(chan struct{})
		v.log.Info("replicate: resyncs paused by the administrator")
	}
	l := v.sess
	v.mu.Unlock()
	if l != nil && l.active.Load() {
		l.sendPause(true) // a resync to this node holds (the peer as source)
	}
	return nil
}

// ResumeSync lets paused resyncs go on (a no-op when none is paused).
func (v *Volume) ResumeSync(ctx context.Context) error {
	if v.closed.Load() {
		return ErrClosed
	}
	v.mu.Lock()
	if v.syncResumed == nil {
		v.mu.Unlock()
		return nil
	}
	close(v.syncResumed)
	v.syncResumed = nil
	v.log.Info("replicate: resyncs resumed by the administrator")
	l := v.sess
	v.mu.Unlock()
	if l != nil && l.active.Load() {
		l.sendPause(false)
	}
	return nil
}

// syncPaused is the channel closed on resume, or nil when not paused.
func (v *Volume) syncPaused() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.syncResumed
}
