package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/cmd/tandem/config"
)

func fixedClock() func() time.Time {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	return func() time.Time { return t0 }
}

func TestEventRingKeepsTheLastAndNumbersThem(t *testing.T) {
	e := newEvents("alpha", 4, fixedClock())
	for i := range 6 {
		e.publish(Event{Kind: KindAdmin, Text: fmt.Sprint(i)})
	}
	got := e.retained()
	if len(got) != 4 || got[0].Seq != 3 || got[3].Seq != 6 || got[3].Text != "5" || got[0].Node != "alpha" || got[0].Time.IsZero() {
		t.Fatalf("retained: %+v", got)
	}
	backlog, lost, s := e.subscribe(4, 8)
	defer e.unsubscribe(s)
	if lost != 0 || len(backlog) != 2 || backlog[0].Seq != 5 {
		t.Errorf("since 4: lost %d backlog %+v", lost, backlog)
	}
	backlog, lost, s2 := e.subscribe(1, 8)
	defer e.unsubscribe(s2)
	if lost != 1 || len(backlog) != 4 {
		t.Errorf("since 1: lost %d (want 1: seq 2 is gone) backlog %d", lost, len(backlog))
	}
	backlog, lost, s3 := e.subscribe(-1, 8)
	defer e.unsubscribe(s3)
	if lost != 0 || len(backlog) != 0 {
		t.Errorf("new only: lost %d backlog %d", lost, len(backlog))
	}
	e.publish(Event{Kind: KindAdmin, Text: "live"})
	for _, s := range []*subscriber{s, s2, s3} {
		if ev := <-s.ch; ev.Seq != 7 || ev.Text != "live" {
			t.Errorf("live event: %+v", ev)
		}
	}
}

func TestEventSlowSubscriberIsDroppedNotWaitedFor(t *testing.T) {
	e := newEvents("alpha", 16, fixedClock())
	_, _, slow := e.subscribe(-1, 2)
	_, _, fast := e.subscribe(-1, 100)
	var got []uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range fast.ch {
			got = append(got, ev.Seq)
		}
	}()
	for range 50 {
		e.publish(Event{Kind: KindVolume})
	}
	if !e.wasDropped(slow) {
		t.Fatal("a subscriber that reads nothing was not dropped")
	}
	n := 0
	for range slow.ch {
		n++
	}
	if n != 2 {
		t.Errorf("the dropped subscriber got %d events before its channel closed, want its buffer (2)", n)
	}
	e.unsubscribe(slow) // already gone: no double close
	e.unsubscribe(fast)
	<-done
	if len(got) != 50 || got[49] != 50 {
		t.Errorf("the subscriber that keeps up got %d events", len(got))
	}
}

func TestEventPublishConcurrent(t *testing.T) {
	e := newEvents("alpha", 64, time.Now)
	var wg sync.WaitGroup
	var subs []*subscriber
	for range 4 {
		_, _, s := e.subscribe(0, 1000)
		subs = append(subs, s)
	}
	for range 8 {
		wg.Go(func() {
			for range 100 {
				e.publish(Event{Kind: KindMember})
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			_, _, s := e.subscribe(0, 4)
			e.unsubscribe(s)
		}
	})
	wg.Wait()
	if e.lastSeq() != 800 {
		t.Errorf("last seq %d, want 800", e.lastSeq())
	}
	for _, s := range subs {
		e.unsubscribe(s)
		prev := uint64(0)
		for ev := range s.ch {
			if ev.Seq <= prev {
				t.Fatalf("out of order: %d after %d", ev.Seq, prev)
			}
			prev = ev.Seq
		}
	}
}

func readAudit(t *testing.T, path string) []AuditRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []AuditRecord
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r AuditRecord
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

func TestAuditAppendsJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", AuditFile)
	a, err := openAudit(path, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 25 {
				a.add(AuditRecord{Kind: "admin", Op: "promote", Resource: fmt.Sprintf("r%d-%d", i, j), By: "uid 0 via admin socket", Outcome: "ok"})
			}
		})
	}
	wg.Wait()
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	a.add(AuditRecord{Op: "after close"}) // ignored, no panic
	recs := readAudit(t, path)
	if len(recs) != 100 {
		t.Fatalf("%d records, want 100", len(recs))
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %v, want 0600", st.Mode().Perm())
	}
	// Reopening appends.
	a, err = openAudit(path, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	a.add(AuditRecord{Op: "again"})
	a.close()
	if recs := readAudit(t, path); len(recs) != 101 || recs[100].Op != "again" {
		t.Errorf("after reopening: %d records", len(recs))
	}
}

