package cluster

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Defaults of the machine's timing. The lease must end before the peer may
// promote: the peer waits Lease + Margin after it last saw the primary, and
// Margin covers the difference between two nodes' failure-detection delays
// (memberlist tuned as in docs/testbed: about 0.4 s, at most 0.5 s seen) and
// one tick.
const (
	DefaultLease             = 2 * time.Second
	DefaultMargin            = 1 * time.Second
	DefaultTickInterval      = 100 * time.Millisecond
	DefaultFenceRetry        = 5 * time.Second
	DefaultProposalTimeout   = 5 * time.Second
	DefaultSwitchoverTimeout = 30 * time.Second
	DefaultStartupGrace      = 10 * time.Second
	DefaultFailbackAfter     = 60 * time.Second
	DefaultLinkVeto          = 5 * time.Second
)

// NoQuorumPolicy is what a primary does with I/O once it lost quorum (the
// configuration's on-no-quorum).
type NoQuorumPolicy string

const (
	// NoQuorumSuspend holds requests until quorum returns or the node is
	// demoted: no error reaches the application (the default).
	NoQuorumSuspend NoQuorumPolicy = "suspend-io"
	// NoQuorumIOError fails them at once.
	NoQuorumIOError NoQuorumPolicy = "io-error"
)

// FailbackPolicy says whether a resource moves back to its preferred node.
type FailbackPolicy string

const (
	// FailbackManual: only a switchover moves it back (the default).
	FailbackManual FailbackPolicy = "manual"
	// FailbackAuto: the preferred node takes it back once it is UpToDate,
	// connected and has stayed so for FailbackAfter.
	FailbackAuto FailbackPolicy = "auto"
)

// Config is one node's view of the cluster for its Machine.
type Config struct {
	// Node is this node's name; Voters every voting node (data nodes and
	// the witness), this one included.
	Node   string
	Voters []string
	// Boot distinguishes this run's proposals from a previous run's (any
	// value unique per process start, e.g. the start time and a random
	// number): a node that restarts never acts on a promotion it proposed
	// before.
	Boot      string
	Resources []ResourceConfig

	Lease             time.Duration
	Margin            time.Duration
	TickInterval      time.Duration // how often the caller delivers Tick
	FenceRetry        time.Duration
	ProposalTimeout   time.Duration
	SwitchoverTimeout time.Duration
	// StartupGrace: a voter not heard of since this machine started counts
	// as gone only after it (so a whole cluster that boots together does
	// not fence its slow members).
	StartupGrace time.Duration
	// LinkVeto: a primary the failure detector calls dead while the
	// replication link still hears it is not fenced for up to this long
	// after it was last seen alive. A stalled detector on a loaded host
	// then costs nothing; a primary cut from the gossip network alone is
	// failed over once it ran out.
	LinkVeto time.Duration
}

// ResourceConfig is one resource as the machine needs it.
type ResourceConfig struct {
	Name          string
	Replicas      [2]string
	Preferred     string
	OnNoQuorum    NoQuorumPolicy
	Failback      FailbackPolicy
	FailbackAfter time.Duration
}

// ErrConfig: the machine's configuration is not usable.
var ErrConfig = errors.New("cluster: bad machine configuration")

// withDefaults fills in zero values and checks the rest.
func (c Config) withDefaults() (Config, error) {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Lease, DefaultLease)
	def(&c.Margin, DefaultMargin)
	def(&c.LinkVeto, DefaultLinkVeto)
	def(&c.TickInterval, DefaultTickInterval)
	def(&c.FenceRetry, DefaultFenceRetry)
	def(&c.ProposalTimeout, DefaultProposalTimeout)
	def(&c.SwitchoverTimeout, DefaultSwitchoverTimeout)
	def(&c.StartupGrace, DefaultStartupGrace)
	bad := func(f string, a ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(f, a...))
	}
	if c.Node == "" || !slices.Contains(c.Voters, c.Node) {
		return bad("node %q is not one of the voters %v", c.Node, c.Voters)
	}
	if len(c.Voters) < 3 || len(c.Voters)%2 == 0 {
		return bad("%d voters: quorum needs an odd number, at least 3 (two data nodes and a witness)", len(c.Voters))
	}
	for _, d := range []time.Duration{c.Lease, c.Margin, c.TickInterval, c.FenceRetry, c.ProposalTimeout, c.SwitchoverTimeout, c.StartupGrace} {
		if d < 0 {
			return bad("negative duration %v", d)
		}
	}
	if c.Margin < c.TickInterval {
		return bad("margin %v is shorter than the tick interval %v: a primary could see its lease end a tick late, after the peer promoted", c.Margin, c.TickInterval)
	}
	c.Resources = slices.Clone(c.Resources) // defaults go into our copy
	c.Voters = slices.Clone(c.Voters)
	seen := map[string]bool{}
	for i := range c.Resources {
		r := &c.Resources[i]
		if r.Name == "" || seen[r.Name] {
			return bad("resource %q: empty or duplicate name", r.Name)
		}
		seen[r.Name] = true
		if r.Replicas[0] == "" || r.Replicas[0] == r.Replicas[1] || r.Replicas[1] == "" {
			return bad("resource %s: needs two distinct replicas", r.Name)
		}
		for _, n := range r.Replicas {
			if !slices.Contains(c.Voters, n) {
				return bad("resource %s: replica node %q is not a voter", r.Name, n)
			}
		}
		if err := r.policies(); err != nil {
			return Config{}, err
		}
	}
	return c, nil
}

// policies fills in r's default policies and checks them: what
// Reconfigure may change while the machine runs.
func (r *ResourceConfig) policies() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("%w: resource %s: %s", ErrConfig, r.Name, fmt.Sprintf(f, a...))
	}
	if r.Preferred != "" && !slices.Contains(r.Replicas[:], r.Preferred) {
		return bad("preferred node %q holds no replica", r.Preferred)
	}
	if r.OnNoQuorum == "" {
		r.OnNoQuorum = NoQuorumSuspend
	}
	if r.OnNoQuorum != NoQuorumSuspend && r.OnNoQuorum != NoQuorumIOError {
		return bad("on-no-quorum %q", r.OnNoQuorum)
	}
	if r.Failback == "" {
		r.Failback = FailbackManual
	}
	if r.Failback != FailbackManual && r.Failback != FailbackAuto {
		return bad("failback %q", r.Failback)
	}
	if r.FailbackAfter == 0 {
		r.FailbackAfter = DefaultFailbackAfter
	}
	if r.FailbackAfter < 0 {
		return bad("negative failback-after %v", r.FailbackAfter)
	}
	return nil
}
