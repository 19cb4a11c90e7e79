package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// The event stream of the admin API:
//
//	GET /v1/events                 new events, as they happen
//	GET /v1/events?since=SEQ       the retained events after SEQ first
//	GET /v1/events?since=SEQ&follow=false   those only, then the end
//
// The reply is newline-delimited JSON, one Event per line, flushed after
// each; it ends when the client goes away or the daemon stops. Events the
// ring no longer holds (since is too old) are announced by one event of
// kind "gap"; a client that does not keep up gets one event of kind
// "dropped" and the stream ends (the daemon never waits for a reader).

// Event is one change on the node, as GET /v1/events streams it.
type Event struct {
	// Seq increases by one per event on this daemon (from 1 at its start).
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Node is the node that reports it (the daemon's own).
	Node string `json:"node"`
	// Kind: member, quorum, commit, failover, fence, volume, resync, vip,
	// action, alert, admin, daemon; gap and dropped are the stream's own.
	Kind     string `json:"kind"`
	Resource string `json:"resource,omitempty"`
	// Target is the node the event is about, when not the reporter (a
	// member, the fenced node, a standby or switchover target).
	Target string `json:"target,omitempty"`
	Text   string `json:"text"`
	// Data carries the event's details (the record's resource, a
	// failover step, an admin request and its outcome).
	Data any `json:"data,omitempty"`
}

// Event kinds.
const (
	KindMember   = "member"
	KindQuorum   = "quorum"
	KindCommit   = "commit"
	KindFailover = "failover"
	KindFence    = "fence"
	KindVolume   = "volume"
	KindResync   = "resync"
	KindVIP      = "vip"
	KindAction   = "action"
	KindAlert    = "alert"
	KindAdmin    = "admin"
	KindDaemon   = "daemon"
	KindGap      = "gap"
	KindDropped  = "dropped"
)

// Defaults of the event ring.
const (
	// eventRing is how many events the daemon keeps for since=.
	eventRing = 1024
	// subscriberBuffer is how far a streaming client may fall behind
	// before it is dropped.
	subscriberBuffer = 256
	// streamWriteTimeout bounds one write to a client.
	streamWriteTimeout = 10 * time.Second
)

// events is the ring of recent events and the clients that follow it.
// publish never blocks: a subscriber whose buffer is full is dropped.
type events struct {
	node string
	now  func() time.Time

	mu   sync.Mutex
	seq  uint64
	ring []Event // the last len(ring) events, oldest at start (a circular buffer)
	head int     // index of the oldest once full
	subs map[*subscriber]struct{}
	// kinds counts the events published, by kind (for the metrics).
	kinds map[string]uint64
}

type subscriber struct {
	ch      chan Event
	dropped bool // set under events.mu when ch was closed for slowness
}

func newEvents(node string, size int, now func() time.Time) *events {
	return &events{node: node, now: now, ring: make([]Event, 0, size), subs: map[*subscriber]struct{}{}, kinds: map[string]uint64{}}
}

// publish stamps ev with the next sequence number, the time and the node,
// keeps it in the ring and offers it to every subscriber.
func (e *events) publish(ev Event) Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seq++
	ev.Seq = e.seq
	e.kinds[ev.Kind]++
	if ev.Time.IsZero() {
		ev.Time = e.now()
	}
	if ev.Node == "" {
		ev.Node = e.node
	}
	if len(e.ring) < cap(e.ring) {
		e.ring = append(e.ring, ev)
	} else {
		e.ring[e.head] = ev
		e.head = (e.head + 1) % len(e.ring)
	}
	for s := range e.subs {
		select {
		case s.ch <- ev:
		default:
			s.dropped = true
			close(s.ch)
			delete(e.subs, s)
		}
	}
	return ev
}

// retained returns the events in the ring, oldest first.
func (e *events) retained() []Event {
	out := make([]Event, 0, len(e.ring))
	out = append(out, e.ring[e.head:]...)
	return append(out, e.ring[:e.head]...)
}

// subscribe returns the retained events after since (all of them for
// since 0; none for since < 0), how many events after since are no
// longer held, and a subscriber that receives every later event. The
// backlog and the subscription are taken under one lock, so nothing falls
// between them.
func (e *events) subscribe(since int64, buffer int) (backlog []Event, lost uint64, s *subscriber) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if since >= 0 {
		backlog, lost = e.afterLocked(uint64(since))
	}
	s = &subscriber{ch: make(chan Event, buffer)}
	e.subs[s] = struct{}{}
	return backlog, lost, s
}

