package replicate

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/replicate/md"
)

// workload runs writers goroutines of n random operations each (writes
// of 512 B to 64 KiB, some FUA, trims, zeroes, flushes) and fails the
// test on any error.
func workload(t *testing.T, v *Volume, writers, n int, seed uint64) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			for i := range n {
				ln := int64(512 * (1 + r.IntN(128)))
				off := r.Int64N(v.Size()-ln) / 512 * 512
				var err error
				switch k := r.IntN(20); {
				case k == 0:
					err = v.Flush(ctx)
				case k == 1:
					err = v.Trim(ctx, off, ln, false)
				case k == 2:
					err = v.Zero(ctx, off, ln, nbd.ZeroNoHole)
				default:
					p := make([]byte, ln)
					for j := range p {
						p[j] = byte(w*31 + i + j/512)
					}
					err = v.WriteAt(ctx, p, off, k == 3)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

func TestProtocolsReplicasIdentical(t *testing.T) {
	for _, proto := range []string{"A", "B", "C"} {
		t.Run(proto, func(t *testing.T) {
			p := newPair(t, pairOpts{protocol: proto, blank: true, compression: map[string]string{"A": "s2", "B": "zstd", "C": "off"}[proto]})
			p.waitConnected(10 * time.Second)
			mustPromote(t, p.a, false)
			workload(t, p.a.v, 8, 150, 1)
			if err := p.a.v.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			p.waitConnected(5 * time.Second)
			p.identical()
			if n := p.a.degraded.Load(); n != 0 {
				t.Fatalf("OnDegraded called %d times with the peer connected", n)
			}
			if s := p.a.v.Status(); s.Generations.Bitmap != 0 || s.Role != Primary || s.PeerRole != Secondary {
				t.Fatalf("status after a connected workload: %+v", s)
			}
		})
	}
}

func TestOverlappingWritesOneOrder(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 1 << 20})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	// Jitter on both disks, so that concurrent writes would land in any
	// order if nothing ordered them.
	for _, n := range []*testNode{p.a, p.b} {
		n.data.SetFault(func(op string, off, ln int64) error {
			if op == "write" {
				time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
			}
			return nil
		})
	}
	// Rounds of 16 concurrent overlapping writes of different sizes;
	// whichever wins locally must win remotely, checked after each round.
	ctx := context.Background()
	r := rand.New(rand.NewPCG(7, 8))
	for round := range 40 {
		var wg sync.WaitGroup
		for w := range 16 {
			off := int64(r.IntN(8)) * 2048
			ln := int64(2048 * (1 + r.IntN(4)))
			buf := make([]byte, ln)
			for j := range buf {
				buf[j] = byte(round*16 + w)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := p.a.v.WriteAt(ctx, buf, off, false); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if err := p.a.v.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		p.identical()
	}
}

func TestSecondaryRefusesApplicationIO(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	err := p.b.v.WriteAt(context.Background(), make([]byte, 4096), 0, false)
	if !errors.Is(err, ErrNotPrimary) || !errors.Is(err, nbd.ErrReadOnly) {
		t.Fatalf("write on a secondary: %v, want ErrNotPrimary wrapping nbd.ErrReadOnly (EPERM)", err)
	}
	if err := p.b.v.ReadAt(context.Background(), make([]byte, 4096), 0); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("read on a secondary: %v", err)
	}
}

func TestPromoteRefusals(t *testing.T) {
	p := newPair(t, pairOpts{}) // not blank: both Inconsistent
	waitFor(t, 10*time.Second, "connected, both Inconsistent", func() bool {
		s := p.a.v.Status()
		return s.Conn == Connected && s.Disk == Inconsistent && s.PeerDisk == Inconsistent && s.Reason != ""
	})
	if _, err := p.a.v.Promote(context.Background(), false); !errors.Is(err, ErrNotUpToDate) {
		t.Fatalf("promote Inconsistent: %v, want ErrNotUpToDate", err)
	}
	r := mustPromote(t, p.a, true)
	if r.Discarded == "" || r.Epoch != 1 {
		t.Fatalf("forced promotion: %+v, want a Discarded text and epoch 1", r)
	}
	// The forced side is now consistent: the initial full sync runs.
	p.waitConnected(20 * time.Second)
	if last := p.b.v.Status().LastResync; last == nil || !last.Full {
		t.Fatalf("initial sync: %+v, want a full sync", last)
	}
	p.identical()
	if _, err := p.b.v.Promote(context.Background(), false); !errors.Is(err, ErrPeerPrimary) {
		t.Fatalf("promote with the peer primary: %v, want ErrPeerPrimary", err)
	}
	if err := p.a.v.Demote(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "peer role Secondary", func() bool { return p.b.v.Status().PeerRole == Secondary })
	r = mustPromote(t, p.b, false)
	if r.Epoch != 2 || r.Discarded != "" {
		t.Fatalf("switchover promotion: %+v, want epoch 2 and nothing discarded", r)
	}
	waitFor(t, 5*time.Second, "epoch 2 on the secondary", func() bool { return p.a.v.Status().Epoch == 2 })
	if sb := p.b.v.meta().Superblock(); sb.Epoch != 2 {
		t.Fatalf("superblock epoch %d, want 2", sb.Epoch)
	}
}

func TestLocalWriteErrorFailsDisk(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	p.a.data.SetFault(func(op string, off, n int64) error {
		if op == "write" {
			return syscall.EIO
		}
		return nil
	})
	// Connected to an UpToDate peer it goes on diskless
	// (diskless_test.go): the write is done through the peer.
	if err := p.a.v.WriteAt(context.Background(), make([]byte, 4096), 8192, false); err != nil {
		t.Fatalf("write on a failing disk with an UpToDate peer: %v", err)
	}
	if s := p.a.v.Status(); s.Disk != Diskless {
		t.Fatalf("disk state %s after an I/O error, want Diskless", s.Disk)
	}
	waitFor(t, 5*time.Second, "the peer sees Diskless", func() bool { return p.b.v.Status().PeerDisk == Diskless })
}

// Without an UpToDate peer a failed disk fails everything.
func TestLocalWriteErrorWithoutPeerFailsEverything(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	p.b.kill(false, 0)
	waitFor(t, 10*time.Second, "alpha without beta", func() bool { return p.a.v.Status().Conn == Connecting })
	p.a.data.SetFault(func(op string, off, n int64) error {
		if op == "write" {
			return syscall.EIO
		}
		return nil
	})
	if err := p.a.v.WriteAt(context.Background(), make([]byte, 4096), 8192, false); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write on a failing disk: %v, want EIO", err)
	}
	p.a.data.SetFault(nil)
	if err := p.a.v.WriteAt(context.Background(), make([]byte, 4096), 0, false); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write after the disk failed: %v, want EIO (detached)", err)
	}
	if err := p.a.v.ReadAt(context.Background(), make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read after the disk failed: %v, want EIO", err)
	}
	if s := p.a.v.Status(); s.Disk != Failed {
		t.Fatalf("disk state %s, want Failed", s.Disk)
	}
}

