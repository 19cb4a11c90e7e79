package replicate

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/replicate/md"
	"github.com/tandem-ha/tandem/replicate/wire"
)

// growable gives n a grow hook over its Mems: the data and the external
// metadata made larger in place, as truncate or lvextend would.
func growable(n *testNode) {
	f := func(ctx context.Context, size int64) (GrowTarget, error) {
		l, err := md.NewLayout(size, n.opts.md)
		if err != nil {
			return GrowTarget{}, err
		}
		n.data.Grow(size)
		n.meta.Grow(l.MetaSize())
		return GrowTarget{Data: n.device(), Meta: n.meta, InPlace: true}, nil
	}
	n.grow.Store(&f)
}

// The primary grows both replicas online: writes go on at the new size,
// the new range is resynced to the peer (or, assumed clean, not), and the
// replicas end byte-identical; the peer restarted opens at the new size
// and needs no full sync.
func TestResizeGrowsBoth(t *testing.T) {
	for _, clean := range []bool{false, true} {
		t.Run(map[bool]string{false: "resync", true: "assume-clean"}[clean], func(t *testing.T) {
			p := newPair(t, pairOpts{blank: true})
			p.waitConnected(10 * time.Second)
			mustPromote(t, p.a, false)
			ctx := context.Background()
			const old, grown = 8 << 20, 24 << 20
			for off := int64(0); off < old; off += 1 << 20 {
				if err := p.a.v.WriteAt(ctx, block(byte(off>>20), off, 256), off, false); err != nil {
					t.Fatal(err)
				}
			}
			growable(p.a)
			growable(p.b)
			if clean {
				// Both grown devices hold the same bytes there: zeros.
				p.a.data.Grow(grown)
				p.b.data.Grow(grown)
			} else {
				// What the grown devices hold differs: the resync makes it
				// one.
				p.b.data.Grow(grown)
				if _, err := p.b.data.WriteAt(bytes.Repeat([]byte{0xee}, 1<<20), old+4<<20); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.a.v.Resize(ctx, grown, ResizeOptions{AssumeClean: clean}); err != nil {
				t.Fatal(err)
			}
			if a, b := p.a.v.Size(), p.b.v.Size(); a != grown || b != grown {
				t.Fatalf("sizes after resize: %d and %d, want %d", a, b, grown)
			}
			// Writes beyond the old end, at once.
			if err := p.a.v.WriteAt(ctx, block('n', grown-8192, 2), grown-8192, false); err != nil {
				t.Fatalf("write past the old end: %v", err)
			}
			waitFor(t, 10*time.Second, "in sync at the new size", func() bool {
				a, b := p.a.v.Status(), p.b.v.Status()
				return a.Conn == Connected && a.OutOfSync == 0 && b.Disk == UpToDate && b.Size == grown
			})
			if s := p.a.v.Status(); s.Size != grown {
				t.Fatalf("status size %d", s.Size)
			}
			if !bytes.Equal(p.a.data.Bytes(), p.b.data.Bytes()) {
				t.Fatal("the replicas differ after the resize")
			}
			rep, err := p.a.v.Verify(ctx, false)
			if err != nil || len(rep.Differing) != 0 || rep.ComparedBytes != grown {
				t.Fatalf("verify after the resize: %+v %v", rep, err)
			}
			// The peer's metadata is at the new size on disk.
			p.b.kill(false, 0)
			p.b.restart()
			waitFor(t, 10*time.Second, "beta back, in sync", func() bool {
				s := p.b.v.Status()
				return s.Conn == Connected && s.Disk == UpToDate && s.Size == grown && p.a.v.Status().OutOfSync == 0
			})
			if last := p.b.v.Status().LastResync; last != nil && last.Full {
				t.Fatalf("beta restarted after the resize took a full sync: %+v", last)
			}
		})
	}
}

// Refusals change nothing: the volume keeps its size and its I/O.
func TestResizeRefused(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	const old = 8 << 20
	growable(p.a)
	if err := p.b.v.Resize(ctx, 16<<20, ResizeOptions{}); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("resize on the secondary: %v, want ErrNotPrimary", err)
	}
	if err := p.a.v.Resize(ctx, 4<<20, ResizeOptions{}); !errors.Is(err, ErrResizeRefused) {
		t.Fatalf("shrink: %v, want ErrResizeRefused", err)
	}
	if err := p.a.v.Resize(ctx, 16<<20+512, ResizeOptions{}); !errors.Is(err, ErrResizeRefused) {
		t.Fatalf("unaligned: %v, want ErrResizeRefused", err)
	}
	if err := p.a.v.Resize(ctx, old, ResizeOptions{}); err != nil {
		t.Fatalf("resize to the size it has: %v, want nothing to do", err)
	}
	// beta has no room (its hook refuses).
	if err := p.a.v.Resize(ctx, 16<<20, ResizeOptions{}); !errors.Is(err, ErrResizeRefused) {
		t.Fatalf("resize the peer cannot follow: %v, want ErrResizeRefused", err)
	} else if !bytes.Contains([]byte(err.Error()), []byte("no grow hook")) {
		t.Fatalf("the refusal does not say the peer's reason: %v", err)
	}
	for _, n := range []*testNode{p.a, p.b} {
		if s := n.v.Status(); s.Size != old || s.Conn != Connected {
			t.Fatalf("%s after refused resizes: %+v", n.name, s)
		}
	}
	if err := p.a.v.WriteAt(ctx, block('r', old-4096, 1), old-4096, false); err != nil {
		t.Fatalf("write after refused resizes: %v", err)
	}
	if err := p.a.v.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	growable(p.b)
	if err := p.a.v.Resize(ctx, 16<<20, ResizeOptions{}); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("resize without the peer: %v, want ErrNotConnected", err)
	}
	if s := p.a.v.Status(); s.Size != old {
		t.Fatalf("size after a refused resize: %d", s.Size)
	}
}

