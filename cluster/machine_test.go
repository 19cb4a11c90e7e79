package cluster

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Scenario tests: each drives the simulated cluster through one script and
// checks the actions and the record; the simulator's safety checks run
// after every step as well.

// started is a cluster after boot: r0 on a, r1 on b, both in sync.
func started(t *testing.T, mutate func(*Config)) *sim {
	t.Helper()
	s := newSim(t, mutate)
	s.advance(time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v, want a\n%s", got, s.dump())
	}
	if got := s.serving("r1"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r1 served by %v, want b\n%s", got, s.dump())
	}
	s.acts = nil
	return s
}

// actsOf lists node's actions since the last reset, as strings.
func (s *sim) actsOf(node string) []string {
	var out []string
	for _, a := range s.acts {
		if a.node == node {
			out = append(out, a.a.String())
		}
	}
	return out
}

// firstAct returns when node first did an action whose text has prefix.
func (s *sim) firstAct(node, prefix string) (time.Time, bool) {
	for _, a := range s.acts {
		if a.node == node && strings.HasPrefix(a.a.String(), prefix) {
			return a.at, true
		}
	}
	return time.Time{}, false
}

func (s *sim) mustOrder(t *testing.T, node string, prefixes ...string) {
	t.Helper()
	idx := 0
	acts := s.actsOf(node)
	for _, p := range prefixes {
		found := false
		for ; idx < len(acts); idx++ {
			if strings.HasPrefix(acts[idx], p) {
				found = true
				idx++
				break
			}
		}
		if !found {
			t.Fatalf("%s: no %q after the earlier steps; actions:\n%s", node, p, strings.Join(acts, "\n"))
		}
	}
}

func (s *sim) alerted(substr string) bool {
	for _, a := range s.alerts {
		if strings.Contains(a, substr) {
			return true
		}
	}
	return false
}

func TestStartupPromotesPreferred(t *testing.T) {
	s := started(t, nil)
	for _, r := range []string{"r0", "r1"} {
		res := s.rec.Resource(r)
		if res.Epoch != 1 || res.State("a") != StateUpToDate || res.State("b") != StateUpToDate {
			t.Errorf("%s: %+v", r, res)
		}
	}
}

// The automatic failover sequence: primary dead -> fence it -> commit the
// fencing -> wait out its lease -> commit the new primary at epoch+1 ->
// promote -> claim the VIP.
func TestFailoverSequence(t *testing.T) {
	s := started(t, nil)
	s.crash("a")
	s.settle()
	s.advance(300 * time.Millisecond) // b's detector: 200 ms
	if _, ok := s.firstAct("b", "fence a [r0]"); !ok {
		t.Fatalf("b did not fence a: %v", s.actsOf("b"))
	}
	s.completeFence()
	s.advance(5 * time.Second)
	s.mustOrder(t, "b", "fence a [r0]", "propose fenced node=a", "propose promote r0 node=b epoch=2", "promote r0 epoch=2", "claim-vip r0")
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after failover", got)
	}
	res := s.rec.Resource("r0")
	if res.Epoch != 2 || res.Primary != "b" || res.LastFailover.How != "fenced" || res.LastFailover.From != "a" {
		t.Fatalf("record after failover: %+v %+v", res, res.LastFailover)
	}
	// Rule 7: a was powered off by the fencer, so b promotes as soon as
	// the confirmation commits, without waiting out a's lease (which
	// would end Lease + Margin after b last saw a).
	seen := simStart.Add(time.Second + 200*time.Millisecond)
	fenced, _ := s.firstAct("b", "propose fenced node=a")
	promoted, _ := s.firstAct("b", "promote r0")
	if !promoted.Equal(fenced) {
		t.Errorf("fence committed at %v, promoted at %v: waited after a confirmed power-off", fenced.Sub(simStart), promoted.Sub(simStart))
	}
	if promoted.After(seen.Add(DefaultLease)) {
		t.Errorf("promoted at %v, after a's lease would have ended", promoted.Sub(simStart))
	}
	// r1 was b's all along: untouched.
	if s.rec.Resource("r1").Epoch != 1 {
		t.Errorf("r1 epoch moved")
	}
}

// Rule 5: a failed fence blocks the promotion, alerts, and is retried;
// `fence confirm` unblocks it.
func TestFenceFailureBlocksUntilConfirmed(t *testing.T) {
	s := started(t, nil)
	s.fenceOK = func(string) bool { return false }
	s.crash("a")
	s.settle()
	for range 12 {
		s.advance(time.Second)
		s.completeFence()
	}
	if got := s.serving("r0"); len(got) != 0 {
		t.Fatalf("r0 served by %v while fencing fails", got)
	}
	if !s.alerted("fencing a failed") || !s.alerted("tandem fence confirm a") {
		t.Fatalf("no alert naming the failure and the way out: %v", s.alerts)
	}
	tries := 0
	for _, a := range s.actsOf("b") {
		if strings.HasPrefix(a, "fence a") {
			tries++
		}
	}
	if tries < 2 {
		t.Fatalf("fence tried %d times in 12 s (retry every %v)", tries, DefaultFenceRetry)
	}
	// The status says what is blocked, how often it failed and why.
	st := s.nodes["b"].m.Status()
	if len(st.Fencing) != 1 {
		t.Fatalf("b's status lists fencings %+v; want a's", st.Fencing)
	}
	if f := st.Fencing[0]; f.Node != "a" || !reflect.DeepEqual(f.Resources, []string{"r0"}) || f.Attempts != tries ||
		f.Since.IsZero() || f.LastError == "" {
		t.Fatalf("fencing status %+v; want a blocking r0, %d attempts since the first, the last error", f, tries)
	}
	s.admin("w", AdminRequest{ID: "fc", Op: AdminFenceConfirm, Node: "a"})
	if r := s.lastReply("fc"); r.Err != nil || !strings.Contains(r.Text, "manual") {
		t.Fatalf("fence confirm: %+v", r)
	}
	s.advance(time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after fence confirm", got)
	}
	if f := s.rec.Resource("r0").LastFailover; f.How != "fenced" {
		t.Errorf("last failover %+v", f)
	}
	if n := len(s.rec.Fences); n == 0 || s.rec.Fences[n-1].Method != "manual" || s.rec.Fences[n-1].By != "w" {
		t.Errorf("fence history %+v", s.rec.Fences)
	}
	if st := s.nodes["b"].m.Status(); len(st.Fencing) != 0 {
		t.Errorf("after the confirmation b's status still lists fencings %+v", st.Fencing)
	}
}

