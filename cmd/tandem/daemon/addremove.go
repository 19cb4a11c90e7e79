package daemon

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/nbd"
)

// Resources added to or removed from the configuration file are applied
// by tandem adjust while the daemon runs (drbdadm adjust brings up a new
// resource and takes down a removed one): the node's other resources,
// primaries among them, go on serving. With the cluster layer the node
// manager takes the resource over (or forgets it) too; the resource's
// promotion is then the machine's, as at start. An added resource with a replica
// here is exported on its nbd-listen (a new listener if no other resource
// uses that address) and opened as tandem up opens one, after the adjust:
// without metadata it stays down and says to run create-md, then tandem
// up. A removed resource must be down here first (tandem down), so that
// no client loses a device it writes to by a file edit.

// resourceList is the node's resources now (the caller must not change
// the slice).
func (d *Daemon) resourceList() []*resource { return *d.res.Load() }

// newResource is the daemon's resource for res, or nil when this node holds
// no replica of it. The resource keeps its own copy of res: adjust changes
// it field by field while the daemon's list of the file's resources is
// replaced.
func (d *Daemon) newResource(res *config.Resource) *resource {
	if res.Replica(d.node.Name) == nil {
		return nil
	}
	c := *res
	c.Replicas = slices.Clone(res.Replicas)
	return &resource{
		cfg: &c, rp: c.Replica(d.node.Name), peer: c.Peer(d.node.Name),
		gate: newGate(c.Name, d.node.Name, c.Size, d.log),
	}
}

// export is r's NBD export.
func (d *Daemon) export(r *resource) nbd.Export {
	return nbd.Export{
		Name:        r.cfg.Name,
		Description: fmt.Sprintf("tandem %s/%s on %s", d.cfg.Cluster, r.cfg.Name, d.node.Name),
		Device:      r.gate,
		Available:   r.gate.available,
	}
}

// Change paths adjust reports for a resource added to or removed from the
// file.
const (
	resourceAdded   = " (added)"
	resourceRemoved = " (removed)"
	resourcesOrder  = "Resources (order)"
)

// resourceDiff is config.Diff of a and b with their resources matched by
// name rather than by place, and the names added and removed.
func resourceDiff(a, b *config.Config) (changes, added, removed []string) {
	ac, bc := *a, *b
	ac.Resources, bc.Resources = nil, nil
	var aNames, bNames []string
	for _, r := range a.Resources {
		aNames = append(aNames, r.Name)
		if n := b.Resource(r.Name); n != nil {
			ac.Resources, bc.Resources = append(ac.Resources, r), append(bc.Resources, *n)
		} else {
			removed = append(removed, r.Name)
		}
	}
	for _, r := range b.Resources {
		bNames = append(bNames, r.Name)
		if a.Resource(r.Name) == nil {
			added = append(added, r.Name)
		}
	}
	changes = config.Diff(&ac, &bc)
	for _, n := range added {
		changes = append(changes, "Resources["+n+"]"+resourceAdded)
	}
	for _, n := range removed {
		changes = append(changes, "Resources["+n+"]"+resourceRemoved)
	}
	if len(added) == 0 && len(removed) == 0 && !slices.Equal(aNames, bNames) {
		// Only the order: nothing runs differently, but the file's hash
		// (compared between the nodes) is the new order's.
		changes = append(changes, resourcesOrder)
	}
	return changes, added, removed
}

// ConfigDiff lists the settings a and b differ in, as adjust names them:
// resources matched by name, one added or removed named as such.
func ConfigDiff(a, b *config.Config) []string {
	changes, _, _ := resourceDiff(a, b)
	return changes
}

