package replicate

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/replicate/disk"
	"github.com/tandem-ha/tandem/replicate/md"
)

// loader writes 4 KiB blocks at random offsets from several goroutines
// until stopped, flushing now and then, and records what it did.
type loader struct {
	v       *Volume
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	after   map[int64]bool // blocks written by writes started after mark
	marked  atomic.Bool
	errs    atomic.Int64
	lastErr atomic.Value
	writes  atomic.Int64
}

func startLoader(v *Volume, writers int, region int64, seed uint64) *loader {
	ld := &loader{v: v, stop: make(chan struct{}), after: map[int64]bool{}}
	for w := range writers {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			for i := 0; ; i++ {
				select {
				case <-ld.stop:
					return
				default:
				}
				off := r.Int64N(region/4096) * 4096
				after := ld.marked.Load()
				var err error
				if i%16 == 15 {
					err = v.Flush(context.Background())
				} else {
					err = v.WriteAt(context.Background(), block(byte(w+1), off, uint32(i)), off, false)
				}
				if err != nil {
					ld.errs.Add(1)
					ld.lastErr.Store(err)
					continue
				}
				ld.writes.Add(1)
				if after && i%16 != 15 {
					ld.mu.Lock()
					ld.after[off] = true
					ld.mu.Unlock()
				}
			}
		}()
	}
	return ld
}

func (ld *loader) halt() {
	close(ld.stop)
	ld.wg.Wait()
}

func TestSecondaryKilledUnderLoad(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 16 << 20})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var atEntry Status
	hook := func() {
		once.Do(func() {
			// What the cluster layer reads while it answers: never a
			// connected peer (it would mark it UpToDate again).
			atEntry = p.a.v.Status()
			close(entered)
		})
		<-release
	}
	p.a.onDegraded.Store(&hook)

	ld := startLoader(p.a.v, 4, 16<<20, 3)
	waitFor(t, 10*time.Second, "replicated writes", func() bool { return ld.writes.Load() > 200 })
	p.b.kill(true, 11)
	// Only writes started after the power cut are surely not on beta: one
	// started just before it may have been flushed there, so it counts
	// towards what the resync may send beyond the dirtied bytes, not
	// towards what it must send.
	ld.marked.Store(true)

	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("OnDegraded was not called after the secondary died")
	}
	if atEntry.Conn != Disconnecting && atEntry.Conn != Connecting || atEntry.PeerDisk != DiskUnknown {
		t.Fatalf("status while OnDegraded runs: connection %s, peer disk %s; want Disconnecting or Connecting, DUnknown", atEntry.Conn, atEntry.PeerDisk)
	}
	// While OnDegraded runs, no write started now may be acknowledged.
	var early atomic.Int64
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := int64(1000+i) * 4096
			ld.mu.Lock()
			ld.after[off] = true
			ld.mu.Unlock()
			if err := p.a.v.WriteAt(context.Background(), block(0xee, off, 1), off, false); err == nil {
				select {
				case <-release:
				default:
					early.Add(1)
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // a negative check: nothing may complete meanwhile
	if n := early.Load(); n != 0 {
		t.Fatalf("%d writes acknowledged without the peer before OnDegraded returned", n)
	}
	close(release)
	wg.Wait()
	base := ld.writes.Load()
	waitFor(t, 10*time.Second, "degraded writes", func() bool { return ld.writes.Load() > base+200 })
	ld.halt()
	if n := ld.errs.Load(); n != 0 {
		t.Fatalf("%d writes failed while degraded; last: %v", n, ld.lastErr.Load())
	}
	if n := p.a.degraded.Load(); n != 1 {
		t.Fatalf("OnDegraded called %d times, want once", n)
	}
	st := p.a.v.Status()
	if st.Generations.Bitmap == 0 || st.OutOfSync == 0 || st.Conn == Connected {
		t.Fatalf("degraded primary: %+v, want a bitmap generation and out-of-sync bytes", st)
	}
	dirtied := int64(len(ld.after)) * 4096

	p.b.restart()
	p.waitConnected(20 * time.Second)
	p.identical()
	last := p.a.v.Status().LastResync
	if last == nil {
		t.Fatal("no resync recorded on the source")
	}
	// Everything written without the peer is sent; beyond it only what
	// the peer had not flushed when it died (at most 16 writes per writer
	// between flushes, plus those in flight).
	if last.SentBytes < dirtied || last.SentBytes > dirtied+(4*17)*4096 {
		t.Fatalf("resync sent %d bytes; %d bytes were dirtied without the peer", last.SentBytes, dirtied)
	}
	if st := p.a.v.Status(); st.Generations.Bitmap != 0 || st.Generations != p.b.v.Status().Generations {
		t.Fatalf("generations after resync: %+v vs %+v", st.Generations, p.b.v.Status().Generations)
	}
}

func TestPrimaryCrashRollsBack(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 16 << 20})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)

	// Writers write distinct blocks in the first 8 MiB; an acknowledged
	// one must survive on the other node.
	var crashed atomic.Bool
	var next atomic.Int64
	var mu sync.Mutex
	acked := map[int64][]byte{}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= 2048 || crashed.Load() {
					return
				}
				off := i * 4096
				b := block(byte(w+1), off, 1)
				// FUA: acknowledged means durable on both, so a power cut
				// of both may not lose it (a plain write may be lost by
				// both, like by any disk with a cache).
				fua := w == 0 && i%8 == 0
				if err := p.a.v.WriteAt(context.Background(), b, off, fua); err == nil && !crashed.Load() && fua {
					mu.Lock()
					acked[off] = b
					mu.Unlock()
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, "acknowledged writes", func() bool { return next.Load() > 400 })
	crashed.Store(true)
	p.a.kill(true, 5)
	wg.Wait()

	waitFor(t, 10*time.Second, "the survivor sees the link down", func() bool { return p.b.v.Status().Conn == Connecting })
	r := mustPromote(t, p.b, false)
	if r.Epoch != 2 {
		t.Fatalf("promotion after the crash: epoch %d, want 2", r.Epoch)
	}
	for i := range 64 {
		off := int64(3072+i) * 4096
		if err := p.b.v.WriteAt(context.Background(), block(0xbb, off, 2), off, false); err != nil {
			t.Fatal(err)
		}
	}
	p.a.restart()
	if st := p.a.v.Status(); st.Role != Secondary {
		t.Fatalf("restarted crashed primary: %+v", st)
	}
	p.waitConnected(20 * time.Second)
	p.identical()
	mu.Lock()
	defer mu.Unlock()
	img := p.b.data.Bytes()
	for off, want := range acked {
		got := img[off : off+4096]
		if !bytes.Equal(got, want) {
			t.Fatalf("acknowledged write at %d lost on the new primary", off)
		}
	}
	if s := p.a.v.Status(); s.Epoch != 2 || s.LastResync == nil {
		t.Fatalf("rejoined node: %+v, want epoch 2 and a resync", s)
	}
}

