package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/replicate/disk"
	"github.com/tandem-ha/tandem/replicate/md"
	"github.com/tandem-ha/tandem/replicate/wire"
)

// newDisk makes a replacement disk for n, with metadata created for
// node (n's own name unless told otherwise), as create-md --force would.
func newDisk(t *testing.T, n *testNode, node string) (*disk.Mem, *disk.Mem) {
	t.Helper()
	l, err := md.NewLayout(n.opts.size, n.opts.md)
	if err != nil {
		t.Fatal(err)
	}
	data, meta := disk.NewMem(n.opts.size), disk.NewMem(l.MetaSize())
	// Not zeroes: a sync that skipped a block shows.
	junk := bytes.Repeat([]byte{0xee}, int(n.opts.size))
	if _, err := data.WriteAt(junk, 0); err != nil {
		t.Fatal(err)
	}
	sb := md.Superblock{DataSize: n.opts.size, Cluster: "testcluster", Resource: "r0", Node: node, Peer: n.peer.name,
		Granularity: l.Granularity, ALExtentSize: l.ALExtentSize, ALSlots: l.ALSlots, MaxHotExtents: l.MaxHotExtents}
	if err := md.Create(meta, sb, md.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return data, meta
}

// attachNew attaches a replacement disk under n; on success n's disks are
// the new ones.
func attachNew(t *testing.T, n *testNode) error {
	t.Helper()
	data, meta := newDisk(t, n, n.name)
	if err := n.v.Attach(context.Background(), disk.Device(data, disk.DeviceOptions{}), meta); err != nil {
		return err
	}
	n.data, n.meta = data, meta
	return nil
}

// attachUnderWay is a diskless primary whose new disk has started its
// (slow) sync.
func attachUnderWay(t *testing.T) *pair {
	t.Helper()
	p := disklessSlowPair(t, "C", false)
	if err := attachNew(t, p.a); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the sync under way", func() bool {
		s := p.b.v.Status()
		return s.Resync != nil && s.Resync.DoneBytes > 1<<20
	})
	return p
}

// disklessSlowPair is disklessPair with a resync slow enough for
// application writes to land all through an attach's sync.
func disklessSlowPair(t *testing.T, protocol string, checksum bool) *pair {
	t.Helper()
	return disklessPairOf(t, pairOpts{blank: true, protocol: protocol, resync: ResyncConfig{MaxRate: 6 << 20, Checksum: checksum}})
}

func disklessPairOf(t *testing.T, o pairOpts) *pair {
	t.Helper()
	p := newPair(t, o)
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	failDisks(p.a)
	_ = p.a.v.WriteAt(context.Background(), make([]byte, 4096), 0, false)
	waitFor(t, 5*time.Second, "alpha Diskless", func() bool { return p.a.v.Status().Disk == Diskless })
	closeFailed(t, p.a)
	return p
}

// closeFailed closes n at the end of the test without counting the
// error its failed disk's metadata gives.
func closeFailed(t *testing.T, n *testNode) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = n.v.Close(ctx)
	})
}

// clients runs writers on disjoint regions of v, each reading its own
// blocks back against what it wrote, until stop is closed or each did
// max operations; every error is reported.
type clients struct {
	wg     sync.WaitGroup
	stop   chan struct{}
	errs   chan error
	ops    atomic.Int64
	mu     sync.Mutex
	model  map[int64][]byte
	region int64
}

func startClients(v *Volume, writers, maxOps int, seed uint64) *clients {
	c := &clients{stop: make(chan struct{}), errs: make(chan error, writers), model: map[int64][]byte{}, region: v.Size() / int64(writers)}
	ctx := context.Background()
	for w := range writers {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			mine := map[int64][]byte{}
			base := int64(w) * c.region
			for i := range maxOps {
				select {
				case <-c.stop:
					return
				default:
				}
				off := base + r.Int64N(c.region/4096)*4096
				var err error
				switch k := r.IntN(10); {
				case k == 0:
					err = v.Flush(ctx)
				case k == 1:
					if err = v.Zero(ctx, off, 4096, 0); err == nil {
						mine[off] = make([]byte, 4096)
					}
				case k < 5 && len(mine) > 0:
					got := make([]byte, 4096)
					if err = v.ReadAt(ctx, got, off); err == nil {
						if want, ok := mine[off]; ok && !bytes.Equal(got, want) {
							err = fmt.Errorf("writer %d: block %d reads back other data than written", w, off/4096)
						}
					}
				default:
					b := block(byte('a'+w), off, uint32(i))
					if err = v.WriteAt(ctx, b, off, k == 5); err == nil {
						mine[off] = b
					}
				}
				if err != nil {
					c.errs <- fmt.Errorf("op %d: %w", i, err)
					return
				}
				c.ops.Add(1)
				time.Sleep(200 * time.Microsecond)
			}
			c.mu.Lock()
			for k, b := range mine {
				c.model[k] = b
			}
			c.mu.Unlock()
		}()
	}
	return c
}