// addedOrRemoved is the resource name of a change path resourceDiff made
// for an added or removed resource.
func addedOrRemoved(path string) (name string, added, ok bool) {
	rest, ok := strings.CutPrefix(path, "Resources[")
	if !ok {
		return "", false, false
	}
	if n, ok := strings.CutSuffix(rest, "]"+resourceAdded); ok {
		return n, true, true
	}
	if n, ok := strings.CutSuffix(rest, "]"+resourceRemoved); ok {
		return n, false, true
	}
	return "", false, false
}

// resourcePlan is what an adjust does to the list of resources, checked
// before anything is applied.
type resourcePlan struct {
	add    []*resource
	remove []*resource             // held down: roleMu locked until the adjust ends
	listen map[string]net.Listener // new NBD listeners, by address
}

// close releases the new listeners of a plan that is not applied.
func (p *resourcePlan) close() {
	for _, l := range p.listen {
		l.Close()
	}
}

// planResources checks the resources nc adds and removes; a change that
// cannot be applied now is returned in restart with the reason. Called
// with cfgMu held; held collects the resources whose roleMu it locked.
func (d *Daemon) planResources(nc *config.Config, added, removed []string, held *[]*resource) (*resourcePlan, []string) {
	p := &resourcePlan{listen: map[string]net.Listener{}}
	var restart []string
	cl := d.cl.Load() != nil
	for _, name := range removed {
		r := d.findLocal(name)
		if r == nil {
			continue // no replica here: only the file's list changes
		}
		switch {
		case !r.roleMu.TryLock():
			restart = append(restart, fmt.Sprintf("Resources[%s]%s: an operation on it is running; try again", name, resourceRemoved))
		case r.volume() != nil:
			r.roleMu.Unlock()
			restart = append(restart, fmt.Sprintf("Resources[%s]%s: it is up here: tandem down %s first (demote it first on the primary)", name, resourceRemoved, name))
		default:
			*held = append(*held, r)
			p.remove = append(p.remove, r)
		}
	}
	for _, name := range added {
		r := d.newResource(nc.Resource(name))
		if r == nil {
			continue
		}
		if v, ok := r.cfg.VIPFor(d.node.Name); ok && cl {
			if err := v.Check(); err != nil {
				restart = append(restart, fmt.Sprintf("Resources[%s]%s: vip: %v", name, resourceAdded, err))
				continue
			}
		}
		switch {
		case d.secret == nil:
			restart = append(restart, fmt.Sprintf("Resources[%s]%s: this node started without resources and has not read secret-file", name, resourceAdded))
			continue
		}
		addr := r.rp.NBDListen
		if d.server(addr) == nil && p.listen[addr] == nil {
			l, err := listenNBD(addr)
			if err != nil {
				restart = append(restart, fmt.Sprintf("Resources[%s]%s: %v", name, resourceAdded, err))
				continue
			}
			p.listen[addr] = l
		}
		p.add = append(p.add, r)
	}
	return p, restart
}

// findLocal is the resource called name among this node's, or nil.
func (d *Daemon) findLocal(name string) *resource {
	for _, r := range d.resourceList() {
		if r.cfg.Name == name {
			return r
		}
	}
	return nil
}

// server is the NBD server on addr, or nil.
func (d *Daemon) server(addr string) *nbdServer {
	d.srvMu.Lock()
	defer d.srvMu.Unlock()
	for _, s := range d.servers {
		if s.addr == addr {
			return s
		}
	}
	return nil
}

