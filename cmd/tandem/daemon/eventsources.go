package daemon

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/replicate"
)

// Where the events and audit records come from: the admin API (op and
// clusterAdmin), a watcher of the local volumes, and the node manager's
// hooks (membership, quorum, commits, fencing, failover steps, VIPs,
// alerts).

func (d *Daemon) now() time.Time { return d.opts.Now() }

// peerKey carries the admin connection's peer uid in the request context.
type peerKey struct{}

// connContext notes who is on the other end of an admin connection
// (SO_PEERCRED; the listener already refused anyone but root or the
// daemon's user).
func (d *Daemon) connContext(ctx context.Context, c net.Conn) context.Context {
	if uc, ok := c.(*net.UnixConn); ok {
		if uid, err := peerUID(uc); err == nil {
			return context.WithValue(ctx, peerKey{}, uid)
		}
	}
	return ctx
}

// requester names who sent an admin request.
func requester(ctx context.Context) string {
	if uid, ok := ctx.Value(peerKey{}).(int); ok {
		return fmt.Sprintf("uid %d via admin socket", uid)
	}
	if ctx.Value(signalKey{}) != nil {
		return "SIGHUP"
	}
	return "admin socket"
}

// noteAdmin records an admin action: an event and an audit line.
func (d *Daemon) noteAdmin(ctx context.Context, op, resource, target string, request, result any, err error) {
	rec := AuditRecord{Time: d.now(), Node: d.node.Name, Kind: "admin", Op: op, Resource: resource, Target: target,
		By: requester(ctx), Request: request, Outcome: "ok", Result: result}
	text := op
	if target != "" {
		text += " " + target
	}
	if err != nil {
		rec.Outcome, rec.Error, rec.Result = "refused", err.Error(), nil
		if code, _ := codeOf(err); code == CodeInternal {
			rec.Outcome = "failed"
		}
		text += " " + rec.Outcome + ": " + err.Error()
	} else {
		text += " done"
		if s, ok := result.(string); ok && s != "" {
			text += ": " + s
		}
	}
	text += " (" + rec.By + ")"
	d.audit.add(rec)
	d.events.publish(Event{Time: rec.Time, Kind: KindAdmin, Resource: resource, Target: target, Text: text, Data: rec})
}

// watchVolumes publishes the local volumes' changes: role, disk,
// connection, the peer's role and disk, epoch, suspended I/O, and the
// start and end of a resync.
func (d *Daemon) watchVolumes() {
	defer d.bg.Done()
	last := map[string]replicate.Status{}
	t := time.NewTicker(d.opts.ReconcileInterval)
	defer t.Stop()
	for {
		for _, r := range d.resourceList() {
			v := r.volume()
			if v == nil {
				continue
			}
			st := v.Status()
			prev, seen := last[r.cfg.Name]
			last[r.cfg.Name] = st
			if seen {
				d.volumeChanged(r.cfg.Name, prev, st)
			}
		}
		if cl := d.cl.Load(); cl != nil {
			cl.gossipSoftState(d.softStateOf(last), d.log)
		}
		select {
		case <-d.opCtx.Done():
			return
		case <-t.C:
		}
	}
}

func (d *Daemon) volumeChanged(name string, a, b replicate.Status) {
	var ch []string
	note := func(what string, x, y any) {
		if x != y {
			ch = append(ch, fmt.Sprintf("%s %v -> %v", what, x, y))
		}
	}
	note("role", a.Role, b.Role)
	note("disk", a.Disk, b.Disk)
	note("connection", a.Conn, b.Conn)
	note("peer role", a.PeerRole, b.PeerRole)
	note("peer disk", a.PeerDisk, b.PeerDisk)
	note("epoch", a.Epoch, b.Epoch)
	note("suspended I/O", a.SuspendedIO, b.SuspendedIO)
	if len(ch) > 0 {
		text := strings.Join(ch, ", ")
		if b.Reason != "" && b.Reason != a.Reason {
			text += " (" + b.Reason + ")"
		}
		d.events.publish(Event{Kind: KindVolume, Resource: name, Target: b.Peer, Text: text,
			Data: map[string]any{"role": b.Role, "disk": b.Disk, "connection": b.Conn, "peer_role": b.PeerRole, "peer_disk": b.PeerDisk, "epoch": b.Epoch}})
	}
	switch {
	case a.Resync == nil && b.Resync != nil:
		p := b.Resync
		d.events.publish(Event{Kind: KindResync, Resource: name, Target: b.Peer, Data: p,
			Text: fmt.Sprintf("resync started as %s: %d bytes to go (full %v, checksum %v)", b.Conn, p.TotalBytes, p.Full, p.Checksum)})
	case a.Resync != nil && b.Resync == nil:
		text := "resync ended"
		var data any
		if p := b.LastResync; p != nil {
			text = fmt.Sprintf("resync ended: %d of %d bytes done, %d sent; disk %s", p.DoneBytes, p.TotalBytes, p.SentBytes, b.Disk)
			data = p
		}
		d.events.publish(Event{Kind: KindResync, Resource: name, Target: b.Peer, Text: text, Data: data})
	}
}

// managerWatch turns the node manager's hooks into events and audit
// records. The hooks run on the manager's loop: each only formats and
// publishes (neither blocks).
type managerWatch struct {
	d *Daemon

	mu      sync.Mutex
	quorum  *bool
	members map[string]cluster.MemberState
}

func (d *Daemon) managerHooks() manager.Hooks {
	w := &managerWatch{d: d, members: map[string]cluster.MemberState{}}
	return manager.Hooks{Event: w.event, Action: w.action, Status: w.status, FailoverStep: w.step}
}

