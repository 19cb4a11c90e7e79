package daemon

import (
	"errors"
	"net/http"
	"time"

	"github.com/tandem-ha/tandem/cluster/authority"
	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/replicate"
)

// The admin API: HTTP/1.1 with JSON bodies over the node's admin socket.
// Paths and JSON keys are stable and documented in docs/operations.md.
//
//	GET  /v1/status                         NodeStatus
//	GET  /v1/status?resource=NAME           NodeStatus with that resource only
//	GET  /v1/events[?since=SEQ]             NDJSON stream of Event (events.go)
//	POST /v1/resources/NAME/promote         PromoteRequest -> replicate.PromoteResult
//	POST /v1/resources/NAME/demote          {} -> Done
//	POST /v1/resources/NAME/connect         {} -> Done
//	POST /v1/resources/NAME/disconnect      {} -> Done
//	POST /v1/resources/NAME/peer-fenced     {} -> Done (the peer is confirmed off)
//	POST /v1/resources/NAME/outdate         {} -> Done (mark this replica Outdated)
//	POST /v1/resources/NAME/resync          ResyncRequest -> Done
//	POST /v1/resources/NAME/pause-sync      {} -> Done
//	POST /v1/resources/NAME/resume-sync     {} -> Done
//	POST /v1/resources/NAME/verify          VerifyRequest -> replicate.VerifyReport
//	POST /v1/resources/NAME/resolve         ResolveRequest -> Done
//	POST /v1/resources/NAME/attach-disk     AttachDiskRequest -> Done (replace a failed disk)
//	POST /v1/resources/NAME/resize          ResizeRequest -> ResizeResult (grow to the file's size)
//	POST /v1/adjust                         AdjustRequest -> AdjustResult (re-read the configuration file)
//	POST /v1/fence-log                      FenceLogRequest -> Done (audit of a hand-run fence)
//
// A refusal is an ErrorBody with a Code from the list below and an HTTP
// status: 400 bad request, 404 unknown resource, 409 refused by the
// volume's state, 503 resource down or daemon stopping, 500 anything else.

// NodeStatus is GET /v1/status.
type NodeStatus struct {
	Cluster   string           `json:"cluster"`
	Node      string           `json:"node"`
	Witness   bool             `json:"witness"`
	Version   string           `json:"version"`
	PID       int              `json:"pid"`
	Resources []ResourceStatus `json:"resources"`
	// ClusterLayer is the node manager's view (membership, quorum, the
	// authority record, the last failover); absent with manual roles.
	ClusterLayer *manager.Status `json:"cluster_layer,omitempty"`
	// Authority is this node's view of the authority log (raft state,
	// leader, applied index); absent with manual roles.
	Authority *authority.Status `json:"authority,omitempty"`
	// Nodes is the version and config hash of this node and of every live
	// member that gossiped them (softstate.go).
	Nodes map[string]SoftState `json:"nodes"`
	// Alerts is each alerts[] entry's record since the daemon started, in
	// the file's order (empty without alerts).
	Alerts []AlertStatus `json:"alerts"`
}

// AlertStatus is what one alert program did since the daemon started.
type AlertStatus struct {
	Path      string `json:"path"`
	Recipient string `json:"recipient,omitempty"`
	// Runs counts the program's runs, gaps included; Failures those that
	// did not exit 0 (did not start, failed, killed at the timeout).
	Runs     uint64 `json:"runs"`
	Failures uint64 `json:"failures"`
	// LostEvents adds up the gaps: events it wanted or not that the ring
	// no longer held when it caught up.
	LostEvents  uint64        `json:"lost_events"`
	LastFailure *AlertFailure `json:"last_failure,omitempty"`
}

// AlertFailure is the latest failed run of an alert program.
type AlertFailure struct {
	Time  time.Time `json:"time"`
	Seq   uint64    `json:"seq"` // the event's
	Kind  string    `json:"kind"`
	Error string    `json:"error"`
}

// ResourceStatus is one resource on this node: the volume's status, plus
// whether it is up at all and whether its NBD export serves clients.
type ResourceStatus struct {
	replicate.Status
	// Up: the volume is open. A resource that is down (no or corrupt
	// metadata, a missing device) has Disk Diskless and Error says why.
	Up    bool   `json:"up"`
	Error string `json:"error,omitempty"`
	// NBDListen is the listener its export is on; NBDServing is true
	// while the export passes I/O (this node is Primary).
	NBDListen  string `json:"nbd_listen"`
	NBDServing bool   `json:"nbd_serving"`
}

// PromoteRequest is the body of promote.
type PromoteRequest struct {
	Force bool `json:"force"`
}

// ResyncRequest is the body of resync.
type ResyncRequest struct {
	Full bool `json:"full"`
}

// VerifyRequest is the body of verify.
type VerifyRequest struct {
	Repair bool `json:"repair"`
}

// ResolveRequest is the body of resolve.
type ResolveRequest struct {
	DiscardMyData bool `json:"discard_my_data"`
}

