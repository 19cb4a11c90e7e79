package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/replicate/md"
	"github.com/tandem-ha/tandem/replicate/wire"
)

// Link timing defaults.
const (
	// A ping every 250 ms: the link's silence after a power cut shows
	// within three intervals, which the cluster layer waits for before it
	// fences a primary that the failure detector alone calls dead.
	DefaultPingInterval   = 250 * time.Millisecond
	DefaultPingTimeout    = 5 * time.Second
	DefaultAckTimeout     = 30 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultRetryMax       = 5 * time.Second
)

// Volume is a replicated volume: an nbd.Device whose writes, on the
// primary, go to the local data area and to the peer per the configured
// protocol, plus the control operations of the daemon and the cluster
// layer. It opens Secondary and Connecting.
type Volume struct {
	cfg Config
	// tune is what an admin may change while the volume runs (Tune):
	// read through it, never through cfg.Resync or cfg.SplitBrain.
	tune atomic.Pointer[Tunables]
	log  *slog.Logger
	now  func() time.Time
	// disk is the local data area and its metadata; Attach replaces
	// them with a new disk after the old one failed.
	disk atomic.Pointer[localDisk]
	gran int64
	// linkset is the link's settings for the next session (SetLink);
	// a running session keeps those of its setup.
	linkset atomic.Pointer[LinkSettings]

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	ln     atomic.Pointer[listener] // SetLink replaces it for a new Listen
	lsMu   sync.Mutex               // serialises SetLink
	wg     sync.WaitGroup
	kick   chan struct{} // wakes the dialer

	// ioMu: application writes hold it shared; role changes, the
	// session setup and Close hold it exclusively, so that they see no
	// write half done.
	ioMu    sync.RWMutex
	primary atomic.Bool
	failed  atomic.Bool
	// diskless: the local disk failed while this primary was connected
	// to an UpToDate secondary, which now holds the only copy: reads,
	// writes and flushes go to it (DRBD's on-io-error detach).
	diskless atomic.Bool
	// resizing: a Resize runs (resize.go); verify and resync wait.
	// peerSize is the peer's size when the last setup refused it for
	// differing (0: none), which a Resize to that size completes alone.
	resizing atomic.Bool
	peerSize atomic.Int64
	// detached is made with the first failure of a disk and closed once
	// it has been handled (detachDisk): whoever meets the failure
	// meanwhile waits for it, then sees whether the peer serves. nil
	// while the disk is fine (again, after Attach); detMu guards it with
	// failed's changes.
	detMu    sync.Mutex
	detached chan struct{}
	// attaching: this diskless primary syncs a new disk from the peer
	// (Attach): its I/O still goes to the peer until the sync is done.
	// attachPending: a new disk is attached and not yet UpToDate; a
	// diskless primary restarts its sync at each new session.
	attaching, attachPending atomic.Bool
	// servedGen is the peer's current generation when this primary went
	// diskless: a later session serves it again only from that data.
	servedGen atomic.Uint64
	closed    atomic.Bool
	epoch     atomic.Uint64

	// seqMu orders: it hands out sequence numbers and queues frames on
	// the link in that order, so the peer receives them in sequence.
	seqMu   sync.Mutex
	nextSeq uint64
	cur     *link // the link writes go to (nil: none); guarded by seqMu
	sending atomic.Int32
	// writing counts application writes between admission and their
	// answer: alone, a writer has nobody to share a system call with.
	writing atomic.Int32
	ord     *order // the primary's own writes in flight
	// unsettled are the primary's writes not yet acknowledged or failed:
	// overlapping reads wait for them (unsettled.go).
	unsettled unsettled

	// degMu guards the bookkeeping of one absence of the peer.
	degMu    sync.Mutex
	degraded bool // OnDegraded ran
	rotated  bool // the generations moved

	appBytes atomic.Int64 // application bytes, for the rate controller
	// readBytes and writtenBytes split appBytes for the status (writes
	// with trims and zeroes).
	readBytes, writtenBytes atomic.Int64

	// beforeResyncClear, set only by tests, runs on a sync source after
	// the target confirmed a range and before its bits are cleared: a
	// test holds it to put a link loss and later writes in that window.
	beforeResyncClear atomic.Pointer[func(off, n int64)]
	// beforeAppliersWait, set only by tests, runs in Promote when it is
	// about to wait for the appliers of an ended session.
	beforeAppliersWait atomic.Pointer[func()]

	mu   sync.Mutex
	sess *link // the session being set up or running
	// live: the sessions past their setup whose teardown has not yet
	// waited for their appliers (see link.quiet). Normally one; two
	// while a new connection replaces a session still tearing down.
	live map[*link]struct{}
	conn ConnState
	// sessions counts the sessions established since Open: a report
	// with a higher count than when the peer left is from a later one.
	sessions   uint64
	standalone bool
	reason     string
	// sessionReason: reason says why the last session failed or ended,
	// which a later dial error must not hide.
	sessionReason bool
	// sessionWhy is that reason, kept while later refusals add to it.
	sessionWhy string
	peer       *peerState
	want       uint8
	resync     *progress
	verify     *progress
	lastResync *Progress
	// syncResumed is non-nil while resyncs are paused (PauseSync), and
	// closed when they resume; guarded by mu.
	syncResumed chan struct{}
}

