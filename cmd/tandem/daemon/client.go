package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"

	"github.com/tandem-ha/tandem/replicate"
)

// Client talks to a daemon's admin API.
type Client struct {
	socket string
	node   string
	hc     *http.Client
}

// ErrNotRunning: no daemon answers on the admin socket.
var ErrNotRunning = errors.New("tandem daemon is not running")

// APIError is a refusal from the daemon.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Is lets callers branch on the volume's sentinels through the API.
func (e *APIError) Is(target error) bool {
	for _, c := range errorCodes() {
		if e.Code == c.code && target == c.err {
			return true
		}
	}
	return false
}

// NewClient returns a client of the daemon of node on socket. Requests
// carry no timeout of their own (a verify takes as long as the device);
// the caller's context bounds them.
func NewClient(socket, node string) *Client {
	var dialer net.Dialer
	return &Client{socket: socket, node: node, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}}
}

// Status returns the node's status; resource "" for all.
func (c *Client) Status(ctx context.Context, resource string) (NodeStatus, error) {
	var ns NodeStatus
	path := "/v1/status"
	if resource != "" {
		path += "?resource=" + url.QueryEscape(resource)
	}
	err := c.do(ctx, http.MethodGet, path, nil, &ns)
	return ns, err
}

// Promote makes the resource Primary here.
func (c *Client) Promote(ctx context.Context, resource string, force bool) (replicate.PromoteResult, error) {
	var out replicate.PromoteResult
	err := c.do(ctx, http.MethodPost, opPath(resource, "promote"), PromoteRequest{Force: force}, &out)
	return out, err
}

// Demote makes the resource Secondary here.
func (c *Client) Demote(ctx context.Context, resource string) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "demote"), struct{}{}, &Done{})
}

// Connect starts connecting to the peer.
// Adjust makes the daemon re-read its configuration file and apply it.
func (c *Client) Adjust(ctx context.Context, dryRun bool) (AdjustResult, error) {
	var out AdjustResult
	err := c.do(ctx, http.MethodPost, "/v1/adjust", AdjustRequest{DryRun: dryRun}, &out)
	return out, err
}

// PauseSync holds the resyncs this node is the source of.
func (c *Client) PauseSync(ctx context.Context, resource string) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "pause-sync"), struct{}{}, &Done{})
}

// ResumeSync lets paused resyncs go on.
func (c *Client) ResumeSync(ctx context.Context, resource string) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "resume-sync"), struct{}{}, &Done{})
}

func (c *Client) Connect(ctx context.Context, resource string) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "connect"), struct{}{}, &Done{})
}

// Disconnect drops the replication link and stays StandAlone.
func (c *Client) Disconnect(ctx context.Context, resource string) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "disconnect"), struct{}{}, &Done{})
}

// PeerFenced tells the daemon that the resource's peer is confirmed off:
// its replication session, if still up, ends now.
func (c *Client) PeerFenced(ctx context.Context, resource string) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "peer-fenced"), struct{}{}, &Done{})
}

// FenceLog hands a fencing action run by hand to the daemon's audit log.
func (c *Client) FenceLog(ctx context.Context, req FenceLogRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/fence-log", req, &Done{})
}

// Resync makes this side the sync target.
func (c *Client) Resync(ctx context.Context, resource string, full bool) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "resync"), ResyncRequest{Full: full}, &Done{})
}

// Verify compares both replicas online.
func (c *Client) Verify(ctx context.Context, resource string, repair bool) (replicate.VerifyReport, error) {
	var out replicate.VerifyReport
	err := c.do(ctx, http.MethodPost, opPath(resource, "verify"), VerifyRequest{Repair: repair}, &out)
	return out, err
}

// AttachDisk gives the resource's volume the new disk at its configured
// paths in place of the failed one (force: over other tandem metadata).
func (c *Client) AttachDisk(ctx context.Context, resource string, force bool) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "attach-disk"), AttachDiskRequest{Force: force}, &Done{})
}

// Resize grows the resource to the size its configuration file says now.
func (c *Client) Resize(ctx context.Context, resource string, req ResizeRequest) (ResizeResult, error) {
	var out ResizeResult
	err := c.do(ctx, http.MethodPost, opPath(resource, "resize"), req, &out)
	return out, err
}

// Outdate marks this node's replica Outdated.
func (c *Client) Outdate(ctx context.Context, resource string) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "outdate"), nil, &Done{})
}

// Resolve ends a split brain, discarding this node's changes.
func (c *Client) Resolve(ctx context.Context, resource string, discardMyData bool) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "resolve"), ResolveRequest{DiscardMyData: discardMyData}, &Done{})
}

// Up opens a resource that is down on this node.
func (c *Client) Up(ctx context.Context, resource string) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "up"), struct{}{}, &Done{})
}

// Down closes a Secondary resource on this node and releases its devices.
func (c *Client) Down(ctx context.Context, resource string) error {
	return c.do(ctx, http.MethodPost, opPath(resource, "down"), struct{}{}, &Done{})
}

func opPath(resource, op string) string {
	return "/v1/resources/" + url.PathEscape(resource) + "/" + op
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://tandem"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.dialError(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the daemon's reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return apiError(resp, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decoding the daemon's reply: %w", err)
	}
	return nil
}

// dialError says what a failed connection to the socket means.
func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w for node %s (nothing listens on %s): start it with tandem daemon --node %s", ErrNotRunning, c.node, c.socket, c.node)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("admin socket %s: permission denied: the admin API is root-only, run as root: %w", c.socket, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("talking to the tandem daemon on %s: %w", c.socket, err)
}

// apiError is the refusal in a reply that is not 200 OK.
func apiError(resp *http.Response, b []byte) *APIError {
	var eb ErrorBody
	if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
		return &APIError{Status: resp.StatusCode, Code: CodeInternal, Message: fmt.Sprintf("daemon replied %s: %s", resp.Status, bytes.TrimSpace(b))}
	}
	return &APIError{Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
}