// Rule 4 and rule 3: a cut replication link alone fails nothing over; the
// primary marks its peer Outdated before the first write acknowledged
// without it; after the link returns and the resync ends, the peer is
// UpToDate again.
func TestLinkCutMarksOutdatedAndResyncRestores(t *testing.T) {
	s := started(t, nil)
	s.setData(false)
	s.write("r0")
	s.advance(10 * time.Second)
	s.mustOrder(t, "a", "propose mark-outdated r0 node=b epoch=1", "allow-degraded r0")
	if st := s.rec.Resource("r0").State("b"); st != StateOutdated {
		t.Fatalf("b is %s after a degraded write", st)
	}
	if s.acked["r0"] != 1 {
		t.Fatalf("degraded write not acknowledged")
	}
	if s.fenceActions != 0 || s.rec.Resource("r0").Epoch != 1 || s.rec.Resource("r1").Epoch != 1 {
		t.Fatalf("a link cut caused fencing (%d) or a promotion", s.fenceActions)
	}
	s.setData(true)
	s.resync("r0")
	s.advance(time.Second)
	if st := s.rec.Resource("r0").State("b"); st != StateUpToDate {
		t.Fatalf("b is %s after the resync", st)
	}
}

// Rule 3: an Outdated replica never promotes automatically; promote
// --force does, and says what it discards.
func TestOutdatedNeverPromotesAutomatically(t *testing.T) {
	s := started(t, nil)
	s.setData(false)
	s.write("r0")
	s.crash("a")
	s.settle()
	for range 20 {
		s.advance(time.Second)
		s.completeFence()
	}
	if got := s.serving("r0"); len(got) != 0 {
		t.Fatalf("Outdated b promoted: %v", got)
	}
	if !s.alerted("cannot take over") || !s.alerted("Outdated") {
		t.Fatalf("no alert: %v", s.alerts)
	}
	// The status says it too, as long as it holds.
	blocked := func() string {
		for _, r := range s.nodes["b"].m.Status().Resources {
			if r.Resource == "r0" {
				return r.Blocked
			}
		}
		return ""
	}
	if b := blocked(); !strings.Contains(b, "cannot take over") || !strings.Contains(b, "Outdated in the authority record") {
		t.Fatalf("b's status does not say why it does not take over: %q", b)
	}
	s.admin("b", AdminRequest{ID: "p1", Op: AdminPromote, Resource: "r0"})
	if r := s.lastReply("p1"); !errors.Is(r.Err, ErrNotUpToDate) || !strings.Contains(r.Err.Error(), "--force") {
		t.Fatalf("promote without force: %+v", r)
	}
	s.admin("b", AdminRequest{ID: "p2", Op: AdminPromote, Resource: "r0", Force: true})
	if r := s.lastReply("p2"); !errors.Is(r.Err, ErrNotFenced) || !strings.Contains(r.Err.Error(), "tandem fence confirm a") {
		t.Fatalf("promote --force over an unfenced primary: %+v", r)
	}
	// Force overrides the disk state, never the fencing.
	s.admin("w", AdminRequest{ID: "fc", Op: AdminFenceConfirm, Node: "a"})
	s.admin("b", AdminRequest{ID: "p2", Op: AdminPromote, Resource: "r0", Force: true})
	r := s.lastReply("p2")
	if r.Err != nil || !strings.Contains(r.Text, "acknowledged after that is lost") {
		t.Fatalf("promote --force: %+v", r)
	}
	if b := blocked(); b != "" {
		t.Fatalf("b, primary by force, still says it is blocked: %q", b)
	}
	res := s.rec.Resource("r0")
	if res.Primary != "b" || res.LastFailover.How != "forced" || res.LastFailover.Discarded == "" || res.State("a") != StateOutdated {
		t.Fatalf("record after forced promotion: %+v %+v", res, res.LastFailover)
	}
	// a comes back: Outdated, it neither promotes nor raises itself.
	s.boot("a")
	s.advance(5 * time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after a returned", got)
	}
}

// Rule 2: a primary that loses quorum suspends at once (io-error: fails
// I/O), and resumes only after a committed confirmation that nobody took
// over.
func TestQuorumLossSuspendsThenConfirms(t *testing.T) {
	for _, policy := range []NoQuorumPolicy{NoQuorumSuspend, NoQuorumIOError} {
		t.Run(string(policy), func(t *testing.T) {
			s := started(t, func(c *Config) { c.Resources[0].OnNoQuorum = policy })
			s.fenceOK = func(string) bool { return false } // b cannot take over
			s.setLink("a", "b", false)
			s.setLink("a", "w", false)
			s.advance(300 * time.Millisecond)
			if got := s.serving("r0"); len(got) != 0 {
				t.Fatalf("a still serves without quorum")
			}
			want := "suspend-io r0"
			if policy == NoQuorumIOError {
				want = "fail-io r0"
			}
			s.mustOrder(t, "a", want, "release-vip r0")
			s.advance(3 * time.Second)
			s.completeFence()
			s.setLink("a", "w", true)
			s.advance(time.Second)
			s.mustOrder(t, "a", want, "release-vip r0", "propose confirm-primary r0 node=a epoch=1", "resume-io r0", "claim-vip r0")
			if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
				t.Fatalf("r0 served by %v after quorum returned", got)
			}
		})
	}
}

