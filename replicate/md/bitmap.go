package md

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
	"sync"

	"github.com/tandem-ha/tandem/replicate/disk"
)

// Bitmap is the out-of-sync bitmap: one bit per Granularity bytes of data,
// set where the replicas may differ. It lives in memory and is written to
// disk page by page (4092 bytes of bits and a CRC per 4 KiB block); bit i
// is bit i%8 (least significant first) of byte i/8 of the bit array, and
// page p holds bytes [p*4092, (p+1)*4092) of it.
//
// Invariant kept with the activity log: a set bit that is not on disk yet
// lies in a hot extent, so a crash cannot lose it. Callers that set bits
// outside Begin/release (resync bookkeeping, verify) flush them
// themselves.
//
// Safe for concurrent use.
type Bitmap struct {
	d        disk.Disk // the metadata area
	off      int64     // where the bitmap starts in it
	gran     int64
	dataSize int64
	nbits    int64

	mu    sync.Mutex
	b     []byte // pages*pageBytes; bits past nbits stay zero
	dirty []bool // per page: changed since last written
	count uint64

	// flushMu serialises writers: two flushes of one page racing could
	// land the older copy last while both cleared the page's dirty mark.
	flushMu sync.Mutex
}

func newBitmap(d disk.Disk, l Layout) *Bitmap {
	pages := l.BitmapPages()
	return &Bitmap{
		d: d, off: l.BitmapOffset(), gran: l.Granularity, dataSize: l.DataSize, nbits: l.Bits(),
		b: make([]byte, pages*pageBytes), dirty: make([]bool, pages),
	}
}

// Granularity is the data bytes per bit.
func (bm *Bitmap) Granularity() int64 { return bm.gran }

// Bits is the number of bits.
func (bm *Bitmap) Bits() int64 { return bm.nbits }

// covering returns the bits [lo, hi) that touch the byte range, clipped to
// the data area.
func (bm *Bitmap) covering(off, length int64) (lo, hi int64) {
	off, end := bm.clip(off, length)
	if off >= end {
		return 0, 0
	}
	return off / bm.gran, ceilDiv(end, bm.gran)
}

// clip returns [off, off+length) cut to the data area, without overflowing
// on extreme arguments.
func (bm *Bitmap) clip(off, length int64) (start, end int64) {
	if length <= 0 || off >= bm.dataSize {
		return 0, 0
	}
	if off < 0 {
		if length <= -off {
			return 0, 0
		}
		length += off
		off = 0
	}
	return off, off + min(length, bm.dataSize-off)
}

// Set marks every bit that touches [off, off+length) out of sync (the
// range is clipped to the data area).
func (bm *Bitmap) Set(off, length int64) {
	lo, hi := bm.covering(off, length)
	bm.mu.Lock()
	bm.setBitsLocked(lo, hi)
	bm.mu.Unlock()
}

// Clear marks the bits that lie entirely inside [off, off+length) in sync;
// a bit only partly covered stays set, since part of its data was not
// synced. A range reaching the end of the data covers the last, short bit.
func (bm *Bitmap) Clear(off, length int64) {
	off, end := bm.clip(off, length)
	if off >= end {
		return
	}
	lo := ceilDiv(off, bm.gran)
	hi := end / bm.gran
	if end == bm.dataSize {
		hi = bm.nbits
	}
	if lo >= hi {
		return
	}
	bm.mu.Lock()
	bm.clearBitsLocked(lo, hi)
	bm.mu.Unlock()
}

// update sets or clears bits [lo, hi), keeping the count and the dirty
// pages.
func (bm *Bitmap) update(lo, hi int64, set bool) {
	for lo < hi {
		i := lo / 8
		first := uint(lo % 8)
		last := uint(min(hi-i*8, 8)) // exclusive
		mask := byte((uint(1)<<last - 1) &^ (uint(1)<<first - 1))
		if first == 0 && last == 8 {
			// Whole bytes: run as far as possible.
			j := hi / 8
			bm.fillBytes(i, j, set)
			lo = j * 8
			continue
		}
		old := bm.b[i]
		nb := old &^ mask
		if set {
			nb = old | mask
		}
		bm.storeByte(i, old, nb)
		lo = i*8 + int64(last)
	}
}

func (bm *Bitmap) fillBytes(i, j int64, set bool) {
	v := byte(0)
	if set {
		v = 0xff
	}
	for k := i; k < j; k++ {
		if old := bm.b[k]; old != v {
			bm.storeByte(k, old, v)
		}
	}
}

