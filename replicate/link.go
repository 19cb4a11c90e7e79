package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/replicate/md"
	"github.com/tandem-ha/tandem/replicate/wire"
)

// tlogLimit bounds the transfer log: past it the primary asks the peer
// for a flush, so that a crash of the peer costs a bounded resync. 2048
// writes is DRBD's default max-epoch-size (its barrier interval); every
// peer fdatasync stalls writes on both sides, and with 1024 writes or
// 64 MiB a 1 MiB stream asked for one every 64 writes (in-process
// BenchmarkWrite1M without the periodic flush: 395-906 MB/s against
// 257-713 MB/s with it, alternating on a shared machine).
const (
	tlogLimit      = 2048
	tlogBytesLimit = 256 << 20
)

// bitmapChunk is the bitmap exchanged per frame on connect.
const bitmapChunk = 256 << 10

// errStandAlone marks setup failures after which this side stays
// StandAlone (split brain, a size mismatch, a refusal by the peer): they
// need an admin, retrying would only repeat them.
var errStandAlone = errors.New("replicate: staying StandAlone")

// errProtocol: the peer sent something that makes no sense here.
var errProtocol = errors.New("replicate: link protocol violation")

// waiter is an operation waiting for the peer's answer.
type waiter struct {
	need wire.MsgType
	ch   chan result
}

type result struct {
	err     error
	payload []byte
}

var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan result, 1)} }}

// tlogEntry is a write sent to the peer and not yet covered by a flush
// the peer confirmed (the transfer log): if the link dies, its bits are
// set, since the peer may have lost it.
type tlogEntry struct {
	seq    uint64
	off, n int64
}

// link is one session with the peer over an authenticated connection.
type link struct {
	v      *Volume
	c      *wire.Conn
	leader bool
	start  time.Time
	peer   peerState // as announced at setup
	// proto is this side's protocol as announced at setup: the peer
	// acknowledges this session's writes by it, whatever SetLink does
	// meanwhile.
	proto  byte
	rord   *order // the writes received, applied in the peer's order
	active atomic.Bool

	lastRecv atomic.Int64 // since start, ns
	// lastAck is when an answer last came, or when requests started
	// waiting after none did (since start, ns): the ack timeout's clock.
	lastAck atomic.Int64
	acking  atomic.Int32 // acknowledgements being queued
	// appliers counts the peer's operations being applied: a lone one
	// has no acknowledgement to share a system call with.
	appliers atomic.Int32
	pingBusy atomic.Bool

	pendMu    sync.Mutex
	pending   map[uint64]*waiter
	tlog      []tlogEntry
	tlogHead  int
	tlogBytes int64
	tlogFlush bool
	dead      bool
	endOnce   sync.Once
	why       string
	stop      chan struct{} // closed by end
	done      chan struct{} // closed when torn down
	// quiet is closed once no applier of this session runs any more and
	// none will start (the teardown waited for them): from then on
	// nothing the peer sent reaches the data area.
	quiet      chan struct{}
	applying   sync.WaitGroup
	background sync.WaitGroup // resync and verify loops

	// target side of a resync: the ranges written (or found equal)
	// since the data was last synced, whose bits are cleared only after
	// the next sync (checkpoint); rsBusy while one runs.
	rsMu           sync.Mutex
	rsPending      []rsRange
	rsPendingBytes int64
	rsBusy         bool
	// source side: bytes cleared since the bitmap was last flushed.
	srcCleared atomic.Int64

	// A verify run on the primary for the secondary (verify_remote.go),
	// guarded by pendMu: asked is the secondary's caller waiting for the
	// answer, askCancel stops the primary's run.
	asked     chan verifyAnswer
	askCancel context.CancelFunc
	// vtarget is the progress of a verify this side answers as target.
	vtarget atomic.Pointer[progress]
	// peerDiskGone: the primary's disk failed and this replica has
	// recorded it (peerDiskLost); only then does it serve ReadRequests,
	// and it acknowledges every write with Written, whatever the
	// protocol (the primary waits for it). Set by the receive loop before
	// it dispatches any later frame.
	peerDiskGone atomic.Bool
	// peerResumed is non-nil while the peer, as sync target, asked this
	// side to hold its resync (stateSyncPause), closed when it resumes;
	// guarded by pauseMu.
	pauseMu     sync.Mutex
	peerResumed chan struct{}

	// Attaching a new disk under a diskless primary (attach.go).
	// Primary: attachOn once it asked this session's peer to sync its
	// new disk; attachDone is closed when that sync is done.
	attachOn   atomic.Bool
	attachDone chan struct{}
	// Source: peerAttach while it syncs the primary's new disk; attMu
	// guards attTokens, the resync reads in flight; attachGo is closed
	// when the primary stopped its writes (stateAttachFinal);
	// peerReattached once the primary's new disk is UpToDate (its reads
	// sent before it learnt so are still answered).
	peerAttach, peerReattached atomic.Bool
	attMu                      sync.Mutex
	attTokens                  map[*rsToken]struct{}
	attachGo                   chan struct{}
	attachGoOnce               sync.Once
}

func newLink(v *Volume, c *wire.Conn, leader bool) *link {
	return &link{
		v: v, c: c, leader: leader, start: time.Now(), rord: newOrder(),
		pending: make(map[uint64]*waiter), stop: make(chan struct{}), done: make(chan struct{}), quiet: make(chan struct{}),
		attachDone: make(chan struct{}), attachGo: make(chan struct{}), attTokens: map[*rsToken]struct{}{},
	}
}

func (l *link) since() int64 { return int64(time.Since(l.start)) }

// holdBackground counts one more goroutine the teardown waits for, unless
// the link is torn down already: under pendMu, as the teardown sets dead
// before it waits.
func (l *link) holdBackground() bool {
	l.pendMu.Lock()
	defer l.pendMu.Unlock()
	if l.dead {
		return false
	}
	l.background.Add(1)
	return true
}

// end closes the connection (after a Disconnect when orderly); the reader
// then fails and tears the session down.
func (l *link) end(why string, orderly bool) {
	l.endOnce.Do(func() {
		l.pendMu.Lock()
		l.why = why
		l.pendMu.Unlock()
		close(l.stop)
		if orderly {
			_ = l.c.NetConn().SetWriteDeadline(time.Now().Add(time.Second))
			_ = l.c.Write(wire.Frame{Type: wire.Disconnect, Epoch: l.v.epoch.Load()})
		}
		_ = l.c.Close()
	})
}

