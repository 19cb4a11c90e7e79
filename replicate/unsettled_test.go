package replicate

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// A read overlapping a write whose peer has not confirmed it waits for
// the write to settle: the data is on the primary's disk already, but a
// failover at that moment would take it back, and a client that had read
// it would see the device go back in time. Reads elsewhere do not wait.
func TestReadWaitsForAnUnsettledWrite(t *testing.T) {
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)
	ctx := context.Background()
	hang := make(chan struct{})
	var held atomic.Bool
	held.Store(true)
	p.b.data.SetFault(func(op string, off, n int64) error {
		if op == "write" && held.Load() {
			<-hang
		}
		return nil
	})
	release := func() {
		if held.Swap(false) {
			close(hang)
		}
	}
	// Before the pair's own cleanup closes the volumes, which waits for
	// the held write.
	t.Cleanup(release)
	want := block('u', 8192, 1)
	wrote := make(chan error, 1)
	go func() { wrote <- p.a.v.WriteAt(ctx, want, 8192, false) }()
	waitFor(t, 5*time.Second, "the write on alpha's disk", func() bool { return bytes.Equal(p.a.data.Bytes()[8192:12288], want) })

	// The overlapping read is held, however long the peer takes.
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	got := make([]byte, 4096)
	err := p.a.v.ReadAt(rctx, got, 8192)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read overlapping the unconfirmed write: %v (data %q...), want it held until the write settles", err, got[:4])
	}
	if _, _, ok := p.a.v.FileRange(8192, 4096); ok {
		t.Fatal("FileRange offered the block of an unconfirmed write to sendfile")
	}
	// Another block reads at once.
	if err := p.a.v.ReadAt(ctx, got, 0); err != nil {
		t.Fatalf("read of another block: %v", err)
	}
	select {
	case err := <-wrote:
		t.Fatalf("the write completed (%v) before its peer confirmed it", err)
	default:
	}

	// Once the peer confirms, the waiting read gets the new data.
	read := make(chan error, 1)
	go func() { read <- p.a.v.ReadAt(ctx, got, 8192) }()
	release()
	if err := <-wrote; err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := <-read; err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the write settled: %v, equal %v", err, bytes.Equal(got, want))
	}
	p.identical()
}

func TestUnsettledSet(t *testing.T) {
	var u unsettled
	a := u.add(0, 4096)
	b := u.add(8192, 16384)
	if !u.overlaps(4095, 4096) || u.overlaps(4096, 8192) || !u.overlaps(0, 1<<20) {
		t.Fatal("overlaps is wrong at the edges")
	}
	ctx := context.Background()
	if err := u.wait(ctx, 4096, 8192); err != nil {
		t.Fatalf("wait between the writes: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- u.wait(ctx, 0, 10000) }() // overlaps both
	time.Sleep(10 * time.Millisecond)
	u.settle(a)
	select {
	case err := <-done:
		t.Fatalf("wait returned (%v) with an overlapping write unsettled", err)
	default:
	}
	u.settle(b)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if u.overlaps(0, 1<<20) {
		t.Fatal("settled writes still in the set")
	}
}
