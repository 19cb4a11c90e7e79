package cluster

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// reconfigure gives node x an admin's new policies for a resource.
func (s *sim) reconfigure(x string, rc ResourceConfig) {
	s.logf("reconfigure on %s: %+v", x, rc)
	s.queue = append(s.queue, func() { s.step(x, Reconfigure{At: s.now, Resource: rc}) })
	s.settle()
}

// TestReconfigurePreferredAndFailback: an adjust on both nodes makes b
// the preferred node of r0 with failback auto; the record takes the new
// preference once, and b takes r0 over by a switchover after
// FailbackAfter, with every acknowledged write.
func TestReconfigurePreferredAndFailback(t *testing.T) {
	s := started(t, nil)
	s.write("r0")
	rc := ResourceConfig{Name: "r0", Replicas: [2]string{"a", "b"}, Preferred: "b", Failback: FailbackAuto, FailbackAfter: 5 * time.Second}
	s.reconfigure("a", rc)
	s.reconfigure("b", rc)
	s.advance(time.Second)
	if got := s.rec.Resource("r0").Preferred; got != "b" {
		t.Fatalf("recorded preferred node %q, want b\n%s", got, s.dump())
	}
	defines := 0
	for _, a := range s.acts {
		if strings.HasPrefix(a.a.String(), "propose define r0") {
			defines++
		}
	}
	if defines == 0 || defines > 2 {
		t.Fatalf("%d defines of r0 proposed, want one per node at most", defines)
	}
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 moved before FailbackAfter: %v", got)
	}
	s.advance(6 * time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after FailbackAfter, want b\n%s", got, s.dump())
	}
	if s.acked["r0"] != s.nodes["b"].vols["r0"].version {
		t.Fatalf("the move lost writes")
	}
	// r1 was not reconfigured: it stays where it was.
	if got := s.serving("r1"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r1 served by %v", got)
	}
}

// TestReconfigureOnNoQuorum: a primary that lost quorum with suspend-io
// fails its I/O at once when an admin switches the policy to io-error,
// and resumes as before once quorum returns.
func TestReconfigureOnNoQuorum(t *testing.T) {
	s := started(t, nil)
	s.fenceOK = func(string) bool { return false } // b cannot take over
	s.setLink("a", "b", false)
	s.setLink("a", "w", false)
	s.advance(300 * time.Millisecond)
	s.mustOrder(t, "a", "suspend-io r0")
	for _, a := range s.actsOf("a") {
		if a == "fail-io r0" {
			t.Fatal("fail-io before the change")
		}
	}
	s.reconfigure("a", ResourceConfig{Name: "r0", Replicas: [2]string{"b", "a"}, Preferred: "a", OnNoQuorum: NoQuorumIOError})
	s.advance(100 * time.Millisecond)
	s.mustOrder(t, "a", "suspend-io r0", "fail-io r0")
	s.advance(3 * time.Second)
	s.completeFence()
	s.setLink("a", "w", true)
	s.advance(time.Second)
	s.mustOrder(t, "a", "suspend-io r0", "fail-io r0", "propose confirm-primary r0 node=a epoch=1", "resume-io r0")
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v after quorum returned", got)
	}
}

// TestReconfigureRefusals: other replicas, a preferred node without a
// replica, an unknown policy or resource change nothing and say why.
func TestReconfigureRefusals(t *testing.T) {
	s := started(t, nil)
	for _, c := range []struct {
		rc   ResourceConfig
		want string
	}{
		{ResourceConfig{Name: "r0", Replicas: [2]string{"a", "w"}}, "replicas"},
		{ResourceConfig{Name: "r0", Replicas: [2]string{"a", "b"}, Preferred: "w"}, "holds no replica"},
		{ResourceConfig{Name: "r0", Replicas: [2]string{"a", "b"}, OnNoQuorum: "freeze"}, "on-no-quorum"},
		{ResourceConfig{Name: "r0", Replicas: [2]string{"a", "b"}, Failback: "sometimes"}, "failback"},
		{ResourceConfig{Name: "r9", Replicas: [2]string{"a", "b"}}, "no replica of it"},
	} {
		s.alerts = nil
		s.reconfigure("a", c.rc)
		if !s.alerted("configuration change not applied") || !s.alerted(c.want) {
			t.Errorf("%+v: alerts %v, want one about %q", c.rc, s.alerts, c.want)
		}
	}
	s.advance(time.Second)
	if got := s.rec.Resource("r0").Preferred; got != "a" {
		t.Fatalf("recorded preferred node %q after refusals", got)
	}
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v", got)
	}
	for _, a := range s.actsOf("a") {
		if strings.HasPrefix(a, "propose define") {
			t.Fatalf("a refused change proposed %s", a)
		}
	}
}