// queueLocked registers f (an answer of type need, and for a write its
// range in the transfer log when off >= 0) and queues it. The caller
// holds v.seqMu, so frames go out in sequence order. ok is false when the
// frame did not go out and no answer will come.
func (l *link) queueLocked(f wire.Frame, need wire.MsgType, off, n int64) (w *waiter, ok bool) {
	l.pendMu.Lock()
	if l.dead || !l.active.Load() {
		l.pendMu.Unlock()
		return nil, false
	}
	if need != 0 {
		w = waiterPool.Get().(*waiter)
		w.need = need
		if len(l.pending) == 0 {
			l.lastAck.Store(l.since())
		}
		l.pending[f.Seq] = w
	}
	trigger := false
	if off >= 0 {
		l.tlog = append(l.tlog, tlogEntry{seq: f.Seq, off: off, n: n})
		l.tlogBytes += n
		if (len(l.tlog)-l.tlogHead >= tlogLimit || l.tlogBytes >= tlogBytesLimit) && !l.tlogFlush {
			l.tlogFlush, trigger = true, true
		}
	}
	l.pendMu.Unlock()
	f.Epoch = l.v.epoch.Load()
	if err := l.c.Queue(f); err != nil {
		l.end(fmt.Sprintf("sending to the peer: %v", err), false)
		return w, w != nil // the teardown answers w
	}
	if trigger {
		go l.flushTlog()
	}
	return w, true
}

// flush sends what is queued.
func (l *link) flush() {
	if err := l.c.Flush(); err != nil {
		l.end(fmt.Sprintf("sending to the peer: %v", err), false)
	}
}

// wait returns the answer to w (nil), ErrPeerLost, or ctx's error.
func (l *link) wait(ctx context.Context, w *waiter) error {
	_, err := l.waitPayload(ctx, w)
	return err
}

func (l *link) waitPayload(ctx context.Context, w *waiter) ([]byte, error) {
	select {
	case r := <-w.ch:
		waiterPool.Put(w)
		return r.payload, r.err
	case <-ctx.Done():
		return nil, ctx.Err() // w is answered later and dropped
	}
}

// flushTlog asks the peer for a flush so the transfer log stays short.
func (l *link) flushTlog() {
	defer func() {
		l.pendMu.Lock()
		l.tlogFlush = false
		l.pendMu.Unlock()
	}()
	l2, w := l.v.peerFlushStart()
	if w != nil {
		_ = l2.wait(context.Background(), w)
	}
}

// deliver hands an acknowledgement to its waiter.
func (l *link) deliver(f wire.Frame) {
	l.pendMu.Lock()
	if f.Type == wire.Flushed {
		// Everything sent before the flush is on the peer's disk.
		for l.tlogHead < len(l.tlog) && l.tlog[l.tlogHead].seq < f.Seq {
			l.tlogBytes -= l.tlog[l.tlogHead].n
			l.tlogHead++
		}
		if l.tlogHead > 256 && l.tlogHead*2 > len(l.tlog) {
			n := copy(l.tlog, l.tlog[l.tlogHead:])
			l.tlog = l.tlog[:n]
			l.tlogHead = 0
		}
	}
	w := l.pending[f.Seq]
	if w != nil && w.need == f.Type {
		delete(l.pending, f.Seq)
		l.lastAck.Store(l.since())
	} else {
		w = nil
	}
	l.pendMu.Unlock()
	if w != nil {
		w.ch <- result{payload: f.Payload}
	}
}

// teardown ends the session: no frame is registered any more, every
// write the peer may not have is marked out of sync (durably), and only
// then are the waiters told the peer is gone.
func (l *link) teardown() {
	v := l.v
	l.end("", false)
	// Under pendMu: a resync clear either comes before this, and so
	// before the bits set below and those of writes that find no link,
	// or sees the link inactive (clearConfirmed).
	l.pendMu.Lock()
	l.active.Store(false)
	l.pendMu.Unlock()
	v.seqMu.Lock()
	if v.cur == l {
		v.cur = nil
	}
	v.seqMu.Unlock()
	l.pendMu.Lock()
	l.dead = true
	entries := l.tlog[l.tlogHead:]
	pend := l.pending
	l.pending = nil
	why := l.why
	l.pendMu.Unlock()
	for _, e := range entries {
		v.bm().Set(e.off, e.n)
	}
	if len(entries) > 0 {
		if err := v.bm().FlushAll(); err != nil {
			v.log.Error("replicate: writing the bitmap after losing the peer", "err", err)
		}
	}
	for _, w := range pend {
		w.ch <- result{err: ErrPeerLost}
	}
	l.applying.Wait()
	if l.peerAttach.Load() {
		// The primary's new disk is not synced: all of it is out of sync
		// again, as setupDiskless expects of a diskless primary's peer.
		v.bm().Set(0, v.Size())
		if err := v.bm().FlushAll(); err != nil {
			v.log.Error("replicate: writing the bitmap after losing the peer", "err", err)
		}
	}
	// The receive loop has returned: no applier starts any more.
	v.mu.Lock()
	delete(v.live, l)
	v.mu.Unlock()
	close(l.quiet)
	l.background.Wait()
	l.attachEnded()
	v.mu.Lock()
	if v.sess == l {
		v.sess = nil
		v.peer = nil
		v.resync, v.verify = nil, nil
		if v.standalone {
			v.conn = StandAlone
		} else {
			v.conn = Connecting
		}
		if why != "" {
			v.reason, v.sessionReason, v.sessionWhy = why, true, why
		}
	}
	v.mu.Unlock()
	v.log.Info("replicate: link to the peer down", "peer", v.cfg.Peer, "reason", why)
	close(l.done)
	v.wake()
}

// run is the receive loop of an established session.
func (l *link) run() {
	defer l.teardown()
	l.lastRecv.Store(l.since())
	go l.pinger()
	for {
		f, err := l.c.Read()
		if err != nil {
			if isEOF(err) {
				l.end("the connection was closed", false)
			} else {
				l.end(fmt.Sprintf("reading from the peer: %v", err), false)
			}
			return
		}
		l.lastRecv.Store(l.since())
		if err := l.handle(f); err != nil {
			if !errors.Is(err, errPeerDisconnected) {
				l.v.log.Warn("replicate: dropping the link", "err", err)
			}
			l.end(err.Error(), !errors.Is(err, errPeerDisconnected))
			return
		}
	}
}

var errPeerDisconnected = errors.New("the peer disconnected")

// pinger sends Pings and declares the link dead when nothing came for
// PingTimeout.
func (l *link) pinger() {
	v := l.v
	every := v.tunables().Timing.PingInterval
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		tm := v.tunables().Timing // Tune changes it while the session runs
		if tm.PingInterval != every {
			every = tm.PingInterval
			t.Reset(every)
		}
		if idle := time.Duration(l.since() - l.lastRecv.Load()); idle > tm.PingTimeout {
			l.end(fmt.Sprintf("the peer did not answer for %s", idle.Round(time.Millisecond)), false)
			return
		}
		l.pendMu.Lock()
		waiting := len(l.pending)
		l.pendMu.Unlock()
		if stuck := time.Duration(l.since() - l.lastAck.Load()); waiting > 0 && stuck > tm.AckTimeout {
			l.end(fmt.Sprintf("the peer answers pings but acknowledged none of %d waiting requests for %s (ack timeout)", waiting, stuck.Round(time.Millisecond)), false)
			return
		}
		if !l.pingBusy.Swap(true) {
			go func() {
				_ = l.c.Write(wire.Frame{Type: wire.Ping, Epoch: v.epoch.Load()})
				l.pingBusy.Store(false)
			}()
		}
	}
}

