package cluster

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// ErrProposalTimeout: a proposal had no outcome within ProposalTimeout. It
// may still commit; every command is safe to commit late.
var ErrProposalTimeout = errors.New("cluster: proposal not committed in time (it may still take effect)")

// Machine is one node's decision state machine. It is not safe for
// concurrent use: one goroutine feeds it events and carries out the actions.
//
// The machine never acts on the record alone: it becomes primary only on
// the commit of a promotion it proposed in this run, and a primary whose
// record says otherwise steps down. Everything else is reconciled after
// every event from the latest committed record, the membership view and the
// local volumes, so a lost event costs time, not safety.
type Machine struct {
	cfg      Config
	idPrefix string
	started  bool
	start    time.Time
	now      time.Time
	rec      *Record
	members  map[string]*member
	res      []*resState
	fences   map[string]*fenceState
	pending  map[string]*proposal // by command ID
	slots    map[string]string    // slot -> command ID
	backoff  map[string]time.Time // slot -> no new proposal before
	seq      uint64
	alerted  map[string]bool
	out      []Action
}

type member struct {
	state MemberState
	// aliveUntil: when it was last known Alive (the moment it left Alive;
	// the machine's start for a voter never heard of).
	aliveUntil time.Time
	// logHeard: when this machine last applied a log entry the node
	// proposed. An entry proves the node ran and reached a majority then,
	// even while the failure detector here says it is gone.
	logHeard time.Time
}

type resState struct {
	cfg  ResourceConfig
	peer string

	vol      VolumeState
	volKnown bool

	// What this machine made of the local volume.
	primary    bool
	epoch      uint64
	suspended  bool // SuspendIO or FailIO in force
	vip        bool
	leaseUntil time.Time
	// needConfirm: quorum was lost while primary; I/O resumes only after a
	// committed ConfirmPrimary proves nobody else took over meanwhile.
	needConfirm bool
	handoff     bool // suspended for a switchover or standby, waiting for the peer
	handoffAt   time.Time
	retryAfter  time.Time // a failed standby handoff is retried after this
	hold        bool      // admin demote: the Demote carries Hold
	vipBlocked  bool      // the VIP claim was refused: I/O stays suspended
	vipRetry    time.Time
	// quorumIO is the policy whose SuspendIO or FailIO is in force for
	// a loss of quorum ("" when none is): a Reconfigure to the other one
	// while quorum is still lost emits the other action.
	quorumIO NoQuorumPolicy
	// redefine: an admin changed the preferred node; it is committed to
	// the record with a define, once (the other node's adjust may
	// commit another: the last one wins, and the two configuration
	// hashes differ meanwhile).
	redefine bool

	degradedWaiting bool
	// peerLeft: the volume asked to write without its peer, whose
	// session leftSession ended. A report of that session or an earlier
	// one can be older than the request (a session fails its waiters
	// before its state reads disconnected, and reports are polled), so
	// nothing that needs a connected, in-sync peer (a mark-uptodate, a
	// handoff) is done until a report comes from a later session.
	peerLeft    bool
	leftSession uint64
	// blocked: why this replica does not take over a primary that is
	// gone, "" when nothing stops it (or nothing is to take over).
	blocked string
	// linkLostAt: since when the local volume has not heard its peer
	// (zero while it does).
	linkLostAt     time.Time
	volDemoteAsked bool
	resyncAsked    bool
	healthySince   time.Time
}

type fenceState struct {
	epochs    map[string]uint64
	inFlight  bool
	confirmed bool
	method    string
	lastTry   time.Time
	attempts  int
	// since is the first attempt; lastErr the last attempt's error.
	since   time.Time
	lastErr string
	// canceled: CancelFence was emitted for the attempt in flight.
	canceled bool
}

type proposal struct {
	cmd     Command
	slot    string
	at      time.Time
	adminID string
	text    string
}

// NewMachine returns a machine for cfg (defaults filled in).
func NewMachine(cfg Config) (*Machine, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Machine{
		cfg:      cfg,
		idPrefix: cfg.Node + "/" + cfg.Boot + "/",
		rec:      NewRecord(),
		members:  map[string]*member{},
		fences:   map[string]*fenceState{},
		pending:  map[string]*proposal{},
		slots:    map[string]string{},
		backoff:  map[string]time.Time{},
		alerted:  map[string]bool{},
	}
	for _, v := range cfg.Voters {
		if v != cfg.Node {
			m.members[v] = &member{}
		}
	}
	for _, rc := range cfg.Resources {
		if !slices.Contains(rc.Replicas[:], cfg.Node) {
			continue // a resource this node holds no replica of: nothing to drive
		}
		peer := rc.Replicas[0]
		if peer == cfg.Node {
			peer = rc.Replicas[1]
		}
		m.res = append(m.res, &resState{cfg: rc, peer: peer})
	}
	return m, nil
}

