package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// Op names what a command does.
type Op string

const (
	// OpDefine adds a resource (or changes its preferred node); its
	// replica set never changes once defined.
	OpDefine Op = "define"
	// OpReportDisk: a replica reports its own disk state; only a downgrade
	// (or the first report) is accepted.
	OpReportDisk Op = "report-disk"
	// OpPromote makes Node primary at Epoch (which must be the current one
	// plus one).
	OpPromote Op = "promote"
	// OpDemote: the primary says it stopped serving.
	OpDemote Op = "demote"
	// OpConfirmPrimary changes nothing but proves, once committed, that
	// Node was still primary at Epoch: a primary resumes I/O after a
	// quorum loss only on that proof.
	OpConfirmPrimary Op = "confirm-primary"
	// OpMarkOutdated: the primary is about to acknowledge writes without
	// Node.
	OpMarkOutdated Op = "mark-outdated"
	// OpMarkUpToDate: the primary saw Node finish its resync.
	OpMarkUpToDate Op = "mark-uptodate"
	// OpFenced records that Node was confirmed off.
	OpFenced Op = "fenced"
	// OpSwitchover asks the primary to hand the resource to Node.
	OpSwitchover Op = "switchover"
	// OpCancelSwitchover drops a pending switchover.
	OpCancelSwitchover Op = "cancel-switchover"
	// OpStandby / OpUnstandby put a data node in or out of standby.
	OpStandby   Op = "standby"
	OpUnstandby Op = "unstandby"
)

// Command is one change to the authority record, as the replicated log
// carries it. Only the fields its Op uses may be set.
type Command struct {
	Version int `json:"version"`
	Op      Op  `json:"op"`
	// ID identifies the proposal so its proposer recognises the outcome.
	ID string `json:"id"`
	// By is the proposing node; commands that need the primary check it.
	By string `json:"by"`
	// At is the proposer's clock; recorded, never compared.
	At time.Time `json:"at"`

	Resource string       `json:"resource,omitempty"`
	Node     string       `json:"node,omitempty"`
	Epoch    uint64       `json:"epoch,omitempty"`
	State    ReplicaState `json:"state,omitempty"`
	// IfSeq, for OpMarkUpToDate: the resource's Seq the primary saw.
	IfSeq uint64 `json:"if_seq,omitempty"`
	// Replicas and Preferred, for OpDefine.
	Replicas  []string `json:"replicas,omitempty"`
	Preferred string   `json:"preferred,omitempty"`
	// Force (promote) accepts a replica that is not UpToDate; Discarded
	// says what that gives up, and is recorded.
	Force     bool   `json:"force,omitempty"`
	Discarded string `json:"discarded,omitempty"`
	// Manual: an admin asked for it (a held resource is promoted only so).
	Manual bool `json:"manual,omitempty"`
	// Hold (demote): no automatic promotion afterwards.
	Hold bool `json:"hold,omitempty"`
	// Epochs and Method, for OpFenced.
	Epochs map[string]uint64 `json:"epochs,omitempty"`
	Method string            `json:"method,omitempty"`
}

// Errors Apply refuses commands with; callers branch on them.
var (
	ErrBadCommand      = errors.New("cluster: malformed command")
	ErrUnknownResource = errors.New("cluster: unknown resource")
	ErrNoReplica       = errors.New("cluster: node holds no replica of the resource")
	// ErrStaleEpoch: the command was made for an epoch that is no longer
	// current (a deposed primary, a lost race).
	ErrStaleEpoch = errors.New("cluster: stale epoch")
	// ErrNotPrimary: the command needs the resource's primary.
	ErrNotPrimary = errors.New("cluster: not the primary")
	// ErrNotUpToDate: promotion of a replica that is not UpToDate, without
	// force.
	ErrNotUpToDate = errors.New("cluster: replica is not UpToDate")
	// ErrNotFenced: promotion while the previous primary is neither
	// confirmed off nor demoted.
	ErrNotFenced = errors.New("cluster: previous primary neither fenced nor demoted")
	// ErrStandby: the node is in standby.
	ErrStandby = errors.New("cluster: node is in standby")
	// ErrHeld: an admin demoted the resource; only an admin promotes it.
	ErrHeld = errors.New("cluster: resource held by an admin demote")
	// ErrSeqMismatch: the resource changed since the proposer looked.
	ErrSeqMismatch = errors.New("cluster: resource changed since the command was made")
	// ErrNotAllowed: a transition the rules forbid (a replica upgrading
	// itself, a switchover without a primary...).
	ErrNotAllowed = errors.New("cluster: not allowed")
	// ErrFenced: the proposer is recorded as fenced (confirmed off) at
	// the command's epoch; it keeps no authority there, whatever it
	// believes (a manual confirmation was wrong and it still runs).
	ErrFenced = errors.New("cluster: proposer is recorded as fenced")
)