// Open opens the metadata on cfg.Meta (it must have been created with
// md.Create for this resource), listens for the peer and starts
// connecting. The volume starts Secondary.
func Open(ctx context.Context, cfg Config) (*Volume, error) {
	if err := checkConfig(&cfg); err != nil {
		return nil, err
	}
	meta, err := md.Open(cfg.Meta)
	if err != nil {
		return nil, fmt.Errorf("replicate: %s: opening metadata: %w", cfg.Resource, err)
	}
	fail := func(err error) (*Volume, error) {
		_ = meta.Close(false)
		return nil, err
	}
	sb := meta.Superblock()
	for _, n := range []struct{ what, have, want string }{
		{"cluster", sb.Cluster, cfg.Cluster}, {"resource", sb.Resource, cfg.Resource},
		{"node", sb.Node, cfg.Node}, {"peer", sb.Peer, cfg.Peer},
	} {
		if n.have != "" && n.have != n.want {
			return fail(fmt.Errorf("replicate: %s: the metadata belongs to %s %q, the configuration says %q", cfg.Resource, n.what, n.have, n.want))
		}
	}
	if sb.Granularity > maxResyncGranularity {
		return fail(fmt.Errorf("replicate: %s: bitmap granularity %d is above the %d a resync chunk can carry", cfg.Resource, sb.Granularity, maxResyncGranularity))
	}
	if cfg.Data.Size() < sb.DataSize {
		return fail(fmt.Errorf("replicate: %s: the data area has %d bytes, the metadata describes %d", cfg.Resource, cfg.Data.Size(), sb.DataSize))
	}
	v := &Volume{
		cfg: cfg, log: cfg.Logger, now: cfg.Now,
		gran: sb.Granularity,
		kick: make(chan struct{}, 1), ord: newOrder(), conn: Connecting, live: map[*link]struct{}{},
	}
	v.disk.Store(&localDisk{data: cfg.Data, meta: meta, bm: meta.Bitmap(), size: sb.DataSize})
	v.tune.Store(&Tunables{Resync: cfg.Resync, SplitBrain: cfg.SplitBrain, Timing: LinkTiming{cfg.PingInterval, cfg.PingTimeout, cfg.AckTimeout}})
	v.linkset.Store(&LinkSettings{Protocol: cfg.Protocol, Compression: cfg.Compression, TLS: cfg.TLS, Listen: cfg.Listen, PeerAddress: cfg.PeerAddress})
	v.epoch.Store(sb.Epoch)
	meta.SetDataSync(v.syncData)
	// A primary that went down without Close may have written what it
	// never acknowledged: say so, for the decision on connect.
	if !meta.Recovery().WasClean && sb.Flags.Has(md.WasPrimary) {
		if err := meta.Update(func(s *md.Superblock) { s.Flags = s.Flags&^md.WasPrimary | md.CrashedPrimary }); err != nil {
			return fail(fmt.Errorf("replicate: %s: %w", cfg.Resource, err))
		}
		v.log.Warn("replicate: this node crashed as primary; its unacknowledged writes will be rolled back from the peer", "extents", len(meta.RecoveredExtents()))
	}
	ln := cfg.Listener
	if ln == nil {
		var lc net.ListenConfig
		if ln, err = lc.Listen(ctx, "tcp", cfg.Listen); err != nil {
			return fail(fmt.Errorf("replicate: %s: listening for the peer: %w", cfg.Resource, err))
		}
	}
	v.ln.Store(&listener{ln})
	if cfg.Listen == "" { // a listener given (tests): its address
		ls := *v.linkset.Load()
		ls.Listen = ln.Addr().String()
		v.linkset.Store(&ls)
	}
	v.ctx, v.cancel = context.WithCancel(context.Background())
	v.wg.Add(2)
	go v.acceptLoop()
	go v.dialLoop()
	return v, nil
}

func checkConfig(cfg *Config) error {
	var errs []string
	ls := LinkSettings{Protocol: cfg.Protocol, Compression: cfg.Compression, TLS: cfg.TLS}
	errs = append(errs, ls.check()...)
	cfg.Protocol, cfg.Compression = ls.Protocol, ls.Compression
	t := Tunables{Resync: cfg.Resync, SplitBrain: cfg.SplitBrain, Timing: LinkTiming{cfg.PingInterval, cfg.PingTimeout, cfg.AckTimeout}.orDefaults(
		LinkTiming{DefaultPingInterval, DefaultPingTimeout, DefaultAckTimeout})}
	errs = append(errs, t.check(cfg.Node, cfg.Peer)...)
	cfg.SplitBrain = t.SplitBrain
	cfg.PingInterval, cfg.PingTimeout, cfg.AckTimeout = t.Timing.PingInterval, t.Timing.PingTimeout, t.Timing.AckTimeout
	if cfg.Data == nil || cfg.Meta == nil {
		errs = append(errs, "data and metadata areas are required")
	}
	if cfg.Listener == nil && cfg.Listen == "" {
		errs = append(errs, "no listen address")
	}
	if cfg.PeerAddress == "" {
		errs = append(errs, "no peer address")
	}
	if cfg.Node == "" || cfg.Peer == "" || cfg.Node == cfg.Peer {
		errs = append(errs, fmt.Sprintf("node %q and peer %q must be two different names", cfg.Node, cfg.Peer))
	}
	if len(cfg.Secret) < wire.MinSecretLen {
		errs = append(errs, fmt.Sprintf("the shared secret has %d bytes, at least %d are needed", len(cfg.Secret), wire.MinSecretLen))
	}
	if len(errs) > 0 {
		return fmt.Errorf("replicate: %s: invalid configuration: %s", cfg.Resource, strings.Join(errs, "; "))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = cfg.Logger.With("resource", cfg.Resource)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.ConnectTimeout, DefaultConnectTimeout)
	def(&cfg.RetryMax, DefaultRetryMax)
	return nil
}

// errNotPrimary maps to EPERM for NBD clients.
var errNotPrimary = fmt.Errorf("%w (%w)", ErrNotPrimary, nbd.ErrReadOnly)

// eio wraps a disk error so that NBD clients see EIO whatever the cause.
func eio(what string, err error) error {
	return fmt.Errorf("replicate: %s: %w: %w (%w)", what, ErrDiskFailed, err, syscall.EIO)
}

// localDisk is a volume's local replica: the data area, its metadata and
// the metadata's bitmap, which always belong together.
// listener holds the link's listener, which SetLink may replace.
type listener struct{ net.Listener }

type localDisk struct {
	data nbd.Device
	meta *md.Meta
	bm   *md.Bitmap
	// size is the data area's: it changes with the disk (Resize).
	size int64
}

func (v *Volume) data() nbd.Device { return v.disk.Load().data }
func (v *Volume) meta() *md.Meta   { return v.disk.Load().meta }
func (v *Volume) bm() *md.Bitmap   { return v.disk.Load().bm }

// Size is the size of the data area (larger after a Resize).
func (v *Volume) Size() int64 { return v.disk.Load().size }