func (bm *Bitmap) storeByte(i int64, old, nb byte) {
	if old == nb {
		return
	}
	bm.b[i] = nb
	bm.count += uint64(bits.OnesCount8(nb))
	bm.count -= uint64(bits.OnesCount8(old))
	bm.dirty[i/pageBytes] = true
}

func (bm *Bitmap) setBitsLocked(lo, hi int64)   { bm.update(lo, hi, true) }
func (bm *Bitmap) clearBitsLocked(lo, hi int64) { bm.update(lo, hi, false) }

// Count is the number of set bits.
func (bm *Bitmap) Count() uint64 {
	bm.mu.Lock()
	defer bm.mu.Unlock()
	return bm.count
}

// OutOfSyncBytes is the data the set bits cover (the last bit may cover
// less than Granularity).
func (bm *Bitmap) OutOfSyncBytes() int64 {
	bm.mu.Lock()
	defer bm.mu.Unlock()
	n := int64(bm.count) * bm.gran
	if last := bm.nbits - 1; bm.b[last/8]&(1<<(last%8)) != 0 {
		n -= bm.nbits*bm.gran - bm.dataSize
	}
	return n
}

// Dirty reports whether any bit is set: the replicas may differ somewhere.
func (bm *Bitmap) Dirty() bool { return bm.Count() > 0 }

// IsSet reports whether every bit that touches [off, off+length) is set.
func (bm *Bitmap) IsSet(off, length int64) bool {
	lo, hi := bm.covering(off, length)
	bm.mu.Lock()
	defer bm.mu.Unlock()
	for i := lo; i < hi; i++ {
		if bm.b[i/8]&(1<<(i%8)) == 0 {
			return false
		}
	}
	return true
}

// NextSet finds the first run of set bits at or after the bit holding
// byte from, and returns it as a byte range of data (the last bit clipped
// to the data size): the next thing a resync sends, in disk order.
func (bm *Bitmap) NextSet(from int64) (off, length int64, ok bool) {
	from = max(from, 0)
	if from >= bm.dataSize {
		return 0, 0, false
	}
	bm.mu.Lock()
	defer bm.mu.Unlock()
	start := bm.scan(from/bm.gran, true)
	if start >= bm.nbits {
		return 0, 0, false
	}
	end := bm.scan(start, false)
	off = start * bm.gran
	return off, min(end*bm.gran, bm.dataSize) - off, true
}

// scan returns the first bit at or after i whose value is set (or, with
// set false, clear), or nbits; it skips whole words it can rule out.
func (bm *Bitmap) scan(i int64, set bool) int64 {
	for i < bm.nbits {
		if i%64 == 0 && i+64 <= bm.nbits {
			w := binary.LittleEndian.Uint64(bm.b[i/8:])
			if !set {
				w = ^w
			}
			if w == 0 {
				i += 64
				continue
			}
			return i + int64(bits.TrailingZeros64(w))
		}
		if (bm.b[i/8]&(1<<(i%8)) != 0) == set {
			return i
		}
		i++
	}
	return bm.nbits
}

// Bytes returns a copy of the bit array (ceil(Bits/8) bytes), to send to
// the peer.
func (bm *Bitmap) Bytes() []byte {
	bm.mu.Lock()
	defer bm.mu.Unlock()
	return append([]byte(nil), bm.b[:ceilDiv(bm.nbits, 8)]...)
}

// Union sets every bit that is set in other, a bit array from Bytes (the
// peer's): after it, the bitmap marks where either side may differ.
func (bm *Bitmap) Union(other []byte) error {
	n := ceilDiv(bm.nbits, 8)
	if int64(len(other)) != n {
		return fmt.Errorf("md: bitmap union: %d bytes, this bitmap has %d (different sizes or granularity)", len(other), n)
	}
	bm.mu.Lock()
	defer bm.mu.Unlock()
	for i, v := range other {
		if i == int(n-1) && bm.nbits%8 != 0 {
			v &= byte(1)<<(bm.nbits%8) - 1 // bits past the end stay zero
		}
		old := bm.b[i]
		bm.storeByte(int64(i), old, old|v)
	}
	return nil
}

// FlushPages writes the pages holding the bits that touch [off,
// off+length), if they changed, and syncs.
func (bm *Bitmap) FlushPages(off, length int64) error {
	lo, hi := bm.covering(off, length)
	if lo >= hi {
		return nil
	}
	return bm.flush(lo/pageBits, (hi-1)/pageBits+1)
}