// Step consumes one event and returns what to do.
func (m *Machine) Step(ev Event) Ready {
	at := ev.when()
	if !m.started {
		m.started, m.start, m.now = true, at, at
		for _, mb := range m.members {
			mb.aliveUntil = at
		}
	}
	if at.After(m.now) {
		m.now = at // a clock that steps back is ignored: time never decreases here
	}
	switch e := ev.(type) {
	case Tick:
	case MemberChange:
		m.memberChange(e)
	case VolumeReport:
		if r := m.resource(e.Resource); r != nil {
			r.vol, r.volKnown = e.State, true
			if !e.State.Primary {
				r.volDemoteAsked = false
			}
			if !e.State.Connected {
				r.resyncAsked = false
			}
			if e.State.Session > r.leftSession {
				r.peerLeft = false
			}
			if e.State.Connected && e.State.PeerHeard {
				r.linkLostAt = time.Time{}
			} else if r.linkLostAt.IsZero() {
				r.linkLostAt = m.now
			}
		}
	case DegradedRequest:
		if r := m.resource(e.Resource); r != nil {
			r.degradedWaiting, r.peerLeft, r.leftSession = true, true, e.Session
		} else {
			m.emit(RefuseDegraded{Resource: e.Resource, Reason: "this node holds no replica of it"})
		}
	case FenceResult:
		m.fenceResult(e)
	case VIPResult:
		if r := m.resource(e.Resource); r != nil && r.primary {
			if e.Err != nil {
				r.vip, r.vipBlocked, r.vipRetry = false, true, m.now.Add(m.cfg.FenceRetry)
				m.emit(Alert{Resource: e.Resource, Text: fmt.Sprintf("claiming the service address failed: %v; I/O stays suspended (is the old primary really off?); retrying every %v", e.Err, m.cfg.FenceRetry)})
			} else {
				r.vipBlocked = false
			}
		}
	case Committed:
		m.committed(e)
	case ProposalFailed:
		if p := m.pending[e.ID]; p != nil {
			m.drop(p)
			// Retry at the next tick, not at once: the log is unreachable.
			m.backoff[p.slot] = m.now.Add(m.cfg.TickInterval)
			if p.adminID != "" {
				m.emit(AdminReply{ID: p.adminID, Err: fmt.Errorf("cluster: %s: %w", p.cmd, e.Err)})
			}
		}
	case AdminRequest:
		m.admin(e)
	case Reconfigure:
		m.reconfigure(e.Resource)
	case AddResource:
		m.addResource(e.Resource) // resources.go
	case RemoveResource:
		m.removeResource(e.Resource)
	}
	m.expireProposals()
	for _, r := range m.res {
		m.reconcile(r)
	}
	out := m.out
	m.out = nil
	return Ready{Actions: out}
}

func (m *Machine) emit(a Action) { m.out = append(m.out, a) }

// reconfigure takes over an admin's new policies for a resource.
func (m *Machine) reconfigure(rc ResourceConfig) {
	r := m.resource(rc.Name)
	refuse := func(why string) {
		m.emit(Alert{Resource: rc.Name, Text: "configuration change not applied: " + why})
	}
	switch {
	case r == nil:
		refuse("this node holds no replica of it")
		return
	case !sameSet(rc.Replicas[:], r.cfg.Replicas[:]):
		refuse(fmt.Sprintf("replicas %v, the running ones are %v; a resource's replicas change only with a restart", rc.Replicas, r.cfg.Replicas))
		return
	}
	if err := rc.policies(); err != nil {
		refuse(err.Error())
		return
	}
	if rc.Preferred != r.cfg.Preferred {
		r.redefine = true
	}
	r.cfg.Preferred, r.cfg.OnNoQuorum, r.cfg.Failback, r.cfg.FailbackAfter = rc.Preferred, rc.OnNoQuorum, rc.Failback, rc.FailbackAfter
}

func (m *Machine) resource(name string) *resState {
	for _, r := range m.res {
		if r.cfg.Name == name {
			return r
		}
	}
	return nil
}

func (m *Machine) memberChange(e MemberChange) {
	mb := m.members[e.Node]
	if mb == nil || e.State == mb.state {
		return // self, a non-voter, or no change
	}
	if mb.state == MemberAlive || e.State == MemberAlive {
		mb.aliveUntil = m.now
	}
	mb.state = e.State
}

// alive: counted for quorum and eligible for a role.
func (m *Machine) alive(node string) bool {
	if node == m.cfg.Node {
		return true
	}
	mb := m.members[node]
	return mb != nil && mb.state == MemberAlive
}

// gone: the failure detector declared it dead, or it was never heard of
// for StartupGrace. Suspect is not gone: it is failed over only once dead.
func (m *Machine) gone(node string) bool {
	mb := m.members[node]
	if mb == nil {
		return false
	}
	return mb.state == MemberDead || (mb.state == memberUnknown && !m.now.Before(m.start.Add(m.cfg.StartupGrace)))
}

func (m *Machine) lastSeen(node string) time.Time {
	mb := m.members[node]
	if mb.state == MemberAlive {
		return m.now
	}
	return mb.aliveUntil
}

// quorum: a majority of voters, this one included, Alive.
func (m *Machine) quorum() bool {
	n := 0
	for _, v := range m.cfg.Voters {
		if m.alive(v) {
			n++
		}
	}
	return n > len(m.cfg.Voters)/2
}

// demoting: a demote of resource by this node is in flight.
func (m *Machine) demoting(resource string) bool {
	for _, p := range m.pending {
		if p.cmd.Op == OpDemote && p.cmd.Resource == resource && p.cmd.Node == m.cfg.Node {
			return true
		}
	}
	return false
}

// propose sends cmd unless slot already has a proposal in flight.
func (m *Machine) propose(slot string, cmd Command, adminID, text string) bool {
	if _, busy := m.slots[slot]; busy || m.now.Before(m.backoff[slot]) {
		return false
	}
	m.seq++
	cmd.Version, cmd.By, cmd.At = RecordVersion, m.cfg.Node, m.now
	cmd.ID = fmt.Sprintf("%s%d", m.idPrefix, m.seq)
	m.pending[cmd.ID] = &proposal{cmd: cmd, slot: slot, at: m.now, adminID: adminID, text: text}
	m.slots[slot] = cmd.ID
	m.emit(Propose{Cmd: cmd})
	return true
}

func (m *Machine) drop(p *proposal) {
	delete(m.pending, p.cmd.ID)
	if m.slots[p.slot] == p.cmd.ID {
		delete(m.slots, p.slot)
	}
}