// handle processes one frame of an established session.
func (l *link) handle(f wire.Frame) error {
	v := l.v
	switch f.Type {
	case wire.Write, wire.Trim, wire.Zero, wire.ResyncData, wire.ResyncRequest, wire.Flush, wire.VerifyRequest, wire.ReadRequest:
		if e := v.epoch.Load(); f.Epoch < e {
			return fmt.Errorf("%w: %s seq %d from epoch %d, this node is at epoch %d", ErrStaleEpoch, f.Type, f.Seq, f.Epoch, e)
		}
		// A diskless primary attaching a new disk is its sync target.
		resync := (f.Type == wire.ResyncData || f.Type == wire.ResyncRequest) && l.attachOn.Load() && v.attaching.Load()
		if f.Type != wire.Flush && f.Type != wire.VerifyRequest && v.primary.Load() && !resync {
			return fmt.Errorf("%w: the peer sends %s to a primary", errProtocol, f.Type)
		}
		if f.Type == wire.ReadRequest {
			// Only a complete replica may stand in for the primary's disk.
			if ds := v.diskState(v.meta().Superblock()); ds != UpToDate || !l.peerDiskGone.Load() && !l.peerReattached.Load() {
				return fmt.Errorf("%w: the peer reads from this node, whose disk is %s (the peer's disk gone: %v)", errProtocol, ds, l.peerDiskGone.Load())
			}
		}
		return l.downstream(f)
	case wire.Received, wire.Written, wire.Flushed, wire.VerifyDigest, wire.ReadData:
		l.deliver(f)
	case wire.Ping:
		go func() { _ = l.c.Write(wire.Frame{Type: wire.Pong, Seq: f.Seq, Epoch: v.epoch.Load()}) }()
	case wire.Pong:
	case wire.State:
		return l.onState(f)
	case wire.Disconnect:
		return errPeerDisconnected
	default:
		return fmt.Errorf("%w: unexpected %s", errProtocol, f.Type)
	}
	return nil
}

// downstream dispatches an operation from the peer: overlapping ones are
// applied in sequence order, the rest concurrently.
func (l *link) downstream(f wire.Frame) error {
	v := l.v
	off, n := int64(f.Offset), int64(f.Length)
	if f.Type == wire.Flush {
		l.applying.Add(1)
		go l.applyFlush(f.Seq)
		return nil
	}
	if n <= 0 || off < 0 || off > v.Size()-n {
		return fmt.Errorf("%w: %s of %d bytes at %d on %d bytes", errProtocol, f.Type, n, off, v.Size())
	}
	if (f.Type == wire.Write || f.Type == wire.ResyncData) && int64(len(f.Payload)) != n {
		return fmt.Errorf("%w: %s announces %d bytes and carries %d", errProtocol, f.Type, n, len(f.Payload))
	}
	sp := spanPool.Get().(*span)
	sp.seq, sp.off, sp.end = f.Seq, off, off+n
	l.rord.add(sp)
	if l.peer.Proto == 'B' && f.Flags&wire.FlagFUA == 0 && (f.Type == wire.Write || f.Type == wire.Trim || f.Type == wire.Zero) {
		if err := l.c.Write(wire.Frame{Type: wire.Received, Seq: f.Seq, Epoch: v.epoch.Load()}); err != nil {
			return fmt.Errorf("replicate: acknowledging: %w", err)
		}
	}
	l.applying.Add(1)
	l.appliers.Add(1)
	// The last frame of a burst, with nothing to wait for, is applied
	// right here: a hand-off to another goroutine would cost a wake-up on
	// every lone write, and nothing else is waiting to be read. Only small
	// writes: a large payload goes past the read buffer, so Buffered is 0
	// after nearly every one, and writing it inline would stop the receive
	// loop for the whole disk write (streams of 1 MiB writes and resync
	// chunks would be applied one at a time).
	if f.Type == wire.Write && n <= inlineApplyMax && f.Flags&wire.FlagFUA == 0 && l.c.Reader().Buffered() == 0 && !l.rord.conflict(sp.seq, sp.off, sp.end) {
		l.apply(f, sp)
		return nil
	}
	go l.apply(f, sp)
	return nil
}

// inlineApplyMax is the largest write the receive loop applies itself.
const inlineApplyMax = 64 << 10

func (l *link) apply(f wire.Frame, sp *span) {
	defer l.applying.Done()
	defer l.appliers.Add(-1)
	v := l.v
	l.rord.waitBefore(sp.seq, sp.off, sp.end)
	off, n := sp.off, sp.end-sp.off
	fua := f.Flags&wire.FlagFUA != 0
	var err error
	var payload []byte
	switch f.Type {
	case wire.Write, wire.ResyncData:
		err = v.data().WriteAt(v.ctx, f.Payload, off, fua)
		// The data device does not keep the buffer: the next frame may
		// reuse it.
		l.c.Reader().Release(f.Payload)
	case wire.Trim:
		err = v.data().Trim(v.ctx, off, n, fua)
	case wire.Zero:
		var zf nbd.ZeroFlags
		if len(f.Payload) > 0 {
			zf = nbd.ZeroFlags(f.Payload[0]) & nbd.ZeroNoHole
		}
		if fua {
			zf |= nbd.ZeroFUA
		}
		err = v.data().Zero(v.ctx, off, n, zf)
	case wire.VerifyRequest:
		buf := make([]byte, n)
		if err = v.data().ReadAt(v.ctx, buf, off); err == nil {
			payload = digests(buf, v.gran)
			if p := l.vtarget.Load(); p != nil {
				p.done.Add(n)
			}
		}
	case wire.ReadRequest:
		payload = make([]byte, n)
		err = v.data().ReadAt(v.ctx, payload, off)
	}
	if err == nil && (f.Type == wire.ResyncData || f.Type == wire.ResyncRequest) {
		err = l.resyncApplied(off, n)
	}
	if err == nil && (f.Type == wire.Write || f.Type == wire.Trim || f.Type == wire.Zero) && l.peerAttach.Load() {
		l.attachWritten(off, n) // before the ack: see attach.go
	}
	l.rord.remove(sp)
	spanPool.Put(sp)
	if err != nil {
		switch {
		case v.ctx.Err() != nil:
		case l.attachOn.Load() && v.attaching.Load():
			go l.attachDiskFailed(err)
		default:
			_ = v.diskFailed("applying "+f.Type.String()+" from the peer", err)
			go l.detach(err)
		}
		return
	}
	switch {
	case f.Type == wire.VerifyRequest:
		_ = l.c.Write(wire.Frame{Type: wire.VerifyDigest, Seq: f.Seq, Epoch: v.epoch.Load(), Offset: f.Offset, Length: f.Length, Payload: payload})
	case f.Type == wire.ReadRequest:
		l.ack(wire.Frame{Type: wire.ReadData, Seq: f.Seq, Epoch: v.epoch.Load(), Offset: f.Offset, Length: f.Length, Payload: payload})
	case f.Type == wire.ResyncData, fua, (l.peer.Proto == 'C' || l.peerDiskGone.Load()) && f.Type != wire.ResyncRequest:
		l.ack(wire.Frame{Type: wire.Written, Seq: f.Seq, Epoch: v.epoch.Load()})
	}
}