// A primary cut off while the other side took over (here after an admin's
// manual fence confirmation) learns it on its return and steps down: the
// confirmation it needs to resume is refused.
func TestDeposedPrimaryStepsDown(t *testing.T) {
	s := started(t, nil)
	s.fenceOK = func(string) bool { return false }
	s.setLink("a", "b", false)
	s.setLink("a", "w", false)
	s.advance(time.Second)
	s.admin("w", AdminRequest{ID: "fc", Op: AdminFenceConfirm, Node: "a"})
	s.advance(5 * time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v", got)
	}
	s.setLink("a", "w", true)
	s.setLink("a", "b", true)
	s.advance(2 * time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after a returned", got)
	}
	// It learns either from the fencing entry or from the promotion,
	// whichever it applies first.
	if !s.alerted("deposed") && !s.alerted("confirmed off") {
		t.Fatalf("no deposed alert: %v", s.alerts)
	}
	for _, a := range s.actsOf("a") {
		if a == "resume-io r0" {
			t.Fatalf("deposed a resumed I/O")
		}
	}
}

// An admin's promotion still waits out the old primary's lease, even when
// a manual fence confirmation says it is off.
func TestAdminPromoteWaitsForLease(t *testing.T) {
	s := started(t, nil)
	s.fenceOK = func(string) bool { return false }
	s.setLink("a", "b", false)
	s.setLink("a", "w", false)
	s.advance(300 * time.Millisecond)
	s.admin("w", AdminRequest{ID: "fc", Op: AdminFenceConfirm, Node: "a"})
	s.admin("b", AdminRequest{ID: "p", Op: AdminPromote, Resource: "r0"})
	if r := s.lastReply("p"); !errors.Is(r.Err, ErrNotAllowed) || !strings.Contains(r.Err.Error(), "lease") {
		t.Fatalf("admin promote during the lease: %+v", r)
	}
	if got := s.serving("r0"); len(got) != 0 {
		t.Fatalf("r0 served by %v during a's lease", got)
	}
	s.advance(3 * time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after the lease", got)
	}
}

// switchover: stop I/O, wait until the peer is in sync, demote, promote,
// move the VIP.
func TestSwitchover(t *testing.T) {
	s := started(t, nil)
	s.admin("w", AdminRequest{ID: "so", Op: AdminSwitchover, Resource: "r0"})
	if r := s.lastReply("so"); r.Err != nil {
		t.Fatalf("switchover: %v", r.Err)
	}
	s.advance(time.Second)
	s.mustOrder(t, "a", "suspend-io r0", "demote r0", "release-vip r0", "propose demote r0 node=a epoch=1")
	s.mustOrder(t, "b", "propose promote r0 node=b epoch=2", "promote r0 epoch=2", "claim-vip r0")
	res := s.rec.Resource("r0")
	if res.Primary != "b" || res.Epoch != 2 || res.LastFailover.How != "demoted" || res.Target != "" {
		t.Fatalf("after switchover: %+v", res)
	}
	if s.fenceActions != 0 {
		t.Fatalf("a switchover fenced")
	}
	// Back, with --to.
	s.admin("b", AdminRequest{ID: "so2", Op: AdminSwitchover, Resource: "r0", Node: "a"})
	s.advance(time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v after switching back", got)
	}
}

// A switchover to a peer that is not in sync is cancelled with an alert,
// and the primary keeps serving.
func TestSwitchoverRefusedWhenPeerBehind(t *testing.T) {
	s := started(t, nil)
	s.setData(false)
	s.admin("w", AdminRequest{ID: "so", Op: AdminSwitchover, Resource: "r0", Node: "b"})
	s.advance(time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v", got)
	}
	if !s.alerted("switchover of r0 to b cancelled") || s.rec.Resource("r0").Target != "" {
		t.Fatalf("not cancelled: %v %+v", s.alerts, s.rec.Resource("r0"))
	}
	s.write("r0")
	s.admin("w", AdminRequest{ID: "so2", Op: AdminSwitchover, Resource: "r0", Node: "b"})
	if r := s.lastReply("so2"); !errors.Is(r.Err, ErrNotUpToDate) {
		t.Fatalf("switchover to an Outdated peer: %+v", r)
	}
}

// standby moves every resource off the node and keeps it off; unstandby
// does not move them back (failback is manual).
func TestStandby(t *testing.T) {
	s := started(t, nil)
	s.admin("w", AdminRequest{ID: "sb", Op: AdminStandby, Node: "a"})
	s.advance(2 * time.Second)
	for _, r := range []string{"r0", "r1"} {
		if got := s.serving(r); !reflect.DeepEqual(got, []string{"b"}) {
			t.Fatalf("%s served by %v with a in standby", r, got)
		}
	}
	s.crash("b")
	s.settle()
	for range 15 {
		s.advance(time.Second)
		s.completeFence()
	}
	if got := s.serving("r0"); len(got) != 0 {
		t.Fatalf("standby node took r0: %v", got)
	}
	s.boot("b")
	s.advance(3 * time.Second)
	s.admin("w", AdminRequest{ID: "usb", Op: AdminUnstandby, Node: "a"})
	s.advance(3 * time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after unstandby (failback is manual)", got)
	}
}

