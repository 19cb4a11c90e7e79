package replicate

import (
	"context"
	"fmt"
	"time"

	"github.com/tandem-ha/tandem/replicate/wire"
)

// verifyChunk is the range one VerifyRequest covers.
const verifyChunk = 1 << 20

// verifyWindow is how many requests may be outstanding.
const verifyWindow = 4

// Verify compares both replicas online, chunk by chunk: each side hashes
// every bitmap granule at the same point of the ordered stream, so
// application writes may go on. It reports the differing ranges exactly
// (granule by granule, adjacent ones merged). With repair it marks them
// out of sync and resyncs them from this side. On the secondary of a
// primary it asks the primary to run it (verify_remote.go); with neither
// primary, the node it is called on compares. It needs a connected, idle
// link.
func (v *Volume) Verify(ctx context.Context, repair bool) (VerifyReport, error) {
	if v.closed.Load() {
		return VerifyReport{}, ErrClosed
	}
	if v.failed.Load() {
		return VerifyReport{}, fmt.Errorf("replicate: %s: verify: this node's disk is gone (replace it, then verify): %w", v.cfg.Resource, ErrDiskFailed)
	}
	if v.resizing.Load() {
		return VerifyReport{}, fmt.Errorf("replicate: %s: verify: a resize runs: %w", v.cfg.Resource, ErrBusy)
	}
	v.mu.Lock()
	l, conn, peer := v.sess, v.conn, v.peer
	var p *progress
	switch {
	case l == nil || peer == nil || !l.active.Load():
		v.mu.Unlock()
		return VerifyReport{}, fmt.Errorf("replicate: %s: verify: %w", v.cfg.Resource, ErrNotConnected)
	case peer.Role == Primary:
		v.mu.Unlock()
		return l.verifyOnPeer(ctx, repair)
	case conn != Connected:
		v.mu.Unlock()
		return VerifyReport{}, fmt.Errorf("replicate: %s: verify: the link is %s: %w", v.cfg.Resource, conn, ErrBusy)
	}
	p = newProgress(true, true, v.Size(), v.now())
	v.verify, v.conn = p, VerifySource
	v.mu.Unlock()
	end := func() {
		v.mu.Lock()
		if v.verify == p {
			v.verify = nil
			if v.sess == l && v.conn == VerifySource {
				v.conn = Connected
			}
		}
		v.mu.Unlock()
	}
	rep, err := l.verify(ctx, p)
	end()
	if err != nil {
		return rep, fmt.Errorf("replicate: %s: verify: %w", v.cfg.Resource, err)
	}
	v.log.Info("replicate: verify finished", "compared", rep.ComparedBytes, "differing", len(rep.Differing))
	if !repair || len(rep.Differing) == 0 {
		return rep, nil
	}
	for _, r := range rep.Differing {
		v.bm().Set(r.Offset, r.Length)
	}
	if err := v.bm().FlushAll(); err != nil {
		return rep, fmt.Errorf("replicate: %s: verify: marking the differences: %w", v.cfg.Resource, err)
	}
	if err := l.startResyncSource(ctx); err != nil {
		return rep, fmt.Errorf("replicate: %s: verify: repairing: %w", v.cfg.Resource, err)
	}
	rep.Repaired = true
	return rep, nil
}

func (l *link) verify(ctx context.Context, p *progress) (VerifyReport, error) {
	v := l.v
	var rep VerifyReport
	if err := l.c.Write(wire.Frame{Type: wire.State, Offset: stateVerifyBegin, Epoch: v.epoch.Load()}); err != nil {
		return rep, err
	}
	defer func() { _ = l.c.Write(wire.Frame{Type: wire.State, Offset: stateVerifyEnd, Epoch: v.epoch.Load()}) }()
	type req struct {
		off, n int64
		w      *waiter
		mine   []byte
	}
	queue := make([]req, 0, verifyWindow)
	collect := func(r req) error {
		theirs, err := l.waitPayload(ctx, r.w)
		if err != nil {
			return err
		}
		if len(theirs) != len(r.mine) {
			return fmt.Errorf("%w: %d digest bytes for %d bytes at %d, expected %d", errProtocol, len(theirs), r.n, r.off, len(r.mine))
		}
		for _, d := range compareDigests(r.mine, theirs, r.off, r.n, v.gran) {
			if !d.differ {
				continue
			}
			if k := len(rep.Differing) - 1; k >= 0 && rep.Differing[k].Offset+rep.Differing[k].Length == d.off {
				rep.Differing[k].Length += d.n
			} else {
				rep.Differing = append(rep.Differing, Range{Offset: d.off, Length: d.n})
			}
		}
		rep.ComparedBytes += r.n
		p.done.Add(r.n)
		return nil
	}
	// The resync's rate controller paces verify too (as DRBD's c-max-rate
	// does): it reads the whole device on both nodes, and applications
	// keep their share.
	tn := v.tunables()
	ctl := newRateController(tn.Resync, v.now())
	for off := int64(0); off < v.Size(); off += verifyChunk {
		n := min(int64(verifyChunk), v.Size()-off)
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if cur := v.tunables(); cur != tn {
			tn = cur
			ctl = newRateController(tn.Resync, v.now())
		}
		if v.failed.Load() {
			return rep, fmt.Errorf("stopped after %d bytes: the local disk failed: %w", rep.ComparedBytes, ErrDiskFailed)
		}
		if d := ctl.delay(v.now(), n, v.appBytes.Load()); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return rep, ctx.Err()
			case <-l.stop:
				t.Stop()
				return rep, ErrPeerLost
			case <-t.C:
			}
		}
		ctl.sent(v.now(), n)
		w, data, err := l.readOrdered(off, n, func(seq uint64, _ []byte) wire.Frame {
			return wire.Frame{Type: wire.VerifyRequest, Seq: seq, Offset: uint64(off), Length: uint32(n)}
		}, wire.VerifyDigest, true)
		if err != nil {
			return rep, err
		}
		queue = append(queue, req{off: off, n: n, w: w, mine: digests(data, v.gran)})
		if len(queue) == verifyWindow {
			if err := collect(queue[0]); err != nil {
				return rep, err
			}
			queue = append(queue[:0], queue[1:]...)
		}
	}
	for _, r := range queue {
		if err := collect(r); err != nil {
			return rep, err
		}
	}
	return rep, nil
}
