package disk

import (
	"bytes"
	"errors"
	"testing"
)

func TestRegion(t *testing.T) {
	m := NewMem(10000)
	r := NewRegion(m, 4096, 4096)
	if r.Size() != 4096 {
		t.Fatalf("size %d", r.Size())
	}
	mustWrite(t, r, []byte("abc"), 0)
	mustWrite(t, r, []byte("xyz"), 4093)
	all := m.Bytes()
	if string(all[4096:4099]) != "abc" || string(all[8189:8192]) != "xyz" {
		t.Fatal("region offsets are not relative to its start")
	}
	if got := mustRead(t, r, 3, 4093); string(got) != "xyz" {
		t.Fatalf("read %q", got)
	}
	for _, c := range []struct {
		off int64
		n   int
	}{{-1, 1}, {4094, 3}, {4096, 1}, {0, 4097}, {-4096, 10}} {
		if _, err := r.WriteAt(pattern(c.n, 9), c.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("write %d at %d: %v, want ErrOutOfRange", c.n, c.off, err)
		}
		if _, err := r.ReadAt(make([]byte, c.n), c.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("read %d at %d: %v, want ErrOutOfRange", c.n, c.off, err)
		}
	}
	if !bytes.Equal(m.Bytes(), all) {
		t.Fatal("a refused region write reached the parent")
	}
	// Sync reaches the parent.
	if m.Unsynced() == 0 {
		t.Fatal("nothing unsynced before Sync")
	}
	if err := r.Sync(); err != nil || m.Unsynced() != 0 {
		t.Fatalf("region Sync: %v, %d unsynced", err, m.Unsynced())
	}
	// Close stops the region, not the parent.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("read from closed region: %v", err)
	}
	mustWrite(t, m, []byte("still open"), 0)

	// A region of a region.
	inner := NewRegion(NewRegion(m, 1000, 5000), 1000, 100)
	mustWrite(t, inner, []byte("in"), 98)
	if string(m.Bytes()[2098:2100]) != "in" {
		t.Fatal("nested region offset")
	}
	if _, err := inner.WriteAt([]byte("in"), 99); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("nested region bounds: %v", err)
	}
}

func TestRegionOutsideDiskPanics(t *testing.T) {
	m := NewMem(8192)
	for _, c := range [][2]int64{{-1, 10}, {0, 8193}, {8000, 193}, {4096, -1}, {1 << 62, 1 << 62}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewRegion(%d, %d) on 8192 bytes did not panic", c[0], c[1])
				}
			}()
			NewRegion(m, c[0], c[1])
		}()
	}
	NewRegion(m, 8192, 0) // empty, at the end: fine
}
