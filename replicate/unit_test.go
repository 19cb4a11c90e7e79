package replicate

import (
	"cmp"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/replicate/md"
)

func TestStateRoundTrip(t *testing.T) {
	s := peerState{Role: Primary, Disk: Outdated, Want: wantDiscard, Flags: md.Consistent | md.WasPrimary, Epoch: 7, Size: 1 << 30, Gran: 4096,
		Gen: Generations{Current: 1, Bitmap: 2, History: [4]uint64{3, 4, 5, 6}}, DirtyBits: 99, PromotedAt: -5, Proto: 'B'}
	got, err := parseState(s.marshal())
	if err != nil || got != s {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, s)
	}
	b := s.marshal()
	for _, bad := range [][]byte{b[:len(b)-1], append(b, 0), func() []byte { c := append([]byte(nil), b...); c[0] = 2; return c }(),
		func() []byte { c := append([]byte(nil), b...); c[1] = 9; return c }(), func() []byte { c := append([]byte(nil), b...); c[len(c)-1] = 'X'; return c }()} {
		if _, err := parseState(bad); err == nil {
			t.Fatalf("accepted a malformed state %x", bad)
		}
	}
}

// decideSession must stay symmetric with wishes and policies too, or two
// nodes could both act as source.
func TestDecideSessionSymmetric(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	gens := []uint64{0, 11, 22, 33}
	pick := func() peerState {
		g := Generations{Current: gens[1+r.IntN(3)], Bitmap: gens[r.IntN(4)]}
		for i := range g.History {
			g.History[i] = gens[r.IntN(4)]
		}
		var f md.Flags
		if r.IntN(4) > 0 {
			f |= md.Consistent
		}
		if r.IntN(4) == 0 {
			f |= md.CrashedPrimary
		}
		return peerState{Gen: g, Flags: f, Want: uint8(r.IntN(4)), DirtyBits: uint64(r.IntN(3)), PromotedAt: int64(r.IntN(3))}
	}
	mirrored := map[string]string{policyDiscardLocal: policyDiscardPeer, policyDiscardPeer: policyDiscardLocal}
	for _, policy := range []string{"disconnect", "discard-zero-changes", "discard-younger-primary", "discard-older-primary",
		"discard-least-changes", policyDiscardLocal, policyDiscardPeer} {
		other := cmp.Or(mirrored[policy], policy)
		for range 20000 {
			a, b := pick(), pick()
			da, wa := decideSession(a, b, policy)
			db, wb := decideSession(b, a, other)
			if da != db.mirror() || (wa == "") != (wb == "") {
				t.Fatalf("%s: asymmetric: %+v vs %+v: %s/%q and %s/%q", policy, a, b, da, wa, db, wb)
			}
			if da.IsSource() && !a.side().Consistent || da.IsTarget() && !b.side().Consistent {
				t.Fatalf("%s: an inconsistent side would be source: %+v vs %+v: %s", policy, a, b, da)
			}
		}
	}
}

