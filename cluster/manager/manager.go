package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/cluster"
)

// Defaults of Config's timeouts.
const (
	// DefaultActionTimeout bounds one volume, gate or VIP action (a Demote
	// flushes both replicas).
	DefaultActionTimeout = 30 * time.Second
	// DefaultFenceTimeout bounds one fencing round through every level.
	DefaultFenceTimeout = 2 * time.Minute
)

// Resource is one local replica as the manager drives it.
type Resource struct {
	Volume Volume
	Gate   Gate
}

// Config wires a manager.
type Config struct {
	// Machine is the state machine's configuration (this node, the voters,
	// the resources and the timing).
	Machine cluster.Config
	// Resources are the local replicas by resource name; every resource of
	// Machine that has a replica on this node needs one.
	Resources map[string]Resource
	// Log is the authority log.
	Log Log
	// Members delivers the failure detector's changes (Membership.Events);
	// nil for none (tests feed MemberChange through Inject).
	Members <-chan cluster.MemberChange
	// Fencer returns the fencer of a node (an error when it has none
	// configured: the fence fails, is alerted and retried).
	Fencer func(node string) (Fencer, error)
	// VIPs may be nil: no resource has a service address.
	VIPs VIPs
	// OnAlert, if set, also receives every alert (they are logged at
	// error level in any case).
	OnAlert func(cluster.Alert)
	// Hooks watch the manager's inputs and actions (hooks.go).
	Hooks Hooks

	Clock         Clock // nil: RealClock
	ActionTimeout time.Duration
	FenceTimeout  time.Duration
	Logger        *slog.Logger
}

// Errors callers branch on.
var (
	// ErrStopped: the manager is not running (stopped, or never started).
	ErrStopped = errors.New("manager: stopped")
	// ErrConfig: the configuration is unusable.
	ErrConfig = errors.New("manager: bad configuration")
)

// Manager runs one node's machine. Its methods are safe for concurrent use;
// the machine itself is touched only by Run's goroutine.
type Manager struct {
	cfg     Config
	clock   Clock
	log     *slog.Logger
	machine *cluster.Machine
	in      *inbox
	done    chan struct{} // closed when Run returns
	running atomic.Bool

	// Loop-owned state.
	vols      map[string]cluster.VolumeState
	volKnown  map[string]bool
	fenceFrom map[string]time.Time // node -> when the need to fence it arose
	deadAt    map[string]time.Time // node -> when it was last declared dead
	// fenceCancel cancels the latest fencing of a node (loop goroutine only).
	fenceCancel map[string]context.CancelFunc
	record      *cluster.Record
	tl          map[string]*timeline       // resource -> failover in progress
	retry       map[string]cluster.Promote // promotions the volume refused for now
	workers     sync.WaitGroup
	workCtx     context.Context
	cancel      context.CancelFunc

	mu       sync.Mutex
	status   cluster.Status
	last     map[string]*Failover // resource -> last completed failover
	admin    map[string]chan cluster.AdminReply
	degraded map[string][]chan error
	seq      uint64
	boot     string
	// res and mres: the local replicas and the machine's resources
	// (resources.go); adding holds the replicas AddResource gave until
	// the loop takes them over. Guarded by mu.
	res    atomic.Pointer[map[string]Resource]
	mres   atomic.Pointer[[]cluster.ResourceConfig]
	adding map[string]Resource
}

