package daemon

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/replicate"
)

// SoftState is what each node gossips about itself in its membership
// metadata: its binary's version and configuration hash, so that `tandem
// status` can say when the nodes disagree, and each of its replicas' role,
// disk, connection and resync progress, so that any node (the witness
// too) shows the whole cluster without asking the others. It is soft: a
// view that may lag by a gossip round, never an input to a decision (the
// authority record is).
type SoftState struct {
	Version    string         `json:"version"`
	ConfigHash string         `json:"config_hash"`
	Resources  []SoftResource `json:"resources,omitempty"`
	// More counts resources left out: memberlist carries at most
	// cluster.MaxMetaSize bytes of metadata per node.
	More int `json:"more,omitempty"`
}

// SoftResource is one replica in a node's soft state.
type SoftResource struct {
	Name string `json:"name"`
	Role string `json:"role"`
	Disk string `json:"disk"`
	Conn string `json:"conn"`
	// Sync is the percent done of a resync or verify running, in whole
	// percents so that progress regossips at most a hundred times.
	Sync *int `json:"sync,omitempty"`
}

func (d *Daemon) softState() SoftState {
	st := map[string]replicate.Status{}
	for _, r := range d.resourceList() {
		if v := r.volume(); v != nil {
			st[r.cfg.Name] = v.Status()
		}
	}
	return d.softStateOf(st)
}

// softStateOf is this node's soft state given its volumes' statuses (a
// resource that is down is left out), trimmed to what gossip carries.
func (d *Daemon) softStateOf(st map[string]replicate.Status) SoftState {
	d.cfgMu.RLock()
	hash := d.cfg.Hash()
	d.cfgMu.RUnlock()
	s := SoftState{Version: d.opts.Version, ConfigHash: hash}
	for _, r := range d.resourceList() {
		vs, ok := st[r.cfg.Name]
		if !ok {
			continue
		}
		sr := SoftResource{Name: r.cfg.Name, Role: string(vs.Role), Disk: string(vs.Disk), Conn: string(vs.Conn)}
		if p := cmp.Or(vs.Resync, vs.Verify); p != nil {
			pc := int(p.Percent)
			sr.Sync = &pc
		}
		s.Resources = append(s.Resources, sr)
	}
	for len(s.Resources) > 0 {
		if b, err := json.Marshal(s); err == nil && len(b) <= cluster.MaxMetaSize {
			break
		}
		s.Resources = s.Resources[:len(s.Resources)-1]
		s.More++
	}
	return s
}

// gossipSoftState puts this node's soft state in its membership metadata
// when it differs from what was gossiped last. A failure costs only the
// view on the other nodes.
func (cl *clusterLayer) gossipSoftState(s SoftState, log *slog.Logger) {
	b, err := json.Marshal(s)
	if err != nil {
		log.Warn("cluster layer: cannot encode this node's soft state", "err", err)
		return
	}
	cl.metaMu.Lock()
	defer cl.metaMu.Unlock()
	if bytes.Equal(b, cl.lastMeta) {
		return
	}
	if err := cl.ms.SetMeta(b); err != nil {
		log.Warn("cluster layer: cannot gossip this node's soft state", "err", err)
		return
	}
	cl.lastMeta = b
}

// softStates is every node's soft state this node knows: its own, and
// what the live members gossiped (with the cluster layer).
func (d *Daemon) softStates() map[string]SoftState {
	out := map[string]SoftState{d.node.Name: d.softState()}
	cl := d.cl.Load()
	if cl == nil {
		return out
	}
	for _, n := range d.cfg.Nodes {
		if n.Name == d.node.Name {
			continue
		}
		var s SoftState
		if b := cl.ms.Meta(n.Name); len(b) > 0 && json.Unmarshal(b, &s) == nil {
			out[n.Name] = s
		}
	}
	return out
}

// Disagreements says which nodes run another version or configuration
// than this one (self), one sentence each; none when they all agree.
func Disagreements(self string, nodes map[string]SoftState) []string {
	mine, ok := nodes[self]
	if !ok {
		return nil
	}
	var out []string
	for _, n := range slices.Sorted(maps.Keys(nodes)) {
		s := nodes[n]
		if n == self {
			continue
		}
		var what []string
		if s.Version != mine.Version {
			what = append(what, fmt.Sprintf("version %s (here %s)", s.Version, mine.Version))
		}
		if s.ConfigHash != mine.ConfigHash {
			what = append(what, fmt.Sprintf("configuration hash %s (here %s): copy the same tandem.yaml to every node", short(s.ConfigHash), short(mine.ConfigHash)))
		}
		if len(what) > 0 {
			out = append(out, fmt.Sprintf("node %s runs %s", n, strings.Join(what, ", ")))
		}
	}
	return out
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
