package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Failure-detector tuning (docs/testbed: about 0.4 s from a SIGKILL to the
// survivors' Dead, against 5 s with memberlist's LAN defaults). The machine's
// Margin (1 s) covers the spread of this delay between two observers.
const (
	DefaultProbeInterval  = 100 * time.Millisecond
	DefaultProbeTimeout   = 50 * time.Millisecond
	DefaultSuspicionMult  = 2
	DefaultGossipInterval = 50 * time.Millisecond
)

// MaxMetaSize is the most node metadata memberlist carries (it panics on
// more); larger state goes in user messages.
const MaxMetaSize = memberlist.MetaMaxSize

// ErrMetaTooLarge: SetMeta with more than MaxMetaSize bytes.
var ErrMetaTooLarge = errors.New("cluster: node metadata larger than memberlist carries")

// MembershipConfig configures the failure detector of one node.
type MembershipConfig struct {
	Node string
	// Voters are the names whose changes are reported; other members are
	// logged and ignored (a stranger with the right key is still not a
	// voter).
	Voters   []string
	BindAddr string // IP to listen on (UDP and TCP)
	BindPort int    // 0: a free port (tests); see Addr
	// AdvertiseAddr/Port, when the address others reach differs.
	AdvertiseAddr string
	AdvertisePort int
	// Keys encrypt and authenticate all gossip (AES-GCM, 16, 24 or 32
	// bytes each); the first encrypts, all decrypt, so keys can be
	// rotated. At least one is required: gossip carries roles.
	Keys [][]byte

	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	SuspicionMult  int
	GossipInterval time.Duration

	Logger *slog.Logger
	Now    func() time.Time // nil: time.Now
}

// Membership is memberlist turned into the machine's MemberChange events:
// Alive when a voter joins or comes back, Dead when memberlist declares it
// dead or it leaves. memberlist's indirect probes (through the witness)
// keep a cut link between the data nodes from looking like a death.
// Suspect is not reported: a voter counts as Alive until declared dead.
type Membership struct {
	cfg MembershipConfig
	ml  *memberlist.Memberlist
	log *slog.Logger

	events *queue[MemberChange]

	mu     sync.Mutex
	meta   []byte
	metas  map[string][]byte
	states map[string]MemberState
	closed bool
}

// NewMembership starts the failure detector (not yet joined to anyone).
func NewMembership(cfg MembershipConfig) (*Membership, error) {
	if cfg.Node == "" || !slices.Contains(cfg.Voters, cfg.Node) {
		return nil, fmt.Errorf("cluster: membership: node %q is not one of the voters %v: %w", cfg.Node, cfg.Voters, ErrConfig)
	}
	if len(cfg.Keys) == 0 {
		return nil, fmt.Errorf("cluster: membership: no gossip key: %w", ErrConfig)
	}
	for i, k := range cfg.Keys {
		if n := len(k); n != 16 && n != 24 && n != 32 {
			return nil, fmt.Errorf("cluster: membership: gossip key %d is %d bytes, want 16, 24 or 32: %w", i, n, ErrConfig)
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	keyring, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
	if err != nil {
		return nil, fmt.Errorf("cluster: membership: keyring: %w", err)
	}
	m := &Membership{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "membership"),
		states: map[string]MemberState{},
		metas:  map[string][]byte{},
		events: newQueue[MemberChange](),
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Node
	mc.BindAddr, mc.BindPort = cfg.BindAddr, cfg.BindPort
	mc.AdvertiseAddr, mc.AdvertisePort = cfg.AdvertiseAddr, cfg.AdvertisePort
	mc.Keyring = keyring
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	mc.ProbeInterval = orDuration(cfg.ProbeInterval, DefaultProbeInterval)
	mc.ProbeTimeout = orDuration(cfg.ProbeTimeout, DefaultProbeTimeout)
	mc.GossipInterval = orDuration(cfg.GossipInterval, DefaultGossipInterval)
	mc.SuspicionMult = cfg.SuspicionMult
	if mc.SuspicionMult == 0 {
		mc.SuspicionMult = DefaultSuspicionMult
	}
	mc.Delegate = (*mlDelegate)(m)
	mc.Events = (*mlEvents)(m)
	mc.Logger = slog.NewLogLogger(m.log.Handler(), slog.LevelDebug)
	ml, err := memberlist.Create(mc)
	if err != nil {
		m.events.close()
		return nil, fmt.Errorf("cluster: membership: starting memberlist on %s: %w", net.JoinHostPort(cfg.BindAddr, strconv.Itoa(cfg.BindPort)), err)
	}
	m.ml = ml
	return m, nil
}

func orDuration(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Addr is the address this node gossips on (host:port), for the others'
// Join.
func (m *Membership) Addr() string {
	n := m.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// Join contacts the given members (host:port); it succeeds if any answers.
func (m *Membership) Join(peers []string) (int, error) {
	n, err := m.ml.Join(peers)
	if err != nil {
		return n, fmt.Errorf("cluster: membership: joining %v: %w", peers, err)
	}
	return n, nil
}

// Events delivers every state change of a voter, in order; nothing is
// dropped (the queue is unbounded, so memberlist never waits on a slow
// reader). Closed by Close.
func (m *Membership) Events() <-chan MemberChange { return m.events.out }

// State is what the failure detector last said of a voter: Alive, Suspect
// or Dead, "" if it never said anything (and for this node).
func (m *Membership) State(node string) MemberState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.states[node]
}

// SetMeta sets this node's metadata (roles, disk states, config hash...)
// and gossips it.
func (m *Membership) SetMeta(b []byte) error {
	if len(b) > MaxMetaSize {
		return fmt.Errorf("cluster: membership: %d bytes: %w (at most %d)", len(b), ErrMetaTooLarge, MaxMetaSize)
	}
	m.mu.Lock()
	m.meta = slices.Clone(b)
	m.mu.Unlock()
	if err := m.ml.UpdateNode(time.Second); err != nil {
		return fmt.Errorf("cluster: membership: gossiping metadata: %w", err)
	}
	return nil
}

// Meta returns what a live member last gossiped as its metadata (nil if
// not a live member).
func (m *Membership) Meta(node string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.metas[node])
}

// setMeta keeps a copy of a member's metadata: memberlist's own Node values
// change under its lock, so they are read only inside its callbacks.
func (m *Membership) setMeta(n *memberlist.Node, alive bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if alive {
		m.metas[n.Name] = slices.Clone(n.Meta)
	} else {
		delete(m.metas, n.Name)
	}
}

// Leave tells the others this node leaves (they see it Dead at once), then
// stops.
func (m *Membership) Leave(timeout time.Duration) error {
	err := m.ml.Leave(timeout)
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cluster: membership: leave: %w", err)
	}
	return nil
}

// Close stops gossiping without a goodbye (the others see a crash) and
// closes Events.
func (m *Membership) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	err := m.ml.Shutdown()
	m.events.close()
	if err != nil {
		return fmt.Errorf("cluster: membership: shutdown: %w", err)
	}
	return nil
}

func (m *Membership) report(name string, st MemberState) {
	if name == m.cfg.Node {
		return
	}
	if !slices.Contains(m.cfg.Voters, name) {
		m.log.Warn("member is not a voter; ignored", "member", name, "state", st)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.states[name] == st {
		return
	}
	m.states[name] = st
	m.events.push(MemberChange{At: m.cfg.Now(), Node: name, State: st})
}

// mlEvents adapts memberlist's join/leave callbacks.
type mlEvents Membership

func (e *mlEvents) NotifyJoin(n *memberlist.Node) {
	(*Membership)(e).setMeta(n, true)
	(*Membership)(e).report(n.Name, MemberAlive)
}

func (e *mlEvents) NotifyLeave(n *memberlist.Node) {
	(*Membership)(e).setMeta(n, false)
	(*Membership)(e).report(n.Name, MemberDead)
}

func (e *mlEvents) NotifyUpdate(n *memberlist.Node) { (*Membership)(e).setMeta(n, true) }

// mlDelegate hands memberlist this node's metadata; the rest of its
// delegate (user messages, push/pull state) is unused.
type mlDelegate Membership

func (d *mlDelegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.meta) > limit {
		return nil // SetMeta refuses this; never hand memberlist more than it takes
	}
	return slices.Clone(d.meta)
}
func (d *mlDelegate) NotifyMsg([]byte)                           {}
func (d *mlDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *mlDelegate) LocalState(join bool) []byte                { return nil }
func (d *mlDelegate) MergeRemoteState(buf []byte, join bool)     {}
