package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/tandem-ha/tandem/nbd"
)

// model is what a device must contain: known[i] is false where a trim made
// the contents undefined. (Bulk copies and clears, not byte loops: the race
// detector makes those slow.)
type model struct {
	data, known, ones []byte
}

func newModel(size int64) *model {
	ones := bytes.Repeat([]byte{1}, int(size))
	return &model{data: make([]byte, size), known: bytes.Clone(ones), ones: ones}
}

func (m *model) set(off int64, p []byte) {
	copy(m.data[off:], p)
	copy(m.known[off:], m.ones[:len(p)])
}

// forget marks a trimmed range undefined. Its data is set to zeroes, which
// is what most stores read back, so that check's fast path usually holds.
func (m *model) forget(off, n int64) {
	clear(m.data[off : off+n])
	clear(m.known[off : off+n])
}

// check compares got (read at off) with the model and reports the first
// difference.
func (m *model) check(t *testing.T, what string, got []byte, off int64) {
	t.Helper()
	if bytes.Equal(got, m.data[off:off+int64(len(got))]) {
		return
	}
	for i, b := range got {
		j := off + int64(i)
		if m.known[j] == 1 && m.data[j] != b {
			t.Fatalf("%s: byte %d: got %#x, want %#x", what, j, b, m.data[j])
		}
	}
}

// unalignedCopy returns p's contents in a buffer that starts shift bytes
// past an allocation, so that O_DIRECT paths see a misaligned address.
func unalignedCopy(p []byte, shift int) []byte {
	b := make([]byte, len(p)+shift)[shift:]
	copy(b, p)
	return b
}

// exercise runs a seeded random mix of operations against dev and a model
// and checks every read, then the whole device. Lengths and offsets are
// deliberately unaligned and cross 4 KiB blocks and 64 KiB chunks.
func exercise(t *testing.T, dev nbd.Device, seed uint64, ops int) {
	t.Helper()
	ctx := context.Background()
	size := dev.Size()
	m := newModel(size)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var key [32]byte
	key[0] = byte(seed)
	fill := rand.NewChaCha8(key)
	span := func() (int64, int64) {
		var n int64
		switch rng.IntN(4) {
		case 0:
			n = 1 + rng.Int64N(600)
		case 1:
			n = 4096 * (1 + rng.Int64N(16))
		default:
			n = 1 + rng.Int64N(3*memChunk)
		}
		n = min(n, size)
		off := rng.Int64N(size - n + 1)
		if rng.IntN(3) == 0 {
			off -= off % 4096
		}
		return off, n
	}
	for i := range ops {
		off, n := span()
		what := fmt.Sprintf("op %d", i)
		switch op := rng.IntN(10); {
		case op < 4:
			p := make([]byte, n)
			fill.Read(p)
			if rng.IntN(2) == 0 {
				p = unalignedCopy(p, 1+rng.IntN(7))
			}
			if err := dev.WriteAt(ctx, p, off, rng.IntN(4) == 0); err != nil {
				t.Fatalf("%s: write %d+%d: %v", what, off, n, err)
			}
			m.set(off, p)
		case op < 7:
			p := make([]byte, n+int64(rng.IntN(8)))[:n]
			if rng.IntN(2) == 0 {
				p = unalignedCopy(p, 1+rng.IntN(7))
			}
			if err := dev.ReadAt(ctx, p, off); err != nil {
				t.Fatalf("%s: read %d+%d: %v", what, off, n, err)
			}
			m.check(t, what+" read", p, off)
		case op < 8:
			if err := dev.Trim(ctx, off, n, rng.IntN(2) == 0); err != nil {
				t.Fatalf("%s: trim %d+%d: %v", what, off, n, err)
			}
			m.forget(off, n)
		case op < 9:
			flags := nbd.ZeroFlags(rng.IntN(8))
			err := dev.Zero(ctx, off, n, flags)
			if flags&nbd.ZeroFast != 0 && errors.Is(err, nbd.ErrNotSupported) {
				break // refused: the range must be untouched, the model is
			}
			if err != nil {
				t.Fatalf("%s: zero %d+%d flags %d: %v", what, off, n, flags, err)
			}
			m.set(off, make([]byte, n))
		default:
			if err := dev.Flush(ctx); err != nil {
				t.Fatalf("%s: flush: %v", what, err)
			}
		}
	}
	all := make([]byte, size)
	if err := dev.ReadAt(ctx, all, 0); err != nil {
		t.Fatalf("final read: %v", err)
	}
	m.check(t, "final read", all, 0)
}

// hammer has workers write and verify adjacent regions whose boundaries
// share 4 KiB blocks and 64 KiB chunks, so that a read-modify-write that
// is not serialised, or a chunk allocated twice, loses someone's bytes.
func hammer(t *testing.T, dev nbd.Device, workers, rounds int) {
	t.Helper()
	ctx := context.Background()
	const region = 10007 // prime: every boundary is unaligned
	if int64(workers*region) > dev.Size() {
		t.Fatalf("device of %d bytes too small for %d workers", dev.Size(), workers)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := int64(w * region)
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for r := range rounds {
				want := bytes.Repeat([]byte{byte(w*31 + r + 1)}, region)
				// Write the region in random pieces so edges fall anywhere.
				for pos := 0; pos < region; {
					n := min(region-pos, 1+rng.IntN(5000))
					if err := dev.WriteAt(ctx, want[pos:pos+n], base+int64(pos), false); err != nil {
						errs <- err
						return
					}
					pos += n
				}
				got := make([]byte, region)
				if err := dev.ReadAt(ctx, got, base); err != nil {
					errs <- err
					return
				}
				if i := firstDiff(got, want); i >= 0 {
					errs <- fmt.Errorf("worker %d round %d: byte %d of its region is %#x, want %#x", w, r, i, got[i], want[i])
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// checkExtents checks the Extenter contract: at least one extent, none
// empty, no more than asked, and Zero set on every hole.
func checkExtents(t *testing.T, ext []nbd.Extent, length int64) int64 {
	t.Helper()
	if len(ext) == 0 {
		t.Fatal("no extents")
	}
	var sum int64
	for i, e := range ext {
		if e.Length <= 0 {
			t.Fatalf("extent %d has length %d", i, e.Length)
		}
		if e.Hole && !e.Zero {
			t.Fatalf("extent %d is a hole not marked zero", i)
		}
		sum += e.Length
	}
	if sum > length {
		t.Fatalf("extents describe %d bytes, more than the %d asked", sum, length)
	}
	return sum
}
