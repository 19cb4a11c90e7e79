package manager

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/replicate"
)

// before fails unless every line is in the journal, in this order.
func before(t *testing.T, j *journal, lines ...string) {
	t.Helper()
	last := -1
	for _, l := range lines {
		i := j.index(l)
		if i < 0 {
			t.Fatalf("%q never happened; journal:\n%v", l, j.snapshot())
		}
		if i < last {
			t.Fatalf("%q happened before %q; journal:\n%v", l, lines[slices.Index(lines, l)-1], j.snapshot())
		}
		last = i
	}
}

func TestStartPromotesPreferred(t *testing.T) {
	c := newTestCluster(t, "")
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	before(t, c.j, "commit promote r0 node=a epoch=1 by=a", "a promote", "a io serve", "a claim r0")
	// The gates enforce the machine's lease: the primary's runs ahead of
	// the clock and is renewed as time goes; the secondary has none.
	c.until("a's lease handed to its gate", 5*time.Second, func() bool { return c.nodes["a"].gate.getLease().After(c.clock.Now()) })
	first := c.nodes["a"].gate.getLease()
	c.until("a's lease renewed", 5*time.Second, func() bool { return c.nodes["a"].gate.getLease().After(first) })
	if l := c.nodes["b"].gate.getLease(); !l.IsZero() {
		t.Fatalf("secondary b's gate enforces a lease until %v", l)
	}
}

func TestFailover(t *testing.T) {
	c := newTestCluster(t, "")
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	c.fencers["a"].off = func() {} // the BMC answers: off
	c.stop("a")
	c.nodes["b"].vol.peerGone()
	killed := c.clock.Now()
	c.dead("a", "b", "w")
	c.until("b primary at epoch 2", 30*time.Second, c.primary("b", 2))
	// Rule 1 and 7: fenced before the commit; powered off by the fencer,
	// so the commit need not wait out a's lease (when it may is the
	// machine's business: cluster.TestFailoverSequence).
	t.Logf("b serves %v of test time after a died", c.clock.Now().Sub(killed))
	before(t, c.j, "fence a", "b peer-fenced", "b promote", "b io serve", "b claim r0")
	if i, k := c.j.index("fence a"), firstWith(c.j, "commit promote r0 node=b"); k < i {
		t.Fatalf("promotion committed before the fence: journal:\n%v", c.j.snapshot())
	}
	rec := c.log.record().Resource("r0")
	if rec.Epoch != 2 || rec.LastFailover == nil || rec.LastFailover.How != "fenced" || len(c.log.record().Fences) == 0 {
		t.Fatalf("record: %+v %+v", rec, rec.LastFailover)
	}
	f := c.nodes["b"].m.Status().LastFailover["r0"]
	if f == nil {
		t.Fatal("no failover in b's status")
	}
	var names []string
	for _, s := range f.Steps {
		names = append(names, s.Name)
	}
	if want := []string{"detect", "fence", "commit", "promote", "vip", "serve"}; !slices.Equal(names, want) {
		t.Fatalf("failover steps %v, want %v", names, want)
	}
	if f.From != "a" || f.Epoch != 2 || f.Seconds < 0 {
		t.Fatalf("failover %+v", f)
	}
}

func firstWith(j *journal, prefix string) int {
	for i, l := range j.snapshot() {
		if len(l) >= len(prefix) && l[:len(prefix)] == prefix {
			return i
		}
	}
	return -1
}

