package replicate

import (
	"fmt"
	"strings"
)

// Tunables are the settings an admin may change while a volume runs
// (tandem adjust): how resyncs go and which split-brain policy the next
// session's decision applies.
type Tunables struct {
	Resync     ResyncConfig
	SplitBrain string
}

// check lists what is wrong with t for a volume of node and peer, and
// fills in the default policy.
func (t *Tunables) check(node, peer string) []string {
	var errs []string
	switch t.SplitBrain {
	case "":
		t.SplitBrain = "disconnect"
	case "disconnect", "discard-zero-changes", "discard-younger-primary", "discard-older-primary", "discard-least-changes",
		"discard-node-" + node, "discard-node-" + peer:
	default:
		errs = append(errs, fmt.Sprintf("split-brain policy %q is not disconnect, discard-zero-changes, discard-younger-primary, discard-older-primary, discard-least-changes, discard-node-%s or discard-node-%s",
			t.SplitBrain, node, peer))
	}
	if t.Resync.AppShare < 0 || t.Resync.AppShare > 1 || t.Resync.MaxRate < 0 {
		errs = append(errs, "resync app share must be within 0..1 and the rate not negative")
	}
	return errs
}

// tunables is the current settings.
func (v *Volume) tunables() *Tunables { return v.tune.Load() }

// Tune changes the settings of a running volume: a running resync or
// verify takes the new rate before its next chunk, the next session's
// decision the new policy. Invalid settings change nothing.
func (v *Volume) Tune(t Tunables) error {
	if errs := t.check(v.cfg.Node, v.cfg.Peer); len(errs) > 0 {
		return fmt.Errorf("replicate: %s: tune: %s", v.cfg.Resource, strings.Join(errs, "; "))
	}
	old := v.tune.Swap(&t)
	if *old != t {
		v.log.Info("replicate: settings changed", "max_rate", t.Resync.MaxRate, "app_share", t.Resync.AppShare,
			"checksum", t.Resync.Checksum, "split_brain", t.SplitBrain)
	}
	return nil
}
