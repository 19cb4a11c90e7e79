package cluster

import (
	"fmt"
	"maps"
	"slices"
)

// Ready is what one Step asks the caller to do, in order. Actions on one
// resource must be carried out in the order given (Demote before
// ReleaseVIP, Promote before ClaimVIP...); the outcome of those that can
// fail comes back as events (FenceResult, Committed, ProposalFailed).
type Ready struct {
	Actions []Action
}

// Action is an output of the machine.
type Action interface {
	fmt.Stringer
	action()
}

// Propose sends a command to the replicated log (forwarded to the raft
// leader). Its outcome arrives as Committed, or ProposalFailed.
type Propose struct{ Cmd Command }

// FenceNode powers Node off and confirms it is off (fence levels in order);
// the outcome arrives as FenceResult with the same Epochs.
type FenceNode struct {
	Node   string
	Epochs map[string]uint64
}

// CancelFence asks the fencing of Node in flight to stop: the failure
// detector took it back (the node was seen Alive again before the
// promotion), so powering it off would turn a false alarm into an outage.
// The outcome still arrives as FenceResult: an error if the cancel came in
// time, a confirmation if the power-off had been done already.
type CancelFence struct{ Node string }

// Promote makes the local replica primary at Epoch (force: it is not
// UpToDate); I/O runs afterwards.
type Promote struct {
	Resource string
	Epoch    uint64
	Force    bool
}

// Demote makes the local replica secondary (it flushes first); I/O held by
// SuspendIO fails with "not primary" and clients reconnect to the VIP.
type Demote struct{ Resource string }

// SuspendIO holds application I/O: nothing is acknowledged until ResumeIO.
type SuspendIO struct{ Resource string }

// ResumeIO releases held I/O and serves again.
type ResumeIO struct{ Resource string }

// FailIO fails held and new I/O with an error (on-no-quorum: io-error)
// until ResumeIO.
type FailIO struct{ Resource string }

// AllowDegraded answers a DegradedRequest: the peer is Outdated in the
// record, the write may be acknowledged.
type AllowDegraded struct{ Resource string }

// RefuseDegraded answers a DegradedRequest: the write must fail.
type RefuseDegraded struct {
	Resource string
	Reason   string
}

// ClaimVIP adds and announces the resource's service address.
type ClaimVIP struct{ Resource string }

// ReleaseVIP removes it.
type ReleaseVIP struct{ Resource string }

// StartResync asks the volume to resync this side from the peer.
type StartResync struct{ Resource string }

// Alert is something an admin must hear of (logged, and sent to the
// configured alert hooks).
type Alert struct {
	Resource string // "" for node-wide alerts
	Text     string
}

// AdminReply answers an AdminRequest.
type AdminReply struct {
	ID   string
	Err  error
	Text string // what was done (a forced promotion says what it discarded)
}

func (Propose) action()        {}
func (FenceNode) action()      {}
func (CancelFence) action()    {}
func (Promote) action()        {}
func (Demote) action()         {}
func (SuspendIO) action()      {}
func (ResumeIO) action()       {}
func (FailIO) action()         {}
func (AllowDegraded) action()  {}
func (RefuseDegraded) action() {}
func (ClaimVIP) action()       {}
func (ReleaseVIP) action()     {}
func (StartResync) action()    {}
func (Alert) action()          {}
func (AdminReply) action()     {}

func (a Propose) String() string { return "propose " + a.Cmd.String() }
func (a FenceNode) String() string {
	return fmt.Sprintf("fence %s %v", a.Node, slices.Sorted(maps.Keys(a.Epochs)))
}
func (a CancelFence) String() string { return "cancel-fence " + a.Node }
func (a Promote) String() string {
	if a.Force {
		return fmt.Sprintf("promote %s epoch=%d force", a.Resource, a.Epoch)
	}
	return fmt.Sprintf("promote %s epoch=%d", a.Resource, a.Epoch)
}
func (a Demote) String() string         { return "demote " + a.Resource }
func (a SuspendIO) String() string      { return "suspend-io " + a.Resource }
func (a ResumeIO) String() string       { return "resume-io " + a.Resource }
func (a FailIO) String() string         { return "fail-io " + a.Resource }
func (a AllowDegraded) String() string  { return "allow-degraded " + a.Resource }
func (a RefuseDegraded) String() string { return "refuse-degraded " + a.Resource + ": " + a.Reason }
func (a ClaimVIP) String() string       { return "claim-vip " + a.Resource }
func (a ReleaseVIP) String() string     { return "release-vip " + a.Resource }
func (a StartResync) String() string    { return "start-resync " + a.Resource }
func (a Alert) String() string          { return "alert " + a.Resource + ": " + a.Text }
func (a AdminReply) String() string {
	if a.Err != nil {
		return fmt.Sprintf("admin-reply %s: %v", a.ID, a.Err)
	}
	return fmt.Sprintf("admin-reply %s: ok %s", a.ID, a.Text)
}
