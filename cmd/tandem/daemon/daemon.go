package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/replicate/md"
)

// Options configure a Daemon.
type Options struct {
	// Config is the loaded, validated cluster configuration.
	Config *config.Config
	// Node is this node's name.
	Node string
	// Open opens a replicated volume (replicate.Open in the binary).
	Open OpenFunc
	// Logger receives structured logs (nil: discarded).
	Logger *slog.Logger
	// ShutdownTimeout bounds draining NBD and closing volumes (default 30 s).
	ShutdownTimeout time.Duration
	// ReconcileInterval is how often the NBD gates are reconciled with the
	// volumes' roles (default 1 s).
	ReconcileInterval time.Duration
	// Version is reported in status.
	Version string
	// Fencer returns the fencer of a node, for the cluster layer (nil:
	// fencing always fails, so nothing fails over automatically). It is
	// called at every fencing attempt, with the daemon's configuration
	// read-locked: it may read Config's nodes' fencing levels, which
	// tandem adjust replaces.
	Fencer func(node string) (manager.Fencer, error)
	// Now is the clock of events and audit records (nil: time.Now).
	Now func() time.Time
}

// Daemon runs one node's resources. Start opens everything, Shutdown
// takes it down in order; Run does both around a context.
type Daemon struct {
	opts Options
	cfg  *config.Config
	node *config.Node
	log  *slog.Logger

	// res is the node's resources in configuration order; tandem adjust
	// replaces the list (never changes it in place) when resources are
	// added or removed (addremove.go). Read it with resourceList.
	res atomic.Pointer[[]*resource]
	// secret and acceptSecrets: the secret-file's and the
	// accept-secret-files' contents, read at start (and used again by
	// tandem up).
	secret        []byte
	acceptSecrets [][]byte
	srvMu         sync.Mutex // guards servers: adjust adds and stops servers
	servers       []*nbdServer
	admin         *adminListener
	http          *http.Server
	httpDone      chan struct{}
	metrics       *metricsServer // nil without metrics-listen (metrics.go)

	// opCtx is cancelled at shutdown: admin operations in flight (a
	// verify) stop instead of holding the exit up.
	opCtx    context.Context
	opCancel context.CancelFunc

	mu       sync.Mutex
	stopping bool
	stopOnce sync.Once
	stopErr  error
	bg       sync.WaitGroup

	cl atomic.Pointer[clusterLayer] // nil: manual roles (cluster.go)

	events *events // the event stream (events.go)
	// alerts run the configured programs for the events (alerts.go);
	// alertsCtx ends when the shutdown's time is up.
	alerts []*alertRunner // guarded by cfgMu
	// retiredAlerts were replaced by tandem adjust and may still pass on
	// what came before it; the shutdown waits for them too.
	retiredAlerts []*alertRunner
	// cfgMu guards what tandem adjust changes in cfg while the daemon
	// runs (adjust.go): alerts, each resource's resync and split-brain.
	cfgMu        sync.RWMutex
	alertsCtx    context.Context
	alertsCancel context.CancelFunc
	audit        *audit // DATA_DIR/audit.log (audit.go)
}

// resource is one local replica and what serves it.
type resource struct {
	cfg  *config.Resource
	rp   *config.Replica
	peer *config.Replica
	gate *gate

	// mu guards what up and down swap (lifecycle.go); read the volume
	// with volume or upVolume.
	mu      sync.Mutex
	storage *Storage
	vol     Volume // nil while down
	downErr error  // why it is down

	roleMu sync.Mutex // promote, demote, reconcile, up and down
	// removed: tandem adjust took the resource out of the daemon
	// (addremove.go); guarded by roleMu.
	removed bool

	// link is the link settings last given to the volume, tlsSum the
	// digest of the TLS files they were read from (linktls.go); guarded
	// by the daemon's cfgMu.
	link   replicate.LinkSettings
	tlsSum [32]byte
}

// volume is the open volume, nil while the resource is down.
func (r *resource) volume() Volume {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.vol
}

type nbdServer struct {
	addr string
	srv  *nbd.Server
	l    net.Listener
	done chan error
}

