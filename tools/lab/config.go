package lab

import (
	"fmt"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/replicate/md"
)

// Params are the choices of `tandem lab up`.
type Params struct {
	// Size of each resource in bytes, a multiple of 4 KiB.
	Size int64
	// Resources is how many resources (r0, r1, ...) the pair holds.
	Resources int
	// ClusterLayer gives every node gossip and authority addresses: the
	// daemons elect the primary, claim the VIP and fail over by themselves
	// (cluster/manager), and Up promotes nobody by hand.
	ClusterLayer bool `json:",omitempty"`
	// FailbackAuto sets failback: auto on every resource: the cluster
	// layer moves it back to alpha (the preferred primary) once alpha has
	// been in sync for FailbackAfter.
	FailbackAuto bool `json:",omitempty"`
	// FailbackAfter, when not zero, is timing.failback-after (1s to 24h;
	// the default is 60s).
	FailbackAfter time.Duration `json:",omitempty"`
}

// DefaultParams: one small resource, quick to create and to resync.
var DefaultParams = Params{Size: 64 << 20, Resources: 1}

func (p Params) check() error {
	if p.Size <= 0 || p.Size%4096 != 0 {
		return fmt.Errorf("lab: size %d: must be a positive multiple of 4 KiB", p.Size)
	}
	if p.Resources < 1 || p.Resources > maxResources {
		return fmt.Errorf("lab: %d resources: want 1 to %d", p.Resources, maxResources)
	}
	if (p.FailbackAuto || p.FailbackAfter != 0) && !p.ClusterLayer {
		return fmt.Errorf("lab: failback is the cluster layer's: add ClusterLayer (--cluster-layer)")
	}
	if p.FailbackAfter != 0 && (p.FailbackAfter < time.Second || p.FailbackAfter > 24*time.Hour) {
		return fmt.Errorf("lab: failback-after %v: want 1s to 24h", p.FailbackAfter)
	}
	return nil
}

// The cluster layer's ports on every node's lab address.
const (
	gossipPort    = 7946
	authorityPort = 7947
)

// fenceTimeout bounds one fencing action through a lab BMC; the lab's
// BMCs answer in milliseconds, so a few seconds only catch a hung one.
const fenceTimeout = 5 * time.Second

// configYAML is the lab's cluster configuration: every node on its own
// lab address, the data nodes fenced through their BMCs, every resource
// with a VIP on each data node's lab interface and an NBD listener on
// every address (so the VIP too).
func configYAML(l layout, p Params) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# written by tandem lab up: the lab in %s\n", l.dir)
	fmt.Fprintf(&b, "cluster: lab\nsecret-file: %s\n", l.secret())
	if p.FailbackAfter != 0 {
		fmt.Fprintf(&b, "timing:\n  failback-after: %s\n", p.FailbackAfter)
	}
	// Every event of every daemon, as an on-call's alert program would get
	// them (docs/operations.md, Alerts): LOGS/NODE.alerts.
	fmt.Fprintf(&b, "alerts:\n  - path: %s\n    recipient: lab\n", l.alertProgram())
	b.WriteString("\nnodes:\n")
	for _, n := range clusterNodes {
		fmt.Fprintf(&b, "  - name: %s\n    address: %s\n    admin-socket: %s\n    data-dir: %s\n",
			n, hostAddr[n], l.adminSocket(n), l.dataDir(n))
		if p.ClusterLayer {
			fmt.Fprintf(&b, "    gossip: %[1]s:%[2]d\n    authority: %[1]s:%[3]d\n", hostAddr[n], gossipPort, authorityPort)
		}
		if a, ok := bmcAddr[n]; ok {
			fmt.Fprintf(&b, "    fencing:\n      - type: ipmi\n        address: %s\n        port: %d\n"+
				"        username: %s\n        password-file: %s\n        cipher-suite: 3\n        timeout: %s\n",
				a, bmcPort, bmcUser, l.bmcPassword(), fenceTimeout)
		}
	}
	b.WriteString("\nresources:\n")
	for i := range p.Resources {
		r := ResourceName(i)
		fmt.Fprintf(&b, "  - name: %s\n    size: %d\n    preferred-primary: %s\n", r, p.Size, Alpha)
		if p.FailbackAuto {
			b.WriteString("    failback: auto\n")
		}
		// The second announcement burst comes soon: vip claim waits for
		// it, and the lab's segment has no switch that could miss the first.
		fmt.Fprintf(&b, "    vip: {address: %s/%d, interface: %s, announce-repeat-after: 200ms}\n",
			VIP(i), prefixLen, ifName)
		b.WriteString("    replicas:\n")
		for _, n := range dataNodes {
			fmt.Fprintf(&b, "      %s:\n        device: %s\n        address: %s:%d\n        nbd-listen: 0.0.0.0:%d\n",
				n, l.disk(n, r), hostAddr[n], replPortBase+i, nbdPort)
		}
	}
	return b.String()
}

// alertScript is the lab's alert program: one line per event, appended to
// the node's LOGS/NODE.alerts.
func alertScript(l layout) string {
	return fmt.Sprintf(`#!/bin/sh
# written by tandem lab up: one line per event of the node's daemon
printf '%%s %%-8s %%s %%s\n' "$TANDEM_ALERT_TIME" "$TANDEM_ALERT_KIND" "${TANDEM_ALERT_RESOURCE:--}" "$TANDEM_ALERT_TEXT" >> "%s/$TANDEM_ALERT_NODE.alerts"
`, l.logs())
}

// diskSize is the size of each replica's file: the data and, behind it,
// the internal metadata, computed by replicate/md as the daemon will.
func diskSize(cfg *config.Config, res string) (int64, error) {
	r := cfg.Resource(res)
	if r == nil {
		return 0, fmt.Errorf("lab: resource %s missing from the generated configuration", res)
	}
	lay, err := md.NewLayout(r.Size, md.Options{Granularity: r.BitmapGranularity, MaxHotExtents: r.ALExtents})
	if err != nil {
		return 0, fmt.Errorf("lab: metadata layout of %s: %w", res, err)
	}
	return r.Size + lay.MetaSize(), nil
}
