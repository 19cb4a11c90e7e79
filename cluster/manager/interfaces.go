package manager

import (
	"context"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/fence"
	"github.com/tandem-ha/tandem/replicate"
)

// Volume is the local replica of one resource; *replicate.Volume satisfies
// it.
type Volume interface {
	Status() replicate.Status
	Promote(ctx context.Context, force bool) (replicate.PromoteResult, error)
	Demote(ctx context.Context) error
	Resync(ctx context.Context, full bool) error
	// PeerFenced: fencing confirmed the peer off; a session to it that is
	// still up is a dead node's and ends now, not at the ping timeout.
	PeerFenced(ctx context.Context) error
}

// IOMode is what a resource's gate does with application I/O.
type IOMode int

const (
	// IORefuse: not primary here; requests fail with "not primary" and
	// clients go to the VIP.
	IORefuse IOMode = iota
	// IOServe: requests pass to the volume.
	IOServe
	// IOSuspend: requests are held, nothing is acknowledged, until the
	// mode changes (on-no-quorum: suspend-io, a handoff).
	IOSuspend
	// IOFail: requests fail with an I/O error (on-no-quorum: io-error).
	IOFail
)

func (m IOMode) String() string {
	switch m {
	case IORefuse:
		return "refuse"
	case IOServe:
		return "serve"
	case IOSuspend:
		return "suspend"
	case IOFail:
		return "fail"
	}
	return "unknown"
}

// Gate is the application-facing side of one resource (the daemon's NBD
// export). Held requests are released by the next SetIO: passed on by
// IOServe, failed by the others.
type Gate interface {
	SetIO(IOMode)
}

// LeaseGate is a Gate that also enforces the primary's lease itself: it
// holds requests once the deadline passed, until it is renewed. The
// manager renews it after every event while the machine holds the
// resource as primary, so a daemon whose event loop stalls (starved,
// swapping, stopped in a debugger) stops acknowledging writes when its
// lease ends even though it never processed the loss of quorum; the zero
// time turns the check off (not primary). Optional: a Gate without it
// relies on the SuspendIO the machine emits.
type LeaseGate interface {
	Gate
	SetLease(until time.Time)
}

// Fencer powers one node off and confirms it; *fence.Fencer satisfies it.
type Fencer interface {
	Off(ctx context.Context, req fence.Request) (*fence.Result, error)
}

// VIPs claims and releases the resources' service addresses; *vip.Set
// satisfies it (a resource without a VIP is a no-op there).
type VIPs interface {
	Claim(ctx context.Context, resource string) error
	Release(ctx context.Context, resource string) error
}

// Log is the replicated authority log; *authority.Authority satisfies it.
// Committed entries reach the manager through Manager.Commit (the
// authority's OnCommit).
type Log interface {
	Propose(ctx context.Context, cmd cluster.Command) (*cluster.Record, error)
}

// Clock is the manager's time: Now stamps events, Ticks drives the
// machine's timers (one tick every Machine TickInterval).
type Clock interface {
	Now() time.Time
	// Ticks returns a channel that delivers a tick every d, and a stop
	// function.
	Ticks(d time.Duration) (<-chan time.Time, func())
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) Ticks(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// RealClock is the wall clock.
var RealClock Clock = realClock{}
