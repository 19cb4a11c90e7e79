package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/tandem-ha/tandem/replicate"
)

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", d.handleStatus)
	mux.HandleFunc("GET /v1/events", d.handleEvents) // events.go
	mux.HandleFunc("POST /v1/resources/{name}/promote", func(w http.ResponseWriter, req *http.Request) {
		var body PromoteRequest
		d.op(w, req, &body, func(ctx context.Context, r *resource, v Volume) (any, error) { return d.promote(ctx, r, body.Force) })
	})
	mux.HandleFunc("POST /v1/resources/{name}/demote", func(w http.ResponseWriter, req *http.Request) {
		d.op(w, req, nil, func(ctx context.Context, r *resource, v Volume) (any, error) { return Done{true}, d.demote(ctx, r) })
	})
	mux.HandleFunc("POST /v1/resources/{name}/connect", func(w http.ResponseWriter, req *http.Request) {
		d.op(w, req, nil, func(ctx context.Context, r *resource, v Volume) (any, error) { return Done{true}, v.Connect(ctx) })
	})
	mux.HandleFunc("POST /v1/resources/{name}/disconnect", func(w http.ResponseWriter, req *http.Request) {
		d.op(w, req, nil, func(ctx context.Context, r *resource, v Volume) (any, error) { return Done{true}, v.Disconnect(ctx) })
	})
	mux.HandleFunc("POST /v1/resources/{name}/outdate", func(w http.ResponseWriter, req *http.Request) {
		d.op(w, req, nil, func(ctx context.Context, r *resource, v Volume) (any, error) { return Done{true}, v.Outdate(ctx) })
	})
	mux.HandleFunc("POST /v1/resources/{name}/peer-fenced", func(w http.ResponseWriter, req *http.Request) {
		d.op(w, req, nil, func(ctx context.Context, r *resource, v Volume) (any, error) { return Done{true}, v.PeerFenced(ctx) })
	})
	mux.HandleFunc("POST /v1/resources/{name}/resync", func(w http.ResponseWriter, req *http.Request) {
		var body ResyncRequest
		d.op(w, req, &body, func(ctx context.Context, r *resource, v Volume) (any, error) {
			return Done{true}, v.Resync(ctx, body.Full)
		})
	})
	mux.HandleFunc("POST /v1/resources/{name}/pause-sync", func(w http.ResponseWriter, req *http.Request) {
		d.op(w, req, nil, func(ctx context.Context, r *resource, v Volume) (any, error) { return Done{true}, v.PauseSync(ctx) })
	})
	mux.HandleFunc("POST /v1/resources/{name}/resume-sync", func(w http.ResponseWriter, req *http.Request) {
		d.op(w, req, nil, func(ctx context.Context, r *resource, v Volume) (any, error) { return Done{true}, v.ResumeSync(ctx) })
	})
	mux.HandleFunc("POST /v1/resources/{name}/verify", func(w http.ResponseWriter, req *http.Request) {
		var body VerifyRequest
		d.op(w, req, &body, func(ctx context.Context, r *resource, v Volume) (any, error) { return v.Verify(ctx, body.Repair) })
	})
	mux.HandleFunc("POST /v1/resources/{name}/resolve", func(w http.ResponseWriter, req *http.Request) {
		var body ResolveRequest
		d.op(w, req, &body, func(ctx context.Context, r *resource, v Volume) (any, error) {
			if !body.DiscardMyData {
				return nil, fmt.Errorf("%w: resolve needs discard_my_data: the node whose changes are thrown away runs it", errBadRequest)
			}
			return Done{true}, v.Resolve(ctx, true)
		})
	})
	mux.HandleFunc("POST /v1/resources/{name}/attach-disk", func(w http.ResponseWriter, req *http.Request) {
		var body AttachDiskRequest
		d.op(w, req, &body, func(ctx context.Context, r *resource, v Volume) (any, error) {
			return Done{true}, d.attachDisk(ctx, r, body.Force) // attachdisk.go
		})
	})
	mux.HandleFunc("POST /v1/resources/{name}/resize", func(w http.ResponseWriter, req *http.Request) {
		var body ResizeRequest
		d.op(w, req, &body, func(ctx context.Context, r *resource, v Volume) (any, error) {
			return d.resize(ctx, r, replicate.ResizeOptions{AssumeClean: body.AssumeClean, AssumePeerHasSpace: body.AssumePeerHasSpace}) // resize.go
		})
	})
	// up and down reach a resource whatever its state (lifecycle.go).
	mux.HandleFunc("POST /v1/resources/{name}/up", func(w http.ResponseWriter, req *http.Request) {
		d.opAny(w, req, func(ctx context.Context, r *resource) (any, error) { return Done{true}, d.up(ctx, r) })
	})
	mux.HandleFunc("POST /v1/resources/{name}/down", func(w http.ResponseWriter, req *http.Request) {
		d.opAny(w, req, func(ctx context.Context, r *resource) (any, error) { return Done{true}, d.down(ctx, r) })
	})
	mux.HandleFunc("POST /v1/adjust", d.handleAdjust) // adjust.go
	d.clusterRoutes(mux)                              // clusterapi.go
	d.fenceLogRoute(mux)                              // fencelog.go
	return mux
}