// ack queues an acknowledgement; the last of a burst sends them all in
// one system call, after letting appliers that are ready run first.
func (l *link) ack(f wire.Frame) {
	l.acking.Add(1)
	err := l.c.Queue(f)
	if l.acking.Add(-1) == 0 && err == nil {
		if l.appliers.Load() > 1 {
			runtime.Gosched()
		}
		if l.acking.Load() == 0 {
			err = l.c.Flush()
		}
	}
	if err != nil {
		l.end(fmt.Sprintf("sending to the peer: %v", err), false)
	}
}

// detach ends the session after the local disk failed on a secondary: it
// stays StandAlone (reconnecting would only fail the next write again),
// and the primary goes on without it.
func (l *link) detach(err error) {
	why := fmt.Sprintf("the local disk failed (%v): detached; replace the disk and recreate the metadata", err)
	l.v.mu.Lock()
	l.v.standalone = true
	l.v.mu.Unlock()
	l.end(why, true)
}

// rsRange is a range a sync target holds, not yet known durable.
type rsRange struct{ off, n int64 }

// resyncApplied records a range the target now holds and, every 32 MiB,
// makes the progress durable: data first, then the bits of what that
// sync covered, so that a crash never finds a clear bit over data that
// did not reach the disk. Only ranges applied before the data sync are
// cleared: a range written while the sync runs may not be covered by it,
// and clearing its bit in memory then would let the bitmap write that
// follows the sync record it as in sync. The other appliers go on (and
// acknowledge) meanwhile: the source may clear its bits at once, since
// this side's bitmap on disk still marks the range until the checkpoint
// and a reconnection resyncs the union of both bitmaps.
func (l *link) resyncApplied(off, n int64) error {
	l.rsMu.Lock()
	l.rsPending = append(l.rsPending, rsRange{off, n})
	l.rsPendingBytes += n
	if l.rsPendingBytes < 32<<20 || l.rsBusy {
		l.rsMu.Unlock()
		return nil
	}
	batch := l.rsPending
	l.rsPending, l.rsPendingBytes, l.rsBusy = nil, 0, true
	l.rsMu.Unlock()
	err := l.resyncCheckpoint(batch)
	l.rsMu.Lock()
	l.rsBusy = false
	l.rsMu.Unlock()
	return err
}

func (l *link) resyncCheckpoint(batch []rsRange) error {
	if err := l.v.data().Flush(l.v.ctx); err != nil {
		return err
	}
	for _, r := range batch {
		l.v.bm().Clear(r.off, r.n)
	}
	return l.v.bm().FlushAll()
}

func (l *link) applyFlush(seq uint64) {
	defer l.applying.Done()
	v := l.v
	l.rord.waitBefore(seq, 0, math.MaxInt64)
	if err := v.data().Flush(v.ctx); err != nil {
		if v.ctx.Err() == nil {
			_ = v.diskFailed("flush for the peer", err)
			go l.detach(err)
		}
		return
	}
	_ = l.c.Write(wire.Frame{Type: wire.Flushed, Seq: seq, Epoch: v.epoch.Load()})
}

// onState handles State messages during a session.
func (l *link) onState(f wire.Frame) error {
	v := l.v
	switch f.Offset {
	case stateUpdate:
		ps, err := parseState(f.Payload)
		if err != nil {
			return err
		}
		if ps.Role == Primary && v.primary.Load() {
			v.mu.Lock()
			v.standalone = true
			v.mu.Unlock()
			return fmt.Errorf("%w: both nodes are primary; demote one, then resolve", ErrSplitBrain)
		}
		if ps.Role == Primary {
			if e := v.epoch.Load(); ps.Epoch < e {
				return fmt.Errorf("%w: the peer became primary at epoch %d, this node knows epoch %d", ErrStaleEpoch, ps.Epoch, e)
			}
			if err := v.adoptEpoch(ps.Epoch); err != nil {
				return err
			}
		}
		if ps.Role == Primary && (ps.Disk == Failed || ps.Disk == Diskless) && !l.peerDiskGone.Load() {
			if err := l.peerDiskLost(); err != nil {
				return err
			}
		}
		if ps.Role == Primary && ps.Disk == UpToDate && l.peerDiskGone.Load() {
			// Its new disk is synced (attach.go): from here on it is an
			// ordinary primary, whose next disk failure is recorded again.
			l.peerReattached.Store(true)
			l.peerAttach.Store(false)
			l.peerDiskGone.Store(false)
		}
		v.mu.Lock()
		if v.sess == l {
			v.peer = &ps
		}
		v.mu.Unlock()
	case stateResyncBegin:
		return l.beginTarget(false)
	case stateResyncDone:
		ps, err := parseState(f.Payload)
		if err != nil {
			return err
		}
		err = l.finishTarget(ps)
		if err != nil && l.attachOn.Load() && v.attaching.Load() {
			l.attachDiskFailed(err)
			return nil
		}
		return err
	case stateAttach, stateAttachReady, stateAttachFinal:
		return l.onAttachState(f)
	case stateResize:
		return l.onResize(f)
	case stateResized:
		l.deliver(f)
	case stateVerifyAsk:
		if len(f.Payload) != 1 || f.Payload[0] > 1 {
			return fmt.Errorf("%w: a verify request with a %d-byte payload", errProtocol, len(f.Payload))
		}
		l.verifyForPeer(f.Payload[0] == 1)
	case stateVerifyCancel:
		l.cancelForPeer()
	case stateSyncPause:
		if len(f.Payload) != 1 || f.Payload[0] > 1 {
			return fmt.Errorf("%w: a sync pause with a %d-byte payload", errProtocol, len(f.Payload))
		}
		l.setPeerPause(f.Payload[0] == 1)
	case stateVerifyAnswer:
		return l.onVerifyAnswer(f.Payload)
	case stateVerifyBegin, stateVerifyEnd:
		// The target counts the bytes it hashed, so that status shows the
		// verify's progress on both nodes.
		v.mu.Lock()
		if v.sess == l && (v.conn == Connected || v.conn == VerifyTarget) {
			if f.Offset == stateVerifyBegin {
				p := newProgress(true, true, v.Size(), v.now())
				v.conn, v.verify = VerifyTarget, p
				l.vtarget.Store(p)
			} else {
				v.conn, v.verify = Connected, nil
				l.vtarget.Store(nil)
			}
		}
		v.mu.Unlock()
	default:
		return fmt.Errorf("%w: State kind %d during a session", errProtocol, f.Offset)
	}
	return nil
}

