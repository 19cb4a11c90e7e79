//go:build linux

package disk

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/tools/testenv"
)

func TestFileCreateSparse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "md")
	if _, err := OpenFile(path, FileOptions{}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("opening a missing file without Create: %v", err)
	}
	if _, err := OpenFile(path, FileOptions{Create: true}); err == nil {
		t.Fatal("created a file without a size")
	}
	const size = 64 << 20
	f, err := OpenFile(path, FileOptions{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != size || f.BlockDevice() || f.Path() != path {
		t.Fatalf("size %d, block device %v, path %q", f.Size(), f.BlockDevice(), f.Path())
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Blocks*512 >= size/2 {
		t.Fatalf("new file: size %d, %d bytes allocated: not sparse", st.Size, st.Blocks*512)
	}
	mustWrite(t, f, []byte("end"), size-3)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, f, 3, size-3); string(got) != "end" {
		t.Fatalf("read %q", got)
	}
	// A Disk does not grow: writing past the end fails and leaves the size.
	if _, err := f.WriteAt([]byte("x"), size); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past the end: %v", err)
	}
	if _, err := f.ReadAt(make([]byte, 4), size-3); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read past the end: %v", err)
	}
	if fi, _ := os.Stat(path); fi.Size() != size {
		t.Fatalf("file grew to %d", fi.Size())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err == nil {
		t.Fatal("sync after close succeeded")
	}

	// Reopen: Create on an existing file opens it; a wrong size is refused.
	g, err := OpenFile(path, FileOptions{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, g, 3, size-3); string(got) != "end" {
		t.Fatalf("reopened: read %q", got)
	}
	g.Close()
	if h, err := OpenFile(path, FileOptions{Size: size * 2}); err == nil {
		h.Close()
		t.Fatal("opened a file with the wrong size")
	}
	h, err := OpenFile(path, FileOptions{})
	if err != nil || h.Size() != size {
		t.Fatalf("open without size: %v", err)
	}
	h.Close()
}

func TestFileRefusesOtherKinds(t *testing.T) {
	if f, err := OpenFile(t.TempDir(), FileOptions{}); err == nil {
		f.Close()
		t.Fatal("opened a directory")
	}
	if f, err := OpenFile("/dev/null", FileOptions{}); err == nil {
		f.Close()
		t.Fatal("opened a character device")
	}
}

// TestFileBlockDevice runs File on a loop device: the size comes from
// BLKGETSIZE64, and data goes through.
func TestFileBlockDevice(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "losetup")
	const size = 8 << 20
	backing := filepath.Join(t.TempDir(), "backing.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "losetup", "-f", "--show", backing).Output()
	if err != nil {
		t.Fatalf("losetup -f --show %s: %v", backing, err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})

	if f, err := OpenFile(dev, FileOptions{Size: size / 2}); err == nil {
		f.Close()
		t.Fatal("opened a block device with the wrong size")
	}
	f, err := OpenFile(dev, FileOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != size || !f.BlockDevice() {
		t.Fatalf("size %d, block device %v", f.Size(), f.BlockDevice())
	}
	// Metadata at the end of the device, through a region.
	r := NewRegion(f, size-8192, 8192)
	p := pattern(8192, 0x5A)
	mustWrite(t, r, p, 0)
	if err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.WriteAt([]byte{1}, 8192); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past the region: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Synced through the device: the backing file has it.
	got, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[size-8192:], p) {
		t.Fatal("the data written to the device's end is not in the backing file")
	}
}
