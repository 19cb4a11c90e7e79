package md

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/tandem-ha/tandem/replicate/disk"
)

// testBitmap returns a bitmap over a Mem holding empty pages.
func testBitmap(t *testing.T, dataSize, gran int64) (*Bitmap, *disk.Mem, Layout) {
	t.Helper()
	l, err := NewLayout(dataSize, Options{Granularity: gran, ALSlots: 2})
	if err != nil {
		t.Fatal(err)
	}
	m := disk.NewMem(l.MetaSize())
	if _, err := m.WriteAt(emptyPages(l.BitmapPages()), l.BitmapOffset()); err != nil {
		t.Fatal(err)
	}
	bm := newBitmap(m, l)
	if bad, err := bm.load(); err != nil || len(bad) != 0 {
		t.Fatalf("load: %v, bad pages %v", err, bad)
	}
	return bm, m, l
}

// model is the obvious bitmap: one bool per bit.
type model []bool

func (mo model) covering(off, length, gran, size int64) (int64, int64) {
	end := min(off+length, size)
	off = max(off, 0)
	if length <= 0 || off >= end {
		return 0, 0
	}
	return off / gran, (end + gran - 1) / gran
}

func checkModel(t *testing.T, bm *Bitmap, mo model, step int) {
	t.Helper()
	var n uint64
	for i, v := range mo {
		if v {
			n++
		}
		if got := bm.b[i/8]&(1<<(i%8)) != 0; got != v {
			t.Fatalf("step %d: bit %d is %v, model %v", step, i, got, v)
		}
	}
	if bm.Count() != n || bm.Dirty() != (n > 0) {
		t.Fatalf("step %d: count %d, model %d", step, bm.Count(), n)
	}
}

func TestBitmapAgainstModel(t *testing.T) {
	const gran = 4096
	// Three pages, the last short and the last bit short.
	size := int64(2*pageBits+1000)*gran - 100
	bm, _, l := testBitmap(t, size, gran)
	if bm.Bits() != 2*pageBits+1000 || l.BitmapPages() != 3 {
		t.Fatalf("bits %d pages %d", bm.Bits(), l.BitmapPages())
	}
	mo := make(model, bm.Bits())
	r := rand.New(rand.NewPCG(7, 7))
	for step := range 3000 {
		off := r.Int64N(size+2*gran) - gran
		length := r.Int64N(200 * gran)
		if r.IntN(10) == 0 {
			length = r.Int64N(size)
		}
		switch r.IntN(3) {
		case 0, 1:
			bm.Set(off, length)
			lo, hi := mo.covering(off, length, gran, size)
			for i := lo; i < hi; i++ {
				mo[i] = true
			}
		case 2:
			bm.Clear(off, length)
			end := min(off+length, size)
			o := max(off, 0)
			if length > 0 && o < end {
				lo := (o + gran - 1) / gran
				hi := end / gran
				if end == size {
					hi = int64(len(mo))
				}
				for i := lo; i < hi; i++ {
					mo[i] = false
				}
			}
		}
		if step%8 == 0 {
			checkModel(t, bm, mo, step)
		}
		// NextSet from a random point agrees with the model.
		from := r.Int64N(size)
		off2, n2, ok := bm.NextSet(from)
		i := from / gran
		for i < int64(len(mo)) && !mo[i] {
			i++
		}
		if ok != (i < int64(len(mo))) {
			t.Fatalf("step %d: NextSet(%d) ok %v", step, from, ok)
		}
		if ok {
			j := i
			for j < int64(len(mo)) && mo[j] {
				j++
			}
			if off2 != i*gran || n2 != min(j*gran, size)-i*gran {
				t.Fatalf("step %d: NextSet(%d) = %d+%d, want %d+%d", step, from, off2, n2, i*gran, min(j*gran, size)-i*gran)
			}
			if !bm.IsSet(off2, n2) || (off2+n2 < size && bm.IsSet(off2, n2+1)) {
				t.Fatalf("step %d: IsSet disagrees with NextSet", step)
			}
		}
	}
}

