package md

import (
	"errors"
	"math/rand/v2"
	"testing"
)

func TestLayoutDefaults(t *testing.T) {
	l, err := NewLayout(1<<40, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Granularity != 4096 || l.ALExtentSize != 4<<20 || l.ALSlots != 16 || l.MaxHotExtents != 1018 || l.MetaOffset != 0 {
		t.Fatalf("defaults %+v", l)
	}
	if l.Bits() != 1<<28 {
		t.Fatalf("bits %d", l.Bits())
	}
	// 2^28 bits at 4092*8 per page.
	wantPages := (int64(1<<28) + pageBits - 1) / pageBits
	if l.BitmapPages() != wantPages || wantPages != 8201 {
		t.Fatalf("pages %d, want %d", l.BitmapPages(), wantPages)
	}
	if l.ALOffset() != 8192 || l.BitmapOffset() != 8192+16*4096 {
		t.Fatalf("offsets %d %d", l.ALOffset(), l.BitmapOffset())
	}
	if l.MetaSize() != l.BitmapOffset()+wantPages*4096 {
		t.Fatalf("meta size %d", l.MetaSize())
	}
	if l.Extents() != 1<<18 {
		t.Fatalf("extents %d", l.Extents())
	}
	if o := l.Options(); o != (Options{4096, 4 << 20, 16, 1018}) {
		t.Fatalf("options %+v", o)
	}
	// A short last bit and extent.
	l, err = NewLayout(10000, Options{})
	if err != nil || l.Bits() != 3 || l.Extents() != 1 || l.BitmapPages() != 1 {
		t.Fatalf("10000 bytes: %+v %v", l, err)
	}
}

func TestLayoutValidation(t *testing.T) {
	bad := []struct {
		size int64
		o    Options
	}{
		{0, Options{}},
		{-4096, Options{}},
		{1 << 20, Options{Granularity: 2048}},
		{1 << 20, Options{Granularity: 6144}},
		{1 << 20, Options{Granularity: 2 << 30}},
		{1 << 20, Options{ALExtentSize: 1000}},
		{1 << 20, Options{ALExtentSize: 3 << 20}},
		{1 << 20, Options{ALSlots: 1}},
		{1 << 20, Options{ALSlots: -3}},
		{1 << 20, Options{ALSlots: 5000}},
		{1 << 20, Options{MaxHotExtents: 1019}},
		{1 << 20, Options{MaxHotExtents: -1}},
		{1 << 46, Options{ALExtentSize: 4096}}, // more than 2^32 extents
	}
	for _, c := range bad {
		if l, err := NewLayout(c.size, c.o); !errors.Is(err, ErrLayout) {
			t.Errorf("NewLayout(%d, %+v) = %+v, %v; want ErrLayout", c.size, c.o, l, err)
		}
	}
	if _, err := NewLayout(1<<20, Options{Granularity: 1 << 16, ALExtentSize: 4096, ALSlots: 2, MaxHotExtents: 1}); err != nil {
		t.Fatal(err)
	}
}

// TestInternalLayout checks, over many device sizes, that the data area is
// 4 KiB aligned, leaves room for its metadata, and is as large as possible.
func TestInternalLayout(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	sizes := []int64{1 << 20, 1<<30 + 512, 1 << 40, 128<<20 + 100<<10}
	for range 300 {
		sizes = append(sizes, 200<<10+r.Int64N(1<<42))
	}
	for _, opts := range []Options{{}, {Granularity: 1 << 16, ALSlots: 4}} {
		for _, s := range sizes {
			l, err := InternalLayout(s, opts)
			if err != nil {
				t.Fatalf("InternalLayout(%d): %v", s, err)
			}
			if l.DataSize%BlockSize != 0 || l.MetaOffset != l.DataSize || l.DataSize+l.MetaSize() > s {
				t.Fatalf("InternalLayout(%d) = data %d, meta %d at %d", s, l.DataSize, l.MetaSize(), l.MetaOffset)
			}
			bigger, err := NewLayout(l.DataSize+BlockSize, opts)
			if err != nil {
				t.Fatal(err)
			}
			if l.DataSize+BlockSize+bigger.MetaSize() <= s {
				t.Fatalf("InternalLayout(%d): data %d, but %d would fit", s, l.DataSize, l.DataSize+BlockSize)
			}
			if s-l.DataSize-l.MetaSize() >= 2*BlockSize {
				t.Fatalf("InternalLayout(%d) wastes %d bytes", s, s-l.DataSize-l.MetaSize())
			}
		}
	}
	for _, s := range []int64{0, -1, 4096, 76 << 10, 80<<10 - 1} {
		if _, err := InternalLayout(s, Options{}); !errors.Is(err, ErrTooSmall) {
			t.Errorf("InternalLayout(%d): %v, want ErrTooSmall", s, err)
		}
	}
	if _, err := InternalLayout(1<<30, Options{Granularity: 100}); !errors.Is(err, ErrLayout) {
		t.Errorf("bad options: %v", err)
	}
}
