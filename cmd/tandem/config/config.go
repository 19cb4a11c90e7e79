// Package config reads and checks tandem's cluster configuration: one YAML
// file, identical on every node, that names the cluster, its shared secret,
// the nodes and the replicated resources (docs/configuration.md documents
// every key).
//
// The reading is strict on purpose: a typo in a key or a resource placed on a
// disk that another one already uses must stop the daemon with the file, the
// line and the fix, rather than start a replica on the wrong device.
package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/tandem-ha/tandem/replicate/md"
)

// DefaultPath is where the daemon and the CLI look for the file without --config.
const DefaultPath = "/etc/tandem/tandem.yaml"

// Defaults of the optional keys; docs/configuration.md lists the same values.
const (
	DefaultNBDPort           = 10809
	DefaultProtocol          = ProtocolC
	DefaultCompression       = CompressionOff
	DefaultBitmapGranularity = md.DefaultGranularity
	DefaultALExtents         = md.DefaultMaxHotExtents
	DefaultResyncMaxRate     = 100 << 20 // bytes per second
	DefaultResyncAppShare    = 0.5
	DefaultSplitBrain        = SplitBrainDisconnect
	DefaultOnNoQuorum        = OnNoQuorumSuspendIO
	DefaultFailback          = FailbackManual
	DefaultMeta              = MetaInternal
)

// MetaInternal as a replica's meta puts the metadata at the end of its device.
const MetaInternal = "internal"

// Protocol is the replication protocol, with DRBD's meanings: a write is
// acknowledged after the local write and, for A, the send to the peer; for B,
// the peer's receipt; for C, the peer's write.
type Protocol string

const (
	ProtocolA Protocol = "A"
	ProtocolB Protocol = "B"
	ProtocolC Protocol = "C"
)

// Compression of the replication payload, negotiated per resource.
type Compression string

const (
	CompressionOff  Compression = "off"
	CompressionS2   Compression = "s2"
	CompressionZstd Compression = "zstd"
)

// SplitBrain is what to do when both replicas wrote since their last common
// generation. Only disconnect is always safe; the others discard data.
type SplitBrain string

const (
	SplitBrainDisconnect            SplitBrain = "disconnect"
	SplitBrainDiscardZeroChanges    SplitBrain = "discard-zero-changes"
	SplitBrainDiscardYoungerPrimary SplitBrain = "discard-younger-primary"
	SplitBrainDiscardOlderPrimary   SplitBrain = "discard-older-primary"
	SplitBrainDiscardLeastChanges   SplitBrain = "discard-least-changes"
	// SplitBrainDiscardNodePrefix + a node name: that node's data goes
	// (DRBD's discard-node-NODENAME), whatever either side did.
	SplitBrainDiscardNodePrefix = "discard-node-"
)

// DiscardNode is the node a discard-node-NAME policy names.
func (s SplitBrain) DiscardNode() (string, bool) {
	return strings.CutPrefix(string(s), SplitBrainDiscardNodePrefix)
}

// OnNoQuorum is what a primary does with I/O once it has lost quorum.
type OnNoQuorum string

const (
	OnNoQuorumSuspendIO OnNoQuorum = "suspend-io"
	OnNoQuorumIOError   OnNoQuorum = "io-error"
)

// Failback says whether a resource moves back to its preferred primary
// by itself once that node has resynced (cluster layer, rule 6).
type Failback string

const (
	// FailbackManual: only an admin's switchover moves it back.
	FailbackManual Failback = "manual"
	// FailbackAuto: the preferred primary takes it back once it has been
	// UpToDate and connected for timing.failback-after.
	FailbackAuto Failback = "auto"
)

// Config is one parsed configuration file, defaults filled in.
type Config struct {
	// Path is the file Load read ("" for a Config built in code); problems
	// are reported against it.
	Path       string
	Cluster    string
	SecretFile string
	// AcceptSecretFiles hold secrets accepted from peers besides
	// SecretFile's, while the cluster rotates its secret (docs/operations.md):
	// the replication link, the authority port and the gossip accept them;
	// this node proves SecretFile's only.
	AcceptSecretFiles []string
	Nodes             []Node
	Resources         []Resource
	// Timing is the cluster layer's lease, margin, fence retry, failback
	// delay and failure-detector probes (zero: defaults). See timing.go.
	Timing Timing
	// Alerts are the programs each daemon runs for its events. See alerts.go.
	Alerts []Alert

	lines  lines // where each key was, for problems found after parsing
	parsed bool  // came from Parse, which already checked each key's value
}

