package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/fence"
)

// Alerts (config alerts[]): each configured program is run once per event
// of this node that it wants, in event order, one run at a time, by a
// runner that follows the event stream like a `tandem events` client. A
// slow program never holds the daemon up: the stream drops a runner that
// falls behind, and the runner picks up again from the ring after the
// last event it passed on; what the ring no longer holds reaches the
// program as one event of kind "gap" (whatever its kinds), so a missed
// split brain is at least a missed something.

// AlertVersion is TANDEM_ALERT_VERSION: it changes when the variables
// or the JSON line change meaning.
const AlertVersion = "1"

// alertPath is the PATH alert programs run with: the daemon's own
// environment is not theirs.
const alertPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

type alertRunner struct {
	cfg     config.Alert
	cluster string
	ev      *events
	log     *slog.Logger
	stop    chan struct{} // closed when the daemon stops: pass on what is left
	done    chan struct{}
	// until, once set (tandem adjust replaced the runner), is the last
	// event it passes on; its successor starts after it.
	until atomic.Uint64

	mu    sync.Mutex
	stats AlertStatus
}

// status is the runner's record for GET /v1/status.
func (r *alertRunner) status() AlertStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stats
	if f := st.LastFailure; f != nil {
		c := *f
		st.LastFailure = &c
	}
	return st
}

// record counts one run of the program for e; why is "" when it exited 0.
func (r *alertRunner) record(e Event, why string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Runs++
	if e.Kind == KindGap {
		if d, ok := e.Data.(map[string]uint64); ok {
			r.stats.LostEvents += d["lost"]
		}
	}
	if why != "" {
		r.stats.Failures++
		r.stats.LastFailure = &AlertFailure{Time: at, Seq: e.Seq, Kind: e.Kind, Error: why}
	}
}

func (d *Daemon) startAlerts() {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	d.alerts = d.newAlertRunners(d.cfg.Alerts, 0)
}

// newAlertRunners starts a runner per alert, each passing on the events
// after since (0: every event the ring holds).
func (d *Daemon) newAlertRunners(as []config.Alert, since uint64) []*alertRunner {
	var out []*alertRunner
	for _, a := range as {
		r := &alertRunner{cfg: a, cluster: d.cfg.Cluster, ev: d.events, stop: make(chan struct{}), done: make(chan struct{}),
			log: d.log.With("alert", a.Path, "recipient", a.Recipient), stats: AlertStatus{Path: a.Path, Recipient: a.Recipient}}
		out = append(out, r)
		go r.run(d.alertsCtx, since)
	}
	return out
}

// replaceAlerts retires the running alerts after the events published so
// far (they still pass those on) and starts as from the next one. The
// caller holds cfgMu.
func (d *Daemon) replaceAlerts(as []config.Alert) {
	last := d.events.lastSeq()
	for _, r := range d.alerts {
		r.until.Store(last)
		close(r.stop)
	}
	d.retiredAlerts = append(d.retiredAlerts, d.alerts...)
	d.alerts = d.newAlertRunners(as, last)
}

// stopAlerts lets each runner pass on the events published so far, until
// ctx ends; what is still waiting then is logged, not run.
func (d *Daemon) stopAlerts(ctx context.Context) {
	stop := context.AfterFunc(ctx, d.alertsCancel)
	defer stop()
	d.cfgMu.Lock()
	runners := d.alerts
	d.alerts = nil
	retired := d.retiredAlerts
	d.cfgMu.Unlock()
	for _, r := range runners {
		close(r.stop)
	}
	for _, r := range append(retired, runners...) {
		<-r.done
	}
	d.alertsCancel()
}

// alertRunners is the current runners.
func (d *Daemon) alertRunners() []*alertRunner {
	d.cfgMu.RLock()
	defer d.cfgMu.RUnlock()
	return d.alerts
}

func (r *alertRunner) run(ctx context.Context, since uint64) {
	defer close(r.done)
	last := since // the last event passed on
	for {
		backlog, lost, s := r.ev.subscribe(int64(last), subscriberBuffer)
		if !r.catchUp(ctx, &last, r.before(backlog), lost) {
			r.ev.unsubscribe(s)
			return
		}
		if u := r.until.Load(); u > 0 && last >= u {
			r.ev.unsubscribe(s) // retired, and all it owed is passed on
			return
		}
	follow:
		for {
			select {
			case e, ok := <-s.ch:
				if !ok {
					// Dropped for slowness: the ring has what follows last.
					break follow
				}
				if u := r.until.Load(); u > 0 && e.Seq > u {
					// Retired: the successor has this one.
					r.ev.unsubscribe(s)
					backlog, lost := r.ev.after(last)
					r.catchUp(ctx, &last, r.before(backlog), lost)
					return
				}
				if !r.pass(ctx, e) {
					r.ev.unsubscribe(s)
					return
				}
				last = e.Seq
			case <-r.stop:
				r.ev.unsubscribe(s)
				backlog, lost := r.ev.after(last)
				r.catchUp(ctx, &last, r.before(backlog), lost)
				return
			}
		}
	}
}

