//go:build linux

package backend

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/nbd"
)

// hookSys wraps File's real sysFile: it counts calls by operation and lets
// a test fail them or inspect their arguments. Operations: read, write,
// dsync, datasync, punch, zerorange, fallocate, discard, zeroout, seek,
// fadvise.
type hookSys struct {
	sysFile
	mu    sync.Mutex
	calls map[string]int
	hook  func(op string, p []byte, off, length int64) error
}

func installHook(f *File) *hookSys {
	h := &hookSys{sysFile: f.sys, calls: map[string]int{}}
	f.sys = h
	return h
}

func (h *hookSys) set(hook func(op string, p []byte, off, length int64) error) {
	h.mu.Lock()
	h.hook = hook
	h.calls = map[string]int{}
	h.mu.Unlock()
}

func (h *hookSys) count(op string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[op]
}

func (h *hookSys) before(op string, p []byte, off, length int64) error {
	h.mu.Lock()
	h.calls[op]++
	hook := h.hook
	h.mu.Unlock()
	if hook == nil {
		return nil
	}
	return hook(op, p, off, length)
}

func (h *hookSys) ReadAt(p []byte, off int64) (int, error) {
	if err := h.before("read", p, off, int64(len(p))); err != nil {
		return 0, err
	}
	return h.sysFile.ReadAt(p, off)
}

func (h *hookSys) WriteAt(p []byte, off int64) (int, error) {
	if err := h.before("write", p, off, int64(len(p))); err != nil {
		return 0, err
	}
	return h.sysFile.WriteAt(p, off)
}

func (h *hookSys) WriteAtDsync(p []byte, off int64) (int, error) {
	if err := h.before("dsync", p, off, int64(len(p))); err != nil {
		return 0, err
	}
	return h.sysFile.WriteAtDsync(p, off)
}

func (h *hookSys) Datasync() error {
	if err := h.before("datasync", nil, 0, 0); err != nil {
		return err
	}
	return h.sysFile.Datasync()
}

func (h *hookSys) Fallocate(mode uint32, off, length int64) error {
	op := "fallocate"
	switch mode {
	case unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE:
		op = "punch"
	case unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE:
		op = "zerorange"
	}
	if err := h.before(op, nil, off, length); err != nil {
		return err
	}
	return h.sysFile.Fallocate(mode, off, length)
}

func (h *hookSys) RangeIoctl(req uint, off, length int64) error {
	op := map[uint]string{unix.BLKDISCARD: "discard", unix.BLKZEROOUT: "zeroout"}[req]
	if err := h.before(op, nil, off, length); err != nil {
		return err
	}
	return h.sysFile.RangeIoctl(req, off, length)
}

func (h *hookSys) Seek(off int64, whence int) (int64, error) {
	if err := h.before("seek", nil, off, 0); err != nil {
		return 0, err
	}
	return h.sysFile.Seek(off, whence)
}

func (h *hookSys) Fadvise(off, length int64, advice int) error {
	if err := h.before("fadvise", nil, off, length); err != nil {
		return err
	}
	return h.sysFile.Fadvise(off, length, advice)
}

// failOps returns a hook failing the named operations with err.
func failOps(err error, ops ...string) func(string, []byte, int64, int64) error {
	return func(op string, _ []byte, _, _ int64) error {
		for _, o := range ops {
			if o == op {
				return err
			}
		}
		return nil
	}
}

// requireAligned returns a hook that fails the test on any read or write
// reaching the kernel unaligned (in offset, length or buffer address). A
// filesystem may quietly accept unaligned O_DIRECT, so this, not the
// kernel's EINVAL, is what proves the bounce logic.
func requireAligned(t *testing.T) func(string, []byte, int64, int64) error {
	return func(op string, p []byte, off, _ int64) error {
		if (op == "read" || op == "write" || op == "dsync") && !isAligned(p, off) {
			t.Errorf("unaligned %s reached the kernel: %d bytes at %d", op, len(p), off)
		}
		return nil
	}
}

