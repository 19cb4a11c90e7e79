package backend

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"syscall"
	"testing"

	"github.com/tandem-ha/tandem/nbd"
)

func TestMemoryRandomOps(t *testing.T) {
	for seed := range uint64(4) {
		// An odd size puts a partial chunk at the end.
		exercise(t, NewMemory(3*memChunk+12345), seed, 400)
	}
}

func TestMemoryConcurrent(t *testing.T) {
	hammer(t, NewMemory(1<<20), 8, 30)
}

func TestMemoryFeatures(t *testing.T) {
	m := NewMemory(memChunk)
	ft := m.Features()
	if !ft.Flush || !ft.FUA || !ft.Trim || !ft.Zero || !ft.FastZero || !ft.Cache || !ft.Extents || !ft.MultiConn || ft.ReadOnly {
		t.Fatalf("features %+v: want everything but ReadOnly", ft)
	}
}

func TestMemorySparse(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(4 * memChunk)
	ext, err := m.Extents(ctx, 0, m.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || ext[0] != (nbd.Extent{Length: m.Size(), Hole: true, Zero: true}) {
		t.Fatalf("fresh disk: extents %+v, want one hole", ext)
	}

	// One byte allocates its chunk only.
	if err := m.WriteAt(ctx, []byte{7}, memChunk+5, false); err != nil {
		t.Fatal(err)
	}
	ext, _ = m.Extents(ctx, 0, m.Size())
	want := []nbd.Extent{
		{Length: memChunk, Hole: true, Zero: true},
		{Length: memChunk},
		{Length: 2 * memChunk, Hole: true, Zero: true},
	}
	if !slices.Equal(ext, want) {
		t.Fatalf("after one write: extents %+v, want %+v", ext, want)
	}

	// Extents start at off and never describe more than asked.
	ext, _ = m.Extents(ctx, memChunk+100, 50)
	if len(ext) != 1 || ext[0] != (nbd.Extent{Length: 50}) {
		t.Fatalf("inside a data chunk: %+v", ext)
	}

	// A partial trim keeps the chunk (zeroed there); a whole one frees it.
	if err := m.Trim(ctx, memChunk, 100, false); err != nil {
		t.Fatal(err)
	}
	if b := m.Bytes(); b[memChunk+5] != 0 {
		t.Fatal("trimmed byte still set")
	}
	if ext, _ = m.Extents(ctx, memChunk, memChunk); ext[0].Hole {
		t.Fatal("partial trim freed the chunk")
	}
	if err := m.Trim(ctx, memChunk, memChunk, true); err != nil {
		t.Fatal(err)
	}
	if ext, _ = m.Extents(ctx, 0, m.Size()); len(ext) != 1 || !ext[0].Hole {
		t.Fatalf("whole-chunk trim: extents %+v, want one hole", ext)
	}

	// Zero punches unless NoHole, which must leave the range allocated.
	if err := m.Zero(ctx, 0, 2*memChunk, nbd.ZeroNoHole|nbd.ZeroFast); err != nil {
		t.Fatal(err)
	}
	ext, _ = m.Extents(ctx, 0, m.Size())
	want = []nbd.Extent{{Length: 2 * memChunk}, {Length: 2 * memChunk, Hole: true, Zero: true}}
	if !slices.Equal(ext, want) {
		t.Fatalf("after NoHole zero: %+v, want %+v", ext, want)
	}
	if err := m.Zero(ctx, 0, 2*memChunk, nbd.ZeroFast); err != nil {
		t.Fatal(err)
	}
	if ext, _ = m.Extents(ctx, 0, m.Size()); len(ext) != 1 || !ext[0].Hole {
		t.Fatalf("after zero: %+v, want one hole", ext)
	}
	if !bytes.Equal(m.Bytes(), make([]byte, m.Size())) {
		t.Fatal("disk not all zero")
	}
}

func TestMemoryExtentsBounded(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(300 * memChunk)
	for i := int64(0); i < 300; i += 2 {
		if err := m.WriteAt(ctx, []byte{1}, i*memChunk, false); err != nil {
			t.Fatal(err)
		}
	}
	ext, err := m.Extents(ctx, 0, m.Size())
	if err != nil {
		t.Fatal(err)
	}
	checkExtents(t, ext, m.Size())
	if len(ext) > maxExtents {
		t.Fatalf("%d extents, want at most %d", len(ext), maxExtents)
	}
	for i, e := range ext {
		if e.Length != memChunk || e.Hole != (i%2 == 1) {
			t.Fatalf("extent %d = %+v", i, e)
		}
	}

	// A huge sparse disk answers with part of the range, not a scan of all.
	huge := NewMemory(1 << 40)
	ext, err = huge.Extents(ctx, 0, huge.Size())
	if err != nil {
		t.Fatal(err)
	}
	if got := checkExtents(t, ext, huge.Size()); got != memScanChunks*memChunk {
		t.Fatalf("described %d bytes of a 1 TiB hole, want %d", got, memScanChunks*memChunk)
	}
}

func TestMemoryReadOnly(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(memChunk)
	if err := m.WriteAt(ctx, []byte("kept"), 0, false); err != nil {
		t.Fatal(err)
	}
	m.SetReadOnly(true)
	if !m.Features().ReadOnly {
		t.Fatal("Features().ReadOnly false")
	}
	for name, err := range map[string]error{
		"write": m.WriteAt(ctx, []byte("x"), 0, false),
		"trim":  m.Trim(ctx, 0, 4, false),
		"zero":  m.Zero(ctx, 0, 4, 0),
	} {
		if !errors.Is(err, nbd.ErrReadOnly) {
			t.Errorf("%s on a read-only disk: %v, want ErrReadOnly", name, err)
		}
	}
	p := make([]byte, 4)
	if err := m.ReadAt(ctx, p, 0); err != nil || string(p) != "kept" {
		t.Fatalf("read: %q, %v", p, err)
	}
	m.SetReadOnly(false)
	if err := m.WriteAt(ctx, []byte("x"), 0, false); err != nil {
		t.Fatal(err)
	}
}

func TestMemoryOutOfRange(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(1000)
	for name, err := range map[string]error{
		"read past end":  m.ReadAt(ctx, make([]byte, 2), 999),
		"write past end": m.WriteAt(ctx, make([]byte, 2), 999, false),
		"negative":       m.ReadAt(ctx, make([]byte, 2), -1),
		"trim past end":  m.Trim(ctx, 500, 501, false),
		"zero past end":  m.Zero(ctx, 1001, 0, 0),
		"cache past end": m.Cache(ctx, 0, 1001),
	} {
		if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%s: %v, want EINVAL", name, err)
		}
	}
	if _, err := m.Extents(ctx, 0, 1001); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("extents past end: %v, want EINVAL", err)
	}
	// The last byte is fine.
	if err := m.WriteAt(ctx, []byte{9}, 999, false); err != nil {
		t.Fatal(err)
	}
	if b := m.Bytes(); len(b) != 1000 || b[999] != 9 {
		t.Fatal("last byte not written")
	}
}
