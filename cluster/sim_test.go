package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The simulator runs one Machine per node (two data nodes and a witness)
// against simulated parts: a failure detector with per-observer delays and
// indirect probes through the third node, a replicated log that applies a
// proposal only when its proposer is in the majority component, a fencer
// that really powers nodes off (or fails), replicas that hold a version
// number standing for their data, and a replication link that can be cut on
// its own. After every step it checks the safety rules against what the
// simulated world did, not against what the machines believe.

// tb is what the simulator needs of *testing.T and *rapid.T.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

const (
	simTick = 100 * time.Millisecond
	// simDetectMax bounds the failure detector's delay; the machines'
	// margin must cover it.
	simDetectMax = 500 * time.Millisecond
)

var simStart = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

type pair struct{ x, y string }

func mkpair(x, y string) pair {
	if x > y {
		x, y = y, x
	}
	return pair{x, y}
}

type simVol struct {
	version   uint64 // the data: every acknowledged write increments it
	disk      DiskState
	primary   bool
	epoch     uint64
	suspended bool
	syncing   bool   // this side is the sync target
	degraded  bool   // allowed to acknowledge writes without the peer
	asked     bool   // a DegradedRequest is outstanding
	sessions  uint64 // replication sessions since this run's boot
}

type simNode struct {
	name      string
	m         *Machine
	up        bool
	boot      int
	perceived map[string]MemberState
	// told and aliveUntil: what its machine was told of each node, and
	// when it was last told Alive while it is not now (its boot, for a
	// node never seen). perceived runs ahead of them while the
	// MemberChange waits in the queue.
	told       map[string]MemberState
	aliveUntil map[string]time.Time
	delivered  int
	vols       map[string]*simVol
	lastReport map[string]VolumeState
}

type note struct {
	to, about string
	state     MemberState
	due       time.Time
}

type fenceJob struct {
	by, target string
	epochs     map[string]uint64
}

type sim struct {
	t         tb
	base      Config
	now       time.Time
	names     []string
	data      []string
	nodes     map[string]*simNode
	links     map[pair]bool
	dataUp    bool
	log       []Committed
	rec       *Record
	notes     []note
	fences    []fenceJob
	queue     []func()
	res       []string
	connected map[string]bool

	// Checks.
	acked      map[string]uint64
	maxEpoch   map[string]uint64
	lastQuorum map[string]time.Time
	trace      []string
	// offAfterFence: a fence job for (node, epochs) powered it off.
	offAfterFence map[string]bool

	// Choices: tests script them, rapid draws them.
	delay   func(to, about string) time.Duration
	fenceOK func(target string) bool

	// Counters for the link-cut property.
	fenceActions int
	promotions   int
	alerts       []string
	replies      []AdminReply
	acts         []simAct
}

func newSim(t tb, mutate func(*Config)) *sim {
	return newSimWith(t, mutate, nil, nil)
}

