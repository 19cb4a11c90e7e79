package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/replicate"
)

// Timing is the cluster layer's clock: the primary's lease, the margin the
// survivor adds to it, how often a failed fence is retried, how long a
// preferred node waits before an automatic failback, and the failure
// detector's probes; and the replication link's pings and timeouts, which
// apply with or without the cluster layer. Zero values mean the defaults
// (cluster.Default*, replicate.Default*).
type Timing struct {
	Lease         time.Duration
	Margin        time.Duration
	FenceRetry    time.Duration
	FailbackAfter time.Duration
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	SuspicionMult int

	// The replication link (DRBD's ping-int, ping-timeout and
	// timeout x ko-count).
	PingInterval time.Duration
	PingTimeout  time.Duration
	AckTimeout   time.Duration

	lines lines
}

var timingKeys = []string{"lease", "margin", "fence-retry", "failback-after", "probe-interval", "probe-timeout", "suspicion-mult",
	"ping-interval", "ping-timeout", "ack-timeout"}

// Bounds of each timing key: below them the cluster would fail over on a
// hiccup (or spin), above them a failover would take minutes.
var timingBounds = map[string][2]time.Duration{
	"lease":          {200 * time.Millisecond, time.Minute},
	"margin":         {cluster.DefaultTickInterval, time.Minute},
	"fence-retry":    {time.Second, 10 * time.Minute},
	"failback-after": {time.Second, 24 * time.Hour},
	"probe-interval": {20 * time.Millisecond, 10 * time.Second},
	"probe-timeout":  {10 * time.Millisecond, 10 * time.Second},
	"ping-interval":  {50 * time.Millisecond, 10 * time.Second},
	"ping-timeout":   {500 * time.Millisecond, 5 * time.Minute},
	"ack-timeout":    {time.Second, time.Hour},
}

func (d *decoder) timing(e entry, path string) Timing {
	t := Timing{lines: lines{}}
	f, ok := d.mapping(e.val, path, timingKeys, t.lines)
	if !ok {
		return t
	}
	for _, k := range []struct {
		key string
		dst *time.Duration
	}{
		{"lease", &t.Lease}, {"margin", &t.Margin}, {"fence-retry", &t.FenceRetry}, {"failback-after", &t.FailbackAfter},
		{"probe-interval", &t.ProbeInterval}, {"probe-timeout", &t.ProbeTimeout},
		{"ping-interval", &t.PingInterval}, {"ping-timeout", &t.PingTimeout}, {"ack-timeout", &t.AckTimeout},
	} {
		if e, ok := f[k.key]; ok {
			*k.dst = d.boundedDuration(e, path+"."+k.key, timingBounds[k.key])
		}
	}
	if e, ok := f["suspicion-mult"]; ok {
		t.SuspicionMult = d.intRange(e, path+".suspicion-mult", 1, 10, "write how many probe intervals (times log10 of the node count, at least 1) a suspect has to refute it, e.g. 2")
	}
	return t
}