// peerDiskLost runs when the primary says its disk failed, before any
// frame it sent after that: this replica may now be the only complete
// one, so its data starts a new generation with every block out of sync
// for the peer, durably. Whatever the failed disk holds when it comes
// back, it is then a sync target of a full resync, never "in sync".
func (l *link) peerDiskLost() error {
	v := l.v
	if v.diskState(v.meta().Superblock()) != UpToDate {
		return nil // not a replica to stand in: the primary fails its I/O
	}
	v.bm().Set(0, v.Size())
	if err := v.bm().FlushAll(); err != nil {
		return fmt.Errorf("replicate: recording that the primary's disk failed: %w", err)
	}
	v.degMu.Lock()
	err := v.rotateLocked()
	v.degMu.Unlock()
	if err != nil {
		return err
	}
	l.peerDiskGone.Store(true)
	// Before anything this node answers after the State: the primary
	// learns the generation it is served from (Volume.servedGen), which
	// a later session with it checks (setupDiskless).
	if err := l.c.Write(wire.Frame{Type: wire.State, Offset: stateUpdate, Epoch: v.epoch.Load(), Payload: v.localState().marshal()}); err != nil {
		return fmt.Errorf("replicate: announcing the new generation: %w", err)
	}
	v.log.Warn("replicate: the primary's disk failed; this node holds the only copy and serves its reads", "peer", v.cfg.Peer)
	return nil
}

// adoptEpoch records a newer epoch learnt from the peer.
func (v *Volume) adoptEpoch(e uint64) error {
	if e <= v.epoch.Load() {
		return nil
	}
	if err := v.meta().Update(func(s *md.Superblock) { s.Epoch = max(s.Epoch, e) }); err != nil {
		return fmt.Errorf("replicate: recording epoch %d: %w", e, err)
	}
	v.epoch.Store(e)
	return nil
}

// beginTarget makes this side a sync target: Inconsistent, durably,
// before any resync data lands.
func (l *link) beginTarget(full bool) error {
	v := l.v
	if err := v.meta().Update(func(s *md.Superblock) { s.Flags &^= md.Consistent }); err != nil {
		return fmt.Errorf("replicate: becoming sync target: %w", err)
	}
	p := newProgress(full, v.tunables().Resync.Checksum, v.bm().OutOfSyncBytes(), v.now())
	v.mu.Lock()
	if v.sess == l {
		v.conn, v.resync = SyncTarget, p
	}
	v.mu.Unlock()
	v.announce()
	return nil
}

// finishTarget ends a resync on the target: the data is flushed, the
// bitmap cleared and written, and the source's generations taken.
func (l *link) finishTarget(src peerState) error {
	v := l.v
	l.applying.Wait() // every resync write before the marker is acknowledged already; be sure
	if err := v.data().Flush(v.ctx); err != nil {
		return fmt.Errorf("replicate: finishing resync: %w", err)
	}
	v.bm().Clear(0, v.Size())
	// What was pending is covered by the sync above; a later resync in
	// this session must not clear its ranges again.
	l.rsMu.Lock()
	l.rsPending, l.rsPendingBytes = nil, 0
	l.rsMu.Unlock()
	if err := v.bm().FlushAll(); err != nil {
		return fmt.Errorf("replicate: finishing resync: %w", err)
	}
	g := src.Gen
	g.Bitmap = 0
	if err := v.meta().Update(func(s *md.Superblock) {
		s.Gen = genToMD(g)
		s.Flags = s.Flags&^(md.Outdated|md.FullSyncNeeded|md.CrashedPrimary|md.PeerOutdated) | md.Consistent
	}); err != nil {
		return fmt.Errorf("replicate: finishing resync: %w", err)
	}
	v.mu.Lock()
	if v.sess == l {
		if v.resync != nil {
			last := v.resync.snapshot(v.now(), 0)
			v.lastResync = &last
		}
		v.conn, v.resync = Connected, nil
	}
	v.mu.Unlock()
	v.log.Info("replicate: resync finished, UpToDate", "peer", v.cfg.Peer)
	attach := l.attachOn.Load() && v.attaching.Load()
	if attach {
		l.attachSynced()
	}
	v.announce()
	if attach {
		close(l.attachDone) // after the announcement: the writes it lets go follow it
	}
	return nil
}

// ---- connection management ----

// wireConfig is the handshake's configuration, and the settings it was
// made from: adopt refuses a connection whose settings SetLink replaced
// while it was being made.
func (v *Volume) wireConfig(dialer bool) (wire.Config, *LinkSettings) {
	ls := v.linkset.Load()
	return wire.Config{
		Cluster: v.cfg.Cluster, Resource: v.cfg.Resource, LocalNode: v.cfg.Node, PeerNode: v.cfg.Peer,
		Secret: v.cfg.Secret, AcceptSecrets: v.cfg.AcceptSecrets, TLS: ls.TLS, Dialer: dialer, Compression: ls.Compression,
		Timeout: v.cfg.ConnectTimeout, Logger: v.log, DropFeatures: v.cfg.dropFeatures,
	}, ls
}

func (v *Volume) acceptLoop() {
	defer v.wg.Done()
	for {
		ln := v.ln.Load()
		nc, err := ln.Accept()
		if err != nil {
			if v.ctx.Err() != nil {
				return
			}
			if v.ln.Load() != ln {
				continue // replaced for a new listen address
			}
			v.log.Warn("replicate: accepting the peer", "err", err)
			select {
			case <-v.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		v.wg.Add(1)
		go func() {
			defer v.wg.Done()
			wc, ls := v.wireConfig(false)
			c, err := wire.Handshake(v.ctx, nc, wc)
			if err != nil {
				v.linkError(err)
				return
			}
			v.adopt(c, ls)
		}()
	}
}

func (v *Volume) dialLoop() {
	defer v.wg.Done()
	const first = 50 * time.Millisecond
	backoff := first
	sleep := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-v.ctx.Done():
			return false
		case <-v.kick:
		case <-t.C:
		}
		return true
	}
	for v.ctx.Err() == nil {
		if !v.needConn() {
			if !sleep(v.cfg.RetryMax) {
				return
			}
			continue
		}
		wc, ls := v.wireConfig(true)
		c, err := wire.Dial(v.ctx, ls.PeerAddress, wc)
		if err == nil && v.adopt(c, ls) {
			backoff = first
			continue
		}
		if err != nil {
			v.linkError(err)
		}
		if !sleep(backoff) {
			return
		}
		backoff = min(backoff*2, v.cfg.RetryMax)
	}
}

