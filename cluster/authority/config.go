package authority

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/tandem-ha/tandem/cluster"
)

// Voter is one member of the fixed voter set: a data node or the witness.
type Voter struct {
	// Name is the node's name (its raft server ID).
	Name string
	// Addr is host:port of its authority port, as the other voters dial it.
	Addr string
}

// Timeouts tune raft. The defaults (DefaultTimeouts) elect a new leader
// among three voters on a LAN in well under a second after the old one
// dies: a follower waits one to two HeartbeatTimeouts without hearing from
// the leader, then one to two ElectionTimeouts for votes.
type Timeouts struct {
	// Heartbeat: how long a follower goes without hearing from the leader
	// before it stands for election (raft adds up to as much again at
	// random). The leader sends heartbeats at a tenth of it.
	Heartbeat time.Duration
	// Election: how long a candidate waits for votes before trying again.
	Election time.Duration
	// LeaderLease: how long a leader goes without hearing from a majority
	// before it steps down; at most Heartbeat.
	LeaderLease time.Duration
	// Commit: how long the leader waits to batch entries before sending.
	Commit time.Duration
}

// DefaultTimeouts are used for the zero Timeouts.
var DefaultTimeouts = Timeouts{
	Heartbeat:   200 * time.Millisecond,
	Election:    200 * time.Millisecond,
	LeaderLease: 150 * time.Millisecond,
	Commit:      10 * time.Millisecond,
}

// Config is one voter's view of the authority store. Voters must be the
// same on every node.
type Config struct {
	// Node is this node's name; it must be one of Voters.
	Node string
	// Voters is the fixed voter set (two data nodes and the witness).
	// Membership changes are not supported: a node that restarts with a
	// different set is refused.
	Voters []Voter
	// Listener, if set, is the already bound authority port (tests; socket
	// activation); Open takes it over, and closes it if it fails.
	// Otherwise Open listens on Bind.
	Listener net.Listener
	// Bind is the address to listen on; "" means this node's Voter.Addr.
	Bind string
	// Dir holds the raft log and stable store (raft.db) and snapshots;
	// created if missing.
	Dir string
	// Secret is the cluster's shared secret: every connection to the
	// authority port proves it holds it.
	Secret []byte
	// AcceptSecrets are further secrets a peer may prove instead, while
	// the cluster rotates its secret: this node proves Secret only.
	AcceptSecrets [][]byte
	// TLS, if set, wraps every connection of the authority port in TLS
	// (the secret's challenge then runs inside it), for both ends: it needs
	// this node's certificate, RootCAs to verify the others' and, for the
	// server side, ClientCAs with ClientAuth RequireAndVerifyClientCert. A
	// dial verifies the peer's certificate for the host of its Voter.Addr
	// unless ServerName is set. nil: plain TCP, authenticated but neither
	// encrypted nor integrity-protected.
	TLS *tls.Config
	// Logger receives raft's log too; nil discards.
	Logger *slog.Logger
	// Now stamps Committed events; nil is time.Now.
	Now func() time.Time
	// OnCommit, if set, receives every applied entry in log order, from
	// raft's FSM goroutine (and a Committed without a command after a
	// snapshot restore). It must not block for long: a blocked OnCommit
	// stalls this node's applies, and with them its proposals.
	OnCommit func(cluster.Committed)
	// OnStatus, if set, is called when the leader or this node's raft state
	// changes.
	OnStatus func(Status)
	Timeouts Timeouts
	// PreferredLeaders are the voters that should lead when the leader
	// cannot reach every voter: the witness, which sits between the data
	// nodes. A leader that has not reached a voter for handoffAfter,
	// while that voter is alive (Alive), hands its leadership to a voter
	// it still reaches: one of these if it is not among them itself, the
	// others too if it is. Raft alone would keep it: when the link
	// between the data nodes is cut and one of them leads (or the link
	// between the witness and a data node while the witness leads), the
	// cut-off node hears no leader and can commit nothing (its pre-votes
	// are refused by a voter that hears the leader), although it may be
	// the primary that must mark its peer Outdated before it writes on.
	PreferredLeaders []string
	// Alive, if set, tells whether the failure detector holds a voter
	// alive (reached directly or through the others): a leader hands over
	// only for a voter it is cut off from, not for one that died. nil:
	// every voter counts as alive.
	Alive func(node string) bool
	// dial, if set, replaces the TCP dial of the authority port (tests cut
	// links with it).
	dial func(address string, timeout time.Duration) (net.Conn, error)
	// SnapshotThreshold: entries since the last snapshot before raft takes
	// another (0: raft's 8192); TrailingLogs: entries kept behind a
	// snapshot for a follower that lags (0: raft's 10240). Raft also looks
	// every two minutes.
	SnapshotThreshold uint64
	TrailingLogs      uint64
}

