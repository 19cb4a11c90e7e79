package fence

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/fence/fencetest"
)

// fixedClock reads a settable time; After fires at once, so waits are spun
// through without sleeping.
type fixedClock struct{ now time.Time }

func (c *fixedClock) Now() time.Time { return c.now }
func (c *fixedClock) After(d time.Duration) <-chan time.Time {
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func TestStoreConfirmAtomicAndDurable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", ConfirmDir)
	clock := &fixedClock{now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	s := NewStore(dir, clock)
	if _, ok, err := s.Get("beta"); ok || err != nil {
		t.Fatalf("Get before any confirmation = %v, %v", ok, err)
	}
	c, err := s.Confirm("beta", "alice", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := NewStore(dir, nil).Get("beta")
	if err != nil || !ok || !got.At.Equal(c.At) || got.By != "alice" || got.Host != "alpha" || got.Node != "beta" {
		t.Fatalf("a new store reads %+v, %v, %v; want %+v", got, ok, err, c)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "beta.confirmed" {
		t.Fatalf("the store holds %v; want only beta.confirmed (no temporary files)", entries)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Fatalf("store directory mode %v, want 0700", st.Mode().Perm())
	}
	if _, err := s.Confirm("../etc", "x", "y"); err == nil {
		t.Fatal("a node name with a path in it was accepted")
	}
	// A damaged record is an error, never a confirmation.
	fencetest.WriteFile(t, filepath.Join(dir, "gamma.confirmed"), "{not json", 0o600)
	if _, ok, err := s.Get("gamma"); ok || err == nil {
		t.Fatalf("a damaged record read as %v, %v", ok, err)
	}
	fencetest.WriteFile(t, filepath.Join(dir, "gamma.confirmed"), `{"node":"beta","at":"2026-12-01T12:00:00Z"}`, 0o600)
	if _, ok, err := s.Get("gamma"); ok || err == nil {
		t.Fatalf("a record for another node read as %v, %v", ok, err)
	}
}

func TestManualNeedsConfirmationNewerThanRequest(t *testing.T) {
	clock := &fixedClock{now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	store := NewStore(t.TempDir(), clock)
	m := NewManual("beta", store, 0, clock)
	ctx := context.Background()

	err := m.Off(ctx, Request{Since: clock.Now()})
	if !errors.Is(err, ErrNoConfirmation) || !strings.Contains(err.Error(), "tandem fence confirm beta") {
		t.Fatalf("Off with no confirmation: %v; want ErrNoConfirmation telling what to run", err)
	}

	// A confirmation from before the request (the node failed, was
	// confirmed, came back, and now fails again) does not count.
	if _, err := store.Confirm("beta", "op", "alpha"); err != nil {
		t.Fatal(err)
	}
	clock.now = clock.now.Add(time.Hour)
	request := clock.Now()
	if err := m.Off(ctx, Request{Since: request}); !errors.Is(err, ErrNoConfirmation) || !strings.Contains(err.Error(), "older than") {
		t.Fatalf("Off with an old confirmation: %v; want refused as older than the request", err)
	}
	clock.now = clock.now.Add(time.Minute)
	if _, err := store.Confirm("beta", "op", "alpha"); err != nil {
		t.Fatal(err)
	}
	if err := m.Off(ctx, Request{Since: request}); err != nil {
		t.Fatalf("Off with a confirmation after the request: %v", err)
	}
	if err := m.Reboot(ctx, Request{Since: request}); err != nil {
		t.Fatalf("Reboot with a confirmation after the request: %v", err)
	}
	if _, err := m.Status(ctx); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Status of manual: %v; want ErrUnsupported", err)
	}
	if err := m.On(ctx); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("On of manual: %v; want ErrUnsupported", err)
	}
	// Another node's confirmation is not this node's.
	if err := NewManual("gamma", store, 0, clock).Off(ctx, Request{Since: request}); !errors.Is(err, ErrNoConfirmation) {
		t.Fatalf("gamma fenced by beta's confirmation: %v", err)
	}
}

func TestManualWaitsForOperator(t *testing.T) {
	store := NewStore(t.TempDir(), nil)
	m := NewManual("beta", store, 30*time.Second, nil)
	since := time.Now()
	done := make(chan error, 1)
	go func() { done <- m.Off(context.Background(), Request{Since: since}) }()
	time.Sleep(100 * time.Millisecond)
	if _, err := store.Confirm("beta", "op", "alpha"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Off after the operator confirmed: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a waiting manual level did not notice the confirmation")
	}
	// A cancelled wait ends at once, unconfirmed.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Off(ctx, Request{Since: time.Now()}); !errors.Is(err, ErrNoConfirmation) {
		t.Fatalf("Off with a cancelled context: %v", err)
	}
}
