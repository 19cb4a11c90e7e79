package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cluster/authority"
	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/replicate"
)

// The cluster layer's part of the admin API (only while it runs; 503
// cluster_disabled otherwise):
//
//	POST /v1/cluster/switchover     ClusterRequest{resource, node (optional: to)} -> ClusterReply
//	POST /v1/cluster/standby        ClusterRequest{node} -> ClusterReply
//	POST /v1/cluster/unstandby      ClusterRequest{node} -> ClusterReply
//	POST /v1/cluster/fence-confirm  ClusterRequest{node} -> ClusterReply
//	POST /v1/cluster/transfer-leadership  ClusterRequest{node} -> ClusterReply
//	                                (on the node that leads the authority log)
//
// and, with it, promote and demote of /v1/resources go through the
// authority log, and GET /v1/status carries "cluster".

// ClusterRequest is the body of the /v1/cluster operations.
type ClusterRequest struct {
	Resource string `json:"resource,omitempty"`
	Node     string `json:"node,omitempty"`
}

// ClusterReply says what the cluster layer did.
type ClusterReply struct {
	OK   bool   `json:"ok"`
	Text string `json:"text"`
}

// Error codes of the cluster layer's refusals.
const (
	CodeClusterDisabled = "cluster_disabled"
	CodeRefused         = "refused"
	CodeNotFenced       = "not_fenced"
	CodeNoQuorum        = "no_quorum"
	CodeTimeout         = "timeout"
)

// ErrClusterDisabled: an operation of the cluster layer on a daemon that
// runs manual roles.
var ErrClusterDisabled = errors.New("the cluster layer is not enabled (no gossip/authority addresses in the configuration)")

// clusterTimeout bounds an admin operation through the log.
const clusterTimeout = 30

func (d *Daemon) clusterRoutes(mux *http.ServeMux) {
	for path, op := range map[string]cluster.AdminOp{
		"switchover": cluster.AdminSwitchover, "standby": cluster.AdminStandby,
		"unstandby": cluster.AdminUnstandby, "fence-confirm": cluster.AdminFenceConfirm,
	} {
		mux.HandleFunc("POST /v1/cluster/"+path, func(w http.ResponseWriter, req *http.Request) {
			var body ClusterRequest
			dec := json.NewDecoder(io.LimitReader(req.Body, 1<<16))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
				writeError(w, fmt.Errorf("%w: %v", errBadRequest, err))
				return
			}
			if op == cluster.AdminSwitchover && body.Resource == "" || op != cluster.AdminSwitchover && body.Node == "" {
				writeError(w, fmt.Errorf("%w: %s needs %s", errBadRequest, path, map[bool]string{true: "a resource", false: "a node"}[op == cluster.AdminSwitchover]))
				return
			}
			text, err := d.clusterAdmin(req.Context(), cluster.AdminRequest{Op: op, Resource: body.Resource, Node: body.Node})
			d.noteAdmin(req.Context(), path, body.Resource, body.Node, body, text, err)
			if err != nil {
				writeClusterError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, ClusterReply{OK: true, Text: text})
		})
	}
	mux.HandleFunc("POST /v1/cluster/transfer-leadership", func(w http.ResponseWriter, req *http.Request) {
		var body ClusterRequest
		dec := json.NewDecoder(io.LimitReader(req.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) || body.Node == "" || body.Resource != "" {
			writeError(w, fmt.Errorf("%w: transfer-leadership needs a node and no resource", errBadRequest))
			return
		}
		text, err := d.transferLeadership(req.Context(), body.Node)
		d.noteAdmin(req.Context(), "transfer-leadership", "", body.Node, body, text, err)
		if err != nil {
			writeClusterError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ClusterReply{OK: true, Text: text})
	})
}

// transferLeadership hands the authority log's leadership from this
// node to another voter.
func (d *Daemon) transferLeadership(ctx context.Context, to string) (string, error) {
	cl := d.cl.Load()
	if cl == nil {
		return "", ErrClusterDisabled
	}
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout*time.Second)
	defer cancel()
	if err := cl.auth.TransferLeadership(ctx, to); err != nil {
		return "", err
	}
	return fmt.Sprintf("the authority log's leadership was handed from %s to %s", d.node.Name, to), nil
}

