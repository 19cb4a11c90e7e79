package md

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"sync"

	"github.com/tandem-ha/tandem/replicate/disk"
)

const alMagic = "TANDEMAL"

// ErrTooManyExtents: a Begin range spans more extents than may be hot at
// once; the caller splits it (a huge trim, say).
var ErrTooManyExtents = errors.New("md: range spans more activity-log extents than may be hot")

// Range is a byte range of the data area.
type Range struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// encodeAL returns the transaction block holding the complete hot set.
// Extent numbers are sorted: decoding insists on it, which catches blocks
// that pass the CRC but were not written by us.
func encodeAL(seq uint64, exts []uint32) []byte {
	b := make([]byte, BlockSize)
	copy(b, alMagic)
	binary.BigEndian.PutUint64(b[8:], seq)
	binary.BigEndian.PutUint32(b[16:], uint32(len(exts)))
	for i, e := range exts {
		binary.BigEndian.PutUint32(b[20+4*i:], e)
	}
	binary.BigEndian.PutUint32(b[BlockSize-4:], crc32.Checksum(b[:BlockSize-4], castagnoli))
	return b
}

// alSlot is one block of the ring as read from disk.
type alSlot struct {
	seq   uint64
	exts  []uint32
	empty bool  // all zeroes: never written
	err   error // why the block is not a valid transaction
}

func decodeAL(b []byte, l Layout) alSlot {
	if allZero(b) {
		return alSlot{empty: true, err: errors.New("never written")}
	}
	if string(b[:8]) != alMagic {
		return alSlot{err: errors.New("no activity-log magic")}
	}
	if got, want := binary.BigEndian.Uint32(b[BlockSize-4:]), crc32.Checksum(b[:BlockSize-4], castagnoli); got != want {
		return alSlot{err: fmt.Errorf("checksum 0x%08x, want 0x%08x (torn or corrupt)", got, want)}
	}
	s := alSlot{seq: binary.BigEndian.Uint64(b[8:])}
	n := binary.BigEndian.Uint32(b[16:])
	if s.seq == 0 {
		return alSlot{err: errors.New("sequence 0")}
	}
	if int64(n) > int64(l.MaxHotExtents) {
		return alSlot{seq: s.seq, err: fmt.Errorf("%d hot extents, at most %d may be hot", n, l.MaxHotExtents)}
	}
	s.exts = make([]uint32, n)
	for i := range s.exts {
		e := binary.BigEndian.Uint32(b[20+4*i:])
		if int64(e) >= l.Extents() {
			return alSlot{seq: s.seq, err: fmt.Errorf("extent %d past the last (%d)", e, l.Extents()-1)}
		}
		if i > 0 && e <= s.exts[i-1] {
			return alSlot{seq: s.seq, err: errors.New("extents not in increasing order")}
		}
		s.exts[i] = e
	}
	if !allZero(b[20+4*int(n) : BlockSize-4]) {
		return alSlot{seq: s.seq, err: errors.New("non-zero bytes after the extents")}
	}
	return s
}

// readAL reads the ring and returns its blocks and the index of the newest
// valid transaction (-1 if none). A torn newest transaction is invalid, and
// then the one before it is the newest: it covers at least what the torn
// one did, because a transaction only drops an extent after the bitmap
// pages covering it are on disk.
func readAL(d disk.Disk, l Layout) ([]alSlot, int, error) {
	buf := make([]byte, l.ALSlots*BlockSize)
	if _, err := d.ReadAt(buf, l.ALOffset()); err != nil {
		return nil, -1, fmt.Errorf("md: reading activity log: %w", err)
	}
	slots := make([]alSlot, l.ALSlots)
	newest := -1
	for i := range slots {
		slots[i] = decodeAL(buf[i*BlockSize:(i+1)*BlockSize], l)
		if slots[i].err == nil && (newest < 0 || slots[i].seq > slots[newest].seq) {
			newest = i
		}
	}
	return slots, newest, nil
}

// activityLog keeps the hot set: extents where writes may be in flight.
// Before Begin returns, the extents it covers are in a transaction that is
// on disk; a crash of the primary then tells, through the newest
// transaction, every extent that may differ from the peer.
type activityLog struct {
	d  disk.Disk
	l  Layout
	bm *Bitmap

	mu       sync.Mutex
	dataSync func() error
	hot      map[uint32]*alExtent
	clock    uint64
	// evicted left the hot set since the last transaction was snapshot;
	// the next transaction flushes their bitmap pages before it forgets
	// them.
	evicted []*alExtent
	writing bool // a goroutine is writing a transaction
	nextSeq uint64
	changed chan struct{} // closed and replaced when waiters may proceed
	waiters int
	err     error // sticky: after a metadata write failed nothing is safe
	closed  bool
	commits uint64
}