// Marshal encodes the command for the replicated log.
func (c Command) Marshal() ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("cluster: encoding command %s: %w", c.Op, err)
	}
	return b, nil
}

// UnmarshalCommand decodes a command from the replicated log.
func UnmarshalCommand(b []byte) (Command, error) {
	var c Command
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Command{}, fmt.Errorf("cluster: decoding command: %w", err)
	}
	if c.Version != RecordVersion {
		return Command{}, fmt.Errorf("cluster: command version %d, this build reads %d: %w", c.Version, RecordVersion, ErrVersion)
	}
	return c, nil
}

func (c Command) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", c.Op)
	if c.Resource != "" {
		fmt.Fprintf(&b, " %s", c.Resource)
	}
	if c.Node != "" {
		fmt.Fprintf(&b, " node=%s", c.Node)
	}
	if c.Epoch != 0 {
		fmt.Fprintf(&b, " epoch=%d", c.Epoch)
	}
	if c.State != "" {
		fmt.Fprintf(&b, " state=%s", c.State)
	}
	if c.Force {
		b.WriteString(" force")
	}
	fmt.Fprintf(&b, " by=%s", c.By)
	return b.String()
}

// Apply returns the record after cmd, or an error and no change. It is a
// pure, deterministic function (no clock, no randomness, map order never
// matters): every voter applies the same log to the same record and gets the
// same result, refusals included. It is where the safety rules are enforced
// for good; the machines only decide what to propose.
func Apply(rec *Record, cmd Command) (*Record, error) {
	if rec == nil {
		rec = NewRecord()
	}
	if rec.Version != RecordVersion || cmd.Version != RecordVersion {
		return rec, fmt.Errorf("cluster: %s: record version %d, command version %d, this build %d: %w",
			cmd.Op, rec.Version, cmd.Version, RecordVersion, ErrVersion)
	}
	if cmd.By == "" {
		return rec, fmt.Errorf("cluster: %s: no proposer: %w", cmd.Op, ErrBadCommand)
	}
	next := rec.Clone()
	var err error
	switch cmd.Op {
	case OpDefine:
		err = next.define(cmd)
	case OpStandby, OpUnstandby:
		err = next.standby(cmd)
	case OpFenced:
		err = next.fenced(cmd)
	default:
		var res *Resource
		res, err = next.resourceFor(cmd)
		if err == nil {
			err = next.applyResource(res, cmd)
		}
	}
	if err != nil {
		return rec, fmt.Errorf("cluster: %s: %w", cmd, err)
	}
	next.Index++
	return next, nil
}

func (r *Record) resourceFor(cmd Command) (*Resource, error) {
	res := r.Resources[cmd.Resource]
	if res == nil {
		return nil, fmt.Errorf("resource %q: %w", cmd.Resource, ErrUnknownResource)
	}
	if _, ok := res.Replicas[cmd.Node]; !ok {
		return nil, fmt.Errorf("node %q: %w", cmd.Node, ErrNoReplica)
	}
	return res, nil
}