func (v *Volume) needConn() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return !v.standalone && v.sess == nil && !v.closed.Load()
}

// linkError records why the last attempt failed, for Status.
func (v *Volume) linkError(err error) {
	if v.ctx.Err() != nil {
		return
	}
	refused := errors.Is(err, wire.ErrAuth) || errors.Is(err, wire.ErrRefused) || errors.Is(err, wire.ErrCluster) ||
		errors.Is(err, wire.ErrResource) || errors.Is(err, wire.ErrPeer) || errors.Is(err, wire.ErrVersion) || errors.Is(err, wire.ErrTLS)
	if refused {
		v.log.Warn("replicate: link refused", "err", err)
	} else {
		v.log.Debug("replicate: link attempt failed", "err", err)
	}
	v.mu.Lock()
	switch {
	case v.sess != nil || v.standalone:
	case !v.sessionReason:
		v.reason = err.Error()
	case refused:
		// Why the last session ended stays first; a refusal since
		// (after a settings change on one side, say) is what to fix.
		v.reason = v.sessionWhy + "; since then the link is refused: " + err.Error()
	}
	v.mu.Unlock()
}

// adopt decides whether an authenticated connection becomes the session.
// The node with the smaller name decides: it takes the first connection
// that completes while it has no session and sends its hello on it; it
// sends Disconnect on any other. The other node waits for that first
// frame, so both always use the same connection. It returns whether a
// session ran on c. A connection made with settings that SetLink has
// replaced since is closed (checked under mu, where SetLink swaps them).
func (v *Volume) adopt(c *wire.Conn, ls *LinkSettings) bool {
	leader := v.cfg.Node < v.cfg.Peer
	if leader {
		v.mu.Lock()
		if v.sess != nil || v.standalone || v.closed.Load() || ls != v.linkset.Load() {
			v.mu.Unlock()
			_ = c.NetConn().SetWriteDeadline(time.Now().Add(time.Second))
			_ = c.Write(wire.Frame{Type: wire.Disconnect})
			_ = c.Close()
			return false
		}
		l := newLink(v, c, true)
		v.sess = l
		v.mu.Unlock()
		return v.runSession(l, nil)
	}
	_ = c.NetConn().SetReadDeadline(time.Now().Add(v.cfg.ConnectTimeout))
	f, err := c.Read()
	if err != nil || f.Type != wire.State || f.Offset != stateHello {
		_ = c.Close()
		return false
	}
	v.mu.Lock()
	if v.standalone || v.closed.Load() || ls != v.linkset.Load() {
		v.mu.Unlock()
		_ = c.Close()
		return false
	}
	old := v.sess
	l := newLink(v, c, false)
	v.sess = l
	v.mu.Unlock()
	if old != nil {
		// The leader chose a new connection: it has given up the old one.
		old.end("the peer opened a new connection", false)
		<-old.done
		v.mu.Lock()
		v.sess = l
		v.mu.Unlock()
	}
	return v.runSession(l, &f)
}

// runSession sets the session up and runs it until it ends.
func (v *Volume) runSession(l *link, first *wire.Frame) bool {
	d, err := l.setup(first)
	if err != nil {
		why := err.Error()
		standalone := errors.Is(err, errStandAlone) || errors.Is(err, ErrSplitBrain)
		l.end(why, true)
		v.mu.Lock()
		if v.sess == l {
			v.sess = nil
			v.peer = nil
			v.reason, v.sessionReason, v.sessionWhy = why, true, why
			if standalone {
				v.standalone = true
			}
			if v.standalone {
				v.conn = StandAlone
			} else {
				v.conn = Connecting
			}
		}
		v.mu.Unlock()
		if standalone {
			v.log.Error("replicate: not connecting to the peer", "reason", why)
		} else {
			v.log.Warn("replicate: session setup failed", "reason", why)
		}
		close(l.done)
		return false
	}
	v.log.Info("replicate: connected to the peer", "peer", v.cfg.Peer, "decision", d.String())
	if v.primary.Load() {
		v.announce() // the epoch may have moved in the setup (a resolved split brain)
	}
	if v.syncPaused() != nil {
		l.sendPause(true) // a resync to this node waits for the resume
	}
	if d.IsSource() {
		l.background.Add(1)
		go l.resyncSource(d == SourceFull)
	}
	if d == ServeDiskless && v.primary.Load() && v.attachPending.Load() && l.c.PeerHas(wire.FeatureAttach) {
		// A new disk attached under this diskless primary: its sync
		// starts again (the one before ended with its session).
		if err := l.startAttach(); err != nil {
			v.log.Warn("replicate: restarting the new disk's sync", "err", err)
		}
	}
	l.run()
	return true
}

