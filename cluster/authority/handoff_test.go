package authority

import (
	"context"
	"errors"
	"net"
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
	c := newTestCluster(t)
	l := withLinks(c)
	for i := range c.cfgs {
		c.cfgs[i].PreferredLeaders = []string{"w"}
	}
	c.startAll()
	c.leadOn(1) // b
	if _, err := c.propose(0, define("r0")); err != nil {
		t.Fatal(err)
	}
	l.sever("a", "b")
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
		t.Fatalf("a, cut off from b, could not commit: %v", err)
	}
	t.Logf("a committed %v after the cut", time.Since(start).Round(time.Millisecond))
	if got := c.nodes[0].Status().Leader; got != "w" {
		t.Fatalf("leader after the cut: %q; want the witness", got)
	}
	if c.nodes[0].Record().Resource("r1") == nil {
		t.Fatal("a's commit is not applied on a")
	}
	waitFor(t, 5*time.Second, "b did not apply a's commit", func() bool { return c.nodes[1].Record().Resource("r1") != nil })
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
