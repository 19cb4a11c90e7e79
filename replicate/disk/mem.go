package disk

import (
	"fmt"
	"math/rand/v2"
	"sync"
)

// SectorSize is the unit a Mem drops or keeps at a crash: a drive writes
// whole sectors atomically, but nothing larger.
const SectorSize = 512

// Mem is an in-memory Disk that remembers which writes were not synced yet,
// sector by sector, so that Crash can produce what a power cut would leave.
// It is for tests; it is safe for concurrent use.
type Mem struct {
	mu      sync.Mutex
	data    []byte // what reads see
	durable []byte // what a power cut cannot take away
	// pending are the sector writes since the last Sync, oldest first.
	pending      []pendingWrite
	pendingBytes int64
	writeback    int64 // see SetWritebackLimit; 0: unlimited
	fault        func(op string, off, n int64) error
	closed       bool
}

// pendingWrite is a run of whole sectors as they were right after a write:
// a drive writes back sectors, not the bytes of a request, so a write of
// part of a sector carries the rest of that sector along.
type pendingWrite struct {
	off  int64
	data []byte
}

var _ Disk = (*Mem)(nil)

// NewMem returns a zeroed Mem of size bytes.
func NewMem(size int64) *Mem {
	if size < 0 {
		panic(fmt.Sprintf("disk: NewMem: negative size %d", size))
	}
	return &Mem{data: make([]byte, size), durable: make([]byte, size)}
}

// SetFault installs fn, called before every ReadAt ("read"), WriteAt
// ("write") and Sync ("sync", with off and n 0); a non-nil result fails the
// call, which then touches nothing. fn is called without any lock of the
// Mem held, so it may call Crash or Bytes (to capture the disk at exactly
// that point) or block. nil removes the hook.
func (m *Mem) SetFault(fn func(op string, off, n int64) error) {
	m.mu.Lock()
	m.fault = fn
	m.mu.Unlock()
}

// SetWritebackLimit makes the Mem behave like a drive with a write cache of
// limit bytes: when more than that is unsynced, the oldest writes become
// durable on their own (as a drive writes back its cache whenever it
// likes). It bounds the memory that long runs without Sync take. 0 (the
// default) means no limit: everything unsynced may be lost.
func (m *Mem) SetWritebackLimit(limit int64) {
	m.mu.Lock()
	m.writeback = limit
	m.writebackLocked()
	m.mu.Unlock()
}

func (m *Mem) hook(op string, off, n int64) error {
	m.mu.Lock()
	fn := m.fault
	m.mu.Unlock()
	if fn == nil {
		return nil
	}
	if err := fn(op, off, n); err != nil {
		return fmt.Errorf("disk: mem %s of %d bytes at %d: %w", op, n, off, err)
	}
	return nil
}

// Size is the size in bytes.
func (m *Mem) Size() int64 {
	m.mu.Lock() // Grow changes it
	defer m.mu.Unlock()
	return int64(len(m.data))
}

// ReadAt reads what the last writes left, synced or not.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	if err := m.hook("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	if err := checkRange("mem read", off, len(p), int64(len(m.data))); err != nil {
		return 0, err
	}
	return copy(p, m.data[off:]), nil
}

// WriteAt writes p at off; it is volatile until the next Sync.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	if err := m.hook("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	if err := checkRange("mem write", off, len(p), int64(len(m.data))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	copy(m.data[off:], p)
	start := off / SectorSize * SectorSize
	end := min((off+int64(len(p))+SectorSize-1)/SectorSize*SectorSize, int64(len(m.data)))
	m.pending = append(m.pending, pendingWrite{off: start, data: append([]byte(nil), m.data[start:end]...)})
	m.pendingBytes += end - start
	m.writebackLocked()
	return len(p), nil
}

func (m *Mem) writebackLocked() {
	if m.writeback <= 0 {
		return
	}
	i := 0
	for ; i < len(m.pending) && m.pendingBytes > m.writeback; i++ {
		w := m.pending[i]
		copy(m.durable[w.off:], w.data)
		m.pendingBytes -= int64(len(w.data))
	}
	m.pending = append(m.pending[:0], m.pending[i:]...)
}

// Sync makes every write so far durable.
func (m *Mem) Sync() error {
	if err := m.hook("sync", 0, 0); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	// Applying the pending sectors in order makes durable equal data
	// without copying the whole disk at every sync.
	for _, w := range m.pending {
		copy(m.durable[w.off:], w.data)
	}
	m.pending, m.pendingBytes = nil, 0
	return nil
}

// Close makes further reads, writes and syncs fail with ErrClosed. Crash
// and Bytes still work: a power cut can follow a close.
// Grow makes the Mem size bytes long, the new bytes zero and durable (a
// volume or file made larger: lvextend, truncate); never smaller.
func (m *Mem) Grow(size int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := size - int64(len(m.data)); n > 0 {
		m.data = append(m.data, make([]byte, n)...)
		m.durable = append(m.durable, make([]byte, n)...)
	}
}

func (m *Mem) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}

// Bytes returns a copy of what reads see now.
func (m *Mem) Bytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...)
}

// Unsynced returns the number of sector writes a crash could lose now.
func (m *Mem) Unsynced() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, w := range m.pending {
		n += (len(w.data) + SectorSize - 1) / SectorSize
	}
	return n
}

// Crash returns a new Mem holding what a power cut now would leave on the
// disk: everything synced, plus, for each unsynced sector write on its own,
// a coin flip (from r) of whether it reached the medium. So a multi-sector
// write can be torn and a later write can land while an earlier one is
// lost; of two unsynced writes to one sector, the later wins if it landed.
// The new Mem has nothing unsynced and no fault hook; m is unchanged and
// goes on working.
func (m *Mem) Crash(r *rand.Rand) *Mem {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.crashLocked(r)
}

func (m *Mem) crashLocked(r *rand.Rand) *Mem {
	img := append([]byte(nil), m.durable...)
	for _, w := range m.pending {
		for s := 0; s < len(w.data); s += SectorSize {
			if r.IntN(2) == 0 {
				e := min(s+SectorSize, len(w.data))
				copy(img[w.off+int64(s):], w.data[s:e])
			}
		}
	}
	return &Mem{data: img, durable: append([]byte(nil), img...), writeback: m.writeback}
}

// CrashTogether crashes several Mems at the same instant (a power cut of a
// machine with more than one disk, e.g. data and external metadata): no
// write to any of them can happen between the snapshots. Calls running
// concurrently must list shared Mems in the same order.
func CrashTogether(r *rand.Rand, ms ...*Mem) []*Mem { return crashAll(r, false, ms) }

// PowerCut is CrashTogether for a machine that stops at that instant:
// besides returning the images, it closes every one of ms in the same
// critical section, so whatever the machine still does afterwards fails
// with ErrClosed. Without it the crashed node goes on running between
// the snapshot and its stop: a Sync that completes then is in no image,
// yet the node may report it (a secondary's Flushed), and the primary
// forgets writes the crashed disk never kept.
func PowerCut(r *rand.Rand, ms ...*Mem) []*Mem { return crashAll(r, true, ms) }

func crashAll(r *rand.Rand, stop bool, ms []*Mem) []*Mem {
	for _, m := range ms {
		m.mu.Lock()
	}
	out := make([]*Mem, len(ms))
	for i, m := range ms {
		out[i] = m.crashLocked(r)
		m.closed = m.closed || stop
	}
	for _, m := range ms {
		m.mu.Unlock()
	}
	return out
}