// setup runs the start of a session: the State exchange, the decision,
// the bitmap exchange and what the decision asks for. Application writes
// wait meanwhile (they would change what was announced), bounded by the
// connect timeout.
func (l *link) setup(first *wire.Frame) (Sync, error) {
	v := l.v
	nc := l.c.NetConn()
	if err := nc.SetDeadline(time.Now().Add(v.cfg.ConnectTimeout)); err != nil {
		return 0, err
	}
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if v.closed.Load() {
		return 0, ErrClosed
	}
	local := v.localState()
	l.proto = local.Proto
	hello := wire.Frame{Type: wire.State, Offset: stateHello, Epoch: local.Epoch, Payload: local.marshal()}
	var pf wire.Frame
	if l.leader {
		if err := l.c.Write(hello); err != nil {
			return 0, fmt.Errorf("replicate: sending state: %w", err)
		}
		f, err := l.expect(stateHello)
		if err != nil {
			return 0, err
		}
		pf = f
	} else {
		pf = *first
		if err := l.c.Write(hello); err != nil {
			return 0, fmt.Errorf("replicate: sending state: %w", err)
		}
	}
	peer, err := parseState(pf.Payload)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errStandAlone, err)
	}
	l.peer = peer
	if local.disklessPrimary() || peer.disklessPrimary() {
		return l.setupDiskless(local, peer)
	}

	d, why := decideSession(local, peer, v.sessionPolicy())
	// Two incomplete images: nothing to sync, but the session stays up
	// (both Inconsistent) until an admin forces one side to be primary,
	// which restarts it as a full sync from that side.
	idle := d == NeedAdmin && !local.side().Consistent && !peer.side().Consistent
	if idle {
		why = ""
	}
	// A split brain that an admin or a policy resolved: the victim takes
	// the survivor's data whatever their epochs.
	raw := Decide(local.side(), peer.side())
	resolved := (raw == SplitBrain || raw == Unrelated) && (d.IsSource() || d.IsTarget())
	refuse := func(format string, args ...any) {
		if why == "" {
			why = fmt.Sprintf(format, args...)
		}
	}
	var standalone bool = true
	growHere, growThere := growsAtSetup(local, peer, l.c.PeerHas(wire.FeatureResize))
	if (growHere || growThere) && d == InSync {
		// Same histories, but what the grown devices hold past the old
		// end differs: the primary resyncs it.
		d = TargetBitmap
		if growThere {
			d = SourceBitmap
		}
	}
	switch {
	case peer.Gran != local.Gran:
		refuse("the peer's bitmap granularity is %d, this node's %d", peer.Gran, local.Gran)
	case peer.Size != local.Size && !growThere && !growHere:
		// The smaller side waits for the admin's resize; the larger
		// goes on connecting until it is done.
		standalone = peer.Size > local.Size
		refuse("%s", v.sizeMismatch(peer.Size, local.Size))
	case peer.Role == Primary && local.Role == Primary:
		refuse("both nodes are primary (split brain); demote one, then resolve")
	// A deposed primary is refused, except by the victim of a resolved
	// split brain (the survivor then moves to an epoch above both).
	case peer.Role == Primary && peer.Epoch < local.Epoch && !(resolved && d.IsTarget()):
		standalone = why != "" // a split brain found by the decision says more
		refuse("%v: the peer is primary at epoch %d, this node knows epoch %d (a deposed primary)", ErrStaleEpoch, peer.Epoch, local.Epoch)
	case local.Role == Primary && local.Epoch < peer.Epoch && !(resolved && d.IsSource()):
		standalone = why != ""
		refuse("%v: this node is primary at epoch %d, the peer knows epoch %d: this node was deposed", ErrStaleEpoch, local.Epoch, peer.Epoch)
	case local.Role == Primary && d.IsTarget():
		refuse("this node is primary but would be the sync target (its data is older than the peer's); demote it")
	case peer.Role == Primary && d.IsSource():
		refuse("the peer is primary but would be the sync target")
	}
	if growHere && why == "" {
		if err := v.growToPeer(peer.Size); err != nil {
			// The primary goes on connecting; this node waits for its
			// admin.
			refuse("the primary's data area is %d bytes, this node's %d, and this node cannot grow to it: %v; fix that, then tandem connect %s", peer.Size, local.Size, err, errRetry)
		}
	}
	if why != "" && (d != SplitBrain && d != Unrelated && d != NeedAdmin) {
		d = NeedAdmin
	}
	if why == "" && !idle && (d == SplitBrain || d == Unrelated || d == NeedAdmin) {
		why = d.String()
	}
	if err := l.exchangeDecision(d, why, standalone, local.Epoch); err != nil {
		return 0, err
	}
	newEpoch := peer.Epoch
	if local.Role == Primary && peer.Epoch > local.Epoch {
		newEpoch = peer.Epoch + 1 // the survivor of a resolved split brain
	}
	if err := v.adoptEpoch(newEpoch); err != nil {
		return 0, err
	}
	switch d {
	case SourceFull, TargetFull:
		v.bm().Set(0, v.Size())
		if err := v.bm().FlushAll(); err != nil {
			return 0, err
		}
	case SourceBitmap, TargetBitmap:
		if err := l.exchangeBitmaps(); err != nil {
			return 0, err
		}
	case InSync:
		// Identical histories: whatever outdated either side is stale.
		if err := v.meta().Update(func(s *md.Superblock) { s.Flags &^= md.PeerOutdated | md.CrashedPrimary | md.Outdated }); err != nil {
			return 0, err
		}
	}
	if d.IsTarget() {
		if err := v.meta().Update(func(s *md.Superblock) { s.Flags &^= md.Consistent }); err != nil {
			return 0, fmt.Errorf("replicate: becoming sync target: %w", err)
		}
	}
	return d, l.activate(d, peer, idle)
}

// exchangeDecision sends this side's outcome of the setup (d, or why it
// refuses) and reads the peer's: two nodes that disagree (other policies
// in their configurations) must not both act.
func (l *link) exchangeDecision(d Sync, why string, standalone bool, epoch uint64) error {
	mine := []byte{byte(d)}
	if why != "" {
		mine = append([]byte{255}, why...)
	}
	if err := l.c.Write(wire.Frame{Type: wire.State, Offset: stateDecision, Epoch: epoch, Payload: mine}); err != nil {
		return fmt.Errorf("replicate: sending the decision: %w", err)
	}
	df, err := l.expect(stateDecision)
	if err != nil {
		return err
	}
	if why != "" {
		if standalone {
			return fmt.Errorf("%w: %s", errStandAlone, why)
		}
		return errors.New(why)
	}
	switch {
	case len(df.Payload) > 0 && df.Payload[0] == 255:
		if bytes.Contains(df.Payload[1:], []byte(ErrStaleEpoch.Error())) || bytes.Contains(df.Payload[1:], []byte(errRetry)) {
			return fmt.Errorf("the peer refused: %s", df.Payload[1:])
		}
		return fmt.Errorf("%w: the peer refused: %s", errStandAlone, df.Payload[1:])
	case len(df.Payload) != 1 || Sync(df.Payload[0]) != d.mirror():
		return fmt.Errorf("%w: this node decided %s, the peer %v (different split-brain policies?)", errStandAlone, d, df.Payload)
	}
	return nil
}

// errRetry ends a refusal that the other side should not take for
// final: it goes on connecting (the refusing side may change).
const errRetry = "(retrying)"

// activate makes an agreed session the one writes go to.
func (l *link) activate(d Sync, peer peerState, idle bool) error {
	v := l.v
	if err := l.c.NetConn().SetDeadline(time.Time{}); err != nil {
		return err
	}
	v.degMu.Lock()
	v.degraded, v.rotated = false, false
	v.degMu.Unlock()
	v.seqMu.Lock()
	v.cur = l
	l.active.Store(true)
	v.seqMu.Unlock()
	v.mu.Lock()
	// Registered while ioMu is still held: a role change that follows
	// sees this session and waits for its appliers once it has ended.
	v.live[l] = struct{}{}
	v.sessions++
	v.peer = &peer
	v.want = wantNone
	v.reason, v.sessionReason = "", false
	if idle {
		v.reason = "both replicas are Inconsistent: promote --force the one whose data to keep"
	}
	switch {
	case d.IsSource():
		v.conn = SyncSource
	case d.IsTarget():
		v.conn = SyncTarget
		v.resync = newProgress(d == TargetFull, v.tunables().Resync.Checksum, v.bm().OutOfSyncBytes(), v.now())
	default:
		v.conn = Connected
	}
	v.mu.Unlock()
	return nil
}

