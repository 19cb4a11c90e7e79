package md

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/tandem-ha/tandem/replicate/disk"
)

// Meta is a replica's open metadata.
type Meta struct {
	d  disk.Disk
	l  Layout
	bm *Bitmap
	al *activityLog

	mu     sync.Mutex // the superblock
	sb     Superblock
	cur    int // the slot sb was read from or last written to
	closed bool

	recovery Recovery
}

// Recovery says what Open found and repaired.
type Recovery struct {
	// WasClean: the last shutdown was clean; nothing was recovered.
	WasClean bool `json:"was_clean"`
	// Extents are the activity-log extents that were hot at a crash;
	// their bits were set, so the next resync rolls them back (or
	// forward) from the peer.
	Extents []Range `json:"extents"`
	// BadBitmapPages failed their checksum (a page write torn by the
	// crash, or damage); all their bits were set.
	BadBitmapPages []int64 `json:"bad_bitmap_pages"`
	// SlotErrors say why a superblock slot was not valid ("" if it was);
	// Open rewrites such a slot with its next update.
	SlotErrors [2]string `json:"slot_errors"`
}

// slotRead is one superblock slot as read.
type slotRead struct {
	raw []byte
	sb  Superblock
	err error
}

func readSlots(d disk.Disk) ([2]slotRead, error) {
	var s [2]slotRead
	if d.Size() < 2*BlockSize {
		return s, fmt.Errorf("md: the metadata area has %d bytes, not even room for the superblocks: %w", d.Size(), ErrTooSmall)
	}
	buf := make([]byte, 2*BlockSize)
	if _, err := d.ReadAt(buf, 0); err != nil {
		return s, fmt.Errorf("md: reading superblocks: %w", err)
	}
	for i := range s {
		s[i].raw = buf[i*BlockSize : (i+1)*BlockSize]
		s[i].sb, s[i].err = decodeSuperblock(s[i].raw)
	}
	return s, nil
}

// pickSlot returns the valid slot with the higher sequence number.
func pickSlot(s [2]slotRead) (int, error) {
	for i := range s {
		if errors.Is(s[i].err, ErrVersion) {
			// Even if the other slot is valid: it is older than what a
			// newer tandem wrote, and using it would go back in time.
			return -1, fmt.Errorf("md: superblock slot %d: %w", i, s[i].err)
		}
	}
	switch {
	case s[0].err == nil && s[1].err == nil:
		if s[1].sb.Seq > s[0].sb.Seq {
			return 1, nil
		}
		return 0, nil
	case s[0].err == nil:
		return 0, nil
	case s[1].err == nil:
		return 1, nil
	case allZero(s[0].raw) && allZero(s[1].raw):
		return -1, ErrNoMetadata
	}
	return -1, fmt.Errorf("%w: no valid superblock (slot 0: %v; slot 1: %v); the resource stays down until the metadata is repaired or recreated with create-md --force", ErrCorrupt, s[0].err, s[1].err)
}

// CreateOptions qualify Create.
type CreateOptions struct {
	// Force overwrites metadata that is there, valid or not.
	Force bool
	// NewBlank marks a brand-new, empty device as consistent, so that a
	// pair created with the same Current generation needs no initial
	// sync. Without it the device is Inconsistent and needs a full sync.
	NewBlank bool
}

