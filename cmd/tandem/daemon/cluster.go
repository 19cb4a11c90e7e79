package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cluster/authority"
	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/vip"
)

// clusterLayer is the automatic part of a node, running when the
// configuration has gossip and authority addresses: membership (memberlist),
// the authority log (raft among every node) and the node manager that
// drives this node's volumes, NBD gates and VIPs from the cluster machine.
type clusterLayer struct {
	ms     *cluster.Membership
	auth   *authority.Authority
	mgr    *manager.Manager
	vips   *vip.Set
	cancel context.CancelFunc
	done   chan struct{}

	metaMu   sync.Mutex
	lastMeta []byte // the soft state last gossiped
}

// joinRetry is how often a node that reached no other member tries again.
const joinRetry = time.Second

// gossipKeys is memberlist's keyring: the key of this node's secret first
// (it encrypts with it), then those of the accepted ones (it decrypts
// with any), so a rolling secret rotation never splits the gossip.
func (d *Daemon) gossipKeys(secret []byte) [][]byte {
	keys := [][]byte{gossipKey(secret)}
	for _, s := range d.acceptSecrets {
		keys = append(keys, gossipKey(s))
	}
	return keys
}

// gossipKey derives the memberlist key from the cluster secret, so a
// cluster needs one secret file, and the gossip key is not the secret
// itself.
func gossipKey(secret []byte) []byte {
	h := sha256.New()
	h.Write([]byte("tandem gossip key v1\x00"))
	h.Write(secret)
	return h.Sum(nil)
}

// lazyLog lets the manager exist before the authority it proposes to: the
// authority's OnCommit must reach the manager from its first replayed
// entry on.
type lazyLog struct {
	a atomic.Pointer[authority.Authority]
}

func (l *lazyLog) Propose(ctx context.Context, cmd cluster.Command) (*cluster.Record, error) {
	a := l.a.Load()
	if a == nil {
		return nil, fmt.Errorf("daemon: authority log not open yet: %w", authority.ErrNoQuorum)
	}
	return a.Propose(ctx, cmd)
}

// liveVolume is what the node manager drives: the resource's volume
// while it is up (tandem up and down swap it, lifecycle.go); while it is
// down it reports no disk, so the machine never promotes it and tells the
// record.
type liveVolume struct{ r *resource }

func (l liveVolume) Status() replicate.Status {
	if v := l.r.volume(); v != nil {
		return v.Status()
	}
	return l.r.status("").Status
}

func (l liveVolume) Promote(ctx context.Context, force bool) (replicate.PromoteResult, error) {
	v, err := l.r.upVolume()
	if err != nil {
		return replicate.PromoteResult{}, err
	}
	return v.Promote(ctx, force)
}

func (l liveVolume) Demote(ctx context.Context) error {
	if v := l.r.volume(); v != nil {
		return v.Demote(ctx)
	}
	return nil // down is not primary
}

func (l liveVolume) Resync(ctx context.Context, full bool) error {
	v, err := l.r.upVolume()
	if err != nil {
		return err
	}
	return v.Resync(ctx, full)
}

func (l liveVolume) PeerFenced(ctx context.Context) error {
	if v := l.r.volume(); v != nil {
		return v.PeerFenced(ctx)
	}
	return nil // no session to end
}

// degradedHook is the volumes' OnDegraded while the cluster layer runs.
func (d *Daemon) degradedHook(resource string) func(context.Context) error {
	return func(ctx context.Context) error {
		cl := d.cl.Load()
		if cl == nil {
			return fmt.Errorf("resource %s: a write without the peer needs the cluster layer, which is not running", resource)
		}
		return cl.mgr.DegradedHook(resource)(ctx)
	}
}

