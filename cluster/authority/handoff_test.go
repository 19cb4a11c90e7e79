package authority

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// links is the test cluster's network: every dial of the authority port
// goes through it, and a cut between two voters refuses their new
// connections and closes the open ones, both ways.
type links struct {
	mu    sync.Mutex
	names map[string]string // address -> voter
	cut   map[[2]string]bool
	conns map[[2]string][]net.Conn
}

func pair(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

// withLinks routes c's dials through a links; call before starting.
func withLinks(c *testCluster) *links {
	l := &links{names: map[string]string{}, cut: map[[2]string]bool{}, conns: map[[2]string][]net.Conn{}}
	for _, v := range c.cfgs[0].Voters {
		l.names[v.Addr] = v.Name
	}
	for i := range c.cfgs {
		from := c.names[i]
		c.cfgs[i].dial = func(address string, timeout time.Duration) (net.Conn, error) {
			p := pair(from, l.names[address])
			l.mu.Lock()
			cut := l.cut[p]
			l.mu.Unlock()
			if cut {
				return nil, errors.New("test: link cut")
			}
			conn, err := net.DialTimeout("tcp", address, timeout)
			if err != nil {
				return nil, err
			}
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.cut[p] {
				conn.Close()
				return nil, errors.New("test: link cut")
			}
			l.conns[p] = append(l.conns[p], conn)
			return conn, nil
		}
	}
	return l
}

func (l *links) sever(a, b string) {
	p := pair(a, b)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut[p] = true
	for _, c := range l.conns[p] {
		c.Close()
	}
	delete(l.conns, p)
}

// leadOn moves the leadership to voter i.
func (c *testCluster) leadOn(i int) {
	c.t.Helper()
	for attempt := 0; attempt < 5 && c.leader() != i; attempt++ {
		l := c.leader()
		v, _ := c.cfgs[i].voter(c.names[i])
		if err := c.nodes[l].raft.LeadershipTransferToServer(raft.ServerID(v.Name), raft.ServerAddress(v.Addr)).Error(); err != nil {
			c.t.Logf("leadership transfer %s -> %s: %v", c.names[l], c.names[i], err)
		}
	}
	if c.leader() != i {
		c.t.Fatalf("%s does not lead", c.names[i])
	}
}

// TestCutLinkMovesLeadershipToTheWitness: the link between the data nodes
// a and b is cut while b leads. a, cut off from its leader, could commit
// nothing (the witness refuses its pre-votes: it has a leader); b hands
// the leadership to the witness, which reaches both, and a's proposal
// commits and is applied on a.
func TestCutLinkMovesLeadershipToTheWitness(t *testing.T) {
	cutLeaderOff(t, 1, "a", "b", "w")
}

// TestCutFromTheWitnessMovesLeadershipToTheOtherDataNode: the link
// between the data node a and the witness is cut while the witness
// leads. a hears no leader and b, which hears the witness, refuses its
// pre-votes; the witness, although preferred, hands the leadership to b,
// which reaches both, and a's proposal commits. Without that a primary
// on a could not mark its peer Outdated although a majority reaches it.
func TestCutFromTheWitnessMovesLeadershipToTheOtherDataNode(t *testing.T) {
	cutLeaderOff(t, 2, "a", "w", "b")
}

// cutLeaderOff makes voter leader lead, cuts the link between a and
// from, and checks that a's proposal commits (and is applied on a and on
// the leader) once the leadership moved to want.
func cutLeaderOff(t *testing.T, leader int, a, from, want string) {
	c := newTestCluster(t)
	l := withLinks(c)
	for i := range c.cfgs {
		c.cfgs[i].PreferredLeaders = []string{"w"}
	}
	c.startAll()
	c.leadOn(leader)
	if _, err := c.propose(0, define("r0")); err != nil {
		t.Fatal(err)
	}
	l.sever(a, from)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	var err error
	for ctx.Err() == nil {
		r, perr := c.nodes[0].Propose(ctx, define("r1"))
		if perr == nil && r.Resource("r1") != nil {
			err = nil
			break
		}
		err = perr
		if !errors.Is(perr, ErrOutcomeUnknown) {
			break
		}
	}
	if err != nil {
		t.Fatalf("%s, cut off from %s, could not commit: %v", a, from, err)
	}
	t.Logf("%s committed %v after the cut", a, time.Since(start).Round(time.Millisecond))
	if got := c.nodes[0].Status().Leader; got != want {
		t.Fatalf("leader after the cut: %q; want %q", got, want)
	}
	if c.nodes[0].Record().Resource("r1") == nil {
		t.Fatalf("%s's commit is not applied on %s", a, a)
	}
	waitFor(t, 5*time.Second, "the old leader did not apply the commit", func() bool { return c.nodes[leader].Record().Resource("r1") != nil })
}

// TestDeadVoterKeepsTheLeader: a voter that is dead (Alive says so) is no
// reason to move the leadership: no other leader would reach it either.
func TestDeadVoterKeepsTheLeader(t *testing.T) {
	c := newTestCluster(t)
	var mu sync.Mutex
	dead := map[string]bool{}
	for i := range c.cfgs {
		c.cfgs[i].PreferredLeaders = []string{"w"}
		c.cfgs[i].Alive = func(n string) bool { mu.Lock(); defer mu.Unlock(); return !dead[n] }
	}
	c.startAll()
	c.leadOn(1) // b
	mu.Lock()
	dead["a"] = true
	mu.Unlock()
	c.stop(0)
	// Longer than handoffAfter plus a retry: a handoff would have
	// happened by then.
	end := time.Now().Add(handoffAfter + handoffRetry)
	for time.Now().Before(end) {
		if got := c.nodes[2].Status().Leader; got != "" && got != "b" {
			t.Fatalf("leader %q after a died; want b to keep it", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := c.propose(2, define("r0")); err != nil {
		t.Fatal(err)
	}
}

// TestUnreachedByAllDoesNotPingPong: a is alive to the failure detector
// but no voter reaches its authority port. The witness hands the
// leadership to b, b (not preferred) hands it back, and then the witness
// keeps it for handoffAwayRetry: the leadership does not bounce between
// them every handoffRetry.
func TestUnreachedByAllDoesNotPingPong(t *testing.T) {
	c := newTestCluster(t)
	l := withLinks(c)
	for i := range c.cfgs {
		c.cfgs[i].PreferredLeaders = []string{"w"}
	}
	c.startAll()
	c.leadOn(2) // w
	l.sever("a", "w")
	l.sever("a", "b")
	c.mu.Lock()
	from := len(c.statuses["w"])
	c.mu.Unlock()
	// Without the longer period for a preferred leader: w -> b after
	// handoffAfter, back to w after another, w -> b again handoffRetry
	// after the first, and so on.
	time.Sleep(2*handoffAfter + handoffRetry + 2*time.Second)
	c.mu.Lock()
	var leaders []string
	for _, s := range c.statuses["w"][from:] {
		if s.Leader != "" && (len(leaders) == 0 || leaders[len(leaders)-1] != s.Leader) {
			leaders = append(leaders, s.Leader)
		}
	}
	c.mu.Unlock()
	if len(leaders) > 2 {
		t.Fatalf("the leadership moved %d times (%v) in %v", len(leaders), leaders, 2*handoffAfter+handoffRetry+2*time.Second)
	}
	t.Logf("leaders seen by w after the cut: %v", leaders)
	if _, err := c.propose(1, define("r0")); err != nil {
		t.Fatalf("b and w could not commit: %v", err)
	}
}

// TestTransferLeadership: the leader hands over on request; a follower
// refuses and names the leader; an unknown voter is refused.
func TestTransferLeadership(t *testing.T) {
	c := newTestCluster(t)
	c.startAll()
	l := c.leader()
	to := (l + 1) % len(c.names)
	other := (l + 2) % len(c.names)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := c.nodes[other].TransferLeadership(ctx, c.names[to])
	if !errors.Is(err, ErrNotLeading) || !strings.Contains(err.Error(), c.names[l]) {
		t.Fatalf("transfer asked of a follower: %v, want ErrNotLeading naming %s", err, c.names[l])
	}
	if err := c.nodes[l].TransferLeadership(ctx, "nobody"); err == nil {
		t.Fatal("transfer to an unknown voter succeeded")
	}
	if err := c.nodes[l].TransferLeadership(ctx, c.names[to]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, c.names[to]+" leading", func() bool { return c.leader() == to })
	if _, err := c.propose(other, define("r0")); err != nil {
		t.Fatalf("a commit after the transfer: %v", err)
	}
}
