package cluster

import "time"

// Event is an input to Machine.Step. Every event carries the time it
// happened on this node's clock; the machine has no other clock.
type Event interface {
	when() time.Time
}

// Tick is the passing of time; the caller delivers one every TickInterval.
// Leases, retries and timeouts advance only on events.
type Tick struct{ At time.Time }

// MemberState is what the failure detector says of a voter.
type MemberState string

const (
	// MemberAlive: answering, directly or through an indirect probe.
	MemberAlive MemberState = "Alive"
	// MemberSuspect: probes failed; not yet declared dead. It no longer
	// counts towards quorum, and is not yet failed over.
	MemberSuspect MemberState = "Suspect"
	// MemberDead: declared dead (or left).
	MemberDead MemberState = "Dead"
	// memberUnknown: not heard of since this machine started.
	memberUnknown MemberState = ""
)

// MemberChange reports a voter's new state. Quorum (a majority of voters,
// this node included, Alive) is derived from these: there is no separate
// quorum event, so quorum means the same thing for every decision.
type MemberChange struct {
	At    time.Time
	Node  string
	State MemberState
}

// DiskState is the local volume's disk state; the values are
// replicate.DiskState's.
type DiskState string

const (
	DiskUpToDate     DiskState = "UpToDate"
	DiskOutdated     DiskState = "Outdated"
	DiskInconsistent DiskState = "Inconsistent"
	DiskDiskless     DiskState = "Diskless"
	DiskFailed       DiskState = "Failed"
	DiskUnknown      DiskState = "DUnknown"
)

// VolumeState is what the local volume of a resource reports (from
// replicate.Status).
type VolumeState struct {
	Disk DiskState
	// Connected: the replication link is up (Connected, SyncSource,
	// SyncTarget, verifying).
	Connected bool
	// Syncing: a resync runs in either direction.
	Syncing  bool
	PeerDisk DiskState
	// Primary: the volume's role as it actually is.
	Primary bool
	// PeerHeard: the replication link carried a frame from the peer
	// lately (replicate.Status.PeerHeard).
	PeerHeard bool
	// Session: the volume's count of replication sessions established
	// (replicate.Status.Session).
	Session uint64
}

// VolumeReport carries the local volume's state after any change.
type VolumeReport struct {
	At       time.Time
	Resource string
	State    VolumeState
}

// DegradedRequest is the volume's OnDegraded hook: it is about to
// acknowledge a write without its peer and waits for AllowDegraded (rule 3:
// the peer is marked Outdated in the record first) or RefuseDegraded.
type DegradedRequest struct {
	At       time.Time
	Resource string
	// Session is the volume's session count when it asked: the session
	// whose end made the write degraded. A volume report is trusted to
	// show a connected, in-sync peer again only from a later session.
	Session uint64
}

// FenceResult is the outcome of a FenceNode action.
type FenceResult struct {
	At     time.Time
	Node   string
	Epochs map[string]uint64 // as in the action
	Method string            // the level that succeeded
	Err    error             // nil: confirmed off
}

// VIPResult is the outcome of a ClaimVIP. A refused claim (the address
// answers from another MAC: the node that was fenced may not be off) keeps
// I/O suspended and is retried every FenceRetry; the caller need not send
// successes except after a refusal.
type VIPResult struct {
	At       time.Time
	Resource string
	Err      error
}

// Committed is one entry of the replicated log, applied: the command, the
// refusal if Apply refused it, and the record afterwards (unchanged on a
// refusal). The caller delivers every entry, in log order.
type Committed struct {
	At     time.Time
	Cmd    Command
	Err    error
	Record *Record
}

// ProposalFailed: a Propose did not reach the log (no leader, no quorum,
// timeout). The entry may still commit later; the machine copes.
type ProposalFailed struct {
	At  time.Time
	ID  string
	Err error
}

// AdminOp names an admin command.
type AdminOp string

const (
	AdminPromote      AdminOp = "promote"
	AdminDemote       AdminOp = "demote"
	AdminSwitchover   AdminOp = "switchover"
	AdminStandby      AdminOp = "standby"
	AdminUnstandby    AdminOp = "unstandby"
	AdminFenceConfirm AdminOp = "fence-confirm"
)

// AdminRequest is an admin command given to this node. Promote and demote
// act on this node's replica; the others on the named resource or node
// from any node. The machine answers with an AdminReply carrying ID.
type AdminRequest struct {
	At       time.Time
	ID       string
	Op       AdminOp
	Resource string
	Node     string // switchover --to (optional), standby/unstandby, fence confirm
	Force    bool   // promote --force
}

// Reconfigure: an admin changed a resource's policies in the
// configuration file (tandem adjust). The machine takes over Preferred,
// OnNoQuorum, Failback and FailbackAfter of Resource, whose name and
// replicas must be those it runs; a new Preferred is committed to the
// record once. Anything it refuses is an Alert and changes nothing.
type Reconfigure struct {
	At       time.Time
	Resource ResourceConfig
}

func (e Tick) when() time.Time            { return e.At }
func (e MemberChange) when() time.Time    { return e.At }
func (e VolumeReport) when() time.Time    { return e.At }
func (e DegradedRequest) when() time.Time { return e.At }
func (e FenceResult) when() time.Time     { return e.At }
func (e Committed) when() time.Time       { return e.At }
func (e VIPResult) when() time.Time       { return e.At }
func (e ProposalFailed) when() time.Time  { return e.At }
func (e AdminRequest) when() time.Time    { return e.At }
func (e Reconfigure) when() time.Time     { return e.At }
