//go:build linux

package md

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/tandem-ha/tandem/replicate/disk"
)

// TestOnFiles runs the metadata on real files: external (its own file) and
// internal (a region at the end of the data file).
func TestOnFiles(t *testing.T) {
	dir := t.TempDir()
	const dev = 256 << 20
	l, err := InternalLayout(dev, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := disk.OpenFile(filepath.Join(dir, "dev"), disk.FileOptions{Create: true, Size: dev})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ext, err := NewLayout(l.DataSize, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mf, err := disk.OpenFile(filepath.Join(dir, "md"), disk.FileOptions{Create: true, Size: ext.MetaSize()})
	if err != nil {
		t.Fatal(err)
	}
	defer mf.Close()
	for name, area := range map[string]disk.Disk{
		"internal": disk.NewRegion(f, l.MetaOffset, l.MetaSize()),
		"external": mf,
	} {
		t.Run(name, func(t *testing.T) {
			if err := Create(area, testSB(l.DataSize, Options{}), CreateOptions{NewBlank: true}); err != nil {
				t.Fatal(err)
			}
			m := mustOpen(t, area)
			m.SetDataSync(f.Sync)
			rel, err := m.Begin(context.Background(), 100<<20, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			m.Bitmap().Set(100<<20, 4096)
			rel()
			// Not closed: the reopen recovers the hot extent.
			m2 := mustOpen(t, area)
			if got := m2.RecoveredExtents(); len(got) != 1 || got[0] != (Range{Off: 100 << 20, Len: 4 << 20}) {
				t.Fatalf("recovered %v", got)
			}
			if err := m2.Close(true); err != nil {
				t.Fatal(err)
			}
			m3 := mustOpen(t, area)
			if !m3.Recovery().WasClean || m3.Bitmap().Count() != 1024 {
				t.Fatalf("after clean close: %+v, %d bits", m3.Recovery(), m3.Bitmap().Count())
			}
		})
	}
}