// before is what of backlog a retired runner still passes on.
func (r *alertRunner) before(backlog []Event) []Event {
	u := r.until.Load()
	if u == 0 {
		return backlog
	}
	for i, e := range backlog {
		if e.Seq > u {
			return backlog[:i]
		}
	}
	return backlog
}

// catchUp passes on a gap of lost events, then backlog; false once ctx
// ended (the rest is logged as not run).
func (r *alertRunner) catchUp(ctx context.Context, last *uint64, backlog []Event, lost uint64) bool {
	if lost > 0 {
		gap := Event{Seq: *last + lost, Time: r.ev.now(), Node: r.ev.node, Kind: KindGap,
			Text: fmt.Sprintf("%d events were not passed to this alert: it fell behind the %d the daemon keeps", lost, eventRing),
			Data: map[string]uint64{"lost": lost, "after": *last}}
		if !r.pass(ctx, gap) {
			return false
		}
	}
	for i, e := range backlog {
		if !r.pass(ctx, e) {
			r.log.Warn("alert: the daemon stopped before these events were passed on", "events", len(backlog)-i, "first_seq", e.Seq)
			return false
		}
		*last = e.Seq
	}
	return true
}

// pass runs the program for e if it wants e; false when ctx has ended.
func (r *alertRunner) pass(ctx context.Context, e Event) bool {
	if ctx.Err() != nil {
		return false
	}
	if e.Kind != KindGap && !r.cfg.Wants(e.Kind, e.Resource) {
		return true
	}
	rctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	pr, err := fence.RunProgram(rctx, r.cfg.Path, r.env(e), r.input(e))
	attrs := []any{"kind", e.Kind, "seq", e.Seq, "exit", pr.Code, "duration", pr.Took, "stdout", pr.Stdout, "stderr", pr.Stderr}
	why := ""
	switch {
	case ctx.Err() != nil:
		r.log.Warn("alert: killed, the daemon is stopping", attrs...)
		return false
	case rctx.Err() != nil:
		why = fmt.Sprintf("killed after the timeout (%v)", r.cfg.Timeout)
		r.log.Warn("alert: killed its process group after the timeout", append(attrs, "timeout", r.cfg.Timeout)...)
	case err != nil:
		why = fmt.Sprintf("did not run: %v", err)
		r.log.Warn("alert: the program did not run", append(attrs, "err", err)...)
	case pr.Code != 0:
		why = pr.Exit
		if why == "" {
			why = fmt.Sprintf("exit status %d", pr.Code)
		}
		r.log.Warn("alert: the program failed", append(attrs, "status", pr.Exit)...)
	default:
		r.log.Debug("alert: passed on", attrs...)
	}
	r.record(e, why, r.ev.now())
	return true
}

// env is the program's whole environment: the event, and a PATH.
func (r *alertRunner) env(e Event) []string {
	vars := []struct{ k, v string }{
		{"VERSION", AlertVersion},
		{"CLUSTER", r.cluster},
		{"NODE", e.Node},
		{"SEQ", strconv.FormatUint(e.Seq, 10)},
		{"TIME", e.Time.UTC().Format(time.RFC3339Nano)},
		{"KIND", e.Kind},
		{"RESOURCE", e.Resource},
		{"TARGET", e.Target},
		{"TEXT", e.Text},
		{"RECIPIENT", r.cfg.Recipient},
	}
	out := []string{"PATH=" + alertPath, "LC_ALL=C"}
	for _, kv := range vars {
		// exec refuses a variable with a NUL in it.
		out = append(out, "TANDEM_ALERT_"+kv.k+"="+strings.ReplaceAll(kv.v, "\x00", ""))
	}
	return out
}

// input is the event as `tandem events --json` prints it, one line.
func (r *alertRunner) input(e Event) string {
	b, err := json.Marshal(e)
	if err != nil {
		// Data is built by the daemon from plain values.
		return "{}\n"
	}
	return string(b) + "\n"
}
