package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// RecordVersion is the format of the authority record and its commands. A
// node refuses a record or command of a newer version instead of guessing:
// every voter must run a tandem that understands what is committed.
const RecordVersion = 1

// fenceHistory bounds the fencing confirmations kept in the record: enough
// for an admin to read what happened, not a growing log.
const fenceHistory = 32

// ReplicaState is what the authority record says a replica's data is worth.
// The names are the volume's disk states (replicate.DiskState) so `tandem
// status` uses one vocabulary; the record only holds these five.
type ReplicaState string

const (
	// StateUnknown: the replica has not reported since the resource was
	// defined.
	StateUnknown ReplicaState = "Unknown"
	// StateUpToDate: the replica holds every acknowledged write.
	StateUpToDate ReplicaState = "UpToDate"
	// StateOutdated: consistent, but the primary acknowledged writes
	// without it. It never promotes automatically.
	StateOutdated ReplicaState = "Outdated"
	// StateInconsistent: not a complete image (new device, interrupted
	// resync).
	StateInconsistent ReplicaState = "Inconsistent"
	// StateFailed: the replica's disk failed or is missing.
	StateFailed ReplicaState = "Failed"
)

// rank orders states by what the data is worth; a replica may only report
// itself at the same or a lower rank (an upgrade needs the primary, after a
// resync).
func (s ReplicaState) rank() int {
	switch s {
	case StateUpToDate:
		return 4
	case StateOutdated:
		return 3
	case StateInconsistent:
		return 2
	case StateFailed:
		return 1
	}
	return 0
}

func (s ReplicaState) valid() bool { return s.rank() > 0 || s == StateUnknown }

// Record is the authority record: the state every voter agrees on. It is
// only changed by Apply, and is treated as immutable once returned (Apply
// works on a copy).
type Record struct {
	Version int `json:"version"`
	// Index counts the commands accepted so far.
	Index uint64 `json:"index"`
	// Resources by name.
	Resources map[string]*Resource `json:"resources"`
	// Standby holds the data nodes an admin put in standby, sorted: they
	// run no resource as primary.
	Standby []string `json:"standby,omitempty"`
	// Fences is the recent history of fencing confirmations, oldest first.
	Fences []Fence `json:"fences,omitempty"`
}

// Resource is the authority over one replicated resource.
type Resource struct {
	Name string `json:"name"`
	// Replicas maps each of the two data nodes to its replica's state.
	Replicas map[string]*Replica `json:"replicas"`
	// Preferred is the node that should be primary when both can ("" for
	// none).
	Preferred string `json:"preferred,omitempty"`
	// Primary is the node allowed to serve at Epoch; "" when nobody is.
	Primary string `json:"primary,omitempty"`
	// Epoch increments with every promotion; the replication link refuses
	// messages from an older one.
	Epoch uint64 `json:"epoch"`
	// Seq increments with every change to this resource; commands that
	// must not act on an older view compare it (MarkUpToDate).
	Seq uint64 `json:"seq"`
	// Fenced is the confirmation that Primary, at Epoch, is off.
	Fenced *Fence `json:"fenced,omitempty"`
	// Target is the node a switchover hands the resource to ("" when none
	// is running).
	Target string `json:"target,omitempty"`
	// Held: an admin demoted the resource; nothing promotes it until an
	// admin promotes or switches it over.
	Held bool `json:"held,omitempty"`
	// LastPrimary is the node that was primary before the current one (or
	// before a demotion), for status and failback.
	LastPrimary string `json:"last_primary,omitempty"`
	// LastFailover describes the last promotion.
	LastFailover *Promotion `json:"last_failover,omitempty"`
}

// Replica is one data node's copy as the record knows it.
type Replica struct {
	State ReplicaState `json:"state"`
	// Since is when it entered State (the proposer's clock).
	Since time.Time `json:"since"`
	// Epoch is the resource's epoch when it entered State.
	Epoch uint64 `json:"epoch"`
}

// Fence is a confirmation that a node was off.
type Fence struct {
	Node string `json:"node"`
	// Epochs maps each resource the node was primary of, when fencing
	// started, to that epoch; the confirmation counts only for those.
	Epochs map[string]uint64 `json:"epochs"`
	// Epoch is, on a resource's Fenced, the epoch it covers.
	Epoch  uint64    `json:"epoch,omitempty"`
	At     time.Time `json:"at"`
	Method string    `json:"method"` // "ipmi", "agent:fence_ipmilan", "manual"...
	By     string    `json:"by"`     // the node that fenced, or that relayed a manual confirmation
}