func TestDecideSessionPolicies(t *testing.T) {
	base := Generations{Current: 1}
	sb := func(cur uint64, dirty uint64, at int64) peerState {
		return peerState{Gen: Generations{Current: cur, Bitmap: base.Current}, Flags: md.Consistent, DirtyBits: dirty, PromotedAt: at}
	}
	a, b := sb(2, 5, 100), sb(3, 0, 200)
	if d, why := decideSession(a, b, "disconnect"); d != SplitBrain || why == "" {
		t.Fatalf("disconnect policy: %s %q", d, why)
	}
	if d, _ := decideSession(a, b, "discard-zero-changes"); d != SourceBitmap {
		t.Fatalf("discard-zero-changes: %s, want the side without changes as target", d)
	}
	for _, c := range []struct {
		policy string
		want   Sync
	}{
		{"discard-younger-primary", SourceBitmap}, // b was promoted later
		{"discard-older-primary", TargetBitmap},
		{"discard-least-changes", SourceBitmap}, // b changed nothing
		{policyDiscardLocal, TargetBitmap},
		{policyDiscardPeer, SourceBitmap},
	} {
		if d, why := decideSession(a, b, c.policy); d != c.want || why != "" {
			t.Errorf("%s: %s %q, want %s", c.policy, d, why, c.want)
		}
	}
	// Ties are left to the admin.
	for _, c := range []struct {
		policy string
		a, b   peerState
	}{
		{"discard-younger-primary", sb(2, 5, 100), sb(3, 1, 100)},
		{"discard-older-primary", sb(2, 5, 100), sb(3, 1, 100)},
		{"discard-least-changes", sb(2, 4, 100), sb(3, 4, 200)},
	} {
		if d, why := decideSession(c.a, c.b, c.policy); d != SplitBrain || !strings.Contains(why, c.policy+" does not apply") {
			t.Errorf("%s on a tie: %s %q", c.policy, d, why)
		}
	}
	// A policy applies only to a split brain.
	if d, _ := decideSession(sb(2, 0, 0), peerState{Gen: Generations{Current: 2}, Flags: md.Consistent}, policyDiscardLocal); d != InSync {
		t.Errorf("discard-node on replicas in sync: %s", d)
	}
	b.DirtyBits = 1
	if d, why := decideSession(a, b, "discard-zero-changes"); d != SplitBrain || why == "" {
		t.Fatalf("both changed: %s %q", d, why)
	}
	b.Want = wantDiscard
	if d, _ := decideSession(a, b, "disconnect"); d != SourceBitmap {
		t.Fatalf("discard-my-data on the peer: %s", d)
	}
}

func TestRateControllerMaxRate(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newRateController(ResyncConfig{MaxRate: 10 << 20}, now)
	var sent int64
	// Ten simulated seconds of a sender that waits as told.
	end := now.Add(10 * time.Second)
	for now.Before(end) {
		if d := c.delay(now, 256<<10, 0); d > 0 {
			now = now.Add(d)
			continue
		}
		c.sent(now, 256<<10)
		sent += 256 << 10
	}
	rate := float64(sent) / 10
	if rate < 9.5*(1<<20) || rate > 10.5*(1<<20) {
		t.Fatalf("rate %.0f B/s, want about 10 MiB/s", rate)
	}
}

func TestRateControllerYieldsToApplications(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newRateController(ResyncConfig{AppShare: 0.75}, now)
	// A disk of 100 MiB/s shared by resync and an application that wants
	// all of it: the application must keep at least 75 MiB/s.
	const capacity = 100 << 20
	step := 10 * time.Millisecond
	var app, resync int64
	var appTotal int64
	for i := range 3000 {
		budget := int64(capacity * step.Seconds())
		// The resync takes what the controller allows of this step...
		var r int64
		for r < budget/2 {
			if c.delay(now, 64<<10, appTotal) > 0 {
				break
			}
			c.sent(now, 64<<10)
			r += 64 << 10
		}
		// ...and the application gets the rest.
		a := budget - r
		appTotal += a
		if i >= 1000 { // after the controller has measured
			app += a
			resync += r
		}
		now = now.Add(step)
	}
	share := float64(app) / float64(app+resync)
	if share < 0.74 || resync == 0 {
		t.Fatalf("application share %.3f, resync %d bytes; want >= 0.75 and some resync", share, resync)
	}
	// Idle applications: resync is not limited at all once the first
	// window (a slow start, before it is known) is over.
	idle := newRateController(ResyncConfig{AppShare: 0.75}, now)
	for i := range 100 {
		now = now.Add(step)
		if d := idle.delay(now, 1<<20, appTotal); d != 0 && i > int(rateWindow/step) {
			t.Fatalf("delay %s with idle applications and no MaxRate", d)
		}
		idle.sent(now, 1<<20)
	}
	if l := idle.limit(); !math.IsInf(l, 1) {
		t.Fatalf("limit %.0f with idle applications", l)
	}
}

