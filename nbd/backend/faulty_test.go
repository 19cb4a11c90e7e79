package backend

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"

	"github.com/tandem-ha/tandem/nbd"
)

func TestFaulty(t *testing.T) {
	ctx := context.Background()
	mem := NewMemory(1 << 20)
	var mu sync.Mutex
	seen := map[Op]int{}
	dev := Faulty{Device: mem, Fail: func(op Op, off, n int64) error {
		mu.Lock()
		seen[op]++
		mu.Unlock()
		switch {
		case op == OpWrite && off+n > 1<<19:
			return syscall.ENOSPC
		case op == OpRead && off == 4096:
			return syscall.EIO
		case op == OpZero || op == OpTrim:
			return syscall.EPERM
		}
		return nil
	}}
	if dev.Features() != mem.Features() {
		t.Fatal("Features not passed through")
	}

	if err := dev.WriteAt(ctx, []byte("ok"), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := dev.WriteAt(ctx, []byte("no"), 1<<19-1, false); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write: %v, want ENOSPC", err)
	}
	if b := mem.Bytes(); b[1<<19-1] != 0 {
		t.Fatal("a failed write reached the device")
	}
	if err := dev.ReadAt(ctx, make([]byte, 1), 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read: %v, want EIO", err)
	}
	p := make([]byte, 2)
	if err := dev.ReadAt(ctx, p, 0); err != nil || string(p) != "ok" {
		t.Fatalf("read: %q, %v", p, err)
	}
	if err := dev.Trim(ctx, 0, 2, false); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("trim: %v, want EPERM", err)
	}
	if err := dev.Zero(ctx, 0, 2, 0); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("zero: %v, want EPERM", err)
	}
	if string(mem.Bytes()[:2]) != "ok" {
		t.Fatal("a failed trim or zero reached the device")
	}
	if err := dev.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ext, err := dev.Extents(ctx, 0, 1<<20); err != nil || len(ext) != 2 {
		t.Fatalf("extents: %+v, %v", ext, err)
	}
	if err := dev.Cache(ctx, 0, 1); err != nil {
		t.Fatal(err)
	}
	want := map[Op]int{OpWrite: 2, OpRead: 2, OpTrim: 1, OpZero: 1, OpFlush: 1, OpExtents: 1, OpCache: 1}
	for op, n := range want {
		if seen[op] != n {
			t.Errorf("Fail saw %s %d times, want %d", op, seen[op], n)
		}
	}
}

func TestFaultyPassThrough(t *testing.T) {
	// A nil Fail changes nothing.
	exercise(t, Faulty{Device: NewMemory(2 * memChunk)}, 1, 200)
}

func TestFaultyWithoutOptionalInterfaces(t *testing.T) {
	ctx := context.Background()
	// Embedding the interface hides Memory's Extents and Cache.
	dev := Faulty{Device: struct{ nbd.Device }{NewMemory(4096)}}
	if _, err := dev.Extents(ctx, 0, 1); !errors.Is(err, nbd.ErrNotSupported) {
		t.Fatalf("extents: %v, want ErrNotSupported", err)
	}
	if err := dev.Cache(ctx, 0, 1); !errors.Is(err, nbd.ErrNotSupported) {
		t.Fatalf("cache: %v, want ErrNotSupported", err)
	}
}