// AttachDiskRequest is the body of attach-disk.
type AttachDiskRequest struct {
	// Force overwrites another replica's (or corrupt) tandem metadata
	// found on the new disk.
	Force bool `json:"force"`
}

// ResizeRequest is the body of resize.
type ResizeRequest struct {
	// AssumeClean: both grown devices hold the same bytes in the new
	// range (e.g. both zeroed), so it is not resynced.
	AssumeClean bool `json:"assume_clean"`
	// AssumePeerHasSpace: with the peer not connected, grow this node
	// alone; the peer grows when it connects.
	AssumePeerHasSpace bool `json:"assume_peer_has_space"`
}

// ResizeResult is the reply of resize.
type ResizeResult struct {
	From int64 `json:"from_bytes"`
	To   int64 `json:"to_bytes"`
}

// Done is the reply of an operation that returns nothing else.
type Done struct {
	OK bool `json:"ok"`
}

// ErrorBody is every refusal.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Error codes of ErrorBody; scripts branch on them.
const (
	CodeBadRequest      = "bad_request"
	CodeUnknownResource = "unknown_resource"
	CodeResourceDown    = "resource_down"
	CodeShuttingDown    = "shutting_down"
	CodeNotPrimary      = "not_primary"
	CodePeerPrimary     = "peer_primary"
	CodeNotUpToDate     = "not_up_to_date"
	CodeNotConnected    = "not_connected"
	CodeSplitBrain      = "split_brain"
	CodeBusy            = "busy"
	CodeClosed          = "closed"
	CodeIsPrimary       = "is_primary"
	CodeDiskFailed      = "disk_failed"
	CodePeerLost        = "peer_lost"
	CodeStaleEpoch      = "stale_epoch"
	CodeIsSyncTarget    = "is_sync_target"
	CodeConfigInvalid   = "config_invalid"
	CodeNeedsRestart    = "needs_restart"
	CodeLinkInUse       = "link_in_use"
	CodeDiskAttached    = "disk_attached"
	CodeForeignDisk     = "foreign_disk"
	CodeResizeRefused   = "resize_refused"
	CodeInternal        = "internal"
)

var (
	// ErrUnknownResource: no such resource on this node.
	ErrUnknownResource = errors.New("unknown resource")
	// ErrResourceDown: the resource did not open (its status says why).
	ErrResourceDown = errors.New("resource is down on this node")
	// ErrShuttingDown: the daemon is stopping.
	ErrShuttingDown = errors.New("the daemon is shutting down")
)

// errorCode is one sentinel error and its code and HTTP status.
type errorCode struct {
	err    error
	code   string
	status int
}

// errorCodes is the table codeOf and APIError.Is share.
func errorCodes() []errorCode {
	return []errorCode{
		{ErrUnknownResource, CodeUnknownResource, http.StatusNotFound},
		{ErrResourceDown, CodeResourceDown, http.StatusServiceUnavailable},
		{ErrShuttingDown, CodeShuttingDown, http.StatusServiceUnavailable},
		{replicate.ErrNotPrimary, CodeNotPrimary, http.StatusConflict},
		{replicate.ErrPeerPrimary, CodePeerPrimary, http.StatusConflict},
		{replicate.ErrNotUpToDate, CodeNotUpToDate, http.StatusConflict},
		{replicate.ErrNotConnected, CodeNotConnected, http.StatusConflict},
		{replicate.ErrSplitBrain, CodeSplitBrain, http.StatusConflict},
		{replicate.ErrBusy, CodeBusy, http.StatusConflict},
		{replicate.ErrClosed, CodeClosed, http.StatusServiceUnavailable},
		{replicate.ErrIsPrimary, CodeIsPrimary, http.StatusConflict},
		{replicate.ErrDiskFailed, CodeDiskFailed, http.StatusServiceUnavailable},
		{replicate.ErrPeerLost, CodePeerLost, http.StatusConflict},
		{replicate.ErrStaleEpoch, CodeStaleEpoch, http.StatusConflict},
		{replicate.ErrIsSyncTarget, CodeIsSyncTarget, http.StatusConflict},
		{ErrConfigInvalid, CodeConfigInvalid, http.StatusBadRequest},
		{ErrNeedsRestart, CodeNeedsRestart, http.StatusConflict},
		{replicate.ErrLinkInUse, CodeLinkInUse, http.StatusConflict},
		{replicate.ErrDiskAttached, CodeDiskAttached, http.StatusConflict},
		{ErrForeignDisk, CodeForeignDisk, http.StatusConflict},
		{replicate.ErrResizeRefused, CodeResizeRefused, http.StatusConflict},
	}
}

// codeOf maps an operation's error to its code and HTTP status.
func codeOf(err error) (string, int) {
	for _, c := range errorCodes() {
		if errors.Is(err, c.err) {
			return c.code, c.status
		}
	}
	return CodeInternal, http.StatusInternalServerError
}