func TestFencingFailsThenManualConfirmation(t *testing.T) {
	c := newTestCluster(t, "")
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	c.fencers["a"].set(errors.New("BMC unreachable"))
	c.stop("a")
	c.nodes["b"].vol.peerGone()
	c.dead("a", "b", "w")
	b := c.nodes["b"]
	c.until("two failed fencing attempts", 30*time.Second, func() bool { return c.fencers["a"].count() >= 2 })
	if b.alertCount("fencing a failed") == 0 {
		t.Fatalf("no alert for the failed fencing; alerts: %v", b.alerts)
	}
	if b.gate.get() == IOServe || c.log.record().Resource("r0").Primary != "a" {
		t.Fatalf("b took over without a fence: journal %v", c.j.snapshot())
	}
	if j := c.j.index("b promote"); j >= 0 {
		t.Fatal("b promoted without a fence")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	text, err := b.m.Admin(ctx, cluster.AdminRequest{Op: cluster.AdminFenceConfirm, Node: "a"})
	if err != nil {
		t.Fatalf("fence confirm: %v", err)
	}
	t.Logf("fence confirm: %s", text)
	c.until("b primary at epoch 2", 30*time.Second, c.primary("b", 2))
	fs := c.log.record().Fences
	if len(fs) == 0 || fs[len(fs)-1].Method != "manual" || fs[len(fs)-1].Node != "a" {
		t.Fatalf("fences: %+v", fs)
	}
}

func TestDegradedWriteWaitsForOutdated(t *testing.T) {
	c := newTestCluster(t, "")
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	a := c.nodes["a"]
	c.until("b UpToDate in the record", 10*time.Second, func() bool {
		return c.log.record().Resource("r0").State("b") == cluster.StateUpToDate
	})
	// b's link goes, b itself stays a member: the primary goes on
	// degraded, but only after the record says b is Outdated.
	a.vol.peerGone()
	hook := a.m.DegradedHook("r0")
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		errc <- hook(ctx)
	}()
	var err error
	c.until("the degraded write answered", 10*time.Second, func() bool {
		select {
		case err = <-errc:
			return true
		default:
			return false
		}
	})
	if err != nil {
		t.Fatalf("degraded write refused: %v", err)
	}
	if st := c.log.record().Resource("r0").State("b"); st != cluster.StateOutdated {
		t.Fatalf("degraded write allowed while b is %s in the record", st)
	}
	if firstWith(c.j, "commit mark-outdated r0 node=b") < 0 {
		t.Fatalf("no mark-outdated: %v", c.j.snapshot())
	}
}

func TestDegradedWriteWithoutQuorumWaits(t *testing.T) {
	c := newTestCluster(t, "")
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	a := c.nodes["a"]
	c.log.setCut("a", true)
	c.dead("b", "a")
	c.dead("w", "a")
	a.vol.peerGone()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := a.m.DegradedHook("r0")(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("degraded write without quorum: %v, want it held until the deadline", err)
	}
	if st := c.log.record().Resource("r0").State("b"); st == cluster.StateOutdated {
		t.Fatal("b marked Outdated without quorum")
	}
}

func testQuorumLost(t *testing.T, policy cluster.NoQuorumPolicy, want IOMode) {
	c := newTestCluster(t, policy)
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	a := c.nodes["a"]
	lease := a.m.Status().Resources[0].LeaseUntil
	c.log.setCut("a", true)
	c.dead("b", "a")
	c.dead("w", "a")
	c.until("a's I/O stopped", cluster.DefaultLease, func() bool { return a.gate.get() == want })
	if now := c.clock.Now(); !now.Before(lease) {
		t.Fatalf("I/O stopped at %v, lease ended at %v", now, lease)
	}
	before(t, c.j, "a io "+want.String(), "a release r0")
	if s := a.m.Status(); s.Quorum || s.Resources[0].Serving {
		t.Fatalf("status after quorum loss: %+v", s)
	}
	if a.alertCount("lost quorum") == 0 {
		t.Fatalf("no alert; %v", a.alerts)
	}
}

func TestQuorumLostSuspends(t *testing.T) { testQuorumLost(t, cluster.NoQuorumSuspend, IOSuspend) }
func TestQuorumLostFails(t *testing.T)    { testQuorumLost(t, cluster.NoQuorumIOError, IOFail) }

