package daemon

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/tandem-ha/tandem/cluster"
)

// SoftState is what each node gossips about itself in its membership
// metadata, so that `tandem status` can say when the nodes do not run the
// same binary or configuration.
type SoftState struct {
	Version    string `json:"version"`
	ConfigHash string `json:"config_hash"`
}

func (d *Daemon) softState() SoftState {
	return SoftState{Version: d.opts.Version, ConfigHash: d.cfg.Hash()}
}

// gossipSoftState puts this node's version and configuration hash in its
// membership metadata. A failure costs only the warning in status.
func (d *Daemon) gossipSoftState(ms *cluster.Membership, log *slog.Logger) {
	b, err := json.Marshal(d.softState())
	if err == nil {
		err = ms.SetMeta(b)
	}
	if err != nil {
		log.Warn("cluster layer: cannot gossip the version and config hash", "err", err)
	}
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
