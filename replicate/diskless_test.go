package replicate

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/nbd"
)

// failDisks makes every operation on n's data and metadata fail, as a
// dead drive holding both would.
func failDisks(n *testNode) {
	eioAll := func(string, int64, int64) error { return syscall.EIO }
	n.data.SetFault(eioAll)
	n.meta.SetFault(eioAll)
}

// disklessPair returns a pair whose primary, alpha, has lost its disks
// and serves through beta.
func disklessPair(t *testing.T, protocol string) *pair {
	t.Helper()
	p := newPair(t, pairOpts{blank: true, protocol: protocol})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	failDisks(p.a)
	_ = p.a.v.WriteAt(context.Background(), make([]byte, 4096), 0, false)
	waitFor(t, 5*time.Second, "alpha Diskless", func() bool { return p.a.v.Status().Disk == Diskless })
	return p
}

// A primary whose disk dies while it is connected to an UpToDate
// secondary goes on through it: the operation that hit the error and
// everything after it are served by the peer, which marks all of its data
// out of sync for the failed node. The old disk, back after a restart
// (the error was transient), is then a full sync target, never "in sync".
func TestDisklessPrimaryServesThroughThePeer(t *testing.T) {
	// Whatever the protocol, the diskless primary waits for Written.
	for _, proto := range []string{"A", "B", "C"} {
		t.Run("protocol "+proto, func(t *testing.T) { testDisklessServes(t, proto) })
	}
}

func testDisklessServes(t *testing.T, proto string) {
	p := newPair(t, pairOpts{blank: true, protocol: proto})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	workload(t, p.a.v, 2, 40, 21)
	before := p.a.v.Status().Generations

	failDisks(p.a)
	// The write that meets the error is done through the peer: the
	// client never sees it.
	if err := p.a.v.WriteAt(ctx, block('x', 8192, 1), 8192, false); err != nil {
		t.Fatalf("write that hits the disk error: %v, want it done through the peer", err)
	}
	if !bytes.Equal(p.b.data.Bytes()[8192:12288], block('x', 8192, 1)) {
		t.Fatal("the write that met the error is not on the peer")
	}
	waitFor(t, 5*time.Second, "alpha Diskless, beta holding everything out of sync", func() bool {
		sa, sb := p.a.v.Status(), p.b.v.Status()
		return sa.Disk == Diskless && sb.PeerDisk == Diskless && sb.OutOfSync == p.b.v.Size()
	})
	if g := p.b.v.Status().Generations; g.Current == before.Current || g.Bitmap != before.Current {
		t.Fatalf("beta's generations %+v after alpha's disk failed, want a new current over bitmap %x", g, before.Current)
	}

	// Reads come from beta, byte for byte what it holds.
	want := append([]byte(nil), p.b.data.Bytes()...)
	got := make([]byte, len(want))
	if err := p.a.v.ReadAt(ctx, got, 0); err != nil {
		t.Fatalf("read on the diskless primary: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the diskless primary read something other than the peer's data")
	}
	if _, _, ok := p.a.v.FileRange(0, 4096); ok {
		t.Fatal("FileRange offered the failed local file")
	}

	// Writes, trims, zeroes and flushes reach beta only.
	big := bytes.Repeat([]byte{0x5a}, 5<<20) // more than one ReadRequest
	for _, op := range []struct {
		name string
		fn   func() error
	}{
		{"write", func() error { return p.a.v.WriteAt(ctx, block('d', 4096, 2), 4096, false) }},
		{"FUA write", func() error { return p.a.v.WriteAt(ctx, big, 1<<20, true) }},
		{"trim", func() error { return p.a.v.Trim(ctx, 7<<20, 64<<10, false) }},
		{"zero", func() error { return p.a.v.Zero(ctx, 7<<20+128<<10, 8192, nbd.ZeroNoHole) }},
		{"flush", func() error { return p.a.v.Flush(ctx) }},
	} {
		if err := op.fn(); err != nil {
			t.Fatalf("%s on the diskless primary: %v", op.name, err)
		}
	}
	bb := p.b.data.Bytes()
	if !bytes.Equal(bb[4096:8192], block('d', 4096, 2)) || !bytes.Equal(bb[1<<20:1<<20+len(big)], big) ||
		!bytes.Equal(bb[7<<20+128<<10:7<<20+136<<10], make([]byte, 8192)) {
		t.Fatal("beta does not hold the diskless primary's writes")
	}
	got = make([]byte, len(big))
	if err := p.a.v.ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("reading back a 5 MiB write through the peer: %v (equal %v)", err, bytes.Equal(got, big))
	}

	// Stepping down flushes beta, lets go of it and fails no write.
	if err := p.a.v.Demote(ctx); err != nil {
		t.Fatalf("demoting the diskless primary: %v", err)
	}
	waitFor(t, 5*time.Second, "alpha StandAlone, detached", func() bool {
		s := p.a.v.Status()
		return s.Conn == StandAlone && s.Disk == Failed && strings.Contains(s.Reason, "disk failed")
	})
	waitFor(t, 5*time.Second, "beta without alpha", func() bool { return p.b.v.Status().Conn == Connecting })
	// Demoted, it has no disk to set a session up with.
	if err := p.a.v.Connect(ctx); !errors.Is(err, ErrDiskFailed) {
		t.Fatalf("connect of a demoted node without a disk: %v", err)
	}
	mustPromote(t, p.b, false)
	if err := p.b.v.WriteAt(ctx, block('b', 0, 3), 0, false); err != nil {
		t.Fatal(err)
	}

	// The same disk comes back (a transient fault): it has missed
	// writes, so it must take a full resync from beta.
	oldDiskBack(t, p)
	p.identical()
}