// Features are the data area's, minus what the volume does not replicate
// (fast zero, extents, cache); writes are always possible at the NBD
// level, since the role can change while a client is connected.
func (v *Volume) Features() nbd.Features {
	f := v.data().Features()
	return nbd.Features{
		Flush: true, FUA: true, Trim: f.Trim, Zero: true, MultiConn: true,
		Rotational: f.Rotational, MinBlock: f.MinBlock, PreferredBlock: f.PreferredBlock, MaxBlock: f.MaxBlock,
	}
}

// ReadAt serves reads locally, on the primary only (from the peer when
// the local disk failed).
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.readable(); err != nil {
		return err
	}
	if v.diskless.Load() {
		return v.readPeer(ctx, p, off)
	}
	if err := v.unsettled.wait(ctx, off, off+int64(len(p))); err != nil {
		return err
	}
	if err := v.data().ReadAt(ctx, p, off); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return v.detachOr("read", err, func() error { return v.readPeer(ctx, p, off) })
	}
	v.countRead(int64(len(p)))
	return nil
}

// FileRange lets the NBD server send large reads with sendfile when the
// data area is a file and this node is primary.
func (v *Volume) FileRange(off, length int64) (*os.File, int64, bool) {
	fs, ok := v.data().(nbd.FileSource)
	// A read overlapping an unsettled write goes through ReadAt, which
	// waits for it.
	if !ok || v.readable() != nil || v.failed.Load() || v.unsettled.overlaps(off, off+length) {
		return nil, 0, false
	}
	v.countRead(length)
	return fs.FileRange(off, length)
}

func (v *Volume) readable() error {
	switch {
	case v.closed.Load():
		return fmt.Errorf("%w (%w)", ErrClosed, nbd.ErrShutdown)
	case !v.primary.Load():
		return errNotPrimary
	case v.failed.Load():
		v.waitDetached() // a detach under way decides whether the peer serves
		// failed again: an attach that finished meanwhile clears it
		// before it leaves diskless.
		if !v.diskless.Load() && v.failed.Load() {
			return eio("read", errors.New("the local disk failed earlier"))
		}
	}
	return nil
}

// admit takes the shared I/O lock for an application write.
func (v *Volume) admit() error {
	v.ioMu.RLock()
	if err := v.readable(); err != nil {
		v.ioMu.RUnlock()
		return err
	}
	return nil
}

// WriteAt replicates a write.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	var flags uint8
	if fua {
		flags = wire.FlagFUA
	}
	return v.splitRange(off, int64(len(p)), func(o, n int64) error {
		b := p[o-off : o-off+n]
		return v.write(ctx, wire.Frame{Type: wire.Write, Flags: flags, Offset: uint64(o), Length: uint32(n), Payload: b}, n, 0)
	})
}

// Trim replicates a discard.
func (v *Volume) Trim(ctx context.Context, off, length int64, fua bool) error {
	return v.splitRange(off, length, func(o, n int64) error {
		var flags uint8
		if fua {
			flags = wire.FlagFUA
		}
		return v.write(ctx, wire.Frame{Type: wire.Trim, Flags: flags, Offset: uint64(o), Length: uint32(n)}, n, 0)
	})
}

// Zero replicates a write of zeroes. A fast zero is refused (the volume
// does not advertise it).
func (v *Volume) Zero(ctx context.Context, off, length int64, flags nbd.ZeroFlags) error {
	if flags&nbd.ZeroFast != 0 {
		return nbd.ErrNotSupported
	}
	return v.splitRange(off, length, func(o, n int64) error {
		var ff uint8
		if flags&nbd.ZeroFUA != 0 {
			ff = wire.FlagFUA
		}
		return v.write(ctx, wire.Frame{Type: wire.Zero, Flags: ff, Offset: uint64(o), Length: uint32(n), Payload: []byte{uint8(flags & nbd.ZeroNoHole)}}, n, flags&nbd.ZeroNoHole)
	})
}

// maxRangeOp bounds one replicated trim or zero: a frame's Length is 32
// bits, and the activity log takes a bounded number of extents at once.
const maxRangeOp = 64 << 20

// splitRange cuts a write, trim or zero into pieces that each span at most half
// the extents that may be hot (and maxRangeOp), cut at extent boundaries.
func (v *Volume) splitRange(off, length int64, fn func(o, n int64) error) error {
	l := v.meta().Layout()
	ext := l.ALExtentSize
	chunk := min(max(int64(l.MaxHotExtents/2), 1)*ext, max(maxRangeOp/ext, 1)*ext)
	for length > 0 {
		n := min(length, chunk-off%ext)
		if err := fn(off, n); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// spanPool and the waiter pool keep the write path free of allocations
// of its own.
var spanPool = sync.Pool{New: func() any { return new(span) }}

// write is the primary's write path: activity log, then the local write
// and the frame to the peer concurrently, then the acknowledgement the
// protocol asks for. A write the peer did not confirm is recorded in the
// bitmap, and the first of those after the peer left waits for
// OnDegraded and the generation change.
func (v *Volume) write(ctx context.Context, f wire.Frame, n int64, zflags nbd.ZeroFlags) error {
	if err := v.admit(); err != nil {
		return err
	}
	defer v.ioMu.RUnlock()
	if v.diskless.Load() {
		return v.writePeer(ctx, f)
	}
	v.writing.Add(1)
	defer v.writing.Add(-1)
	off := int64(f.Offset)
	release, err := v.meta().Begin(ctx, off, n)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, md.ErrClosed) || errors.Is(err, md.ErrRange) || errors.Is(err, md.ErrTooManyExtents) {
			return fmt.Errorf("replicate: %s: activity log: %w (%w)", v.cfg.Resource, err, syscall.EIO)
		}
		// The metadata is part of the disk: a write it cannot record
		// is a failed disk.
		return v.detachOr("activity log", err, func() error { return v.writePeer(ctx, f) })
	}
	defer release()

	pw := v.unsettled.add(off, off+n)
	defer v.unsettled.settle(pw)
	sp := spanPool.Get().(*span)
	sp.off, sp.end = off, off+n
	v.sending.Add(1)
	v.seqMu.Lock()
	v.nextSeq++
	sp.seq = v.nextSeq
	v.ord.add(sp)
	l := v.cur
	var w *waiter
	sent := false
	if l != nil {
		f.Seq = sp.seq
		w, sent = l.queueLocked(f, l.need(f.Flags&wire.FlagFUA != 0), off, n)
	}
	v.seqMu.Unlock()
	if v.sending.Add(-1) == 0 && l != nil {
		// Let writers that are ready to run queue their frames first, so
		// that one system call carries them all. A lone writer sends at
		// once: a yield would first run whatever else is runnable (the
		// NBD reader it just woke) on its critical path.
		if v.writing.Load() > 1 {
			runtime.Gosched()
		}
		if v.sending.Load() == 0 {
			l.flush()
		}
	}

	v.ord.waitBefore(sp.seq, sp.off, sp.end)
	fua := f.Flags&wire.FlagFUA != 0
	var lerr error
	switch f.Type {
	case wire.Write:
		lerr = v.data().WriteAt(ctx, f.Payload, off, fua)
	case wire.Trim:
		lerr = v.data().Trim(ctx, off, n, fua)
	case wire.Zero:
		zf := zflags
		if fua {
			zf |= nbd.ZeroFUA
		}
		lerr = v.data().Zero(ctx, off, n, zf)
	}
	v.ord.remove(sp)
	spanPool.Put(sp)
	if lerr != nil {
		v.bm().Set(off, n)
		if w != nil {
			go func() { <-w.ch }() // the ack or the link's end still comes
		}
		if ctx.Err() != nil {
			return lerr
		}
		// Sent again once the peer stands in: the second copy lands
		// after the first, and is acknowledged on the peer's disk.
		return v.detachOr(f.Type.String(), lerr, func() error { return v.writePeer(ctx, f) })
	}
	v.countWrite(n)

	perr := errPeerAbsent
	if sent {
		perr = nil
		if w != nil {
			perr = l.wait(ctx, w)
		}
	}
	if perr != nil {
		v.bm().Set(off, n)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return v.ensureDegraded(ctx)
	}
	return nil
}