func (w *managerWatch) status(st cluster.Status) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.quorum == nil || *w.quorum != st.Quorum {
		q := st.Quorum
		text := "quorum lost: fewer than a majority of the voters are alive"
		if q {
			text = "quorum gained"
		}
		if w.quorum != nil { // the first status is where it starts, not a change
			w.d.events.publish(Event{Kind: KindQuorum, Text: text, Data: map[string]any{"quorum": q, "members": maps.Clone(st.Members)}})
		}
		w.quorum = &q
	}
	for _, n := range slices.Sorted(maps.Keys(st.Members)) {
		s := st.Members[n]
		if old, ok := w.members[n]; ok && old == s || !ok && (s == "Unknown" || s == "") {
			w.members[n] = s
			continue
		}
		w.members[n] = s
		w.d.events.publish(Event{Kind: KindMember, Target: n, Text: fmt.Sprintf("node %s is %s", n, s), Data: map[string]any{"state": s}})
	}
}

func (w *managerWatch) event(ev cluster.Event) {
	d := w.d
	switch e := ev.(type) {
	case cluster.Committed:
		c := e.Cmd
		text := "committed " + c.String()
		var data any
		if e.Err != nil {
			text = "refused by the log: " + c.String() + ": " + e.Err.Error()
		} else if e.Record != nil {
			if res := e.Record.Resource(c.Resource); res != nil {
				text += fmt.Sprintf(" (primary %q, epoch %d)", res.Primary, res.Epoch)
				data = res
			}
		}
		d.events.publish(Event{Time: e.At, Kind: KindCommit, Resource: c.Resource, Target: c.Node, Text: text, Data: data})
	case cluster.FenceResult:
		rec := AuditRecord{Time: e.At, Node: d.node.Name, Kind: "fence", Op: "fence-result", Target: e.Node, By: "cluster layer",
			Request: map[string]any{"epochs": e.Epochs}, Outcome: "ok", Result: map[string]any{"method": e.Method}}
		text := fmt.Sprintf("node %s confirmed off (%s)", e.Node, e.Method)
		if e.Err != nil {
			rec.Outcome, rec.Error, rec.Result = "failed", e.Err.Error(), nil
			text = fmt.Sprintf("fencing node %s failed: %v", e.Node, e.Err)
		}
		d.audit.add(rec)
		d.events.publish(Event{Time: e.At, Kind: KindFence, Target: e.Node, Text: text, Data: rec})
	case cluster.VIPResult:
		if e.Err != nil {
			d.events.publish(Event{Time: e.At, Kind: KindVIP, Resource: e.Resource, Text: "service address claim refused: " + e.Err.Error()})
		}
	case cluster.ProposalFailed:
		d.events.publish(Event{Time: e.At, Kind: KindCommit, Text: fmt.Sprintf("proposal %s did not reach the log: %v", e.ID, e.Err)})
	}
}

func (w *managerWatch) action(a cluster.Action) {
	d := w.d
	switch a := a.(type) {
	case cluster.FenceNode:
		rec := AuditRecord{Time: d.now(), Node: d.node.Name, Kind: "fence", Op: "fence-attempt", Target: a.Node, By: "cluster layer",
			Request: map[string]any{"epochs": a.Epochs}, Outcome: "started"}
		d.audit.add(rec)
		d.events.publish(Event{Time: rec.Time, Kind: KindFence, Target: a.Node, Data: rec,
			Text: fmt.Sprintf("fencing node %s (resources %v)", a.Node, slices.Sorted(maps.Keys(a.Epochs)))})
	case cluster.ClaimVIP:
		d.events.publish(Event{Kind: KindVIP, Resource: a.Resource, Text: "claiming the service address"})
	case cluster.ReleaseVIP:
		d.events.publish(Event{Kind: KindVIP, Resource: a.Resource, Text: "releasing the service address"})
	case cluster.Alert:
		d.events.publish(Event{Kind: KindAlert, Resource: a.Resource, Text: a.Text})
	case cluster.Promote:
		w.act(a.Resource, a)
	case cluster.Demote:
		w.act(a.Resource, a)
	case cluster.SuspendIO:
		w.act(a.Resource, a)
	case cluster.ResumeIO:
		w.act(a.Resource, a)
	case cluster.FailIO:
		w.act(a.Resource, a)
	case cluster.StartResync:
		w.act(a.Resource, a)
	case cluster.RefuseDegraded:
		w.act(a.Resource, a)
	}
}

// act publishes an action on a local replica.
func (w *managerWatch) act(resource string, a cluster.Action) {
	w.d.events.publish(Event{Kind: KindAction, Resource: resource, Text: a.String()})
}

func (w *managerWatch) step(f manager.Failover, s manager.Step) {
	d := w.d
	text := fmt.Sprintf("failover step %s: %.3fs (%.3fs since the start)", s.Name, s.Seconds, s.Elapsed)
	if f.From != "" {
		text += " from " + f.From
	}
	if s.Detail != "" {
		text += ": " + s.Detail
	}
	d.events.publish(Event{Time: s.At, Kind: KindFailover, Resource: f.Resource, Target: f.From, Text: text, Data: s})
	if s.Name == "serve" {
		f.Seconds = s.Elapsed
		d.audit.add(AuditRecord{Time: s.At, Node: d.node.Name, Kind: "failover", Op: "failover", Resource: f.Resource, Target: f.From,
			By: "cluster layer", Outcome: "ok", Result: f})
	}
}
