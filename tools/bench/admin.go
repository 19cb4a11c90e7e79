package main

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
	"time"
)

// The benchmark reads the daemons' state through the admin API's
// GET /v1/status, the reply `tandem status --json` prints, decoding only
// the documented keys it needs (docs/operations.md): polling through the
// socket costs far less than running the CLI every few milliseconds while
// a resync is timed. Everything that changes state goes through the CLI,
// as an operator would type it (see pair.go).

// resStatus is one entry of the status reply's resources[].
type resStatus struct {
	Resource   string    `json:"resource"`
	Up         bool      `json:"up"`
	Error      string    `json:"error"`
	Role       string    `json:"role"`
	Disk       string    `json:"disk"`
	Conn       string    `json:"connection"`
	Reason     string    `json:"reason"`
	PeerRole   string    `json:"peer_role"`
	PeerDisk   string    `json:"peer_disk"`
	OutOfSync  int64     `json:"out_of_sync_bytes"`
	NBDServing bool      `json:"nbd_serving"`
	Resync     *progress `json:"resync"`
	LastResync *progress `json:"last_resync"`
}

// progress is the status reply's resync (and last_resync) object.
type progress struct {
	Full       bool    `json:"full"`
	TotalBytes int64   `json:"total_bytes"`
	DoneBytes  int64   `json:"done_bytes"`
	SentBytes  int64   `json:"sent_bytes"`
	Rate       float64 `json:"rate_bytes_per_second"`
}

func (s resStatus) String() string {
	out := fmt.Sprintf("%s %s %s, peer %s/%s, out of sync %d", s.Role, s.Disk, s.Conn, s.PeerRole, s.PeerDisk, s.OutOfSync)
	if !s.Up {
		out += ", DOWN: " + s.Error
	}
	if s.Reason != "" {
		out += ", reason: " + s.Reason
	}
	return out
}

// inSync: both replicas UpToDate, connected, nothing left to resync.
func (s resStatus) inSync() bool {
	return s.Up && s.Conn == "Connected" && s.Disk == "UpToDate" && s.PeerDisk == "UpToDate" && s.OutOfSync == 0 && s.Resync == nil
}

// parseStatus picks resource out of a status reply.
func parseStatus(body []byte, resource string) (resStatus, error) {
	var ns struct {
		Resources []resStatus `json:"resources"`
	}
	if err := json.Unmarshal(body, &ns); err != nil {
		return resStatus{}, fmt.Errorf("bench: decoding the status reply: %w", err)
	}
	for _, r := range ns.Resources {
		if r.Resource == resource {
			return r, nil
		}
	}
	return resStatus{}, fmt.Errorf("bench: the status reply has no resource %q", resource)
}

// adminClient talks HTTP to one daemon's admin socket.
type adminClient struct {
	socket string
	hc     *http.Client
}

func newAdminClient(socket string) *adminClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 1,
	}
	return &adminClient{socket: socket, hc: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

func (c *adminClient) status(ctx context.Context, resource string) (resStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://tandem/v1/status?resource="+url.QueryEscape(resource), nil)
	if err != nil {
		return resStatus{}, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return resStatus{}, fmt.Errorf("bench: status on %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resStatus{}, fmt.Errorf("bench: status on %s: %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		return resStatus{}, fmt.Errorf("bench: status on %s: HTTP %d: %s", c.socket, resp.StatusCode, bytes.TrimSpace(body))
	}
	return parseStatus(body, resource)
}

func (c *adminClient) close() { c.hc.CloseIdleConnections() }

// errWaitTimeout: a state the benchmark waited for did not come.
var errWaitTimeout = errors.New("timed out")

// waitFor polls the status every interval until ok, for at most limit.
func (c *adminClient) waitFor(parent context.Context, resource, what string, limit, interval time.Duration, ok func(resStatus) bool) (resStatus, error) {
	ctx, cancel := context.WithTimeout(parent, limit)
	defer cancel()
	var last resStatus
	var lastErr error
	for {
		st, err := c.status(ctx, resource)
		if err == nil && ok(st) {
			return st, nil
		}
		if err == nil {
			last = st
		}
		lastErr = err
		select {
		case <-ctx.Done():
			if err := parent.Err(); err != nil {
				return last, fmt.Errorf("bench: waiting for %s: %w", what, err)
			}
			if lastErr != nil {
				return last, fmt.Errorf("bench: waiting for %s: %w (last error: %v)", what, errWaitTimeout, lastErr)
			}
			return last, fmt.Errorf("bench: waiting for %s: %w after %v (last status: %s)", what, errWaitTimeout, limit, last)
		case <-time.After(interval):
		}
	}
}
