package replicate

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/replicate/disk"
)

// This file is the contract between a replicated volume and whoever drives
// it: the daemon (manual roles, issue 3) and later the cluster layer. The
// names of states are DRBD's, so its users read `tandem status` without a
// glossary. JSON keys are documented in docs/operations.md and are stable.

// Role is what a replica does with application I/O.
type Role string

const (
	// Primary serves reads and writes and replicates writes to the peer.
	Primary Role = "Primary"
	// Secondary receives the primary's writes; it serves no application I/O.
	Secondary Role = "Secondary"
	// RoleUnknown is the peer's role while there is no connection.
	RoleUnknown Role = "Unknown"
)

// DiskState is what the local data is worth.
type DiskState string

const (
	// UpToDate: the data is the newest of the resource.
	UpToDate DiskState = "UpToDate"
	// Outdated: consistent, but the peer has written since (it told us,
	// or the authority record says so).
	Outdated DiskState = "Outdated"
	// Inconsistent: not a complete image (new device, or a sync target in
	// the middle of a resync).
	Inconsistent DiskState = "Inconsistent"
	// Diskless: no local data (metadata missing, or the disk detached).
	Diskless DiskState = "Diskless"
	// Failed: the local disk returned an I/O error; the replica is
	// detached until an admin acts.
	Failed DiskState = "Failed"
	// DiskUnknown is the peer's disk state while there is no connection.
	DiskUnknown DiskState = "DUnknown"
)

// ConnState is the state of the replication link.
type ConnState string

const (
	// StandAlone: not trying to connect (admin disconnect, split brain,
	// refused peer); Status.Reason says why.
	StandAlone ConnState = "StandAlone"
	// Connecting: listening for and dialing the peer.
	Connecting ConnState = "Connecting"
	// Disconnecting: the session is ending (writes no longer reach the
	// peer; the ones it may not have are being marked out of sync). It
	// shows before any write waiting for the peer is told it is gone, so
	// a report taken after such a write never reads Connected.
	Disconnecting ConnState = "Disconnecting"
	// Connected: replicas in sync, writes replicated.
	Connected ConnState = "Connected"
	// SyncSource / SyncTarget: a resync is running in that direction;
	// application writes are replicated meanwhile.
	SyncSource ConnState = "SyncSource"
	SyncTarget ConnState = "SyncTarget"
	// VerifySource / VerifyTarget: an online verify is running.
	VerifySource ConnState = "VerifySource"
	VerifyTarget ConnState = "VerifyTarget"
)

// Sentinel errors callers branch on (wrapped with context).
var (
	// ErrNotPrimary: application writes, or an operation that needs the
	// primary, on a secondary.
	ErrNotPrimary = errors.New("replicate: not primary")
	// ErrPeerPrimary: promote refused because the peer is primary.
	ErrPeerPrimary = errors.New("replicate: peer is primary")
	// ErrNotUpToDate: promote refused because the local data is not
	// UpToDate (use force to override).
	ErrNotUpToDate = errors.New("replicate: local data is not UpToDate")
	// ErrNotConnected: the operation needs the peer (verify, resync).
	ErrNotConnected = errors.New("replicate: not connected to the peer")
	// ErrSplitBrain: both sides wrote since their last common generation.
	ErrSplitBrain = errors.New("replicate: split brain")
	// ErrBusy: another resync or verify is running.
	ErrBusy = errors.New("replicate: busy")
	// ErrClosed: the volume was closed.
	ErrClosed = errors.New("replicate: closed")
	// ErrStaleEpoch: a message from an older epoch (a deposed primary).
	ErrStaleEpoch = errors.New("replicate: message from an older epoch")
	// ErrIsPrimary: the operation needs this node to be secondary (become
	// a sync target, discard its data, be marked outdated).
	ErrIsPrimary = errors.New("replicate: this node is primary")
	// ErrDiskFailed: the local disk returned an I/O error; the replica is
	// detached (disk state Failed) until the volume is reopened.
	ErrDiskFailed = errors.New("replicate: local disk failed")
	// ErrPeerLost: the peer went away before it confirmed an operation
	// that needs it (verify, resync).
	ErrPeerLost = errors.New("replicate: connection to the peer lost")
	// ErrIsSyncTarget: the operation belongs on the sync source (pausing
	// a resync: the source drives it).
	ErrIsSyncTarget = errors.New("replicate: this node is the sync target")
)