// Without the peer a diskless primary has no copy left: every operation
// fails with EIO and none is acknowledged. It goes on connecting, writing
// no metadata, and once the peer is back with the data it served, the
// peer serves it again (DRBD's diskless primary reconnects the same way):
// what was flushed before is read back, new writes land on the peer.
func TestDisklessPrimaryReconnects(t *testing.T) {
	p := disklessPair(t, "C")
	ctx := context.Background()
	if err := p.a.v.WriteAt(ctx, block('k', 1<<20, 4), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := p.a.v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	sessions := p.a.v.Status().Session
	p.b.kill(false, 0)
	waitFor(t, 10*time.Second, "alpha Connecting", func() bool { return p.a.v.Status().Conn == Connecting })
	buf := make([]byte, 4096)
	for name, err := range map[string]error{
		"read":  p.a.v.ReadAt(ctx, buf, 0),
		"write": p.a.v.WriteAt(ctx, buf, 0, false),
		"flush": p.a.v.Flush(ctx),
	} {
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("%s on a diskless primary without its peer: %v, want EIO", name, err)
		}
	}
	p.b.restart()
	waitFor(t, 10*time.Second, "alpha served by beta again", func() bool {
		s := p.a.v.Status()
		return s.Conn == Connected && s.Disk == Diskless && s.PeerDisk == UpToDate && s.Session > sessions
	})
	if s := p.b.v.Status(); s.Conn != Connected || s.PeerDisk != Diskless || s.PeerRole != Primary || s.OutOfSync != s.Size {
		t.Fatalf("beta serving the diskless primary again: %+v", s)
	}
	got := make([]byte, 4096)
	if err := p.a.v.ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, block('k', 1<<20, 4)) {
		t.Fatalf("reading back through the peer after the reconnect: %v", err)
	}
	if err := p.a.v.WriteAt(ctx, block('m', 2<<20, 2), 2<<20, false); err != nil {
		t.Fatalf("write after the reconnect: %v", err)
	}
	if !bytes.Equal(p.b.data.Bytes()[2<<20:2<<20+4096], block('m', 2<<20, 2)) {
		t.Fatal("beta does not hold the write made after the reconnect")
	}
	if err := p.a.v.Close(ctx); err == nil {
		t.Fatal("closing on a dead disk reported a clean metadata close")
	}
}

