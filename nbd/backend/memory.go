package backend

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/tandem-ha/tandem/nbd"
)

const (
	memChunk  = 64 << 10
	memShards = 64
	// memScanChunks bounds the chunks one Extents call looks at, so that a
	// question about a whole sparse terabyte answers quickly (and partly).
	memScanChunks = 1 << 16
)

// Memory is a sparse in-memory disk for tests and benchmarks. Storage is
// allocated in 64 KiB chunks on first write; an absent chunk is a hole.
// Chunks hash onto sharded locks, so connections working on different
// regions rarely contend.
type Memory struct {
	size     int64
	readOnly atomic.Bool
	shards   [memShards]memShard
}

type memShard struct {
	mu     sync.RWMutex
	chunks map[int64][]byte // chunk index -> memChunk bytes
}

var (
	_ nbd.Device   = (*Memory)(nil)
	_ nbd.Extenter = (*Memory)(nil)
	_ nbd.Cacher   = (*Memory)(nil)
)

// NewMemory returns an all-hole disk of size bytes.
func NewMemory(size int64) *Memory {
	if size < 0 {
		panic(fmt.Sprintf("backend: NewMemory: negative size %d", size))
	}
	m := &Memory{size: size}
	for i := range m.shards {
		m.shards[i].chunks = make(map[int64][]byte)
	}
	return m
}

// SetReadOnly makes writes, trims and zeroes fail with nbd.ErrReadOnly.
// Features reports it, so set it before serving.
func (m *Memory) SetReadOnly(ro bool) { m.readOnly.Store(ro) }

// Size is the device size in bytes.
func (m *Memory) Size() int64 { return m.size }

// Features advertises everything; Flush and FUA are accepted (and free) so
// that clients exercise those paths against it.
func (m *Memory) Features() nbd.Features {
	return nbd.Features{
		ReadOnly:  m.readOnly.Load(),
		Flush:     true,
		FUA:       true,
		Trim:      true,
		Zero:      true,
		FastZero:  true,
		Cache:     true,
		Extents:   true,
		MultiConn: true,
	}
}

func (m *Memory) checkRange(op string, off, length int64) error {
	if off < 0 || length < 0 || length > m.size-off {
		return fmt.Errorf("backend: memory %s: range %d+%d outside %d bytes: %w", op, off, length, m.size, syscall.EINVAL)
	}
	return nil
}

func (m *Memory) checkWrite(op string, off, length int64) error {
	if m.readOnly.Load() {
		return fmt.Errorf("backend: memory %s: %w", op, nbd.ErrReadOnly)
	}
	return m.checkRange(op, off, length)
}

// forChunks calls fn for each chunk the range touches, with the chunk's
// index, the offset inside the chunk, the offset relative to off and the
// length of the piece.
func forChunks(off, length int64, fn func(idx, in, pos, n int64)) {
	for pos := int64(0); pos < length; {
		abs := off + pos
		idx, in := abs/memChunk, abs%memChunk
		n := min(memChunk-in, length-pos)
		fn(idx, in, pos, n)
		pos += n
	}
}

func (m *Memory) shard(idx int64) *memShard { return &m.shards[idx%memShards] }

// ReadAt copies out the range; holes read as zeroes.
func (m *Memory) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := m.checkRange("read", off, int64(len(p))); err != nil {
		return err
	}
	forChunks(off, int64(len(p)), func(idx, in, pos, n int64) {
		s := m.shard(idx)
		s.mu.RLock()
		if c := s.chunks[idx]; c != nil {
			copy(p[pos:pos+n], c[in:])
		} else {
			clear(p[pos : pos+n])
		}
		s.mu.RUnlock()
	})
	return nil
}

// WriteAt copies p in, allocating chunks as needed.
func (m *Memory) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	if err := m.checkWrite("write", off, int64(len(p))); err != nil {
		return err
	}
	forChunks(off, int64(len(p)), func(idx, in, pos, n int64) {
		s := m.shard(idx)
		s.mu.Lock()
		c := s.chunks[idx]
		if c == nil {
			c = make([]byte, memChunk)
			s.chunks[idx] = c
		}
		copy(c[in:], p[pos:pos+n])
		s.mu.Unlock()
	})
	return nil
}

// Flush has nothing to do: memory has no volatile cache beneath it.
func (m *Memory) Flush(context.Context) error { return nil }

// Trim frees whole chunks and zeroes partial ones, so trimmed data reads as
// zeroes (the protocol allows anything) and shows as holes.
func (m *Memory) Trim(_ context.Context, off, length int64, _ bool) error {
	if err := m.checkWrite("trim", off, length); err != nil {
		return err
	}
	m.zero(off, length, false)
	return nil
}

// Zero is always fast here; with NoHole the range stays allocated.
func (m *Memory) Zero(_ context.Context, off, length int64, flags nbd.ZeroFlags) error {
	if err := m.checkWrite("zero", off, length); err != nil {
		return err
	}
	m.zero(off, length, flags&nbd.ZeroNoHole != 0)
	return nil
}

func (m *Memory) zero(off, length int64, keep bool) {
	forChunks(off, length, func(idx, in, _, n int64) {
		s := m.shard(idx)
		s.mu.Lock()
		c := s.chunks[idx]
		switch {
		case !keep && n == memChunk:
			delete(s.chunks, idx)
		case c != nil:
			clear(c[in : in+n])
		case keep:
			s.chunks[idx] = make([]byte, memChunk)
		}
		s.mu.Unlock()
	})
}

// Extents reports absent chunks as holes (Hole+Zero) and present ones as
// data, merging runs of a kind. It describes at most maxExtents runs and
// memScanChunks chunks.
func (m *Memory) Extents(_ context.Context, off, length int64) ([]nbd.Extent, error) {
	if err := m.checkRange("extents", off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return []nbd.Extent{{Length: 0}}, nil
	}
	var out []nbd.Extent
	end := off + length
	for scanned := 0; off < end && scanned < memScanChunks; scanned++ {
		idx := off / memChunk
		n := min(memChunk-off%memChunk, end-off)
		s := m.shard(idx)
		s.mu.RLock()
		hole := s.chunks[idx] == nil
		s.mu.RUnlock()
		if k := len(out) - 1; k >= 0 && out[k].Hole == hole {
			out[k].Length += n
		} else if len(out) == maxExtents {
			break
		} else {
			out = append(out, nbd.Extent{Length: n, Hole: hole, Zero: hole})
		}
		off += n
	}
	return out, nil
}

// Cache has nothing to prefetch.
func (m *Memory) Cache(_ context.Context, off, length int64) error {
	return m.checkRange("cache", off, length)
}

// Bytes returns a copy of the whole disk (for tests: mind the size).
func (m *Memory) Bytes() []byte {
	out := make([]byte, m.size)
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.RLock()
		for idx, c := range s.chunks {
			copy(out[idx*memChunk:], c)
		}
		s.mu.RUnlock()
	}
	return out
}