// finish stops the writers and fails the test on any error.
func (c *clients) finish(t *testing.T) {
	t.Helper()
	close(c.stop)
	c.wg.Wait()
	close(c.errs)
	for err := range c.errs {
		t.Fatalf("client I/O: %v", err)
	}
}

// A diskless primary takes a new disk without its clients noticing: I/O
// goes on through the peer while the new disk syncs from it, then is
// local again, and both replicas end identical, with every write the
// clients made during the sync.
func TestAttachDiskUnderDisklessPrimary(t *testing.T) {
	for _, tc := range []struct {
		proto    string
		checksum bool
	}{{"C", false}, {"A", false}, {"C", true}} {
		t.Run(fmt.Sprintf("protocol %s checksum %v", tc.proto, tc.checksum), func(t *testing.T) {
			p := disklessSlowPair(t, tc.proto, tc.checksum)
			c := startClients(p.a.v, 4, 100000, 7)
			waitFor(t, 5*time.Second, "client I/O under way", func() bool { return c.ops.Load() > 50 })
			if err := attachNew(t, p.a); err != nil {
				t.Fatalf("attach: %v", err)
			}
			s := p.a.v.Status()
			if s.Disk != Inconsistent || s.Conn != SyncTarget || s.Role != Primary {
				t.Fatalf("alpha right after attach: %s %s %s, want Primary Inconsistent SyncTarget", s.Role, s.Disk, s.Conn)
			}
			waitFor(t, 5*time.Second, "beta SyncSource to the new disk", func() bool {
				s := p.b.v.Status()
				return s.Conn == SyncSource && s.PeerDisk == Inconsistent
			})
			during := c.ops.Load()
			waitFor(t, 30*time.Second, "alpha's new disk UpToDate", func() bool {
				s := p.a.v.Status()
				return s.Disk == UpToDate && s.Conn == Connected
			})
			if c.ops.Load()-during < 100 {
				t.Fatalf("only %d client operations during the sync: it did not run under load", c.ops.Load()-during)
			}
			// Local again: writes go to both, reads are local.
			after := c.ops.Load()
			waitFor(t, 5*time.Second, "client I/O on the attached disk", func() bool { return c.ops.Load() > after+100 })
			c.finish(t)
			if err := p.a.v.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			p.waitConnected(10 * time.Second)
			p.identical()
			for off, want := range c.model {
				if !bytes.Equal(p.a.data.Bytes()[off:off+4096], want) {
					t.Fatalf("block %d on the new disk is not what the client wrote last", off/4096)
				}
			}
			if s := p.a.v.Status(); s.Generations.Current != p.b.v.Status().Generations.Current {
				t.Fatalf("generations after the attach: %x and %x", s.Generations.Current, p.b.v.Status().Generations.Current)
			}
			// And the new disk is a real replica: its own failure is
			// handled again, and a write still goes through.
			failDisks(p.a)
			if err := p.a.v.WriteAt(context.Background(), block('z', 0, 9), 0, false); err != nil {
				t.Fatalf("write as the new disk fails: %v", err)
			}
			waitFor(t, 5*time.Second, "alpha Diskless again, beta holding it all", func() bool {
				return p.a.v.Status().Disk == Diskless && p.b.v.Status().OutOfSync == p.b.v.Size()
			})
		})
	}
}

// The link lost while the new disk syncs: the primary is plain diskless
// again (its I/O fails while no peer serves it), and the next session
// starts the sync over and finishes it.
func TestAttachDiskLinkLoss(t *testing.T) {
	p := attachUnderWay(t)
	ctx := context.Background()
	sessions := p.a.v.Status().Session
	if nc := p.a.v.sessionConn(); nc != nil {
		nc.Close()
	}
	waitFor(t, 10*time.Second, "a new session", func() bool { return p.a.v.Status().Session > sessions })
	if err := p.a.v.WriteAt(ctx, block('q', 4<<20, 1), 4<<20, false); err != nil {
		t.Fatalf("write after the reconnect: %v", err)
	}
	waitFor(t, 30*time.Second, "alpha's new disk UpToDate", func() bool {
		s := p.a.v.Status()
		return s.Disk == UpToDate && s.Conn == Connected
	})
	p.waitConnected(10 * time.Second)
	p.identical()
	if !bytes.Equal(p.a.data.Bytes()[4<<20:4<<20+4096], block('q', 4<<20, 1)) {
		t.Fatal("the write made between the sessions is not on the new disk")
	}
}