var errPeerAbsent = errors.New("replicate: no peer")

// ensureDegraded runs, once per absence of the peer, what must happen
// before a write is acknowledged without it: OnDegraded (the cluster
// layer marks the peer outdated), then the generation change, durably.
func (v *Volume) ensureDegraded(ctx context.Context) error {
	v.degMu.Lock()
	defer v.degMu.Unlock()
	if v.degraded {
		return nil
	}
	if v.cfg.OnDegraded != nil {
		if err := v.cfg.OnDegraded(ctx); err != nil {
			return fmt.Errorf("replicate: %s: the peer is away and the degraded hook failed, refusing to acknowledge without it: %w (%w)", v.cfg.Resource, err, syscall.EIO)
		}
	}
	if err := v.rotateLocked(); err != nil {
		return err
	}
	v.degraded = true
	v.log.Warn("replicate: writing without the peer", "peer", v.cfg.Peer)
	return nil
}

// rotateLocked starts a new data history without the peer: the current
// generation becomes the bitmap's base (if the bitmap is not recording
// already) and a fresh one is drawn. Called with degMu held.
func (v *Volume) rotateLocked() error {
	if v.rotated {
		return nil
	}
	err := v.meta().Update(func(sb *md.Superblock) {
		g := genFromMD(sb.Gen)
		if g.Bitmap == 0 {
			g.Bitmap = g.Current
		} else {
			g.pushHistory(g.Current)
		}
		g.Current = md.NewGeneration()
		sb.Gen = genToMD(g)
		sb.Flags |= md.PeerOutdated
	})
	if err != nil {
		return fmt.Errorf("replicate: %s: recording the new generation: %w (%w)", v.cfg.Resource, err, syscall.EIO)
	}
	v.rotated = true
	return nil
}

// diskFailed detaches the local disk after an I/O error. The first
// caller detaches; the others wait until that is done.
func (v *Volume) diskFailed(what string, err error) error {
	v.detMu.Lock()
	first := !v.failed.Load()
	if first {
		v.failed.Store(true)
		v.detached = make(chan struct{})
	}
	ch := v.detached
	v.detMu.Unlock()
	if first {
		v.log.Error("replicate: local disk failed; the replica is detached", "op", what, "err", err)
		v.detachDisk()
		close(ch)
	} else {
		<-ch
	}
	return eio(what, err)
}

// waitDetached waits until the handling of a disk failure is done.
func (v *Volume) waitDetached() {
	v.detMu.Lock()
	ch := v.detached
	v.detMu.Unlock()
	if ch != nil {
		<-ch
	}
}

// diskRepaired forgets a failure: a new disk is in place and current.
func (v *Volume) diskRepaired() {
	v.detMu.Lock()
	v.failed.Store(false)
	v.detached = nil
	v.detMu.Unlock()
}

// detachOr is diskFailed for an application request: when the peer
// stands in for the failed disk (diskless), the request is done through
// it instead, so the client never sees the error.
func (v *Volume) detachOr(what string, err error, viaPeer func() error) error {
	err = v.diskFailed(what, err)
	if v.diskless.Load() {
		return viaPeer()
	}
	return err
}

// detachDisk tells the peer the local disk failed. A primary connected
// to an UpToDate secondary then goes on through it (diskless), once the
// peer has confirmed it recorded the failure: it marks everything out of
// sync for this node and draws a new generation before it handles any
// frame sent after the State, so its Flushed for a Flush sent after it
// says that is durable, and nothing acknowledged through it afterwards
// can be missing from a resync of the old disk.
func (v *Volume) detachDisk() {
	v.mu.Lock()
	l, peer := v.sess, v.peer
	// During a verify the peer is UpToDate as well; the verify stops at
	// its next piece (this disk's digests mean nothing any more).
	serve := v.primary.Load() && l != nil && l.active.Load() && peer != nil && peer.Disk == UpToDate &&
		(v.conn == Connected || v.conn == VerifySource)
	if serve {
		// Setting up a new session writes metadata, which a failed disk
		// cannot be trusted with: none until this primary is diskless,
		// whose sessions write none (setupDiskless).
		v.standalone = true
	}
	v.mu.Unlock()
	v.announce()
	if !serve {
		return
	}
	if err := v.flushPeer(v.ctx); err != nil {
		v.log.Error("replicate: the peer did not confirm it holds the only copy: every request fails", "peer", v.cfg.Peer, "err", err)
		return
	}
	// The peer announced its new generation before its Flushed.
	v.mu.Lock()
	if v.peer != nil {
		v.servedGen.Store(v.peer.Gen.Current)
	}
	v.mu.Unlock()
	v.diskless.Store(true)
	v.mu.Lock()
	v.standalone = false
	if v.sess == nil && !v.closed.Load() {
		v.conn = Connecting // the link ended meanwhile: connect again
	}
	v.mu.Unlock()
	v.wake()
	v.announce()
	v.log.Warn("replicate: diskless: reads, writes and flushes go to the peer until the disk is replaced", "peer", v.cfg.Peer)
}