func TestBitmapClearPartial(t *testing.T) {
	bm, _, _ := testBitmap(t, 10*4096-10, 4096)
	bm.Set(0, 1<<30)
	if bm.Count() != 10 {
		t.Fatalf("count %d", bm.Count())
	}
	if bm.OutOfSyncBytes() != 10*4096-10 {
		t.Fatalf("out of sync bytes %d", bm.OutOfSyncBytes())
	}
	bm.Clear(100, 4096) // covers no bit entirely
	if bm.Count() != 10 {
		t.Fatal("a partial clear cleared a bit")
	}
	bm.Clear(4096, 8192)
	if bm.Count() != 8 || bm.IsSet(4096, 1) || !bm.IsSet(0, 4096) || !bm.IsSet(12288, 1) {
		t.Fatal("clearing two whole bits")
	}
	bm.Clear(9*4096, 4096-10) // the short last bit, to the end of the data
	if bm.Count() != 7 || bm.OutOfSyncBytes() != 7*4096 {
		t.Fatalf("clearing the last bit: count %d", bm.Count())
	}
	off, n, ok := bm.NextSet(4096)
	if !ok || off != 12288 || n != 6*4096 {
		t.Fatalf("NextSet %d %d %v", off, n, ok)
	}
	if _, _, ok := bm.NextSet(10 * 4096); ok {
		t.Fatal("NextSet past the end")
	}
}

