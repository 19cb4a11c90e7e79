package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tandem-ha/tandem/replicate/md"
)

func TestCreateMetadata(t *testing.T) {
	l := newLab(t)
	r0, r1 := l.cfg.Resource("r0"), l.cfg.Resource("r1")

	c, err := CreateMetadata(l.cfg, r0, "alpha", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sb := c.Superblock
	if sb.Resource != "r0" || sb.Node != "alpha" || sb.Peer != "beta" || sb.Cluster != "lab" || sb.DataSize != labSize ||
		!sb.Flags.Has(md.FullSyncNeeded) || sb.Flags.Has(md.Consistent) || sb.Gen.Current == 0 {
		t.Errorf("superblock: %+v", sb)
	}
	contains(t, "location", c.Location, "internal")
	if _, err := CreateMetadata(l.cfg, r0, "alpha", CreateOptions{}); !errors.Is(err, md.ErrExists) {
		t.Errorf("second create-md: %v, want ErrExists", err)
	}
	c2, err := CreateMetadata(l.cfg, r0, "alpha", CreateOptions{Force: true})
	if err != nil || c2.Superblock.UUID == sb.UUID {
		t.Errorf("create-md --force: %v (uuid %v, was %v)", err, c2.Superblock.UUID, sb.UUID)
	}

	// --new-blank on both nodes with one generation: a pair in sync.
	a, err := CreateMetadata(l.cfg, r1, "alpha", CreateOptions{NewBlank: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := CreateMetadata(l.cfg, r1, "beta", CreateOptions{NewBlank: true, Generation: a.Superblock.Gen.Current})
	if err != nil {
		t.Fatal(err)
	}
	if a.Superblock.Gen != b.Superblock.Gen || !a.Superblock.Flags.Has(md.Consistent) || a.Superblock.Flags.Has(md.FullSyncNeeded) {
		t.Errorf("new-blank pair: %+v / %+v", a.Superblock, b.Superblock)
	}
	if st, err := os.Stat(filepath.Join(l.dir, "alpha-r1.md")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("external metadata file: %v %v", st, err)
	}
	if _, err := CreateMetadata(l.cfg, r1, "witness", CreateOptions{}); !errors.Is(err, ErrNotLocal) {
		t.Errorf("create-md on the witness: %v", err)
	}
	if _, err := CreateMetadata(l.cfg, r1, "alpha", CreateOptions{Force: true, Generation: 5}); err == nil {
		t.Error("a generation without --new-blank was accepted")
	}

	// A data area that already holds data gets a warning with --new-blank.
	f, _ := os.OpenFile(filepath.Join(l.dir, "beta-r0.img"), os.O_RDWR, 0)
	f.WriteAt([]byte("data"), 8192)
	f.Close()
	w, err := CreateMetadata(l.cfg, r0, "beta", CreateOptions{NewBlank: true, Generation: 99})
	if err != nil || len(w.Warnings) != 1 {
		t.Errorf("new-blank over data: %v, warnings %q", err, w.Warnings)
	}

	info, err := DumpMetadata(r1, r1.Replica("alpha"))
	if err != nil || info.Superblock.Gen.Current != a.Superblock.Gen.Current || info.DiskState != "UpToDate" {
		t.Errorf("dump-md: %+v %v", info, err)
	}
}

func TestStorageRefusesSmallDevices(t *testing.T) {
	l := newLab(t)
	truncate(t, filepath.Join(l.dir, "alpha-r0.img"), labSize) // no room for internal metadata
	_, err := CreateMetadata(l.cfg, l.cfg.Resource("r0"), "alpha", CreateOptions{})
	if err == nil {
		t.Fatal("create-md on a device without room for the metadata")
	}
	contains(t, "error", err.Error(), "truncate -s")
	if _, err := DumpMetadata(l.cfg.Resource("r1"), l.cfg.Resource("r1").Replica("alpha")); !errors.Is(err, md.ErrNoMetadata) {
		t.Errorf("dump-md without a metadata file: %v", err)
	}
}