// The peer grows and its answer is lost with the link: the primary stays
// at the old size and the next setup finds the sizes differ. The smaller
// side stays StandAlone saying what to do, the larger goes on connecting;
// a resize run again on the smaller grows it alone, and they connect,
// resync the new range and end identical.
func TestResizeAnswerLost(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	const old, grown = 8 << 20, 16 << 20
	growable(p.a)
	growable(p.b)
	f := *p.b.grow.Load()
	cut := func(ctx context.Context, size int64) (GrowTarget, error) {
		tgt, err := f(ctx, size)
		tgt.Done = func() {
			if nc := p.b.v.sessionConn(); nc != nil {
				nc.Close() // before the answer goes out
			}
		}
		return tgt, err
	}
	p.b.grow.Store(&cut)
	if err := p.a.v.Resize(ctx, grown, ResizeOptions{}); err == nil {
		t.Fatal("resize whose answer was lost: no error")
	}
	if a, b := p.a.v.Size(), p.b.v.Size(); a != old || b != grown {
		t.Fatalf("sizes: alpha %d, beta %d; want %d and %d", a, b, old, grown)
	}
	waitFor(t, 10*time.Second, "alpha StandAlone over the sizes", func() bool {
		s := p.a.v.Status()
		return s.Conn == StandAlone && strings.Contains(s.Reason, "run the resize again on this node")
	})
	if s := p.b.v.Status(); s.Conn == StandAlone {
		t.Fatalf("beta, the larger, gave up connecting: %+v", s)
	}
	if err := p.a.v.WriteAt(ctx, block('d', 4096, 1), 4096, false); err != nil {
		t.Fatalf("alpha's write while apart: %v", err)
	}
	if err := p.a.v.Resize(ctx, grown, ResizeOptions{}); err != nil {
		t.Fatalf("the resize run again: %v", err)
	}
	if err := p.a.v.WriteAt(ctx, block('e', grown-4096, 1), grown-4096, false); err != nil {
		t.Fatalf("write past the old end: %v", err)
	}
	waitFor(t, 10*time.Second, "in sync at the new size", func() bool {
		a, b := p.a.v.Status(), p.b.v.Status()
		return a.Conn == Connected && a.OutOfSync == 0 && b.Disk == UpToDate && a.Size == grown
	})
	if !bytes.Equal(p.a.data.Bytes(), p.b.data.Bytes()) {
		t.Fatal("the replicas differ")
	}
}

