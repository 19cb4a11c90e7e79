package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/replicate"
)

// Adjust (tandem adjust, SIGHUP; DRBD's drbdadm adjust): the daemon reads
// its configuration file again and applies what may change while it
// runs: the alerts, each resource's resync settings, split-brain policy,
// link settings (protocol, compression, TLS; a change there restarts the
// resource's replication session) and cluster policies (on-no-quorum,
// preferred-primary, failback, timing.failback-after: the cluster
// machine takes them over) and the nodes' fencing levels (read at the next
// fencing attempt), and resources added or removed (addremove.go).
// Anything else that differs needs a restart; then nothing is
// applied at all, so that the daemon always runs one file's settings,
// and its configuration hash (gossiped, compared between nodes) is that
// file's.

var (
	// ErrConfigInvalid: the file does not parse or validate.
	ErrConfigInvalid = errors.New("the configuration file is invalid")
	// ErrNeedsRestart: the file changes what only a restart applies.
	ErrNeedsRestart = errors.New("the changes need a daemon restart")
)

// AdjustRequest is the body of POST /v1/adjust.
type AdjustRequest struct {
	DryRun bool `json:"dry_run"`
}

// AdjustResult says what changed (paths as config.Diff names them).
type AdjustResult struct {
	Path    string   `json:"path"`
	Changes []string `json:"changes"`
	Applied bool     `json:"applied"`
	// Notes say how the resources the adjust added came up (or why they
	// stay down).
	Notes []string `json:"notes,omitempty"`
}

// LiveChange reports whether a difference at path (as config.Diff names
// it) can be applied while the daemon runs.
func LiveChange(path string) bool {
	switch path {
	case "Timing.FailbackAfter", "Timing.PingInterval", "Timing.PingTimeout", "Timing.AckTimeout":
		return true
	}
	if path == "Alerts" || strings.HasPrefix(path, "Alerts[") {
		return true
	}
	if _, _, ok := addedOrRemoved(path); ok || path == resourcesOrder {
		return true // addremove.go: a removed resource must be down first
	}
	if rest, ok := strings.CutPrefix(path, "Nodes["); ok {
		// Fencing levels are read at each fencing attempt (Options.Fencer).
		_, field, ok := strings.Cut(rest, "].")
		return ok && (field == "Fencing" || strings.HasPrefix(field, "Fencing["))
	}
	rest, ok := strings.CutPrefix(path, "Resources[")
	if !ok {
		return false
	}
	_, field, ok := strings.Cut(rest, "].")
	// A replica's link address: the volumes move their link (SetLink).
	replicaAddress := strings.HasPrefix(field, "Replicas[") && strings.HasSuffix(field, "].Address")
	return ok && (field == "SplitBrain" || strings.HasPrefix(field, "Resync.") || replicaAddress ||
		field == "Protocol" || field == "Compression" || field == "TLS" || strings.HasPrefix(field, "TLS.") || field == tlsFilesChanged ||
		clusterPolicy(field))
}

// diskPathChange says whether the change path is a replica's device or
// meta path, of which resource (nil: not one this node holds), and
// whether the replica is this node's.
func (d *Daemon) diskPathChange(path string) (r *resource, mine, ok bool) {
	rest, ok := strings.CutPrefix(path, "Resources[")
	if !ok {
		return nil, false, false
	}
	name, field, ok := strings.Cut(rest, "].Replicas[")
	if !ok {
		return nil, false, false
	}
	node, f, ok := strings.Cut(field, "].")
	if !ok || f != "Device" && f != "Meta" {
		return nil, false, false
	}
	for _, r := range d.resourceList() {
		if r.cfg.Name == name {
			return r, node == d.node.Name, true
		}
	}
	return nil, false, true // no replica here (a witness): nothing to apply
}

// clusterPolicy: a resource's field that the cluster machine takes over
// while it runs (cluster.Reconfigure).
func clusterPolicy(field string) bool {
	return field == "PreferredPrimary" || field == "OnNoQuorum" || field == "Failback"
}