func TestBitmapUnionBytes(t *testing.T) {
	a, _, _ := testBitmap(t, 100*4096+1, 4096) // 101 bits
	b, _, _ := testBitmap(t, 100*4096+1, 4096)
	a.Set(0, 4096)
	b.Set(50*4096, 3*4096)
	b.Set(100*4096, 1)
	if err := a.Union(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	if a.Count() != 5 || !a.IsSet(50*4096, 3*4096) || !a.IsSet(100*4096, 1) {
		t.Fatalf("union: count %d", a.Count())
	}
	if len(a.Bytes()) != 13 {
		t.Fatalf("bytes %d", len(a.Bytes()))
	}
	// Stray bits past the end from the peer are ignored.
	junk := bytes.Repeat([]byte{0xff}, 13)
	if err := a.Union(junk); err != nil {
		t.Fatal(err)
	}
	if a.Count() != 101 {
		t.Fatalf("count %d after union with all ones", a.Count())
	}
	if err := a.Union(make([]byte, 12)); err == nil {
		t.Fatal("union of a different size accepted")
	}
}

func reload(t *testing.T, m disk.Disk, l Layout) (*Bitmap, []int64) {
	t.Helper()
	bm := newBitmap(m, l)
	bad, err := bm.load()
	if err != nil {
		t.Fatal(err)
	}
	return bm, bad
}

func TestBitmapPersistence(t *testing.T) {
	const gran = 4096
	size := int64(3*pageBits) * gran
	bm, m, l := testBitmap(t, size, gran)
	page := int64(pageBits) * gran // data covered by one page
	bm.Set(10*gran, gran)          // page 0
	bm.Set(page+5*gran, gran)      // page 1
	bm.Set(2*page+7*gran, gran)    // page 2
	// Flushing a range in page 1 writes only page 1.
	var writes []int64
	m.SetFault(func(op string, off, n int64) error {
		if op == "write" {
			writes = append(writes, off)
		}
		return nil
	})
	if err := bm.FlushPages(page, gran); err != nil {
		t.Fatal(err)
	}
	if len(writes) != 1 || writes[0] != l.BitmapOffset()+BlockSize || m.Unsynced() != 0 {
		t.Fatalf("FlushPages wrote at %v, %d unsynced", writes, m.Unsynced())
	}
	// Nothing changed since: no write.
	writes = nil
	if err := bm.FlushPages(page, gran); err != nil || len(writes) != 0 {
		t.Fatalf("clean page rewritten: %v %v", writes, err)
	}
	got, _ := reload(t, m, l)
	if got.Count() != 1 || !got.IsSet(page+5*gran, gran) {
		t.Fatalf("after flushing page 1: count %d", got.Count())
	}
	// Setting a bit that is set already does not dirty the page.
	bm.Set(page+5*gran, 1)
	if err := bm.FlushPages(page, 1); err != nil || len(writes) != 0 {
		t.Fatalf("an unchanged page was rewritten: %v %v", writes, err)
	}
	if err := bm.FlushAll(); err != nil {
		t.Fatal(err)
	}
	if len(writes) != 2 {
		t.Fatalf("FlushAll wrote %v, want pages 0 and 2", writes)
	}
	got, _ = reload(t, m, l)
	if got.Count() != 3 || !bytes.Equal(got.Bytes(), bm.Bytes()) {
		t.Fatal("reloaded bitmap differs")
	}

	// A failed flush leaves the pages dirty: the next one writes them.
	boom := errors.New("boom")
	bm.Set(0, gran)
	m.SetFault(func(op string, _, _ int64) error {
		if op == "sync" {
			return boom
		}
		return nil
	})
	if err := bm.FlushAll(); !errors.Is(err, boom) {
		t.Fatalf("flush with failing sync: %v", err)
	}
	m.SetFault(nil)
	if err := bm.FlushAll(); err != nil {
		t.Fatal(err)
	}
	got, _ = reload(t, m, l)
	if !got.IsSet(0, gran) {
		t.Fatal("bit lost after a failed flush")
	}
}

func TestBitmapBadPage(t *testing.T) {
	const gran = 4096
	size := int64(pageBits+100) * gran
	bm, m, l := testBitmap(t, size, gran)
	bm.Set(0, gran)
	if err := bm.FlushAll(); err != nil {
		t.Fatal(err)
	}
	// Damage page 1 (the short one): all its bits count as set.
	if _, err := m.WriteAt([]byte{0xde, 0xad}, l.BitmapOffset()+BlockSize+7); err != nil {
		t.Fatal(err)
	}
	got, bad := reload(t, m, l)
	if len(bad) != 1 || bad[0] != 1 {
		t.Fatalf("bad pages %v", bad)
	}
	if got.Count() != 1+100 || !got.IsSet(int64(pageBits)*gran, 100*gran) {
		t.Fatalf("count %d", got.Count())
	}
	// A valid CRC over bits past the end of the data is damage too.
	blk := make([]byte, BlockSize)
	blk[pageBytes-1] = 0x80
	resum(blk)
	if _, err := m.WriteAt(blk, l.BitmapOffset()+BlockSize); err != nil {
		t.Fatal(err)
	}
	if _, bad := reload(t, m, l); len(bad) != 1 {
		t.Fatalf("stray bits past the end: bad pages %v", bad)
	}
	// Flushing rewrites the damaged page.
	if err := got.FlushAll(); err != nil {
		t.Fatal(err)
	}
	if again, bad := reload(t, m, l); len(bad) != 0 || again.Count() != 101 {
		t.Fatalf("after rewrite: bad %v, count %d", bad, again.Count())
	}
}

// TestBitmapConcurrent runs setters, clearers and flushers together (run it
// with -race); afterwards disk and memory agree.
func TestBitmapConcurrent(t *testing.T) {
	const gran = 4096
	size := int64(2*pageBits) * gran
	bm, m, l := testBitmap(t, size, gran)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for range 500 {
				off := r.Int64N(size)
				switch r.IntN(4) {
				case 0:
					bm.Clear(off, 64*gran)
				case 1:
					if err := bm.FlushPages(off, gran); err != nil {
						t.Error(err)
					}
				default:
					bm.Set(off, r.Int64N(64*gran))
				}
			}
		}()
	}
	wg.Wait()
	if err := bm.FlushAll(); err != nil {
		t.Fatal(err)
	}
	got, _ := reload(t, m, l)
	if !bytes.Equal(got.Bytes(), bm.Bytes()) || got.Count() != bm.Count() {
		t.Fatal("disk and memory differ after concurrent flushes")
	}
}

func TestBitmapExtremeRanges(t *testing.T) {
	bm, _, _ := testBitmap(t, 10*4096, 4096)
	bm.Set(-1<<62, 1<<62+4096) // reaches the first bit only
	if bm.Count() != 1 || !bm.IsSet(0, 4096) {
		t.Fatalf("count %d", bm.Count())
	}
	bm.Set(9*4096, 1<<62+1<<61) // would overflow off+length
	if bm.Count() != 2 || !bm.IsSet(9*4096, 4096) {
		t.Fatalf("count %d", bm.Count())
	}
	bm.Set(-100, 50)
	bm.Set(10*4096, 10)
	bm.Set(5*4096, 0)
	if bm.Count() != 2 {
		t.Fatalf("out-of-range sets changed bits: count %d", bm.Count())
	}
	bm.Clear(-1<<62, 1<<62+1<<61)
	if bm.Count() != 0 {
		t.Fatalf("clear everything: count %d", bm.Count())
	}
}