func TestOrderWaitsOnlyForEarlierOverlaps(t *testing.T) {
	o := newOrder()
	a := &span{seq: 1, off: 0, end: 100}
	b := &span{seq: 2, off: 200, end: 300}
	o.add(a)
	o.add(b)
	done := make(chan struct{})
	go func() {
		o.waitBefore(3, 50, 250) // overlaps both
		close(done)
	}()
	o.waitBefore(2, 150, 400) // b is not earlier than itself; a does not overlap
	o.remove(a)
	select {
	case <-done:
		t.Fatal("waiter passed while an earlier overlapping op was in flight")
	case <-time.After(20 * time.Millisecond):
	}
	o.remove(b)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken")
	}
}

func TestCheckConfigSplitBrainPolicies(t *testing.T) {
	for policy, ok := range map[string]bool{
		"": true, "disconnect": true, "discard-least-changes": true, "discard-older-primary": true,
		"discard-node-alpha": true, "discard-node-beta": true, "discard-node-gamma": false, "discard-node-": false, "discard-newer-primary": false,
	} {
		cfg := Config{Resource: "r0", Node: "alpha", Peer: "beta", Secret: []byte(testSecret), SplitBrain: policy}
		err := checkConfig(&cfg)
		if got := err == nil || !strings.Contains(err.Error(), "split-brain policy"); got != ok {
			t.Errorf("policy %q: %v", policy, err)
		}
	}
}

// Applications whose throughput the resync costs far more than its bytes
// (a CPU-bound machine: 40 MB/s of small writes alone, halved by a resync
// of 300 MB/s, a third at 600): the byte share would let the resync take
// half of the 1 GB/s capacity; the feedback keeps the applications at
// least AppShare of what they get alone, and the resync still runs.
func TestRateControllerKeepsApplicationThroughput(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newRateController(ResyncConfig{AppShare: 0.5}, now)
	const alone, resyncAlone, halves = 40e6, 1000e6, 300e6 // bytes/s
	step := 10 * time.Millisecond
	var appTotal, app, resync int64
	for i := range 6000 {
		var r int64
		for float64(r) < resyncAlone*step.Seconds() {
			if c.delay(now, 64<<10, appTotal) > 0 {
				break
			}
			c.sent(now, 64<<10)
			r += 64 << 10
		}
		rrate := float64(r) / step.Seconds()
		a := int64(alone / (1 + rrate/halves) * step.Seconds())
		appTotal += a
		if i >= 1000 {
			app += a
			resync += r
		}
		now = now.Add(step)
	}
	secs := 5000 * step.Seconds()
	kept := float64(app) / secs / alone
	if kept < 0.5 || resync == 0 {
		t.Fatalf("applications kept %.2f of their throughput alone, resync %.0f MB/s; want >= 0.50 and some resync", kept, float64(resync)/secs/1e6)
	}
	t.Logf("applications kept %.2f, resync %.0f MB/s", kept, float64(resync)/secs/1e6)
}

// The application counter holds what the volume served since it opened:
// a controller started late takes its first reading as the start, not as
// one window's traffic (which made the capacity, and so every limit, far
// too large).
func TestRateControllerStartsFromTheCounter(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newRateController(ResyncConfig{AppShare: 0.5}, now)
	const before = 50 << 30 // 50 GiB since the volume opened
	appTotal := int64(before)
	step := 10 * time.Millisecond
	for range 20 {
		if c.delay(now, 64<<10, appTotal) == 0 {
			c.sent(now, 64<<10)
		}
		appTotal += 400 << 10 // 40 MB/s
		now = now.Add(step)
	}
	if c.capacity > 1e9 {
		t.Fatalf("capacity %.0f MB/s after a start at a counter of 50 GiB; the start was taken for traffic", c.capacity/1e6)
	}
}
