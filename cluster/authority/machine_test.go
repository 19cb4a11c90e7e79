package authority

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/tandem-ha/tandem/cluster"
)

// machineNode drives a cluster.Machine from a real Authority, the way the
// node manager will: committed entries and proposal failures become events,
// Propose actions become proposals, fencing succeeds at once.
type machineNode struct {
	name string
	m    *cluster.Machine
	a    *Authority
	ev   chan cluster.Event
	done chan struct{}
	wg   sync.WaitGroup

	mu   sync.Mutex
	acts []cluster.Action
}

func (n *machineNode) send(e cluster.Event) {
	select {
	case n.ev <- e:
	case <-n.done:
	}
}

func (n *machineNode) run() {
	defer n.wg.Done()
	tick := time.NewTicker(cluster.DefaultTickInterval)
	defer tick.Stop()
	for {
		var e cluster.Event
		select {
		case <-n.done:
			return
		case e = <-n.ev:
		case now := <-tick.C:
			e = cluster.Tick{At: now}
		}
		for _, act := range n.m.Step(e).Actions {
			n.mu.Lock()
			n.acts = append(n.acts, act)
			n.mu.Unlock()
			switch act := act.(type) {
			case cluster.Propose:
				n.wg.Add(1)
				go func() {
					defer n.wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), cluster.DefaultProposalTimeout)
					defer cancel()
					// A refusal arrives as a Committed through OnCommit.
					if _, err := n.a.Propose(ctx, act.Cmd); err != nil && !errors.Is(err, ErrRefused) {
						n.send(cluster.ProposalFailed{At: time.Now(), ID: act.Cmd.ID, Err: err})
					}
				}()
			case cluster.FenceNode:
				n.wg.Add(1)
				go func() {
					defer n.wg.Done()
					n.send(cluster.FenceResult{At: time.Now(), Node: act.Node, Epochs: act.Epochs, Method: "test"})
				}()
			}
		}
	}
}

func (n *machineNode) promoted(epoch uint64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, a := range n.acts {
		if p, ok := a.(cluster.Promote); ok && p.Resource == "r0" && p.Epoch == epoch {
			return true
		}
	}
	return false
}

func (n *machineNode) stop() {
	select {
	case <-n.done:
	default:
		close(n.done)
		n.wg.Wait()
	}
}

// TestMachinesFailOverThroughTheLog: two data nodes' machines promote the
// preferred node through the real log; when that node dies (and may have
// been the raft leader), the survivor fences it, proposes through whichever
// leader the remaining voters elect, and promotes at the next epoch.
func TestMachinesFailOverThroughTheLog(t *testing.T) {
	c := newTestCluster(t)
	voters := c.cfgs[0].Voters
	nodes := map[string]*machineNode{}
	for i, name := range c.names {
		if name == "w" {
			c.start(i)
			continue
		}
		m, err := cluster.NewMachine(cluster.Config{
			Node: name, Voters: c.names, Boot: "1",
			Resources: []cluster.ResourceConfig{{Name: "r0", Replicas: [2]string{"a", "b"}, Preferred: "a"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		n := &machineNode{name: name, m: m, ev: make(chan cluster.Event, 256), done: make(chan struct{})}
		nodes[name] = n
		c.cfgs[i].OnCommit = func(e cluster.Committed) { n.send(e) }
		n.a = c.start(i)
		t.Cleanup(n.stop)
		now := time.Now()
		for _, v := range voters {
			if v.Name != name {
				n.ev <- cluster.MemberChange{At: now, Node: v.Name, State: cluster.MemberAlive}
			}
		}
		n.ev <- cluster.VolumeReport{At: now, Resource: "r0", State: cluster.VolumeState{Disk: cluster.DiskUpToDate, Connected: true, PeerDisk: cluster.DiskUpToDate}}
		n.wg.Add(1)
		go n.run()
	}
	waitFor(t, 10*time.Second, "the preferred node never promoted", func() bool { return nodes["a"].promoted(1) })
	waitFor(t, 2*time.Second, "b's record does not show a primary at epoch 1", func() bool {
		res := c.nodes[1].Record().Resource("r0")
		return res != nil && res.Primary == "a" && res.Epoch == 1
	})
	if nodes["b"].promoted(1) {
		t.Fatal("both nodes promoted at epoch 1")
	}

	// Make the primary the raft leader too, the hard case: the survivor
	// must propose through a leader the remaining voters elect.
	if l := c.leader(); l != 0 {
		if err := c.nodes[l].raft.LeadershipTransferToServer("a", raft.ServerAddress(voters[0].Addr)).Error(); err != nil {
			t.Fatalf("leadership transfer to a: %v", err)
		}
	}
	waitFor(t, 5*time.Second, "a does not lead", func() bool { return c.nodes[0].raft.State() == raft.Leader })

	// a dies: its machine and its voter stop.
	nodes["a"].stop()
	c.stop(0)
	nodes["b"].send(cluster.MemberChange{At: time.Now(), Node: "a", State: cluster.MemberDead})
	start := time.Now()
	waitFor(t, 15*time.Second, "the survivor never promoted", func() bool { return nodes["b"].promoted(2) })
	// Most of it is the machine's Lease + Margin (rule 2), not the log.
	t.Logf("b promoted %v after a died", time.Since(start))
	res := c.nodes[1].Record().Resource("r0")
	if res.Primary != "b" || res.Epoch != 2 || res.LastFailover == nil || res.LastFailover.How != "fenced" {
		t.Fatalf("after failover: %+v %+v", res, res.LastFailover)
	}
	waitFor(t, 2*time.Second, "the witness's record lags", func() bool { return c.nodes[2].Record().Resource("r0").Primary == "b" })
}