func TestSplitBrainDetectedAndResolved(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	ctx := context.Background()
	for _, n := range []*testNode{p.a, p.b} {
		if err := n.v.Disconnect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mustPromote(t, p.a, true)
	mustPromote(t, p.b, true)
	// The victim-to-be went through one more promotion: it holds the
	// higher epoch, and must still accept the survivor's data.
	if err := p.b.v.Demote(ctx); err != nil {
		t.Fatal(err)
	}
	mustPromote(t, p.b, true)
	if ea, eb := p.a.v.Status().Epoch, p.b.v.Status().Epoch; eb <= ea {
		t.Fatalf("epochs %d and %d: the test needs the victim ahead", ea, eb)
	}
	if err := p.a.v.WriteAt(ctx, block('a', 0, 1), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := p.b.v.WriteAt(ctx, block('b', 40960, 1), 40960, false); err != nil {
		t.Fatal(err)
	}
	snapA, snapB := p.a.data.Bytes(), p.b.data.Bytes()
	for _, n := range []*testNode{p.a, p.b} {
		if err := n.v.Connect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "both StandAlone after split brain", func() bool {
		sa, sb := p.a.v.Status(), p.b.v.Status()
		return sa.Conn == StandAlone && sb.Conn == StandAlone &&
			strings.Contains(sa.Reason, "split brain") && strings.Contains(sb.Reason, "split brain")
	})
	// Demoting does not resolve it: the histories still diverge.
	if err := p.b.v.Demote(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.b.v.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.a.v.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "split brain detected again", func() bool {
		sa, sb := p.a.v.Status(), p.b.v.Status()
		return sa.Conn == StandAlone && sb.Conn == StandAlone && strings.Contains(sb.Reason, "split brain")
	})
	if !bytes.Equal(p.a.data.Bytes(), snapA) || !bytes.Equal(p.b.data.Bytes(), snapB) {
		t.Fatal("data changed although split brain must not be resolved silently")
	}
	if err := p.b.v.Resolve(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := p.a.v.Resolve(ctx, false); err != nil {
		t.Fatal(err)
	}
	p.waitConnected(10 * time.Second)
	p.identical()
	if ea, eb := p.a.v.Status().Epoch, p.b.v.Status().Epoch; ea != eb || ea != 3 {
		t.Fatalf("epochs after resolve: survivor %d, victim %d; want both 3 (above both)", ea, eb)
	}
	if !bytes.Equal(p.b.data.Bytes()[:4096], block('a', 0, 1)) {
		t.Fatal("the survivor's write did not reach the victim")
	}
	if !bytes.Equal(p.b.data.Bytes()[40960:45056], make([]byte, 4096)) {
		t.Fatal("the victim's write survived")
	}
}

func TestSplitBrainPolicyDiscardZeroChanges(t *testing.T) {
	// beta is promoted but writes nothing: it is the target.
	p := splitBrain(t, splitBrainCase{policy: "discard-zero-changes", alpha: []int64{2}})
	if !bytes.Equal(p.b.data.Bytes()[8192:12288], block('a', 8192, 1)) {
		t.Fatal("alpha's write did not reach beta")
	}
}

func TestVerifyFindsFlippedByte(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 4 << 20})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	workload(t, p.a.v, 4, 50, 9)
	ctx := context.Background()
	if err := p.a.v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := p.a.v.Verify(ctx, false)
	if err != nil || len(rep.Differing) != 0 || rep.ComparedBytes != 4<<20 {
		t.Fatalf("verify of identical replicas: %+v, %v", rep, err)
	}
	const off = 1234567
	flip := []byte{p.b.data.Bytes()[off] ^ 0x5a}
	if _, err := p.b.data.WriteAt(flip, off); err != nil {
		t.Fatal(err)
	}
	rep, err = p.a.v.Verify(ctx, false)
	want := []Range{{Offset: off / 4096 * 4096, Length: 4096}}
	if err != nil || len(rep.Differing) != 1 || rep.Differing[0] != want[0] || rep.Repaired {
		t.Fatalf("verify: %+v, %v; want exactly %+v", rep, err, want)
	}
	// On the secondary, the primary runs it and the same report comes back.
	waitFor(t, 5*time.Second, "the secondary sees the primary", func() bool { return p.b.v.Status().PeerRole == Primary })
	rep, err = p.b.v.Verify(ctx, false)
	if err != nil || len(rep.Differing) != 1 || rep.Differing[0] != want[0] || rep.Repaired || rep.ComparedBytes != 4<<20 {
		t.Fatalf("verify on the secondary: %+v, %v; want exactly %+v", rep, err, want)
	}
	if st := p.a.v.Status(); st.Conn != Connected {
		t.Fatalf("primary after the verify it ran for the secondary: %s", st.Conn)
	}
	rep, err = p.a.v.Verify(ctx, true)
	if err != nil || !rep.Repaired || len(rep.Differing) != 1 {
		t.Fatalf("verify with repair: %+v, %v", rep, err)
	}
	p.waitConnected(10 * time.Second)
	p.identical()
	rep, err = p.a.v.Verify(ctx, false)
	if err != nil || len(rep.Differing) != 0 {
		t.Fatalf("verify after repair: %+v, %v", rep, err)
	}
	// A repair asked on the secondary resyncs from the primary's data.
	if _, err := p.b.data.WriteAt(flip, off); err != nil {
		t.Fatal(err)
	}
	rep, err = p.b.v.Verify(ctx, true)
	if err != nil || !rep.Repaired || len(rep.Differing) != 1 || rep.Differing[0] != want[0] {
		t.Fatalf("verify with repair on the secondary: %+v, %v", rep, err)
	}
	p.waitConnected(10 * time.Second)
	p.identical()
}

// A verify asked on the secondary fails clearly when the primary cannot
// run it, and stops on the primary when its caller gives up.
func TestVerifyFromSecondaryBusyAndCancel(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 64 << 20, resync: ResyncConfig{MaxRate: 4 << 20}})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	waitFor(t, 5*time.Second, "the secondary sees the primary", func() bool { return p.b.v.Status().PeerRole == Primary })
	ctx := context.Background()
	// The primary verifies at the resync's rate limit (16 s for 64 MiB),
	// so the second one meets it busy.
	first := make(chan error, 1)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, err := p.b.v.Verify(cctx, false)
		first <- err
	}()
	waitFor(t, 5*time.Second, "primary verifying", func() bool { return p.a.v.Status().Conn == VerifySource })
	// Both nodes show the progress.
	waitFor(t, 5*time.Second, "progress on the secondary", func() bool {
		st := p.b.v.Status()
		return st.Conn == VerifyTarget && st.Verify != nil && st.Verify.DoneBytes > 0 && st.Verify.TotalBytes == 64<<20
	})
	if _, err := p.a.v.Verify(ctx, false); !errors.Is(err, ErrBusy) {
		t.Fatalf("a second verify on the primary: %v, want ErrBusy", err)
	}
	if _, err := p.b.v.Verify(ctx, false); !errors.Is(err, ErrBusy) {
		t.Fatalf("a second verify on the secondary: %v, want ErrBusy", err)
	}
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled verify: %v", err)
	}
	waitFor(t, 5*time.Second, "primary back to Connected", func() bool { return p.a.v.Status().Conn == Connected })
	waitFor(t, 5*time.Second, "secondary back to Connected", func() bool {
		st := p.b.v.Status()
		return st.Conn == Connected && st.Verify == nil
	})
	// Disconnected: no peer to ask.
	if err := p.b.v.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.b.v.Verify(ctx, false); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("verify while disconnected: %v, want ErrNotConnected", err)
	}
}

