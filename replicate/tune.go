package replicate

import (
	"fmt"
	"strings"
	"time"
)

// Tunables are the settings an admin may change while a volume runs
// (tandem adjust): how resyncs go, which split-brain policy the next
// session's decision applies, and the link's liveness timing.
type Tunables struct {
	Resync     ResyncConfig
	SplitBrain string
	Timing     LinkTiming
}

// LinkTiming is when the link is declared dead (Config's fields of the
// same names); a running session takes a change at its next ping. Zero
// fields: the defaults at Open, the current values in Tune.
type LinkTiming struct {
	PingInterval time.Duration
	PingTimeout  time.Duration
	AckTimeout   time.Duration
}

// orDefaults fills zero fields from d.
func (t LinkTiming) orDefaults(d LinkTiming) LinkTiming {
	if t.PingInterval == 0 {
		t.PingInterval = d.PingInterval
	}
	if t.PingTimeout == 0 {
		t.PingTimeout = d.PingTimeout
	}
	if t.AckTimeout == 0 {
		t.AckTimeout = d.AckTimeout
	}
	return t
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
	switch tm := t.Timing; {
	case tm.PingInterval < 0 || tm.PingTimeout < 0 || tm.AckTimeout < 0:
		errs = append(errs, "link timings must not be negative")
	case tm.PingTimeout > 0 && tm.PingTimeout <= tm.PingInterval:
		errs = append(errs, fmt.Sprintf("ping timeout %s must exceed the ping interval %s", tm.PingTimeout, tm.PingInterval))
	}
	return errs
}

// tunables is the current settings.
func (v *Volume) tunables() *Tunables { return v.tune.Load() }

// Tune changes the settings of a running volume: a running resync or
// verify takes the new rate before its next chunk, the next session's
// decision the new policy. Invalid settings change nothing.
func (v *Volume) Tune(t Tunables) error {
	t.Timing = t.Timing.orDefaults(v.tunables().Timing)
	if errs := t.check(v.cfg.Node, v.cfg.Peer); len(errs) > 0 {
		return fmt.Errorf("replicate: %s: tune: %s", v.cfg.Resource, strings.Join(errs, "; "))
	}
	old := v.tune.Swap(&t)
	if *old != t {
		v.log.Info("replicate: settings changed", "max_rate", t.Resync.MaxRate, "app_share", t.Resync.AppShare,
			"checksum", t.Resync.Checksum, "split_brain", t.SplitBrain,
			"ping_interval", t.Timing.PingInterval, "ping_timeout", t.Timing.PingTimeout, "ack_timeout", t.Timing.AckTimeout)
	}
	return nil
}