// Node is a member of the cluster. A node that holds no replica of any
// resource is a witness: it only votes.
type Node struct {
	Name        string
	Address     string // host name or IP, no port
	AdminSocket string // the daemon's admin API (Unix socket)
	DataDir     string // the daemon's own state
	// Fencing is how the other nodes switch this one off, levels in order
	// (nil: not configured). See fencing.go.
	Fencing []FenceLevel
	// Gossip and Authority are the node's membership (memberlist, UDP and
	// TCP) and authority-log (raft, TCP) addresses; set on every node, they
	// enable the cluster layer. See clusterlayer.go.
	Gossip    string
	Authority string
	// MetricsListen is where the daemon serves Prometheus metrics
	// (GET /metrics); "" for none. See docs/operations.md, "Metrics".
	MetricsListen string
	// MetricsTLS, if set, serves them over TLS: Cert and Key this node's,
	// CA (optional) the CA whose client certificates may scrape; without
	// CA any client may.
	MetricsTLS *TLS

	lines lines
}

// Resource is one replicated block device.
type Resource struct {
	Name              string
	Size              int64 // bytes exported; the data area of each replica
	Protocol          Protocol
	Compression       Compression
	BitmapGranularity int64 // bytes per bit of the out-of-sync bitmap
	ALExtents         int   // hot extents the activity log keeps
	Resync            Resync
	SplitBrain        SplitBrain
	OnNoQuorum        OnNoQuorum
	TLS               *TLS // nil: the replication link is not encrypted
	// PreferredPrimary is the node that should run the resource when both
	// can ("" for no preference). Roles are manual until the cluster layer
	// exists; it will read this.
	PreferredPrimary string
	// Failback: manual (the default) or auto, which moves the resource
	// back to PreferredPrimary (required then) after a failover.
	Failback Failback
	Replicas []Replica
	// VIP is the resource's service address, held by its primary (nil:
	// clients connect to a node's address). See vip.go.
	VIP *VIP

	lines lines
}

// Resync tunes the background copy from the up-to-date replica.
type Resync struct {
	MaxRate  int64   // bytes per second
	AppShare float64 // share of the bandwidth applications keep, 0..1
	Checksum bool    // skip blocks whose digests already match
}

// TLS holds PEM files for the replication link; each node presents Cert and
// checks its peer against CA.
type TLS struct {
	Cert, Key, CA string
}

// Replica is a resource's copy on one data node.
type Replica struct {
	Node      string
	Device    string // backing block device or file
	Meta      string // MetaInternal or the path of an external metadata file
	Address   string // host:port the replication link listens on and the peer dials
	NBDListen string // host:port or unix:/path of the node's NBD server
	// VIPInterface overrides the VIP's interface on this node ("" for the
	// resource's vip.interface): interface names differ between machines.
	VIPInterface string

	lines lines
}

// lines maps a key (and "" for the entry itself) to its line in the file.
type lines map[string]int

func (l lines) at(key string) int {
	if n, ok := l[key]; ok {
		return n
	}
	return l[""]
}

// InternalMeta reports whether the metadata lives at the end of the device.
func (r *Replica) InternalMeta() bool { return r.Meta == MetaInternal }

// Replica returns the resource's replica on node, or nil.
func (r *Resource) Replica(node string) *Replica {
	for i := range r.Replicas {
		if r.Replicas[i].Node == node {
			return &r.Replicas[i]
		}
	}
	return nil
}

// Peer returns the other replica than the one on node, or nil if node holds
// none (or the resource is not valid).
func (r *Resource) Peer(node string) *Replica {
	if r.Replica(node) == nil || len(r.Replicas) != 2 {
		return nil
	}
	for i := range r.Replicas {
		if r.Replicas[i].Node != node {
			return &r.Replicas[i]
		}
	}
	return nil
}

// Node returns the node called name; the error wraps ErrUnknownNode.
func (c *Config) Node(name string) (*Node, error) {
	for i := range c.Nodes {
		if c.Nodes[i].Name == name {
			return &c.Nodes[i], nil
		}
	}
	return nil, fmt.Errorf("%w %q (nodes in %s: %s): pass --node with one of them",
		ErrUnknownNode, name, c.displayPath(), strings.Join(c.nodeNames(), ", "))
}