// errNoPeerCopy: a diskless primary lost the only replica it had.
var errNoPeerCopy = errors.New("the local disk failed and the peer is not connected")

// readPeer serves a read from the peer, in pieces the link carries.
func (v *Volume) readPeer(ctx context.Context, p []byte, off int64) error {
	for len(p) > 0 {
		n := min(len(p), peerReadMax)
		l, w := v.request(wire.Frame{Type: wire.ReadRequest, Offset: uint64(off), Length: uint32(n)}, wire.ReadData, -1, 0)
		if w == nil {
			return eio("read", errNoPeerCopy)
		}
		b, err := l.waitPayload(ctx, w)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			return eio("read from the peer", err)
		}
		if len(b) != n {
			l.end(fmt.Sprintf("%v: ReadData of %d bytes for a read of %d", errProtocol, len(b), n), true)
			return eio("read from the peer", errProtocol)
		}
		copy(p, b)
		l.c.Reader().Release(b)
		p, off = p[n:], off+int64(n)
		v.countRead(int64(n))
	}
	return nil
}

// peerReadMax bounds one ReadRequest, so that a large read does not hold
// the peer's receive buffers for long.
const peerReadMax = 4 << 20

// writePeer is the write path of a diskless primary: the peer has the
// only copy, so every write waits for Written whatever the protocol, and
// nothing is acknowledged without it. No activity log and no bitmap: the
// metadata is on the failed disk, and the peer has marked all of it out
// of sync for this node already.
func (v *Volume) writePeer(ctx context.Context, f wire.Frame) error {
	l, w := v.request(f, wire.Written, -1, 0)
	if w == nil {
		return eio(f.Type.String(), errNoPeerCopy)
	}
	if err := l.wait(ctx, w); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return eio(f.Type.String()+" on the peer", err)
	}
	v.countWrite(int64(f.Length))
	return nil
}

// flushPeer is a diskless primary's flush.
func (v *Volume) flushPeer(ctx context.Context) error {
	l, w := v.peerFlushStart()
	if w == nil {
		return eio("flush", errNoPeerCopy)
	}
	if err := l.wait(ctx, w); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return eio("flush on the peer", err)
	}
	return nil
}

// Flush is a barrier on both replicas: everything acknowledged before it
// is durable on both (or, without the peer, locally and in the bitmap).
func (v *Volume) Flush(ctx context.Context) error {
	if v.closed.Load() {
		return fmt.Errorf("%w (%w)", ErrClosed, nbd.ErrShutdown)
	}
	if !v.primary.Load() {
		if err := v.data().Flush(ctx); err != nil {
			return v.diskFailed("flush", err)
		}
		return nil
	}
	switch {
	case v.diskless.Load():
		return v.flushPeer(ctx)
	case v.failed.Load():
		return eio("flush", errors.New("the local disk failed earlier"))
	}
	return v.flushBoth(ctx)
}

func (v *Volume) flushBoth(ctx context.Context) error {
	l, w := v.peerFlushStart()
	if err := v.data().Flush(ctx); err != nil {
		if w != nil {
			go func() { <-w.ch }()
		}
		if ctx.Err() != nil {
			return err
		}
		return v.detachOr("flush", err, func() error { return v.flushPeer(ctx) })
	}
	if w == nil {
		return nil
	}
	if err := l.wait(ctx, w); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// The writes it covered are in the bitmap (the link's end set
		// their bits); what is left is the degraded acknowledgement.
		return v.ensureDegraded(ctx)
	}
	return nil
}

// peerFlushStart queues a Flush to the peer after every frame sent so
// far; w is nil without a link.
func (v *Volume) peerFlushStart() (*link, *waiter) {
	return v.request(wire.Frame{Type: wire.Flush}, wire.Flushed, -1, 0)
}

// request queues f for the peer after every frame sent so far, with a
// waiter for its answer need (and, when off >= 0, its range in the
// transfer log); w is nil when it did not go out.
func (v *Volume) request(f wire.Frame, need wire.MsgType, off, n int64) (*link, *waiter) {
	v.sending.Add(1)
	v.seqMu.Lock()
	v.nextSeq++
	f.Seq = v.nextSeq
	l := v.cur
	var w *waiter
	if l != nil {
		w, _ = l.queueLocked(f, need, off, n)
	}
	v.seqMu.Unlock()
	if v.sending.Add(-1) == 0 && l != nil {
		l.flush()
	}
	return l, w
}

// syncData is the metadata's data sync (before it forgets extents): the
// local data, and the peer's when this node sends it writes.
func (v *Volume) syncData() error {
	// Not v.ctx: Close flushes through here after ending it.
	if err := v.data().Flush(context.Background()); err != nil {
		return err
	}
	if v.primary.Load() {
		if l, w := v.peerFlushStart(); w != nil {
			// Not confirmed: the link's end has set the bits of every
			// write the peer may not have, before w is answered.
			_ = l.wait(context.Background(), w)
		}
	}
	return nil
}

// diskState derives the local disk state.
func (v *Volume) diskState(sb md.Superblock) DiskState {
	switch {
	case v.attaching.Load():
		return Inconsistent // the new disk, syncing (attach.go)
	case v.diskless.Load():
		return Diskless
	case v.failed.Load():
		return Failed
	case !sb.Flags.Has(md.Consistent) || sb.Flags.Has(md.FullSyncNeeded):
		return Inconsistent
	case sb.Flags.Has(md.Outdated):
		return Outdated
	}
	return UpToDate
}

func (v *Volume) role() Role {
	if v.primary.Load() {
		return Primary
	}
	return Secondary
}