// New checks the options; nothing is opened until Start.
func New(opts Options) (*Daemon, error) {
	if opts.Config == nil || opts.Open == nil {
		return nil, errors.New("daemon: Config and Open are required")
	}
	node, err := opts.Config.Node(opts.Node)
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 30 * time.Second
	}
	if opts.ReconcileInterval <= 0 {
		opts.ReconcileInterval = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	d := &Daemon{opts: opts, cfg: opts.Config, node: node, log: opts.Logger.With("node", node.Name)}
	d.events = newEvents(node.Name, eventRing, opts.Now)
	d.alertsCtx, d.alertsCancel = context.WithCancel(context.Background())
	var list []*resource
	for i := range d.cfg.Resources {
		if r := d.newResource(&d.cfg.Resources[i]); r != nil {
			list = append(list, r)
		}
	}
	d.res.Store(&list)
	return d, nil
}

// AuditLog is the path of the node's audit log.
func (d *Daemon) AuditLog() string { return filepath.Join(d.node.DataDir, AuditFile) }

// AdminSocket is the path of the admin API.
func (d *Daemon) AdminSocket() string { return d.node.AdminSocket }

// NBDAddrs are the addresses the NBD servers listen on, once started.
func (d *Daemon) NBDAddrs() []string {
	var out []string
	d.srvMu.Lock()
	defer d.srvMu.Unlock()
	for _, s := range d.servers {
		if s.l.Addr().Network() == "unix" {
			out = append(out, "unix:"+s.l.Addr().String())
		} else {
			out = append(out, s.l.Addr().String())
		}
	}
	return out
}

// Start takes the admin socket (refusing if another daemon owns it),
// opens every local resource (one that cannot be opened stays down, with
// the reason in its status), starts the NBD servers and the admin API. An
// error means nothing is left running.
func (d *Daemon) Start(ctx context.Context) (err error) {
	d.opCtx, d.opCancel = context.WithCancel(context.WithoutCancel(ctx))
	al, err := listenAdmin(d.node.AdminSocket, d.log)
	if err != nil {
		d.opCancel()
		return fmt.Errorf("daemon: %w", err)
	}
	d.admin = al
	defer func() {
		if err != nil {
			d.shutdown(context.Background())
		}
	}()
	if addr := d.node.MetricsListen; addr != "" {
		if err := d.startMetrics(addr, d.node.MetricsTLS); err != nil {
			return fmt.Errorf("daemon: %w", err)
		}
	}
	if d.audit, err = openAudit(d.AuditLog(), d.log); err != nil {
		return fmt.Errorf("daemon: %w", err)
	}

	layer := d.cfg.ClusterLayer()
	if len(d.resourceList()) == 0 && !layer {
		d.log.Info("witness node: no replica here; the admin API runs; with gossip and authority addresses it votes in the cluster layer")
	}
	var secret []byte
	if len(d.resourceList()) > 0 || layer {
		if secret, err = readSecret(d.cfg.SecretFile); err != nil {
			return fmt.Errorf("daemon: %w", err)
		}
		for _, f := range d.cfg.AcceptSecretFiles {
			b, err := readSecret(f)
			if err != nil {
				return fmt.Errorf("daemon: accept-secret-files: %w", err)
			}
			d.acceptSecrets = append(d.acceptSecrets, b)
		}
		if len(d.acceptSecrets) > 0 {
			d.log.Warn("secret rotation in progress: peers proving one of the accept-secret-files are let in; remove the key once every node proves the new secret", "accepted", len(d.acceptSecrets))
		}
	}
	d.secret = secret
	// Before anything publishes: the alerts see every event from the start.
	d.startAlerts()
	for _, r := range d.resourceList() {
		_ = d.openResource(ctx, r)
	}
	if err := d.startNBD(); err != nil {
		return err
	}
	if layer {
		if err := d.startCluster(secret); err != nil {
			return err
		}
	}
	d.http = &http.Server{Handler: d.handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
		ConnContext: d.connContext}
	d.httpDone = make(chan struct{})
	go func() {
		defer close(d.httpDone)
		if err := d.http.Serve(d.admin); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("admin API stopped", "err", err)
		}
	}()
	if !layer {
		// With the cluster layer the node manager sets the gates.
		d.bg.Add(1)
		go d.reconcileLoop()
	}
	d.bg.Add(1)
	go d.watchVolumes()
	d.events.publish(Event{Kind: KindDaemon, Text: fmt.Sprintf("daemon running (version %s, %d resources)", d.opts.Version, len(d.resourceList()))})
	d.log.Info("daemon running", "admin_socket", d.node.AdminSocket, "resources", len(d.resourceList()), "nbd", d.NBDAddrs())
	return nil
}

func readSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secret-file: %w", err)
	}
	// Trailing newlines are how editors and `echo` leave a file; both
	// nodes read the same bytes either way.
	b = bytes.TrimRight(b, "\r\n \t")
	if len(b) < 16 {
		return nil, fmt.Errorf("secret-file %s: %d bytes, at least 16 needed (e.g. head -c 32 /dev/urandom | base64 > %s)", path, len(b), path)
	}
	return b, nil
}

// openResource brings one resource up or records why it stays down (and
// returns it). It never writes metadata: missing or corrupt metadata is
// reported, not reinitialised.
func (d *Daemon) openResource(ctx context.Context, r *resource) error {
	log := d.log.With("resource", r.cfg.Name)
	var s *Storage
	down := func(err error) error {
		if s != nil {
			s.Close()
		}
		r.mu.Lock()
		r.downErr = err
		r.mu.Unlock()
		log.Error("resource stays down", "err", err)
		return err
	}
	s, err := OpenStorage(r.cfg, r.rp, OpenOptions{})
	if err != nil {
		return down(err)
	}
	if err := d.checkMetadata(r, s); err != nil {
		return down(err)
	}
	// The volume names its resource in its own log records.
	vcfg, err := d.volumeConfig(r, s, d.log)
	if err != nil {
		return down(err)
	}
	v, err := d.opts.Open(ctx, vcfg)
	if err != nil {
		return down(fmt.Errorf("resource %s: opening the volume: %w", r.cfg.Name, err))
	}
	r.mu.Lock()
	r.vol, r.storage, r.downErr = v, s, nil
	r.mu.Unlock()
	// An adjust between volumeConfig and now changed r.cfg but found no
	// volume to tune (adjust.go).
	d.cfgMu.RLock()
	t := tunables(r.cfg, d.cfg.Timing)
	ls := r.link
	d.cfgMu.RUnlock()
	if t != (replicate.Tunables{Resync: vcfg.Resync, SplitBrain: vcfg.SplitBrain,
		Timing: replicate.LinkTiming{PingInterval: vcfg.PingInterval, PingTimeout: vcfg.PingTimeout, AckTimeout: vcfg.AckTimeout}}) {
		if err := v.Tune(t); err != nil {
			log.Warn("resource: the adjusted settings were refused", "err", err)
		}
	}
	if ls != (replicate.LinkSettings{Protocol: vcfg.Protocol, Compression: vcfg.Compression, TLS: vcfg.TLS, Listen: vcfg.Listen, PeerAddress: vcfg.PeerAddress}) {
		if _, err := v.SetLink(ctx, ls); err != nil {
			log.Warn("resource: the adjusted link settings were refused", "err", err)
		}
	}
	r.gate.setVolume(v)
	st := v.Status()
	r.gate.primary.Store(st.Role == replicate.Primary)
	log.Info("resource up", "role", st.Role, "disk", st.Disk, "connection", st.Conn, "listen", r.rp.Address, "peer", r.peer.Address)
	return nil
}

// checkMetadata reads the metadata (without changing it) so that a missing
// or corrupt one, or one of another resource, is named as such.
func (d *Daemon) checkMetadata(r *resource, s *Storage) error {
	name := r.cfg.Name
	info, err := md.Dump(s.Meta)
	switch {
	case errors.Is(err, md.ErrNoMetadata) && r.rp.InternalMeta():
		// Internal metadata sits right behind size bytes: a size edited
		// in the file (instead of tandem resize) looks for it elsewhere.
		return fmt.Errorf("resource %s: %w at byte %d of %s: if size was changed in the file, set it back first (the metadata is behind the old size; tandem resize grows a running resource); for a new disk run tandem create-md %s --node %s, then tandem up %s", name, md.ErrNoMetadata, r.cfg.Size, r.rp.Device, name, d.node.Name, name)
	case errors.Is(err, md.ErrNoMetadata):
		return fmt.Errorf("resource %s: %w: run tandem create-md %s --node %s, then tandem up %s", name, md.ErrNoMetadata, name, d.node.Name, name)
	case errors.Is(err, md.ErrCorrupt), errors.Is(err, md.ErrVersion):
		return fmt.Errorf("resource %s: metadata unusable, resource kept down (nothing was changed; inspect it with tandem dump-md %s): %w", name, name, err)
	case err != nil:
		return fmt.Errorf("resource %s: reading metadata: %w", name, err)
	}
	sb := info.Superblock
	if err := foreign(sb, d.cfg.Cluster, r.cfg, d.node.Name, r.peer.Node); err != nil {
		return fmt.Errorf("resource %s: %w: wrong device or meta path? (tandem create-md --force rewrites it, losing its state)", name, err)
	}
	if sb.DataSize != r.cfg.Size {
		return fmt.Errorf("resource %s: the metadata is for %d bytes of data, the configuration says size %d: set size back to %d (tandem resize grows a running resource, both nodes at once)", name, sb.DataSize, r.cfg.Size, sb.DataSize)
	}
	return nil
}