func TestAuditFullQueueDropsAndCounts(t *testing.T) {
	// A writer that has not started draining: fill the queue by hand.
	a := &audit{path: "x", log: discardLog(), ch: make(chan AuditRecord, 2), done: make(chan struct{})}
	for range 5 {
		a.add(AuditRecord{Op: "x"}) // never blocks
	}
	<-a.ch
	<-a.ch
	a.add(AuditRecord{Op: "next"})
	if r := <-a.ch; r.Op != "next" || r.Dropped != 3 {
		t.Errorf("record after drops: %+v, want dropped_before 3", r)
	}
}

func TestEventsAndAuditThroughTheAdminSocket(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	d, _, _ := l.start(t, "alpha")
	c := l.client("alpha")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	got := make(chan Event, 100)
	streamDone := make(chan error, 1)
	go func() {
		streamDone <- c.Events(ctx, 0, func(ev Event) error { got <- ev; return nil })
	}()
	// The daemon's own start event comes first (since=0 replays it).
	if ev := <-got; ev.Kind != KindDaemon || ev.Seq != 1 || ev.Node != "alpha" {
		t.Fatalf("first event: %+v", ev)
	}
	if _, err := c.Promote(ctx, "r0", false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Promote(ctx, "nope", false); !errors.Is(err, ErrUnknownResource) {
		t.Fatalf("promote of an unknown resource: %v", err)
	}
	if err := c.Resync(ctx, "r0", false); err != nil {
		t.Fatal(err)
	}
	var admin []Event
	var volume *Event
	for range 100 {
		ev := <-got
		switch ev.Kind {
		case KindAdmin:
			admin = append(admin, ev)
		case KindVolume:
			volume = &ev
		}
		if len(admin) == 2 && volume != nil {
			break
		}
	}
	if len(admin) != 2 || volume == nil {
		t.Fatalf("admin events %+v, volume %+v", admin, volume)
	}
	uid := fmt.Sprintf("uid %d via admin socket", os.Geteuid())
	if e := admin[0]; e.Resource != "r0" || !strings.Contains(e.Text, "promote done") || !strings.Contains(e.Text, uid) {
		t.Errorf("promote event: %+v", e)
	}
	if e := admin[1]; e.Resource != "r0" || !strings.HasPrefix(e.Text, "resync done") {
		t.Errorf("resync event: %+v", e)
	}
	if !strings.Contains(volume.Text, "role Secondary -> Primary") {
		t.Errorf("volume event: %+v", volume)
	}
	cancel()
	if err := <-streamDone; !errors.Is(err, context.Canceled) {
		t.Errorf("stream end: %v", err)
	}

	// The unknown resource is refused before it reaches a resource: no
	// audit line; promote and resync are there, with who asked.
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs := readAudit(t, d.AuditLog())
	if len(recs) != 2 {
		t.Fatalf("audit records: %+v", recs)
	}
	if r := recs[0]; r.Kind != "admin" || r.Op != "promote" || r.Resource != "r0" || r.By != uid || r.Outcome != "ok" || r.Node != "alpha" {
		t.Errorf("audit of promote: %+v", r)
	}
	if r := recs[1]; r.Op != "resync" || r.Outcome != "ok" {
		t.Errorf("audit of resync: %+v", r)
	}
}

func TestEventStreamEndsWithTheDaemon(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	d, _, _ := l.start(t, "alpha")
	got := make(chan Event, 10)
	done := make(chan error, 1)
	go func() {
		done <- l.client("alpha").Events(t.Context(), 0, func(ev Event) error { got <- ev; return nil })
	}()
	<-got // subscribed
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("stream at shutdown: %v, want a clean end", err)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestManagerHooksBecomeEventsAndAudit(t *testing.T) {
	path := filepath.Join(t.TempDir(), AuditFile)
	a, err := openAudit(path, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	now := fixedClock()
	d := &Daemon{opts: Options{Now: now}, node: &config.Node{Name: "alpha"}, events: newEvents("alpha", 64, now), audit: a}
	h := d.managerHooks()
	_, _, sub := d.events.subscribe(-1, 64)
	defer d.events.unsubscribe(sub)

	h.Status(cluster.Status{Quorum: true, Members: map[string]cluster.MemberState{"alpha": "Alive", "beta": "Alive"}})
	h.Status(cluster.Status{Quorum: false, Members: map[string]cluster.MemberState{"alpha": "Alive", "beta": "Dead"}})
	h.Action(cluster.FenceNode{Node: "beta", Epochs: map[string]uint64{"r0": 7}})
	h.Event(cluster.FenceResult{At: now(), Node: "beta", Epochs: map[string]uint64{"r0": 7}, Method: "ipmi"})
	h.Action(cluster.ClaimVIP{Resource: "r0"})
	h.Action(cluster.Alert{Resource: "r0", Text: "disk failed"})
	h.FailoverStep(manager.Failover{Resource: "r0", From: "beta"}, manager.Step{Name: "serve", Elapsed: 2.5})
	h.Event(cluster.Tick{At: now()}) // nothing

	want := []struct{ kind, text string }{
		{KindMember, "node alpha is Alive"}, {KindMember, "node beta is Alive"},
		{KindQuorum, "quorum lost"}, {KindMember, "node beta is Dead"},
		{KindFence, "fencing node beta (resources [r0])"}, {KindFence, "node beta confirmed off (ipmi)"},
		{KindVIP, "claiming"}, {KindAlert, "disk failed"}, {KindFailover, "failover step serve"},
	}
	for _, w := range want {
		select {
		case ev := <-sub.ch:
			if ev.Kind != w.kind || !strings.Contains(ev.Text, w.text) {
				t.Errorf("event %+v, want %s %q", ev, w.kind, w.text)
			}
		default:
			t.Fatalf("no event, want %s %q", w.kind, w.text)
		}
	}
	select {
	case ev := <-sub.ch:
		t.Errorf("extra event %+v", ev)
	default:
	}
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	recs := readAudit(t, path)
	if len(recs) != 3 || recs[0].Op != "fence-attempt" || recs[1].Op != "fence-result" || recs[1].Outcome != "ok" ||
		recs[2].Op != "failover" || recs[2].By != "cluster layer" || recs[2].Target != "beta" {
		t.Errorf("audit: %+v", recs)
	}
}

// A client that stops reading is dropped with a clear last event; the
// publisher never waits for it.
func TestEventStreamDropsASlowClient(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	d, _, _ := l.start(t, "alpha")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	started := make(chan struct{})
	release := make(chan struct{})
	var last Event
	n := 0
	done := make(chan error, 1)
	go func() {
		done <- l.client("alpha").Events(ctx, 0, func(ev Event) error {
			if n == 0 {
				close(started)
				<-release // stop reading: the socket buffers fill, then the subscriber's
			}
			n++
			last = ev
			return nil
		})
	}()
	<-started
	// Far more than the socket buffers and the subscriber buffer hold;
	// publish returns at once every time.
	for range 20000 {
		d.events.publish(Event{Kind: KindVolume, Resource: "r0", Text: strings.Repeat("x", 100)})
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("stream: %v", err)
	}
	if last.Kind != KindDropped || !strings.Contains(last.Text, "reconnect with since=") || n >= 20000 {
		t.Errorf("after %d events the last is %+v, want dropped", n, last)
	}
}

// A power change run by hand reaches the audit log and the event stream
// through POST /v1/fence-log; a malformed one is refused and leaves no
// line.
func TestFenceLogIsAudited(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	d, _, _ := l.start(t, "alpha")
	c := l.client("alpha")
	ctx := t.Context()
	res := json.RawMessage(`{"node":"bravo","action":"off","ok":true,"state":"off","method":"ipmi","level":1,"attempts":[],"seconds":0.2}`)
	if err := c.FenceLog(ctx, FenceLogRequest{Node: "bravo", Action: "off", Result: res}); err != nil {
		t.Fatal(err)
	}
	if err := c.FenceLog(ctx, FenceLogRequest{Node: "bravo", Action: "reboot", Error: "every level failed"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []FenceLogRequest{{Action: "off"}, {Node: "bravo", Action: "status"}, {Node: "bravo", Action: "off", Result: json.RawMessage(`{`)}} {
		if err := c.FenceLog(ctx, bad); err == nil {
			t.Errorf("fence-log %+v accepted", bad)
		}
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs := readAudit(t, d.AuditLog())
	if len(recs) != 2 {
		t.Fatalf("audit records: %+v", recs)
	}
	uid := fmt.Sprintf("uid %d via admin socket", os.Geteuid())
	if r := recs[0]; r.Op != "fence-off" || r.Target != "bravo" || r.Outcome != "ok" || r.By != uid || r.Result == nil {
		t.Errorf("audit of fence off: %+v", r)
	}
	if r := recs[1]; r.Op != "fence-reboot" || r.Outcome != "failed" || r.Error != "every level failed" {
		t.Errorf("audit of a failed reboot: %+v", r)
	}
}