// Rule 6: failback: auto moves the resource back to its preferred node
// once it resynced and stayed healthy for FailbackAfter; manual never does.
func TestFailback(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(fmt.Sprint("auto=", auto), func(t *testing.T) {
			s := started(t, func(c *Config) {
				if auto {
					c.Resources[0].Failback = FailbackAuto
					c.Resources[0].FailbackAfter = 5 * time.Second
				}
			})
			s.crash("a")
			s.settle()
			s.advance(time.Second)
			s.completeFence()
			s.advance(5 * time.Second)
			if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
				t.Fatalf("no failover: %v", got)
			}
			s.write("r0")
			s.boot("a")
			s.advance(3 * time.Second)
			if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
				t.Fatalf("r0 moved back before the resync: %v", got)
			}
			s.resync("r0")
			s.advance(3 * time.Second)
			if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
				t.Fatalf("r0 moved back before FailbackAfter: %v", got)
			}
			s.advance(10 * time.Second)
			want := []string{"b"}
			if auto {
				want = []string{"a"}
			}
			if got := s.serving("r0"); !reflect.DeepEqual(got, want) {
				t.Fatalf("r0 served by %v, want %v", got, want)
			}
			if auto && s.acked["r0"] != s.nodes["a"].vols["r0"].version {
				t.Fatalf("failback lost writes")
			}
			if !auto {
				s.advance(DefaultFailbackAfter + 10*time.Second)
				if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
					t.Fatalf("manual failback: r0 moved to %v by itself", got)
				}
			}
		})
	}
}

// An admin demote holds the resource: nothing promotes it until an admin
// does.
func TestAdminDemoteHolds(t *testing.T) {
	s := started(t, nil)
	s.admin("b", AdminRequest{ID: "d0", Op: AdminDemote, Resource: "r0"})
	if r := s.lastReply("d0"); !errors.Is(r.Err, ErrNotPrimary) {
		t.Fatalf("demote on the secondary: %+v", r)
	}
	s.acts = nil
	s.admin("a", AdminRequest{ID: "d", Op: AdminDemote, Resource: "r0"})
	s.advance(5 * time.Second)
	if got := s.serving("r0"); len(got) != 0 || !s.rec.Resource("r0").Held {
		t.Fatalf("after demote: served by %v, record %+v", got, s.rec.Resource("r0"))
	}
	// One demote is proposed, the admin's, and it is answered as done:
	// a second one of the machine's own (the record still naming it
	// primary in the same step) used to win the race and make the
	// admin's refused ("not the primary") after the demote took place.
	if r := s.lastReply("d"); r.Err != nil {
		t.Fatalf("demote answered %v", r.Err)
	}
	demotes := 0
	for _, a := range s.actsOf("a") {
		if strings.HasPrefix(a, "propose demote r0") {
			demotes++
		}
	}
	if demotes != 1 {
		t.Fatalf("%d demotes of r0 proposed, want 1: %v", demotes, s.actsOf("a"))
	}
	s.admin("b", AdminRequest{ID: "p", Op: AdminPromote, Resource: "r0"})
	s.advance(time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) || s.rec.Resource("r0").Held {
		t.Fatalf("after promote: served by %v", got)
	}
}

// A primary that restarts before anyone noticed hands its epoch back with
// a demote of its own (it knows it is not serving); no fencing is needed,
// and it never acts on the promotion its earlier run proposed.
func TestRestartedPrimaryDemotesItself(t *testing.T) {
	s := started(t, nil)
	s.crash("a")
	s.boot("a")
	s.advance(2 * time.Second)
	if s.fenceActions != 0 {
		t.Fatalf("fenced a node that restarted unseen")
	}
	s.mustOrder(t, "a", "propose demote r0 node=a epoch=1", "propose promote r0 node=a epoch=2", "promote r0 epoch=2")
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v", got)
	}
}

// A failed disk on the primary hands the resource to the peer.
func TestPrimaryDiskFailure(t *testing.T) {
	s := started(t, nil)
	s.nodes["a"].vols["r0"].disk = DiskFailed
	s.settle()
	s.advance(time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after a's disk failed", got)
	}
	if st := s.rec.Resource("r0").State("a"); st != StateFailed {
		t.Fatalf("a's replica is %s in the record", st)
	}
}

// A witness drives no resource, but relays admin commands.
func TestWitnessRelaysAdmin(t *testing.T) {
	s := started(t, nil)
	s.admin("w", AdminRequest{ID: "x", Op: AdminPromote, Resource: "r0"})
	if r := s.lastReply("x"); !errors.Is(r.Err, ErrNoReplica) {
		t.Fatalf("promote on the witness: %+v", r)
	}
	s.admin("w", AdminRequest{ID: "y", Op: "reboot"})
	if r := s.lastReply("y"); !errors.Is(r.Err, ErrBadCommand) {
		t.Fatalf("unknown op: %+v", r)
	}
	s.admin("w", AdminRequest{ID: "z", Op: AdminFenceConfirm, Node: "w"})
	if r := s.lastReply("z"); !errors.Is(r.Err, ErrNotAllowed) {
		t.Fatalf("fence confirm of a non-primary: %+v", r)
	}
}