// newSimWith takes the failure detector's delay and the fencer's outcome as
// functions (nil: 200 ms, always succeeds).
func newSimWith(t tb, mutate func(*Config), delay func(to, about string) time.Duration, fenceOK func(target string) bool) *sim {
	base := Config{
		Voters: []string{"a", "b", "w"},
		Resources: []ResourceConfig{
			{Name: "r0", Replicas: [2]string{"a", "b"}, Preferred: "a"},
			{Name: "r1", Replicas: [2]string{"a", "b"}, Preferred: "b"},
		},
		TickInterval: simTick,
		Margin:       simDetectMax + simTick,
	}
	if mutate != nil {
		mutate(&base)
	}
	s := &sim{
		t: t, base: base, now: simStart,
		names: []string{"a", "b", "w"}, data: []string{"a", "b"},
		nodes: map[string]*simNode{}, links: map[pair]bool{}, dataUp: true,
		rec: NewRecord(), connected: map[string]bool{},
		acked: map[string]uint64{}, maxEpoch: map[string]uint64{}, lastQuorum: map[string]time.Time{},
		offAfterFence: map[string]bool{},
		delay:         func(string, string) time.Duration { return 200 * time.Millisecond },
		fenceOK:       func(string) bool { return true },
	}
	if delay != nil {
		s.delay = delay
	}
	if fenceOK != nil {
		s.fenceOK = fenceOK
	}
	for _, rc := range base.Resources {
		s.res = append(s.res, rc.Name)
	}
	for i, x := range s.names {
		for _, y := range s.names[i+1:] {
			s.links[mkpair(x, y)] = true
		}
	}
	for _, x := range s.names {
		n := &simNode{name: x, vols: map[string]*simVol{}, lastReport: map[string]VolumeState{}}
		if x != "w" {
			for _, r := range s.res {
				n.vols[r] = &simVol{disk: DiskUpToDate}
			}
		}
		s.nodes[x] = n
	}
	for _, x := range s.names {
		s.boot(x)
	}
	s.settle()
	return s
}

func (s *sim) logf(format string, args ...any) {
	if len(s.trace) > 400 {
		s.trace = slices.Delete(s.trace, 0, 200)
	}
	s.trace = append(s.trace, fmt.Sprintf("%6.2fs ", s.now.Sub(simStart).Seconds())+fmt.Sprintf(format, args...))
}

func (s *sim) fail(format string, args ...any) {
	s.t.Helper()
	tail := s.trace
	if len(tail) > 80 {
		tail = tail[len(tail)-80:]
	}
	s.t.Fatalf("%s\ntrace (last %d):\n%s", fmt.Sprintf(format, args...), len(tail), strings.Join(tail, "\n"))
}

func (s *sim) boot(x string) {
	n := s.nodes[x]
	n.boot++
	cfg := s.base
	cfg.Node, cfg.Boot = x, fmt.Sprint(n.boot)
	m, err := NewMachine(cfg)
	if err != nil {
		s.t.Fatalf("NewMachine(%s): %v", x, err)
	}
	n.m, n.up, n.delivered = m, true, 0
	n.perceived = map[string]MemberState{}
	n.told = map[string]MemberState{}
	n.aliveUntil = map[string]time.Time{}
	for _, y := range s.names {
		n.aliveUntil[y] = s.now
	}
	n.lastReport = map[string]VolumeState{}
	for _, v := range n.vols {
		v.primary, v.suspended, v.syncing, v.degraded, v.asked, v.sessions = false, false, false, false, false, 0
	}
	s.logf("boot %s (run %d)", x, n.boot)
	s.step(x, Tick{At: s.now})
}

func (s *sim) crash(x string) {
	n := s.nodes[x]
	if !n.up {
		return
	}
	s.logf("crash %s", x)
	n.up, n.m = false, nil
	for _, v := range n.vols {
		v.primary, v.suspended, v.syncing, v.degraded, v.asked = false, false, false, false, false
	}
}

// reach: the failure detector's view: directly, or through the third node
// (memberlist's indirect probes).
func (s *sim) reach(x, y string) bool {
	if !s.nodes[x].up || !s.nodes[y].up {
		return false
	}
	if s.links[mkpair(x, y)] {
		return true
	}
	for _, z := range s.names {
		if z != x && z != y && s.nodes[z].up && s.links[mkpair(x, z)] && s.links[mkpair(z, y)] {
			return true
		}
	}
	return false
}

// majority is the component of up nodes joined by direct links that holds
// a majority of voters (raft needs direct connections), or nil.
func (s *sim) majority() []string {
	for _, x := range s.names {
		if !s.nodes[x].up {
			continue
		}
		comp := []string{x}
		for changed := true; changed; {
			changed = false
			for _, y := range s.names {
				if slices.Contains(comp, y) || !s.nodes[y].up {
					continue
				}
				for _, z := range comp {
					if s.links[mkpair(y, z)] {
						comp = append(comp, y)
						changed = true
						break
					}
				}
			}
		}
		if len(comp) > len(s.names)/2 {
			return comp
		}
	}
	return nil
}

