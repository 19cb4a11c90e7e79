package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cluster/authority"
)

// The machines over the real parts: memberlist on loopback for membership,
// cluster/authority (raft over TCP, on-disk stores) for the log, real
// clocks; only the volumes and the fencer are fakes. A killed primary is
// detected, fenced, replaced at epoch 2 and the new primary serves: the
// timing assumptions (detection well under the margin, a new raft leader
// well inside lease + margin) hold with the real libraries.

type liveNode struct {
	name string
	ms   *cluster.Membership
	auth *authority.Authority
	m    *cluster.Machine
	in   chan cluster.Event
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	primary bool
	serving bool
	epoch   uint64
	log     []string
}

type liveCluster struct {
	t     *testing.T
	nodes map[string]*liveNode
	start time.Time
}

func (n *liveNode) note(start time.Time, a cluster.Action) {
	n.mu.Lock()
	n.log = append(n.log, time.Since(start).Round(time.Millisecond).String()+" "+a.String())
	n.mu.Unlock()
}

func (n *liveNode) send(ev cluster.Event) {
	select {
	case n.in <- ev:
	case <-n.stop:
	}
}

func (n *liveNode) state() (bool, uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.serving, n.epoch
}

func startLive(t *testing.T) *liveCluster {
	t.Helper()
	names := []string{"a", "b", "w"}
	key := bytes.Repeat([]byte{9}, 32)
	secret := bytes.Repeat([]byte{5}, 32)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := &liveCluster{t: t, nodes: map[string]*liveNode{}, start: time.Now()}

	var voters []authority.Voter
	lns := map[string]net.Listener{}
	for _, n := range names {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[n] = ln
		voters = append(voters, authority.Voter{Name: n, Addr: ln.Addr().String()})
	}
	var first string
	for _, name := range names {
		n := &liveNode{name: name, in: make(chan cluster.Event, 4096), stop: make(chan struct{}), done: make(chan struct{})}
		c.nodes[name] = n
		m, err := cluster.NewMachine(cluster.Config{Node: name, Boot: "1", Voters: names,
			Resources: []cluster.ResourceConfig{{Name: "r0", Replicas: [2]string{"a", "b"}, Preferred: "a"}}})
		if err != nil {
			t.Fatal(err)
		}
		n.m = m
		ms, err := cluster.NewMembership(cluster.MembershipConfig{Node: name, Voters: names, BindAddr: "127.0.0.1", Keys: [][]byte{key}, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		n.ms = ms
		auth, err := authority.Open(authority.Config{Node: name, Voters: voters, Listener: lns[name], Dir: t.TempDir(),
			Secret: secret, Logger: quiet, OnCommit: func(e cluster.Committed) { n.send(e) }})
		if err != nil {
			t.Fatal(err)
		}
		n.auth = auth
		if first == "" {
			first = ms.Addr()
		} else if _, err := ms.Join([]string{first}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.nodes {
		go c.run(n)
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			c.kill(n.name)
		}
	})
	return c
}

// run is a minimal node manager: one goroutine steps the machine and
// carries out its actions against fake volumes and a fake fencer.
func (c *liveCluster) run(n *liveNode) {
	defer close(n.done)
	tick := time.NewTicker(cluster.DefaultTickInterval)
	defer tick.Stop()
	if n.name != "w" {
		n.in <- cluster.VolumeReport{At: time.Now(), Resource: "r0", State: cluster.VolumeState{Disk: cluster.DiskUpToDate, Connected: true, PeerDisk: cluster.DiskUpToDate}}
	}
	for {
		var ev cluster.Event
		select {
		case <-n.stop:
			return
		case e, ok := <-n.ms.Events():
			if !ok {
				return
			}
			ev = e
		case ev = <-n.in:
		case now := <-tick.C:
			ev = cluster.Tick{At: now}
		}
		for _, a := range n.m.Step(ev).Actions {
			n.note(c.start, a)
			c.exec(n, a)
		}
	}
}

func (c *liveCluster) exec(n *liveNode, a cluster.Action) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch a := a.(type) {
	case cluster.Propose:
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err := n.auth.Propose(ctx, a.Cmd)
			if err != nil && !errors.Is(err, authority.ErrRefused) {
				n.send(cluster.ProposalFailed{At: time.Now(), ID: a.Cmd.ID, Err: err})
			}
		}()
	case cluster.FenceNode:
		go func() {
			c.kill(a.Node) // the fake BMC powers it off
			n.send(cluster.FenceResult{At: time.Now(), Node: a.Node, Epochs: a.Epochs, Method: "test"})
		}()
	case cluster.Promote:
		n.primary, n.serving, n.epoch = true, true, a.Epoch
	case cluster.Demote:
		n.primary, n.serving = false, false
	case cluster.SuspendIO, cluster.FailIO:
		n.serving = false
	case cluster.ResumeIO:
		n.serving = n.primary
	}
}

// kill stops a node as a power-off would: no goodbye to anyone.
func (c *liveCluster) kill(name string) {
	n := c.nodes[name]
	select {
	case <-n.stop:
		return
	default:
	}
	close(n.stop)
	<-n.done
	_ = n.ms.Close()
	_ = n.auth.Close()
	n.mu.Lock()
	n.primary, n.serving = false, false
	n.mu.Unlock()
	for _, o := range c.nodes {
		if o.name != name && o.name != "w" {
			o.send(cluster.VolumeReport{At: time.Now(), Resource: "r0", State: cluster.VolumeState{Disk: cluster.DiskUpToDate, PeerDisk: cluster.DiskUnknown}})
		}
	}
}

func (c *liveCluster) waitServing(node string, epoch uint64, limit time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	for {
		if s, e := c.nodes[node].state(); s && e == epoch {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			for _, n := range c.nodes {
				n.mu.Lock()
				c.t.Logf("%s did:\n%v", n.name, n.log)
				n.mu.Unlock()
			}
			c.t.Fatalf("%s not serving at epoch %d after %v", node, epoch, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLiveFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("real memberlist and raft: a few seconds")
	}
	c := startLive(t)
	took := c.waitServing("a", 1, 20*time.Second)
	t.Logf("a serves r0 at epoch 1 after %v", took.Round(time.Millisecond))
	if s, _ := c.nodes["b"].state(); s {
		t.Fatalf("b serves too")
	}
	c.kill("a")
	took = c.waitServing("b", 2, 30*time.Second)
	t.Logf("b serves r0 at epoch 2, %v after a was killed", took.Round(time.Millisecond))
	rec := c.nodes["b"].auth.Record().Resource("r0")
	if rec.Primary != "b" || rec.Epoch != 2 || rec.LastFailover == nil || rec.LastFailover.How != "fenced" {
		t.Fatalf("record: %+v %+v", rec, rec.LastFailover)
	}
	// Rule 7: a fencer's power-off, not a person's word, is what let b
	// promote without waiting out a's lease.
	if fs := c.nodes["b"].auth.Record().Fences; len(fs) == 0 || !cluster.PoweredOff(&fs[len(fs)-1]) {
		t.Fatalf("fences: %+v", fs)
	}
}