func (r *Record) define(cmd Command) error {
	if cmd.Resource == "" || len(cmd.Replicas) != 2 || cmd.Replicas[0] == "" || cmd.Replicas[1] == "" || cmd.Replicas[0] == cmd.Replicas[1] {
		return fmt.Errorf("a resource needs a name and two distinct replicas: %w", ErrBadCommand)
	}
	if cmd.Preferred != "" && !slices.Contains(cmd.Replicas, cmd.Preferred) {
		return fmt.Errorf("preferred node %q holds no replica: %w", cmd.Preferred, ErrBadCommand)
	}
	if res := r.Resources[cmd.Resource]; res != nil {
		if !sameSet(slices.Collect(maps.Keys(res.Replicas)), cmd.Replicas) {
			return fmt.Errorf("replicas %v differ from the recorded %v; a resource's replicas never change: %w",
				cmd.Replicas, slices.Sorted(maps.Keys(res.Replicas)), ErrNotAllowed)
		}
		if res.Preferred != cmd.Preferred {
			res.Preferred = cmd.Preferred
			res.Seq++
		}
		return nil
	}
	res := &Resource{Name: cmd.Resource, Preferred: cmd.Preferred, Replicas: map[string]*Replica{}, Seq: 1}
	for _, n := range cmd.Replicas {
		res.Replicas[n] = &Replica{State: StateUnknown, Since: cmd.At}
	}
	r.Resources[cmd.Resource] = res
	return nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	sort.Strings(a)
	sort.Strings(b)
	return slices.Equal(a, b)
}

func (r *Record) dataNode(node string) bool {
	for _, res := range r.Resources {
		if _, ok := res.Replicas[node]; ok {
			return true
		}
	}
	return false
}

func (r *Record) standby(cmd Command) error {
	if !r.dataNode(cmd.Node) {
		return fmt.Errorf("node %q holds no replica of any resource: %w", cmd.Node, ErrNoReplica)
	}
	i, in := slices.BinarySearch(r.Standby, cmd.Node)
	switch {
	case cmd.Op == OpStandby && !in:
		r.Standby = slices.Insert(r.Standby, i, cmd.Node)
	case cmd.Op == OpUnstandby && in:
		r.Standby = slices.Delete(r.Standby, i, i+1)
	}
	if len(r.Standby) == 0 {
		r.Standby = nil
	}
	return nil
}

// fenced records a confirmation for every resource the node was primary of
// at the epochs the fencer saw: a confirmation that arrives after the node
// came back and was promoted again covers nothing.
func (r *Record) fenced(cmd Command) error {
	if cmd.Node == "" || len(cmd.Epochs) == 0 || cmd.Method == "" {
		return fmt.Errorf("a fencing confirmation needs the node, the epochs it covers and the method: %w", ErrBadCommand)
	}
	f := Fence{Node: cmd.Node, Epochs: maps.Clone(cmd.Epochs), At: cmd.At, Method: cmd.Method, By: cmd.By}
	covered := 0
	for _, name := range slices.Sorted(maps.Keys(cmd.Epochs)) {
		res := r.Resources[name]
		if res == nil || res.Primary != cmd.Node || res.Epoch != cmd.Epochs[name] {
			continue
		}
		rf := f.clone()
		rf.Epoch = res.Epoch
		res.Fenced = &rf
		res.Seq++
		covered++
	}
	if covered == 0 {
		return fmt.Errorf("node %q is no longer primary at the epochs fenced (%v): %w", cmd.Node, cmd.Epochs, ErrStaleEpoch)
	}
	r.Fences = append(r.Fences, f)
	if len(r.Fences) > fenceHistory {
		r.Fences = slices.Delete(r.Fences, 0, len(r.Fences)-fenceHistory)
	}
	return nil
}