func (s *sim) step(x string, ev Event) {
	n := s.nodes[x]
	if !n.up {
		return
	}
	rd := n.m.Step(ev)
	for _, a := range rd.Actions {
		s.exec(x, a)
	}
}

type simAct struct {
	at   time.Time
	node string
	a    Action
}

func (s *sim) exec(x string, a Action) {
	n := s.nodes[x]
	s.logf("%s: %v", x, a)
	s.acts = append(s.acts, simAct{s.now, x, a})
	switch a := a.(type) {
	case Propose:
		if !slices.Contains(s.majority(), x) {
			s.queue = append(s.queue, func() {
				s.step(x, ProposalFailed{At: s.now, ID: a.Cmd.ID, Err: errors.New("no quorum")})
			})
			return
		}
		prev := s.rec
		next, err := Apply(s.rec, a.Cmd)
		s.checkCommit(prev, next, a.Cmd, err)
		if err == nil && a.Cmd.Op == OpPromote && a.Cmd.Force {
			// An admin's committed choice to discard what the promoted
			// replica lacks; the record carries it even when this node
			// cannot enact it now and a later automatic promotion does.
			s.acked[a.Cmd.Resource] = s.nodes[a.Cmd.Node].vols[a.Cmd.Resource].version
		}
		s.rec = next
		s.log = append(s.log, Committed{Cmd: a.Cmd, Err: err, Record: next})
		s.queue = append(s.queue, func() { s.catchUp(x) })
	case FenceNode:
		s.fenceActions++
		s.fences = append(s.fences, fenceJob{by: x, target: a.Node, epochs: a.Epochs})
	case CancelFence:
		// The cancel wins the race: the job ends with an error and the
		// target keeps running.
		for i, j := range s.fences {
			if j.by == x && j.target == a.Node {
				s.fences = slices.Delete(s.fences, i, i+1)
				res := FenceResult{At: s.now, Node: j.target, Epochs: j.epochs, Err: errors.New("canceled")}
				s.queue = append(s.queue, func() { s.step(j.by, res) })
				s.logf("fence of %s by %s canceled", j.target, x)
				break
			}
		}
	case Promote:
		v := n.vols[a.Resource]
		if a.Epoch <= s.maxEpoch[a.Resource] {
			s.fail("%s promoted %s at epoch %d, not above %d", x, a.Resource, a.Epoch, s.maxEpoch[a.Resource])
		}
		if !slices.ContainsFunc(s.log, func(e Committed) bool {
			return e.Err == nil && e.Cmd.Op == OpPromote && e.Cmd.Resource == a.Resource && e.Cmd.Node == x && e.Cmd.Epoch == a.Epoch
		}) {
			s.fail("%s promoted %s at epoch %d, which the log never committed", x, a.Resource, a.Epoch)
		}
		if !a.Force && v.version < s.acked[a.Resource] {
			s.fail("%s promoted %s without force holding version %d: acknowledged writes up to %d lost", x, a.Resource, v.version, s.acked[a.Resource])
		}
		if a.Force {
			s.acked[a.Resource] = v.version // an admin chose to discard
		}
		s.maxEpoch[a.Resource] = a.Epoch
		s.promotions++
		v.primary, v.epoch, v.suspended, v.disk = true, a.Epoch, false, DiskUpToDate
		v.degraded, v.asked = false, false
	case Demote:
		v := n.vols[a.Resource]
		v.primary, v.suspended, v.degraded, v.asked = false, false, false, false
	case SuspendIO:
		n.vols[a.Resource].suspended = true
	case FailIO:
		n.vols[a.Resource].suspended = true
	case ResumeIO:
		n.vols[a.Resource].suspended = false
	case AllowDegraded:
		v := n.vols[a.Resource]
		if !v.asked {
			s.fail("%s: AllowDegraded for %s without a request", x, a.Resource)
		}
		peer := s.peerOf(x)
		if st := s.rec.Resource(a.Resource).State(peer); st != StateOutdated && st != StateInconsistent && st != StateFailed {
			s.fail("%s allowed degraded writes on %s while the record says %s is %s", x, a.Resource, peer, st)
		}
		v.degraded, v.asked = true, false
		// The write that asked is acknowledged now.
		v.version++
		s.acked[a.Resource] = max(s.acked[a.Resource], v.version)
		s.logf("degraded write %s on %s acked at version %d", a.Resource, x, v.version)
	case RefuseDegraded:
		n.vols[a.Resource].asked = false
	case StartResync:
	case Alert:
		s.alerts = append(s.alerts, x+": "+a.Text)
	case AdminReply:
		s.replies = append(s.replies, a)
	case ClaimVIP, ReleaseVIP:
	default:
		s.fail("unknown action %T", a)
	}
}

