package manager

import (
	"sync"

	"github.com/tandem-ha/tandem/cluster"
)

// inbox carries events into the loop from callers that must never block
// (raft's FSM delivers commits through it) and from the manager's own
// goroutines. It is unbounded: a dropped commit or fence result would cost
// a failover, a long backlog only time.
type inbox struct {
	mu    sync.Mutex
	items []cluster.Event
	wake  chan struct{}
}

func newInbox() *inbox { return &inbox{wake: make(chan struct{}, 1)} }

func (q *inbox) push(ev cluster.Event) {
	q.mu.Lock()
	q.items = append(q.items, ev)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take returns everything queued, oldest first.
func (q *inbox) take() []cluster.Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.items
	q.items = nil
	return out
}