// policyChanged: n changes what the cluster machine runs of r.
func policyChanged(r, n *config.Resource, t, nt config.Timing) bool {
	return r.PreferredPrimary != n.PreferredPrimary || r.OnNoQuorum != n.OnNoQuorum || r.Failback != n.Failback ||
		t.FailbackAfter != nt.FailbackAfter
}

// tlsFilesChanged is the change adjust reports when a resource's TLS
// files hold other bytes than when they were read (a certificate renewed
// in place): config.Diff sees the same paths.
const tlsFilesChanged = "TLS (files changed)"

// linkUpdate is a resource's new link settings.
type linkUpdate struct {
	r   *resource
	ls  replicate.LinkSettings
	sum [32]byte
}

// linkUpdates reads nc's link settings of every resource (its TLS files
// too) and returns those that differ from what the volumes were given,
// noting certificates renewed under the same paths in res. Called with
// cfgMu held.
func (d *Daemon) linkUpdates(nc *config.Config, res *AdjustResult) ([]linkUpdate, error) {
	var out []linkUpdate
	for _, r := range d.resourceList() {
		n := nc.Resource(r.cfg.Name)
		if n == nil {
			continue // removed (addremove.go)
		}
		ls := replicate.LinkSettings{Protocol: string(n.Protocol), Compression: string(n.Compression)}
		ls.Listen, ls.PeerAddress = linkAddresses(n, d.node.Name)
		var sum [32]byte
		if n.TLS != nil {
			tc, s, err := linkTLS(n.TLS, r.peer.Node)
			if err != nil {
				return nil, fmt.Errorf("%w: resource %s: tls: %w", ErrConfigInvalid, n.Name, err)
			}
			ls.TLS, sum = tc, s
		}
		if (n.TLS == nil) == (r.link.TLS == nil) && sum == r.tlsSum {
			ls.TLS = r.link.TLS // the same files: keep the session
		} else if n.TLS != nil && r.cfg.TLS != nil && *n.TLS == *r.cfg.TLS {
			res.Changes = append(res.Changes, fmt.Sprintf("Resources[%s].%s", n.Name, tlsFilesChanged))
		}
		if ls.Protocol == "" {
			ls.Protocol = "C"
		}
		if ls.Compression == "" {
			ls.Compression = "off"
		}
		if ls != r.link {
			out = append(out, linkUpdate{r: r, ls: ls, sum: sum})
		}
	}
	return out, nil
}

// Adjust reads the configuration file again and applies it (not with
// dryRun), or says why not.
func (d *Daemon) Adjust(ctx context.Context, dryRun bool) (AdjustResult, error) {
	res, added, err := d.adjust(ctx, dryRun)
	if err == nil && len(added) > 0 {
		// After cfgMu is released: opening a volume reads the settings.
		res.Notes = d.openAdded(ctx, added) // addremove.go
	}
	return res, err
}