func (d *Daemon) volumeConfig(r *resource, s *Storage, log *slog.Logger) (replicate.Config, error) {
	c := replicate.Config{
		Cluster:       d.cfg.Cluster,
		Resource:      r.cfg.Name,
		Node:          d.node.Name,
		Peer:          r.peer.Node,
		Secret:        d.secret,
		AcceptSecrets: d.acceptSecrets,
		Listen:        r.rp.Address,
		PeerAddress:   r.peer.Address,
		Data:          s.Data,
		Meta:          s.Meta,
		Logger:        log,
	}
	d.cfgMu.RLock()
	t := tunables(r.cfg, d.cfg.Timing) // adjust.go
	d.cfgMu.RUnlock()
	c.Resync, c.SplitBrain = t.Resync, t.SplitBrain
	c.PingInterval, c.PingTimeout, c.AckTimeout = t.Timing.PingInterval, t.Timing.PingTimeout, t.Timing.AckTimeout
	if d.cfg.ClusterLayer() {
		c.OnDegraded = d.degradedHook(r.cfg.Name)
	}
	c.Grow = d.growHook(r) // resize.go
	ls, sum, err := d.linkFor(r.cfg, r.peer.Node)
	if err != nil {
		return c, err
	}
	c.Protocol, c.Compression, c.TLS = ls.Protocol, ls.Compression, ls.TLS
	d.cfgMu.Lock()
	r.link, r.tlsSum = ls, sum
	d.cfgMu.Unlock()
	return c, nil
}

// startNBD starts one NBD server per distinct nbd-listen of this node,
// with an export per resource on it.
func (d *Daemon) startNBD() error {
	var addrs []string
	for _, r := range d.resourceList() {
		if !slices.Contains(addrs, r.rp.NBDListen) {
			addrs = append(addrs, r.rp.NBDListen)
		}
	}
	for _, addr := range addrs {
		var exports []nbd.Export
		for _, r := range d.resourceList() {
			if r.rp.NBDListen == addr {
				exports = append(exports, d.export(r)) // addremove.go
			}
		}
		l, err := listenNBD(addr)
		if err != nil {
			return fmt.Errorf("daemon: nbd: listening on %s: %w", addr, err)
		}
		if err := d.serveNBD(addr, l, exports); err != nil {
			return err
		}
	}
	return nil
}

// serveNBD serves exports on l, which it owns from then on.
func (d *Daemon) serveNBD(addr string, l net.Listener, exports []nbd.Export) error {
	srv, err := nbd.NewServer(nbd.Options{Logger: d.log.With("nbd_listen", addr), Exports: exports})
	if err != nil {
		l.Close()
		return fmt.Errorf("daemon: nbd %s: %w", addr, err)
	}
	s := &nbdServer{addr: addr, srv: srv, l: l, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(l) }()
	d.srvMu.Lock()
	d.servers = append(d.servers, s)
	d.srvMu.Unlock()
	return nil
}

// stopServer stops an NBD server whose last export was removed.
func (d *Daemon) stopServer(ctx context.Context, s *nbdServer) {
	d.srvMu.Lock()
	d.servers = slices.DeleteFunc(d.servers, func(x *nbdServer) bool { return x == s })
	d.srvMu.Unlock()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	<-s.done
	d.log.Info("nbd server stopped: no export left on it", "addr", s.addr)
}