func (d *Daemon) machineConfig() cluster.Config {
	t := d.cfg.Timing
	mc := cluster.Config{Node: d.node.Name, Lease: t.Lease, Margin: t.Margin, FenceRetry: t.FenceRetry}
	for _, n := range d.cfg.Nodes {
		mc.Voters = append(mc.Voters, n.Name)
	}
	for _, r := range d.cfg.Resources {
		if len(r.Replicas) != 2 {
			continue // Validate refused it already
		}
		mc.Resources = append(mc.Resources, machineResource(&r, t))
	}
	return mc
}

// machineResource is what the cluster machine runs of a resource.
func machineResource(r *config.Resource, t config.Timing) cluster.ResourceConfig {
	return cluster.ResourceConfig{
		Name: r.Name, Replicas: [2]string{r.Replicas[0].Node, r.Replicas[1].Node},
		Preferred: r.PreferredPrimary, OnNoQuorum: cluster.NoQuorumPolicy(r.OnNoQuorum),
		Failback: cluster.FailbackPolicy(r.Failback), FailbackAfter: t.FailbackAfter,
	}
}

// fencerOf is the cluster layer's fencer of node, built at each attempt.
func (d *Daemon) fencerOf(node string) (manager.Fencer, error) {
	if d.opts.Fencer == nil {
		return nil, fmt.Errorf("node %s: no fencer wired into this daemon", node)
	}
	// Options.Fencer reads the nodes' fencing levels, which adjust
	// replaces under cfgMu.
	d.cfgMu.RLock()
	defer d.cfgMu.RUnlock()
	return d.opts.Fencer(node)
}

// startCluster opens membership and the authority log and starts the
// manager. An error leaves nothing of it running.
func (d *Daemon) startCluster(secret []byte) (err error) {
	log := d.log.With("layer", "cluster")
	cl := &clusterLayer{done: make(chan struct{})}
	defer func() {
		if err != nil {
			cl.close()
		}
	}()
	if cl.vips, err = vip.NewSet(d.cfg.VIPs(d.node.Name), vip.WithLogger(log)); err != nil {
		return fmt.Errorf("daemon: cluster layer: %w", err)
	}
	res := map[string]manager.Resource{}
	for _, r := range d.resourceList() {
		res[r.cfg.Name] = manager.Resource{Volume: liveVolume{r}, Gate: r.gate}
	}
	fencer := d.fencerOf
	host, port, err := net.SplitHostPort(d.node.Gossip)
	if err != nil {
		return fmt.Errorf("daemon: gossip %q: %w", d.node.Gossip, err)
	}
	p, _ := strconv.Atoi(port)
	mc := cluster.MembershipConfig{Node: d.node.Name, BindAddr: host, BindPort: p, Keys: d.gossipKeys(secret), Logger: log,
		ProbeInterval: d.cfg.Timing.ProbeInterval, ProbeTimeout: d.cfg.Timing.ProbeTimeout, SuspicionMult: d.cfg.Timing.SuspicionMult}
	var voters []authority.Voter
	var peers []string
	for _, n := range d.cfg.Nodes {
		mc.Voters = append(mc.Voters, n.Name)
		voters = append(voters, authority.Voter{Name: n.Name, Addr: n.Authority})
		if n.Name != d.node.Name {
			peers = append(peers, n.Gossip)
		}
	}
	if cl.ms, err = cluster.NewMembership(mc); err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	cl.gossipSoftState(d.softState(), log) // softstate.go
	ll := &lazyLog{}
	cl.mgr, err = manager.New(manager.Config{
		Machine: d.machineConfig(), Resources: res, Log: ll, Members: cl.ms.Events(), Fencer: fencer, VIPs: cl.vips, Logger: log,
		Hooks: d.managerHooks(),
	})
	if err != nil {
		return fmt.Errorf("daemon: cluster layer: %w", err)
	}
	cl.auth, err = authority.Open(authority.Config{
		Node: d.node.Name, Voters: voters, Dir: filepath.Join(d.node.DataDir, "authority"),
		Secret: secret, AcceptSecrets: d.acceptSecrets, Logger: log, OnCommit: cl.mgr.Commit,
		// The witness reaches both data nodes when their link is cut: it
		// leads then, so that both can still commit.
		PreferredLeaders: d.cfg.Witnesses(),
		Alive:            func(n string) bool { return cl.ms.State(n) == cluster.MemberAlive },
	})
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	ll.a.Store(cl.auth)

	ctx, cancel := context.WithCancel(context.Background())
	cl.cancel = cancel
	go func() {
		defer close(cl.done)
		mgrDone := make(chan struct{})
		go func() {
			defer close(mgrDone)
			_ = cl.mgr.Run(ctx)
		}()
		cl.join(ctx, peers, log)
		<-mgrDone
	}()
	d.cl.Store(cl)
	log.Info("cluster layer running", "gossip", cl.ms.Addr(), "authority", d.node.Authority, "voters", mc.Voters)
	return nil
}

