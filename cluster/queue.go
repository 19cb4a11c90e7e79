package cluster

import "sync"

// queue hands values from callbacks that must never block (memberlist's
// events, raft's FSM) to a reader on an unbuffered channel, in order and
// without dropping any: a lost Dead or a lost log entry would cost a
// failover, so the backlog is unbounded rather than lossy.
type queue[T any] struct {
	mu     sync.Mutex
	items  []T
	closed bool
	wake   chan struct{}
	out    chan T
	done   chan struct{}
	wg     sync.WaitGroup
}

func newQueue[T any]() *queue[T] {
	q := &queue[T]{wake: make(chan struct{}, 1), out: make(chan T), done: make(chan struct{})}
	q.wg.Add(1)
	go q.pump()
	return q
}

// push appends v; after close it is dropped.
func (q *queue[T]) push(v T) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.items = append(q.items, v)
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// close stops the pump and closes the channel; what is still queued is
// dropped (the reader is going away).
func (q *queue[T]) close() {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	q.mu.Unlock()
	close(q.done)
	q.wg.Wait()
}

func (q *queue[T]) pump() {
	defer q.wg.Done()
	defer close(q.out)
	for {
		q.mu.Lock()
		var v T
		have := len(q.items) > 0
		if have {
			v = q.items[0]
			q.items = q.items[1:]
		}
		q.mu.Unlock()
		if !have {
			select {
			case <-q.wake:
				continue
			case <-q.done:
				return
			}
		}
		select {
		case q.out <- v:
		case <-q.done:
			return
		}
	}
}