// localState is what this side announces.
func (v *Volume) localState() peerState {
	sb := v.meta().Superblock()
	v.mu.Lock()
	want := v.want
	v.mu.Unlock()
	st := peerState{
		Role: v.role(), Disk: v.diskState(sb), Want: want, Flags: sb.Flags, Epoch: v.epoch.Load(),
		Size: v.Size(), Gran: v.gran, Gen: genFromMD(sb.Gen), DirtyBits: v.bm().Count(), PromotedAt: sb.PromotedAt,
		Proto: v.linkset.Load().Protocol[0],
	}
	if v.attaching.Load() {
		// Still served by the peer: to it (and to a new session's
		// setup) this primary is diskless until the new disk is synced.
		st.Disk = Diskless
	}
	return st
}

func (v *Volume) countRead(n int64) {
	v.appBytes.Add(n)
	v.readBytes.Add(n)
}

func (v *Volume) countWrite(n int64) {
	v.appBytes.Add(n)
	v.writtenBytes.Add(n)
}

// Status is a snapshot of the volume.
func (v *Volume) Status() Status {
	sb := v.meta().Superblock()
	st := Status{
		Resource: v.cfg.Resource, Node: v.cfg.Node, Peer: v.cfg.Peer,
		Role: v.role(), Disk: v.diskState(sb), Protocol: v.linkset.Load().Protocol, Compression: v.linkset.Load().Compression,
		Epoch: v.epoch.Load(), Generations: genFromMD(sb.Gen), OutOfSync: v.bm().OutOfSyncBytes(), Size: v.Size(),
		PeerRole: RoleUnknown, PeerDisk: DiskUnknown,
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	st.Conn, st.Reason, st.Session = v.conn, v.reason, v.sessions
	st.SyncPaused = v.syncResumed != nil
	st.ReadBytes, st.WrittenBytes = v.readBytes.Load(), v.writtenBytes.Load()
	if v.peer != nil {
		st.PeerRole, st.PeerDisk = v.peer.Role, v.peer.Disk
		if l := v.sess; l != nil && l.peerAttach.Load() {
			st.PeerDisk = Inconsistent // the new disk this node syncs
		}
	}
	if l := v.sess; l != nil && !l.active.Load() && st.Conn != Connecting && st.Conn != StandAlone {
		// teardown has begun: it clears active before it fails a single
		// waiter, and sets conn only at its end.
		st.Conn, st.PeerRole, st.PeerDisk = Disconnecting, RoleUnknown, DiskUnknown
		// Why it ends, already: teardown copies it to v.reason only at
		// its end. (pendMu is never held while v.mu is taken.)
		l.pendMu.Lock()
		if l.why != "" {
			st.Reason = l.why
		}
		l.pendMu.Unlock()
	}
	if l := v.sess; l != nil && l.active.Load() {
		st.SessionProtocol, st.SessionCompression = string(l.proto), l.c.Codec().String()
		if !v.primary.Load() && v.peer != nil && v.peer.Role == Primary {
			st.SessionProtocol = string(l.peer.Proto)
		}
		st.PeerHeard = time.Duration(l.since()-l.lastRecv.Load()) <= 3*v.tunables().Timing.PingInterval
	}
	if v.resync != nil {
		p := v.resync.snapshot(v.now(), v.bm().OutOfSyncBytes())
		st.Resync = &p
	}
	if v.verify != nil {
		p := v.verify.snapshot(v.now(), -1)
		st.Verify = &p
	}
	if v.lastResync != nil {
		p := *v.lastResync
		st.LastResync = &p
	}
	return st
}

// announce tells the peer about a change of role, disk state or epoch.
func (v *Volume) announce() {
	v.mu.Lock()
	l := v.sess
	v.mu.Unlock()
	if l != nil && l.active.Load() {
		_ = l.c.Write(wire.Frame{Type: wire.State, Offset: stateUpdate, Epoch: v.epoch.Load(), Payload: v.localState().marshal()})
	}
}

// Promote makes this node primary. It refuses when the peer is primary
// or the local data is not UpToDate, unless forced; a forced promotion
// says what it gives up. Every promotion moves to a new epoch, recorded
// in the superblock, and a promotion without the peer starts a new
// generation at once (so that a crashed primary coming back is a sync
// target, even before the first write here).
func (v *Volume) Promote(ctx context.Context, force bool) (PromoteResult, error) {
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if v.closed.Load() {
		return PromoteResult{}, ErrClosed
	}
	if v.primary.Load() {
		return PromoteResult{Epoch: v.epoch.Load()}, nil
	}
	if v.failed.Load() {
		return PromoteResult{}, fmt.Errorf("replicate: %s: promote: %w", v.cfg.Resource, ErrDiskFailed)
	}
	var discarded []string
	v.mu.Lock()
	peer, conn, sess := v.peer, v.conn, v.sess
	v.mu.Unlock()
	if peer != nil && peer.Role == Primary {
		if !force {
			return PromoteResult{}, fmt.Errorf("replicate: %s: promote: %s: %w", v.cfg.Resource, v.cfg.Peer, ErrPeerPrimary)
		}
		discarded = append(discarded, fmt.Sprintf("%s is primary too: disconnected from it; both sides now write independently (split brain), and one side's writes will be discarded when it is resolved", v.cfg.Peer))
	}
	sb := v.meta().Superblock()
	ds := v.diskState(sb)
	if ds != UpToDate {
		if !force {
			return PromoteResult{}, fmt.Errorf("replicate: %s: promote: the local data is %s: %w", v.cfg.Resource, ds, ErrNotUpToDate)
		}
		switch ds {
		case Outdated:
			discarded = append(discarded, "the local data is Outdated: the writes the peer made since it was last in sync with this node are discarded")
		default:
			discarded = append(discarded, fmt.Sprintf("the local data is %s (an incomplete image, %d bytes out of sync): it is declared complete as it is", ds, v.bm().OutOfSyncBytes()))
		}
	}
	dropped := false
	if force && sess != nil && (conn == SyncTarget || ds != UpToDate || (peer != nil && peer.Role == Primary)) {
		// The session was set up for the old state (this side a target,
		// or both incomplete): end it. Against a primary peer this side
		// stays StandAlone; otherwise the next session syncs from here.
		// Not waiting for the whole teardown: a session being set up
		// waits for ioMu, which this holds (it has no appliers yet).
		v.dropSession(sess, "forced promotion", peer != nil && peer.Role == Primary, false)
		dropped = true
	}
	if err := v.waitAppliers(ctx); err != nil {
		return PromoteResult{}, fmt.Errorf("replicate: %s: promote: %w", v.cfg.Resource, err)
	}
	if v.failed.Load() { // one of those writes failed the disk
		return PromoteResult{}, fmt.Errorf("replicate: %s: promote: %w", v.cfg.Resource, ErrDiskFailed)
	}
	v.seqMu.Lock()
	connected := v.cur != nil && !dropped
	v.seqMu.Unlock()
	epoch := v.epoch.Load()
	if peer != nil {
		epoch = max(epoch, peer.Epoch)
	}
	epoch++
	v.degMu.Lock()
	var rerr error
	if !connected {
		rerr = v.rotateLocked()
	}
	v.degMu.Unlock()
	if rerr != nil {
		return PromoteResult{}, rerr
	}
	err := v.meta().Update(func(s *md.Superblock) {
		s.Epoch = epoch
		s.PromotedAt = v.now().UnixNano()
		s.Flags |= md.WasPrimary
		if force {
			s.Flags = s.Flags&^(md.Outdated|md.FullSyncNeeded) | md.Consistent
		}
	})
	if err != nil {
		return PromoteResult{}, fmt.Errorf("replicate: %s: promote: %w", v.cfg.Resource, err)
	}
	v.epoch.Store(epoch)
	v.primary.Store(true)
	v.announce()
	res := PromoteResult{Epoch: epoch, Discarded: strings.Join(discarded, "; ")}
	v.log.Info("replicate: promoted", "epoch", epoch, "force", force, "discarded", res.Discarded)
	return res, nil
}

// waitAppliers waits until no applier of an ended session (one dropped
// just now, or lost with the link) can still write to the data area: a
// resync chunk or a write of the old primary landing after the promotion
// would overwrite what applications write here. A session that goes on
// (the peer secondary and not a sync source to this side, so it sends
// no data) is not waited for. Called with ioMu held, so no session
// finishes its setup meanwhile; a teardown needs none of the locks held.
func (v *Volume) waitAppliers(ctx context.Context) error {
	var ended []*link
	v.mu.Lock()
	for l := range v.live {
		select {
		case <-l.stop:
			ended = append(ended, l)
		default:
		}
	}
	v.mu.Unlock()
	if len(ended) == 0 {
		return nil
	}
	if h := v.beforeAppliersWait.Load(); h != nil {
		(*h)()
	}
	for _, l := range ended {
		select {
		case <-l.quiet:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the writes the peer sent in the ended session to reach the disk: %w", ctx.Err())
		}
	}
	return nil
}

// Demote makes this node secondary, after flushing on both replicas.
func (v *Volume) Demote(ctx context.Context) error {
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if v.closed.Load() {
		return ErrClosed
	}
	if !v.primary.Load() {
		return nil
	}
	diskless := v.diskless.Load()
	// A new disk syncing under this diskless primary (attach.go) stays:
	// it goes on as an Inconsistent secondary, a target of a full sync.
	attaching := v.attaching.Swap(false)
	switch {
	case diskless:
		// Every acknowledged write is on the peer only: durable there
		// before this node lets go of it.
		if err := v.flushPeer(ctx); err != nil {
			return fmt.Errorf("replicate: %s: demote: %w", v.cfg.Resource, err)
		}
	case !v.failed.Load():
		if err := v.flushBoth(ctx); err != nil {
			return fmt.Errorf("replicate: %s: demote: %w", v.cfg.Resource, err)
		}
	}
	if err := v.meta().Update(func(s *md.Superblock) { s.Flags &^= md.WasPrimary }); err != nil {
		if !v.failed.Load() {
			return fmt.Errorf("replicate: %s: demote: %w", v.cfg.Resource, err)
		}
		// A broken disk must not keep this node primary: the peer takes
		// over, and this disk comes back only through a full sync.
		v.log.Warn("replicate: demote: the failed disk's metadata was not updated", "err", err)
	}
	v.primary.Store(false)
	v.diskless.Store(false)
	if attaching {
		v.attachPending.Store(false)
		v.diskRepaired()
	}
	v.announce()
	if attaching {
		v.mu.Lock()
		l := v.sess
		v.mu.Unlock()
		if l != nil {
			// Its sync as target of a diskless primary is over; a new
			// session makes it a sync target like any secondary.
			l.end("demoted while the new disk synced: it syncs again as secondary", true)
		}
	} else if diskless {
		// A secondary without a disk has nothing to apply the new
		// primary's writes to, and a setup would write metadata on the
		// failed disk: no session any more.
		v.mu.Lock()
		v.standalone = true
		l := v.sess
		if l == nil {
			v.conn = StandAlone
		}
		v.mu.Unlock()
		if l != nil {
			l.end("the local disk failed: detached; replace the disk and recreate the metadata", true)
		}
	}
	v.log.Info("replicate: demoted")
	return nil
}

// Outdate marks the local data Outdated (DRBD's outdate): it is not
// promoted without force until a session with the peer says it is
// current again. Refused on the primary, and while connected to a
// primary (whose writes keep it current); Inconsistent data stays so.
func (v *Volume) Outdate(ctx context.Context) error {
	if v.closed.Load() {
		return ErrClosed
	}
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if v.primary.Load() {
		return fmt.Errorf("replicate: %s: outdate: %w", v.cfg.Resource, ErrIsPrimary)
	}
	if v.failed.Load() {
		return fmt.Errorf("replicate: %s: outdate: %w", v.cfg.Resource, ErrDiskFailed)
	}
	v.mu.Lock()
	l, peer := v.sess, v.peer
	v.mu.Unlock()
	if l != nil && l.active.Load() && peer != nil && peer.Role == Primary {
		return fmt.Errorf("replicate: %s: outdate: %w: connected to the primary, whose writes keep this replica current; disconnect first", v.cfg.Resource, ErrBusy)
	}
	if err := v.meta().Update(func(s *md.Superblock) {
		if s.Flags.Has(md.Consistent) {
			s.Flags |= md.Outdated
		}
	}); err != nil {
		return fmt.Errorf("replicate: %s: outdate: %w", v.cfg.Resource, err)
	}
	v.announce()
	return nil
}

// Connect leaves StandAlone and starts connecting to the peer.
func (v *Volume) Connect(ctx context.Context) error {
	if v.closed.Load() {
		return ErrClosed
	}
	if v.failed.Load() && !v.diskless.Load() {
		// A setup writes metadata, which the failed disk cannot hold.
		return fmt.Errorf("replicate: %s: connect: %w: replace the disk (down, create-md --force, up)", v.cfg.Resource, ErrDiskFailed)
	}
	v.mu.Lock()
	v.standalone = false
	if v.sess == nil {
		v.conn, v.reason, v.sessionReason = Connecting, "", false
	}
	v.mu.Unlock()
	v.wake()
	return nil
}

// session is the current session (nil when there is none), or ErrClosed.
func (v *Volume) session() (*link, error) {
	if v.closed.Load() {
		return nil, ErrClosed
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sess, nil
}

// Disconnect closes the link and stays StandAlone until Connect.
func (v *Volume) Disconnect(ctx context.Context) error {
	l, err := v.session()
	if err != nil {
		return err
	}
	if l != nil {
		v.dropSession(l, "disconnected by the administrator", true, true)
	}
	v.mu.Lock()
	v.standalone, v.conn, v.reason = true, StandAlone, "disconnected by the administrator"
	v.mu.Unlock()
	return nil
}

// PeerFenced tells the volume that fencing confirmed the peer off. A
// session still up is then a dead node's, kept only until the ping
// timeout runs out; meanwhile the peer still counts as Primary and a
// promotion right after the fence would be refused. The session ends at
// once, as a lost link does (the writes the peer may lack are marked out
// of sync), and the volume goes on connecting, so the peer resyncs when it
// comes back. Nothing is sent: nobody is there to read it.
func (v *Volume) PeerFenced(ctx context.Context) error {
	l, err := v.session()
	if l == nil || err != nil {
		return err
	}
	v.log.Info("replicate: the peer was fenced; ending its session without waiting for the ping timeout", "peer", v.cfg.Peer)
	l.end("the peer was fenced (confirmed off)", false)
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("replicate: %s: peer fenced: %w", v.cfg.Resource, ctx.Err())
	}
}

// dropSession ends a session with an orderly Disconnect and, with wait,
// waits until it is torn down; standalone keeps this side from
// reconnecting.
func (v *Volume) dropSession(l *link, why string, standalone, wait bool) {
	v.mu.Lock()
	if standalone {
		v.standalone = true
		v.reason = why
	}
	v.mu.Unlock()
	l.end(why, true)
	if wait {
		<-l.done
	}
}

// Resync makes this side the target of a resync from the peer: of
// everything (full, DRBD's invalidate) or of what the union of both
// bitmaps marks. Refused on the primary and while a resync or verify
// runs. It returns once the request is recorded; Status shows the
// resync.
func (v *Volume) Resync(ctx context.Context, full bool) error {
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if v.closed.Load() {
		return ErrClosed
	}
	if v.primary.Load() {
		return fmt.Errorf("replicate: %s: resync: demote first, a primary cannot be a sync target: %w", v.cfg.Resource, ErrIsPrimary)
	}
	v.mu.Lock()
	busy := v.resync != nil || v.verify != nil
	l := v.sess
	v.mu.Unlock()
	if busy {
		return fmt.Errorf("replicate: %s: resync: %w", v.cfg.Resource, ErrBusy)
	}
	want := wantTargetBitmap
	if full {
		want = wantTargetFull
		v.bm().Set(0, v.Size())
		if err := v.bm().FlushAll(); err != nil {
			return fmt.Errorf("replicate: %s: resync: %w", v.cfg.Resource, err)
		}
		if err := v.meta().Update(func(s *md.Superblock) { s.Flags = s.Flags&^md.Consistent | md.FullSyncNeeded }); err != nil {
			return fmt.Errorf("replicate: %s: resync: %w", v.cfg.Resource, err)
		}
	}
	v.mu.Lock()
	v.want = want
	v.mu.Unlock()
	if l != nil {
		v.dropSession(l, "restarting the session for a resync", false, false)
	}
	return v.Connect(ctx)
}

// Resolve ends a split brain: discardMyData makes this side the victim,
// the target of a resync of the union of both bitmaps (a full sync if
// the histories are unrelated); without it this side is the survivor and
// just reconnects (the victim's admin runs Resolve with discardMyData).
func (v *Volume) Resolve(ctx context.Context, discardMyData bool) error {
	if v.closed.Load() {
		return ErrClosed
	}
	if discardMyData {
		if v.primary.Load() {
			return fmt.Errorf("replicate: %s: resolve: demote the victim first: %w", v.cfg.Resource, ErrIsPrimary)
		}
		v.mu.Lock()
		v.want = wantDiscard
		v.mu.Unlock()
	}
	return v.Connect(ctx)
}

// Close drains application I/O, flushes, ends the link with an orderly
// Disconnect and closes the metadata cleanly. It does not close the data
// and metadata areas, which the caller owns.
func (v *Volume) Close(ctx context.Context) error {
	if v.closed.Swap(true) {
		return ErrClosed
	}
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	var errs []error
	switch {
	case v.primary.Load() && v.diskless.Load():
		// What it acknowledged is on the peer only: durable there first.
		if err := v.flushPeer(ctx); err != nil {
			errs = append(errs, err)
		}
	case v.primary.Load() && !v.failed.Load():
		if err := v.flushBoth(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	v.mu.Lock()
	v.standalone, v.conn, v.reason = true, StandAlone, "closed"
	l := v.sess
	v.mu.Unlock()
	v.cancel()
	_ = v.ln.Load().Close()
	if l != nil {
		l.end("closing", true)
		<-l.done
	}
	v.wg.Wait()
	if err := v.meta().Close(!v.failed.Load()); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("replicate: %s: close: %w", v.cfg.Resource, err)
	}
	return nil
}

// wake makes the dialer try now.
func (v *Volume) wake() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

// isEOF reports an orderly end of the stream.
func isEOF(err error) bool { return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) }
