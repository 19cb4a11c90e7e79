package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
)

// FenceLogRequest is the body of POST /v1/fence-log: a fencing action an
// admin ran by hand (`tandem fence off|on|reboot NODE`), which the CLI
// carries out itself (it must work with the daemon down) and then hands
// to the local daemon for the audit log and the event stream. A power
// change made by hand belongs in the same record as the cluster layer's
// own fencing.
type FenceLogRequest struct {
	Node   string `json:"node"`
	Action string `json:"action"`
	// Result is the fencing result as `tandem fence --json` prints it.
	Result json.RawMessage `json:"result,omitempty"`
	// Error is set when every level failed.
	Error string `json:"error,omitempty"`
}

// fenceLogActions are the actions worth an audit line: the ones that
// change a node's power. Status and test only look.
var fenceLogActions = []string{"off", "on", "reboot"}

func (d *Daemon) fenceLogRoute(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/fence-log", func(w http.ResponseWriter, req *http.Request) {
		var body FenceLogRequest
		dec := json.NewDecoder(io.LimitReader(req.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			writeError(w, fmt.Errorf("%w: fence-log: %v", errBadRequest, err))
			return
		}
		if body.Node == "" || !slices.Contains(fenceLogActions, body.Action) {
			writeError(w, fmt.Errorf("%w: fence-log needs a node and an action of %v", errBadRequest, fenceLogActions))
			return
		}
		if len(body.Result) > 0 && !json.Valid(body.Result) {
			writeError(w, fmt.Errorf("%w: fence-log: result is not JSON", errBadRequest))
			return
		}
		var err error
		if body.Error != "" {
			err = errors.New(body.Error)
		}
		var result any
		if len(body.Result) > 0 {
			result = body.Result
		}
		d.noteAdmin(req.Context(), "fence-"+body.Action, "", body.Node, nil, result, err)
		writeJSON(w, http.StatusOK, Done{true})
	})
}