func TestResyncChecksumSkipsEqualBlocks(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 4 << 20, resync: ResyncConfig{Checksum: true, MaxRate: 64 << 20, AppShare: 0.5}})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	for i := range 32 {
		off := int64(i) * 8192
		if err := p.a.v.WriteAt(ctx, block('x', off, 1), off, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.b.v.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "link down", func() bool { return p.a.v.Status().Conn == Connecting })
	// 32 blocks rewritten with what they already hold, 8 changed.
	for i := range 40 {
		off := int64(i) * 8192
		ver := uint32(1)
		if i >= 32 {
			ver = 2
		}
		if err := p.a.v.WriteAt(ctx, block('x', off, ver), off, false); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.a.v.Status().OutOfSync; got != 40*4096 {
		t.Fatalf("out of sync: %d, want %d", got, 40*4096)
	}
	if err := p.b.v.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	p.waitConnected(10 * time.Second)
	p.identical()
	last := p.a.v.Status().LastResync
	if last == nil || !last.Checksum || last.SentBytes != 8*4096 || last.TotalBytes != 40*4096 {
		t.Fatalf("checksum resync: %+v, want 8 blocks sent of 40", last)
	}
}

func TestResyncFullWithProgressAndRate(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 4 << 20, resync: ResyncConfig{MaxRate: 8 << 20}})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	workload(t, p.a.v, 2, 40, 4)
	ctx := context.Background()
	if err := p.a.v.Resync(ctx, true); !errors.Is(err, ErrIsPrimary) {
		t.Fatalf("resync on the primary: %v, want ErrIsPrimary", err)
	}
	// Damage the secondary behind the volume's back; a full resync
	// (invalidate) repairs it whatever the bitmaps say.
	if _, err := p.b.data.WriteAt(bytes.Repeat([]byte{0xff}, 8192), 1<<20); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.b.v.Resync(ctx, true); err != nil {
		t.Fatal(err)
	}
	var seen Progress
	waitFor(t, 10*time.Second, "resync progress in status", func() bool {
		s := p.a.v.Status()
		if s.Resync != nil && s.Resync.Percent > 0 && s.Resync.Percent < 100 && s.Conn == SyncSource {
			seen = *s.Resync
			return true
		}
		return false
	})
	if seen.TotalBytes != 4<<20 || !seen.Full || seen.LeftBytes <= 0 || seen.Rate <= 0 || seen.ETASeconds <= 0 {
		t.Fatalf("progress: %+v", seen)
	}
	if s := p.b.v.Status(); s.Conn != SyncTarget || s.Disk != Inconsistent {
		t.Fatalf("target during resync: %+v", s)
	}
	if _, err := p.b.v.Promote(ctx, false); !errors.Is(err, ErrNotUpToDate) && !errors.Is(err, ErrPeerPrimary) {
		t.Fatalf("promote a sync target: %v", err)
	}
	p.waitConnected(20 * time.Second)
	// 4 MiB at 8 MiB/s: at least about half a second (the bucket starts
	// with one chunk).
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Fatalf("4 MiB resync took %s with MaxRate 8 MiB/s", el)
	}
	p.identical()
	if last := p.b.v.Status().LastResync; last == nil || !last.Full || last.TotalBytes != 4<<20 {
		t.Fatalf("last resync on the target: %+v", last)
	}
}