// New checks cfg; nothing runs until Run.
func New(cfg Config) (*Manager, error) {
	if cfg.Log == nil || cfg.Fencer == nil {
		return nil, fmt.Errorf("%w: Log and Fencer are required", ErrConfig)
	}
	if cfg.Clock == nil {
		cfg.Clock = RealClock
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ActionTimeout <= 0 {
		cfg.ActionTimeout = DefaultActionTimeout
	}
	if cfg.FenceTimeout <= 0 {
		cfg.FenceTimeout = DefaultFenceTimeout
	}
	mc := cfg.Machine
	if mc.TickInterval == 0 {
		mc.TickInterval = cluster.DefaultTickInterval
	}
	if mc.Boot == "" {
		mc.Boot = strconv.FormatInt(cfg.Clock.Now().UnixNano(), 36)
	}
	cfg.Machine = mc
	for _, rc := range mc.Resources {
		if !slices.Contains(rc.Replicas[:], mc.Node) {
			continue
		}
		r, ok := cfg.Resources[rc.Name]
		if !ok || r.Volume == nil || r.Gate == nil {
			return nil, fmt.Errorf("%w: resource %s has a replica on %s but no volume and gate", ErrConfig, rc.Name, mc.Node)
		}
	}
	m, err := cluster.NewMachine(mc)
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	mgr := &Manager{
		cfg: cfg, clock: cfg.Clock, machine: m, in: newInbox(), done: make(chan struct{}),
		log:      cfg.Logger.With("component", "manager", "node", mc.Node),
		vols:     map[string]cluster.VolumeState{},
		volKnown: map[string]bool{}, fenceFrom: map[string]time.Time{}, deadAt: map[string]time.Time{}, fenceCancel: map[string]context.CancelFunc{},
		record: cluster.NewRecord(), tl: map[string]*timeline{}, retry: map[string]cluster.Promote{},
		last: map[string]*Failover{}, admin: map[string]chan cluster.AdminReply{},
		degraded: map[string][]chan error{}, boot: mc.Boot, adding: map[string]Resource{},
	}
	res, mres := maps.Clone(cfg.Resources), slices.Clone(mc.Resources)
	mgr.res.Store(&res)
	mgr.mres.Store(&mres)
	return mgr, nil
}

// Commit takes one applied log entry (the authority's OnCommit). It never
// blocks.
func (m *Manager) Commit(e cluster.Committed) { m.in.push(e) }

// Inject queues any event for the machine (membership changes in tests, a
// VIP result from outside).
func (m *Manager) Inject(ev cluster.Event) { m.in.push(ev) }

// DegradedHook returns the function for the volume's Config.OnDegraded: it
// asks the machine, which marks the peer Outdated in the authority record
// before it answers, and returns nil once the write may be acknowledged.
// It waits until the answer or ctx.
func (m *Manager) DegradedHook(resource string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		ch := make(chan error, 1)
		m.mu.Lock()
		m.degraded[resource] = append(m.degraded[resource], ch)
		m.mu.Unlock()
		// Read now, after the write found the peer gone: no session can
		// be set up while it waits here (setup excludes writes).
		var session uint64
		if r, ok := m.locals()[resource]; ok {
			session = r.Volume.Status().Session
		}
		m.in.push(cluster.DegradedRequest{At: m.clock.Now(), Resource: resource, Session: session})
		select {
		case err := <-ch:
			return err
		case <-ctx.Done():
			return fmt.Errorf("manager: %s: waiting for the peer to be marked Outdated: %w", resource, ctx.Err())
		case <-m.done:
			return fmt.Errorf("manager: %s: degraded write: %w", resource, ErrStopped)
		}
	}
}

// Admin runs an admin command through the machine and waits for its reply
// (or ctx). ID is filled in.
func (m *Manager) Admin(ctx context.Context, req cluster.AdminRequest) (string, error) {
	if !m.running.Load() {
		return "", ErrStopped
	}
	ch := make(chan cluster.AdminReply, 1)
	m.mu.Lock()
	m.seq++
	req.ID = fmt.Sprintf("admin-%s-%d", m.boot, m.seq)
	m.admin[req.ID] = ch
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.admin, req.ID)
		m.mu.Unlock()
	}()
	req.At = m.clock.Now()
	m.in.push(req)
	select {
	case r := <-ch:
		return r.Text, r.Err
	case <-ctx.Done():
		return "", fmt.Errorf("manager: %s: %w (it may still take effect)", req.Op, ctx.Err())
	case <-m.done:
		return "", ErrStopped
	}
}

// Status is the manager's view for `tandem status`.
type Status struct {
	cluster.Status
	// Record is the latest committed authority record.
	Record *cluster.Record `json:"record"`
	// LastFailover by resource: the last promotion of this node, step by
	// step.
	LastFailover map[string]*Failover `json:"last_failover,omitempty"`
}