var errBadRequest = errors.New("bad request")

// Status is the node's status, as GET /v1/status returns it.
func (d *Daemon) Status() NodeStatus {
	ns := NodeStatus{Cluster: d.cfg.Cluster, Node: d.node.Name, Witness: len(d.resourceList()) == 0,
		Version: d.opts.Version, PID: os.Getpid(), Resources: []ResourceStatus{}, ClusterLayer: d.clusterStatus(),
		Authority: d.authorityStatus()}
	ns.Nodes = d.softStates()
	ns.Alerts = []AlertStatus{}
	for _, a := range d.alertRunners() {
		ns.Alerts = append(ns.Alerts, a.status())
	}
	for _, r := range d.resourceList() {
		ns.Resources = append(ns.Resources, r.status(d.node.Name))
	}
	return ns
}

func (r *resource) status(node string) ResourceStatus {
	rs := ResourceStatus{NBDListen: r.rp.NBDListen}
	r.mu.Lock()
	v, downErr := r.vol, r.downErr
	r.mu.Unlock()
	if v == nil {
		rs.Status = replicate.Status{
			Resource: r.cfg.Name, Node: node, Peer: r.peer.Node,
			Role: replicate.Secondary, Disk: replicate.Diskless, Conn: replicate.StandAlone,
			PeerRole: replicate.RoleUnknown, PeerDisk: replicate.DiskUnknown,
			Protocol: string(r.cfg.Protocol), Size: r.cfg.Size,
		}
		if downErr != nil {
			rs.Error = downErr.Error()
			rs.Reason = rs.Error
		}
		return rs
	}
	rs.Status = v.Status()
	rs.Up = true
	rs.NBDServing = r.gate.primary.Load()
	return rs
}

func (d *Daemon) handleStatus(w http.ResponseWriter, req *http.Request) {
	ns := d.Status()
	if name := req.URL.Query().Get("resource"); name != "" {
		var one []ResourceStatus
		for _, rs := range ns.Resources {
			if rs.Resource == name {
				one = append(one, rs)
			}
		}
		if one == nil {
			writeError(w, d.unknown(name))
			return
		}
		ns.Resources = one
	}
	writeJSON(w, http.StatusOK, ns)
}

func (d *Daemon) unknown(name string) error {
	var names []string
	for _, r := range d.resourceList() {
		names = append(names, r.cfg.Name)
	}
	return fmt.Errorf("%w %q on node %s (resources here: %v)", ErrUnknownResource, name, d.node.Name, names)
}

// find returns the resource called name, up or down.
func (d *Daemon) find(name string) (*resource, error) {
	if d.isStopping() {
		return nil, ErrShuttingDown
	}
	for _, r := range d.resourceList() {
		if r.cfg.Name == name {
			return r, nil
		}
	}
	return nil, d.unknown(name)
}

