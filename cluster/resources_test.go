package cluster

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// addResource gives both data nodes' machines a new resource (an adjust
// on each), with its volumes.
func (s *sim) addResource(rc ResourceConfig) {
	s.logf("add resource %s", rc.Name)
	s.res = append(s.res, rc.Name)
	s.base.Resources = append(s.base.Resources, rc) // a reboot runs it too
	for _, x := range s.data {
		s.nodes[x].vols[rc.Name] = &simVol{disk: DiskUpToDate}
		s.queue = append(s.queue, func() { s.step(x, AddResource{At: s.now, Resource: rc}) })
	}
	s.settle()
}

// TestAddResourceWhileRunning: a resource added to running machines is
// placed on its preferred node, takes writes and fails over like the
// resources the machines started with; the others are not disturbed.
func TestAddResourceWhileRunning(t *testing.T) {
	s := started(t, nil)
	s.write("r0")
	s.addResource(ResourceConfig{Name: "r2", Replicas: [2]string{"a", "b"}, Preferred: "b"})
	s.advance(time.Second)
	if got := s.serving("r2"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r2 served by %v, want b\n%s", got, s.dump())
	}
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v after adding r2, want a\n%s", got, s.dump())
	}
	s.write("r2")
	s.crash("b")
	s.advance(5 * time.Second)
	s.completeFence()
	s.advance(5 * time.Second)
	if got := s.serving("r2"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("after b crashed r2 is served by %v, want a\n%s", got, s.dump())
	}
	s.write("r2")
	s.check()

	// Adding it twice, or one without a replica here, changes nothing.
	s.alerts = nil
	s.step("a", AddResource{At: s.now, Resource: ResourceConfig{Name: "r2", Replicas: [2]string{"a", "b"}}})
	s.step("a", AddResource{At: s.now, Resource: ResourceConfig{Name: "r9", Replicas: [2]string{"b", "w"}}})
	if len(s.alerts) != 2 || !strings.Contains(s.alerts[0], "runs already") || !strings.Contains(s.alerts[1], "must hold one") {
		t.Fatalf("alerts %q", s.alerts)
	}
}

// TestRemoveResourceWhileRunning: a machine forgets a resource it does
// not hold as primary; it refuses to drop one it serves.
func TestRemoveResourceWhileRunning(t *testing.T) {
	s := started(t, nil)
	s.alerts = nil
	s.step("b", RemoveResource{At: s.now, Resource: "r1"})
	if len(s.alerts) != 1 || !strings.Contains(s.alerts[0], "primary") {
		t.Fatalf("removing the primary's resource: alerts %q", s.alerts)
	}
	s.step("a", RemoveResource{At: s.now, Resource: "r1"})
	s.advance(time.Second)
	for _, rs := range s.nodes["a"].m.Status().Resources {
		if rs.Resource == "r1" {
			t.Fatalf("a still runs r1: %+v", rs)
		}
	}
	if !slices.ContainsFunc(s.nodes["b"].m.Status().Resources, func(rs ResourceStatus) bool { return rs.Resource == "r1" && rs.Primary }) {
		t.Fatalf("b no longer serves r1\n%s", s.dump())
	}
	s.write("r0")
	s.check()
}
