package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers are pooled by power-of-two size class: at queue depth 32
// a fresh 4 KiB-1 MiB allocation per request is the largest cost of the
// data path after the syscalls themselves.
const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 25 // 32 MiB
)

type bufPool struct {
	classes [maxClassShift - minClassShift + 1]sync.Pool
}

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// get returns a buffer of length n; buffers above the largest class are
// allocated and never pooled.
func (p *bufPool) get(n int) []byte {
	c := classOf(n)
	if c >= len(p.classes) {
		return make([]byte, n)
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(c+minClassShift))
}

func (p *bufPool) put(b []byte) {
	c := classOf(cap(b))
	if c >= len(p.classes) || cap(b) != 1<<(c+minClassShift) {
		return
	}
	b = b[:cap(b)]
	p.classes[c].Put(&b)
}
