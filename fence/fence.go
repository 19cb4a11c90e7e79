// Package fence is tandem's STONITH: it makes sure a node that the cluster
// has given up on can no longer write, by switching it off through its BMC
// (IPMI over LAN), through any fence-agents compatible program (fence_ipmilan,
// fence_virsh, fence_aws, a site script), or, when every device fails, by an
// operator's recorded confirmation that the node is off.
//
// Every method answers the same four requests (status, off, on, reboot), each
// bounded by its own timeout and the caller's context. Off is the one that
// matters for safety, and it succeeds only when the device confirms that the
// node is off: a BMC that accepts the command but keeps reporting "on" has
// not fenced anything. A Fencer tries a node's methods (levels) in order and
// returns every attempt, so the caller and the operator see what happened.
package fence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Sentinel errors callers branch on; every error of this package that means
// one of these wraps it.
var (
	// ErrNotConfirmed: the device accepted the power-off but did not report
	// the node off before the timeout (or its status could no longer be
	// read). The node must be treated as running.
	ErrNotConfirmed = errors.New("power-off not confirmed")
	// ErrAuth: the device refused the credentials. Retrying cannot help.
	ErrAuth = errors.New("authentication failed")
	// ErrUnreachable: the device did not answer before the timeout.
	ErrUnreachable = errors.New("device unreachable")
	// ErrUnsupported: the method cannot do this action (manual fencing has
	// no power status and cannot power a node on).
	ErrUnsupported = errors.New("not supported by this method")
	// ErrNoConfirmation: a manual level found no operator confirmation
	// newer than the fencing request.
	ErrNoConfirmation = errors.New("no manual confirmation")
	// ErrAgent: an external agent exited with a failure status.
	ErrAgent = errors.New("fence agent failed")
	// ErrNoLevels: the node has no fencing configured.
	ErrNoLevels = errors.New("no fencing levels configured")
	// ErrAllFailed: every level was tried and none succeeded.
	ErrAllFailed = errors.New("every fencing level failed")
)

// State is a node's power state as a device reports it.
type State int

const (
	StateUnknown State = iota
	StateOn
	StateOff
)

func (s State) String() string {
	switch s {
	case StateOn:
		return "on"
	case StateOff:
		return "off"
	}
	return "unknown"
}

// MarshalText makes a State read "on", "off" or "unknown" in JSON.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Action is what is asked of a device, with the fence-agents names.
type Action string

const (
	ActionStatus Action = "status"
	ActionOff    Action = "off"
	ActionOn     Action = "on"
	ActionReboot Action = "reboot"
)

// Request carries what an off or reboot must know besides the device.
type Request struct {
	// Since is when the need to fence arose. A manual confirmation counts
	// only if it was recorded after Since, so a confirmation given for an
	// earlier failure cannot "fence" a node that has come back since. A
	// caller that retries a failed fencing passes the time of the first
	// request; zero means the start of this call.
	Since time.Time
}

// Method is one way of fencing one node. Every call is bounded by the
// method's own timeout as well as ctx, and opens (and closes) whatever
// connection it needs: nothing is kept between calls that could hang the
// next one.
type Method interface {
	// String names the method and its device for logs, e.g.
	// "ipmi 192.0.2.21:623" or "agent /usr/sbin/fence_virsh".
	String() string
	// Status reads the power state without changing it.
	Status(ctx context.Context) (State, error)
	// Off switches the node off and returns nil only once the device
	// confirms that it is off.
	Off(ctx context.Context, req Request) error
	// On switches the node on.
	On(ctx context.Context) error
	// Reboot switches the node off, and on again. It succeeds once off is
	// confirmed, as fence-agents do: the node is fenced even if it then
	// fails to come back (the error of that is a warning, see Warning).
	Reboot(ctx context.Context, req Request) error
}

// Warning is returned (wrapped) by a Reboot that fenced the node but could
// not power it on again: the fencing succeeded.
type Warning struct{ Err error }

func (w *Warning) Error() string { return "fenced, but: " + w.Err.Error() }
func (w *Warning) Unwrap() error { return w.Err }