// LocalNode returns the node this process runs as: flagValue if set (the
// --node flag), else the host name, tried whole and then up to its first dot
// (a node called "alpha" on host alpha.example.com).
func (c *Config) LocalNode(flagValue string) (*Node, error) {
	if flagValue != "" {
		return c.Node(flagValue)
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("config: finding the local node: %w (pass --node NAME)", err)
	}
	host = strings.ToLower(host) // node names are lowercase, host names are not case-sensitive
	if n, err := c.Node(host); err == nil {
		return n, nil
	}
	if short, _, ok := strings.Cut(host, "."); ok {
		if n, err := c.Node(short); err == nil {
			return n, nil
		}
	}
	return nil, fmt.Errorf("%w: this host is %q, which names no node in %s (nodes: %s): pass --node NAME",
		ErrUnknownNode, host, c.displayPath(), strings.Join(c.nodeNames(), ", "))
}

// DataNodes returns the names of the nodes that hold a replica, in file order.
func (c *Config) DataNodes() []string {
	var out []string
	for _, n := range c.Nodes {
		if c.holdsReplica(n.Name) {
			out = append(out, n.Name)
		}
	}
	return out
}

// Witnesses returns the names of the nodes that hold no replica, in file order.
func (c *Config) Witnesses() []string {
	var out []string
	for _, n := range c.Nodes {
		if !c.holdsReplica(n.Name) {
			out = append(out, n.Name)
		}
	}
	return out
}

// IsWitness reports whether the node holds no replica.
func (c *Config) IsWitness(name string) bool { return !c.holdsReplica(name) }

func (c *Config) holdsReplica(name string) bool {
	for i := range c.Resources {
		if c.Resources[i].Replica(name) != nil {
			return true
		}
	}
	return false
}

// Resource returns the resource called name, or nil.
func (c *Config) Resource(name string) *Resource {
	for i := range c.Resources {
		if c.Resources[i].Name == name {
			return &c.Resources[i]
		}
	}
	return nil
}

// nodeNames lists each valid node name once, for hints.
func (c *Config) nodeNames() []string {
	return uniqueNames(c.Nodes, func(n Node) string { return n.Name })
}

// resourceNames lists each valid resource name once, for hints.
func (c *Config) resourceNames() []string {
	return uniqueNames(c.Resources, func(r Resource) string { return r.Name })
}

