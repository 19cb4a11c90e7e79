package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
)

const labSize = 1 << 20

// lab is a configuration of alpha, beta and a witness on one host, with
// r0 (internal metadata) and r1 (external metadata) sharing alpha's NBD
// listener, and the files alpha and beta need.
type lab struct {
	dir string
	cfg *config.Config
}

func newLab(t *testing.T) *lab {
	t.Helper()
	dir := t.TempDir()
	l := &lab{dir: dir}
	yaml := fmt.Sprintf(`cluster: lab
secret-file: %[1]s/secret
nodes:
  - name: alpha
    address: 127.0.0.1
    admin-socket: %[1]s/alpha.sock
    data-dir: %[1]s/alpha
  - name: beta
    address: 127.0.0.1
    admin-socket: %[1]s/beta.sock
    data-dir: %[1]s/beta
  - name: witness
    address: 127.0.0.1
    admin-socket: %[1]s/witness.sock
    data-dir: %[1]s/witness
resources:
  - name: r0
    size: 1M
    replicas:
      alpha:
        device: %[1]s/alpha-r0.img
        address: 127.0.0.1:17789
        nbd-listen: unix:%[1]s/alpha.nbd
      beta:
        device: %[1]s/beta-r0.img
        address: 127.0.0.1:17790
        nbd-listen: unix:%[1]s/beta.nbd
  - name: r1
    size: 1M
    protocol: A
    replicas:
      alpha:
        device: %[1]s/alpha-r1.img
        meta: %[1]s/alpha-r1.md
        address: 127.0.0.1:17791
        nbd-listen: unix:%[1]s/alpha.nbd
      beta:
        device: %[1]s/beta-r1.img
        meta: %[1]s/beta-r1.md
        address: 127.0.0.1:17792
        nbd-listen: unix:%[1]s/beta.nbd
`, dir)
	write(t, filepath.Join(dir, "tandem.yaml"), yaml, 0o644)
	write(t, filepath.Join(dir, "secret"), "0123456789abcdef0123456789abcdef\n", 0o600)
	cfg, err := config.Load(filepath.Join(dir, "tandem.yaml"))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	l.cfg = cfg
	meta, err := Layout(cfg.Resource("r0"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alpha", "beta"} {
		truncate(t, filepath.Join(dir, n+"-r0.img"), labSize+meta.MetaSize())
		truncate(t, filepath.Join(dir, n+"-r1.img"), labSize)
	}
	if err := cfg.Validate("alpha"); err != nil {
		t.Fatalf("lab config does not validate: %v", err)
	}
	return l
}

func write(t *testing.T, path, s string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
}

func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// createMD runs create-md for node's replicas of every resource.
func (l *lab) createMD(t *testing.T, node string) {
	t.Helper()
	for i := range l.cfg.Resources {
		if _, err := CreateMetadata(l.cfg, &l.cfg.Resources[i], node, CreateOptions{}); err != nil {
			t.Fatalf("create-md %s on %s: %v", l.cfg.Resources[i].Name, node, err)
		}
	}
}

// logBuf collects a daemon's logs for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs a daemon for node with fake volumes; it is shut down at the
// end of the test.
func (l *lab) start(t *testing.T, node string) (*Daemon, *fakes, *logBuf) {
	t.Helper()
	fs := &fakes{}
	logs := &logBuf{}
	d, err := New(Options{Config: l.cfg, Node: node, Open: fs.open, Version: "test",
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ReconcileInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(t.Context()); err != nil {
		t.Fatalf("start %s: %v\n%s", node, err, logs)
	}
	t.Cleanup(func() {
		if err := d.Shutdown(context.Background()); err != nil {
			t.Errorf("shutdown %s: %v", node, err)
		}
	})
	return d, fs, logs
}

func (l *lab) client(node string) *Client {
	n, _ := l.cfg.Node(node)
	return NewClient(n.AdminSocket, node)
}

func contains(t *testing.T, what, s, want string) {
	t.Helper()
	if !strings.Contains(s, want) {
		t.Errorf("%s: %q does not contain %q", what, s, want)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