// A secondary whose disk failed takes a new one and becomes the target
// of a full sync, without a restart.
func TestAttachDiskOnFailedSecondary(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	workload(t, p.a.v, 2, 40, 3)
	failDisks(p.b)
	if err := p.a.v.WriteAt(ctx, block('s', 0, 1), 0, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "beta Failed, StandAlone", func() bool {
		s := p.b.v.Status()
		return s.Disk == Failed && s.Conn == StandAlone
	})
	if err := attachNew(t, p.b); err != nil {
		t.Fatalf("attach on the failed secondary: %v", err)
	}
	workload(t, p.a.v, 2, 40, 4)
	p.waitConnected(30 * time.Second)
	p.identical()
	if s := p.b.v.Status(); s.LastResync == nil || !s.LastResync.Full {
		t.Fatalf("beta's last resync %+v, want a full sync", s.LastResync)
	}
}

// Attach is refused, changing nothing, on a disk that did not fail, with
// metadata of another node, and on a primary that lost its disk alone.
func TestAttachDiskRefused(t *testing.T) {
	ctx := context.Background()
	p := disklessSlowPair(t, "C", false)
	if err := attachNew(t, p.b); !errors.Is(err, ErrDiskAttached) {
		t.Fatalf("attach on a healthy disk: %v, want ErrDiskAttached", err)
	}
	if err := p.b.v.AttachCheck(); !errors.Is(err, ErrDiskAttached) {
		t.Fatalf("attach check on a healthy disk: %v, want ErrDiskAttached", err)
	}
	if err := p.a.v.AttachCheck(); err != nil {
		t.Fatalf("attach check on a served diskless primary: %v", err)
	}
	data, meta := newDisk(t, p.a, "gamma")
	if err := p.a.v.Attach(ctx, disk.Device(data, disk.DeviceOptions{}), meta); err == nil {
		t.Fatal("attach of another node's metadata accepted")
	}
	if s := p.a.v.Status(); s.Disk != Diskless || s.Conn != Connected {
		t.Fatalf("after a refused attach: %s %s, want still Diskless and served", s.Disk, s.Conn)
	}
	if err := p.a.v.WriteAt(ctx, block('r', 0, 1), 0, false); err != nil {
		t.Fatalf("write after a refused attach: %v", err)
	}

	q := newPair(t, pairOpts{blank: true})
	q.waitConnected(10 * time.Second)
	mustPromote(t, q.a, false)
	if err := q.a.v.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	failDisks(q.a)
	closeFailed(t, q.a)
	if err := q.a.v.WriteAt(ctx, block('r', 0, 1), 0, false); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write on a primary whose disk failed alone: %v, want EIO", err)
	}
	if err := q.a.v.AttachCheck(); !errors.Is(err, ErrDiskFailed) {
		t.Fatalf("attach check on a primary whose disk failed alone: %v, want ErrDiskFailed", err)
	}
	if err := attachNew(t, q.a); !errors.Is(err, ErrDiskFailed) {
		t.Fatalf("attach on a primary whose disk failed alone: %v, want ErrDiskFailed", err)
	}
}

// A new disk that fails during its sync is given up: the primary stays
// diskless, served by the peer, and its clients go on.
func TestAttachDiskNewDiskFails(t *testing.T) {
	p := attachUnderWay(t)
	ctx := context.Background()
	failDisks(p.a)
	waitFor(t, 10*time.Second, "alpha diskless and served again", func() bool {
		s := p.a.v.Status()
		return s.Disk == Diskless && s.Conn == Connected
	})
	if err := p.a.v.WriteAt(ctx, block('f', 0, 1), 0, false); err != nil {
		t.Fatalf("write after the new disk failed: %v", err)
	}
	got := make([]byte, 4096)
	if err := p.a.v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, block('f', 0, 1)) {
		t.Fatalf("read after the new disk failed: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	if s := p.a.v.Status(); s.Disk != Diskless || s.Resync != nil {
		t.Fatalf("the failed new disk syncs again: %+v", s)
	}
}

// A peer whose tandem predates attach (it does not announce
// wire.FeatureAttach) is not asked: the attach is refused with the
// reason, and the diskless primary goes on through it.
func TestAttachDiskOldPeer(t *testing.T) {
	p := disklessPairOf(t, pairOpts{blank: true, betaDrops: wire.FeatureAttach})
	if err := p.a.v.AttachCheck(); !errors.Is(err, ErrNotConnected) || !strings.Contains(err.Error(), "predates") {
		t.Fatalf("attach check with an old peer: %v, want refused naming it", err)
	}
	if err := attachNew(t, p.a); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("attach with an old peer: %v, want ErrNotConnected", err)
	}
	if s := p.a.v.Status(); s.Disk != Diskless || s.Conn != Connected {
		t.Fatalf("after the refusal: %s %s, want Diskless and served", s.Disk, s.Conn)
	}
	if err := p.a.v.WriteAt(context.Background(), block('o', 0, 1), 0, false); err != nil {
		t.Fatalf("write after the refusal: %v", err)
	}
}