// after returns the retained events after since, and how many events after
// since are no longer held.
func (e *events) after(since uint64) (backlog []Event, lost uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.afterLocked(since)
}

func (e *events) afterLocked(since uint64) (backlog []Event, lost uint64) {
	all := e.retained()
	oldest := e.seq + 1
	if len(all) > 0 {
		oldest = all[0].Seq
	}
	if since+1 < oldest {
		lost = oldest - since - 1
	}
	for _, ev := range all {
		if ev.Seq > since {
			backlog = append(backlog, ev)
		}
	}
	return backlog, lost
}

// unsubscribe ends a subscription (a dropped one is gone already).
func (e *events) unsubscribe(s *subscriber) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.subs[s]; ok {
		delete(e.subs, s)
		close(s.ch)
	}
}

// wasDropped reports whether the subscription ended for slowness.
func (e *events) wasDropped(s *subscriber) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return s.dropped
}

// kindCounts is how many events of each kind were published.
func (e *events) kindCounts() map[string]uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.kinds)
}

// lastSeq is the sequence number of the latest event.
func (e *events) lastSeq() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.seq
}

func (d *Daemon) handleEvents(w http.ResponseWriter, req *http.Request) {
	since := int64(-1)
	if v := req.URL.Query().Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			writeError(w, fmt.Errorf("%w: since=%q: want the sequence number of the last event seen (0: all retained)", errBadRequest, v))
			return
		}
		since = int64(n)
	}
	follow := true
	switch v := req.URL.Query().Get("follow"); v {
	case "", "true", "1":
	case "false", "0":
		follow = false
	default:
		writeError(w, fmt.Errorf("%w: follow=%q: want true or false", errBadRequest, v))
		return
	}
	backlog, lost, sub := d.events.subscribe(since, subscriberBuffer)
	defer d.events.unsubscribe(sub)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	seen := uint64(max(since, 0)) // the last seq this client has
	send := func(ev Event) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if err := enc.Encode(ev); err != nil {
			return false
		}
		seen = max(seen, ev.Seq)
		return rc.Flush() == nil
	}
	if lost > 0 {
		if !send(Event{Seq: uint64(since) + lost, Time: d.now(), Node: d.node.Name, Kind: KindGap,
			Text: fmt.Sprintf("%d events after seq %d are no longer held (the daemon keeps the last %d)", lost, since, eventRing)}) {
			return
		}
	}
	for _, ev := range backlog {
		if !send(ev) {
			return
		}
	}
	if rc.Flush() != nil || !follow { // the client sees the stream open before any event
		return
	}
	for {
		select {
		case <-req.Context().Done():
			return
		case <-d.opCtx.Done():
			return
		case ev, ok := <-sub.ch:
			if !ok {
				if d.events.wasDropped(sub) {
					resume := seen
					send(Event{Seq: d.events.lastSeq(), Time: d.now(), Node: d.node.Name, Kind: KindDropped,
						Text: fmt.Sprintf("this client fell %d events behind and was dropped (the daemon never waits for a reader); reconnect with since=%d to resume", subscriberBuffer, resume)})
				}
				return
			}
			if !send(ev) {
				return
			}
		}
	}
}

// Events follows the daemon's event stream: fn gets every event after
// since (since < 0: only new ones) until ctx ends, the daemon stops (nil
// error), or fn returns an error (returned).
func (c *Client) Events(ctx context.Context, since int64, fn func(Event) error) error {
	return c.events(ctx, since, true, fn)
}

// EventsNow is Events without following: the retained events after since,
// then it returns (drbdsetup events2 --now).
func (c *Client) EventsNow(ctx context.Context, since int64, fn func(Event) error) error {
	return c.events(ctx, since, false, fn)
}

func (c *Client) events(ctx context.Context, since int64, follow bool, fn func(Event) error) error {
	q := url.Values{}
	if since >= 0 {
		q.Set("since", strconv.FormatInt(since, 10))
	}
	if !follow {
		q.Set("follow", "false")
	}
	path := "/v1/events"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://tandem"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.dialError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		return apiError(resp, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("decoding an event from the daemon: %w", err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
	err = sc.Err()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("reading the event stream: %w", err)
	}
	return nil
}
