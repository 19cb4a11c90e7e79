package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/replicate"
)

// Metrics (nodes[].metrics-listen): GET /metrics in the Prometheus text
// format, read-only, for the scrapers people already run next to DRBD
// (drbd-reactor's exporter) and Pacemaker (ha_cluster_exporter). Every
// value is read from the same snapshot `tandem status` prints, at scrape
// time, so the metrics never say something the status does not. The
// registry is the daemon's own: no global state.

// metricsServer serves /metrics on the node's metrics-listen address.
type metricsServer struct {
	l    net.Listener
	srv  *http.Server
	done chan struct{}
}

// startMetrics listens on addr and serves d's metrics there, over TLS
// when tc is set (metricstls.go).
func (d *Daemon) startMetrics(addr string, tc *config.TLS) error {
	var mt *metricsTLS
	if tc != nil {
		var err error
		if mt, err = newMetricsTLS(tc, d.log); err != nil {
			return err
		}
	}
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics-listen %s: %w", addr, err)
	}
	plain := l
	if mt != nil {
		l = tls.NewListener(l, mt.config())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&statusCollector{d: d})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn), Timeout: 10 * time.Second}))
	m := &metricsServer{l: l, done: make(chan struct{}),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)}}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics: stopped serving", "err", err)
		}
	}()
	d.metrics = m
	d.log.Info("metrics: serving", "addr", plain.Addr().String(), "tls", mt != nil, "client_certificates", tc != nil && tc.CA != "")
	return nil
}

// MetricsAddr is the metrics listener's address ("" without one).
func (d *Daemon) MetricsAddr() string {
	if d.metrics == nil {
		return ""
	}
	return d.metrics.l.Addr().String()
}

func (m *metricsServer) stop(ctx context.Context) {
	if err := m.srv.Shutdown(ctx); err != nil {
		m.srv.Close()
	}
	<-m.done
}

// The states a resource's state metrics list, one series each (1 for
// the current one), so that a query need not know which exist.
var (
	metricRoles = []replicate.Role{replicate.Primary, replicate.Secondary}
	metricDisks = []replicate.DiskState{replicate.UpToDate, replicate.Outdated, replicate.Inconsistent, replicate.Diskless,
		replicate.Failed, replicate.DiskUnknown}
	metricConns = []replicate.ConnState{replicate.StandAlone, replicate.Connecting, replicate.Disconnecting, replicate.Connected,
		replicate.SyncSource, replicate.SyncTarget, replicate.VerifySource, replicate.VerifyTarget}
)

var (
	mInfo = prometheus.NewDesc("tandem_build_info", "The daemon's version and node (always 1).",
		[]string{"version", "cluster", "node"}, nil)
	mUp = prometheus.NewDesc("tandem_resource_up", "1 when the resource is open on this node, 0 when it is down.",
		[]string{"resource"}, nil)
	mRole = prometheus.NewDesc("tandem_resource_role", "1 for this node's current role of the resource, 0 for the others.",
		[]string{"resource", "role"}, nil)
	mDisk = prometheus.NewDesc("tandem_resource_disk_state", "1 for the local replica's current disk state, 0 for the others.",
		[]string{"resource", "state"}, nil)
	mPeerDisk = prometheus.NewDesc("tandem_resource_peer_disk_state", "1 for the peer's disk state as last announced, 0 for the others.",
		[]string{"resource", "peer", "state"}, nil)
	mConn = prometheus.NewDesc("tandem_resource_connection_state", "1 for the replication link's current state, 0 for the others.",
		[]string{"resource", "state"}, nil)
	mOOS = prometheus.NewDesc("tandem_resource_out_of_sync_bytes", "Bytes the local bitmap marks as differing from the peer.",
		[]string{"resource"}, nil)
	mEpoch = prometheus.NewDesc("tandem_resource_epoch", "The resource's epoch as this node knows it.",
		[]string{"resource"}, nil)
	mSize = prometheus.NewDesc("tandem_resource_size_bytes", "The resource's data area here (larger after tandem resize).",
		[]string{"resource"}, nil)
	mSessions = prometheus.NewDesc("tandem_resource_sessions_total", "Replication sessions established since the resource opened.",
		[]string{"resource"}, nil)
	mRead = prometheus.NewDesc("tandem_resource_read_bytes_total", "Bytes the application read from the resource here since it opened.",
		[]string{"resource"}, nil)
	mWritten = prometheus.NewDesc("tandem_resource_written_bytes_total", "Bytes the application wrote (trims and zeroes included) since it opened.",
		[]string{"resource"}, nil)
	mSuspended = prometheus.NewDesc("tandem_resource_io_suspended", "1 while application I/O is held.",
		[]string{"resource"}, nil)
	mServing = prometheus.NewDesc("tandem_resource_nbd_serving", "1 while the NBD export passes I/O (this node is Primary).",
		[]string{"resource"}, nil)
	mSyncPaused = prometheus.NewDesc("tandem_resource_sync_paused", "1 while resyncs from this node are paused (pause-sync).",
		[]string{"resource"}, nil)
	mResyncLeft = prometheus.NewDesc("tandem_resource_resync_left_bytes", "Bytes a running resync still has to copy (absent when none runs).",
		[]string{"resource"}, nil)
	mResyncTotal = prometheus.NewDesc("tandem_resource_resync_total_bytes", "Bytes the running resync started with.",
		[]string{"resource"}, nil)
	mResyncRate = prometheus.NewDesc("tandem_resource_resync_rate_bytes_per_second", "The running resync's average rate.",
		[]string{"resource"}, nil)
	mAlertRuns = prometheus.NewDesc("tandem_alert_runs_total", "Runs of an alert program since the daemon started.",
		[]string{"path", "recipient"}, nil)
	mAlertFailures = prometheus.NewDesc("tandem_alert_failures_total", "Runs of an alert program that did not exit 0.",
		[]string{"path", "recipient"}, nil)
	mAlertLost = prometheus.NewDesc("tandem_alert_lost_events_total", "Events an alert program fell too far behind to get.",
		[]string{"path", "recipient"}, nil)
	mEvents = prometheus.NewDesc("tandem_events_total", "Events the daemon published since it started, by kind.",
		[]string{"kind"}, nil)
	mQuorum = prometheus.NewDesc("tandem_cluster_quorum", "1 while this node's cluster layer sees a quorum (absent with manual roles).",
		nil, nil)
	mMember = prometheus.NewDesc("tandem_cluster_member_state", "1 for each voter's current membership state as this node sees it, 0 for the others.",
		[]string{"member", "state"}, nil)
)

