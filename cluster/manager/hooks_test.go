package manager

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
)

// The hooks see a failover as the manager does: the fence action, its
// result, every failover step in order, and the status after each step.
func TestHooksSeeTheFailover(t *testing.T) {
	var mu sync.Mutex
	var steps, fences []string
	var fenced, sawNoQuorum bool
	statuses := 0
	c := newTestCluster(t, "", func(c *testCluster) {
		c.nodes["b"].m.cfg.Hooks = Hooks{
			Event: func(ev cluster.Event) {
				if r, ok := ev.(cluster.FenceResult); ok && r.Err == nil {
					mu.Lock()
					fenced = true
					mu.Unlock()
				}
			},
			Action: func(a cluster.Action) {
				if f, ok := a.(cluster.FenceNode); ok {
					mu.Lock()
					fences = append(fences, f.Node)
					mu.Unlock()
				}
			},
			Status: func(st cluster.Status) {
				mu.Lock()
				statuses++
				sawNoQuorum = sawNoQuorum || !st.Quorum
				mu.Unlock()
			},
			FailoverStep: func(f Failover, s Step) {
				mu.Lock()
				defer mu.Unlock()
				if f.Resource != "r0" || f.From != "a" || len(f.Steps) == 0 || f.Steps[len(f.Steps)-1] != s {
					t.Errorf("step %+v of failover %+v", s, f)
				}
				steps = append(steps, s.Name)
			},
		}
	})
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	c.fencers["a"].off = func() {}
	c.stop("a")
	c.nodes["b"].vol.peerGone()
	c.dead("a", "b", "w")
	c.until("b primary at epoch 2", 30*time.Second, c.primary("b", 2))
	c.until("b's failover served", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(steps, "serve")
	})
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"detect", "fence", "commit", "promote", "vip", "serve"}; !slices.Equal(steps, want) {
		t.Errorf("failover steps through the hook %v, want %v", steps, want)
	}
	if len(fences) == 0 || fences[0] != "a" || !fenced {
		t.Errorf("fence actions %v, result seen %v", fences, fenced)
	}
	if statuses == 0 || !sawNoQuorum {
		t.Errorf("%d statuses, a status without quorum seen: %v", statuses, sawNoQuorum)
	}
}