func (s *sim) peerOf(x string) string {
	if x == "a" {
		return "b"
	}
	return "a"
}

// checkCommit checks rule 1 and rule 3 on every accepted promotion, from
// the records before and after, independently of Apply's own checks.
func (s *sim) checkCommit(prev, next *Record, cmd Command, err error) {
	if err != nil {
		return
	}
	for name, res := range next.Resources {
		old := prev.Resource(name)
		if old == nil {
			continue
		}
		if res.Epoch < old.Epoch {
			s.fail("epoch of %s went back from %d to %d", name, old.Epoch, res.Epoch)
		}
		if res.Epoch == old.Epoch {
			continue
		}
		if res.Epoch != old.Epoch+1 || cmd.Op != OpPromote {
			s.fail("epoch of %s moved %d -> %d by %v", name, old.Epoch, res.Epoch, cmd)
		}
		if old.Primary != "" && (old.Fenced == nil || old.Fenced.Epoch != old.Epoch || old.Fenced.Node != old.Primary) {
			s.fail("%s promoted over %s, which was neither demoted nor fenced", cmd.Node, old.Primary)
		}
		// Rule 7: over a manual confirmation (maybe wrong), only once the
		// old primary's lease has run out as the promoting node can tell:
		// Lease + Margin after it last perceived it Alive.
		if old.Primary != "" && !PoweredOff(old.Fenced) {
			wait := cmp.Or(s.base.Lease, DefaultLease) + cmp.Or(s.base.Margin, DefaultMargin)
			if n := s.nodes[cmd.Node]; n != nil {
				seen := n.aliveUntil[old.Primary]
				if n.told[old.Primary] == MemberAlive {
					seen = s.now
				}
				if s.now.Before(seen.Add(wait)) {
					s.fail("%s promoted over %s (confirmed by %q) %v after it last saw it Alive, within its lease plus margin %v",
						cmd.Node, old.Primary, old.Fenced.Method, s.now.Sub(seen), wait)
				}
			}
		}
		if !cmd.Force && old.State(cmd.Node) != StateUpToDate {
			s.fail("automatic promotion of %s on %s, which was %s", name, cmd.Node, old.State(cmd.Node))
		}
	}
	if cmd.Op == OpFenced && cmd.Method != "manual" && !s.offAfterFence[fenceKey(cmd.Node, cmd.Epochs)] {
		s.fail("fencing of %s at %v confirmed, but no fence ever powered it off", cmd.Node, cmd.Epochs)
	}
}

// catchUp delivers the log entries a node has not seen, in order, if it is
// in the majority (raft followers learn commits from the leader).
func (s *sim) catchUp(x string) {
	n := s.nodes[x]
	if !slices.Contains(s.majority(), x) {
		return
	}
	for n.up && n.delivered < len(s.log) {
		e := s.log[n.delivered]
		n.delivered++
		e.At = s.now
		s.step(x, e)
	}
}