// Config is what a volume needs; the daemon builds it from the cluster
// configuration.
type Config struct {
	Cluster  string // both sides of the link must agree
	Resource string
	Node     string // this node's name
	Peer     string // the peer node's name
	Secret   []byte // shared secret (at least 16 bytes)
	// AcceptSecrets: further secrets the peer may prove instead, while the
	// cluster rotates its secret (this side proves Secret).
	AcceptSecrets [][]byte

	Protocol    string // "A", "B" or "C"
	Compression string // "off", "s2", "zstd"
	Listen      string // host:port this side accepts the link on
	PeerAddress string // host:port of the peer's listener
	TLS         *tls.Config
	// Listener, when set, is used instead of listening on Listen (tests
	// listen on port 0 first to learn both addresses). Close closes it.
	Listener net.Listener

	// Link timing; zero values take the defaults (DefaultPingInterval,
	// DefaultPingTimeout, DefaultAckTimeout, DefaultConnectTimeout,
	// DefaultRetryMax).
	PingInterval time.Duration // a Ping goes out this often
	PingTimeout  time.Duration // nothing received for this long: the link is dead
	// AckTimeout: requests wait for the peer's answer and none has come
	// for this long, though it still answers pings (a hung disk on the
	// peer, DRBD's timeout x ko-count): the peer is dropped and writes go
	// on without it, marked out of sync.
	AckTimeout     time.Duration
	ConnectTimeout time.Duration // bounds the handshake and the session setup
	RetryMax       time.Duration // the dial backoff grows up to this

	// Data is the local data area; production uses nbd/backend.File (FUA,
	// punched holes, sendfile), tests disk.Device over a disk.Mem.
	Data nbd.Device
	// Meta is the metadata area (md.Open is called on it).
	Meta disk.Disk

	Resync ResyncConfig
	// SplitBrain: "disconnect", "discard-zero-changes",
	// "discard-younger-primary", "discard-older-primary",
	// "discard-least-changes", "discard-node-" + Node or + Peer.
	SplitBrain string

	// Grow gives the local disk made larger for Resize (on the primary,
	// and on the secondary when the primary asks): the caller checks its
	// configuration allows size and opens the grown device. nil: the
	// volume cannot grow.
	Grow func(ctx context.Context, size int64) (GrowTarget, error)

	// OnDegraded runs before the first write acknowledged without the
	// peer (each time the peer goes away): the cluster layer marks the
	// peer Outdated durably there. An error fails that write.
	OnDegraded func(ctx context.Context) error

	Logger *slog.Logger
	Now    func() time.Time // nil: time.Now

	// dropFeatures: wire feature bits this volume does not announce, as
	// an older build would not (tests of mixed versions).
	dropFeatures uint32
}

// ResyncConfig tunes resync.
type ResyncConfig struct {
	MaxRate  int64   // bytes per second, 0: unlimited
	AppShare float64 // share of throughput applications keep, 0..1
	Checksum bool    // skip blocks whose digests already match
}