func TestLargeTrimAndZeroWithFewHotExtents(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, size: 8 << 20, md: md.Options{ALExtentSize: 64 << 10, MaxHotExtents: 4}})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	workload(t, p.a.v, 2, 40, 12)
	if err := p.a.v.Trim(ctx, 4096, 6<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := p.a.v.Zero(ctx, 12345*512, 1<<20, nbd.ZeroFUA); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte{0x42}, 3<<20)
	if err := p.a.v.WriteAt(ctx, big, 3<<20+512, true); err != nil {
		t.Fatal(err)
	}
	if err := p.a.v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p.identical()
	if !bytes.Equal(p.a.data.Bytes()[3<<20+512:6<<20+512], big) {
		t.Fatal("large write not in place")
	}
}

func TestSecondaryDiskFailureDetaches(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	p.b.data.SetFault(func(op string, off, n int64) error {
		if op == "write" {
			return syscall.EIO
		}
		return nil
	})
	ctx := context.Background()
	for i := range 20 {
		off := int64(i) * 4096
		if err := p.a.v.WriteAt(ctx, block('q', off, 1), off, false); err != nil {
			t.Fatalf("write %d on the primary while the secondary's disk fails: %v", i, err)
		}
	}
	waitFor(t, 5*time.Second, "the secondary detached", func() bool {
		s := p.b.v.Status()
		return s.Disk == Failed && s.Conn == StandAlone && strings.Contains(s.Reason, "disk failed")
	})
	if s := p.a.v.Status(); s.OutOfSync == 0 || p.a.degraded.Load() != 1 {
		t.Fatalf("primary after losing the secondary's disk: %+v, OnDegraded %d", s, p.a.degraded.Load())
	}
}