type alExtent struct {
	num uint32
	// refs counts Begins holding the extent (writes in flight).
	refs int
	// durable: a transaction holding this entry is on disk. An entry that
	// leaves the hot set is never reused, so a stale transaction cannot
	// mark a re-added extent durable.
	durable bool
	lastUse uint64
}

func newActivityLog(d disk.Disk, l Layout, bm *Bitmap, nextSeq uint64) *activityLog {
	return &activityLog{d: d, l: l, bm: bm, hot: make(map[uint32]*alExtent), nextSeq: nextSeq, changed: make(chan struct{})}
}

func (a *activityLog) broadcastLocked() {
	if a.waiters > 0 {
		close(a.changed)
		a.changed = make(chan struct{})
	}
}

// waitLocked waits for the next broadcast; a.mu is released meanwhile.
func (a *activityLog) waitLocked(ctx context.Context) error {
	ch := a.changed
	a.waiters++
	a.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
	a.mu.Lock()
	a.waiters--
	return ctx.Err()
}

func (a *activityLog) releaseLocked(exts []*alExtent) {
	freed := false
	for _, x := range exts {
		x.refs--
		freed = freed || x.refs == 0
	}
	if freed {
		a.broadcastLocked()
	}
}

func (a *activityLog) begin(ctx context.Context, off, length int64) (func(), error) {
	if off < 0 || length < 0 || off > a.l.DataSize-length {
		return nil, fmt.Errorf("md: activity log: %d bytes at %d on %d bytes of data: %w", length, off, a.l.DataSize, ErrRange)
	}
	if length == 0 {
		return func() {}, nil
	}
	first := off / a.l.ALExtentSize
	last := (off + length - 1) / a.l.ALExtentSize
	if n := last - first + 1; n > int64(a.l.MaxHotExtents) {
		return nil, fmt.Errorf("md: activity log: %d bytes at %d span %d extents, %d may be hot: %w", length, off, n, a.l.MaxHotExtents, ErrTooManyExtents)
	}

	a.mu.Lock()
	// Make room for all the cold extents at once, or wait holding
	// nothing: taking some and waiting for more could deadlock two
	// Begins against each other.
	for {
		if a.err != nil {
			a.mu.Unlock()
			return nil, a.err
		}
		if a.closed {
			a.mu.Unlock()
			return nil, ErrClosed
		}
		cold := 0
		for e := first; e <= last; e++ {
			if a.hot[uint32(e)] == nil {
				cold++
			}
		}
		need := cold - (a.l.MaxHotExtents - len(a.hot))
		if need <= 0 || a.evictLocked(need, first, last) {
			break
		}
		if err := a.waitLocked(ctx); err != nil {
			a.mu.Unlock()
			return nil, fmt.Errorf("md: activity log: waiting for a free extent: %w", err)
		}
	}
	exts := make([]*alExtent, 0, last-first+1)
	for e := first; e <= last; e++ {
		x := a.hot[uint32(e)]
		if x == nil {
			x = &alExtent{num: uint32(e)}
			a.hot[x.num] = x
		}
		x.refs++
		a.clock++
		x.lastUse = a.clock
		exts = append(exts, x)
	}
	// Wait until a transaction holding every extent is on disk. Whoever
	// finds no transaction being written writes the next one, for every
	// Begin waiting by then: concurrent cold Begins share transactions.
	for !allDurable(exts) {
		if a.err != nil {
			a.releaseLocked(exts)
			a.mu.Unlock()
			return nil, a.err
		}
		if !a.writing {
			a.commitLocked()
			continue
		}
		if err := a.waitLocked(ctx); err != nil {
			a.releaseLocked(exts)
			a.mu.Unlock()
			return nil, fmt.Errorf("md: activity log: waiting for a transaction: %w", err)
		}
	}
	a.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			a.releaseLocked(exts)
			a.mu.Unlock()
		})
	}, nil
}

func allDurable(exts []*alExtent) bool {
	for _, x := range exts {
		if !x.durable {
			return false
		}
	}
	return true
}

// evictLocked drops the need least recently used idle extents outside
// [first, last] from the hot set, or reports false if there are not that
// many idle ones.
func (a *activityLog) evictLocked(need int, first, last int64) bool {
	var idle []*alExtent
	for _, x := range a.hot {
		if x.refs == 0 && (int64(x.num) < first || int64(x.num) > last) {
			idle = append(idle, x)
		}
	}
	if len(idle) < need {
		return false
	}
	slices.SortFunc(idle, func(x, y *alExtent) int {
		switch {
		case x.lastUse < y.lastUse:
			return -1
		case x.lastUse > y.lastUse:
			return 1
		}
		return 0
	})
	for _, x := range idle[:need] {
		delete(a.hot, x.num)
		a.evicted = append(a.evicted, x)
	}
	return true
}