func (r *Record) applyResource(res *Resource, cmd Command) error {
	switch cmd.Op {
	case OpReportDisk:
		return res.reportDisk(cmd)
	case OpPromote:
		return r.promote(res, cmd)
	case OpDemote:
		if err := res.selfByPrimary(cmd); err != nil {
			return err
		}
		res.LastPrimary, res.Primary, res.Fenced = res.Primary, "", nil
		res.Held = res.Held || cmd.Hold
		res.Seq++
		return nil
	case OpConfirmPrimary:
		if err := res.selfByPrimary(cmd); err != nil {
			return err
		}
		return res.notFenced(cmd)
	case OpMarkOutdated, OpMarkUpToDate:
		if err := res.byPrimary(cmd); err != nil {
			return err
		}
		if err := res.notFenced(cmd); err != nil {
			return err
		}
		if cmd.Node == res.Primary {
			return fmt.Errorf("the primary cannot mark itself: %w", ErrBadCommand)
		}
		rp := res.Replicas[cmd.Node]
		if cmd.Op == OpMarkUpToDate {
			if cmd.IfSeq != res.Seq {
				return fmt.Errorf("seen at seq %d, now %d: %w", cmd.IfSeq, res.Seq, ErrSeqMismatch)
			}
			res.setState(cmd.Node, StateUpToDate, cmd.At)
		} else if rp.State.rank() >= StateOutdated.rank() || rp.State == StateUnknown {
			res.setState(cmd.Node, StateOutdated, cmd.At)
		}
		// Always a new Seq, even when already Outdated: a MarkUpToDate made
		// before this point must not land after it.
		res.Seq++
		return nil
	case OpSwitchover:
		if res.Primary == "" {
			return fmt.Errorf("%s has no primary to switch over from (promote instead): %w", res.Name, ErrNotAllowed)
		}
		if res.Primary == cmd.Node {
			return fmt.Errorf("%s is already primary on %s: %w", res.Name, cmd.Node, ErrNotAllowed)
		}
		if r.IsStandby(cmd.Node) {
			return fmt.Errorf("target %s: %w", cmd.Node, ErrStandby)
		}
		if st := res.State(cmd.Node); st != StateUpToDate {
			return fmt.Errorf("target %s is %s: %w", cmd.Node, st, ErrNotUpToDate)
		}
		res.Target = cmd.Node
		res.Seq++
		return nil
	case OpCancelSwitchover:
		if res.Target != cmd.Node {
			return fmt.Errorf("no switchover to %s is pending: %w", cmd.Node, ErrNotAllowed)
		}
		res.Target = ""
		res.Seq++
		return nil
	}
	return fmt.Errorf("unknown op %q: %w", cmd.Op, ErrBadCommand)
}

// byPrimary checks that the proposer is the primary at the command's epoch.
func (res *Resource) byPrimary(cmd Command) error {
	if cmd.Epoch != res.Epoch {
		return fmt.Errorf("epoch %d, current %d: %w", cmd.Epoch, res.Epoch, ErrStaleEpoch)
	}
	if res.Primary != cmd.By {
		return fmt.Errorf("%s is not primary of %s (primary %q): %w", cmd.By, res.Name, res.Primary, ErrNotPrimary)
	}
	return nil
}

// notFenced refuses a primary's claim of authority once its fencing is
// recorded: the survivor may be promoting on that confirmation, so a
// primary that still runs (a person confirmed it off by mistake) must not
// renew its right to acknowledge writes, nor mark its peer Outdated.
// Demoting stays allowed: it is how such a primary gets out of the way.
func (res *Resource) notFenced(cmd Command) error {
	if res.Fenced != nil && res.Fenced.Node == cmd.By && res.Fenced.Epoch == cmd.Epoch {
		return fmt.Errorf("%s was confirmed off at epoch %d (%s, relayed by %s): %w",
			cmd.By, cmd.Epoch, res.Fenced.Method, res.Fenced.By, ErrFenced)
	}
	return nil
}

// selfByPrimary: byPrimary, for a command about the proposer itself.
func (res *Resource) selfByPrimary(cmd Command) error {
	if cmd.Node != cmd.By {
		return fmt.Errorf("%s cannot %s for %s (a primary speaks for itself): %w", cmd.By, cmd.Op, cmd.Node, ErrBadCommand)
	}
	return res.byPrimary(cmd)
}

func (res *Resource) setState(node string, st ReplicaState, at time.Time) {
	rp := res.Replicas[node]
	if rp.State != st {
		*rp = Replica{State: st, Since: at, Epoch: res.Epoch}
	}
}