func TestCloseIsClean(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	workload(t, p.a.v, 4, 30, 5)
	ctx := context.Background()
	if err := p.a.v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.a.v.WriteAt(ctx, make([]byte, 512), 0, false); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if err := p.a.v.Close(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	// Clean metadata: reopening recovers nothing, and the replicas are
	// in sync: the peer reconnects without any resync.
	p.a.restart()
	if rec := p.a.v.meta().Recovery(); !rec.WasClean || len(rec.Extents) != 0 {
		t.Fatalf("recovery after a clean close: %+v", rec)
	}
	p.waitConnected(10 * time.Second)
	if p.a.v.Status().LastResync != nil || p.b.v.Status().LastResync != nil {
		t.Fatal("a resync after a clean close")
	}
	p.identical()
}

func TestPrimaryCrashWithoutFailover(t *testing.T) {
	// The primary loses power and comes back before anyone promoted the
	// other side: it is the reference again, its hot extents are sent
	// to the secondary (which nobody read from meanwhile).
	p := newPair(t, pairOpts{blank: true, size: 8 << 20})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ld := startLoader(p.a.v, 4, 8<<20, 21)
	waitFor(t, 10*time.Second, "writes", func() bool { return ld.writes.Load() > 300 })
	p.a.kill(true, 77)
	ld.halt()
	p.a.restart()
	if rec := p.a.v.meta().Recovery(); rec.WasClean || len(rec.Extents) == 0 {
		t.Fatalf("recovery after a power cut: %+v", rec)
	}
	p.waitConnected(20 * time.Second)
	p.identical()
	if p.a.v.Status().LastResync == nil {
		t.Fatal("no resync from the crashed primary's hot extents")
	}
	mustPromote(t, p.a, false)
	if err := p.a.v.WriteAt(context.Background(), block('z', 0, 9), 0, true); err != nil {
		t.Fatal(err)
	}
	p.identical()
}

func TestTLSLink(t *testing.T) {
	cert, pool := selfSignedCert(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	p := newPair(t, pairOpts{blank: true, tls: cfg})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	workload(t, p.a.v, 4, 50, 31)
	if err := p.a.v.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.identical()
	// A peer without TLS is refused.
	if err := p.b.v.Disconnect(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.b.v.kill()
	p.b.opts.tls = nil
	p.b.restart()
	waitFor(t, 10*time.Second, "a refusal of the plaintext peer", func() bool {
		s := p.b.v.Status()
		return s.Conn == Connecting && s.Reason != ""
	})
	if s := p.a.v.Status(); s.Conn == Connected {
		t.Fatalf("primary connected to a peer without TLS: %+v", s)
	}
}

func TestPowerCutOfBothNodes(t *testing.T) {
	// Both nodes lose power at one instant, with a small activity log so
	// that extents are evicted all the time (each eviction flushes the
	// peer too). After the restart the crashed primary's hot extents
	// cover every write the secondary may have lost, the replicas are
	// identical, and every acknowledged FUA write is there.
	p := newPair(t, pairOpts{blank: true, size: 8 << 20, md: md.Options{ALExtentSize: 64 << 10, MaxHotExtents: 8}})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	var crashed atomic.Bool
	var mu sync.Mutex
	acked := map[int64][]byte{}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(99, uint64(w)))
			for i := 0; !crashed.Load(); i++ {
				off := (r.Int64N(8<<20/4096/6)*6 + int64(w)) * 4096 // each writer its own blocks
				b := block(byte(w+1), off, uint32(i))
				// FUA: acknowledged means durable on both, so a power cut
				// of both may not lose it (a plain write may be lost by
				// both, like by any disk with a cache).
				fua := w == 0 && i%8 == 0
				if err := p.a.v.WriteAt(context.Background(), b, off, fua); err == nil && !crashed.Load() && fua {
					mu.Lock()
					acked[off] = b
					mu.Unlock()
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, "writes", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) > 30
	})
	crashed.Store(true)
	imgs := disk.PowerCut(rand.New(rand.NewPCG(4, 4)), p.a.data, p.a.meta, p.b.data, p.b.meta)
	p.a.v.kill()
	p.b.v.kill()
	wg.Wait()
	p.a.data, p.a.meta, p.b.data, p.b.meta = imgs[0], imgs[1], imgs[2], imgs[3]
	p.a.restart()
	p.b.restart()
	p.waitConnected(20 * time.Second)
	p.identical()
	img := p.b.data.Bytes()
	mu.Lock()
	defer mu.Unlock()
	for off, want := range acked {
		// A later write to the block may have been lost (never
		// acknowledged, rolled back); only the last acknowledged version
		// or a later one may be there: compare the writer tag and version.
		got := img[off : off+4096]
		if !bytes.Equal(got, want) && !(got[0] == want[0] && verOf(got) > verOf(want)) {
			t.Fatalf("block %d: acknowledged version %d lost (found tag %d version %d)", off/4096, verOf(want), got[0], verOf(got))
		}
	}
}

func verOf(b []byte) uint32 { return uint32(b[3]) | uint32(b[4])<<8 }

func TestSplitBrainPolicyDiscardYoungerPrimary(t *testing.T) {
	// beta, the younger primary, is discarded though it is at a higher
	// epoch than alpha, still primary (the survivor).
	p := splitBrain(t, splitBrainCase{policy: "discard-younger-primary", alpha: []int64{0}, beta: []int64{2}, betaRounds: 2, alphaStaysPrimary: true})
	if !bytes.Equal(p.b.data.Bytes()[8192:12288], make([]byte, 4096)) || !bytes.Equal(p.b.data.Bytes()[:4096], block('a', 0, 1)) {
		t.Fatal("the younger primary's writes were not the ones discarded")
	}
}

// newAlonePair is an in-sync pair whose primary, alpha, has lost beta
// (killed, its disks kept): what alpha writes now, beta resyncs when it
// is restarted.
func newAlonePair(t *testing.T) *pair {
	t.Helper()
	p := newPair(t, pairOpts{blank: true, size: 8 << 20})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	p.b.kill(false, 0)
	waitFor(t, 10*time.Second, "alpha sees the link down", func() bool { return p.a.v.Status().Conn == Connecting })
	return p
}

// A resync chunk confirmed by the target clears the source's bits for
// its range, but that confirmation says nothing about writes to the range
// made after the chunk was read: if the link is lost before the bits are
// cleared, the bits the loss set (a write the peer acknowledged but had
// not flushed, from the transfer log) and those of writes made without
// the peer must survive the late clear, or the next resync skips them.
func TestLateResyncAckKeepsLaterWritesOutOfSync(t *testing.T) {
	p := newAlonePair(t)
	ctx := context.Background()
	const region = 1 << 20 // 16 blocks written without the peer: one resync chunk
	for i := range int64(16) {
		off := region + i*4096
		if err := p.a.v.WriteAt(ctx, block(0x11, off, 1), off, false); err != nil {
			t.Fatal(err)
		}
	}

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(off, n int64) {
		if off <= region && region < off+n {
			once.Do(func() {
				close(entered)
				<-release
			})
		}
	}
	p.a.v.beforeResyncClear.Store(&hook)
	p.b.restart()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the resync chunk was not confirmed")
	}
	// The chunk is on beta and confirmed; its bits are not cleared yet.
	// w1 is replicated (acknowledged by beta, not flushed), then the link
	// goes, then w2 is written without the peer.
	w1, w2 := int64(region+3*4096), int64(region+9*4096)
	if err := p.a.v.WriteAt(ctx, block(0x22, w1, 2), w1, false); err != nil {
		t.Fatal(err)
	}
	p.b.kill(false, 0)
	waitFor(t, 10*time.Second, "the link loss marks w1", func() bool { return p.a.v.bm().IsSet(w1, 4096) })
	if err := p.a.v.WriteAt(ctx, block(0x33, w2, 2), w2, false); err != nil {
		t.Fatal(err)
	}
	close(release)
	waitFor(t, 10*time.Second, "alpha's session torn down", func() bool { return p.a.v.Status().Conn == Connecting })
	for _, w := range []int64{w1, w2} {
		if !p.a.v.bm().IsSet(w, 4096) {
			t.Errorf("block %d, written after the resync read it, is not out of sync after the late confirmation", w/4096)
		}
	}
	if t.Failed() {
		return
	}
	p.a.v.beforeResyncClear.Store(nil)
	p.b.restart()
	p.waitConnected(20 * time.Second)
	p.identical()
}

