package replicate

import (
	"context"
	"sync"
)

// A write's data is on the primary's disk before the peer confirmed it:
// the local write and the frame to the peer run concurrently. A read that
// returned that data and then a failover to a peer that never got the
// write would take back what a client already saw: the device would not
// be linearizable. So a read overlapping a write that is not yet settled
// (acknowledged as its protocol asks, or failed) waits for it. Nothing
// waits when reads and writes do not overlap, which is every workload of
// a file system; the set is as small as the writes in flight.

// unsettled is the set of the primary's writes not yet settled.
type unsettled struct {
	mu  sync.Mutex
	ops []*pendingWrite
}

type pendingWrite struct {
	off, end int64
	// done is made by the first reader that waits and closed when the
	// write settles: a write nobody waits for allocates nothing.
	done chan struct{}
}

var pendingPool = sync.Pool{New: func() any { return new(pendingWrite) }}

// add registers [off, end) before its data reaches the local disk.
func (u *unsettled) add(off, end int64) *pendingWrite {
	p := pendingPool.Get().(*pendingWrite)
	p.off, p.end, p.done = off, end, nil
	u.mu.Lock()
	u.ops = append(u.ops, p)
	u.mu.Unlock()
	return p
}

// settle removes p and wakes the reads waiting for it.
func (u *unsettled) settle(p *pendingWrite) {
	u.mu.Lock()
	u.ops = dropUnordered(u.ops, p)
	done := p.done
	u.mu.Unlock()
	if done != nil {
		close(done)
	}
	pendingPool.Put(p) // readers hold the channel, not p
}

// overlaps reports whether a write overlapping [off, end) is unsettled.
func (u *unsettled) overlaps(off, end int64) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, p := range u.ops {
		if p.off < end && off < p.end {
			return true
		}
	}
	return false
}

// wait returns once no write that overlapped [off, end) when it was
// called is unsettled, or with ctx's error.
func (u *unsettled) wait(ctx context.Context, off, end int64) error {
	var chans []chan struct{}
	u.mu.Lock()
	for _, p := range u.ops {
		if p.off < end && off < p.end {
			if p.done == nil {
				p.done = make(chan struct{})
			}
			chans = append(chans, p.done)
		}
	}
	u.mu.Unlock()
	for _, c := range chans {
		select {
		case <-c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