// setupDiskless sets up a session with a diskless primary on one side
// (its disk failed while the other served it, and the link ended since):
// no decision from the generations (the diskless side's are those of its
// failed disk), no bitmap exchange, no metadata written on the diskless
// side. The secondary serves again only the data it held when the
// primary went diskless: UpToDate, at the same or an older epoch, its
// generation the one it served, every block still out of sync for the
// primary. DRBD's diskless primary reconnects the same way.
func (l *link) setupDiskless(local, peer peerState) (Sync, error) {
	v := l.v
	why, standalone := "", false
	refuse := func(final bool, format string, args ...any) {
		if why == "" {
			// Whatever this side makes of it, the peer goes on
			// connecting: its own checks decide for it.
			why, standalone = fmt.Sprintf(format, args...)+" "+errRetry, final
		}
	}
	switch {
	case peer.Gran != local.Gran:
		refuse(true, "the peer's bitmap granularity is %d, this node's %d", peer.Gran, local.Gran)
	case peer.Size < local.Size || peer.Size > local.Size && !local.disklessPrimary():
		// A diskless primary whose grow failed after its peer's (resize.go)
		// is served by the larger disk.
		refuse(true, "%s", v.sizeMismatch(peer.Size, local.Size))
	case local.Role == Primary && peer.Role == Primary:
		refuse(true, "both nodes are primary (split brain); demote one, then resolve")
	case local.disklessPrimary():
		served := v.servedGen.Load()
		switch {
		case peer.Epoch > local.Epoch:
			refuse(true, "%v: this diskless node is primary at epoch %d, the peer knows epoch %d: this node was deposed", ErrStaleEpoch, local.Epoch, peer.Epoch)
		case peer.Disk != UpToDate:
			refuse(false, "the peer's disk is %s: it does not hold the data this diskless primary served through it", peer.Disk)
		case peer.Gen.Current != served:
			refuse(true, "the peer's data moved on since it served this diskless primary (its generation is %#x, it served %#x); demote this node", peer.Gen.Current, served)
		}
	default:
		switch {
		case peer.Epoch < local.Epoch:
			refuse(false, "%v: the peer is a diskless primary at epoch %d, this node knows epoch %d (a deposed primary)", ErrStaleEpoch, peer.Epoch, local.Epoch)
		case local.Disk != UpToDate:
			refuse(false, "this node's disk is %s: it cannot serve a diskless primary", local.Disk)
		case v.bm().OutOfSyncBytes() < v.Size():
			refuse(false, "this node has not recorded the primary's disk failure (%d of %d bytes out of sync for it): it cannot serve it", v.bm().OutOfSyncBytes(), v.Size())
		}
	}
	d := ServeDiskless
	if why != "" {
		d = NeedAdmin
	}
	if err := l.exchangeDecision(d, why, standalone, local.Epoch); err != nil {
		return 0, err
	}
	if !local.disklessPrimary() {
		if err := v.adoptEpoch(peer.Epoch); err != nil {
			return 0, err
		}
		// Written for every write, reads answered: as in the session
		// where the primary's disk failed (peerDiskLost, which must not
		// draw another generation now).
		l.peerDiskGone.Store(true)
	}
	return d, l.activate(d, peer, false)
}

// expect reads the next frame of the setup, which must be State of kind.
func (l *link) expect(kind uint64) (wire.Frame, error) {
	f, err := l.c.Read()
	if err != nil {
		return f, fmt.Errorf("replicate: reading the peer's state: %w", err)
	}
	if f.Type == wire.Disconnect {
		return f, errors.New("replicate: the peer closed the session during setup")
	}
	if f.Type != wire.State || f.Offset != kind {
		return f, fmt.Errorf("%w: %w: %s (kind %d) during setup, expected State kind %d", errStandAlone, errProtocol, f.Type, f.Offset, kind)
	}
	return f, nil
}

// exchangeBitmaps sends this side's bitmap (its non-zero chunks, then an
// end marker) while reading the peer's, and takes the union.
func (l *link) exchangeBitmaps() error {
	v := l.v
	mine := v.bm().Bytes()
	total := uint32(len(mine))
	errc := make(chan error, 1)
	go func() {
		for off := 0; off < len(mine); off += bitmapChunk {
			c := mine[off:min(off+bitmapChunk, len(mine))]
			if allZero(c) {
				continue
			}
			if err := l.c.Queue(wire.Frame{Type: wire.BitmapChunk, Offset: uint64(off), Length: total, Payload: c}); err != nil {
				errc <- err
				return
			}
		}
		errc <- l.c.Write(wire.Frame{Type: wire.BitmapChunk, Offset: uint64(total), Length: total})
	}()
	theirs := make([]byte, len(mine))
	for {
		f, err := l.c.Read()
		if err != nil {
			return fmt.Errorf("replicate: reading the peer's bitmap: %w", err)
		}
		if f.Type == wire.Disconnect {
			// An orderly end (tandem disconnect, a link settings change)
			// can meet the setup anywhere: not a protocol violation.
			return errors.New("replicate: the peer closed the session during the bitmap exchange")
		}
		if f.Type != wire.BitmapChunk || f.Length != total || f.Offset > uint64(total) || f.Offset+uint64(len(f.Payload)) > uint64(total) {
			return fmt.Errorf("%w: %w: bad bitmap frame %s offset %d length %d (this bitmap has %d bytes)", errStandAlone, errProtocol, f.Type, f.Offset, f.Length, total)
		}
		if f.Offset == uint64(total) && len(f.Payload) == 0 {
			break
		}
		copy(theirs[f.Offset:], f.Payload)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("replicate: sending the bitmap: %w", err)
	}
	if err := v.bm().Union(theirs); err != nil {
		return err
	}
	return v.bm().FlushAll()
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// setPeerPause records the peer's pause-sync (stateSyncPause).
func (l *link) setPeerPause(on bool) {
	l.pauseMu.Lock()
	defer l.pauseMu.Unlock()
	switch {
	case on && l.peerResumed == nil:
		l.peerResumed = make(chan struct{})
		l.v.log.Info("replicate: the peer paused resyncs to it", "peer", l.v.cfg.Peer)
	case !on && l.peerResumed != nil:
		close(l.peerResumed)
		l.peerResumed = nil
		l.v.log.Info("replicate: the peer resumed resyncs to it", "peer", l.v.cfg.Peer)
	}
}

// peerPaused is the channel closed when the peer resumes, nil when it has
// not paused.
func (l *link) peerPaused() <-chan struct{} {
	l.pauseMu.Lock()
	defer l.pauseMu.Unlock()
	return l.peerResumed
}

// sendPause tells the peer this side's pause-sync, if it understands it.
func (l *link) sendPause(on bool) bool {
	if !l.c.PeerHas(wire.FeatureTargetPause) {
		return false
	}
	b := byte(0)
	if on {
		b = 1
	}
	_ = l.c.Write(wire.Frame{Type: wire.State, Offset: stateSyncPause, Epoch: l.v.epoch.Load(), Payload: []byte{b}})
	return true
}