func TestAdminSwitchover(t *testing.T) {
	c := newTestCluster(t, "")
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	c.until("b UpToDate in the record", 10*time.Second, func() bool {
		return c.log.record().Resource("r0").State("b") == cluster.StateUpToDate
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.nodes["w"].m.Admin(ctx, cluster.AdminRequest{Op: cluster.AdminSwitchover, Resource: "r0", Node: "b"}); err != nil {
		t.Fatalf("switchover: %v", err)
	}
	c.until("b primary at epoch 2", 30*time.Second, c.primary("b", 2))
	before(t, c.j, "a io suspend", "a io refuse", "a demote", "a release r0", "b promote", "b claim r0")
	if c.fencers["a"].count() != 0 {
		t.Fatal("a switchover fenced a")
	}
}

func TestPromoteRefusedByVolume(t *testing.T) {
	c := newTestCluster(t, "", func(c *testCluster) { c.nodes["a"].vol.refuse = errors.New("replicate: peer is primary") })
	c.until("an alert on a", 30*time.Second, func() bool { return c.nodes["a"].alertCount("refused to promote") > 0 })
	if c.nodes["a"].gate.get() == IOServe {
		t.Fatal("a serves although its volume refused the promotion")
	}
}

func TestAdminStopped(t *testing.T) {
	m, err := New(Config{Machine: cluster.Config{Node: "w", Voters: voters}, Log: logFor{}, Fencer: func(string) (Fencer, error) { return nil, errors.New("x") }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Admin(context.Background(), cluster.AdminRequest{Op: cluster.AdminStandby, Node: "a"}); !errors.Is(err, ErrStopped) {
		t.Fatalf("admin on a manager not running: %v", err)
	}
	if _, err := New(Config{Machine: cluster.Config{Node: "a", Voters: voters, Resources: []cluster.ResourceConfig{{Name: "r0", Replicas: [2]string{"a", "b"}}}},
		Log: logFor{}, Fencer: func(string) (Fencer, error) { return nil, nil }}); !errors.Is(err, ErrConfig) {
		t.Fatalf("a replica without a volume: %v", err)
	}
}

// A fencing need that ended (the node came back) does not carry its start
// over to the next failure: a manual confirmation given for the first must
// not count for the second.
func TestFenceSinceRestartsAfterReturn(t *testing.T) {
	c := newTestCluster(t, "")
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	f := c.fencers["a"]
	f.set(errors.New("BMC unreachable"))
	c.stop("a")
	c.nodes["b"].vol.peerGone()
	c.dead("a", "b", "w")
	c.until("a fencing attempt", 30*time.Second, func() bool { return f.count() >= 1 })
	c.nodes["b"].m.Inject(cluster.MemberChange{At: c.clock.Now(), Node: "a", State: cluster.MemberAlive})
	c.until("a back at b", 10*time.Second, func() bool { return c.nodes["b"].m.Status().Members["a"] == cluster.MemberAlive })
	c.clock.advance(10 * time.Second)
	n := f.count()
	c.dead("a", "b")
	c.until("a new fencing attempt", 30*time.Second, func() bool { return f.count() > n })
	f.mu.Lock()
	first, last := f.since[0], f.since[len(f.since)-1]
	f.mu.Unlock()
	if !last.After(first) {
		t.Fatalf("the second failure's fence request starts at %v, the first's at %v", last, first)
	}
}

// After a failover the survivor's volume may still see the old primary as
// Primary until its link times out: the manager retries the promotion at
// every tick, and serves once the volume agrees.
func TestPromoteRetriedWhileVolumeSeesPeerPrimary(t *testing.T) {
	c := newTestCluster(t, "")
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	c.fencers["a"].off = func() {}
	b := c.nodes["b"]
	b.vol.mu.Lock()
	b.vol.refuse, b.vol.refuseN = fmt.Errorf("replicate: r0: promote: a: %w", replicate.ErrPeerPrimary), 5
	b.vol.mu.Unlock()
	c.stop("a")
	c.dead("a", "b", "w")
	c.until("b primary at epoch 2", 30*time.Second, c.primary("b", 2))
	if b.alertCount("refused to promote") != 0 {
		t.Fatalf("alerted although the promotion was retried: %v", b.alerts)
	}
	if f := b.m.Status().LastFailover["r0"]; f == nil || f.Steps[len(f.Steps)-1].Name != "serve" {
		t.Fatalf("failover timeline: %+v", f)
	}
}