// Promotion records how a node became primary.
type Promotion struct {
	From  string    `json:"from,omitempty"` // previous primary, "" for the first
	To    string    `json:"to"`
	Epoch uint64    `json:"epoch"`
	At    time.Time `json:"at"`
	// How: "initial", "demoted" (previous primary stepped down: switchover,
	// standby, restart), "fenced" (failover), "forced".
	How string `json:"how"`
	// Discarded is what a forced promotion gave up.
	Discarded string `json:"discarded,omitempty"`
}

// NewRecord is the empty record a cluster starts from.
func NewRecord() *Record {
	return &Record{Version: RecordVersion, Resources: map[string]*Resource{}}
}

// ErrVersion: a record or command of a format this build does not know.
var ErrVersion = errors.New("cluster: unsupported format version")

// IsStandby reports whether node is in standby.
func (r *Record) IsStandby(node string) bool {
	_, ok := slices.BinarySearch(r.Standby, node)
	return ok
}

// Resource returns the named resource, or nil.
func (r *Record) Resource(name string) *Resource {
	if r == nil {
		return nil
	}
	return r.Resources[name]
}

// State returns a replica's state in the record (StateUnknown if the node
// holds none).
func (res *Resource) State(node string) ReplicaState {
	if res == nil {
		return StateUnknown
	}
	if rp := res.Replicas[node]; rp != nil {
		return rp.State
	}
	return StateUnknown
}

// Peer returns the other replica's node ("" if node holds none).
func (res *Resource) Peer(node string) string {
	if _, ok := res.Replicas[node]; !ok {
		return ""
	}
	for n := range res.Replicas {
		if n != node {
			return n
		}
	}
	return ""
}

// Clone returns a deep copy.
func (r *Record) Clone() *Record {
	c := *r
	c.Resources = make(map[string]*Resource, len(r.Resources))
	for name, res := range r.Resources {
		c.Resources[name] = res.clone()
	}
	c.Standby = slices.Clone(r.Standby)
	c.Fences = make([]Fence, len(r.Fences))
	for i, f := range r.Fences {
		c.Fences[i] = f.clone()
	}
	if len(c.Fences) == 0 {
		c.Fences = nil
	}
	return &c
}

func (res *Resource) clone() *Resource {
	c := *res
	c.Replicas = make(map[string]*Replica, len(res.Replicas))
	for n, rp := range res.Replicas {
		cp := *rp
		c.Replicas[n] = &cp
	}
	if res.Fenced != nil {
		f := res.Fenced.clone()
		c.Fenced = &f
	}
	if res.LastFailover != nil {
		p := *res.LastFailover
		c.LastFailover = &p
	}
	return &c
}

func (f Fence) clone() Fence {
	f.Epochs = maps.Clone(f.Epochs)
	return f
}

// Marshal encodes the record as JSON (map keys sorted: the same record
// always gives the same bytes, which raft snapshots rely on).
func (r *Record) Marshal() ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("cluster: encoding the authority record: %w", err)
	}
	return b, nil
}

// UnmarshalRecord decodes and checks a record: unknown fields, a newer
// version, or contents that break the record's invariants are errors.
func UnmarshalRecord(b []byte) (*Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("cluster: decoding the authority record: %w", err)
	}
	if r.Version != RecordVersion {
		return nil, fmt.Errorf("cluster: authority record version %d, this build reads %d: %w", r.Version, RecordVersion, ErrVersion)
	}
	if r.Resources == nil {
		r.Resources = map[string]*Resource{}
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	return &r, nil
}

// check verifies the invariants Apply keeps, so a damaged snapshot is
// refused rather than acted upon.
func (r *Record) check() error {
	if !slices.IsSorted(r.Standby) {
		return fmt.Errorf("cluster: authority record: standby list not sorted")
	}
	for name, res := range r.Resources {
		if res == nil || res.Name != name {
			return fmt.Errorf("cluster: authority record: resource %q: entry missing or misnamed", name)
		}
		if len(res.Replicas) != 2 {
			return fmt.Errorf("cluster: authority record: resource %q has %d replicas, want 2", name, len(res.Replicas))
		}
		for n, rp := range res.Replicas {
			if n == "" || rp == nil || !rp.State.valid() {
				return fmt.Errorf("cluster: authority record: resource %q: bad replica %q", name, n)
			}
		}
		for _, n := range []string{res.Preferred, res.Primary, res.Target} {
			if _, ok := res.Replicas[n]; n != "" && !ok {
				return fmt.Errorf("cluster: authority record: resource %q names %q, which holds no replica", name, n)
			}
		}
		if res.Fenced != nil && (res.Fenced.Node != res.Primary || res.Fenced.Epoch != res.Epoch) {
			return fmt.Errorf("cluster: authority record: resource %q: fencing confirmation does not cover the primary", name)
		}
	}
	return nil
}