// applyResources changes the list of resources as p says, in nc's
// order. Called with cfgMu held; it cannot fail: what could was checked.
func (d *Daemon) applyResources(ctx context.Context, nc *config.Config, p *resourcePlan) {
	for _, r := range p.remove {
		r.removed = true // under roleMu: an up waiting for it opens nothing
		if s := d.server(r.rp.NBDListen); s != nil {
			if err := s.srv.RemoveExport(r.cfg.Name); err != nil {
				d.log.Warn("adjust: removing the NBD export", "resource", r.cfg.Name, "err", err)
			}
			if len(s.srv.Exports()) == 0 {
				d.stopServer(ctx, s)
			}
		}
		d.log.Info("resource removed", "resource", r.cfg.Name)
	}
	for _, r := range p.add {
		addr := r.rp.NBDListen
		if l := p.listen[addr]; l != nil {
			delete(p.listen, addr)
			if err := d.serveNBD(addr, l, []nbd.Export{d.export(r)}); err != nil {
				// NewServer refuses only what Validate refused already.
				d.log.Error("adjust: NBD server", "addr", addr, "err", err)
			}
		} else if s := d.server(addr); s != nil {
			if err := s.srv.AddExport(d.export(r)); err != nil {
				d.log.Error("adjust: NBD export", "resource", r.cfg.Name, "err", err)
			}
		}
		r.downErr = fmt.Errorf("added by tandem adjust, being opened")
	}
	old := d.resourceList()
	var next []*resource
	for i := range nc.Resources {
		name := nc.Resources[i].Name
		if r := d.findLocal(name); r != nil && !slices.Contains(p.remove, r) {
			next = append(next, r)
			continue
		}
		if i := slices.IndexFunc(p.add, func(r *resource) bool { return r.cfg.Name == name }); i >= 0 {
			next = append(next, p.add[i])
		}
	}
	if len(next) != len(old)+len(p.add)-len(p.remove) {
		d.log.Error("adjust: resource list out of step", "had", len(old), "now", len(next))
	}
	d.res.Store(&next)
	if cl := d.cl.Load(); cl != nil {
		for _, r := range p.remove {
			cl.mgr.RemoveResource(r.cfg.Name)
			// Down here, so not held here: Remove only forgets it.
			if err := cl.vips.Remove(ctx, r.cfg.Name); err != nil {
				d.log.Warn("adjust: removing the VIP", "resource", r.cfg.Name, "err", err)
			}
		}
	}
}

// openAdded opens the resources an adjust added, as tandem up does; one
// that does not open stays down with the reason in its status.
func (d *Daemon) openAdded(ctx context.Context, add []*resource) []string {
	var notes []string
	for _, r := range add {
		err := d.up(ctx, r)
		// The cluster layer only now: a volume it saw down in between
		// would be recorded Failed in the authority record, and a Failed
		// replica is never promoted (until create-md and up).
		if cl := d.cl.Load(); cl != nil && d.findLocal(r.cfg.Name) == r {
			d.cfgMu.RLock()
			rc := machineResource(r.cfg, d.cfg.Timing)
			d.cfgMu.RUnlock()
			// Its VIP first: the manager may promote it at once.
			var verr error
			if v, ok := r.cfg.VIPFor(d.node.Name); ok {
				verr = cl.vips.Add(r.cfg.Name, v)
			}
			if verr != nil {
				// Promoted without its address, its clients would not
				// find it: it stays out of the cluster layer.
				d.log.Error("adjust: the resource's vip was refused; it is not handed to the cluster layer", "resource", r.cfg.Name, "err", verr)
				notes = append(notes, fmt.Sprintf("resource %s: its vip was refused (%v): not handed to the cluster layer, restart the daemon", r.cfg.Name, verr))
			} else if merr := cl.mgr.AddResource(rc, manager.Resource{Volume: liveVolume{r}, Gate: r.gate}); merr != nil {
				d.log.Error("adjust: the cluster layer refused the resource", "resource", r.cfg.Name, "err", merr)
				notes = append(notes, fmt.Sprintf("resource %s: the cluster layer refused it: %v", r.cfg.Name, merr))
			}
		}
		if err != nil {
			notes = append(notes, fmt.Sprintf("resource %s added but down: %v", r.cfg.Name, err))
			continue
		}
		st := r.volume()
		if st == nil {
			continue
		}
		s := st.Status()
		notes = append(notes, fmt.Sprintf("resource %s added and up: %s, %s, %s", r.cfg.Name, s.Role, s.Disk, s.Conn))
	}
	return notes
}
