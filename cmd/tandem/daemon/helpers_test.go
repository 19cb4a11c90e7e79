package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon/daemontest"
	"github.com/tandem-ha/tandem/replicate"
)

const labSize = daemontest.LabSize

// lab is daemontest's lab with the daemon's helpers.
type lab struct {
	dir string
	cfg *config.Config
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := daemontest.NewLab(t)
	return &lab{dir: l.Dir, cfg: l.Config}
}

func write(t *testing.T, path, s string, mode os.FileMode) { daemontest.Write(t, path, s, mode) }

func truncate(t *testing.T, path string, size int64) { daemontest.Truncate(t, path, size) }

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
// end of the test. edit, if given, changes its options first.
func (l *lab) start(t *testing.T, node string, edit ...func(*Options)) (*Daemon, *daemontest.Fakes, *logBuf) {
	t.Helper()
	fs := &daemontest.Fakes{}
	logs := &logBuf{}
	o := Options{Config: l.cfg, Node: node, Open: fakeOpen(fs), Version: "test",
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ReconcileInterval: 20 * time.Millisecond}
	for _, e := range edit {
		e(&o)
	}
	d, err := New(o)
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

// fakeOpen adapts daemontest.Fakes to OpenFunc.
func fakeOpen(fs *daemontest.Fakes) OpenFunc {
	return func(ctx context.Context, cfg replicate.Config) (Volume, error) {
		v, err := fs.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return v, nil
	}
}