// adjust is Adjust but for opening the resources it added, which it
// returns.
func (d *Daemon) adjust(ctx context.Context, dryRun bool) (AdjustResult, []*resource, error) {
	res := AdjustResult{Path: d.cfg.Path, Changes: []string{}}
	if d.isStopping() {
		return res, nil, ErrShuttingDown // no server or resource may start now
	}
	nc, err := d.loadFile() // resize.go
	if err != nil {
		return res, nil, err
	}
	// One adjust at a time; cfgMu is held while the running settings
	// are compared and changed.
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	changes, added, removed := resourceDiff(d.cfg, nc) // addremove.go
	res.Changes = append(res.Changes, changes...)
	links, err := d.linkUpdates(nc, &res)
	if err != nil {
		return res, nil, err
	}
	var restart []string
	disks, held := map[*resource]bool{}, []*resource{}
	defer func() {
		for _, r := range held {
			r.roleMu.Unlock()
		}
	}()
	plan, why := d.planResources(nc, added, removed, &held)
	applied := false
	defer func() {
		if !applied {
			plan.close()
		}
	}()
	for _, c := range res.Changes {
		if LiveChange(c) {
			continue
		}
		if r, mine, ok := d.diskPathChange(c); ok {
			// The peer's paths mean nothing here; this node's take
			// effect at the next up, so the resource must be down (held
			// down meanwhile: an up waits for roleMu).
			if !mine {
				continue
			}
			if disks[r] {
				continue
			}
			if r.roleMu.TryLock() {
				if r.volume() == nil {
					disks[r] = true
					held = append(held, r)
					continue
				}
				r.roleMu.Unlock()
			}
		}
		restart = append(restart, c)
	}
	restart = append(restart, why...)
	if len(restart) > 0 {
		hint := ""
		if slices.ContainsFunc(restart, func(c string) bool { return strings.HasSuffix(c, ".Size") }) {
			hint += "; a larger size is applied by tandem resize RESOURCE on the primary, not by adjust"
		}
		if slices.ContainsFunc(restart, func(c string) bool { _, mine, ok := d.diskPathChange(c); return ok && mine }) {
			hint += "; a replica's device or meta path changes while its resource is down: tandem down RESOURCE, adjust, then tandem up RESOURCE"
		}
		return res, nil, fmt.Errorf("%w: %s (only alerts, nodes' fencing, timing.failback-after, ping-interval, ping-timeout, ack-timeout and resources' resync, split-brain, protocol, compression, tls, replica addresses (and device paths while down), on-no-quorum, preferred-primary and failback, and resources added or removed (a removed one once down), change while it runs%s); nothing was changed",
			ErrNeedsRestart, strings.Join(restart, ", "), hint)
	}
	for _, u := range links {
		if v := u.r.volume(); v != nil {
			if st := v.Status(); st.Role == replicate.Primary && st.Disk == replicate.Diskless {
				return res, nil, fmt.Errorf("%w: resource %s: its primary is diskless and serves through the link, which a change of protocol, compression or tls restarts; fail over first; nothing was changed",
					replicate.ErrLinkInUse, u.r.cfg.Name)
			}
		}
	}
	if dryRun || len(res.Changes) == 0 {
		return res, nil, nil
	}
	// The volumes first: a setting a volume refuses changes nothing.
	tuned := map[*resource]config.Resource{}
	var undo []func()
	for _, r := range d.resourceList() {
		n := nc.Resource(r.cfg.Name)
		if n == nil {
			continue // removed
		}
		if tunables(n, nc.Timing) == tunables(r.cfg, d.cfg.Timing) {
			continue
		}
		tuned[r] = *n
		if v := r.volume(); v != nil {
			if err := v.Tune(tunables(n, nc.Timing)); err != nil {
				for _, u := range undo {
					u()
				}
				return res, nil, fmt.Errorf("%w: %w; nothing was changed", ErrConfigInvalid, err)
			}
			old := tunables(r.cfg, d.cfg.Timing)
			undo = append(undo, func() { _ = v.Tune(old) })
		}
	}
	// Then the links: each change restarts a session. One the volume
	// refuses (its disk failed meanwhile) undoes what came before.
	for _, u := range links {
		v := u.r.volume()
		if v == nil {
			continue // the next up reads the new settings
		}
		if _, err := v.SetLink(ctx, u.ls); err != nil {
			for _, un := range undo {
				un()
			}
			return res, nil, fmt.Errorf("resource %s: %w; nothing was changed", u.r.cfg.Name, err)
		}
		old := u.r.link
		undo = append(undo, func() { _, _ = v.SetLink(context.WithoutCancel(ctx), old) })
	}
	for r, n := range tuned {
		r.cfg.Resync, r.cfg.SplitBrain = n.Resync, n.SplitBrain
	}
	// The cluster machine's policies last: it takes them over in its
	// next step and refuses nothing that Validate let through.
	cl := d.cl.Load()
	for _, r := range d.resourceList() {
		n := nc.Resource(r.cfg.Name)
		if n == nil {
			continue // removed
		}
		if !policyChanged(r.cfg, n, d.cfg.Timing, nc.Timing) {
			continue
		}
		r.cfg.PreferredPrimary, r.cfg.OnNoQuorum, r.cfg.Failback = n.PreferredPrimary, n.OnNoQuorum, n.Failback
		if cl != nil {
			cl.mgr.Inject(cluster.Reconfigure{At: time.Now(), Resource: machineResource(r.cfg, nc.Timing)})
		}
	}
	d.cfg.Timing.FailbackAfter = nc.Timing.FailbackAfter
	d.cfg.Timing.PingInterval, d.cfg.Timing.PingTimeout, d.cfg.Timing.AckTimeout = nc.Timing.PingInterval, nc.Timing.PingTimeout, nc.Timing.AckTimeout
	// The next fencing attempt builds its fencer from these.
	for i := range d.cfg.Nodes {
		if n, err := nc.Node(d.cfg.Nodes[i].Name); err == nil {
			d.cfg.Nodes[i].Fencing = n.Fencing
		}
	}
	for r := range disks {
		n := nc.Resource(r.cfg.Name)
		if nrp := n.Replica(d.node.Name); nrp != nil {
			r.rp.Device, r.rp.Meta = nrp.Device, nrp.Meta
		}
	}
	for _, r := range d.resourceList() {
		// The peer's paths are only recorded (its daemon uses them).
		if n := nc.Resource(r.cfg.Name); n == nil {
			continue // removed
		} else if np := n.Peer(d.node.Name); np != nil {
			r.peer.Device, r.peer.Meta = np.Device, np.Meta
		}
	}
	for _, u := range links {
		n := nc.Resource(u.r.cfg.Name)
		u.r.cfg.Protocol, u.r.cfg.Compression, u.r.cfg.TLS = n.Protocol, n.Compression, n.TLS
		u.r.rp.Address, u.r.peer.Address = u.ls.Listen, u.ls.PeerAddress
		u.r.link, u.r.tlsSum = u.ls, u.sum
	}
	if slices.ContainsFunc(res.Changes, func(c string) bool { return strings.HasPrefix(c, "Alerts") }) {
		d.cfg.Alerts = nc.Alerts
		d.replaceAlerts(nc.Alerts)
	}
	d.applyResources(ctx, nc, plan) // addremove.go
	applied = true
	// The file's resources, in its order: what the next adjust compares
	// with and what the configuration hash covers (each resource holds
	// its own copy, changed above).
	d.cfg.Resources = nc.Resources
	for _, r := range plan.remove {
		d.events.publish(Event{Kind: KindVolume, Resource: r.cfg.Name, Text: "resource removed (tandem adjust)"})
	}
	for _, r := range plan.add {
		d.events.publish(Event{Kind: KindVolume, Resource: r.cfg.Name, Text: "resource added (tandem adjust)"})
	}
	res.Applied = true
	d.log.Info("configuration adjusted", "path", d.cfg.Path, "changes", res.Changes)
	return res, plan.add, nil
}