func TestMachineConfig(t *testing.T) {
	ok := Config{Node: "a", Voters: []string{"a", "b", "w"}, Resources: []ResourceConfig{{Name: "r0", Replicas: [2]string{"a", "b"}}}}
	if _, err := NewMachine(ok); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	cases := map[string]func(*Config){
		"node not a voter":      func(c *Config) { c.Node = "z" },
		"two voters":            func(c *Config) { c.Voters = []string{"a", "b"} },
		"four voters":           func(c *Config) { c.Voters = []string{"a", "b", "c", "w"} },
		"margin below the tick": func(c *Config) { c.Margin = time.Millisecond },
		"negative lease":        func(c *Config) { c.Lease = -time.Second },
		"replica not a voter":   func(c *Config) { c.Resources[0].Replicas[1] = "z" },
		"same replica twice":    func(c *Config) { c.Resources[0].Replicas[1] = "a" },
		"preferred elsewhere":   func(c *Config) { c.Resources[0].Preferred = "w" },
		"duplicate resource":    func(c *Config) { c.Resources = append(c.Resources, c.Resources[0]) },
		"bad on-no-quorum":      func(c *Config) { c.Resources[0].OnNoQuorum = "panic" },
		"bad failback":          func(c *Config) { c.Resources[0].Failback = "sometimes" },
	}
	for name, mutate := range cases {
		c := ok
		c.Resources = append([]ResourceConfig(nil), ok.Resources...)
		mutate(&c)
		if _, err := NewMachine(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if ok.Resources[0].OnNoQuorum != "" {
		t.Errorf("NewMachine wrote its defaults into the caller's config")
	}
}

// Single-machine table: events in, actions out, for the decisions that do
// not need a cluster around them.
func TestMachineTable(t *testing.T) {
	at := func(d time.Duration) time.Time { return simStart.Add(d) }
	base := Config{Node: "b", Boot: "1", Voters: []string{"a", "b", "w"},
		Resources: []ResourceConfig{{Name: "r0", Replicas: [2]string{"a", "b"}, Preferred: "a"}}}
	// rec: a primary at epoch 1, both UpToDate.
	recA := running(t)
	commit := func(r *Record) Event {
		return Committed{At: at(0), Cmd: Command{ID: "x/0/1", Op: OpPromote}, Record: r}
	}
	alive := func(n string, d time.Duration) Event { return MemberChange{At: at(d), Node: n, State: MemberAlive} }
	dead := func(n string, d time.Duration) Event { return MemberChange{At: at(d), Node: n, State: MemberDead} }
	vol := func(d time.Duration, disk DiskState, conn bool) Event {
		return VolumeReport{At: at(d), Resource: "r0", State: VolumeState{Disk: disk, Connected: conn, PeerDisk: DiskUpToDate}}
	}
	cases := []struct {
		name   string
		events []Event
		want   []string // prefixes expected in the last step's actions, in order
		never  []string // prefixes that must not appear in any step
	}{
		{"secondary with a live primary does nothing",
			[]Event{commit(recA), alive("a", 0), alive("w", 0), vol(0, DiskUpToDate, true), Tick{At: at(time.Second)}},
			nil, []string{"propose promote", "fence"}},
		{"dead primary is fenced at once",
			[]Event{commit(recA), alive("a", 0), alive("w", 0), vol(0, DiskUpToDate, true), dead("a", time.Second)},
			[]string{"fence a [r0]"}, []string{"propose promote"}},
		{"no promotion while fencing fails",
			[]Event{commit(recA), alive("a", 0), alive("w", 0), vol(0, DiskUpToDate, true), dead("a", time.Second),
				FenceResult{At: at(2 * time.Second), Node: "a", Epochs: map[string]uint64{"r0": 1}, Err: errors.New("BMC unreachable")},
				Tick{At: at(10 * time.Second)}},
			nil, []string{"propose promote"}},
		// Rule 7: after a power-off the fencer confirmed, the promotion is
		// proposed at once; after a manual confirmation only once a's lease
		// (Lease + Margin after b last saw it) has run out.
		{"a powered-off primary is replaced without waiting for its lease",
			[]Event{commit(recA), alive("a", 0), alive("w", 0), vol(0, DiskUpToDate, true), dead("a", time.Second),
				commit(mustApply(t, recA, fenced("a", "b", 1)))},
			[]string{"propose promote r0 node=b epoch=2"}, nil},
		{"a manually confirmed primary is replaced only after its lease",
			[]Event{commit(recA), alive("a", 0), alive("w", 0), vol(0, DiskUpToDate, true), dead("a", time.Second),
				commit(mustApply(t, recA, manualFenced("a", 1))),
				Tick{At: at(time.Second + DefaultLease + DefaultMargin - DefaultTickInterval)}},
			nil, []string{"propose promote"}},
		{"a manually confirmed primary is replaced once its lease ran out",
			[]Event{commit(recA), alive("a", 0), alive("w", 0), vol(0, DiskUpToDate, true), dead("a", time.Second),
				commit(mustApply(t, recA, manualFenced("a", 1))),
				Tick{At: at(time.Second + DefaultLease + DefaultMargin)}},
			[]string{"propose promote r0 node=b epoch=2"}, nil},
		{"suspect is not dead",
			[]Event{commit(recA), alive("a", 0), alive("w", 0), vol(0, DiskUpToDate, true),
				MemberChange{At: at(time.Second), Node: "a", State: MemberSuspect}, Tick{At: at(10 * time.Second)}},
			nil, []string{"fence", "propose promote"}},
		{"no quorum, no fencing",
			[]Event{commit(recA), alive("a", 0), vol(0, DiskUpToDate, true), dead("a", time.Second), Tick{At: at(10 * time.Second)}},
			nil, []string{"fence", "propose"}},
		{"unknown peer is given the startup grace",
			[]Event{commit(recA), alive("w", 0), vol(0, DiskUpToDate, false), Tick{At: at(DefaultStartupGrace - time.Second)}},
			nil, []string{"fence"}},
		{"unknown peer after the startup grace is fenced",
			[]Event{commit(recA), alive("w", 0), vol(0, DiskUpToDate, false), Tick{At: at(DefaultStartupGrace)}},
			[]string{"fence a"}, nil},
		{"a Degraded request on a secondary is refused",
			[]Event{commit(recA), alive("a", 0), alive("w", 0), DegradedRequest{At: at(0), Resource: "r0"}},
			[]string{"refuse-degraded r0"}, nil},
		{"volume primary without a promotion is demoted",
			[]Event{commit(recA), VolumeReport{At: at(0), Resource: "r0", State: VolumeState{Disk: DiskUpToDate, Primary: true}}},
			[]string{"demote r0"}, nil},
		{"a local disk worse than the record is reported",
			[]Event{commit(recA), alive("a", 0), alive("w", 0), vol(0, DiskInconsistent, false)},
			[]string{"propose report-disk r0 node=b state=Inconsistent"}, nil},
		{"a local disk better than the record is not",
			[]Event{commit(mustApply(t, recA, markOutdated("a", "b", 1))), alive("a", 0), alive("w", 0), vol(0, DiskUpToDate, false)},
			nil, []string{"propose report-disk"}},
		{"connected but Outdated asks for a resync",
			[]Event{commit(recA), alive("a", 0), alive("w", 0), vol(0, DiskOutdated, true)},
			[]string{"start-resync r0"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewMachine(base)
			if err != nil {
				t.Fatal(err)
			}
			var last []string
			for _, ev := range tc.events {
				last = nil
				for _, a := range m.Step(ev).Actions {
					s := a.String()
					last = append(last, s)
					for _, bad := range tc.never {
						if strings.HasPrefix(s, bad) {
							t.Fatalf("after %T: unexpected %q", ev, s)
						}
					}
				}
			}
			i := 0
			for _, w := range tc.want {
				for i < len(last) && !strings.HasPrefix(last[i], w) {
					i++
				}
				if i == len(last) {
					t.Fatalf("last step did %v, want %v", last, tc.want)
				}
			}
		})
	}
}

// A refused VIP claim keeps I/O suspended and is retried; a later success
// resumes.
func TestVIPClaimRefused(t *testing.T) {
	s := started(t, nil)
	s.queue = append(s.queue, func() {
		s.step("a", VIPResult{At: s.now, Resource: "r0", Err: errors.New("address in use by 02:00:00:00:00:02")})
	})
	s.settle()
	if got := s.serving("r0"); len(got) != 0 {
		t.Fatalf("r0 served by %v with its VIP refused", got)
	}
	if !s.alerted("claiming the service address failed") {
		t.Fatalf("no alert: %v", s.alerts)
	}
	s.acts = nil
	s.advance(DefaultFenceRetry + time.Second)
	s.mustOrder(t, "a", "claim-vip r0")
	s.queue = append(s.queue, func() { s.step("a", VIPResult{At: s.now, Resource: "r0"}) })
	s.settle()
	s.mustOrder(t, "a", "claim-vip r0", "resume-io r0")
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v after the claim succeeded", got)
	}
}

// solo drives one machine against a private log: every Propose is applied
// to rec (or refused, or failed, as the test says) and fed back.
type solo struct {
	t    *testing.T
	m    *Machine
	rec  *Record
	now  time.Time
	acts []string
	// refuse, if set, answers a proposal with this refusal and this record
	// instead of applying it.
	refuse func(Command) (*Record, error)
	// fail, if set and returning an error, answers ProposalFailed.
	fail func(Command) error
}

func newSolo(t *testing.T, node string) *solo {
	m, err := NewMachine(Config{Node: node, Boot: "1", Voters: []string{"a", "b", "w"},
		Resources: []ResourceConfig{{Name: "r0", Replicas: [2]string{"a", "b"}, Preferred: "a"}}})
	if err != nil {
		t.Fatal(err)
	}
	return &solo{t: t, m: m, rec: NewRecord(), now: simStart}
}

func (s *solo) step(ev Event) {
	queue := []Event{ev}
	for len(queue) > 0 {
		ev, queue = queue[0], queue[1:]
		for _, a := range s.m.Step(ev).Actions {
			s.acts = append(s.acts, a.String())
			p, ok := a.(Propose)
			if !ok {
				continue
			}
			if s.fail != nil {
				if err := s.fail(p.Cmd); err != nil {
					queue = append(queue, ProposalFailed{At: s.now, ID: p.Cmd.ID, Err: err})
					continue
				}
			}
			if s.refuse != nil {
				if rec, err := s.refuse(p.Cmd); err != nil {
					s.rec = rec
					queue = append(queue, Committed{At: s.now, Cmd: p.Cmd, Err: err, Record: rec})
					continue
				}
			}
			next, err := Apply(s.rec, p.Cmd)
			s.rec = next
			queue = append(queue, Committed{At: s.now, Cmd: p.Cmd, Err: err, Record: next})
		}
	}
}

func (s *solo) at(d time.Duration) time.Time { s.now = simStart.Add(d); return s.now }

func (s *solo) did(prefix string) bool {
	for _, a := range s.acts {
		if strings.HasPrefix(a, prefix) {
			return true
		}
	}
	return false
}

// primaryA is machine a, primary of r0 at epoch 1 with b connected.
func primaryA(t *testing.T) *solo {
	s := newSolo(t, "a")
	s.step(MemberChange{At: s.at(0), Node: "b", State: MemberAlive})
	s.step(MemberChange{At: s.at(0), Node: "w", State: MemberAlive})
	s.step(VolumeReport{At: s.at(0), Resource: "r0", State: VolumeState{Disk: DiskUpToDate, Connected: true, PeerDisk: DiskUpToDate}})
	s.rec = mustApply(t, s.rec, report("b", StateUpToDate))
	s.step(Committed{At: s.at(0), Cmd: Command{ID: "b/1/1"}, Record: s.rec})
	s.step(Tick{At: s.at(time.Second)})
	if !s.did("promote r0 epoch=1") {
		t.Fatalf("a did not become primary: %v", s.acts)
	}
	s.acts = nil
	return s
}

// takenOver is the record after b took r0 over at epoch 2.
func takenOver(t *testing.T, rec *Record) *Record {
	return mustApply(t, rec, fenced("a", "b", 1), promote("b", 2))
}

// A MarkOutdated refused because the primary was deposed never lets the
// degraded write through.
func TestDeposedPrimaryRefusesDegradedWrite(t *testing.T) {
	s := primaryA(t)
	s.refuse = func(c Command) (*Record, error) {
		if c.Op == OpMarkOutdated {
			return takenOver(t, s.rec), ErrStaleEpoch
		}
		return nil, nil
	}
	s.step(DegradedRequest{At: s.at(2 * time.Second), Resource: "r0"})
	if s.did("allow-degraded") || !s.did("refuse-degraded r0") || !s.did("demote r0") {
		t.Fatalf("actions: %v", s.acts)
	}
}

// After a quorum loss the primary resumes only on a committed
// confirm-primary: a failed proposal keeps it suspended, a refusal demotes.
func TestResumeNeedsCommittedConfirmation(t *testing.T) {
	s := primaryA(t)
	s.step(MemberChange{At: s.at(2 * time.Second), Node: "b", State: MemberDead})
	s.step(MemberChange{At: s.at(2 * time.Second), Node: "w", State: MemberDead})
	if !s.did("suspend-io r0") {
		t.Fatalf("no suspend: %v", s.acts)
	}
	s.acts = nil
	// Quorum is back but the log is unreachable: nothing resumes.
	s.fail = func(c Command) error { return errors.New("no leader") }
	s.step(MemberChange{At: s.at(3 * time.Second), Node: "w", State: MemberAlive})
	s.step(Tick{At: s.at(3*time.Second + 200*time.Millisecond)})
	if !s.did("propose confirm-primary r0 node=a epoch=1") || s.did("resume-io") {
		t.Fatalf("actions: %v", s.acts)
	}
	// The log answers: someone else took over meanwhile.
	s.fail = nil
	s.refuse = func(c Command) (*Record, error) {
		if c.Op == OpConfirmPrimary {
			return takenOver(t, s.rec), ErrStaleEpoch
		}
		return nil, nil
	}
	s.acts = nil
	s.step(Tick{At: s.at(4 * time.Second)})
	if s.did("resume-io") || !s.did("demote r0") {
		t.Fatalf("actions: %v", s.acts)
	}
}

// The failure detector calls the primary dead while the replication link
// still hears it (a stalled detector on a loaded host, or gossip alone
// cut): the secondary does not fence it for LinkVeto; past it, a primary
// cut from the gossip network only is failed over as usual.
func TestLiveReplicationLinkVetoesADeathForAWhile(t *testing.T) {
	s := started(t, nil)
	cut := s.now
	s.setLink("a", "b", false)
	s.setLink("a", "w", false) // a is gone for gossip; the data link is up
	s.advance(DefaultLinkVeto - time.Second)
	if at, ok := s.firstAct("b", "fence a"); ok {
		t.Fatalf("b fenced a %v after the gossip cut, while the replication link still heard it: %v", at.Sub(cut), s.actsOf("b"))
	}
	if got := s.serving("r0"); len(got) > 0 && got[0] == "b" {
		t.Fatalf("b took r0 during the veto")
	}
	s.advance(2 * time.Second)
	at, ok := s.firstAct("b", "fence a [r0]")
	if !ok {
		t.Fatalf("b never fenced a after the veto ran out: %v", s.actsOf("b"))
	}
	if at.Before(cut.Add(DefaultLinkVeto)) {
		t.Fatalf("b fenced a %v after the cut, before the veto (%v) ran out", at.Sub(cut), DefaultLinkVeto)
	}
	s.completeFence()
	s.advance(5 * time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after the veto and the fence, want b\n%s", got, s.dump())
	}
}

// manualFenced is an operator's `fence confirm` of node at epoch.
func manualFenced(node string, epoch uint64) Command {
	c := fenced(node, "w", epoch)
	c.Method = "manual"
	return c
}

// A false alarm: b declares a dead (a is cut off for a moment, the
// replication link too) and starts fencing it; a is seen Alive again
// before the fence completes: b cancels it, raises no fencing alert, and a
// keeps r0.
func TestFenceInFlightCanceledWhenThePrimaryComesBack(t *testing.T) {
	s := started(t, nil)
	s.setData(false)
	s.setLink("a", "b", false)
	s.setLink("a", "w", false)
	s.advance(300 * time.Millisecond)
	if _, ok := s.firstAct("b", "fence a [r0]"); !ok {
		t.Fatalf("b did not start fencing a: %v", s.actsOf("b"))
	}
	s.setLink("a", "b", true)
	s.setLink("a", "w", true)
	s.setData(true)
	s.advance(2 * time.Second)
	s.mustOrder(t, "b", "fence a [r0]", "cancel-fence a")
	if s.alerted("fencing a failed") {
		t.Fatalf("a canceled fence raised a fencing alert: %v", s.alerts)
	}
	if !s.nodes["a"].up {
		t.Fatal("a was powered off although the fence was canceled")
	}
	s.advance(10 * time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v after the false alarm, want a\n%s", got, s.dump())
	}
	if _, ok := s.firstAct("b", "promote r0"); ok {
		t.Fatalf("b promoted r0 after a false alarm: %v", s.actsOf("b"))
	}
}

// A person confirms the isolated primary off by mistake just after it came
// back for a moment through the witness and confirmed itself, too briefly
// for the survivor's failure detector to see it: the survivor must wait
// the primary's lease out from that committed entry, not from when its
// detector last saw it. The simulator fails the test if both ever serve.
func TestWrongConfirmAfterPrimaryBrieflyReturned(t *testing.T) {
	delay := func(to, about string) time.Duration {
		switch {
		case to == "b" && about == "a":
			return simDetectMax
		case to == "a" && about == "w":
			return 100 * time.Millisecond
		}
		return 0
	}
	s := newSimWith(t, nil, delay, func(string) bool { return false })
	s.advance(time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v, want a\n%s", got, s.dump())
	}
	s.setLink("a", "b", false)
	s.setLink("a", "w", false)
	s.advance(3 * time.Second) // a suspended; b's fencing of a fails
	s.acts = nil
	s.setLink("a", "w", true)
	s.advance(200 * time.Millisecond)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v once a regained quorum, want a\n%s", got, s.dump())
	}
	s.setLink("a", "w", false)
	s.admin("b", AdminRequest{ID: "fc", Op: AdminFenceConfirm, Node: "a"})
	s.advance(5 * time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after the confirmation, want b\n%s", got, s.dump())
	}
}