// Create writes new metadata for sb on d: both superblock slots, an empty
// activity log and a clear bitmap. sb names the data size and the layout
// options (zero: defaults), the names and the generations; Create fills in
// the version, sequence, metadata size, a UUID and a Current generation
// when they are zero, and the flags Clean plus Consistent (NewBlank) or
// FullSyncNeeded (otherwise). It refuses to overwrite anything that looks
// like tandem metadata, valid or corrupt, unless forced.
func Create(d disk.Disk, sb Superblock, opts CreateOptions) error {
	l, err := NewLayout(sb.DataSize, Options{Granularity: sb.Granularity, ALExtentSize: sb.ALExtentSize, ALSlots: sb.ALSlots, MaxHotExtents: sb.MaxHotExtents})
	if err != nil {
		return fmt.Errorf("md: creating metadata: %w", err)
	}
	if l.MetaSize() > d.Size() {
		return fmt.Errorf("md: creating metadata: it needs %d bytes, the area has %d: %w", l.MetaSize(), d.Size(), ErrTooSmall)
	}
	sb.Version, sb.Seq = Version, 1
	sb.setLayout(l)
	if sb.UUID == (UUID{}) {
		sb.UUID = NewUUID()
	}
	if sb.Gen.Current == 0 {
		sb.Gen.Current = NewGeneration()
	}
	sb.Flags |= Clean
	if opts.NewBlank {
		sb.Flags = sb.Flags&^FullSyncNeeded | Consistent
	} else {
		sb.Flags = sb.Flags&^Consistent | FullSyncNeeded
	}
	blk, err := sb.encode()
	if err != nil {
		return fmt.Errorf("md: creating metadata: %w", err)
	}

	slots, err := readSlots(d)
	if err != nil {
		return fmt.Errorf("md: creating metadata: %w", err)
	}
	if !opts.Force {
		for i, s := range slots {
			switch {
			case s.err == nil:
				return fmt.Errorf("md: creating metadata: slot %d holds valid metadata (resource %q, node %q, sequence %d); use --force to overwrite it and lose its state: %w", i, s.sb.Resource, s.sb.Node, s.sb.Seq, ErrExists)
			case hasMagic(s.raw):
				return fmt.Errorf("md: creating metadata: slot %d holds tandem metadata that does not load (%v); use --force to overwrite it: %w", i, s.err, ErrExists)
			}
		}
	}

	// Invalidate the old superblocks first, so that a crash half-way
	// leaves "no metadata" rather than an old superblock over a new
	// activity log and bitmap.
	if err := writeSync(d, make([]byte, 2*BlockSize), 0); err != nil {
		return fmt.Errorf("md: creating metadata: clearing superblocks: %w", err)
	}
	// An empty ring: stale transactions of an earlier life must not be
	// taken for the newest.
	if _, err := d.WriteAt(make([]byte, l.ALSlots*BlockSize), l.ALOffset()); err != nil {
		return fmt.Errorf("md: creating metadata: clearing the activity log: %w", err)
	}
	const chunk = 256 // pages per write
	pages := l.BitmapPages()
	empty := emptyPages(min(pages, chunk))
	for p := int64(0); p < pages; p += chunk {
		n := min(pages-p, chunk)
		if _, err := d.WriteAt(empty[:n*BlockSize], l.BitmapOffset()+p*BlockSize); err != nil {
			return fmt.Errorf("md: creating metadata: writing the bitmap: %w", err)
		}
	}
	if err := d.Sync(); err != nil {
		return fmt.Errorf("md: creating metadata: %w", err)
	}
	two := append(append(make([]byte, 0, 2*BlockSize), blk...), blk...)
	if err := writeSync(d, two, 0); err != nil {
		return fmt.Errorf("md: creating metadata: writing superblocks: %w", err)
	}
	return nil
}

func writeSync(d disk.Disk, p []byte, off int64) error {
	if _, err := d.WriteAt(p, off); err != nil {
		return err
	}
	return d.Sync()
}

// NewGeneration returns a random non-zero generation identifier.
func NewGeneration() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
		if g := binary.BigEndian.Uint64(b[:]); g != 0 {
			return g
		}
	}
}