func (d *Daemon) clusterAdmin(ctx context.Context, req cluster.AdminRequest) (string, error) {
	cl := d.cl.Load()
	if cl == nil {
		return "", ErrClusterDisabled
	}
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout*time.Second)
	defer cancel()
	log := d.log.With("op", req.Op, "resource", req.Resource, "target", req.Node)
	log.Info("admin request (cluster layer)")
	text, err := cl.mgr.Admin(ctx, req)
	if err != nil {
		log.Warn("admin request refused", "err", err)
		return "", err
	}
	log.Info("admin request done", "result", text)
	return text, nil
}

// clusterPromote and clusterDemote are promote and demote with the
// cluster layer: through the machine, which commits them first.
func (d *Daemon) clusterPromote(ctx context.Context, r *resource, force bool) (replicate.PromoteResult, error) {
	text, err := d.clusterAdmin(ctx, cluster.AdminRequest{Op: cluster.AdminPromote, Resource: r.cfg.Name, Force: force})
	if err != nil {
		return replicate.PromoteResult{}, err
	}
	res := replicate.PromoteResult{}
	if cl := d.cl.Load(); cl != nil {
		if rec := cl.mgr.Status().Record.Resource(r.cfg.Name); rec != nil {
			res.Epoch = rec.Epoch
		}
	}
	if text != "promoted" && text != "already primary here" {
		res.Discarded = text
	}
	return res, nil
}

func (d *Daemon) clusterDemote(ctx context.Context, r *resource) error {
	_, err := d.clusterAdmin(ctx, cluster.AdminRequest{Op: cluster.AdminDemote, Resource: r.cfg.Name})
	return err
}

// clusterStatus is the cluster layer's part of GET /v1/status.
func (d *Daemon) clusterStatus() *manager.Status {
	cl := d.cl.Load()
	if cl == nil {
		return nil
	}
	st := cl.mgr.Status()
	return &st
}

// authorityStatus is this node's view of the authority log.
func (d *Daemon) authorityStatus() *authority.Status {
	cl := d.cl.Load()
	if cl == nil || cl.auth == nil {
		return nil
	}
	st := cl.auth.Status()
	return &st
}

func writeClusterError(w http.ResponseWriter, err error) {
	for _, c := range []struct {
		err    error
		code   string
		status int
	}{
		{ErrClusterDisabled, CodeClusterDisabled, http.StatusServiceUnavailable},
		{manager.ErrStopped, CodeShuttingDown, http.StatusServiceUnavailable},
		{cluster.ErrNotFenced, CodeNotFenced, http.StatusConflict},
		{cluster.ErrNotUpToDate, CodeNotUpToDate, http.StatusConflict},
		{cluster.ErrNotPrimary, CodeNotPrimary, http.StatusConflict},
		{cluster.ErrUnknownResource, CodeUnknownResource, http.StatusNotFound},
		{cluster.ErrProposalTimeout, CodeTimeout, http.StatusGatewayTimeout},
		{context.DeadlineExceeded, CodeTimeout, http.StatusGatewayTimeout},
		{cluster.ErrNoReplica, CodeRefused, http.StatusConflict},
		{cluster.ErrNotAllowed, CodeRefused, http.StatusConflict},
		{cluster.ErrStandby, CodeRefused, http.StatusConflict},
		{cluster.ErrHeld, CodeRefused, http.StatusConflict},
		{cluster.ErrStaleEpoch, CodeStaleEpoch, http.StatusConflict},
		{cluster.ErrSeqMismatch, CodeRefused, http.StatusConflict},
		{authority.ErrNotLeading, CodeRefused, http.StatusConflict},
	} {
		if errors.Is(err, c.err) {
			writeJSON(w, c.status, ErrorBody{Error: err.Error(), Code: c.code})
			return
		}
	}
	if isNoQuorum(err) {
		writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: err.Error(), Code: CodeNoQuorum})
		return
	}
	writeError(w, err)
}

func isNoQuorum(err error) bool {
	return errors.Is(err, authority.ErrNoQuorum)
}
