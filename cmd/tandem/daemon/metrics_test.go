package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon/daemontest"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// scrape fetches addr's /metrics and parses it as Prometheus does.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("the scrape does not parse: %v", err)
	}
	return fams
}

// value is the value of the series of family name whose labels include
// want (nil when there is none).
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) *float64 {
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		var v float64
		switch {
		case m.Gauge != nil:
			v = m.GetGauge().GetValue()
		case m.Counter != nil:
			v = m.GetCounter().GetValue()
		default:
			v = m.GetUntyped().GetValue()
		}
		return &v
	}
	return nil
}

// The metrics say what the status says: a resource's role, disk and link
// state as one series per state, the events by kind; and the listener
// goes away with the daemon.
func TestMetricsFollowTheStatus(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	for i := range l.cfg.Nodes {
		if l.cfg.Nodes[i].Name == "alpha" {
			l.cfg.Nodes[i].MetricsListen = "127.0.0.1:0"
		}
	}
	d, fs, _ := l.start(t, "alpha")
	addr := d.MetricsAddr()
	if addr == "" {
		t.Fatal("no metrics listener")
	}
	check := func(fams map[string]*dto.MetricFamily, name string, labels map[string]string, want float64) {
		t.Helper()
		if v := value(fams, name, labels); v == nil || *v != want {
			t.Errorf("%s%v = %v, want %v", name, labels, v, want)
		}
	}
	fams := scrape(t, addr)
	check(fams, "tandem_build_info", map[string]string{"version": "test", "node": "alpha"}, 1)
	check(fams, "tandem_resource_up", map[string]string{"resource": "r0"}, 1)
	check(fams, "tandem_resource_role", map[string]string{"resource": "r0", "role": "Secondary"}, 1)
	check(fams, "tandem_resource_role", map[string]string{"resource": "r0", "role": "Primary"}, 0)
	check(fams, "tandem_resource_disk_state", map[string]string{"resource": "r0", "state": "UpToDate"}, 1)
	check(fams, "tandem_resource_disk_state", map[string]string{"resource": "r0", "state": "Failed"}, 0)
	check(fams, "tandem_resource_epoch", map[string]string{"resource": "r0"}, 7)
	check(fams, "tandem_resource_size_bytes", map[string]string{"resource": "r0"}, labSize)
	check(fams, "tandem_events_total", map[string]string{"kind": "daemon"}, 1)
	if fams["go_goroutines"] == nil || fams["process_open_fds"] == nil {
		t.Error("no Go or process metrics")
	}
	if fams["tandem_cluster_quorum"] != nil {
		t.Error("a quorum metric with manual roles")
	}

	if _, err := l.client("alpha").Promote(t.Context(), "r0", false); err != nil {
		t.Fatal(err)
	}
	fs.Get("r0").Set(func(v *daemontest.Volume) { v.Conn = replicate.Connected })
	fams = scrape(t, addr)
	check(fams, "tandem_resource_role", map[string]string{"resource": "r0", "role": "Primary"}, 1)
	check(fams, "tandem_resource_role", map[string]string{"resource": "r0", "role": "Secondary"}, 0)
	check(fams, "tandem_resource_connection_state", map[string]string{"resource": "r0", "state": "Connected"}, 1)
	check(fams, "tandem_resource_connection_state", map[string]string{"resource": "r0", "state": "Connecting"}, 0)
	check(fams, "tandem_events_total", map[string]string{"kind": "admin"}, 1)

	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + addr + "/metrics"); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("the metrics listener outlived the daemon: %v", err)
	}
}

// With metrics-tls and a ca, only a scraper with a certificate from that
// CA gets the metrics (over TLS); a plain HTTP request, a TLS client
// without a certificate and one with a certificate from another CA are
// refused. A certificate renewed on disk is served without a restart.
func TestMetricsOverTLSWithClientCertificates(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	testenv.WriteCA(t, l.dir, "m", "alpha", "prometheus")
	testenv.WriteCA(t, l.dir, "other", "prometheus")
	for i := range l.cfg.Nodes {
		if l.cfg.Nodes[i].Name == "alpha" {
			l.cfg.Nodes[i].MetricsListen = "127.0.0.1:0"
			l.cfg.Nodes[i].MetricsTLS = &config.TLS{Cert: filepath.Join(l.dir, "m-alpha.pem"), Key: filepath.Join(l.dir, "m-alpha-key.pem"), CA: filepath.Join(l.dir, "m-ca.pem")}
		}
	}
	d, _, _ := l.start(t, "alpha")
	addr := d.MetricsAddr()
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(l.dir, "m-ca.pem"))
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("reading the test CA", err)
	}
	client := func(ca string) *http.Client {
		tc := &tls.Config{RootCAs: pool, ServerName: "alpha"}
		if ca != "" {
			c, err := tls.LoadX509KeyPair(filepath.Join(l.dir, ca+"-prometheus.pem"), filepath.Join(l.dir, ca+"-prometheus-key.pem"))
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{c}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
	}
	get := func(c *http.Client, scheme string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, scheme+"://"+addr+"/metrics", nil)
		return c.Do(req)
	}
	resp, err := get(client("m"), "https")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape with the CA's client certificate: %v %v", resp, err)
	}
	first := resp.TLS.PeerCertificates[0].Raw
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "tandem_resource_up") {
		t.Fatalf("the scrape has no tandem metrics:\n%.300s", body)
	}
	for what, try := range map[string]func() (*http.Response, error){
		"plain HTTP":               func() (*http.Response, error) { return get(http.DefaultClient, "http") },
		"no client certificate":    func() (*http.Response, error) { return get(client(""), "https") },
		"another CA's certificate": func() (*http.Response, error) { return get(client("other"), "https") },
	} {
		if resp, err := try(); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(b), "tandem_resource_up") {
				t.Errorf("%s got the metrics", what)
			}
		}
	}
	// Renewed in place (a later modification time): the next handshake
	// presents the new certificate.
	testenv.WriteCA(t, l.dir, "m", "alpha", "prometheus")
	later := time.Now().Add(2 * time.Second)
	for _, f := range []string{"m-alpha.pem", "m-alpha-key.pem", "m-ca.pem"} {
		if err := os.Chtimes(filepath.Join(l.dir, f), later, later); err != nil {
			t.Fatal(err)
		}
	}
	caPEM, _ = os.ReadFile(filepath.Join(l.dir, "m-ca.pem"))
	pool = x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	resp, err = get(client("m"), "https")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape after the renewal: %v %v", resp, err)
	}
	resp.Body.Close()
	if bytes.Equal(resp.TLS.PeerCertificates[0].Raw, first) {
		t.Fatal("the renewed certificate is not served")
	}
}