// reconcileLoop keeps each gate's primary bit equal to the volume's role,
// in case the volume changes role on its own.
func (d *Daemon) reconcileLoop() {
	defer d.bg.Done()
	t := time.NewTicker(d.opts.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-d.opCtx.Done():
			return
		case <-t.C:
		}
		for _, r := range d.resourceList() {
			r.roleMu.Lock()
			v := r.volume()
			if v == nil {
				r.roleMu.Unlock()
				continue
			}
			p := v.Status().Role == replicate.Primary
			if r.gate.primary.Swap(p) != p {
				d.log.Warn("nbd export follows a role change", "resource", r.cfg.Name, "primary", p)
			}
			r.roleMu.Unlock()
		}
	}
}

// Run starts the daemon, waits for ctx (SIGTERM, SIGINT) and shuts down.
// ready, if not nil, runs once everything is up.
func (d *Daemon) Run(ctx context.Context, ready func() error) error {
	// SIGHUP: re-read the configuration file (adjust.go), as systemd's
	// ExecReload=kill -HUP $MAINPID does. Caught from before the start,
	// so that one sent once the daemon is ready never kills it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := d.Start(ctx); err != nil {
		return err
	}
	if ready != nil {
		if err := ready(); err != nil {
			d.Shutdown(context.Background())
			return err
		}
	}
	for {
		select {
		case <-hup:
			d.AdjustOnSignal()
			continue
		case <-ctx.Done():
		}
		break
	}
	d.log.Info("signal received, shutting down", "timeout", d.opts.ShutdownTimeout)
	return d.Shutdown(context.Background())
}

// Shutdown stops the NBD servers (finishing requests in flight), closes
// every volume (flush, metadata clean), then the admin API, and removes
// the socket. It is bounded by the shutdown timeout.
func (d *Daemon) Shutdown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.opts.ShutdownTimeout)
	defer cancel()
	d.shutdown(ctx)
	if d.stopErr == nil {
		d.log.Info("stopped")
	}
	return d.stopErr
}

func (d *Daemon) shutdown(ctx context.Context) {
	d.stopOnce.Do(func() {
		d.mu.Lock()
		d.stopping = true
		d.mu.Unlock()
		d.events.publish(Event{Kind: KindDaemon, Text: "daemon stopping"})
		if d.opCancel != nil {
			d.opCancel()
		}
		var errs []error
		if cl := d.cl.Load(); cl != nil {
			// First: a node going away hands its resources over (within
			// half the shutdown timeout), stops deciding and says so to
			// the others, before its volumes close under the manager.
			hctx, hcancel := context.WithTimeout(ctx, d.opts.ShutdownTimeout/2)
			cl.handOver(hctx, d.log.With("layer", "cluster"))
			hcancel()
			d.cl.Store(nil)
			if err := cl.close(); err != nil {
				d.log.Warn("cluster layer: stopping", "err", err)
			}
		}
		d.srvMu.Lock()
		servers := slices.Clone(d.servers)
		d.srvMu.Unlock()
		for _, s := range servers {
			if err := s.srv.Shutdown(ctx); err != nil {
				d.log.Warn("nbd: graceful shutdown incomplete, closing", "addr", s.addr, "err", err)
				s.srv.Close()
				errs = append(errs, fmt.Errorf("nbd %s: %w", s.addr, err))
			}
			select {
			case <-s.done:
			case <-ctx.Done():
			}
		}
		d.bg.Wait()
		for _, r := range d.resourceList() {
			// Under roleMu: an up still running finishes first, and one
			// that comes after sees the daemon stopping.
			r.roleMu.Lock()
			if err := d.closeResource(ctx, r, ErrShuttingDown); err != nil {
				errs = append(errs, err)
			}
			r.roleMu.Unlock()
		}
		// Last: what was published until now (daemon stopping, the
		// admin requests) is passed on, within the shutdown's time.
		d.stopAlerts(ctx)
		if d.http != nil {
			if err := d.http.Shutdown(ctx); err != nil {
				d.http.Close()
			}
			<-d.httpDone
		}
		if d.metrics != nil {
			d.metrics.stop(ctx)
		}
		if d.admin != nil {
			d.admin.Close()
		}
		if err := d.audit.close(); err != nil {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			d.stopErr = fmt.Errorf("daemon: shutdown: %w", errors.Join(errs...))
		}
	})
}
