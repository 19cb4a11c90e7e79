package md

import (
	"errors"
	"fmt"

	"github.com/tandem-ha/tandem/replicate/disk"
)

// Growing the data area (DRBD's resize, grow only): the bitmap needs more
// pages, so the metadata takes more room. In an external file it grows in
// place (the bitmap is the last structure, at an offset that does not
// depend on the data size); internal metadata, which sits right after the
// data, moves to behind the new end.
//
// Crash safety: nothing says "new size" before everything the new size
// needs is on disk. In place, the bitmap's new pages go first and the
// superblock slot naming the new size last; a crash before that leaves
// the old superblock, whose bitmap at most has its last page invalid for
// the old size (its bits past the old end set), which Open counts as a bad
// page and resyncs, never less. Moved, the whole new copy (empty activity
// log, bitmap, both superblocks) is written and synced before the old
// superblocks are cleared: a crash in between leaves both, and the
// configured size picks which one the next Open reads.

// ErrShrink: Grow was asked for a data area no larger than the current one.
var ErrShrink = errors.New("md: the new data size is not larger")

// GrowOptions qualify Grow.
type GrowOptions struct {
	// InPlace: dst is the area m is on, made larger (an external file):
	// the offsets stay, the bitmap grows at its end. Otherwise dst is a
	// new area that must not overlap m's (internal metadata moving behind
	// the grown data).
	InPlace bool
	// AssumeClean leaves the new range in sync (DRBD's --assume-clean):
	// the caller knows both replicas hold the same bytes there. Otherwise
	// its bits are set: what the grown device holds there is unknown.
	AssumeClean bool
}

// Grow rewrites the metadata for a data area grown to dataSize (a multiple
// of 4 KiB) onto dst, and returns it open. No Begin may be in flight (the
// caller has stopped its writes): Grow syncs the data (SetDataSync) and
// writes an activity-log transaction with nothing hot first, so that the
// new copy starts with an empty log. On success m is closed (without
// writing anything more) and must not be used; on failure m is still the
// metadata, unchanged in memory.
func (m *Meta) Grow(dst disk.Disk, dataSize int64, opts GrowOptions) (*Meta, error) {
	m.mu.Lock()
	closed, old := m.closed, m.sb
	m.mu.Unlock()
	switch {
	case closed:
		return nil, ErrClosed
	case dataSize <= m.l.DataSize:
		return nil, fmt.Errorf("md: growing to %d bytes: %w than %d", dataSize, ErrShrink, m.l.DataSize)
	case dataSize%BlockSize != 0:
		return nil, fmt.Errorf("md: growing to %d bytes: %w: not a multiple of %d", dataSize, ErrLayout, BlockSize)
	}
	nl, err := NewLayout(dataSize, m.l.Options())
	if err != nil {
		return nil, fmt.Errorf("md: growing: %w", err)
	}
	if dst.Size() < nl.MetaSize() {
		return nil, fmt.Errorf("md: growing to %d bytes: the metadata needs %d bytes, the area has %d: %w", dataSize, nl.MetaSize(), dst.Size(), ErrTooSmall)
	}
	if err := m.al.empty(false); err != nil {
		return nil, fmt.Errorf("md: growing: %w", err)
	}
	nextSeq := m.al.nextSequence()

	nbm := newBitmap(dst, nl)
	m.bm.mu.Lock()
	copy(nbm.b, m.bm.b)
	nbm.count = m.bm.count
	m.bm.mu.Unlock()
	if !opts.AssumeClean {
		nbm.Set(m.l.DataSize, dataSize-m.l.DataSize)
	}
	first := int64(0) // the pages to write
	if opts.InPlace {
		first = m.l.BitmapPages() - 1
	} else if _, err := dst.WriteAt(make([]byte, nl.ALSlots*BlockSize), nl.ALOffset()); err != nil {
		return nil, fmt.Errorf("md: growing: clearing the new activity log: %w", err)
	}
	for p := first; p < nl.BitmapPages(); p++ {
		nbm.dirty[p] = true
	}
	if err := nbm.FlushAll(); err != nil { // and syncs dst
		return nil, fmt.Errorf("md: growing: %w", err)
	}

	nsb := old
	nsb.setLayout(nl)
	nsb.Seq = old.Seq + 1
	blk, err := nsb.encode()
	if err != nil {
		return nil, fmt.Errorf("md: growing: %w", err)
	}
	cur := 1 - m.cur
	if opts.InPlace {
		err = writeSync(dst, blk, int64(cur)*BlockSize)
	} else {
		err = writeSync(dst, append(append(make([]byte, 0, 2*BlockSize), blk...), blk...), 0)
	}
	if err != nil {
		return nil, fmt.Errorf("md: growing: writing the superblock: %w", err)
	}
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	if !opts.InPlace {
		// The old copy now lies inside the data area, where nothing reads
		// it; clearing it only keeps a later create-md or dump-md of a
		// smaller configuration from finding it. A failure here is the
		// disk's, and its next write says so.
		_ = writeSync(m.d, make([]byte, 2*BlockSize), 0)
	}
	n := &Meta{d: dst, l: nl, bm: nbm, sb: nsb, cur: cur, recovery: Recovery{WasClean: false}}
	n.al = newActivityLog(dst, nl, nbm, nextSeq)
	m.al.mu.Lock()
	n.al.dataSync = m.al.dataSync
	m.al.closed = true
	m.al.mu.Unlock()
	return n, nil
}
