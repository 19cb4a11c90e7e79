package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/replicate"
)

// The volumes' grow hook takes only the size this node's file says, on a
// device that holds it; internal metadata must not overlap where it was;
// an external metadata file grows in place.
func TestGrowHook(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	_, fs, _ := l.start(t, "alpha")
	ctx := context.Background()
	grow := func(res string, size int64) (replicate.GrowTarget, error) {
		t.Helper()
		return fs.Get(res).Cfg.Grow(ctx, size)
	}
	const grown = 200 << 20 // two bitmap pages
	if _, err := grow("r0", grown); err == nil || !strings.Contains(err.Error(), "says size 1048576") {
		t.Fatalf("grow past the file's size: %v, want refused naming it", err)
	}
	yaml, err := os.ReadFile(l.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	write(t, l.cfg.Path, strings.ReplaceAll(string(yaml), "size: 1M", "size: 200M"), 0o644)
	if _, err := grow("r0", grown); !errors.Is(err, ErrConfigInvalid) || !strings.Contains(err.Error(), "too small") {
		t.Fatalf("grow before the device did: %v, want the file refused (device too small)", err)
	}
	meta := int64(8 << 20) // room for any of it
	for _, n := range []string{"alpha", "beta"} {
		truncate(t, filepath.Join(l.dir, n+"-r0.img"), grown+meta)
		truncate(t, filepath.Join(l.dir, n+"-r1.img"), grown)
	}
	// Internal: by less than the metadata it would overlap; then enough.
	write(t, l.cfg.Path, strings.ReplaceAll(string(yaml), "size: 1M", "size: 1052672"), 0o644) // 1M + 4K
	if _, err := grow("r0", 1<<20+4096); !errors.Is(err, replicate.ErrResizeRefused) || !strings.Contains(err.Error(), "must not overlap") {
		t.Fatalf("internal metadata grown by 4 KiB: %v, want refused", err)
	}
	write(t, l.cfg.Path, strings.ReplaceAll(string(yaml), "size: 1M", "size: 200M"), 0o644)
	tgt, err := grow("r0", grown)
	if err != nil {
		t.Fatal(err)
	}
	if tgt.InPlace || tgt.Data.Size() != grown || tgt.Meta.Size() != meta {
		t.Fatalf("internal target: in place %v, data %d, meta %d", tgt.InPlace, tgt.Data.Size(), tgt.Meta.Size())
	}
	tgt.Release()
	// External: the file grows to the new layout's size.
	mdPath := filepath.Join(l.dir, "alpha-r1.md")
	before, _ := os.Stat(mdPath)
	tgt, err = grow("r1", grown)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(mdPath)
	if !tgt.InPlace || tgt.Data.Size() != grown || after.Size() <= before.Size() || tgt.Meta.Size() != after.Size() {
		t.Fatalf("external target: in place %v, data %d, meta file %d -> %d", tgt.InPlace, tgt.Data.Size(), before.Size(), after.Size())
	}
	tgt.Release()
}