// A diskless primary whose peer was promoted while they were apart (and
// demoted again: its epoch moved on) was deposed: it refuses the peer and
// stays StandAlone, and the peer, whose data moved on, does not serve it.
func TestDeposedDisklessPrimaryRefused(t *testing.T) {
	p := disklessPair(t, "C")
	ctx := context.Background()
	if err := p.a.v.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "beta without alpha", func() bool { return p.b.v.Status().Conn == Connecting })
	mustPromote(t, p.b, false)
	if err := p.b.v.WriteAt(ctx, block('n', 0, 1), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := p.b.v.Demote(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.a.v.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "alpha StandAlone, deposed", func() bool {
		s := p.a.v.Status()
		return s.Conn == StandAlone && strings.Contains(s.Reason, "deposed")
	})
	// beta goes on connecting: its own checks decide for it.
	if s := p.b.v.Status(); s.Conn != Connecting || s.PeerRole == Primary {
		t.Fatalf("beta after the deposed diskless primary refused it: %+v", s)
	}
	if got := p.b.data.Bytes()[:4096]; !bytes.Equal(got, block('n', 0, 1)) {
		t.Fatal("beta's write as primary was touched")
	}
	_ = p.a.v.Close(ctx) // the dead disk's metadata does not close clean
}

// The failed primary dies while diskless and its disk comes back with
// it, the secondary never promoted: the writes it made through the peer
// are nowhere on its disk nor in its activity log, so only the new
// generation the peer drew keeps the two from calling themselves in sync.
func TestDisklessPrimaryOldDiskComesBack(t *testing.T) {
	p := disklessPair(t, "C")
	ctx := context.Background()
	for i := range 64 {
		off := int64(i) * 96 << 10 // spread over the device, past any hot extent
		if err := p.a.v.WriteAt(ctx, block('z', off, 1), off, false); err != nil {
			t.Fatalf("diskless write %d: %v", i, err)
		}
	}
	oldDiskBack(t, p)
	p.identical()
}

// oldDiskBack restarts alpha on its old disk, working again, and checks
// that it takes a full resync from beta.
func oldDiskBack(t *testing.T, p *pair) {
	t.Helper()
	p.a.kill(false, 0)
	p.a.data.SetFault(nil)
	p.a.meta.SetFault(nil)
	p.a.restart()
	waitFor(t, 20*time.Second, "alpha resynced from beta", func() bool {
		sa, sb := p.a.v.Status(), p.b.v.Status()
		return sa.Conn == Connected && sb.Conn == Connected && sa.Disk == UpToDate && sb.OutOfSync == 0
	})
	if ls := p.a.v.Status().LastResync; ls == nil || ls.TotalBytes < p.a.v.Size() {
		t.Fatalf("alpha's resync after the failed disk: %+v, want all %d bytes", ls, p.a.v.Size())
	}
}

// Closing a diskless primary makes what it acknowledged durable on the
// peer, its only copy: a power cut of the peer right after keeps it all.
func TestDisklessPrimaryCloseFlushesThePeer(t *testing.T) {
	p := disklessPair(t, "C")
	ctx := context.Background()
	for i := range 32 {
		off := int64(i) * 64 << 10
		if err := p.a.v.WriteAt(ctx, block('f', off, 1), off, false); err != nil {
			t.Fatalf("diskless write %d: %v", i, err)
		}
	}
	_ = p.a.v.Close(ctx) // the dead disk's metadata does not close clean
	p.b.kill(true, 7)
	for i := range 32 {
		off := int64(i) * 64 << 10
		if !bytes.Equal(p.b.data.Bytes()[off:off+4096], block('f', off, 1)) {
			t.Fatalf("block %d acknowledged by the diskless primary lost in the peer's power cut", i)
		}
	}
}