// Open loads the metadata on d (the metadata area: a region of the backing
// device, or an external file). It picks the valid superblock slot with
// the higher sequence, never repairs a corrupt one by reinitialising, and
// recovers from a crash: if the last shutdown was not clean, the extents
// of the newest activity-log transaction get their bits set, and the
// bitmap is on disk before Open returns. It then clears the Clean flag, so
// that a crash from now on is recognised.
func Open(d disk.Disk) (*Meta, error) {
	slots, err := readSlots(d)
	if err != nil {
		return nil, err
	}
	cur, err := pickSlot(slots)
	if err != nil {
		return nil, err
	}
	sb := slots[cur].sb
	l, err := sb.Layout()
	if err != nil {
		return nil, fmt.Errorf("md: superblock: %w: %w", ErrCorrupt, err) // decode validated it; kept for safety
	}
	if sb.MetaSize > d.Size() {
		return nil, fmt.Errorf("%w: the superblock says the metadata takes %d bytes, the area has %d (wrong device, or the layout options changed?)", ErrCorrupt, sb.MetaSize, d.Size())
	}
	m := &Meta{d: d, l: l, sb: sb, cur: cur}
	for i, s := range slots {
		if s.err != nil {
			m.recovery.SlotErrors[i] = s.err.Error()
		}
	}
	m.bm = newBitmap(d, l)
	bad, err := m.bm.load()
	if err != nil {
		return nil, err
	}
	m.recovery.BadBitmapPages = bad
	ring, newest, err := readAL(d, l)
	if err != nil {
		return nil, err
	}
	next := uint64(1)
	if newest >= 0 {
		next = ring[newest].seq + 1
	}
	m.al = newActivityLog(d, l, m.bm, next)
	m.recovery.WasClean = sb.Flags.Has(Clean)
	if !m.recovery.WasClean && newest >= 0 {
		for _, e := range ring[newest].exts {
			r := Range{Off: int64(e) * l.ALExtentSize, Len: l.ALExtentSize}
			r.Len = min(r.Len, l.DataSize-r.Off)
			m.bm.Set(r.Off, r.Len)
			m.recovery.Extents = append(m.recovery.Extents, r)
		}
	}
	if err := m.bm.FlushAll(); err != nil {
		return nil, fmt.Errorf("md: recovering: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	nsb := m.sb
	nsb.Flags &^= Clean
	if err := m.writeLocked(nsb); err != nil {
		return nil, fmt.Errorf("md: opening: %w", err)
	}
	return m, nil
}

// Layout is the metadata's layout (MetaOffset 0: it is relative to the
// area Open was given).
func (m *Meta) Layout() Layout { return m.l }

// Bitmap is the out-of-sync bitmap.
func (m *Meta) Bitmap() *Bitmap { return m.bm }

// Recovery says what Open found and repaired.
func (m *Meta) Recovery() Recovery { return m.recovery }

// RecoveredExtents are the data ranges that were hot at a crash and are
// now marked out of sync (none after a clean shutdown).
func (m *Meta) RecoveredExtents() []Range { return m.recovery.Extents }

// SetDataSync installs what syncs the data area. The activity log calls
// it before a transaction that drops extents (and on Close), so that
// completed writes in those extents are durable before nothing records
// that they might differ from the peer. When the data and the metadata
// share one device, the metadata's own syncs cover it, but setting it is
// still right. Set it before the first Begin.
func (m *Meta) SetDataSync(fn func() error) {
	m.al.mu.Lock()
	m.al.dataSync = fn
	m.al.mu.Unlock()
}

// Superblock returns a copy of the current superblock.
func (m *Meta) Superblock() Superblock {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sb
}

// Update changes the superblock with fn and writes it durably: into the
// slot holding the older copy, then Sync, so that a torn write leaves the
// current copy intact. fn may change names, generations, flags (except
// Clean, which Open and Close own), epoch and PromotedAt; the layout,
// UUID, version and sequence are not its to change.
func (m *Meta) Update(fn func(*Superblock)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	nsb := m.sb
	fn(&nsb)
	old := m.sb
	if nsb.Version != old.Version || nsb.Seq != old.Seq || nsb.MetaSize != old.MetaSize || nsb.DataSize != old.DataSize ||
		nsb.Granularity != old.Granularity || nsb.ALExtentSize != old.ALExtentSize || nsb.ALSlots != old.ALSlots ||
		nsb.MaxHotExtents != old.MaxHotExtents || nsb.UUID != old.UUID {
		return errors.New("md: updating superblock: the layout, UUID, version and sequence cannot be changed")
	}
	nsb.Flags = nsb.Flags&^Clean | old.Flags&Clean
	if err := m.writeLocked(nsb); err != nil {
		return fmt.Errorf("md: updating superblock: %w", err)
	}
	return nil
}

// writeLocked writes nsb with the next sequence number into the other slot.
// On failure the in-memory superblock stays the old one, which is still
// intact on disk; the next write goes to the same slot again.
func (m *Meta) writeLocked(nsb Superblock) error {
	nsb.Seq = m.sb.Seq + 1
	blk, err := nsb.encode()
	if err != nil {
		return err
	}
	slot := 1 - m.cur
	if err := writeSync(m.d, blk, int64(slot)*BlockSize); err != nil {
		return fmt.Errorf("writing superblock slot %d: %w", slot, err)
	}
	m.sb, m.cur = nsb, slot
	return nil
}

// Begin marks the extents covering [off, off+length) hot before a write
// there, and returns once a transaction naming them is on disk (at once if
// they were hot already). Concurrent Begins for cold extents share
// transactions. When the hot set is full, the least recently used extent
// without writes in flight is evicted (its bitmap pages first); if every
// hot extent is busy, Begin waits until one is released or ctx ends.
//
// Call release when the write is complete, after setting any bitmap bits
// for it: the extent stays hot, and can be evicted, only after that.
func (m *Meta) Begin(ctx context.Context, off, length int64) (release func(), err error) {
	return m.al.begin(ctx, off, length)
}

// ALStats describe the activity log's work since Open.
func (m *Meta) ALStats() ALStats { return m.al.stats() }

// Close shuts the metadata down: it syncs the data (see SetDataSync),
// writes the bitmap, writes an empty activity-log transaction and sets the
// Clean flag (clean) or clears it. Every Begin must have been released. It
// does not close the disk, which the caller owns.
func (m *Meta) Close(clean bool) error {
	if err := m.al.close(); err != nil {
		return fmt.Errorf("md: closing: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.closed = true
	nsb := m.sb
	nsb.Flags &^= Clean
	if clean {
		nsb.Flags |= Clean
	}
	if err := m.writeLocked(nsb); err != nil {
		return fmt.Errorf("md: closing: %w", err)
	}
	return nil
}