// FlushAll writes every changed page and syncs.
func (bm *Bitmap) FlushAll() error {
	return bm.flush(0, int64(len(bm.dirty)))
}

// flushPages writes the changed pages among [first, last) and syncs.
func (bm *Bitmap) flush(first, last int64) error {
	bm.flushMu.Lock()
	defer bm.flushMu.Unlock()
	type run struct {
		page int64
		buf  []byte
	}
	var runs []run
	bm.mu.Lock()
	for p := first; p < last; p++ {
		if !bm.dirty[p] {
			continue
		}
		bm.dirty[p] = false
		if n := len(runs); n > 0 && runs[n-1].page+int64(len(runs[n-1].buf))/BlockSize == p {
			runs[n-1].buf = append(runs[n-1].buf, make([]byte, BlockSize)...)
		} else {
			runs = append(runs, run{page: p, buf: make([]byte, BlockSize)})
		}
		r := &runs[len(runs)-1]
		blk := r.buf[len(r.buf)-BlockSize:]
		copy(blk, bm.b[p*pageBytes:(p+1)*pageBytes])
		binary.BigEndian.PutUint32(blk[pageBytes:], crc32.Checksum(blk[:pageBytes], castagnoli))
	}
	bm.mu.Unlock()
	if len(runs) == 0 {
		return nil
	}
	err := func() error {
		for _, r := range runs {
			if _, err := bm.d.WriteAt(r.buf, bm.off+r.page*BlockSize); err != nil {
				return err
			}
		}
		return bm.d.Sync()
	}()
	if err != nil {
		// What reached the disk is unknown: write these pages again next
		// time.
		bm.mu.Lock()
		for _, r := range runs {
			for k := range int64(len(r.buf)) / BlockSize {
				bm.dirty[r.page+k] = true
			}
		}
		bm.mu.Unlock()
		return fmt.Errorf("md: writing bitmap: %w", err)
	}
	return nil
}

// load reads every page. A page whose CRC does not match (a page write
// torn by a crash, or damage) has all its bits set: the replicas are
// resynced where nothing says they agree. It returns those pages, marked
// dirty so the next flush rewrites them.
func (bm *Bitmap) load() (bad []int64, err error) {
	const chunkPages = 256
	pages := int64(len(bm.dirty))
	buf := make([]byte, min(pages, chunkPages)*BlockSize)
	bm.mu.Lock()
	defer bm.mu.Unlock()
	for p := int64(0); p < pages; p += chunkPages {
		n := min(pages-p, chunkPages)
		if _, err := bm.d.ReadAt(buf[:n*BlockSize], bm.off+p*BlockSize); err != nil {
			return nil, fmt.Errorf("md: reading bitmap: %w", err)
		}
		for k := range n {
			blk := buf[k*BlockSize : (k+1)*BlockSize]
			page := p + k
			dst := bm.b[page*pageBytes : (page+1)*pageBytes]
			if validPage(blk, page, bm.nbits) {
				copy(dst, blk[:pageBytes])
				continue
			}
			bad = append(bad, page)
			bm.dirty[page] = true
			clear(dst)
		}
	}
	bm.count = 0
	for _, v := range bm.b {
		bm.count += uint64(bits.OnesCount8(v))
	}
	for _, page := range bad {
		bm.setBitsLocked(page*pageBits, min((page+1)*pageBits, bm.nbits))
	}
	return bad, nil
}

// validPage checks a bitmap block's CRC and that no bit past the end of the
// data is set.
func validPage(blk []byte, page, nbits int64) bool {
	if binary.BigEndian.Uint32(blk[pageBytes:]) != crc32.Checksum(blk[:pageBytes], castagnoli) {
		return false
	}
	last := (page + 1) * pageBits
	if last <= nbits {
		return true
	}
	// Bits [nbits, last) must be clear.
	for i := nbits - page*pageBits; i < pageBits; i++ {
		if i%8 == 0 {
			return allZero(blk[i/8 : pageBytes])
		}
		if blk[i/8]&(1<<(i%8)) != 0 {
			return false
		}
	}
	return true
}

// emptyPages returns count valid all-clear bitmap blocks.
func emptyPages(count int64) []byte {
	buf := make([]byte, count*BlockSize)
	sum := crc32.Checksum(buf[:pageBytes], castagnoli)
	for k := range count {
		binary.BigEndian.PutUint32(buf[k*BlockSize+pageBytes:], sum)
	}
	return buf
}