// Clock is the time source, injected so tests can drive polling.
type Clock interface {
	Now() time.Time
	// After is time.After: the channel receives once d has passed.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// RealClock is the wall clock.
var RealClock Clock = realClock{}

// sleep waits d on clock, or until ctx ends (then it returns ctx's error).
func sleep(ctx context.Context, clock Clock, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-clock.After(d):
		return nil
	}
}

// Attempt is one try of one level.
type Attempt struct {
	Level    int           `json:"level"` // 1-based position in the node's list
	Method   string        `json:"method"`
	Action   Action        `json:"action"`
	OK       bool          `json:"ok"`
	State    State         `json:"state"`
	Duration time.Duration `json:"-"`
	Seconds  float64       `json:"seconds"`
	Error    string        `json:"error,omitempty"`
	// Note explains an OK attempt that did not do everything: a reboot
	// whose power-on failed, a manual level that has nothing to test.
	Note string `json:"note,omitempty"`

	err error
}

// Err is the attempt's error, nil when OK.
func (a *Attempt) Err() error { return a.err }

// Result is what a Fencer did for one request.
type Result struct {
	Node   string `json:"node"`
	Action Action `json:"action"`
	OK     bool   `json:"ok"`
	// State is the node's power state as last confirmed: off after a
	// successful off or reboot, what the answering level said for status.
	State State `json:"state"`
	// Method is the level that succeeded ("" if none).
	Method   string        `json:"method,omitempty"`
	Level    int           `json:"level,omitempty"`
	Attempts []Attempt     `json:"attempts"`
	Duration time.Duration `json:"-"`
	Seconds  float64       `json:"seconds"`
}

// MarshalJSON is the default encoding, with Seconds filled in from Duration.
func (r *Result) MarshalJSON() ([]byte, error) {
	type plain Result
	c := plain(*r)
	c.Seconds = r.Duration.Seconds()
	c.Attempts = make([]Attempt, len(r.Attempts))
	for i, a := range r.Attempts {
		a.Seconds = a.Duration.Seconds()
		c.Attempts[i] = a
	}
	return json.Marshal(c)
}

// Fencer fences one node through its levels, in order. It keeps no state
// between calls and is safe for concurrent use (two concurrent Offs both
// send the power-off, which is harmless), as are the methods.
type Fencer struct {
	node   string
	levels []Method
	log    *slog.Logger
	clock  Clock
}

// Options of a Fencer; the zero value logs nowhere and uses the wall clock.
type Options struct {
	Log   *slog.Logger
	Clock Clock
}

// New returns a Fencer for node with its levels, tried first to last.
func New(node string, levels []Method, opts Options) *Fencer {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = RealClock
	}
	return &Fencer{node: node, levels: levels, log: opts.Log, clock: opts.Clock}
}

// Node is the node this Fencer fences.
func (f *Fencer) Node() string { return f.node }

// Levels returns the names of the levels, in order.
func (f *Fencer) Levels() []string {
	out := make([]string, len(f.levels))
	for i, m := range f.levels {
		out[i] = m.String()
	}
	return out
}

// Off switches the node off through the first level that confirms it. The
// Result lists every attempt; the error wraps ErrAllFailed and each level's
// error when none succeeded.
func (f *Fencer) Off(ctx context.Context, req Request) (*Result, error) {
	return f.run(ctx, ActionOff, req)
}

// Reboot is Off followed by a power-on, level by level: the first level that
// confirms off wins, even if the power-on then fails (see Warning).
func (f *Fencer) Reboot(ctx context.Context, req Request) (*Result, error) {
	return f.run(ctx, ActionReboot, req)
}

// On switches the node on through the first level that manages to.
func (f *Fencer) On(ctx context.Context) (*Result, error) {
	return f.run(ctx, ActionOn, Request{})
}

// Status asks the levels in order; the first that answers gives the state.
func (f *Fencer) Status(ctx context.Context) (*Result, error) {
	return f.run(ctx, ActionStatus, Request{})
}