func (m *Machine) expireProposals() {
	for slot, t := range m.backoff {
		if !m.now.Before(t) {
			delete(m.backoff, slot)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(m.pending)) {
		p := m.pending[id]
		if m.now.Sub(p.at) < m.cfg.ProposalTimeout {
			continue
		}
		m.drop(p)
		if p.adminID != "" {
			m.emit(AdminReply{ID: p.adminID, Err: fmt.Errorf("cluster: %s: %w", p.cmd, ErrProposalTimeout)})
		}
	}
}

func (m *Machine) alertOnce(key, resource, text string) {
	if !m.alerted[key] {
		m.alerted[key] = true
		m.emit(Alert{Resource: resource, Text: text})
	}
}

func (m *Machine) clearAlert(key string) { delete(m.alerted, key) }

// committed takes in one applied log entry.
func (m *Machine) committed(e Committed) {
	if e.Record != nil && e.Record.Index >= m.rec.Index {
		m.rec = e.Record
	}
	if mb := m.members[e.Cmd.By]; mb != nil {
		mb.logHeard = m.now
	}
	p := m.pending[e.Cmd.ID]
	if p != nil {
		m.drop(p)
		if e.Err != nil {
			// Refused: the view it was made on is stale. Try again from
			// the newer record, but not in a tight loop.
			m.backoff[p.slot] = m.now.Add(m.cfg.TickInterval)
		}
		if p.adminID != "" {
			if e.Err != nil {
				m.emit(AdminReply{ID: p.adminID, Err: e.Err})
			} else {
				m.emit(AdminReply{ID: p.adminID, Text: p.text})
			}
		}
	}
	if !strings.HasPrefix(e.Cmd.ID, m.idPrefix) {
		return // another node's, or this node's from an earlier run
	}
	r := m.resource(e.Cmd.Resource)
	switch e.Cmd.Op {
	case OpPromote:
		if e.Err == nil && r != nil {
			m.enactPromotion(r, e.Cmd)
		}
	case OpMarkOutdated:
		if r == nil || !r.degradedWaiting {
			return
		}
		if e.Err == nil && r.primary && r.epoch == e.Cmd.Epoch {
			// The record says the peer is Outdated as of now, after the
			// request: the degraded write may be acknowledged (rule 3).
			r.degradedWaiting = false
			m.emit(AllowDegraded{Resource: r.cfg.Name})
		} else if errors.Is(e.Err, ErrStaleEpoch) || errors.Is(e.Err, ErrNotPrimary) {
			r.degradedWaiting = false
			m.emit(RefuseDegraded{Resource: r.cfg.Name, Reason: e.Err.Error()})
		}
	case OpDefine:
		if r != nil {
			r.redefine = false
			if e.Err != nil {
				m.emit(Alert{Resource: r.cfg.Name, Text: fmt.Sprintf("the preferred node was not recorded: %v", e.Err)})
			}
		}
	case OpConfirmPrimary:
		if e.Err == nil && r != nil && r.primary && r.epoch == e.Cmd.Epoch {
			r.needConfirm = false
		}
	case OpFenced:
		if e.Err != nil {
			delete(m.fences, e.Cmd.Node) // stale: start over from the record
		}
	case OpSwitchover:
		if e.Err != nil && r != nil {
			m.emit(Alert{Resource: r.cfg.Name, Text: fmt.Sprintf("automatic failback refused: %v", e.Err)})
		}
	}
}

// enactPromotion turns a committed promotion this run proposed into a
// primary, if the conditions still hold; if not, reconcile hands the epoch
// back with a Demote.
func (m *Machine) enactPromotion(r *resState, cmd Command) {
	res := m.rec.Resource(r.cfg.Name)
	if r.primary || res == nil || res.Primary != m.cfg.Node || res.Epoch != cmd.Epoch || !m.quorum() {
		return
	}
	usable := r.volKnown && (r.vol.Disk == DiskUpToDate ||
		(cmd.Force && (r.vol.Disk == DiskOutdated || r.vol.Disk == DiskInconsistent)))
	if !usable {
		return
	}
	r.primary, r.epoch, r.suspended, r.needConfirm, r.handoff, r.quorumIO = true, cmd.Epoch, false, false, false, ""
	r.leaseUntil = m.now.Add(m.cfg.Lease)
	m.emit(Promote{Resource: r.cfg.Name, Epoch: cmd.Epoch, Force: cmd.Force})
	r.vip = true
	m.emit(ClaimVIP{Resource: r.cfg.Name})
	m.clearAlert(r.cfg.Name + ":quorum")
}

// stepDown makes the local replica secondary now.
func (m *Machine) stepDown(r *resState) {
	m.emit(Demote{Resource: r.cfg.Name})
	if r.vip {
		m.emit(ReleaseVIP{Resource: r.cfg.Name})
	}
	if r.degradedWaiting {
		r.degradedWaiting = false
		m.emit(RefuseDegraded{Resource: r.cfg.Name, Reason: "demoted"})
	}
	r.primary, r.suspended, r.vip, r.needConfirm, r.handoff, r.vipBlocked, r.quorumIO = false, false, false, false, false, false, ""
}

func (m *Machine) reconcile(r *resState) {
	name := r.cfg.Name
	res := m.rec.Resource(name)
	if res == nil {
		if m.quorum() {
			m.propose(name, Command{Op: OpDefine, Resource: name, Replicas: r.cfg.Replicas[:], Preferred: r.cfg.Preferred}, "", "")
		}
		return
	}
	if _, ok := res.Replicas[m.cfg.Node]; !ok {
		m.alertOnce(name+":replicas", name, fmt.Sprintf("the authority record places %s on %v, not on this node: check the configuration", name, slices.Sorted(maps.Keys(res.Replicas))))
		return
	}
	if r.redefine {
		if res.Preferred == r.cfg.Preferred {
			r.redefine = false
		} else if m.quorum() {
			m.propose(name+":define", Command{Op: OpDefine, Resource: name, Replicas: r.cfg.Replicas[:], Preferred: r.cfg.Preferred}, "", "")
		}
	}
	m.reportDisk(r, res)
	r.blocked = ""
	if r.primary {
		m.reconcilePrimary(r, res)
	} else {
		m.reconcileSecondary(r, res)
	}
}

// diskToState maps a volume disk state to the record's ("" when it says
// nothing).
func diskToState(d DiskState) ReplicaState {
	switch d {
	case DiskUpToDate:
		return StateUpToDate
	case DiskOutdated:
		return StateOutdated
	case DiskInconsistent:
		return StateInconsistent
	case DiskFailed, DiskDiskless:
		return StateFailed
	}
	return ""
}

// reportDisk tells the record when the local disk is worth less than the
// record says (or the record does not know yet).
func (m *Machine) reportDisk(r *resState, res *Resource) {
	if !r.volKnown {
		return
	}
	st, cur := diskToState(r.vol.Disk), res.State(m.cfg.Node)
	if st == "" || st == cur {
		return
	}
	if cur == StateUnknown || st.rank() < cur.rank() || (cur == StateFailed && st == StateInconsistent) {
		m.propose(r.cfg.Name, Command{Op: OpReportDisk, Resource: r.cfg.Name, Node: m.cfg.Node, State: st}, "", "")
	}
}

func (m *Machine) reconcilePrimary(r *resState, res *Resource) {
	name, me := r.cfg.Name, m.cfg.Node
	if res.Primary != me || res.Epoch != r.epoch {
		m.emit(Alert{Resource: name, Text: fmt.Sprintf("deposed: the authority record names %q primary at epoch %d (this node was primary at %d); demoting", res.Primary, res.Epoch, r.epoch)})
		m.stepDown(r)
		return
	}
	if fencedNow(res) {
		// Recorded as confirmed off while it runs: a person confirmed the
		// wrong node, or a device lied. The peer may be promoting on that
		// word, so stop acknowledging now; the Demote reconcileSecondary
		// then proposes tells the peer it may take over cleanly.
		m.emit(Alert{Resource: name, Text: fmt.Sprintf("the authority record says this node was confirmed off at epoch %d (%s, by %s), yet it runs: demoting; check who confirmed it", r.epoch, res.Fenced.Method, res.Fenced.By)})
		m.stepDown(r)
		return
	}
	if r.volKnown && (r.vol.Disk == DiskFailed || r.vol.Disk == DiskDiskless) {
		m.emit(Alert{Resource: name, Text: fmt.Sprintf("local disk %s: demoting so the peer can take over", r.vol.Disk)})
		m.stepDown(r) // reconcileSecondary hands the epoch back
		return
	}
	// Rule 2: the lease is renewed only while quorum holds; without it
	// nothing more is acknowledged.
	q := m.quorum()
	if q {
		r.leaseUntil = m.now.Add(m.cfg.Lease)
	}
	if !q || !m.now.Before(r.leaseUntil) {
		if !r.suspended || (r.quorumIO != "" && r.quorumIO != r.cfg.OnNoQuorum) {
			r.suspended, r.quorumIO = true, r.cfg.OnNoQuorum
			if r.cfg.OnNoQuorum == NoQuorumIOError {
				m.emit(FailIO{Resource: name})
			} else {
				m.emit(SuspendIO{Resource: name})
			}
		}
		if r.vip {
			r.vip = false
			m.emit(ReleaseVIP{Resource: name})
		}
		r.needConfirm, r.handoff = true, false
		m.alertOnce(name+":quorum", name, fmt.Sprintf("lost quorum as primary of %s: I/O %s until quorum returns", name, map[NoQuorumPolicy]string{NoQuorumSuspend: "suspended", NoQuorumIOError: "fails"}[r.cfg.OnNoQuorum]))
		return
	}
	if r.needConfirm {
		// Quorum is back, but the record may be stale: resume only once a
		// committed entry proves this node is still primary at its epoch.
		m.propose(name, Command{Op: OpConfirmPrimary, Resource: name, Node: me, Epoch: r.epoch}, "", "")
		return
	}
	m.clearAlert(name + ":quorum")
	if m.handoffStep(r, res) {
		return
	}
	if r.vipBlocked {
		if !r.suspended {
			r.suspended = true
			m.emit(SuspendIO{Resource: name})
		}
		if !m.now.Before(r.vipRetry) {
			r.vip, r.vipRetry = true, m.now.Add(m.cfg.FenceRetry)
			m.emit(ClaimVIP{Resource: name})
		}
		return
	}
	if r.suspended {
		r.suspended, r.quorumIO = false, ""
		m.emit(ResumeIO{Resource: name})
	}
	if !r.vip {
		r.vip = true
		m.emit(ClaimVIP{Resource: name})
	}
	if r.degradedWaiting {
		// Rule 3: the peer is marked Outdated before the first write
		// acknowledged without it. Always a fresh commit, even if the
		// record already says so: it fences off a MarkUpToDate in flight.
		m.propose(name, Command{Op: OpMarkOutdated, Resource: name, Node: r.peer, Epoch: r.epoch}, "", "")
		return
	}
	v := r.vol
	if r.volKnown && !r.peerLeft && v.Connected && !v.Syncing && v.PeerDisk == DiskUpToDate && res.State(r.peer) != StateUpToDate {
		m.propose(name, Command{Op: OpMarkUpToDate, Resource: name, Node: r.peer, Epoch: r.epoch, IfSeq: res.Seq}, "", "")
	}
}

// handoffStep runs a switchover or standby from the primary's side: stop
// I/O, wait until the peer is in sync, demote, then commit the demotion so
// the peer promotes. It reports whether it holds the resource (I/O
// suspended, or demoted).
func (m *Machine) handoffStep(r *resState, res *Resource) bool {
	name, me := r.cfg.Name, m.cfg.Node
	standby := m.rec.IsStandby(me)
	wanted := (res.Target != "" && res.Target != me) || standby
	if !wanted {
		r.handoff = false
		m.clearAlert(name + ":standby")
		m.clearAlert(name + ":switchover")
		return false
	}
	to := r.peer
	peerUsable := m.alive(to) && !m.rec.IsStandby(to) && res.State(to) == StateUpToDate && r.volKnown && r.vol.Connected && !r.peerLeft
	abort := func(why string) bool {
		if r.handoff {
			r.handoff = false
		}
		if res.Target != "" {
			m.propose(name, Command{Op: OpCancelSwitchover, Resource: name, Node: res.Target}, "", "")
			// Once per switchover: the cancel may take a few tries to commit.
			m.alertOnce(name+":switchover", name, fmt.Sprintf("switchover of %s to %s cancelled: %s", name, res.Target, why))
		} else {
			r.retryAfter = m.now.Add(m.cfg.SwitchoverTimeout)
			m.alertOnce(name+":standby", name, fmt.Sprintf("standby: %s stays primary here: %s", name, why))
		}
		return false
	}
	if !r.handoff {
		if m.now.Before(r.retryAfter) {
			return false
		}
		if r.degradedWaiting || !peerUsable {
			return abort(fmt.Sprintf("%s is not connected and UpToDate (record: %s)", to, res.State(to)))
		}
		r.handoff, r.handoffAt = true, m.now
		if !r.suspended {
			r.suspended = true
			m.emit(SuspendIO{Resource: name})
		}
	}
	if r.degradedWaiting || !peerUsable {
		return abort(fmt.Sprintf("%s went away during the handoff", to))
	}
	if !r.vol.Syncing && r.vol.PeerDisk == DiskUpToDate {
		epoch := r.epoch
		m.stepDown(r)
		m.propose(name, Command{Op: OpDemote, Resource: name, Node: me, Epoch: epoch, Hold: r.hold}, "", "")
		return true
	}
	if m.now.Sub(r.handoffAt) >= m.cfg.SwitchoverTimeout {
		return abort(fmt.Sprintf("%s did not get in sync within %v", to, m.cfg.SwitchoverTimeout))
	}
	return true
}

// cutLead: a replication link silent for this long before the failure
// detector lost the peer was cut, not taken down by the peer's death (a
// crash closes the link at once or within three ping intervals, and the
// detector declares the death within about a second).
const cutLead = 2 * time.Second

func fencedNow(res *Resource) bool {
	return res.Fenced != nil && res.Fenced.Node == res.Primary && res.Fenced.Epoch == res.Epoch
}

// PoweredOff reports whether a fence confirmation is a fencing device's
// report that the node is off (IPMI, a fence agent), as opposed to a
// person's word (`tandem fence confirm`, a manual fencing level), which
// may be wrong.
func PoweredOff(f *Fence) bool {
	return f != nil && f.Method != "" && !strings.HasPrefix(f.Method, "manual")
}

// leaseWait is how long a promotion over peer, primary of res and fenced
// (fencedNow), must still wait (rule 7). After a power-off confirmed by a
// fencing device: none, since a node that is off acknowledges nothing, so
// its lease protects nothing any more (DRBD with Pacemaker promotes as
// soon as stonith confirms, too). After a manual confirmation: until the
// old primary's lease has run out, Lease + Margin after this node last
// saw it or applied an entry it proposed, in case the person was wrong
// and it still runs.
func (m *Machine) leaseWait(peer string, res *Resource) time.Duration {
	if PoweredOff(res.Fenced) {
		return 0
	}
	seen := m.lastSeen(peer)
	if mb := m.members[peer]; mb != nil && mb.logHeard.After(seen) {
		// Its detector here may have missed it, but its entries did not
		// (it briefly regained quorum through the witness and confirmed
		// itself): its lease may run from then.
		seen = mb.logHeard
	}
	return max(0, seen.Add(m.cfg.Lease+m.cfg.Margin).Sub(m.now))
}

func (m *Machine) reconcileSecondary(r *resState, res *Resource) {
	name, me := r.cfg.Name, m.cfg.Node
	v := r.vol
	if r.volKnown && v.Primary && !r.volDemoteAsked {
		// The volume is primary but this run never made it so.
		r.volDemoteAsked = true
		m.emit(Demote{Resource: name})
	}
	if r.degradedWaiting {
		r.degradedWaiting = false
		m.emit(RefuseDegraded{Resource: name, Reason: "not primary"})
	}
	if res.Primary == me {
		// The record says primary, but this node is not serving (it
		// restarted, stepped down, or could not enact a promotion): say
		// so, so the peer may take over without fencing. Not while an
		// admin's demote is on its way: the two would race, and the
		// admin's, committed second, would be answered "not the primary".
		if !m.demoting(name) {
			m.propose(name, Command{Op: OpDemote, Resource: name, Node: me, Epoch: res.Epoch, Hold: r.hold}, "", "")
		}
		return
	}
	if res.Primary == "" || r.hold && res.Held {
		r.hold = false
	}
	if r.volKnown && v.Connected && !v.Syncing && res.Primary == r.peer && (v.Disk == DiskOutdated || v.Disk == DiskInconsistent) && !r.resyncAsked {
		r.resyncAsked = true
		m.emit(StartResync{Resource: name})
	}
	if m.rec.IsStandby(me) {
		return
	}
	localOK := r.volKnown && v.Disk == DiskUpToDate && res.State(me) == StateUpToDate
	q := m.quorum()
	switch res.Primary {
	case "":
		if q && !res.Held && localOK && m.candidate(r, res) {
			m.propose(name, Command{Op: OpPromote, Resource: name, Node: me, Epoch: res.Epoch + 1}, "", "")
		}
	case r.peer:
		if !m.gone(r.peer) {
			m.clearAlert(name + ":nofailover")
			if fs := m.fences[r.peer]; fs != nil {
				switch {
				case !fs.inFlight:
					delete(m.fences, r.peer) // it came back: a later failure fences afresh
				case !fs.canceled && !fs.confirmed:
					// A false alarm (a stalled detector): do not power off
					// a node that is alive and may be serving.
					fs.canceled = true
					m.emit(CancelFence{Node: r.peer})
				}
			}
			m.failback(r, res, localOK && q)
			return
		}
		r.healthySince = time.Time{}
		if !q {
			return
		}
		if !localOK {
			r.blocked = fmt.Sprintf(
				"primary %s of %s is gone and this replica cannot take over: it is %s in the authority record and %s locally; `tandem promote --force %s` here would discard what it lacks",
				r.peer, name, res.State(me), v.Disk, name)
			m.alertOnce(name+":nofailover", name, r.blocked)
			return
		}
		// The failure detector's word against the replication link's: a
		// primary whose link frames still arrive is alive (the detector
		// stalled, or gossip alone is cut). Fencing it would turn a hiccup
		// into a failover; the veto is bounded so that a primary cut from
		// the gossip network only is still failed over.
		if v.Connected && v.PeerHeard && !fencedNow(res) && m.now.Before(m.lastSeen(r.peer).Add(m.cfg.LinkVeto)) {
			return
		}
		// Rule 4, the other half: the link went silent well before the
		// detector lost the primary, so the detector has been running on
		// the witness's indirect probes alone since, and a stall of a few
		// hundred milliseconds on a loaded host defeats them. After a cut,
		// a death is believed once it lasted LinkVeto; a crash, which
		// takes the link and the detector's probes down together, is
		// fenced at once.
		if !fencedNow(res) && !r.linkLostAt.IsZero() && r.linkLostAt.Before(m.lastSeen(r.peer).Add(-cutLead)) &&
			m.now.Before(m.lastSeen(r.peer).Add(m.cfg.LinkVeto)) {
			return
		}
		// Rule 1: the old primary must be confirmed off (rule 5: a failed
		// fence blocks this, alerts, and is retried).
		if !fencedNow(res) {
			m.fence(r.peer)
			return
		}
		// Rule 2, the other half: its lease has run out, or a fence
		// powered it off (rule 7: a node confirmed off acknowledges
		// nothing, whatever its lease says).
		if m.leaseWait(r.peer, res) > 0 {
			return
		}
		m.propose(name, Command{Op: OpPromote, Resource: name, Node: me, Epoch: res.Epoch + 1}, "", "")
	}
}

// candidate decides, when nobody is primary, whether this node should be:
// a switchover's target, else the preferred node, else whoever was primary
// last, else the lower name; a peer that cannot run it leaves it to us.
// Both nodes may propose at once: Apply lets only one promotion through.
func (m *Machine) candidate(r *resState, res *Resource) bool {
	me, peer := m.cfg.Node, r.peer
	if !m.peerEligible(peer, res) || res.Target == me {
		return true
	}
	if res.Target == peer {
		return false
	}
	switch res.Preferred {
	case me:
		return true
	case peer:
		return false
	}
	switch res.LastPrimary {
	case me:
		return true
	case peer:
		return false
	}
	return me < peer
}

// peerEligible: the peer could take the resource. Just after start, a peer
// not heard of yet, or not reported yet, is given StartupGrace to show up,
// so a cluster that boots together places resources on their preferred
// nodes instead of on whoever came first.
func (m *Machine) peerEligible(peer string, res *Resource) bool {
	if m.rec.IsStandby(peer) {
		return false
	}
	young := m.now.Before(m.start.Add(m.cfg.StartupGrace))
	switch m.members[peer].state {
	case MemberAlive:
	case memberUnknown:
		return young
	default:
		return false
	}
	st := res.State(peer)
	return st == StateUpToDate || (st == StateUnknown && young)
}

// failback moves the resource back to its preferred node (this one) with a
// switchover, once it has been UpToDate and connected for FailbackAfter
// (rule 6). Only with failback: auto.
func (m *Machine) failback(r *resState, res *Resource, ok bool) {
	healthy := ok && r.cfg.Failback == FailbackAuto && res.Preferred == m.cfg.Node && res.Target == "" &&
		r.vol.Connected && !r.vol.Syncing && r.vol.PeerDisk == DiskUpToDate && res.State(r.peer) == StateUpToDate
	if !healthy {
		r.healthySince = time.Time{}
		return
	}
	if r.healthySince.IsZero() {
		r.healthySince = m.now
		return
	}
	if m.now.Sub(r.healthySince) >= r.cfg.FailbackAfter {
		if m.propose(r.cfg.Name, Command{Op: OpSwitchover, Resource: r.cfg.Name, Node: m.cfg.Node}, "", "") {
			r.healthySince = m.now // retried after another full period if refused
		}
	}
}

// fence starts or retries fencing node for every resource it is primary of
// without a confirmation yet.
func (m *Machine) fence(node string) {
	epochs := map[string]uint64{}
	for name, res := range m.rec.Resources {
		if res.Primary == node && !fencedNow(res) {
			epochs[name] = res.Epoch
		}
	}
	if len(epochs) == 0 {
		return
	}
	fs := m.fences[node]
	if fs != nil && !fs.inFlight && !maps.Equal(fs.epochs, epochs) {
		fs = nil
	}
	if fs == nil {
		fs = &fenceState{epochs: epochs}
		m.fences[node] = fs
	}
	switch {
	case fs.inFlight:
		return
	case fs.confirmed:
		m.propose("fence:"+node, Command{Op: OpFenced, Node: node, Epochs: maps.Clone(fs.epochs), Method: fs.method}, "", "")
		return
	case !fs.lastTry.IsZero() && m.now.Before(fs.lastTry.Add(m.cfg.FenceRetry)):
		return
	}
	fs.inFlight, fs.lastTry = true, m.now
	if fs.attempts == 0 {
		fs.since = m.now
	}
	fs.attempts++
	m.emit(FenceNode{Node: node, Epochs: maps.Clone(epochs)})
}

func (m *Machine) fenceResult(e FenceResult) {
	fs := m.fences[e.Node]
	if fs == nil || !maps.Equal(fs.epochs, e.Epochs) {
		if e.Err == nil && len(e.Epochs) > 0 {
			// A result for another round: still a valid confirmation of
			// the epochs it names; Apply checks them.
			m.propose("fence:"+e.Node, Command{Op: OpFenced, Node: e.Node, Epochs: maps.Clone(e.Epochs), Method: e.Method}, "", "")
		}
		return
	}
	fs.inFlight = false
	if e.Err != nil && fs.canceled {
		delete(m.fences, e.Node) // canceled in time: nothing to retry
		return
	}
	if e.Err != nil {
		fs.lastErr = e.Err.Error()
		names := slices.Sorted(maps.Keys(fs.epochs))
		m.emit(Alert{Text: fmt.Sprintf("fencing %s failed (attempt %d): %v; promotion of %s is blocked; retrying every %v; once you know %s is off, `tandem fence confirm %s` unblocks it",
			e.Node, fs.attempts, e.Err, strings.Join(names, ", "), m.cfg.FenceRetry, e.Node, e.Node)})
		return
	}
	fs.confirmed, fs.method = true, e.Method
	if fs.method == "" {
		fs.method = "fence"
	}
	m.propose("fence:"+e.Node, Command{Op: OpFenced, Node: e.Node, Epochs: maps.Clone(fs.epochs), Method: fs.method}, "", "")
}

func (m *Machine) admin(e AdminRequest) {
	fail := func(err error) { m.emit(AdminReply{ID: e.ID, Err: err}) }
	slot := "admin:" + e.ID
	res := m.rec.Resource(e.Resource)
	switch e.Op {
	case AdminPromote, AdminDemote:
		r := m.resource(e.Resource)
		if r == nil || res == nil {
			fail(fmt.Errorf("cluster: %s %q: %w on this node", e.Op, e.Resource, ErrNoReplica))
			return
		}
		if e.Op == AdminDemote {
			if !r.primary {
				fail(fmt.Errorf("cluster: demote %s: %w on this node", e.Resource, ErrNotPrimary))
				return
			}
			epoch := r.epoch
			r.hold = true
			m.stepDown(r)
			m.propose(slot, Command{Op: OpDemote, Resource: e.Resource, Node: m.cfg.Node, Epoch: epoch, Hold: true}, e.ID, "demoted; no automatic promotion until `tandem promote` or `switchover`")
			return
		}
		if r.primary {
			m.emit(AdminReply{ID: e.ID, Text: "already primary here"})
			return
		}
		st := res.State(m.cfg.Node)
		if !r.volKnown || diskToState(r.vol.Disk) == "" || diskToState(r.vol.Disk) == StateFailed {
			fail(fmt.Errorf("cluster: promote %s: local disk is %s: %w", e.Resource, r.vol.Disk, ErrNotUpToDate))
			return
		}
		behind := st != StateUpToDate || r.vol.Disk != DiskUpToDate
		if behind && !e.Force {
			fail(fmt.Errorf("cluster: promote %s: this replica is %s in the record, %s locally (--force discards what it lacks): %w", e.Resource, st, r.vol.Disk, ErrNotUpToDate))
			return
		}
		if res.Primary == r.peer && !fencedNow(res) {
			fail(fmt.Errorf("cluster: promote %s: %s is primary at epoch %d and not fenced: fence it (`tandem fence %s`) or, once you know it is off, `tandem fence confirm %s`: %w",
				e.Resource, r.peer, res.Epoch, r.peer, r.peer, ErrNotFenced))
			return
		}
		if res.Primary == r.peer {
			// Even an admin's promotion waits out the old primary's lease
			// after a manual fence confirmation: it may be wrong, the
			// lease is not (rule 7).
			if !m.gone(r.peer) {
				fail(fmt.Errorf("cluster: promote %s: %s is primary and alive (use switchover): %w", e.Resource, r.peer, ErrNotAllowed))
				return
			}
			if wait := m.leaseWait(r.peer, res); wait > 0 {
				fail(fmt.Errorf("cluster: promote %s: %s was seen %v ago; its lease may still run: retry in %v: %w",
					e.Resource, r.peer, m.now.Sub(m.lastSeen(r.peer)), wait, ErrNotAllowed))
				return
			}
		}
		cmd := Command{Op: OpPromote, Resource: e.Resource, Node: m.cfg.Node, Epoch: res.Epoch + 1, Manual: true}
		text := "promoted"
		if behind {
			cmd.Force, cmd.Discarded = true, m.discards(r, res)
			text = "promoted by force: " + cmd.Discarded
		}
		m.propose(slot, cmd, e.ID, text)
	case AdminSwitchover:
		if res == nil {
			fail(fmt.Errorf("cluster: switchover %q: %w", e.Resource, ErrUnknownResource))
			return
		}
		to := e.Node
		if to == "" {
			if res.Primary == "" {
				fail(fmt.Errorf("cluster: switchover %s: no primary to move (use promote): %w", e.Resource, ErrNotAllowed))
				return
			}
			to = res.Peer(res.Primary)
		}
		m.propose(slot, Command{Op: OpSwitchover, Resource: e.Resource, Node: to}, e.ID, fmt.Sprintf("switchover of %s to %s started", e.Resource, to))
	case AdminStandby, AdminUnstandby:
		op := OpStandby
		if e.Op == AdminUnstandby {
			op = OpUnstandby
		}
		m.propose(slot, Command{Op: op, Node: e.Node}, e.ID, fmt.Sprintf("%s %s", e.Op, e.Node))
	case AdminFenceConfirm:
		epochs := map[string]uint64{}
		for name, r := range m.rec.Resources {
			if r.Primary == e.Node && !fencedNow(r) {
				epochs[name] = r.Epoch
			}
		}
		if len(epochs) == 0 {
			fail(fmt.Errorf("cluster: fence confirm %s: it is primary of nothing that awaits fencing: %w", e.Node, ErrNotAllowed))
			return
		}
		m.propose(slot, Command{Op: OpFenced, Node: e.Node, Epochs: epochs, Method: "manual"}, e.ID,
			fmt.Sprintf("%s recorded as off (manual confirmation) for %s", e.Node, strings.Join(slices.Sorted(maps.Keys(epochs)), ", ")))
	default:
		fail(fmt.Errorf("cluster: admin op %q: %w", e.Op, ErrBadCommand))
	}
}

// discards says what a forced promotion of this replica gives up.
func (m *Machine) discards(r *resState, res *Resource) string {
	me, peer := m.cfg.Node, r.peer
	var parts []string
	if rp := res.Replicas[me]; rp != nil && rp.State != StateUpToDate {
		switch rp.State {
		case StateOutdated:
			parts = append(parts, fmt.Sprintf("%s has been Outdated since %s (epoch %d): every write %s acknowledged after that is lost",
				me, rp.Since.UTC().Format(time.RFC3339), rp.Epoch, peer))
		default:
			parts = append(parts, fmt.Sprintf("%s is %s in the authority record", me, rp.State))
		}
	}
	if r.vol.Disk == DiskInconsistent {
		parts = append(parts, "the local image is incomplete (Inconsistent): blocks a resync had not copied yet hold stale data")
	} else if r.vol.Disk == DiskOutdated {
		parts = append(parts, "the local disk is Outdated")
	}
	parts = append(parts, fmt.Sprintf("%s becomes Outdated and resyncs from %s, discarding whatever it has that %s lacks", peer, me, me))
	return strings.Join(parts, "; ")
}

// Status is a snapshot of the machine, for `tandem status` and tests.
type Status struct {
	Node      string                 `json:"node"`
	Quorum    bool                   `json:"quorum"`
	Members   map[string]MemberState `json:"members"`
	Record    *Record                `json:"-"`
	Resources []ResourceStatus       `json:"resources"`
	// Fencing lists the fencings this node runs that still block a
	// promotion (rule 5), by node name; empty when none.
	Fencing []FencingStatus `json:"fencing,omitempty"`
}

// FencingStatus is a fencing of a node that has not been confirmed yet:
// what it blocks and how it went so far.
type FencingStatus struct {
	Node string `json:"node"`
	// Resources it was primary of, whose promotion waits for it.
	Resources []string `json:"resources"`
	// Attempts so far, since the first; InFlight: one runs now.
	Attempts int       `json:"attempts"`
	Since    time.Time `json:"since,omitzero"`
	InFlight bool      `json:"in_flight,omitempty"`
	// LastError is the last failed attempt's error ("" before any failed).
	LastError string `json:"last_error,omitempty"`
}

// ResourceStatus is this node's part in one resource.
type ResourceStatus struct {
	Resource string `json:"resource"`
	// Primary: this node acts as primary (it may still be suspended).
	Primary bool   `json:"primary"`
	Epoch   uint64 `json:"epoch,omitempty"`
	// Serving: primary with I/O running (writes are acknowledged).
	Serving         bool      `json:"serving"`
	VIP             bool      `json:"vip"`
	LeaseUntil      time.Time `json:"lease_until,omitzero"`
	Handoff         bool      `json:"handoff,omitempty"`
	WaitingDegraded bool      `json:"waiting_degraded,omitempty"`
	// Blocked: why this node does not take over a primary that is gone
	// (its replica is not UpToDate), "" when nothing stops it.
	Blocked string `json:"blocked,omitempty"`
}

// Status returns a snapshot.
func (m *Machine) Status() Status {
	s := Status{Node: m.cfg.Node, Quorum: m.quorum(), Members: map[string]MemberState{}, Record: m.rec}
	for n, mb := range m.members {
		st := mb.state
		if st == memberUnknown {
			st = "Unknown"
		}
		s.Members[n] = st
	}
	for _, r := range m.res {
		rs := ResourceStatus{Resource: r.cfg.Name, Primary: r.primary, VIP: r.vip, Handoff: r.handoff, WaitingDegraded: r.degradedWaiting, Blocked: r.blocked}
		if r.primary {
			rs.Epoch, rs.Serving, rs.LeaseUntil = r.epoch, !r.suspended, r.leaseUntil
		}
		s.Resources = append(s.Resources, rs)
	}
	for _, node := range slices.Sorted(maps.Keys(m.fences)) {
		fs := m.fences[node]
		if fs.confirmed || fs.attempts == 0 {
			continue
		}
		// Only what the record still waits for: a manual confirmation
		// committed meanwhile ends the wait without a result here.
		var blocked []string
		for _, name := range slices.Sorted(maps.Keys(fs.epochs)) {
			if res := m.rec.Resource(name); res != nil && res.Primary == node && res.Epoch == fs.epochs[name] && !fencedNow(res) {
				blocked = append(blocked, name)
			}
		}
		if len(blocked) > 0 {
			s.Fencing = append(s.Fencing, FencingStatus{Node: node, Resources: blocked, Attempts: fs.attempts,
				Since: fs.since, InFlight: fs.inFlight, LastError: fs.lastErr})
		}
	}
	return s
}