// A peer whose tandem predates resize is not asked: refused with the
// reason, nothing grown.
func TestResizeOldPeer(t *testing.T) {
	p := newPair(t, pairOpts{blank: true, betaDrops: wire.FeatureResize})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	growable(p.a)
	growable(p.b)
	if err := p.a.v.Resize(context.Background(), 16<<20, ResizeOptions{}); !errors.Is(err, ErrNotConnected) || !strings.Contains(err.Error(), "predates") {
		t.Fatalf("resize with an old peer: %v, want refused naming it", err)
	}
	if a, b := p.a.v.Size(), p.b.v.Size(); a != 8<<20 || b != 8<<20 {
		t.Fatalf("sizes after the refusal: %d, %d", a, b)
	}
}

// With the peer down, a resize is refused unless the peer is assumed to
// have the space: the primary grows alone and writes past the old end;
// the peer, back, grows at connect (after its hook first refused: it
// stays StandAlone saying why while the primary goes on connecting) and
// the new range resyncs.
func TestResizePeerAway(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	const grown = 16 << 20
	growable(p.a)
	p.b.kill(false, 0)
	waitFor(t, 10*time.Second, "alpha without beta", func() bool { return p.a.v.Status().Conn != Connected })
	if err := p.a.v.Resize(ctx, grown, ResizeOptions{}); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("resize with the peer down: %v, want ErrNotConnected", err)
	}
	if err := p.a.v.Resize(ctx, grown, ResizeOptions{AssumePeerHasSpace: true}); err != nil {
		t.Fatalf("resize assuming the peer has space: %v", err)
	}
	if err := p.a.v.WriteAt(ctx, block('p', grown-8192, 2), grown-8192, false); err != nil {
		t.Fatalf("write past the old end: %v", err)
	}
	// beta back without a way to grow (its hook refuses).
	p.b.restart()
	waitFor(t, 10*time.Second, "beta StandAlone, saying why", func() bool {
		s := p.b.v.Status()
		return s.Conn == StandAlone && strings.Contains(s.Reason, "cannot grow")
	})
	if s := p.a.v.Status(); s.Conn == StandAlone {
		t.Fatalf("alpha gave up connecting: %+v", s)
	}
	growable(p.b)
	if err := p.b.v.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "beta grown and in sync", func() bool {
		a, b := p.a.v.Status(), p.b.v.Status()
		return a.Conn == Connected && a.OutOfSync == 0 && b.Disk == UpToDate && b.Size == grown
	})
	if !bytes.Equal(p.a.data.Bytes(), p.b.data.Bytes()) {
		t.Fatal("the replicas differ")
	}
}

func synced(s Status) bool {
	return s.Conn == Connected && s.Resync == nil && !s.SyncPaused && s.OutOfSync == 0
}

// Two resizes while writers keep going, some of them past each old end
// as soon as the volume has grown: no write fails, and the replicas end
// identical at the last size.
func TestResizeUnderLoad(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	growable(p.a)
	growable(p.b)
	errc := make(chan error, 1)
	go func() {
		ctx := context.Background()
		for _, size := range []int64{16 << 20, 32 << 20} {
			time.Sleep(30 * time.Millisecond)
			if err := p.a.v.Resize(ctx, size, ResizeOptions{}); err != nil {
				errc <- err
				return
			}
			for deadline := time.Now().Add(20 * time.Second); !synced(p.a.v.Status()); time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					errc <- errors.New("the grown range did not sync")
					return
				}
			}
		}
		errc <- nil
	}()
	workload(t, p.a.v, 4, 3000, 7)
	if err := <-errc; err != nil {
		t.Fatalf("resize under load: %v", err)
	}
	// Writes landed past 16 MiB: the last resize came while they ran.
	if bytes.Count(p.a.data.Bytes()[16<<20:], []byte{0}) == 16<<20 {
		t.Fatal("no write past 16 MiB: the workload ended before the last resize")
	}
	waitFor(t, 20*time.Second, "in sync at 32 MiB", func() bool {
		a, b := p.a.v.Status(), p.b.v.Status()
		return a.Conn == Connected && a.OutOfSync == 0 && b.Disk == UpToDate && b.Size == 32<<20
	})
	p.identical()
}