// Status returns a snapshot.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Status{Status: m.status, Record: m.status.Record, LastFailover: map[string]*Failover{}}
	for k, v := range m.last {
		c := *v
		c.Steps = slices.Clone(v.Steps)
		s.LastFailover[k] = &c
	}
	return s
}

// Run is the loop; it returns when ctx ends (after the goroutines it
// started have ended). Call it once.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return fmt.Errorf("manager: Run called twice")
	}
	defer close(m.done)
	m.workCtx, m.cancel = context.WithCancel(ctx)
	defer m.workers.Wait()
	defer m.cancel()
	ticks, stop := m.clock.Ticks(m.cfg.Machine.TickInterval)
	defer stop()
	members := m.cfg.Members
	m.step(cluster.Tick{At: m.clock.Now()})
	for {
		select {
		case <-ctx.Done():
			m.log.Info("manager stopped")
			return nil
		case ev, ok := <-members:
			if !ok {
				members = nil
				continue
			}
			m.step(ev)
		case <-m.in.wake:
			for _, ev := range m.in.take() {
				m.step(ev)
			}
		case <-ticks:
			m.step(cluster.Tick{At: m.clock.Now()})
		}
	}
}

// maxRounds bounds the volume reports fed back after one event: each round
// reports only volumes whose state changed, which settles at once in
// practice.
const maxRounds = 4

// step feeds one event, carries out the actions, then reports volumes
// whose state the actions changed.
func (m *Manager) step(ev cluster.Event) {
	m.cfg.Hooks.event(ev)
	m.observe(ev)
	m.changeResources(ev, false) // resources.go
	m.execute(m.machine.Step(ev))
	m.changeResources(ev, true)
	if _, tick := ev.(cluster.Tick); tick {
		m.retryPromotions()
	}
	for range maxRounds {
		reps := m.pollVolumes()
		if len(reps) == 0 {
			break
		}
		for _, r := range reps {
			m.execute(m.machine.Step(r))
		}
	}
	st := m.machine.Status()
	m.renewLeases(st)
	m.mu.Lock()
	m.status = st
	m.mu.Unlock()
	m.cfg.Hooks.status(st)
}

// renewLeases hands each gate that enforces leases the machine's lease for
// its resource: the deadline while primary, the zero time otherwise.
func (m *Manager) renewLeases(st cluster.Status) {
	for name, r := range m.locals() {
		lg, ok := r.Gate.(LeaseGate)
		if !ok {
			continue
		}
		var until time.Time
		for _, rs := range st.Resources {
			if rs.Resource == name && rs.Primary {
				until = rs.LeaseUntil
			}
		}
		lg.SetLease(until)
	}
}

// pollVolumes reads each local volume and returns a report for those that
// changed since the last.
func (m *Manager) pollVolumes() []cluster.Event {
	var out []cluster.Event
	for _, name := range slices.Sorted(mapsKeys(m.locals())) {
		st := volumeState(m.locals()[name].Volume.Status())
		if m.volKnown[name] && m.vols[name] == st {
			continue
		}
		m.vols[name], m.volKnown[name] = st, true
		out = append(out, cluster.VolumeReport{At: m.clock.Now(), Resource: name, State: st})
	}
	return out
}

// retryPromotions tries again the promotions the volume refused for now,
// while the machine still holds the resource as primary at that epoch; a
// success opens the gate and completes the failover (its VIP was claimed
// already).
func (m *Manager) retryPromotions() {
	if len(m.retry) == 0 {
		return
	}
	st := m.machine.Status()
	for _, name := range slices.Sorted(mapsKeys(m.retry)) {
		a := m.retry[name]
		still := slices.ContainsFunc(st.Resources, func(r cluster.ResourceStatus) bool {
			return r.Resource == name && r.Primary && r.Epoch == a.Epoch
		})
		if !still {
			delete(m.retry, name)
			continue
		}
		m.promote(a)
		if _, failed := m.retry[name]; !failed {
			m.noteServe(name)
		}
	}
}