// syncVolumes moves the simulated replicas along: connection, resync
// start, and what each volume reports to its machine.
func (s *sim) syncVolumes() {
	a, b := s.nodes["a"], s.nodes["b"]
	for _, r := range s.res {
		va, vb := a.vols[r], b.vols[r]
		conn := s.dataUp && a.up && b.up && !(va.primary && vb.primary)
		if !conn && s.connected[r] {
			for _, v := range []*simVol{va, vb} {
				v.syncing, v.degraded = false, false
			}
		}
		if conn && !s.connected[r] {
			va.sessions++
			vb.sessions++
		}
		s.connected[r] = conn
		if conn {
			for _, pr := range [][2]*simVol{{va, vb}, {vb, va}} {
				p, sec := pr[0], pr[1]
				// A write still waiting to be acknowledged without the
				// peer has its bits in the bitmap: the handshake makes the
				// peer a sync target for it.
				if p.primary && !sec.primary && !sec.syncing && sec.disk != DiskFailed && (sec.version != p.version || sec.disk != DiskUpToDate || p.asked) {
					sec.syncing, sec.disk = true, DiskInconsistent
				}
				// Two secondaries: the handshake compares the data
				// histories and the one behind becomes the sync target,
				// whatever roles come later.
				if !p.primary && !sec.primary && !p.syncing && !sec.syncing && sec.disk != DiskFailed && p.disk != DiskFailed && sec.version < p.version {
					sec.syncing, sec.disk = true, DiskInconsistent
				}
			}
		}
		for _, x := range s.data {
			n := s.nodes[x]
			if !n.up {
				continue
			}
			v, pv := n.vols[r], s.nodes[s.peerOf(x)].vols[r]
			st := VolumeState{Disk: v.disk, Connected: conn, Syncing: conn && (v.syncing || pv.syncing), PeerDisk: DiskUnknown, Primary: v.primary, PeerHeard: conn, Session: v.sessions}
			if conn {
				st.PeerDisk = pv.disk
			}
			if last, ok := n.lastReport[r]; !ok || last != st {
				n.lastReport[r] = st
				s.queue = append(s.queue, func() { s.step(x, VolumeReport{At: s.now, Resource: r, State: st}) })
			}
		}
	}
}

// scheduleNotes queues what the failure detector will report, after each
// observer's delay.
func (s *sim) scheduleNotes() {
	for _, x := range s.names {
		n := s.nodes[x]
		if !n.up {
			continue
		}
		for _, y := range s.names {
			if y == x {
				continue
			}
			want := MemberDead
			if s.reach(x, y) {
				want = MemberAlive
			}
			i := slices.IndexFunc(s.notes, func(nt note) bool { return nt.to == x && nt.about == y })
			if i >= 0 && s.notes[i].state != want {
				s.notes = slices.Delete(s.notes, i, i+1)
				i = -1
			}
			if i < 0 && n.perceived[y] != want {
				d := s.delay(x, y)
				s.notes = append(s.notes, note{to: x, about: y, state: want, due: s.now.Add(d)})
			}
		}
	}
}

func (s *sim) trackQuorum() {
	for _, x := range s.names {
		if !s.nodes[x].up {
			continue
		}
		c := 1
		for _, y := range s.names {
			if y != x && s.reach(x, y) {
				c++
			}
		}
		if c > len(s.names)/2 {
			s.lastQuorum[x] = s.now
		}
	}
}