// The same mistake while the primary still reaches the witness: the
// fencing entry reaches it too, and it steps down at once instead of
// serving on a lease its peer no longer honours. (Its clean demotion then
// lets the preferred node, a itself, be promoted afresh.)
func TestWronglyConfirmedPrimaryStepsDown(t *testing.T) {
	s := started(t, nil)
	s.setLink("a", "b", false)
	s.advance(time.Second)
	s.admin("w", AdminRequest{ID: "fc", Op: AdminFenceConfirm, Node: "a"})
	s.advance(5 * time.Second)
	if !s.alerted("confirmed off") {
		t.Fatalf("a did not say it was recorded off: %v\n%s", s.alerts, s.dump())
	}
	if got := s.serving("r0"); len(got) != 1 || s.rec.Resource("r0").Epoch < 2 {
		t.Fatalf("r0 served by %v at epoch %d, want one node at a new epoch\n%s", got, s.rec.Resource("r0").Epoch, s.dump())
	}
}

// Rule 4 with a stall: the replication link alone is cut (a and b still
// see each other through w), and seconds later a stalls long enough for
// the detector, which runs on w's indirect probes alone since the cut, to
// call it dead. b does not fence it for LinkVeto after it left Alive: a
// comes back within it and keeps r0, nobody fenced.
func TestDeathAfterACutWaitsLinkVeto(t *testing.T) {
	s := started(t, nil)
	s.setData(false)
	s.advance(3 * time.Second)
	stall := s.now
	s.setLink("a", "b", false)
	s.setLink("a", "w", false)
	s.advance(DefaultLinkVeto - 2*time.Second)
	if at, ok := s.firstAct("b", "fence a"); ok {
		t.Fatalf("b fenced a %v after it stalled, seconds after a cut of the link alone: %v", at.Sub(stall), s.actsOf("b"))
	}
	s.setLink("a", "b", true)
	s.setLink("a", "w", true)
	s.advance(10 * time.Second)
	if s.fenceActions != 0 {
		t.Fatalf("a cut and a stall caused %d fencing actions: %v", s.fenceActions, s.actsOf("b"))
	}
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("r0 served by %v after the stall, want a\n%s", got, s.dump())
	}
}

