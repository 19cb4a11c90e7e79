package e2e_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// pair is a cluster of two data nodes (alpha, beta) and a witness on
// 127.0.0.1, each run as its own `tandem daemon` process, with one resource
// r0 whose replicas are sparse files with internal metadata.
type pair struct {
	t     *testing.T
	bin   string
	dir   string
	path  string // configuration file
	cfg   *config.Config
	size  int64
	nodes map[string]*node
	// metricsAddr is alpha's metrics-listen.
	metricsAddr string
}

type node struct {
	name    string
	nbdAddr string // host:port of its NBD listener
	device  string
	cfgPath string // its configuration (a test gives beta one with another secret)
	proc    *testenv.Proc
}

type pairOptions struct {
	protocol    string // A, B, C (default C)
	compression string // off, s2, zstd (default off)
	size        int64  // default 64 MiB
	maxRate     string // resync max-rate (default 100M)
}

func newPair(t *testing.T, o pairOptions) *pair {
	t.Helper()
	if o.protocol == "" {
		o.protocol = "C"
	}
	if o.size == 0 {
		o.size = 64 << 20
	}
	if o.maxRate == "" {
		o.maxRate = "100M"
	}
	if o.compression == "" {
		o.compression = "off"
	}
	dir := t.TempDir()
	p := &pair{t: t, bin: testenv.BuildTandem(t), dir: dir, path: filepath.Join(dir, "tandem.yaml"), size: o.size, nodes: map[string]*node{}}
	ports := map[string]int{}
	for _, k := range []string{"alpha-repl", "beta-repl", "alpha-nbd", "beta-nbd", "alpha-metrics"} {
		ports[k] = testenv.FreePort(t)
	}
	secret := filepath.Join(dir, "secret")
	writeFile(t, secret, "e2e-secret-0123456789abcdef\n", 0o600)
	yaml := fmt.Sprintf(`cluster: e2e
secret-file: %[1]s
nodes:
  - name: alpha
    address: 127.0.0.1
    admin-socket: %[2]s/alpha.sock
    data-dir: %[2]s/alpha
    metrics-listen: 127.0.0.1:%[11]d
  - name: beta
    address: 127.0.0.1
    admin-socket: %[2]s/beta.sock
    data-dir: %[2]s/beta
  - name: witness
    address: 127.0.0.1
    admin-socket: %[2]s/witness.sock
    data-dir: %[2]s/witness
resources:
  - name: r0
    size: %[3]d
    protocol: %[4]s
    compression: %[10]s
    resync:
      max-rate: %[5]s
    replicas:
      alpha:
        device: %[2]s/alpha.img
        address: 127.0.0.1:%[6]d
        nbd-listen: 127.0.0.1:%[7]d
      beta:
        device: %[2]s/beta.img
        address: 127.0.0.1:%[8]d
        nbd-listen: 127.0.0.1:%[9]d
`, secret, dir, o.size, o.protocol, o.maxRate, ports["alpha-repl"], ports["alpha-nbd"], ports["beta-repl"], ports["beta-nbd"], o.compression, ports["alpha-metrics"])
	writeFile(t, p.path, yaml, 0o644)
	cfg, err := config.Load(p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.cfg = cfg
	layout, err := daemon.Layout(cfg.Resource("r0"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alpha", "beta"} {
		dev := filepath.Join(dir, n+".img")
		f, err := os.Create(dev)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(o.size + layout.MetaSize()); err != nil {
			t.Fatal(err)
		}
		f.Close()
		p.nodes[n] = &node{name: n, device: dev, nbdAddr: fmt.Sprintf("127.0.0.1:%d", ports[n+"-nbd"]), cfgPath: p.path}
	}
	p.nodes["witness"] = &node{name: "witness", cfgPath: p.path}
	p.metricsAddr = fmt.Sprintf("127.0.0.1:%d", ports["alpha-metrics"])
	return p
}

func writeFile(t *testing.T, path, s string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
}

// tandem runs a tandem command as node and returns its stdout.
func (p *pair) tandem(n string, args ...string) string {
	p.t.Helper()
	return testenv.Run(p.t, p.bin, append([]string{"--config", p.nodes[n].cfgPath}, append(args, "--node", n)...)...)
}

// tandemErr runs a tandem command as node and returns both outputs and the error.
func (p *pair) tandemErr(n string, args ...string) (string, string, error) {
	return testenv.RunErr(p.bin, append([]string{"--config", p.nodes[n].cfgPath}, append(args, "--node", n)...)...)
}

// createMD runs create-md on both data nodes (a new pair: a full sync from
// the node first promoted with --force).
func (p *pair) createMD() {
	p.t.Helper()
	for _, n := range []string{"alpha", "beta"} {
		p.tandem(n, "create-md", "r0")
	}
}

// start runs node's daemon and waits for its ready file.
func (p *pair) start(n string) *node {
	p.t.Helper()
	nd := p.nodes[n]
	ready := filepath.Join(p.dir, n+".ready")
	os.Remove(ready)
	nd.proc = testenv.Start(p.t, p.bin, "--config", nd.cfgPath, "--log-format", "json", "--log-level", "debug",
		"daemon", "--node", n, "--ready-file", ready, "--pid-file", filepath.Join(p.dir, n+".pid"))
	nd.proc.WaitFor(p.t, "the ready file", func() bool {
		b, err := os.ReadFile(ready)
		return err == nil && len(b) > 0
	})
	return nd
}

// stop sends SIGTERM and wants exit 0.
func (p *pair) stop(n string) {
	p.t.Helper()
	nd := p.nodes[n]
	if err := nd.proc.Stop(p.t); err != nil {
		p.t.Fatalf("%s daemon exited %v after SIGTERM\n%s", n, err, nd.proc.Stderr())
	}
}

func (p *pair) status(n string) daemon.ResourceStatus {
	p.t.Helper()
	var ns daemon.NodeStatus
	out := p.tandem(n, "status", "r0", "--json")
	if err := json.Unmarshal([]byte(out), &ns); err != nil || len(ns.Resources) != 1 {
		p.t.Fatalf("status --json of %s: %v\n%s", n, err, out)
	}
	return ns.Resources[0]
}

// waitStatus polls node's status until ok, at most about a minute. It asks
// the admin API directly (the JSON `tandem status --json` prints) rather
// than starting a process per poll; the final state is read once more
// through the CLI.
func (p *pair) waitStatus(n, what string, ok func(daemon.ResourceStatus) bool) daemon.ResourceStatus {
	p.t.Helper()
	nd, err := p.cfg.Node(n)
	if err != nil {
		p.t.Fatal(err)
	}
	c := daemon.NewClient(nd.AdminSocket, n)
	var st daemon.ResourceStatus
	for i := 0; i < 1200; i++ {
		ns, err := c.Status(p.t.Context(), "r0")
		if err == nil && len(ns.Resources) == 1 {
			st = ns.Resources[0]
			if ok(st) {
				if st = p.status(n); ok(st) {
					return st
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.t.Fatalf("%s: timed out waiting for %s; last status %+v\nlog:\n%s", n, what, st, tail(p.nodes[n].proc.Stderr(), 40))
	return st
}

func inSync(st daemon.ResourceStatus) bool {
	return st.Conn == replicate.Connected && st.Disk == replicate.UpToDate && st.PeerDisk == replicate.UpToDate && st.OutOfSync == 0
}

// initialSync starts both daemons, promotes alpha with --force and waits
// for the full initial sync to beta.
func (p *pair) initialSync() {
	p.t.Helper()
	p.createMD()
	p.start("alpha")
	p.start("beta")
	out := p.tandem("alpha", "promote", "r0", "--force")
	if !strings.Contains(out, "Primary") {
		p.t.Fatalf("promote --force: %s", out)
	}
	// Two Inconsistent replicas stay StandAlone (neither can be a sync
	// source) until the admin has picked one and reconnects them.
	p.tandem("alpha", "connect", "r0")
	p.tandem("beta", "connect", "r0")
	// tandem wait, as a script would (it asks the daemon until the state
	// comes); then the same check from the status.
	for _, n := range []string{"alpha", "beta"} {
		if out := p.tandem(n, "wait", "r0", "--for", "in-sync", "--timeout", "60s"); !strings.Contains(out, "r0: in-sync after") {
			p.t.Fatalf("%s: tandem wait: %s", n, out)
		}
		if st := p.status(n); !inSync(st) {
			p.t.Fatalf("%s: tandem wait returned, but the status is %+v", n, st)
		}
	}
	// alpha's metrics say the same, from the real daemon.
	m := p.scrapeAlpha()
	for _, want := range []string{`tandem_resource_role{resource="r0",role="Primary"} 1`, `tandem_resource_connection_state{resource="r0",state="Connected"} 1`,
		`tandem_resource_disk_state{resource="r0",state="UpToDate"} 1`, `tandem_resource_peer_disk_state{peer="beta",resource="r0",state="UpToDate"} 1`,
		`tandem_resource_out_of_sync_bytes{resource="r0"} 0`} {
		if !strings.Contains(m, want+"\n") {
			p.t.Fatalf("alpha's metrics lack %s:\n%s", want, m)
		}
	}
}

// scrapeAlpha is alpha's GET /metrics.
func (p *pair) scrapeAlpha() string {
	p.t.Helper()
	req, err := http.NewRequestWithContext(p.t.Context(), http.MethodGet, "http://"+p.metricsAddr+"/metrics", nil)
	if err != nil {
		p.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatalf("alpha's metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		p.t.Fatalf("alpha's metrics: %s %v", resp.Status, err)
	}
	return string(b)
}

func (p *pair) uri(n string) string { return "nbd://" + p.nodes[n].nbdAddr + "/r0" }

// data reads the data area of node's device (not its metadata).
func (p *pair) data(n string) []byte {
	p.t.Helper()
	f, err := os.Open(p.nodes[n].device)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, p.size)
	if _, err := f.ReadAt(b, 0); err != nil {
		p.t.Fatal(err)
	}
	return b
}

// sameData fails the test unless both data areas are byte-identical.
func (p *pair) sameData() {
	p.t.Helper()
	a, b := p.data("alpha"), p.data("beta")
	if bytes.Equal(a, b) {
		return
	}
	var diffs []string
	for off := int64(0); off < p.size && len(diffs) < 8; off += 4096 {
		if !bytes.Equal(a[off:off+4096], b[off:off+4096]) {
			diffs = append(diffs, fmt.Sprint(off))
		}
	}
	p.t.Fatalf("the replicas' data areas differ (first differing 4 KiB blocks at %s)", strings.Join(diffs, ", "))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func testenvRunErr(name string, args ...string) (string, string, error) {
	return testenv.RunErr(name, args...)
}