// op decodes the body into in (nil: none expected), runs fn on the named
// resource, which must be up, with its volume, and writes its result or
// refusal. A down that follows closes the volume under fn: its
// operations then fail with replicate.ErrClosed.
func (d *Daemon) op(w http.ResponseWriter, req *http.Request, in any, fn func(context.Context, *resource, Volume) (any, error)) {
	if in != nil {
		dec := json.NewDecoder(io.LimitReader(req.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(in); err != nil && !errors.Is(err, io.EOF) {
			writeError(w, fmt.Errorf("%w: %v", errBadRequest, err))
			return
		}
	}
	r, err := d.find(req.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	v, err := r.upVolume()
	if err != nil {
		writeError(w, err)
		return
	}
	d.run(w, req, r, in, func(ctx context.Context, r *resource) (any, error) { return fn(ctx, r, v) })
}

// opAny is op for a resource in any state, without a body.
func (d *Daemon) opAny(w http.ResponseWriter, req *http.Request, fn func(context.Context, *resource) (any, error)) {
	r, err := d.find(req.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	d.run(w, req, r, nil, fn)
}

// run runs fn with a context that ends when the client goes away or the
// daemon stops, and writes its result or refusal.
func (d *Daemon) run(w http.ResponseWriter, req *http.Request, r *resource, in any, fn func(context.Context, *resource) (any, error)) {
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	stop := context.AfterFunc(d.opCtx, cancel)
	defer stop()
	op := req.URL.Path[len("/v1/resources/"+r.cfg.Name+"/"):]
	log := d.log.With("resource", r.cfg.Name, "op", op)
	log.Info("admin request", "body", in)
	out, err := fn(ctx, r)
	d.noteAdmin(req.Context(), op, r.cfg.Name, "", in, out, err)
	if err != nil {
		log.Warn("admin request refused", "err", err)
		writeError(w, err)
		return
	}
	log.Info("admin request done", "result", out)
	writeJSON(w, http.StatusOK, out)
}

func (d *Daemon) promote(ctx context.Context, r *resource, force bool) (replicate.PromoteResult, error) {
	if d.cl.Load() != nil {
		return d.clusterPromote(ctx, r, force)
	}
	r.roleMu.Lock()
	defer r.roleMu.Unlock()
	v, err := r.upVolume()
	if err != nil {
		return replicate.PromoteResult{}, err
	}
	res, err := v.Promote(ctx, force)
	if err != nil {
		return res, err
	}
	r.gate.primary.Store(true)
	if res.Discarded != "" {
		d.log.Warn("forced promotion discarded data", "resource", r.cfg.Name, "discarded", res.Discarded, "epoch", res.Epoch)
	}
	d.log.Info("promoted: nbd export serving", "resource", r.cfg.Name, "epoch", res.Epoch, "nbd_listen", r.rp.NBDListen)
	return res, nil
}

// demote closes the gate first, so no new request reaches a volume that is
// about to refuse it, then lets the volume flush and step down.
func (d *Daemon) demote(ctx context.Context, r *resource) error {
	if d.cl.Load() != nil {
		return d.clusterDemote(ctx, r)
	}
	r.roleMu.Lock()
	defer r.roleMu.Unlock()
	v, err := r.upVolume()
	if err != nil {
		return err
	}
	r.gate.primary.Store(false)
	if err := v.Demote(ctx); err != nil {
		r.gate.primary.Store(v.Status().Role == replicate.Primary)
		return err
	}
	d.log.Info("demoted: nbd export refuses I/O", "resource", r.cfg.Name)
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away
}

func writeError(w http.ResponseWriter, err error) {
	code, status := codeOf(err)
	if errors.Is(err, errBadRequest) {
		code, status = CodeBadRequest, http.StatusBadRequest
	}
	writeJSON(w, status, ErrorBody{Error: err.Error(), Code: code})
}