// join contacts the other members until one answers; memberlist then
// learns the rest by gossip (and a node that comes back later is found by
// the others' probes of its address).
func (cl *clusterLayer) join(ctx context.Context, peers []string, log interface {
	Warn(string, ...any)
	Info(string, ...any)
}) {
	for attempt := 1; ; attempt++ {
		n, err := cl.ms.Join(peers)
		if err == nil && n > 0 {
			log.Info("joined the cluster", "reached", n)
			return
		}
		if attempt == 1 || attempt%30 == 0 {
			log.Warn("no other member reachable yet; retrying", "peers", peers, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(joinRetry):
		}
	}
}

// handOver switches every resource this node is primary of over to its
// peer before the daemon stops, so a clean stop (systemctl stop, restart)
// needs no fencing. A switchover that is refused or cancelled (the peer is
// not connected and UpToDate) leaves the resource here: the others then
// see this node leave, and fence it if they can take over.
func (cl *clusterLayer) handOver(ctx context.Context, log *slog.Logger) {
	var moving []string
	for _, r := range cl.mgr.Status().Resources {
		if !r.Primary {
			continue
		}
		text, err := cl.mgr.Admin(ctx, cluster.AdminRequest{Op: cluster.AdminSwitchover, Resource: r.Resource})
		if err != nil {
			log.Warn("stopping: cannot hand the resource over; the peer will fence this node to take it", "resource", r.Resource, "err", err)
			continue
		}
		log.Info("stopping: handing the resource over", "resource", r.Resource, "result", text)
		moving = append(moving, r.Resource)
	}
	// The status may lag the reply by one step: a switchover counts as
	// cancelled only once it was seen running and then stopped.
	seen := map[string]bool{}
	for len(moving) > 0 {
		st := cl.mgr.Status()
		moving = slices.DeleteFunc(moving, func(name string) bool {
			res := st.Record.Resource(name)
			if res == nil || res.Primary != st.Node {
				return true // handed over
			}
			running := res.Target != "" || slices.ContainsFunc(st.Resources, func(r cluster.ResourceStatus) bool { return r.Resource == name && r.Handoff })
			if running {
				seen[name] = true
			}
			if seen[name] && !running {
				log.Warn("stopping: the switchover was cancelled; the peer will fence this node to take it", "resource", name)
				return true
			}
			return false
		})
		if len(moving) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			log.Warn("stopping: resources not handed over in time", "resources", moving)
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// close stops the manager, leaves membership (the others see this node
// gone at once), closes the log and releases this node's VIPs.
func (cl *clusterLayer) close() error {
	var errs []error
	if cl.cancel != nil {
		cl.cancel()
		<-cl.done
	}
	if cl.ms != nil {
		if err := cl.ms.Leave(time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if cl.auth != nil {
		if err := cl.auth.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if cl.vips != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := cl.vips.ReleaseAll(ctx); err != nil {
			errs = append(errs, err)
		}
		cl.vips.Close()
	}
	return errors.Join(errs...)
}