// settle runs queued work until nothing changes, then checks.
func (s *sim) settle() {
	s.t.Helper()
	for round := 0; ; round++ {
		if round > 200 {
			s.fail("no quiescence after 200 rounds")
		}
		s.scheduleNotes()
		s.deliverDue()
		for _, x := range s.names {
			s.queue = append(s.queue, func() { s.catchUp(x) })
		}
		s.syncVolumes()
		if len(s.queue) == 0 {
			break
		}
		for steps := 0; len(s.queue) > 0; steps++ {
			if steps > 10000 {
				s.fail("livelock: 10000 steps without quiescence")
			}
			f := s.queue[0]
			s.queue = s.queue[1:]
			f()
		}
		if s.quiet() {
			break
		}
	}
	s.trackQuorum()
	s.check()
}

// quiet: nothing left that a further round would do.
func (s *sim) quiet() bool {
	maj := s.majority()
	for _, x := range s.names {
		if s.nodes[x].up && slices.Contains(maj, x) && s.nodes[x].delivered < len(s.log) {
			return false
		}
	}
	before := len(s.queue)
	s.syncVolumes()
	return len(s.queue) == before
}

func (s *sim) deliverDue() {
	slices.SortStableFunc(s.notes, func(p, q note) int { return p.due.Compare(q.due) })
	for len(s.notes) > 0 && !s.notes[0].due.After(s.now) {
		nt := s.notes[0]
		s.notes = s.notes[1:]
		n := s.nodes[nt.to]
		if !n.up {
			continue
		}
		n.perceived[nt.about] = nt.state
		s.logf("%s sees %s %s", nt.to, nt.about, nt.state)
		s.queue = append(s.queue, func() {
			if n.up {
				if n.told[nt.about] == MemberAlive && nt.state != MemberAlive {
					n.aliveUntil[nt.about] = s.now
				}
				n.told[nt.about] = nt.state
			}
			s.step(nt.to, MemberChange{At: s.now, Node: nt.about, State: nt.state})
		})
	}
}

// advance moves time forward by d in steps of at most one tick, delivering
// failure-detector notes at their time and a Tick to every node.
func (s *sim) advance(d time.Duration) {
	s.t.Helper()
	end := s.now.Add(d)
	for s.now.Before(end) {
		next := s.now.Add(simTick)
		if next.After(end) {
			next = end
		}
		slices.SortStableFunc(s.notes, func(p, q note) int { return p.due.Compare(q.due) })
		for len(s.notes) > 0 && s.notes[0].due.Before(next) {
			if s.notes[0].due.After(s.now) {
				s.now = s.notes[0].due
			}
			s.settle()
		}
		s.now = next
		for _, x := range s.names {
			s.queue = append(s.queue, func() { s.step(x, Tick{At: s.now}) })
		}
		s.settle()
	}
}

// check holds the safety rules against the simulated world.
func (s *sim) check() {
	s.t.Helper()
	for _, r := range s.res {
		var serving []string
		for _, x := range s.data {
			n := s.nodes[x]
			v := n.vols[r]
			if !n.up || !v.primary || v.suspended {
				continue
			}
			serving = append(serving, x)
			// Rule 2: a primary without quorum stops within the
			// detection delay, well inside its lease.
			if lq := s.lastQuorum[x]; s.now.Sub(lq) > simDetectMax {
				s.fail("%s serves %s %v after it last had quorum (detection bound %v)", x, r, s.now.Sub(lq), simDetectMax)
			}
		}
		if len(serving) > 1 {
			s.fail("%s served by %v at once", r, serving)
		}
		// Rule 3 as the record states it: a replica the record calls
		// UpToDate holds every acknowledged write.
		if res := s.rec.Resource(r); res != nil {
			for _, x := range s.data {
				if v := s.nodes[x].vols[r]; res.State(x) == StateUpToDate && v.version < s.acked[r] {
					s.fail("the record calls %s UpToDate for %s at version %d; version %d was acknowledged", x, r, v.version, s.acked[r])
				}
			}
		}
	}
}

