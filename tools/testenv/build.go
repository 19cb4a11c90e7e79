package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// tandemPackage is the import path BuildTandem builds.
const tandemPackage = "github.com/tandem-ha/tandem/cmd/tandem"

// buildTimeout bounds one `go build`; a cold cache with -race on two shared
// cores takes about a minute.
const buildTimeout = 10 * time.Minute

// binaryCache is the one piece of package state: a test binary builds tandem
// at most once when its TestMain goes through Main, which also removes it.
type binaryCache struct {
	mu      sync.Mutex
	managed bool // Main is running the tests and will remove dir
	once    sync.Once
	dir     string
	path    string
	err     error
}

var cache binaryCache

// Main runs a package's tests and then removes the tandem binary that
// BuildTandem built for them. Use it as
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
//
// Without it BuildTandem still works, but builds (and removes) a binary per
// calling test.
func Main(m *testing.M) {
	cache.mu.Lock()
	cache.managed = true
	cache.mu.Unlock()
	code := m.Run()
	cache.mu.Lock()
	if cache.dir != "" {
		if err := os.RemoveAll(cache.dir); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: removing %s: %v\n", cache.dir, err)
		}
		cache.dir = ""
	}
	cache.mu.Unlock()
	os.Exit(code)
}

// BuildTandem builds the tandem binary (with -race when the test binary has
// it, so races in the subprocess fail the test too) and returns its path.
func BuildTandem(t testing.TB) string {
	t.Helper()
	cache.mu.Lock()
	managed := cache.managed
	cache.mu.Unlock()

	if !managed {
		path := filepath.Join(t.TempDir(), "tandem")
		if err := goBuild(path); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		return path
	}

	cache.once.Do(func() {
		dir, err := os.MkdirTemp("", "tandem-bin-")
		if err != nil {
			cache.err = fmt.Errorf("creating build dir: %w", err)
			return
		}
		cache.mu.Lock()
		cache.dir = dir
		cache.mu.Unlock()
		path := filepath.Join(dir, "tandem")
		if err := goBuild(path); err != nil {
			cache.err = err
			return
		}
		cache.path = path
	})
	if cache.err != nil {
		t.Fatalf("testenv: %v", cache.err)
	}
	return cache.path
}

// goCommand finds the go tool: `go test` puts GOROOT/bin first on PATH, and
// the Makefile's Go lives in /usr/local/go when PATH lacks it.
func goCommand() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

func goBuild(out string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, tandemPackage)
	cmd := exec.CommandContext(ctx, goCommand(), args...)
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %w\n%s", tandemPackage, err, output)
	}
	return nil
}