// A read that meets the error is served by the peer too, and so are the
// requests that run into the failure while it is being handled.
func TestDisklessPrimaryMasksConcurrentErrors(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	for i := range 16 {
		off := int64(i) * 4096
		if err := p.a.v.WriteAt(ctx, block('r', off, 1), off, false); err != nil {
			t.Fatal(err)
		}
	}
	failDisks(p.a)
	errs := make(chan error, 16)
	for i := range 16 {
		go func() {
			off := int64(i) * 4096
			buf := make([]byte, 4096)
			err := p.a.v.ReadAt(ctx, buf, off)
			if err == nil && !bytes.Equal(buf, block('r', off, 1)) {
				err = errors.New("wrong data")
			}
			if err == nil {
				err = p.a.v.WriteAt(ctx, block('s', off, 2), off, i%2 == 0)
			}
			errs <- err
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Fatalf("a request that ran into the disk failure: %v", err)
		}
	}
	if s := p.a.v.Status(); s.Disk != Diskless {
		t.Fatalf("alpha %s, want Diskless", s.Disk)
	}
	for i := range 16 {
		off := int64(i) * 4096
		if !bytes.Equal(p.b.data.Bytes()[off:off+4096], block('s', off, 2)) {
			t.Fatalf("block %d not on the peer", i)
		}
	}
	p.a.data.SetFault(nil) // for the cleanup's Close
	p.a.meta.SetFault(nil)
}

// A disk that dies under a verify is detached like one that dies while
// merely connected (the peer is UpToDate all the same): the verify stops
// with ErrDiskFailed, the primary goes on through the peer, and a new
// verify is refused until the disk is replaced.
func TestDisklessDuringVerify(t *testing.T) {
	// Slow enough that the verify is still running when the disk fails.
	p := newPair(t, pairOpts{blank: true, size: 64 << 20, resync: ResyncConfig{MaxRate: 4 << 20}})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	type result struct {
		rep VerifyReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := p.a.v.Verify(ctx, true)
		done <- result{rep, err}
	}()
	waitFor(t, 10*time.Second, "the verify under way on both nodes", func() bool {
		return p.a.v.Status().Conn == VerifySource && p.b.v.Status().Conn == VerifyTarget
	})

	failDisks(p.a)
	if err := p.a.v.WriteAt(ctx, block('v', 4096, 1), 4096, false); err != nil {
		t.Fatalf("write that hits the disk error during the verify: %v, want it done through the peer", err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the verify went on after the disk failed")
	}
	if !errors.Is(r.err, ErrDiskFailed) || r.rep.Repaired || r.rep.ComparedBytes >= p.a.v.Size() {
		t.Fatalf("verify = %+v, %v; want it stopped early with ErrDiskFailed and nothing repaired", r.rep, r.err)
	}
	waitFor(t, 5*time.Second, "alpha Diskless and Connected, beta holding everything", func() bool {
		sa, sb := p.a.v.Status(), p.b.v.Status()
		return sa.Disk == Diskless && sa.Conn == Connected && sb.Conn == Connected && sb.PeerDisk == Diskless && sb.OutOfSync == p.b.v.Size()
	})
	if !bytes.Equal(p.b.data.Bytes()[4096:8192], block('v', 4096, 1)) {
		t.Fatal("the write that met the error is not on the peer")
	}
	got := make([]byte, 4096)
	if err := p.a.v.ReadAt(ctx, got, 4096); err != nil || !bytes.Equal(got, block('v', 4096, 1)) {
		t.Fatalf("read through the peer after the verify stopped: %v", err)
	}
	if _, err := p.a.v.Verify(ctx, false); !errors.Is(err, ErrDiskFailed) {
		t.Fatalf("a verify on the diskless primary: %v, want ErrDiskFailed", err)
	}
	if _, err := p.b.v.Verify(ctx, false); err == nil {
		t.Fatal("a verify asked from the secondary of a diskless primary succeeded")
	}
	_ = p.a.v.Close(ctx) // the dead disk's metadata does not close clean
}