func uniqueNames[T any](items []T, name func(T) string) []string {
	var names []string
	for _, it := range items {
		if n := name(it); n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

func (c *Config) displayPath() string {
	if c.Path == "" {
		return "the configuration"
	}
	return c.Path
}

// Hash identifies the meaning of the configuration: the SHA-256 of its
// canonical form (defaults filled in, nodes, resources and replicas sorted by
// name), so comments, key order and spelled-out defaults do not change it.
// Nodes gossip it to notice a file that differs between them.
func (c *Config) Hash() string {
	b, err := json.Marshal(c.canonical())
	if err != nil {
		// Only plain strings, numbers and bools go in: cannot fail.
		panic(fmt.Sprintf("config: encoding the canonical form: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// The canonical form has its own types with explicit JSON names, so that
// renaming a Go field cannot silently change every cluster's hash.
type canonConfig struct {
	Cluster    string          `json:"cluster"`
	SecretFile string          `json:"secret-file"`
	Accept     []string        `json:"accept-secret-files,omitempty"`
	Nodes      []canonNode     `json:"nodes"`
	Resources  []canonResource `json:"resources"`
	// omitempty: files without alerts keep the hash they had before them.
	Alerts []canonAlert `json:"alerts,omitempty"`
	// nil without a timing key (and so the hash of files without one).
	Timing *canonTiming `json:"timing,omitempty"`
}

type canonTiming struct {
	Lease         int64 `json:"lease-ns"`
	Margin        int64 `json:"margin-ns"`
	FenceRetry    int64 `json:"fence-retry-ns"`
	FailbackAfter int64 `json:"failback-after-ns"`
	ProbeInterval int64 `json:"probe-interval-ns"`
	ProbeTimeout  int64 `json:"probe-timeout-ns"`
	SuspicionMult int   `json:"suspicion-mult"`
	PingInterval  int64 `json:"ping-interval-ns"`
	PingTimeout   int64 `json:"ping-timeout-ns"`
	AckTimeout    int64 `json:"ack-timeout-ns"`
}

type canonNode struct {
	Name        string `json:"name"`
	Address     string `json:"address"`
	AdminSocket string `json:"admin-socket"`
	DataDir     string `json:"data-dir"`
	// omitempty: files without fencing keep the hash they had before it.
	Fencing []canonFence `json:"fencing,omitempty"`
	Metrics string       `json:"metrics-listen,omitempty"`
	// omitempty: files without it keep their hash.
	MetricsTLS *canonTLS `json:"metrics-tls,omitempty"`
	// omitempty: manual roles keep their hash.
	Gossip    string `json:"gossip,omitempty"`
	Authority string `json:"authority,omitempty"`
}

type canonResource struct {
	Name              string    `json:"name"`
	Size              int64     `json:"size"`
	Protocol          string    `json:"protocol"`
	Compression       string    `json:"compression"`
	BitmapGranularity int64     `json:"bitmap-granularity"`
	ALExtents         int       `json:"al-extents"`
	ResyncMaxRate     int64     `json:"resync-max-rate"`
	ResyncAppShare    float64   `json:"resync-app-share"`
	ResyncChecksum    bool      `json:"resync-checksum"`
	SplitBrain        string    `json:"split-brain"`
	OnNoQuorum        string    `json:"on-no-quorum"`
	TLS               *canonTLS `json:"tls,omitempty"`
	PreferredPrimary  string    `json:"preferred-primary,omitempty"`
	// omitempty, and empty for manual: files without failback keep the
	// hash they had before it.
	Failback string         `json:"failback,omitempty"`
	Replicas []canonReplica `json:"replicas"`
	VIP      *canonVIP      `json:"vip,omitempty"`
}

type canonTLS struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
	CA   string `json:"ca"`
}

type canonReplica struct {
	Node      string `json:"node"`
	Device    string `json:"device"`
	Meta      string `json:"meta"`
	Address   string `json:"address"`
	NBDListen string `json:"nbd-listen"`
	// omitempty: files without VIPs keep the hash they had before VIPs.
	VIPInterface string `json:"vip-interface,omitempty"`
}

func (c *Config) canonical() canonConfig {
	cc := canonConfig{Cluster: c.Cluster, SecretFile: c.SecretFile, Accept: c.AcceptSecretFiles, Alerts: canonAlerts(c.Alerts)}
	for _, n := range c.Nodes {
		cn := canonNode{Name: n.Name, Address: n.Address, AdminSocket: n.AdminSocket, DataDir: n.DataDir, Fencing: canonFencing(n.Fencing),
			Metrics: n.MetricsListen, Gossip: n.Gossip, Authority: n.Authority}
		if t := n.MetricsTLS; t != nil {
			cn.MetricsTLS = &canonTLS{t.Cert, t.Key, t.CA}
		}
		cc.Nodes = append(cc.Nodes, cn)
	}
	slices.SortFunc(cc.Nodes, func(a, b canonNode) int { return strings.Compare(a.Name, b.Name) })
	for _, r := range c.Resources {
		cr := canonResource{
			Name: r.Name, Size: r.Size, Protocol: string(r.Protocol), Compression: string(r.Compression),
			BitmapGranularity: r.BitmapGranularity, ALExtents: r.ALExtents,
			ResyncMaxRate: r.Resync.MaxRate, ResyncAppShare: r.Resync.AppShare, ResyncChecksum: r.Resync.Checksum,
			SplitBrain: string(r.SplitBrain), OnNoQuorum: string(r.OnNoQuorum),
			PreferredPrimary: r.PreferredPrimary,
		}
		if r.Failback != "" && r.Failback != FailbackManual {
			cr.Failback = string(r.Failback)
		}
		if r.TLS != nil {
			cr.TLS = &canonTLS{r.TLS.Cert, r.TLS.Key, r.TLS.CA}
		}
		cr.VIP = r.VIP.canonical()
		for _, rp := range r.Replicas {
			cr.Replicas = append(cr.Replicas, canonReplica{rp.Node, rp.Device, rp.Meta, rp.Address, rp.NBDListen, rp.VIPInterface})
		}
		slices.SortFunc(cr.Replicas, func(a, b canonReplica) int { return strings.Compare(a.Node, b.Node) })
		cc.Resources = append(cc.Resources, cr)
	}
	slices.SortFunc(cc.Resources, func(a, b canonResource) int { return strings.Compare(a.Name, b.Name) })
	t := c.Timing
	if ct := (canonTiming{int64(t.Lease), int64(t.Margin), int64(t.FenceRetry), int64(t.FailbackAfter), int64(t.ProbeInterval),
		int64(t.ProbeTimeout), t.SuspicionMult, int64(t.PingInterval), int64(t.PingTimeout), int64(t.AckTimeout)}); ct != (canonTiming{}) {
		cc.Timing = &ct
	}
	return cc
}

// defaultNBDListen is where a node's NBD server listens unless a replica says
// otherwise: the node's address, NBD's registered port.
func defaultNBDListen(nodeAddress string) string {
	return net.JoinHostPort(nodeAddress, fmt.Sprint(DefaultNBDPort))
}