// A resync chunk the target received before the link broke may still be
// on its way to the disk when an admin forces the target's promotion: the
// promotion must wait for it, or the stale chunk lands over a block an
// application wrote through the new primary (a lost acknowledged write).
// The target's disk holds that chunk's write until Promote either
// returns (the bug) or waits for it.
func TestForcedPromotionWaitsForResyncAppliers(t *testing.T) {
	p := newAlonePair(t)
	ctx := context.Background()
	const x = int64(1 << 20)
	stale := block(0x11, x, 1)
	if err := p.a.v.WriteAt(ctx, stale, x, false); err != nil {
		t.Fatal(err)
	}

	entered, release := make(chan struct{}), make(chan struct{})
	var held atomic.Bool // not a sync.Once: later writes must not wait
	p.b.data.SetFault(func(op string, off, n int64) error {
		if op == "write" && off <= x && x < off+n && held.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
		return nil
	})
	defer p.b.data.SetFault(nil)
	p.b.restart()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the resync chunk never reached beta's disk")
	}
	// The chunk is being applied on beta; the link breaks, and beta is
	// forced primary.
	p.a.kill(false, 0)
	waiting := make(chan struct{})
	hook := func() { close(waiting) }
	p.b.v.beforeAppliersWait.Store(&hook)
	type res struct {
		r   PromoteResult
		err error
	}
	promoted := make(chan res, 1)
	go func() {
		r, err := p.b.v.Promote(ctx, true)
		promoted <- res{r, err}
	}()
	var pr res
	select {
	case pr = <-promoted:
		// Promote did not wait for the chunk: the application's write
		// below comes first, then the chunk is let go.
	case <-waiting:
		close(release)
		pr = <-promoted
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the forced promotion neither returned nor waited for the resync chunk")
	}
	if pr.err != nil {
		t.Fatalf("forced promotion: %v", pr.err)
	}
	fresh := block(0x99, x, 2)
	if err := p.b.v.WriteAt(ctx, fresh, x, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-release:
	default:
		close(release)
	}
	waitFor(t, 10*time.Second, "beta's old session torn down", func() bool { return p.b.v.Status().Conn != SyncTarget })
	got := make([]byte, len(fresh))
	if err := p.b.v.ReadAt(ctx, got, x); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fresh) {
		t.Fatalf("block %d on the new primary: the acknowledged write is gone (first byte %#x, stale chunk %v)", x/4096, got[0], bytes.Equal(got, stale))
	}
}