// A real death after a cut (b still UpToDate: a wrote nothing alone) is
// failed over, LinkVeto after a left Alive; a crash that takes the link
// down with it is fenced at once (TestFenceInFlightCanceledWhenThePrimaryComesBack).
func TestCrashAfterACutFailsOverAfterLinkVeto(t *testing.T) {
	s := started(t, nil)
	s.setData(false)
	s.advance(3 * time.Second)
	crashed := s.now
	s.crash("a")
	s.advance(DefaultLinkVeto + 2*time.Second)
	at, ok := s.firstAct("b", "fence a [r0]")
	if !ok {
		t.Fatalf("b never fenced a, dead after a cut: %v", s.actsOf("b"))
	}
	if at.Before(crashed.Add(DefaultLinkVeto)) {
		t.Fatalf("b fenced a %v after its death, before LinkVeto (%v) after a cut", at.Sub(crashed), DefaultLinkVeto)
	}
	s.completeFence()
	s.advance(5 * time.Second)
	if got := s.serving("r0"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("r0 served by %v after a died, want b\n%s", got, s.dump())
	}
}

// The volume asks for a degraded write before the manager's next poll
// says the link is gone (the session's waiters fail before its state
// changes): the last report still reads Connected with the peer UpToDate.
// The committed mark-outdated must not be undone by a mark-uptodate made
// from that stale report, or the record would call the peer UpToDate
// while writes go on without it (rule 3).
func TestStaleConnectedReportDoesNotUndoMarkOutdated(t *testing.T) {
	s := primaryA(t)
	s.rec = mustApply(t, s.rec, report("b", StateUpToDate))
	s.step(Committed{At: s.at(time.Second), Cmd: Command{ID: "b/1/2"}, Record: s.rec})
	s.step(DegradedRequest{At: s.at(2 * time.Second), Resource: "r0"})
	if !s.did("allow-degraded r0") {
		t.Fatalf("the degraded write was not allowed: %v", s.acts)
	}
	for i := range 5 {
		s.step(Tick{At: s.at(3*time.Second + time.Duration(i)*200*time.Millisecond)})
	}
	if st := s.rec.Resource("r0").State("b"); st != StateOutdated || s.did("propose mark-uptodate") {
		t.Fatalf("b is %s in the record after a degraded write; actions: %v", st, s.acts)
	}
	// The poll catches up (link down), later a resync brings b back: only
	// then is it UpToDate again.
	s.step(VolumeReport{At: s.at(5 * time.Second), Resource: "r0", State: VolumeState{Disk: DiskUpToDate, Primary: true, PeerDisk: DiskUnknown}})
	// A poll may miss a short resync altogether: the next session's
	// Connected report is enough, the old one's never.
	s.step(VolumeReport{At: s.at(6 * time.Second), Resource: "r0", State: VolumeState{Disk: DiskUpToDate, Primary: true, Connected: true, PeerDisk: DiskUpToDate}})
	if st := s.rec.Resource("r0").State("b"); st != StateOutdated {
		t.Fatalf("b is %s on a report of the session that ended; actions: %v", st, s.acts)
	}
	s.step(VolumeReport{At: s.at(7 * time.Second), Resource: "r0", State: VolumeState{Disk: DiskUpToDate, Primary: true, Connected: true, PeerDisk: DiskUpToDate, PeerHeard: true, Session: 1}})
	if st := s.rec.Resource("r0").State("b"); st != StateUpToDate {
		t.Fatalf("b is %s after the resync; actions: %v", st, s.acts)
	}
}