// openTemp creates a sparse file device in a fresh temporary directory
// (on this test bed the root filesystem, ext4: punch holes and O_DIRECT
// work there, unlike on some tmpfs).
func openTemp(t *testing.T, size int64, opts FileOptions) *File {
	t.Helper()
	opts.Size, opts.Create = size, true
	f, err := OpenFile(filepath.Join(t.TempDir(), "disk"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// requirePunchHole skips when the filesystem under dir cannot punch holes:
// then there are no holes to find.
func requirePunchHole(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, "punch-probe")
	defer os.Remove(p)
	if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	err = unix.Fallocate(int(fh.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096)
	if errors.Is(err, unix.EOPNOTSUPP) {
		t.Skipf("the filesystem under %s cannot punch holes", dir)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func fill(p []byte, b byte) []byte {
	for i := range p {
		p[i] = b
	}
	return p
}

func readBack(t *testing.T, d nbd.Device, off, n int64) []byte {
	t.Helper()
	p := make([]byte, n)
	if err := d.ReadAt(context.Background(), p, off); err != nil {
		t.Fatalf("read %d+%d: %v", off, n, err)
	}
	return p
}

func TestFileCreateSparse(t *testing.T) {
	f := openTemp(t, 8<<20, FileOptions{})
	fi, err := os.Stat(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 8<<20 || f.Size() != 8<<20 {
		t.Fatalf("size %d (device says %d), want %d", fi.Size(), f.Size(), 8<<20)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("created with mode %v, want 0600", fi.Mode().Perm())
	}
	if a := allocated(t, f.Path()); a != 0 {
		t.Errorf("new file has %d bytes allocated, want a sparse file", a)
	}
	ft := f.Features()
	want := nbd.Features{Flush: true, FUA: true, Trim: true, Zero: true, FastZero: true, Cache: true, Extents: true, MultiConn: true, Rotational: ft.Rotational}
	if ft != want {
		t.Fatalf("features %+v, want %+v", ft, want)
	}
	ext, err := f.Extents(context.Background(), 0, f.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || ext[0] != (nbd.Extent{Length: 8 << 20, Hole: true, Zero: true}) {
		t.Fatalf("extents of a new file %+v, want one hole", ext)
	}
}

func TestFileOpenRules(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		name string
		path string
		opts FileOptions
		size int64 // 0: must fail
	}{
		{"existing takes its size", existing, FileOptions{}, 8192},
		{"existing with its size", existing, FileOptions{Size: 8192}, 8192},
		{"existing with another size", existing, FileOptions{Size: 4096}, 0},
		{"grow never shrinks", existing, FileOptions{Size: 4096, Grow: true}, 0},
		{"create leaves existing alone", existing, FileOptions{Size: 8192, Create: true}, 8192},
		{"missing without create", missing, FileOptions{Size: 4096}, 0},
		{"create without size", missing, FileOptions{Create: true}, 0},
		{"read-only create", missing, FileOptions{Size: 4096, Create: true, ReadOnly: true}, 0},
		{"negative size", existing, FileOptions{Size: -1}, 0},
		{"directory", dir, FileOptions{ReadOnly: true}, 0},
		{"direct needs aligned size", missing, FileOptions{Size: 5000, Create: true, Direct: true}, 0},
		{"grow", existing, FileOptions{Size: 16384, Grow: true}, 16384},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := OpenFile(tc.path, tc.opts)
			if tc.size == 0 {
				if err == nil {
					f.Close()
					t.Fatal("opened, want an error")
				}
				t.Logf("error (as wanted): %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Size() != tc.size {
				t.Fatalf("size %d, want %d", f.Size(), tc.size)
			}
		})
	}
	if _, err := OpenFile(missing, FileOptions{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	// A failed create must not leave a file behind.
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed create left %s behind: %v", missing, err)
	}
	if fi, _ := os.Stat(existing); fi.Size() != 16384 {
		t.Errorf("grown file has %d bytes", fi.Size())
	}
}

func TestFileRandomOps(t *testing.T) {
	for _, direct := range []bool{false, true} {
		name := map[bool]string{false: "buffered", true: "direct"}[direct]
		t.Run(name, func(t *testing.T) {
			for seed := range uint64(3) {
				f := openTemp(t, 1<<20, FileOptions{Direct: direct})
				if direct {
					installHook(f).set(requireAligned(t))
				}
				exercise(t, f, seed, 300)
			}
		})
	}
}

func TestFileConcurrent(t *testing.T) {
	for _, direct := range []bool{false, true} {
		name := map[bool]string{false: "buffered", true: "direct"}[direct]
		t.Run(name, func(t *testing.T) {
			hammer(t, openTemp(t, 1<<20, FileOptions{Direct: direct}), 8, 30)
		})
	}
}

// Unaligned O_DIRECT writes to different bytes of one block must not undo
// each other: this is what the edge locks are for.
func TestFileDirectSharedBlock(t *testing.T) {
	ctx := context.Background()
	f := openTemp(t, 1<<20, FileOptions{Direct: true})
	if ft := f.Features(); ft.MinBlock != 4096 || ft.PreferredBlock != 4096 {
		t.Fatalf("direct: block sizes %d/%d, want 4096/4096", ft.MinBlock, ft.PreferredBlock)
	}
	const workers, slot, rounds = 8, 100, 200 // all slots in the first block
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				p := fill(make([]byte, slot), byte(w*rounds+r)%251+1)
				if err := f.WriteAt(ctx, p, int64(100+w*slot), r%7 == 0); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := readBack(t, f, 100, workers*slot)
	for w := range workers {
		want := byte(w*rounds+rounds-1)%251 + 1
		for i, b := range got[w*slot : (w+1)*slot] {
			if b != want {
				t.Fatalf("worker %d's byte %d is %#x, want %#x: a concurrent read-modify-write lost it", w, i, b, want)
			}
		}
	}
}

func TestFilePersists(t *testing.T) {
	ctx := context.Background()
	f := openTemp(t, 1<<20, FileOptions{})
	data := fill(make([]byte, 5000), 0xab)
	if err := f.WriteAt(ctx, data, 12345, true); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g, err := OpenFile(f.Path(), FileOptions{Size: 1 << 20, Direct: true})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got := readBack(t, g, 12345, 5000); !bytes.Equal(got, data) {
		t.Fatal("data not there after reopening")
	}
}

func TestFileTrimAndZero(t *testing.T) {
	ctx := context.Background()
	const size = 1 << 20
	f := openTemp(t, size, FileOptions{})
	requirePunchHole(t, filepath.Dir(f.Path()))
	data := fill(make([]byte, size), 0x5a)
	if err := f.WriteAt(ctx, data, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	full := allocated(t, f.Path())

	// Trim punches: the range becomes a hole that reads as zeroes.
	if err := f.Trim(ctx, 256<<10, 256<<10, true); err != nil {
		t.Fatal(err)
	}
	clear(data[256<<10 : 512<<10])
	ext, err := f.Extents(ctx, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	checkExtents(t, ext, size)
	want := []nbd.Extent{{Length: 256 << 10}, {Length: 256 << 10, Hole: true, Zero: true}, {Length: 512 << 10}}
	if len(ext) != 3 || ext[0] != want[0] || ext[1] != want[1] || ext[2] != want[2] {
		t.Fatalf("after trim: extents %+v, want %+v", ext, want)
	}
	if a := allocated(t, f.Path()); a > full-256<<10 {
		t.Errorf("trim freed %d bytes, want 256 KiB", full-a)
	}

	// Zero without NoHole may punch; unaligned edges are zeroed exactly.
	if err := f.Zero(ctx, 600001, 100000, 0); err != nil {
		t.Fatal(err)
	}
	clear(data[600001:700001])
	before := allocated(t, f.Path())
	if before >= full-256<<10 {
		t.Errorf("zero without NoHole freed nothing")
	}

	// NoHole keeps the blocks allocated (ext4 makes them unwritten; they
	// may show as holes to SEEK_DATA, but they do not free space). The
	// count may grow by an extent tree block.
	if err := f.Zero(ctx, 800000, 100000, nbd.ZeroNoHole|nbd.ZeroFUA|nbd.ZeroFast); err != nil {
		t.Fatal(err)
	}
	clear(data[800000:900000])
	if a := allocated(t, f.Path()); a < before {
		t.Errorf("NoHole zero freed %d bytes", before-a)
	}
	if got := readBack(t, f, 0, size); !bytes.Equal(got, data) {
		t.Fatalf("contents differ at byte %d", firstDiff(got, data))
	}
}

func TestFileExtentsBounded(t *testing.T) {
	ctx := context.Background()
	const size = 2 << 20
	f := openTemp(t, size, FileOptions{})
	requirePunchHole(t, filepath.Dir(f.Path()))
	// 4 KiB of data every 8 KiB: 512 runs.
	for off := int64(0); off < size; off += 8192 {
		if err := f.WriteAt(ctx, fill(make([]byte, 4096), 1), off, false); err != nil {
			t.Fatal(err)
		}
	}
	ext, err := f.Extents(ctx, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	checkExtents(t, ext, size)
	if len(ext) > maxExtents {
		t.Fatalf("%d extents, want at most %d", len(ext), maxExtents)
	}
	for i, e := range ext {
		if e.Length != 4096 || e.Hole != (i%2 == 1) {
			t.Fatalf("extent %d is %+v", i, e)
		}
	}
	// Starting inside a hole, asking for less than the hole.
	ext, err = f.Extents(ctx, 4096+100, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || ext[0] != (nbd.Extent{Length: 10, Hole: true, Zero: true}) {
		t.Fatalf("inside a hole: %+v", ext)
	}
	// The last run is a hole up to the end of the file.
	ext, err = f.Extents(ctx, size-4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || ext[0] != (nbd.Extent{Length: 4096, Hole: true, Zero: true}) {
		t.Fatalf("at the end: %+v", ext)
	}
}

// A filesystem without fallocate: fast zeroes are refused untouched, slow
// ones written, trims ignored.
func TestFileNoFallocate(t *testing.T) {
	ctx := context.Background()
	f := openTemp(t, 1<<20, FileOptions{})
	data := fill(make([]byte, 1<<20), 0x77)
	if err := f.WriteAt(ctx, data, 0, false); err != nil {
		t.Fatal(err)
	}
	h := installHook(f)
	h.set(failOps(unix.EOPNOTSUPP, "punch", "zerorange"))

	for _, flags := range []nbd.ZeroFlags{nbd.ZeroFast, nbd.ZeroFast | nbd.ZeroNoHole, nbd.ZeroFast | nbd.ZeroFUA} {
		if err := f.Zero(ctx, 1000, 300000, flags); !errors.Is(err, nbd.ErrNotSupported) {
			t.Fatalf("fast zero (flags %d) without fallocate: %v, want ErrNotSupported", flags, err)
		}
	}
	if n := h.count("write") + h.count("dsync"); n != 0 {
		t.Fatalf("a refused fast zero wrote %d times", n)
	}
	if err := f.Trim(ctx, 0, 1<<20, false); err != nil {
		t.Fatalf("trim without punch: %v, want success (it is a hint)", err)
	}
	if got := readBack(t, f, 0, 1<<20); !bytes.Equal(got, data) {
		t.Fatalf("refused or ignored requests changed byte %d", firstDiff(got, data))
	}

	h.set(failOps(unix.EOPNOTSUPP, "punch", "zerorange"))
	if err := f.Zero(ctx, 1000, 300000, nbd.ZeroFUA); err != nil {
		t.Fatal(err)
	}
	clear(data[1000:301000])
	if h.count("write") == 0 || h.count("datasync") != 1 {
		t.Fatalf("slow zero: %d writes, %d datasyncs; want writes and one datasync", h.count("write"), h.count("datasync"))
	}
	if got := readBack(t, f, 0, 1<<20); !bytes.Equal(got, data) {
		t.Fatalf("slow zero: byte %d differs", firstDiff(got, data))
	}

	// Only punch missing: a fast zero uses ZERO_RANGE.
	h.set(failOps(unix.EOPNOTSUPP, "punch"))
	if err := f.Zero(ctx, 500000, 1000, nbd.ZeroFast); err != nil {
		t.Fatalf("fast zero with ZERO_RANGE: %v", err)
	}
	if h.count("zerorange") != 1 || h.count("write") != 0 {
		t.Fatalf("fast zero: %v", h.calls)
	}

	// Other errors are errors.
	h.set(failOps(unix.EIO, "punch"))
	if err := f.Trim(ctx, 0, 4096, false); !errors.Is(err, unix.EIO) {
		t.Fatalf("trim with EIO: %v", err)
	}
	if err := f.Zero(ctx, 0, 4096, 0); !errors.Is(err, unix.EIO) {
		t.Fatalf("zero with EIO: %v", err)
	}
}

func TestFileFUA(t *testing.T) {
	ctx := context.Background()
	for _, direct := range []bool{false, true} {
		name := map[bool]string{false: "buffered", true: "direct"}[direct]
		t.Run(name, func(t *testing.T) {
			f := openTemp(t, 1<<20, FileOptions{Direct: direct})
			h := installHook(f)
			h.set(nil)
			// Unaligned, so under O_DIRECT this goes through the bounce path.
			data := fill(make([]byte, 10000), 3)
			if err := f.WriteAt(ctx, data, 777, true); err != nil {
				t.Fatal(err)
			}
			if h.count("dsync") != 1 || h.count("write") != 0 || h.count("datasync") != 0 {
				t.Fatalf("FUA write: calls %v, want one RWF_DSYNC write and no fdatasync", h.calls)
			}
			if got := readBack(t, f, 777, 10000); !bytes.Equal(got, data) {
				t.Fatal("FUA write lost")
			}

			h.set(nil)
			if err := f.WriteAt(ctx, data, 0, false); err != nil {
				t.Fatal(err)
			}
			if h.count("dsync") != 0 || h.count("datasync") != 0 {
				t.Fatalf("plain write: calls %v, want no sync", h.calls)
			}

			// A kernel without RWF_DSYNC: write then fdatasync, and stop asking.
			for _, errno := range []error{unix.EOPNOTSUPP, unix.ENOSYS} {
				f.noDsync.Store(false)
				h.set(failOps(errno, "dsync"))
				fill(data, 9)
				for range 2 {
					if err := f.WriteAt(ctx, data, 4096, true); err != nil {
						t.Fatal(err)
					}
				}
				if h.count("dsync") != 1 || h.count("write") != 2 || h.count("datasync") != 2 {
					t.Fatalf("%v: calls %v, want one dsync try, then write+fdatasync twice", errno, h.calls)
				}
				if got := readBack(t, f, 4096, 10000); !bytes.Equal(got, data) {
					t.Fatal("fallback FUA write lost")
				}
			}

			for name, op := range map[string]func() error{
				"flush":    func() error { return f.Flush(ctx) },
				"trim fua": func() error { return f.Trim(ctx, 0, 8192, true) },
				"zero fua": func() error { return f.Zero(ctx, 0, 8192, nbd.ZeroFUA) },
			} {
				h.set(nil)
				if err := op(); err != nil {
					t.Fatal(err)
				}
				if h.count("datasync") != 1 {
					t.Errorf("%s: %d fdatasyncs, want 1", name, h.count("datasync"))
				}
			}
			h.set(nil)
			if err := f.Trim(ctx, 0, 8192, false); err != nil {
				t.Fatal(err)
			}
			if h.count("datasync") != 0 {
				t.Error("trim without fua synced")
			}
		})
	}
}

// Errors keep their errno through the wrapping, so that the server maps
// them to the right NBD error.
func TestFileErrorsKeepErrno(t *testing.T) {
	ctx := context.Background()
	f := openTemp(t, 1<<20, FileOptions{})
	h := installHook(f)
	for _, tc := range []struct {
		op    string
		errno syscall.Errno
		call  func() error
	}{
		{"write", syscall.ENOSPC, func() error { return f.WriteAt(ctx, []byte{1}, 0, false) }},
		{"dsync", syscall.EIO, func() error { return f.WriteAt(ctx, []byte{1}, 0, true) }},
		{"read", syscall.EIO, func() error { return f.ReadAt(ctx, []byte{1}, 0) }},
		{"datasync", syscall.EIO, func() error { return f.Flush(ctx) }},
		{"fadvise", syscall.EPERM, func() error { return f.Cache(ctx, 0, 10) }},
		{"seek", syscall.EIO, func() error { _, err := f.Extents(ctx, 0, 10); return err }},
	} {
		h.set(failOps(tc.errno, tc.op))
		if err := tc.call(); !errors.Is(err, tc.errno) {
			t.Errorf("%s failing with %v: got %v", tc.op, tc.errno, err)
		}
	}
}

func TestFileShortRead(t *testing.T) {
	ctx := context.Background()
	f := openTemp(t, 1<<20, FileOptions{})
	// Someone truncates the file under us: reading the lost part must fail,
	// not return zeroes.
	if err := os.Truncate(f.Path(), 1000); err != nil {
		t.Fatal(err)
	}
	if err := f.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short read: %v, want ErrUnexpectedEOF", err)
	}
	// A sysFile breaking the ReaderAt contract (short, no error) too.
	f.sys = shortReader{f.sys}
	if err := f.ReadAt(ctx, make([]byte, 10), 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short read without error: %v, want ErrUnexpectedEOF", err)
	}
}

type shortReader struct{ sysFile }

func (s shortReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.sysFile.ReadAt(p[:len(p)/2], off)
	return n, err
}

func TestFileReadOnly(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, []byte("read only data.."), 0o400); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.Features().ReadOnly {
		t.Fatal("Features().ReadOnly false")
	}
	for name, err := range map[string]error{
		"write": f.WriteAt(ctx, []byte("x"), 0, false),
		"trim":  f.Trim(ctx, 0, 4, false),
		"zero":  f.Zero(ctx, 0, 4, 0),
	} {
		if !errors.Is(err, nbd.ErrReadOnly) {
			t.Errorf("%s: %v, want ErrReadOnly", name, err)
		}
	}
	if got := readBack(t, f, 0, 16); string(got) != "read only data.." {
		t.Fatalf("read %q", got)
	}
	if err := f.Cache(ctx, 0, 16); err != nil {
		t.Fatal(err)
	}
}

func TestFileOutOfRange(t *testing.T) {
	ctx := context.Background()
	f := openTemp(t, 8192, FileOptions{})
	for name, err := range map[string]error{
		"write past end": f.WriteAt(ctx, make([]byte, 2), 8191, false),
		"read past end":  f.ReadAt(ctx, make([]byte, 2), 8191),
		"negative":       f.ReadAt(ctx, make([]byte, 1), -1),
		"trim past end":  f.Trim(ctx, 0, 8193, false),
		"zero past end":  f.Zero(ctx, 8192, 1, 0),
	} {
		if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%s: %v, want EINVAL", name, err)
		}
	}
	if fi, _ := os.Stat(f.Path()); fi.Size() != 8192 {
		t.Fatalf("file grew to %d bytes", fi.Size())
	}
}

func TestFileClosed(t *testing.T) {
	ctx := context.Background()
	f := openTemp(t, 8192, FileOptions{})
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"read":      f.ReadAt(ctx, make([]byte, 1), 0),
		"write":     f.WriteAt(ctx, make([]byte, 1), 0, false),
		"fua write": f.WriteAt(ctx, make([]byte, 1), 0, true),
		"flush":     f.Flush(ctx),
		"zero":      f.Zero(ctx, 0, 1, 0),
		"cache":     f.Cache(ctx, 0, 1),
	} {
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s after Close: %v, want os.ErrClosed", name, err)
		}
	}
}
