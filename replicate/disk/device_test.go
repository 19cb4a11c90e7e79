package disk

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/tandem-ha/tandem/nbd"
)

func TestDevice(t *testing.T) {
	ctx := context.Background()
	m := NewMem(4 << 20)
	d := Device(m, DeviceOptions{})
	f := d.Features()
	if !f.Flush || !f.FUA || !f.Trim || !f.Zero || f.FastZero || !f.MultiConn || f.ReadOnly || f.Extents || f.Cache {
		t.Fatalf("features %+v", f)
	}
	if d.Size() != 4<<20 {
		t.Fatalf("size %d", d.Size())
	}
	all := pattern(4<<20, 0x77)
	if err := d.WriteAt(ctx, all, 0, false); err != nil {
		t.Fatal(err)
	}
	if m.Unsynced() == 0 {
		t.Fatal("a plain write was synced")
	}
	if err := d.Flush(ctx); err != nil || m.Unsynced() != 0 {
		t.Fatalf("Flush: %v, %d unsynced", err, m.Unsynced())
	}
	if err := d.WriteAt(ctx, pattern(4096, 1), 8192, true); err != nil || m.Unsynced() != 0 {
		t.Fatalf("FUA write: %v, %d unsynced", err, m.Unsynced())
	}
	copy(all[8192:], pattern(4096, 1))

	// Trim and Zero write zeroes, in chunks for ranges larger than one.
	if err := d.Trim(ctx, 100, 3<<20, false); err != nil {
		t.Fatal(err)
	}
	clear(all[100 : 100+3<<20])
	if err := d.Zero(ctx, (3<<20)+500, 1000, nbd.ZeroFUA); err != nil || m.Unsynced() != 0 {
		t.Fatalf("Zero FUA: %v, %d unsynced", err, m.Unsynced())
	}
	clear(all[(3<<20)+500 : (3<<20)+1500])
	before := m.Bytes()
	if err := d.Zero(ctx, 0, 4096, nbd.ZeroFast); !errors.Is(err, nbd.ErrNotSupported) {
		t.Fatalf("fast zero: %v, want ErrNotSupported", err)
	}
	if !bytes.Equal(m.Bytes(), before) {
		t.Fatal("a refused fast zero changed data")
	}
	got := make([]byte, len(all))
	if err := d.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, all) {
		t.Fatal("contents differ from the model")
	}
	if err := d.Trim(ctx, 4<<20-10, 11, false); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("trim past the end: %v", err)
	}

	// Crash: the FUA write and everything flushed survive every crash.
	if err := d.WriteAt(ctx, pattern(4096, 9), 0, false); err != nil {
		t.Fatal(err)
	}
	img := m.Crash(rand.New(rand.NewPCG(1, 2))).Bytes()
	if !bytes.Equal(img[4096:], all[4096:]) {
		t.Fatal("synced data lost in a crash")
	}

	// Errors from the disk reach the caller.
	boom := errors.New("boom")
	m.SetFault(func(op string, _, _ int64) error {
		if op == "sync" {
			return boom
		}
		return nil
	})
	if err := d.Flush(ctx); !errors.Is(err, boom) {
		t.Fatalf("flush with a failing sync: %v", err)
	}
	if err := d.WriteAt(ctx, []byte{1}, 0, true); !errors.Is(err, boom) {
		t.Fatalf("FUA write with a failing sync: %v", err)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := d.WriteAt(cancelled, []byte{1}, 0, false); !errors.Is(err, context.Canceled) {
		t.Fatalf("write with a cancelled context: %v", err)
	}
}

func TestDeviceReadOnly(t *testing.T) {
	ctx := context.Background()
	d := Device(NewMem(8192), DeviceOptions{ReadOnly: true})
	if !d.Features().ReadOnly {
		t.Fatal("not read-only")
	}
	if err := d.WriteAt(ctx, []byte{1}, 0, false); !errors.Is(err, nbd.ErrReadOnly) {
		t.Fatalf("write: %v", err)
	}
	if err := d.Trim(ctx, 0, 10, false); !errors.Is(err, nbd.ErrReadOnly) {
		t.Fatalf("trim: %v", err)
	}
	if err := d.Zero(ctx, 0, 10, 0); !errors.Is(err, nbd.ErrReadOnly) {
		t.Fatalf("zero: %v", err)
	}
	if err := d.ReadAt(ctx, make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
}