// A peer that lost its power leaves its session open and silent: until
// the ping timeout it still counts as Primary and the survivor may not
// promote. Told that fencing confirmed it off, the survivor ends the
// session at once and promotes with the acknowledged data.
func TestPeerFencedEndsADeadPeersSession(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, proxy: true, pingTimeout: 10 * time.Minute})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	waitFor(t, 5*time.Second, "beta sees alpha Primary", func() bool { return p.b.v.Status().PeerRole == Primary })
	ctx := context.Background()
	data := bytes.Repeat([]byte{0x5c}, 64<<10)
	if err := p.a.v.WriteAt(ctx, data, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	for _, r := range p.relays {
		r.freeze()
	}
	p.a.kill(false, 0)
	if _, err := p.b.v.Promote(ctx, false); !errors.Is(err, ErrPeerPrimary) {
		t.Fatalf("promote while the dead peer's session is up: %v, want ErrPeerPrimary", err)
	}
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.b.v.PeerFenced(fctx); err != nil {
		t.Fatalf("PeerFenced: %v", err)
	}
	if s := p.b.v.Status(); s.Conn == Connected || s.PeerRole != RoleUnknown {
		t.Fatalf("after PeerFenced: conn %s, peer role %s; want the session gone", s.Conn, s.PeerRole)
	}
	if r := mustPromote(t, p.b, false); r.Discarded != "" {
		t.Fatalf("promotion after the fence discarded: %s", r.Discarded)
	}
	got := make([]byte, len(data))
	if err := p.b.v.ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the acknowledged write is not on the survivor: %v", err)
	}
	if err := p.b.v.PeerFenced(fctx); err != nil {
		t.Fatalf("PeerFenced without a session: %v", err)
	}
}

// A peer whose disk hangs still answers pings but acknowledges no write:
// after the ack timeout the primary drops it and goes on degraded, with
// the unacknowledged range out of sync; once the disk answers again the
// peer reconnects and resyncs.
func TestAckTimeoutDropsAPeerThatNeverAcks(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, ackTimeout: 300 * time.Millisecond})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	hang := make(chan struct{})
	var released atomic.Bool
	p.b.data.SetFault(func(op string, off, n int64) error {
		if op == "write" && !released.Load() {
			<-hang
		}
		return nil
	})
	release := sync.OnceFunc(func() { released.Store(true); close(hang) })
	t.Cleanup(release)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	data := bytes.Repeat([]byte{0xa7}, 8192)
	if err := p.a.v.WriteAt(ctx, data, 4096, false); err != nil {
		t.Fatalf("write while the peer's disk hangs: %v, want it acknowledged degraded after the ack timeout", err)
	}
	s := p.a.v.Status()
	if s.Conn == Connected || s.OutOfSync == 0 || !strings.Contains(s.Reason, "ack timeout") {
		t.Fatalf("after the ack timeout: conn %s, out of sync %d, reason %q", s.Conn, s.OutOfSync, s.Reason)
	}
	if p.a.degraded.Load() == 0 {
		t.Fatal("OnDegraded was not called before the degraded ack")
	}
	release()
	p.waitConnected(20 * time.Second)
	p.identical()
}