// Test asks every level for the status (nothing is switched), to check
// credentials and reachability of each device. OK means every level that can
// report a status did; a manual level has nothing to reach and is noted.
func (f *Fencer) Test(ctx context.Context) (*Result, error) {
	start := f.clock.Now()
	res := &Result{Node: f.node, Action: ActionStatus, OK: len(f.levels) > 0}
	var errs []error
	for i, m := range f.levels {
		a := f.attempt(ctx, i, m, ActionStatus, Request{})
		if errors.Is(a.err, ErrUnsupported) {
			a.OK, a.Error, a.err = true, "", nil
			a.Note = "nothing to test: manual confirmation has no device"
		}
		if !a.OK {
			res.OK = false
			errs = append(errs, fmt.Errorf("level %d (%s): %w", i+1, m, a.err))
		} else if res.State == StateUnknown {
			res.State = a.State
		}
		res.Attempts = append(res.Attempts, a)
	}
	res.Duration = f.clock.Now().Sub(start)
	if len(f.levels) == 0 {
		return res, fmt.Errorf("fence: %s: %w", f.node, ErrNoLevels)
	}
	if !res.OK {
		return res, fmt.Errorf("fence: test %s: %w", f.node, errors.Join(errs...))
	}
	return res, nil
}

func (f *Fencer) run(ctx context.Context, action Action, req Request) (*Result, error) {
	start := f.clock.Now()
	if req.Since.IsZero() {
		req.Since = start
	}
	res := &Result{Node: f.node, Action: action}
	if len(f.levels) == 0 {
		return res, fmt.Errorf("fence: %s %s: %w", action, f.node, ErrNoLevels)
	}
	errs := []error{ErrAllFailed}
	for i, m := range f.levels {
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("levels %d and after not tried: %w", i+1, context.Cause(ctx)))
			break
		}
		a := f.attempt(ctx, i, m, action, req)
		res.Attempts = append(res.Attempts, a)
		if a.OK {
			res.OK, res.State, res.Method, res.Level = true, a.State, a.Method, a.Level
			break
		}
		errs = append(errs, fmt.Errorf("level %d (%s): %w", i+1, m, a.err))
	}
	res.Duration = f.clock.Now().Sub(start)
	if !res.OK {
		err := fmt.Errorf("fence: %s %s: %w", action, f.node, errors.Join(errs...))
		f.log.Error("fencing failed", "node", f.node, "action", action, "levels", len(res.Attempts), "duration", res.Duration, "error", err)
		return res, err
	}
	f.log.Info("fencing done", "node", f.node, "action", action, "state", res.State, "method", res.Method, "level", res.Level, "duration", res.Duration)
	return res, nil
}

// attempt runs one action on one level and logs it.
func (f *Fencer) attempt(ctx context.Context, i int, m Method, action Action, req Request) Attempt {
	a := Attempt{Level: i + 1, Method: m.String(), Action: action}
	start := f.clock.Now()
	var err error
	switch action {
	case ActionStatus:
		a.State, err = m.Status(ctx)
	case ActionOff:
		if err = m.Off(ctx, req); err == nil {
			a.State = StateOff
		}
	case ActionReboot:
		err = m.Reboot(ctx, req)
		var w *Warning
		if errors.As(err, &w) {
			a.Note, err = w.Error(), nil
		}
		if err == nil {
			// Off was confirmed; whether the node came back is not known
			// from here, so the state reported is the one confirmed.
			a.State = StateOff
		}
	case ActionOn:
		if err = m.On(ctx); err == nil {
			a.State = StateOn
		}
	default:
		err = fmt.Errorf("unknown action %q", action)
	}
	a.Duration = f.clock.Now().Sub(start)
	a.OK = err == nil
	a.err = err
	if err != nil {
		a.Error = err.Error()
	}
	attrs := []any{"node", f.node, "level", a.Level, "method", a.Method, "action", action, "ok", a.OK, "duration", a.Duration}
	if action == ActionStatus && a.OK {
		attrs = append(attrs, "state", a.State)
	}
	if a.Note != "" {
		attrs = append(attrs, "note", a.Note)
	}
	switch {
	case errors.Is(err, ErrUnsupported):
		// Manual has no status: expected, not a failure to report.
		f.log.Debug("fence attempt not supported", append(attrs, "error", err)...)
	case err != nil:
		f.log.Warn("fence attempt failed", append(attrs, "error", err)...)
	default:
		f.log.Info("fence attempt", attrs...)
	}
	return a
}