// write is an application write to r on whichever node serves it.
func (s *sim) write(r string) {
	for _, x := range s.data {
		n := s.nodes[x]
		v := n.vols[r]
		if !n.up || !v.primary || v.suspended {
			continue
		}
		pv := s.nodes[s.peerOf(x)].vols[r]
		switch {
		case s.connected[r]:
			v.version++
			pv.version++
		case v.degraded:
			v.version++
		default:
			if !v.asked {
				v.asked = true
				sess := v.sessions
				s.queue = append(s.queue, func() { s.step(x, DegradedRequest{At: s.now, Resource: r, Session: sess}) })
			}
			continue
		}
		s.acked[r] = max(s.acked[r], v.version)
		s.logf("write %s on %s acked at version %d", r, x, v.version)
	}
	s.settle()
}

// resync finishes any running resync of r.
func (s *sim) resync(r string) {
	for _, x := range s.data {
		v, pv := s.nodes[x].vols[r], s.nodes[s.peerOf(x)].vols[r]
		if v.syncing && s.connected[r] {
			v.syncing, v.version, v.disk = false, pv.version, DiskUpToDate
			s.logf("resync %s to %s done at version %d", r, x, v.version)
		}
	}
	s.settle()
}

// completeFence finishes the oldest fencing job.
func (s *sim) completeFence() {
	if len(s.fences) == 0 {
		return
	}
	j := s.fences[0]
	s.fences = s.fences[1:]
	res := FenceResult{At: s.now, Node: j.target, Epochs: j.epochs, Method: "ipmi"}
	if s.fenceOK(j.target) {
		s.crash(j.target)
		s.offAfterFence[fenceKey(j.target, j.epochs)] = true
		s.logf("fence: %s powered off", j.target)
	} else {
		res.Err = errors.New("BMC unreachable")
		s.logf("fence of %s failed", j.target)
	}
	s.queue = append(s.queue, func() { s.step(j.by, res) })
	s.settle()
}

func (s *sim) setLink(x, y string, up bool) {
	s.links[mkpair(x, y)] = up
	s.logf("link %s-%s up=%v", x, y, up)
	s.settle()
}

// cutUnderWrite cuts the data link while a write is in flight on r: the
// volume asks for the degraded write before its machine hears that the
// link is gone, as a real session fails its waiters before it reports its
// new state.
func (s *sim) cutUnderWrite(r string) {
	s.dataUp = false
	s.logf("data link cut under a write on %s", r)
	for _, x := range s.data {
		n := s.nodes[x]
		v := n.vols[r]
		if n.up && v.primary && !v.suspended && !v.degraded && !v.asked && s.connected[r] {
			v.asked = true
			sess := v.sessions
			s.queue = append(s.queue, func() { s.step(x, DegradedRequest{At: s.now, Resource: r, Session: sess}) })
		}
	}
	s.settle()
}

func (s *sim) setData(up bool) {
	s.dataUp = up
	s.logf("data link up=%v", up)
	s.settle()
}

func (s *sim) admin(x string, req AdminRequest) {
	req.At = s.now
	s.logf("admin on %s: %s %s %s force=%v", x, req.Op, req.Resource, req.Node, req.Force)
	s.queue = append(s.queue, func() { s.step(x, req) })
	s.settle()
}

func (s *sim) serving(r string) []string {
	var out []string
	for _, x := range s.data {
		n := s.nodes[x]
		if v := n.vols[r]; n.up && v.primary && !v.suspended {
			out = append(out, x)
		}
	}
	return out
}

func (s *sim) lastReply(id string) AdminReply {
	for i := len(s.replies) - 1; i >= 0; i-- {
		if s.replies[i].ID == id {
			return s.replies[i]
		}
	}
	s.fail("no admin reply %s", id)
	return AdminReply{}
}

func fenceKey(node string, epochs map[string]uint64) string {
	return fmt.Sprint(node, epochs) // fmt prints maps sorted
}

func (s *sim) dump() string {
	tail := s.trace
	if len(tail) > 120 {
		tail = tail[len(tail)-120:]
	}
	return strings.Join(tail, "\n")
}
