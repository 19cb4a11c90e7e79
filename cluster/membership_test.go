package cluster

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

type recorder struct {
	mu  sync.Mutex
	evs []MemberChange
}

func (r *recorder) state(node string) MemberState {
	r.mu.Lock()
	defer r.mu.Unlock()
	var st MemberState
	for _, e := range r.evs {
		if e.Node == node {
			st = e.State
		}
	}
	return st
}

// deadAt: the first Dead of node reported after since.
func (r *recorder) deadAt(node string, since time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.evs {
		if e.Node == node && e.State == MemberDead && !e.At.Before(since) {
			return e.At, true
		}
	}
	return time.Time{}, false
}

func startMember(t *testing.T, name string, voters []string, key []byte) (*Membership, *recorder) {
	t.Helper()
	m, err := NewMembership(MembershipConfig{
		Node: name, Voters: voters, BindAddr: "127.0.0.1", Keys: [][]byte{key},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("NewMembership(%s): %v", name, err)
	}
	rec := &recorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range m.Events() {
			rec.mu.Lock()
			rec.evs = append(rec.evs, ev)
			rec.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = m.Close()
		<-done
	})
	return m, rec
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Three memberlists on loopback, tuned as the cluster runs them: all see
// each other Alive, metadata travels, a killed one is reported Dead.
func TestMembershipDetectsDeath(t *testing.T) {
	voters := []string{"a", "b", "w"}
	key := bytes.Repeat([]byte{7}, 32)
	ma, ra := startMember(t, "a", voters, key)
	mb, rb := startMember(t, "b", voters, key)
	mw, _ := startMember(t, "w", voters, key)
	for _, m := range []*Membership{mb, mw} {
		if _, err := m.Join([]string{ma.Addr()}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "everyone Alive", 10*time.Second, func() bool {
		return ra.state("b") == MemberAlive && ra.state("w") == MemberAlive && rb.state("a") == MemberAlive && rb.state("w") == MemberAlive
	})

	meta := []byte(`{"r0":"Primary/UpToDate","cfg":"3f2a"}`)
	if err := ma.SetMeta(meta); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a's metadata at b", 10*time.Second, func() bool { return bytes.Equal(mb.Meta("a"), meta) })
	if err := ma.SetMeta(make([]byte, MaxMetaSize+1)); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("oversized metadata: %v", err)
	}
	if !bytes.Equal(mb.Meta("a"), meta) {
		t.Fatalf("refused metadata changed what is gossiped")
	}

	waitFor(t, "w Alive at a and b", 10*time.Second, func() bool {
		return ra.state("w") == MemberAlive && rb.state("w") == MemberAlive
	})
	killed := time.Now()
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "w Dead at a and b", 15*time.Second, func() bool {
		_, okA := ra.deadAt("w", killed)
		_, okB := rb.deadAt("w", killed)
		return okA && okB
	})
	da, _ := ra.deadAt("w", killed)
	db, _ := rb.deadAt("w", killed)
	t.Logf("w declared dead after %v (a) and %v (b)", da.Sub(killed).Round(time.Millisecond), db.Sub(killed).Round(time.Millisecond))
	// Under load (-race on two shared cores) the tuned detector may
	// suspect a live node for a moment; it comes back.
	waitFor(t, "b Alive at a", 10*time.Second, func() bool { return ra.state("b") == MemberAlive })
}

// Gossip is encrypted and authenticated: a node with another key cannot
// join; a node with the key but not a voter is ignored.
func TestMembershipKeysAndStrangers(t *testing.T) {
	voters := []string{"a", "b", "w"}
	key := bytes.Repeat([]byte{1}, 16)
	ma, ra := startMember(t, "a", voters, key)
	wrong, _ := startMember(t, "b", voters, bytes.Repeat([]byte{2}, 16))
	if _, err := wrong.Join([]string{ma.Addr()}); err == nil {
		t.Fatalf("joined with the wrong key")
	}
	stranger, _ := startMember(t, "x", []string{"a", "x", "w"}, key)
	if _, err := stranger.Join([]string{ma.Addr()}); err != nil {
		t.Fatalf("stranger with the key: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	if st := ra.state("x"); st != "" {
		t.Fatalf("a non-voter was reported: %s", st)
	}
	if st := ra.state("b"); st != "" {
		t.Fatalf("the node with the wrong key was reported: %s", st)
	}

	for _, bad := range []MembershipConfig{
		{Node: "a", Voters: voters, Keys: [][]byte{key[:15]}},
		{Node: "a", Voters: voters},
		{Node: "z", Voters: voters, Keys: [][]byte{key}},
	} {
		if _, err := NewMembership(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("NewMembership(%+v): %v", bad, err)
		}
	}
}