// statusCollector turns the daemon's status into metrics at each scrape.
type statusCollector struct{ d *Daemon }

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mInfo, mUp, mRole, mDisk, mPeerDisk, mConn, mOOS, mEpoch, mSize, mSessions, mRead, mWritten, mSuspended,
		mServing, mSyncPaused, mResyncLeft, mResyncTotal, mResyncRate, mAlertRuns, mAlertFailures, mAlertLost, mEvents,
		mQuorum, mMember} {
		ch <- d
	}
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	ns := c.d.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(mInfo, 1, ns.Version, ns.Cluster, ns.Node)
	for _, rs := range ns.Resources {
		r := rs.Resource
		gauge(mUp, b2f(rs.Up), r)
		for _, role := range metricRoles {
			gauge(mRole, b2f(rs.Up && rs.Role == role), r, string(role))
		}
		oneOf(gauge, mDisk, metricDisks, rs.Disk, r)
		oneOf(gauge, mPeerDisk, metricDisks, rs.PeerDisk, r, rs.Peer)
		oneOf(gauge, mConn, metricConns, rs.Conn, r)
		gauge(mOOS, float64(rs.OutOfSync), r)
		gauge(mEpoch, float64(rs.Epoch), r)
		gauge(mSize, float64(rs.Size), r)
		counter(mSessions, float64(rs.Session), r)
		counter(mRead, float64(rs.ReadBytes), r)
		counter(mWritten, float64(rs.WrittenBytes), r)
		gauge(mSuspended, b2f(rs.SuspendedIO), r)
		gauge(mServing, b2f(rs.NBDServing), r)
		gauge(mSyncPaused, b2f(rs.SyncPaused), r)
		if p := rs.Resync; p != nil {
			gauge(mResyncLeft, float64(p.LeftBytes), r)
			gauge(mResyncTotal, float64(p.TotalBytes), r)
			gauge(mResyncRate, p.Rate, r)
		}
	}
	for _, a := range ns.Alerts {
		counter(mAlertRuns, float64(a.Runs), a.Path, a.Recipient)
		counter(mAlertFailures, float64(a.Failures), a.Path, a.Recipient)
		counter(mAlertLost, float64(a.LostEvents), a.Path, a.Recipient)
	}
	for kind, n := range c.d.events.kindCounts() {
		counter(mEvents, float64(n), kind)
	}
	if cl := ns.ClusterLayer; cl != nil {
		gauge(mQuorum, b2f(cl.Quorum))
		states := []cluster.MemberState{cluster.MemberAlive, cluster.MemberSuspect, cluster.MemberDead}
		for member, st := range cl.Members {
			oneOf(gauge, mMember, states, st, member)
		}
	}
}

// oneOf emits one series per state in all, 1 for cur (a state outside
// all gets its own series, so that nothing is hidden).
func oneOf[S ~string](gauge func(*prometheus.Desc, float64, ...string), d *prometheus.Desc, all []S, cur S, labels ...string) {
	for _, s := range all {
		gauge(d, b2f(s == cur), append(slices.Clone(labels), string(s))...)
	}
	if !slices.Contains(all, cur) && cur != "" {
		gauge(d, 1, append(slices.Clone(labels), string(cur))...)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
