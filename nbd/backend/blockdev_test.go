//go:build linux

package backend

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// loopDevice attaches a sparse file of size bytes to a free loop device
// and detaches it when the test ends. It returns the device and the file.
func loopDevice(t *testing.T, size int64) (dev, backing string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "losetup")
	backing = filepath.Join(t.TempDir(), "backing.img")
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
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev, backing
}

func openDev(t *testing.T, dev string, opts FileOptions) *File {
	t.Helper()
	f, err := OpenFile(dev, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestBlockDevice(t *testing.T) {
	ctx := context.Background()
	const size = 8 << 20
	dev, backing := loopDevice(t, size)

	if f, err := OpenFile(dev, FileOptions{Size: size / 2}); err == nil {
		f.Close()
		t.Fatal("opened a block device with the wrong size")
	}
	if f, err := OpenFile(dev, FileOptions{Size: size * 2, Grow: true}); err == nil {
		f.Close()
		t.Fatal("\"grew\" a block device")
	}

	f := openDev(t, dev, FileOptions{Size: size})
	if f.Size() != size || !f.blockDev || f.sector != 512 {
		t.Fatalf("size %d, block device %v, sector %d", f.Size(), f.blockDev, f.sector)
	}
	ft := f.Features()
	if ft.Extents || !ft.Trim || !ft.Zero || !ft.FastZero || !ft.MultiConn {
		t.Fatalf("features %+v", ft)
	}
	t.Logf("%s: write-zeroes offload %v, rotational %v", dev, f.offloadZeroes, ft.Rotational)
	ext, err := f.Extents(ctx, 100, 1000)
	if err != nil || len(ext) != 1 || ext[0] != (nbd.Extent{Length: 1000}) {
		t.Fatalf("extents on a block device: %+v, %v; want one data extent", ext, err)
	}

	data := fill(make([]byte, size), 0x11)
	if err := f.WriteAt(ctx, data, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	full := allocated(t, backing)

	// The loop driver turns a discard into a hole in its backing file.
	if err := f.Trim(ctx, 1<<20, 2<<20, true); err != nil {
		t.Fatal(err)
	}
	clear(data[1<<20 : 3<<20])
	trimmed := allocated(t, backing)
	if trimmed > full-(2<<20) {
		t.Errorf("trim freed %d bytes of the backing file, want 2 MiB", full-trimmed)
	}

	// Zero may unmap (punch), NoHole must not; both zero unaligned edges.
	if err := f.Zero(ctx, 4<<20+123, 1<<20, nbd.ZeroFast); err != nil {
		t.Fatal(err)
	}
	clear(data[4<<20+123 : 5<<20+123])
	punched := allocated(t, backing)
	if punched >= trimmed {
		t.Errorf("zero without NoHole freed nothing in the backing file")
	}
	if err := f.Zero(ctx, 6<<20+7, 1<<20, nbd.ZeroNoHole|nbd.ZeroFUA); err != nil {
		t.Fatal(err)
	}
	clear(data[6<<20+7 : 7<<20+7])
	if a := allocated(t, backing); a < punched {
		t.Errorf("NoHole zero freed %d bytes of the backing file", punched-a)
	}
	// Smaller than a sector: written.
	if err := f.Zero(ctx, 7<<20+1, 100, nbd.ZeroFast); err != nil {
		t.Fatal(err)
	}
	clear(data[7<<20+1 : 7<<20+101])
	if got := readBack(t, f, 0, size); !bytes.Equal(got, data) {
		t.Fatalf("byte %d differs", firstDiff(got, data))
	}

	// FUA uses RWF_DSYNC on a block device too.
	h := installHook(f)
	if err := f.WriteAt(ctx, data[:4096], 0, true); err != nil {
		t.Fatal(err)
	}
	if h.count("dsync") != 1 || h.count("datasync") != 0 || f.noDsync.Load() {
		t.Fatalf("FUA write: calls %v", h.calls)
	}

	// A device without write-zeroes offload refuses a fast zero untouched
	// but zeroes slowly when asked to.
	f.offloadZeroes = false
	fill(data[:size/2], 0x22)
	if err := f.WriteAt(ctx, data[:size/2], 0, false); err != nil {
		t.Fatal(err)
	}
	h.set(nil)
	for _, flags := range []nbd.ZeroFlags{nbd.ZeroFast, nbd.ZeroFast | nbd.ZeroNoHole} {
		if err := f.Zero(ctx, 1000, 1<<20, flags); !errors.Is(err, nbd.ErrNotSupported) {
			t.Fatalf("fast zero without offload (flags %d): %v, want ErrNotSupported", flags, err)
		}
	}
	if n := h.count("punch") + h.count("zeroout") + h.count("write"); n != 0 {
		t.Fatalf("refused fast zeroes touched the device: calls %v", h.calls)
	}
	if err := f.Zero(ctx, 1000, 1<<20, nbd.ZeroNoHole); err != nil {
		t.Fatal(err)
	}
	clear(data[1000 : 1000+1<<20])
	if got := readBack(t, f, 0, size); !bytes.Equal(got, data) {
		t.Fatalf("byte %d differs", firstDiff(got, data))
	}
}

func TestBlockDeviceRandomOps(t *testing.T) {
	for _, direct := range []bool{false, true} {
		name := map[bool]string{false: "buffered", true: "direct"}[direct]
		t.Run(name, func(t *testing.T) {
			dev, _ := loopDevice(t, 1<<20)
			f := openDev(t, dev, FileOptions{Direct: direct})
			if direct {
				installHook(f).set(requireAligned(t))
			}
			exercise(t, f, 42, 300)
			hammer(t, f, 8, 10)
		})
	}
}
