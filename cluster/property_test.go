package cluster

import (
	"fmt"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// faults says which kinds of trouble a random history may contain.
type faults struct {
	crashes, partitions, fenceFailures, admin, lyingConfirms bool
}

var allFaults = faults{crashes: true, partitions: true, fenceFailures: true, admin: true, lyingConfirms: true}

// randomSim builds a simulator whose detector delays and fence outcomes
// are drawn by rapid.
func randomSim(rt *rapid.T, f faults) *sim {
	delay := func(string, string) time.Duration {
		return rapid.SampledFrom([]time.Duration{0, 50 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, simDetectMax}).Draw(rt, "delay")
	}
	fenceOK := func(string) bool {
		return !f.fenceFailures || rapid.IntRange(0, 3).Draw(rt, "fence-ok") > 0
	}
	return newSimWith(rt, nil, delay, fenceOK)
}

// randomStep applies one random event to the simulated cluster; the
// simulator checks the safety rules after each.
func randomStep(rt *rapid.T, s *sim, f faults) {
	nodes := []string{"a", "b", "w"}
	node := func(label string) string { return rapid.SampledFrom(nodes).Draw(rt, label) }
	res := func() string { return rapid.SampledFrom(s.res).Draw(rt, "resource") }
	kinds := []string{"advance", "advance", "advance", "write", "write", "resync", "data-link", "cut-under-write", "fence"}
	if f.crashes {
		kinds = append(kinds, "crash", "restart")
	}
	if f.partitions {
		kinds = append(kinds, "link", "link", "isolate", "heal-node")
	}
	if f.admin {
		kinds = append(kinds, "admin")
	}
	switch kind := rapid.SampledFrom(kinds).Draw(rt, "kind"); kind {
	case "advance":
		s.advance(rapid.SampledFrom([]time.Duration{
			time.Millisecond, 30 * time.Millisecond, 150 * time.Millisecond, 400 * time.Millisecond,
			time.Second, 2 * time.Second, 3 * time.Second, 6 * time.Second,
		}).Draw(rt, "dt"))
	case "write":
		s.write(res())
	case "resync":
		s.resync(res())
	case "data-link":
		s.setData(rapid.Bool().Draw(rt, "up"))
	case "cut-under-write":
		s.cutUnderWrite(res())
	case "fence":
		s.completeFence()
	case "crash":
		s.crash(node("node"))
		s.settle()
	case "restart":
		if x := node("node"); !s.nodes[x].up {
			s.boot(x)
			s.settle()
		}
	case "link":
		x := node("x")
		y := node("y")
		if x != y {
			s.setLink(x, y, rapid.Bool().Draw(rt, "up"))
		}
	case "isolate", "heal-node":
		x := node("node")
		for _, y := range nodes {
			if y != x {
				s.links[mkpair(x, y)] = kind == "heal-node"
			}
		}
		s.logf("%s %s", kind, x)
		s.settle()
	case "admin":
		randomAdmin(rt, s, f)
	}
}

func randomAdmin(rt *rapid.T, s *sim, f faults) {
	ops := []AdminOp{AdminPromote, AdminDemote, AdminSwitchover, AdminStandby, AdminUnstandby}
	if f.lyingConfirms {
		ops = append(ops, AdminFenceConfirm)
	}
	op := rapid.SampledFrom(ops).Draw(rt, "admin-op")
	at := rapid.SampledFrom([]string{"a", "b", "w"}).Draw(rt, "admin-at")
	req := AdminRequest{ID: fmt.Sprint(len(s.trace)), Op: op, Resource: rapid.SampledFrom(s.res).Draw(rt, "admin-res")}
	switch op {
	case AdminPromote:
		req.Force = rapid.Bool().Draw(rt, "force")
	case AdminSwitchover:
		req.Node = rapid.SampledFrom([]string{"", "a", "b"}).Draw(rt, "to")
	case AdminStandby, AdminUnstandby, AdminFenceConfirm:
		req.Node = rapid.SampledFrom([]string{"a", "b"}).Draw(rt, "admin-node")
	}
	s.admin(at, req)
}

// heal ends all faults and lets the cluster settle: then every resource
// that no admin holds down must be served by exactly one node.
func heal(s *sim) {
	for p := range s.links {
		s.links[p] = true
	}
	s.dataUp = true
	for _, x := range s.names {
		if !s.nodes[x].up {
			s.boot(x)
		}
	}
	s.fenceOK = func(string) bool { return true }
	s.settle()
	for _, x := range s.data {
		s.admin("w", AdminRequest{ID: "heal-unstandby-" + x, Op: AdminUnstandby, Node: x})
	}
	for range 40 {
		s.advance(time.Second)
		for len(s.fences) > 0 {
			s.completeFence()
		}
		for _, x := range s.names {
			if !s.nodes[x].up {
				s.boot(x)
			}
		}
		for _, r := range s.res {
			s.resync(r)
		}
	}
}

func checkLive(s *sim) {
	for _, r := range s.res {
		res := s.rec.Resource(r)
		if res == nil {
			s.fail("%s never defined", r)
		}
		if res.Held || (res.State("a") != StateUpToDate && res.State("b") != StateUpToDate) {
			continue // an admin holds it, or only a forced promotion can bring it back
		}
		if got := s.serving(r); len(got) != 1 {
			s.fail("after healing, %s is served by %v (record: primary %q epoch %d, states a=%s b=%s)",
				r, got, res.Primary, res.Epoch, res.State("a"), res.State("b"))
		}
	}
}

// TestSafetyUnderRandomFaults drives two data nodes and a witness through
// random crashes, partitions, replication link cuts, fence failures, admin
// commands (including manual fence confirmations an admin got wrong) and
// clock advances. After every step the simulator checks: never two nodes
// serving a resource at once; no primary serving longer than the detection
// delay after it lost quorum; epochs only grow, by one per promotion; no
// automatic promotion of a replica that is not UpToDate, and no promotion
// without force that loses an acknowledged write; promotion only over a
// fenced or demoted primary, and an automatic fence confirmation only after
// a real power-off. After healing, every resource is served again.
func TestSafetyUnderRandomFaults(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		s := randomSim(rt, allFaults)
		for range rapid.IntRange(10, 80).Draw(rt, "steps") {
			randomStep(rt, s, allFaults)
		}
		heal(s)
		checkLive(s)
	})
}

// TestLinkCutAloneNeverFailsOver: with both data nodes seeing the witness,
// cutting and restoring the replication link, with writes and resyncs in
// between, never fences and never promotes beyond the first promotions.
func TestLinkCutAloneNeverFailsOver(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		s := randomSim(rt, faults{})
		s.advance(3 * time.Second)
		first := s.promotions
		for range rapid.IntRange(10, 60).Draw(rt, "steps") {
			randomStep(rt, s, faults{})
			if s.fenceActions > 0 || s.promotions != first {
				s.fail("a replication link cut caused fencing (%d) or a promotion (%d -> %d)", s.fenceActions, first, s.promotions)
			}
		}
	})
}