// ErrConfig: the configuration is unusable; nothing was opened.
var ErrConfig = errors.New("authority: bad configuration")

func (c *Config) check() error {
	if c.Node == "" {
		return fmt.Errorf("authority: no node name: %w", ErrConfig)
	}
	if len(c.Voters) == 0 {
		return fmt.Errorf("authority: no voters: %w", ErrConfig)
	}
	names, addrs := map[string]bool{}, map[string]bool{}
	self := false
	for _, v := range c.Voters {
		if v.Name == "" || v.Addr == "" {
			return fmt.Errorf("authority: voter %q at %q: needs a name and an address: %w", v.Name, v.Addr, ErrConfig)
		}
		if _, _, err := net.SplitHostPort(v.Addr); err != nil {
			return fmt.Errorf("authority: voter %s: address %q: %v: %w", v.Name, v.Addr, err, ErrConfig)
		}
		if names[v.Name] || addrs[v.Addr] {
			return fmt.Errorf("authority: voter %s at %s: name or address given twice: %w", v.Name, v.Addr, ErrConfig)
		}
		names[v.Name], addrs[v.Addr] = true, true
		self = self || v.Name == c.Node
	}
	if !self {
		return fmt.Errorf("authority: node %s is not one of the voters: %w", c.Node, ErrConfig)
	}
	if c.Dir == "" {
		return fmt.Errorf("authority: no data directory: %w", ErrConfig)
	}
	if len(c.Secret) == 0 {
		return fmt.Errorf("authority: no cluster secret (the authority port is authenticated with it): %w", ErrConfig)
	}
	if c.TLS != nil && len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil {
		return fmt.Errorf("authority: TLS without a certificate for this node: %w", ErrConfig)
	}
	if t := c.Timeouts; t.Heartbeat < 0 || t.Election < 0 || t.LeaderLease < 0 || t.Commit < 0 {
		return fmt.Errorf("authority: negative timeout: %w", ErrConfig)
	}
	// What raft.ValidateConfig would refuse, said in our terms.
	t := c.timeouts()
	switch {
	case t.Heartbeat < 5*time.Millisecond || t.Election < 5*time.Millisecond || t.LeaderLease < 5*time.Millisecond || t.Commit < time.Millisecond:
		return fmt.Errorf("authority: timeouts %+v: heartbeat, election and leader lease need at least 5ms, commit 1ms: %w", t, ErrConfig)
	case t.Election < t.Heartbeat:
		return fmt.Errorf("authority: election timeout %v is shorter than the heartbeat timeout %v: %w", t.Election, t.Heartbeat, ErrConfig)
	case t.LeaderLease > t.Heartbeat:
		return fmt.Errorf("authority: leader lease %v is longer than the heartbeat timeout %v: %w", t.LeaderLease, t.Heartbeat, ErrConfig)
	}
	return nil
}

func (c *Config) voter(name string) (Voter, bool) {
	for _, v := range c.Voters {
		if v.Name == name {
			return v, true
		}
	}
	return Voter{}, false
}

func (c *Config) timeouts() Timeouts {
	t, d := c.Timeouts, DefaultTimeouts
	if t.Heartbeat == 0 {
		t.Heartbeat = d.Heartbeat
	}
	if t.Election == 0 {
		t.Election = d.Election
	}
	if t.LeaderLease == 0 {
		t.LeaderLease = min(d.LeaderLease, t.Heartbeat)
	}
	if t.Commit == 0 {
		t.Commit = d.Commit
	}
	return t
}