// Status is a snapshot of a volume, for `tandem status`.
type Status struct {
	Resource    string    `json:"resource"`
	Node        string    `json:"node"`
	Peer        string    `json:"peer"`
	Role        Role      `json:"role"`
	Disk        DiskState `json:"disk"`
	Conn        ConnState `json:"connection"`
	Reason      string    `json:"reason,omitempty"` // why StandAlone, or the last link error
	PeerRole    Role      `json:"peer_role"`
	PeerDisk    DiskState `json:"peer_disk"`
	Protocol    string    `json:"protocol"`
	Compression string    `json:"compression"`
	// SessionProtocol and SessionCompression are what the running session
	// uses: the primary's protocol and the negotiated codec. They differ
	// from Protocol and Compression between a change on one node
	// (SetLink) and the same change on the other.
	SessionProtocol    string      `json:"session_protocol,omitempty"`
	SessionCompression string      `json:"session_compression,omitempty"`
	Epoch              uint64      `json:"epoch"`
	Generations        Generations `json:"generations"`
	OutOfSync          int64       `json:"out_of_sync_bytes"`
	SuspendedIO        bool        `json:"suspended_io"`
	// SyncPaused: resyncs from this node are paused (PauseSync) until
	// ResumeSync, whether one runs or not.
	SyncPaused bool `json:"sync_paused"`
	// ReadBytes and WrittenBytes count the application's completed reads
	// and writes (trims and zeroes included) since the volume opened.
	ReadBytes    int64 `json:"read_bytes"`
	WrittenBytes int64 `json:"written_bytes"`
	// PeerHeard: a session is up and a frame came from the peer within
	// three ping intervals. The cluster layer does not fence a primary
	// the failure detector calls dead while its link is still heard (a
	// stall of the detector, not a death), for a bounded time.
	PeerHeard bool `json:"peer_heard"`
	// Session counts the replication sessions established since the
	// volume opened; the current or last one's number.
	Session uint64    `json:"session"`
	Size    int64     `json:"size"`
	Resync  *Progress `json:"resync,omitempty"`
	// LastResync is the outcome of the last resync that finished here.
	LastResync *Progress `json:"last_resync,omitempty"`
	Verify     *Progress `json:"verify,omitempty"`
}

// Progress of a resync or verify.
type Progress struct {
	Full       bool    `json:"full"`     // full sync, not bitmap-driven
	Checksum   bool    `json:"checksum"` // checksum mode
	TotalBytes int64   `json:"total_bytes"`
	DoneBytes  int64   `json:"done_bytes"`
	LeftBytes  int64   `json:"left_bytes"`
	SentBytes  int64   `json:"sent_bytes"` // data bytes that crossed the link
	Percent    float64 `json:"percent"`
	Rate       float64 `json:"rate_bytes_per_second"`
	ETASeconds float64 `json:"eta_seconds"`
	// Paused: an administrator paused the resync (PauseSync); shown by
	// the source, which drives it.
	Paused bool `json:"paused,omitempty"`
}

// Range is a byte range of the data area.
type Range struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// VerifyReport is the outcome of an online verify.
type VerifyReport struct {
	ComparedBytes int64   `json:"compared_bytes"`
	Differing     []Range `json:"differing"`
	// OmittedRanges counts differing ranges left out of Differing: a
	// report the primary sends for a verify asked on the secondary lists
	// at most 262144 of them.
	OmittedRanges int64 `json:"omitted_ranges,omitempty"`
	Repaired      bool  `json:"repaired"`
}

// PromoteResult says what a promotion did.
type PromoteResult struct {
	Epoch uint64 `json:"epoch"`
	// Discarded describes what a forced promotion gave up (the peer's
	// newer data, an incomplete image...); empty when nothing was.
	Discarded string `json:"discarded,omitempty"`
}

// Volume methods the daemon and the cluster layer rely on (implemented in
// volume.go):
//
//	Open(ctx, Config) (*Volume, error)        starts Secondary, Connecting
//	(*Volume) Status() Status
//	(*Volume) Promote(ctx, force bool) (PromoteResult, error)
//	(*Volume) Demote(ctx) error               flushes first
//	(*Volume) Connect(ctx) error / Disconnect(ctx) error
//	(*Volume) Resync(ctx, full bool) error    make this side the sync target
//	(*Volume) Verify(ctx, repair bool) (VerifyReport, error)
//	(*Volume) Resolve(ctx, discardMyData bool) error   after split brain
//	(*Volume) Outdate(ctx) error              mark the local data Outdated (not on a primary)
//	(*Volume) PeerFenced(ctx) error           the peer is confirmed off: end its session now
//	(*Volume) Close(ctx) error                drain, flush, metadata clean
//
// and nbd.Device (Size, ReadAt, WriteAt, Flush, Trim, Zero, Features)
// plus nbd.FileSource (FileRange; ok only when the data area is a
// FileSource and this node is primary): reads are local, writes follow
// the protocol, on a secondary both fail with ErrNotPrimary wrapping
// nbd.ErrReadOnly (EPERM to NBD clients).