// reportDisk accepts a replica's own report only when it lowers what the
// record claims (or is the first one): an upgrade to UpToDate is the
// primary's word after a resync, never the replica's own, so a node that
// missed writes cannot talk itself back into promotability. A Failed disk
// that was replaced comes back Inconsistent.
func (res *Resource) reportDisk(cmd Command) error {
	if cmd.By != cmd.Node {
		return fmt.Errorf("%s cannot report %s's disk: %w", cmd.By, cmd.Node, ErrBadCommand)
	}
	if cmd.State == StateUnknown || !cmd.State.valid() {
		return fmt.Errorf("state %q: %w", cmd.State, ErrBadCommand)
	}
	cur := res.State(cmd.Node)
	ok := cur == StateUnknown || cmd.State.rank() <= cur.rank() ||
		(cur == StateFailed && cmd.State == StateInconsistent)
	if !ok {
		return fmt.Errorf("%s is %s in the record and cannot raise itself to %s (only the primary marks a resynced replica UpToDate): %w",
			cmd.Node, cur, cmd.State, ErrNotAllowed)
	}
	if cur != cmd.State {
		res.setState(cmd.Node, cmd.State, cmd.At)
		res.Seq++
	}
	return nil
}

// promote enforces rule 1 (UpToDate data, previous primary fenced or
// demoted, epoch+1) and rule 3 (an Outdated replica only with force).
// Quorum is the log's: a command is applied only once a majority of voters
// has it.
func (r *Record) promote(res *Resource, cmd Command) error {
	if cmd.By != cmd.Node {
		return fmt.Errorf("%s cannot promote %s (a node promotes itself): %w", cmd.By, cmd.Node, ErrBadCommand)
	}
	if cmd.Epoch != res.Epoch+1 {
		return fmt.Errorf("promotion at epoch %d, current %d: %w", cmd.Epoch, res.Epoch, ErrStaleEpoch)
	}
	if r.IsStandby(cmd.Node) {
		return fmt.Errorf("%s: %w", cmd.Node, ErrStandby)
	}
	if res.Held && !cmd.Manual {
		return fmt.Errorf("%s: %w", res.Name, ErrHeld)
	}
	st := res.State(cmd.Node)
	if st != StateUpToDate && !cmd.Force {
		return fmt.Errorf("%s is %s (promote --force discards what it lacks): %w", cmd.Node, st, ErrNotUpToDate)
	}
	if cmd.Force && st != StateUpToDate && cmd.Discarded == "" {
		return fmt.Errorf("a forced promotion must say what it discards: %w", ErrBadCommand)
	}
	how := "initial"
	switch {
	case res.Primary == cmd.Node:
		return fmt.Errorf("%s is already primary at epoch %d: %w", cmd.Node, res.Epoch, ErrNotAllowed)
	case res.Primary != "":
		if res.Fenced == nil || res.Fenced.Node != res.Primary || res.Fenced.Epoch != res.Epoch {
			return fmt.Errorf("%s is primary at epoch %d: %w", res.Primary, res.Epoch, ErrNotFenced)
		}
		how = "fenced"
		res.LastPrimary = res.Primary
	case res.LastPrimary != "":
		how = "demoted"
	}
	if cmd.Force && st != StateUpToDate {
		how = "forced"
		// The forced replica's history is now the resource's: the other
		// one, whatever it holds, must resync from it.
		peer := res.Peer(cmd.Node)
		if res.State(peer).rank() > StateOutdated.rank() {
			res.setState(peer, StateOutdated, cmd.At)
		}
	}
	res.Epoch = cmd.Epoch
	res.setState(cmd.Node, StateUpToDate, cmd.At)
	res.LastFailover = &Promotion{From: res.LastPrimary, To: cmd.Node, Epoch: res.Epoch, At: cmd.At, How: how}
	if how == "forced" {
		res.LastFailover.Discarded = cmd.Discarded
	}
	res.Primary, res.Fenced, res.Target = cmd.Node, nil, ""
	if cmd.Manual {
		res.Held = false
	}
	res.Seq++
	return nil
}
