package daemontest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/replicate/md"
)

// LabSize is the size of the lab's resources.
const LabSize = 1 << 20

// Lab is a configuration of alpha, beta and a witness on one host, with r0
// (internal metadata) and r1 (external metadata, protocol A) sharing each
// data node's NBD listener (a Unix socket), and the files they need.
type Lab struct {
	Dir    string
	Path   string // the configuration file
	Config *config.Config
}

// NewLab writes the configuration, the secret and the devices into a
// temporary directory; no metadata is created.
func NewLab(t testing.TB) *Lab {
	t.Helper()
	dir := t.TempDir()
	l := &Lab{Dir: dir, Path: filepath.Join(dir, "tandem.yaml")}
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
	Write(t, l.Path, yaml, 0o644)
	Write(t, filepath.Join(dir, "secret"), "0123456789abcdef0123456789abcdef\n", 0o600)
	cfg, err := config.Load(l.Path)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	l.Config = cfg
	r0 := cfg.Resource("r0")
	meta, err := md.NewLayout(r0.Size, md.Options{Granularity: r0.BitmapGranularity, MaxHotExtents: r0.ALExtents})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alpha", "beta"} {
		Truncate(t, filepath.Join(dir, n+"-r0.img"), LabSize+meta.MetaSize())
		Truncate(t, filepath.Join(dir, n+"-r1.img"), LabSize)
	}
	if err := cfg.Validate("alpha"); err != nil {
		t.Fatalf("lab config does not validate: %v", err)
	}
	return l
}

// Write writes a file.
func Write(t testing.TB, path, s string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
}

// Truncate makes path a sparse file of size bytes.
func Truncate(t testing.TB, path string, size int64) {
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
