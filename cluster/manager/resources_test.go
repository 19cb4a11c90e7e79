package manager

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
)

// servingOn: node's machine serves resource and its gate is open.
func (c *testCluster) servingOn(node, resource string, g *fakeGate) func() bool {
	return func() bool {
		for _, r := range c.nodes[node].m.Status().Resources {
			if r.Resource == resource && r.Primary && r.Serving {
				return g.get() == IOServe
			}
		}
		return false
	}
}

// TestAddAndRemoveResourceWhileRunning: a resource added to running
// managers is promoted on its preferred node; removed from the secondary,
// that node's manager forgets it and the primary goes on.
func TestAddAndRemoveResourceWhileRunning(t *testing.T) {
	c := newTestCluster(t, "")
	c.until("a primary at epoch 1", 30*time.Second, c.primary("a", 1))
	rc := cluster.ResourceConfig{Name: "r1", Replicas: [2]string{"a", "b"}, Preferred: "b"}
	gates := map[string]*fakeGate{}
	for _, n := range []string{"a", "b"} {
		v := newFakeVolume(n, c.j)
		v.st.Resource = "r1"
		gates[n] = &fakeGate{node: n, j: c.j}
		if err := c.nodes[n].m.AddResource(rc, Resource{Volume: v, Gate: gates[n]}); err != nil {
			t.Fatal(err)
		}
	}
	c.until("r1 served by b", 30*time.Second, c.servingOn("b", "r1", gates["b"]))
	if !c.primary("a", 1)() {
		t.Fatal("adding r1 disturbed r0")
	}
	if err := c.nodes["a"].m.AddResource(rc, Resource{Volume: newFakeVolume("a", c.j), Gate: &fakeGate{}}); !errors.Is(err, ErrConfig) {
		t.Fatalf("adding r1 twice: %v", err)
	}
	if err := c.nodes["w"].m.AddResource(rc, Resource{Volume: newFakeVolume("w", c.j), Gate: &fakeGate{}}); !errors.Is(err, ErrConfig) {
		t.Fatalf("adding r1 on the witness: %v", err)
	}

	c.nodes["a"].m.RemoveResource("r1")
	c.until("a forgets r1", 10*time.Second, func() bool {
		_, ok := c.nodes["a"].m.locals()["r1"]
		return !ok && !slices.ContainsFunc(c.nodes["a"].m.Status().Resources, func(r cluster.ResourceStatus) bool { return r.Resource == "r1" })
	})
	// The primary refuses: it keeps r1.
	c.nodes["b"].m.RemoveResource("r1")
	c.until("b's refusal", 10*time.Second, func() bool { return c.nodes["b"].alertCount("resource not removed") == 1 })
	if !c.servingOn("b", "r1", gates["b"])() || !c.primary("a", 1)() {
		t.Fatal("the removals disturbed the primaries")
	}
}