func (d *Daemon) handleAdjust(w http.ResponseWriter, req *http.Request) {
	var body AdjustRequest
	dec := json.NewDecoder(io.LimitReader(req.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, fmt.Errorf("%w: adjust: %v", errBadRequest, err))
		return
	}
	res, err := d.Adjust(req.Context(), body.DryRun)
	if !body.DryRun {
		// An event and an audit line, as for every admin action.
		d.noteAdmin(req.Context(), "adjust", "", "", body, res, err)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// AdjustOnSignal is Adjust for SIGHUP: the outcome goes to the log, the
// events and the audit log.
func (d *Daemon) AdjustOnSignal() {
	res, err := d.Adjust(context.Background(), false)
	d.noteAdmin(context.WithValue(context.Background(), signalKey{}, true), "adjust", "", "", "SIGHUP", res, err)
	if err != nil {
		d.log.Warn("SIGHUP: configuration not adjusted", "err", err)
	}
}

type signalKey struct{}

// tunables is what a resource's configuration sets of a running volume.
func tunables(r *config.Resource, t config.Timing) replicate.Tunables {
	return replicate.Tunables{
		Resync:     replicate.ResyncConfig{MaxRate: r.Resync.MaxRate, AppShare: r.Resync.AppShare, Checksum: r.Resync.Checksum},
		SplitBrain: string(r.SplitBrain),
		Timing:     replicate.LinkTiming{PingInterval: t.PingInterval, PingTimeout: t.PingTimeout, AckTimeout: t.AckTimeout},
	}
}
