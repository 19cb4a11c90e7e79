package authority

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/raft"
	"github.com/tandem-ha/tandem/cluster"
)

// A follower forwards a proposal to the leader over an authenticated
// connection to the leader's authority port: one request, one response,
// JSON. The leader appends it as its own and answers with the outcome.

// maxForward bounds a request or a response (a record with many resources
// is still far smaller).
const maxForward = 4 << 20

// maxForwardWait bounds how long a leader works on one forwarded proposal.
const maxForwardWait = time.Minute

type forwardRequest struct {
	// Cmd is the command to propose; none asks for a confirmed read.
	Cmd json.RawMessage `json:"cmd,omitempty"`
	// TimeoutMS is what is left of the proposer's deadline.
	TimeoutMS int64 `json:"timeout_ms"`
}

type forwardResponse struct {
	Index  uint64          `json:"index,omitempty"`
	Record json.RawMessage `json:"record,omitempty"`
	// Refused: cluster.Apply refused the command (Code, Error say why);
	// otherwise Code, Error are the log's failure.
	Refused bool   `json:"refused,omitempty"`
	Code    string `json:"code,omitempty"`
	Error   string `json:"error,omitempty"`
}

// sentinels are the errors a forwarded outcome keeps for errors.Is.
var sentinels = []struct {
	code string
	err  error
}{
	{"not-leader", errNotLeader},
	{"no-quorum", ErrNoQuorum},
	{"outcome-unknown", ErrOutcomeUnknown},
	{"closed", ErrClosed},
	{"version", cluster.ErrVersion},
	{"bad-command", cluster.ErrBadCommand},
	{"unknown-resource", cluster.ErrUnknownResource},
	{"no-replica", cluster.ErrNoReplica},
	{"stale-epoch", cluster.ErrStaleEpoch},
	{"not-primary", cluster.ErrNotPrimary},
	{"not-uptodate", cluster.ErrNotUpToDate},
	{"not-fenced", cluster.ErrNotFenced},
	{"standby", cluster.ErrStandby},
	{"held", cluster.ErrHeld},
	{"seq-mismatch", cluster.ErrSeqMismatch},
	{"not-allowed", cluster.ErrNotAllowed},
}

func errCode(err error) string {
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			return s.code
		}
	}
	return ""
}

// remoteError is an error that happened on the leader: its text, and the
// sentinel it wrapped there.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

func decodeError(code, msg string) error {
	for _, s := range sentinels {
		if s.code == code {
			return &remoteError{msg: msg, sentinel: s.err}
		}
	}
	return errors.New(msg)
}

// forward sends b (nil: a read) to the leader named leader.
func (a *Authority) forward(ctx context.Context, leader string, b []byte) (applyResult, uint64, error) {
	v, ok := a.cfg.voter(leader)
	if !ok {
		return applyResult{}, 0, fmt.Errorf("authority: the leader %q is not a configured voter", leader)
	}
	dl, _ := ctx.Deadline()
	conn, err := a.stream.dial(v.Addr, min(time.Until(dl), rpcTimeout), purposeForward)
	if err != nil {
		// Not sent: the leader may be dying; look again.
		a.log.Debug("authority: forwarding to the leader failed", "leader", leader, "err", err)
		return applyResult{}, 0, errNotLeader
	}
	defer conn.Close()
	conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	req := forwardRequest{Cmd: b, TimeoutMS: time.Until(dl).Milliseconds()}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return applyResult{}, 0, fmt.Errorf("%w: forwarding to %s: %w", ErrOutcomeUnknown, leader, err)
	}
	var resp forwardResponse
	if err := json.NewDecoder(io.LimitReader(conn, maxForward)).Decode(&resp); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return applyResult{}, 0, fmt.Errorf("%w: forwarded to %s: %w", ErrOutcomeUnknown, leader, err)
	}
	if !resp.Refused && (resp.Code != "" || resp.Error != "") {
		return applyResult{}, 0, decodeError(resp.Code, fmt.Sprintf("authority: leader %s: %s", leader, resp.Error))
	}
	rec, err := cluster.UnmarshalRecord(resp.Record)
	if err != nil {
		return applyResult{}, 0, fmt.Errorf("authority: the answer of leader %s: %w", leader, err)
	}
	res := applyResult{rec: rec}
	if resp.Refused {
		res.err = decodeError(resp.Code, resp.Error)
	}
	return res, resp.Index, nil
}

// serveForward answers one forwarded proposal on an authenticated
// connection.
func (a *Authority) serveForward(conn net.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	var req forwardRequest
	if err := json.NewDecoder(io.LimitReader(conn, maxForward)).Decode(&req); err != nil {
		a.log.Warn("authority: bad forwarded proposal", "remote", conn.RemoteAddr().String(), "err", err)
		return
	}
	wait := min(time.Duration(req.TimeoutMS)*time.Millisecond, maxForwardWait)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	go func() {
		select {
		case <-a.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	conn.SetDeadline(time.Now().Add(wait + time.Second))

	var resp forwardResponse
	read := len(req.Cmd) == 0
	if _, err := cluster.UnmarshalCommand(req.Cmd); err != nil && !read {
		resp.Code, resp.Error = errCode(err), err.Error()
	} else if a.raft.State() != raft.Leader {
		resp.Code, resp.Error = "not-leader", errNotLeader.Error()
	} else {
		var res applyResult
		var index uint64
		if read {
			res, index, err = a.readLocal(ctx)
		} else {
			res, index, err = a.applyLocal(ctx, req.Cmd)
		}
		if err != nil {
			resp.Code, resp.Error = errCode(err), err.Error()
		} else {
			resp.Index = index
			if resp.Record, err = res.rec.Marshal(); err != nil {
				resp.Code, resp.Error = "", err.Error()
			} else if res.err != nil {
				resp.Refused, resp.Code, resp.Error = true, errCode(res.err), res.err.Error()
			}
		}
	}
	if err := json.NewEncoder(conn).Encode(resp); err != nil {
		a.log.Warn("authority: answering a forwarded proposal", "remote", conn.RemoteAddr().String(), "err", err)
	}
}
