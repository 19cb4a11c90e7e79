package replicate

import "sync"

// span is one operation in an ordering set: its sequence number and the
// byte range it reads or writes.
type span struct {
	seq      uint64
	off, end int64
}

// order makes overlapping operations take effect in sequence order while
// non-overlapping ones run concurrently. The primary uses one for its own
// writes (so its disk sees overlapping writes in the order their frames
// went to the peer), the secondary one per link for the writes it applies
// (so it applies them in the primary's order). An operation is added in
// sequence order, waits until no earlier overlapping one is still running,
// runs, and is removed.
//
// The set holds only operations in flight (at most the queue depths of the
// clients), so a linear scan is cheaper than a tree.
type order struct {
	mu      sync.Mutex
	cond    sync.Cond
	ops     []*span
	waiters int
}

func newOrder() *order {
	o := &order{}
	o.cond.L = &o.mu
	return o
}

// add registers s; callers add in increasing sequence order.
func (o *order) add(s *span) {
	o.mu.Lock()
	o.ops = append(o.ops, s)
	o.mu.Unlock()
}

// conflictLocked reports whether an operation earlier than seq that
// overlaps [off, end) is still in the set.
func (o *order) conflictLocked(seq uint64, off, end int64) bool {
	for _, p := range o.ops {
		if p.seq < seq && p.off < end && off < p.end {
			return true
		}
	}
	return false
}

// conflict reports whether an operation earlier than seq overlapping
// [off, end) is in the set (waitBefore would block).
func (o *order) conflict(seq uint64, off, end int64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.conflictLocked(seq, off, end)
}

// waitBefore returns once no operation earlier than seq overlapping
// [off, end) is in the set. It needs no registration of its own, so a
// flush (the whole range) or a resync read can use it too.
func (o *order) waitBefore(seq uint64, off, end int64) {
	o.mu.Lock()
	for o.conflictLocked(seq, off, end) {
		o.waiters++
		o.cond.Wait()
		o.waiters--
	}
	o.mu.Unlock()
}

// remove drops s and wakes the operations that may have waited for it.
func (o *order) remove(s *span) {
	o.mu.Lock()
	o.ops = dropUnordered(o.ops, s)
	if o.waiters > 0 {
		o.cond.Broadcast()
	}
	o.mu.Unlock()
}

// dropUnordered removes x from s, moving the last element into its place
// (the sets here have no order), and clears the freed slot so that the
// backing array keeps nothing alive.
func dropUnordered[T comparable](s []T, x T) []T {
	for i, y := range s {
		if y == x {
			last := len(s) - 1
			var zero T
			s[i], s[last] = s[last], zero
			return s[:last]
		}
	}
	return s
}