func (d *decoder) boundedDuration(e entry, path string, b [2]time.Duration) time.Duration {
	s, ok := d.scalar(e, path)
	if !ok {
		return 0
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	switch {
	case err != nil:
		d.add(e.val.Line, path, fmt.Sprintf("%q is not a duration", s), "write a number with its unit, e.g. 500ms or 2s")
	case v < b[0] || v > b[1]:
		d.add(e.val.Line, path, fmt.Sprintf("%s is not from %v to %v", s, b[0], b[1]), "see docs/configuration.md, timing")
	default:
		return v
	}
	return 0
}

// Effective values, defaults filled in.
func (t Timing) lease() time.Duration  { return or(t.Lease, cluster.DefaultLease) }
func (t Timing) margin() time.Duration { return or(t.Margin, cluster.DefaultMargin) }
func (t Timing) probeInterval() time.Duration {
	return or(t.ProbeInterval, cluster.DefaultProbeInterval)
}
func (t Timing) probeTimeout() time.Duration { return or(t.ProbeTimeout, cluster.DefaultProbeTimeout) }
func (t Timing) pingInterval() time.Duration {
	return or(t.PingInterval, replicate.DefaultPingInterval)
}
func (t Timing) pingTimeout() time.Duration { return or(t.PingTimeout, replicate.DefaultPingTimeout) }
func (t Timing) ackTimeout() time.Duration  { return or(t.AckTimeout, replicate.DefaultAckTimeout) }
func (t Timing) suspicionMult() int {
	if t.SuspicionMult == 0 {
		return cluster.DefaultSuspicionMult
	}
	return t.SuspicionMult
}

func or(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// DetectionBound is how long the failure detector may take to declare a
// node dead that stopped answering: a probe interval until the next probe,
// its timeout, then the suspicion timeout (memberlist: suspicion-mult times
// log10 of the node count, at least 1, probe intervals; three to nine
// nodes here, so at most one).
func (t Timing) DetectionBound() time.Duration {
	return t.probeInterval() + t.probeTimeout() + time.Duration(t.suspicionMult())*t.probeInterval()
}

// checkTiming: the rules between keys. Rule 2 needs the old primary's
// lease to end before the survivor promotes: the survivor waits lease +
// margin after it last saw the primary, and the primary stops renewing
// once it notices it lost quorum, which may be up to one detection bound
// later than the survivor noticed, plus a tick. So the margin must cover
// both; the lease itself may be short, but not shorter than the detector
// needs to notice anything.
func (c *Config) checkTiming(ps *problems) {
	t := c.Timing
	at := func(key string) int {
		if l := t.lines.at(key); l != 0 {
			return l
		}
		return c.lines.at("timing")
	}
	if t.ProbeTimeout != 0 || t.ProbeInterval != 0 {
		if t.probeTimeout() >= t.probeInterval() {
			ps.add(at("probe-timeout"), "timing.probe-timeout",
				fmt.Sprintf("probe-timeout %v is not shorter than probe-interval %v", t.probeTimeout(), t.probeInterval()),
				"a probe must time out before the next one starts: make probe-timeout about half of probe-interval")
		}
	}
	// The link is declared dead only after pings were missed, not one
	// late answer: a loaded peer must not cost a resync.
	if t.PingInterval != 0 || t.PingTimeout != 0 {
		if t.pingTimeout() < 3*t.pingInterval() {
			ps.add(at("ping-timeout"), "timing.ping-timeout",
				fmt.Sprintf("ping-timeout %v is shorter than three ping intervals (%v)", t.pingTimeout(), 3*t.pingInterval()),
				fmt.Sprintf("raise ping-timeout to at least %v, or ping more often", 3*t.pingInterval()))
		}
	}
	// A hung peer is told from a dead one by the pings: the ack timeout
	// only makes sense beyond the ping timeout.
	if (t.AckTimeout != 0 || t.PingTimeout != 0) && t.ackTimeout() <= t.pingTimeout() {
		ps.add(at("ack-timeout"), "timing.ack-timeout",
			fmt.Sprintf("ack-timeout %v is not longer than ping-timeout %v", t.ackTimeout(), t.pingTimeout()),
			"a peer that answers pings but no request is told apart only after the ping timeout: make ack-timeout several times ping-timeout")
	}
	need := t.DetectionBound() + cluster.DefaultTickInterval
	if t.margin() < need {
		ps.add(at("margin"), "timing.margin",
			fmt.Sprintf("margin %v is shorter than the failure detector's bound plus a tick (%v): an isolated primary could still acknowledge writes, its lease not yet over, when the other side promotes", t.margin(), need),
			fmt.Sprintf("raise margin to at least %v, or make the probes faster", need))
	}
	if t.lease() < t.DetectionBound() {
		ps.add(at("lease"), "timing.lease",
			fmt.Sprintf("lease %v is shorter than the failure detector's bound (%v): a primary would suspend on every probe hiccup", t.lease(), t.DetectionBound()),
			fmt.Sprintf("raise lease to at least %v", t.DetectionBound()))
	}
}