// commitLocked writes one transaction with the hot set as it is now. It
// releases a.mu during the I/O.
func (a *activityLog) commitLocked() {
	a.writing = true
	snap := make([]*alExtent, 0, len(a.hot))
	exts := make([]uint32, 0, len(a.hot))
	for _, x := range a.hot {
		snap = append(snap, x)
		exts = append(exts, x.num)
	}
	slices.Sort(exts)
	evicted := a.evicted
	a.evicted = nil
	seq := a.nextSeq
	dataSync := a.dataSync
	a.mu.Unlock()

	err := a.write(seq, exts, evicted, dataSync)

	a.mu.Lock()
	a.writing = false
	defer a.broadcastLocked()
	if err != nil {
		if a.err == nil {
			a.err = err
		}
		return
	}
	a.nextSeq++
	a.commits++
	for _, x := range snap {
		if a.hot[x.num] == x {
			x.durable = true
		}
	}
}

// write puts a transaction on disk. Extents it drops must not lose what
// the AL stood for: the data written in them is synced (their writers have
// released them, so those writes completed) and their bitmap pages are
// written, both before the transaction that forgets them.
func (a *activityLog) write(seq uint64, exts []uint32, evicted []*alExtent, dataSync func() error) error {
	if len(evicted) > 0 {
		if dataSync != nil {
			if err := dataSync(); err != nil {
				return fmt.Errorf("md: activity log: syncing data before evicting extents: %w", err)
			}
		}
		for _, x := range evicted {
			if err := a.bm.FlushPages(int64(x.num)*a.l.ALExtentSize, a.l.ALExtentSize); err != nil {
				return fmt.Errorf("md: activity log: evicting extent %d: %w", x.num, err)
			}
		}
	}
	slot := int64(seq % uint64(a.l.ALSlots))
	if _, err := a.d.WriteAt(encodeAL(seq, exts), a.l.ALOffset()+slot*BlockSize); err != nil {
		return fmt.Errorf("md: activity log: writing transaction %d: %w", seq, err)
	}
	if err := a.d.Sync(); err != nil {
		return fmt.Errorf("md: activity log: syncing transaction %d: %w", seq, err)
	}
	return nil
}

// close empties the activity log for a shutdown: it syncs the data, writes
// the whole bitmap and then a transaction with nothing hot. Every Begin
// must have been released.
func (a *activityLog) close() error { return a.empty(true) }

// empty is close; without closing, the log stays usable (Grow, which
// needs nothing hot before the metadata moves, and gives the log up only
// once the new copy is written).
func (a *activityLog) empty(closing bool) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	busy := 0
	for _, x := range a.hot {
		busy += x.refs
	}
	if busy > 0 {
		a.mu.Unlock()
		return fmt.Errorf("md: activity log: %d writes still in flight", busy)
	}
	if closing {
		a.closed = true
		a.broadcastLocked() // Begins waiting for room fail with ErrClosed
	}
	for a.writing {
		_ = a.waitLocked(context.Background())
	}
	if a.err != nil {
		a.mu.Unlock()
		return a.err
	}
	clear(a.hot)
	a.evicted = nil
	seq := a.nextSeq
	dataSync := a.dataSync
	a.mu.Unlock()

	err := func() error {
		if dataSync != nil {
			if err := dataSync(); err != nil {
				return fmt.Errorf("md: activity log: syncing data: %w", err)
			}
		}
		if err := a.bm.FlushAll(); err != nil {
			return err
		}
		return a.write(seq, nil, nil, nil)
	}()
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.err = err
		return err
	}
	a.nextSeq++
	a.commits++
	return nil
}

// nextSequence is the sequence number of the next transaction.
func (a *activityLog) nextSequence() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nextSeq
}

// ALStats describe the activity log's work.
type ALStats struct {
	// Hot is the number of hot extents.
	Hot int `json:"hot"`
	// Transactions counts transactions written since Open.
	Transactions uint64 `json:"transactions"`
}

func (a *activityLog) stats() ALStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return ALStats{Hot: len(a.hot), Transactions: a.commits}
}

// hotExtents lists the hot extents (for tests and Dump of a live Meta).
func (a *activityLog) hotExtents() []uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]uint32, 0, len(a.hot))
	for e := range a.hot {
		out = append(out, e)
	}
	slices.Sort(out)
	return out
}