// splitBrainCase is a split brain to make: both sides disconnect, alpha
// and then (later) beta are promoted and write their blocks (4 KiB, at 4
// KiB times the numbers given, alpha's tagged 'a', beta's 'b'), beta in
// the last of betaRounds promotions (at least one; each a higher epoch),
// both demote (alpha stays primary if told), and they reconnect.
type splitBrainCase struct {
	policy            string
	alpha, beta       []int64
	betaRounds        int
	alphaStaysPrimary bool
}

// splitBrain makes c's split brain; the pair is connected and identical
// again when it returns (the policy resolved it).
func splitBrain(t *testing.T, c splitBrainCase) *pair {
	t.Helper()
	p := newPair(t, pairOpts{blank: true, splitBrain: c.policy})
	p.waitConnected(10 * time.Second)
	ctx := context.Background()
	for _, n := range []*testNode{p.a, p.b} {
		if err := n.v.Disconnect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	write := func(n *testNode, tag byte, blocks []int64) {
		for _, b := range blocks {
			if err := n.v.WriteAt(ctx, block(tag, b*4096, 1), b*4096, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	demote := func(n *testNode) {
		if err := n.v.Demote(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mustPromote(t, p.a, false)
	write(p.a, 'a', c.alpha)
	if !c.alphaStaysPrimary {
		demote(p.a)
	}
	waitFor(t, time.Second, "a later promotion time", func() bool { return time.Now().UnixNano() > p.a.v.meta().Superblock().PromotedAt })
	for i := range max(c.betaRounds, 1) {
		mustPromote(t, p.b, false)
		if i == max(c.betaRounds, 1)-1 {
			write(p.b, 'b', c.beta)
		}
		demote(p.b)
	}
	for _, n := range []*testNode{p.a, p.b} {
		if err := n.v.Connect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	p.waitConnected(10 * time.Second)
	p.identical()
	return p
}

// discard-node-NAME discards that node whatever the sides did (here the
// one that wrote more, and was promoted first); discard-least-changes the
// side that wrote fewer blocks; discard-older-primary the side promoted
// first.
func TestSplitBrainPoliciesDiscardNodeLeastChangesOlderPrimary(t *testing.T) {
	for _, c := range []struct {
		policy      string
		alpha, beta []int64
		survivor    byte
	}{
		{"discard-node-alpha", []int64{2, 3, 4}, []int64{6}, 'b'},
		{"discard-node-beta", []int64{2}, []int64{6, 7, 8}, 'a'},
		{"discard-least-changes", []int64{2, 3, 4}, []int64{6}, 'a'},
		{"discard-least-changes", []int64{2}, []int64{6, 7, 8}, 'b'},
		{"discard-older-primary", []int64{2, 3}, []int64{6}, 'b'}, // alpha was promoted first
	} {
		t.Run(c.policy, func(t *testing.T) {
			p := splitBrain(t, splitBrainCase{policy: c.policy, alpha: c.alpha, beta: c.beta})
			data := p.a.data.Bytes()
			for tag, blocks := range map[byte][]int64{'a': c.alpha, 'b': c.beta} {
				for _, b := range blocks {
					want := make([]byte, 4096)
					if tag == c.survivor {
						want = block(tag, b*4096, 1)
					}
					if !bytes.Equal(data[b*4096:(b+1)*4096], want) {
						t.Errorf("block %d (written by %c): the survivor should be %c's data", b, tag, c.survivor)
					}
				}
			}
		})
	}
}

// A paused resync sends nothing until resumed, while application writes
// go on.
func TestResyncPauseAndResume(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 4 << 20})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	if err := p.a.v.PauseSync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.a.v.PauseSync(ctx); err != nil {
		t.Fatalf("pausing twice: %v", err)
	}
	if s := p.a.v.Status(); !s.SyncPaused || s.Conn != Connected {
		t.Fatalf("paused with no resync: %+v", s)
	}
	if err := p.b.v.Resync(ctx, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the paused resync in the source's status", func() bool {
		s := p.a.v.Status()
		return s.Conn == SyncSource && s.Resync != nil && s.Resync.Paused
	})
	before := p.a.v.Status().Resync.LeftBytes
	if err := p.a.v.WriteAt(ctx, block('p', 8192, 1), 8192, false); err != nil {
		t.Fatalf("a write during the pause: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if s := p.a.v.Status(); s.Resync == nil || s.Resync.LeftBytes < before || s.Resync.SentBytes != 0 {
		t.Fatalf("the paused resync moved: %+v (left %d before)", s.Resync, before)
	}
	if err := p.a.v.ResumeSync(ctx); err != nil {
		t.Fatal(err)
	}
	p.waitConnected(20 * time.Second)
	p.identical()
	if s := p.a.v.Status(); s.SyncPaused || s.LastResync == nil || s.LastResync.Paused {
		t.Fatalf("after the resume: %+v", s)
	}
	if err := p.a.v.ResumeSync(ctx); err != nil {
		t.Fatalf("resuming with nothing paused: %v", err)
	}
}

// Tune changes a running resync's rate (here from a crawl to unlimited)
// and the policy of the next session; bad settings change nothing.
func TestTuneRunningResync(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 8 << 20, resync: ResyncConfig{MaxRate: 64 << 10}})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	if err := p.b.v.Resync(ctx, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the slow resync", func() bool { s := p.a.v.Status(); return s.Conn == SyncSource && s.Resync != nil })
	time.Sleep(200 * time.Millisecond)
	if s := p.a.v.Status(); s.Resync == nil || s.Resync.LeftBytes < 6<<20 {
		t.Fatalf("at 64 KiB/s 8 MiB take two minutes, yet: %+v", s.Resync)
	}
	if err := p.a.v.Tune(Tunables{Resync: ResyncConfig{AppShare: 2}}); err == nil || !strings.Contains(err.Error(), "app share") {
		t.Fatalf("an app share of 2: %v", err)
	}
	if err := p.a.v.Tune(Tunables{SplitBrain: "discard-node-gamma"}); err == nil || !strings.Contains(err.Error(), "discard-node-gamma") {
		t.Fatalf("a policy naming another node: %v", err)
	}
	if got := p.a.v.tunables(); got.Resync.MaxRate != 64<<10 || got.SplitBrain != "disconnect" {
		t.Fatalf("refused settings changed the volume: %+v", got)
	}
	if err := p.a.v.Tune(Tunables{Resync: ResyncConfig{MaxRate: 0}, SplitBrain: "discard-least-changes"}); err != nil {
		t.Fatal(err)
	}
	p.waitConnected(20 * time.Second) // well before the two minutes
	p.identical()
	if got := p.a.v.sessionPolicy(); got != "discard-least-changes" {
		t.Fatalf("policy after Tune: %q", got)
	}
}

// The status counts what the application read and wrote, trims and
// zeroes with the writes; a refused write counts nothing.
func TestStatusCountsApplicationBytes(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	ctx := context.Background()
	if err := p.a.v.WriteAt(ctx, block('x', 0, 1), 0, false); err == nil {
		t.Fatal("a write on the secondary succeeded")
	}
	mustPromote(t, p.a, false)
	if err := p.a.v.WriteAt(ctx, append(block('x', 0, 2), block('x', 4096, 2)...), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := p.a.v.Trim(ctx, 16384, 4096, false); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if err := p.a.v.ReadAt(ctx, buf, 0); err != nil {
		t.Fatal(err)
	}
	if s := p.a.v.Status(); s.WrittenBytes != 3*4096 || s.ReadBytes != 4096 {
		t.Fatalf("written %d, read %d; want %d and 4096", s.WrittenBytes, s.ReadBytes, 3*4096)
	}
}

// pause-sync on the sync target holds the source's resync (DRBD allows
// it on either side): a target paused before the resync asks the new
// session's source to hold; once the chunks already in flight landed
// nothing more is sent, writes go on, and its resume lets the resync
// finish.
func TestResyncPausedByTheTarget(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 4 << 20})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	if err := p.b.v.PauseSync(ctx); err != nil {
		t.Fatalf("pause on the secondary: %v", err)
	}
	if err := p.b.v.Resync(ctx, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the source holding the resync the target paused", func() bool {
		s := p.a.v.Status()
		return s.Conn == SyncSource && s.Resync != nil && s.Resync.Paused
	})
	if s := p.a.v.Status(); s.SyncPaused {
		t.Fatal("the source's own pause flag is set")
	}
	if s := p.b.v.Status(); !s.SyncPaused || s.Conn != SyncTarget {
		t.Fatalf("the target while paused: %+v", s)
	}
	// The pause reaches the source after the session's setup: what it
	// had in flight by then (one window) still lands.
	time.Sleep(200 * time.Millisecond)
	before := p.a.v.Status().Resync
	if before.SentBytes > 16<<20 {
		t.Fatalf("sent %d bytes before holding", before.SentBytes)
	}
	if err := p.a.v.WriteAt(ctx, block('q', 8192, 1), 8192, false); err != nil {
		t.Fatalf("a write during the pause: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if s := p.a.v.Status(); s.Resync == nil || s.Resync.SentBytes != before.SentBytes || s.Resync.LeftBytes < before.LeftBytes {
		t.Fatalf("the resync moved while the target paused it: %+v (before %+v)", s.Resync, before)
	}
	if err := p.b.v.ResumeSync(ctx); err != nil {
		t.Fatal(err)
	}
	p.waitConnected(20 * time.Second)
	p.identical()
}

// An admin outdates a disconnected secondary: it is not promoted without
// force; connected again with nothing changed, it is UpToDate. Refused
// on the primary and on a secondary connected to it.
func TestOutdateByHand(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	if err := p.a.v.Outdate(ctx); !errors.Is(err, ErrIsPrimary) {
		t.Fatalf("outdate on the primary: %v, want ErrIsPrimary", err)
	}
	waitFor(t, 5*time.Second, "beta sees alpha Primary", func() bool { return p.b.v.Status().PeerRole == Primary })
	if err := p.b.v.Outdate(ctx); !errors.Is(err, ErrBusy) {
		t.Fatalf("outdate on a secondary connected to the primary: %v, want ErrBusy", err)
	}
	if err := p.b.v.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.b.v.Outdate(ctx); err != nil {
		t.Fatal(err)
	}
	if s := p.b.v.Status(); s.Disk != Outdated {
		t.Fatalf("after outdate: %s", s.Disk)
	}
	if _, err := p.b.v.Promote(ctx, false); !errors.Is(err, ErrNotUpToDate) {
		t.Fatalf("promote of the outdated secondary: %v, want ErrNotUpToDate", err)
	}
	if err := p.b.v.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "beta UpToDate again", func() bool {
		s := p.b.v.Status()
		return s.Conn == Connected && s.Disk == UpToDate
	})
}
