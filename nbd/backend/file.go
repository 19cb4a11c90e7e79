//go:build linux

package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/nbd"
)

const (
	// dioAlign is the alignment used for O_DIRECT offsets, lengths and
	// buffers: it satisfies every logical sector size in use (512, 4096).
	dioAlign = 4096
	// bounceSize bounds the aligned buffer an unaligned request is staged
	// through, and the zero buffer used when the kernel cannot zero.
	bounceSize = 256 << 10
	// edgeStripes is the number of locks partial-block read-modify-writes
	// hash onto under O_DIRECT.
	edgeStripes = 64
)

// FileOptions configure OpenFile.
type FileOptions struct {
	// Size is the device size. A missing file is created sparse at this
	// size (with Create); an existing file must already have it, unless
	// Grow. Zero takes the existing file's or block device's size.
	Size int64
	// Create creates a missing regular file (Size must be set).
	Create bool
	// Grow enlarges an existing regular file smaller than Size; files are
	// never shrunk.
	Grow bool
	// ReadOnly opens read-only; writes, trims and zeroes fail with
	// nbd.ErrReadOnly.
	ReadOnly bool
	// Direct bypasses the page cache (O_DIRECT). Requests need not be
	// aligned: unaligned ones are staged through aligned buffers. The size
	// must be a multiple of 4096.
	Direct bool
}

// File serves a regular file or a block device. One descriptor is shared
// by all connections and all I/O is positional, so requests from every
// connection run in parallel and a Flush covers them all.
type File struct {
	path     string
	sys      sysFile
	size     int64
	readOnly bool
	direct   bool
	blockDev bool
	// sector is the alignment the kernel needs for ranges in discard and
	// zeroout requests (1 for regular files).
	sector int64
	// offloadZeroes: the block device zeroes without transferring zero
	// pages (write_zeroes_max_bytes > 0), so a fast zero can be honoured.
	offloadZeroes bool
	rotational    bool

	// noDsync remembers that pwritev2(RWF_DSYNC) is unsupported, so that
	// FUA writes stop trying it.
	noDsync atomic.Bool

	// edges serialise read-modify-write of partial blocks under O_DIRECT:
	// two unaligned writes to different bytes of one block would otherwise
	// each write back the other's stale bytes.
	edges  [edgeStripes]sync.Mutex
	bounce sync.Pool // *[]byte, bounceSize, dioAlign-aligned
	zeros  func() []byte
}

var (
	_ nbd.Device     = (*File)(nil)
	_ nbd.Extenter   = (*File)(nil)
	_ nbd.Cacher     = (*File)(nil)
	_ nbd.FileSource = (*File)(nil)
)

// OpenFile opens (or creates) the regular file or block device at path.
func OpenFile(path string, opts FileOptions) (*File, error) {
	if opts.Size < 0 {
		return nil, fmt.Errorf("backend: %s: negative size %d", path, opts.Size)
	}
	if opts.ReadOnly && (opts.Create || opts.Grow) {
		return nil, fmt.Errorf("backend: %s: Create and Grow need a writable file", path)
	}
	flags := unix.O_RDWR | unix.O_CLOEXEC
	if opts.ReadOnly {
		flags = unix.O_RDONLY | unix.O_CLOEXEC
	}
	if opts.Direct {
		flags |= unix.O_DIRECT
	}
	osf, err := os.OpenFile(path, flags, 0)
	created := false
	if errors.Is(err, fs.ErrNotExist) && opts.Create {
		if opts.Size == 0 {
			return nil, fmt.Errorf("backend: creating %s: Size is needed", path)
		}
		osf, err = os.OpenFile(path, flags|os.O_CREATE|os.O_EXCL, 0o600)
		created = err == nil
	}
	if err != nil {
		if opts.Direct && errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("backend: opening %s: the filesystem refuses O_DIRECT: %w", path, err)
		}
		return nil, fmt.Errorf("backend: opening %s: %w", path, err)
	}
	f, err := newFile(path, osf, created, opts)
	if err != nil {
		osf.Close()
		if created {
			os.Remove(path)
		}
		return nil, err
	}
	return f, nil
}

func newFile(path string, osf *os.File, created bool, opts FileOptions) (*File, error) {
	sys, err := newOSFile(osf)
	if err != nil {
		return nil, fmt.Errorf("backend: %s: %w", path, err)
	}
	fi, err := osf.Stat()
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("backend: stat %s: no stat_t", path)
	}
	f := &File{path: path, sys: sys, readOnly: opts.ReadOnly, direct: opts.Direct, sector: 1}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		f.size = st.Size
		switch {
		case created || (opts.Grow && opts.Size > st.Size):
			if err := osf.Truncate(opts.Size); err != nil {
				return nil, fmt.Errorf("backend: sizing %s: %w", path, err)
			}
			f.size = opts.Size
		case opts.Size > 0 && opts.Size != st.Size:
			return nil, fmt.Errorf("backend: %s has %d bytes, not the %d asked for (set Grow to enlarge it)", path, st.Size, opts.Size)
		}
		f.rotational = queueAttr(st.Dev, "rotational") > 0
	case unix.S_IFBLK:
		size, sector, err := sys.blockDevGeometry()
		if err != nil {
			return nil, fmt.Errorf("backend: block device %s: %w", path, err)
		}
		if opts.Size > 0 && opts.Size != size {
			return nil, fmt.Errorf("backend: block device %s has %d bytes, not the %d asked for", path, size, opts.Size)
		}
		f.size, f.sector, f.blockDev = size, int64(sector), true
		f.offloadZeroes = queueAttr(st.Rdev, "write_zeroes_max_bytes") > 0
		f.rotational = queueAttr(st.Rdev, "rotational") > 0
	default:
		return nil, fmt.Errorf("backend: %s is neither a regular file nor a block device", path)
	}
	if opts.Direct && f.size%dioAlign != 0 {
		// The last partial block could only be written by writing past the
		// end, which would grow a file or fail on a device.
		return nil, fmt.Errorf("backend: %s: O_DIRECT needs a size that is a multiple of %d, not %d", path, dioAlign, f.size)
	}
	f.bounce.New = func() any { b := alignedBuf(bounceSize); return &b }
	f.zeros = sync.OnceValue(func() []byte { return alignedBuf(bounceSize) })
	return f, nil
}

// queueAttr reads a number from the block queue of device dev in sysfs; a
// partition has no queue of its own and uses its disk's. It returns -1 if
// there is none (tmpfs, overlayfs, ...).
func queueAttr(dev uint64, name string) int64 {
	base := fmt.Sprintf("/sys/dev/block/%d:%d/", unix.Major(dev), unix.Minor(dev))
	for _, dir := range []string{"queue/", "../queue/"} {
		b, err := os.ReadFile(base + dir + name)
		if err != nil {
			continue
		}
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			return v
		}
	}
	return -1
}

// Path is the path the device was opened with.
func (f *File) Path() string { return f.path }

// Size is the device size in bytes.
func (f *File) Size() int64 { return f.size }

// Close closes the descriptor; calls after it fail.
func (f *File) Close() error {
	if err := f.sys.Close(); err != nil {
		return fmt.Errorf("backend: closing %s: %w", f.path, err)
	}
	return nil
}

// Features advertises everything: all of it is native or cheap to emulate.
func (f *File) Features() nbd.Features {
	ft := nbd.Features{
		ReadOnly:   f.readOnly,
		Flush:      true,
		FUA:        true,
		Trim:       true,
		Zero:       true,
		FastZero:   true,
		Cache:      true,
		Extents:    !f.blockDev, // SEEK_DATA on a block device knows nothing
		MultiConn:  true,
		Rotational: f.rotational,
	}
	if f.direct {
		// Unaligned requests still work, at the cost of a bounce copy and
		// a read-modify-write: tell clients how to avoid that.
		ft.MinBlock, ft.PreferredBlock = dioAlign, dioAlign
	}
	return ft
}

func (f *File) checkRange(op string, off, length int64) error {
	if off < 0 || length < 0 || length > f.size-off {
		return fmt.Errorf("backend: %s %s: range %d+%d outside %d bytes: %w", op, f.path, off, length, f.size, unix.EINVAL)
	}
	return nil
}

func (f *File) checkWrite(op string, off, length int64) error {
	if f.readOnly {
		return fmt.Errorf("backend: %s %s: %w", op, f.path, nbd.ErrReadOnly)
	}
	return f.checkRange(op, off, length)
}

// ReadAt reads p at off. A short read (the file shrank under us) is an
// error, never zeroes.
func (f *File) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := f.checkRange("read", off, int64(len(p))); err != nil {
		return err
	}
	var err error
	if f.direct {
		err = f.directRead(p, off)
	} else {
		err = f.readFull(p, off)
	}
	if err != nil {
		return fmt.Errorf("backend: reading %s at %d: %w", f.path, off, err)
	}
	return nil
}

// WriteAt writes p at off; with fua only this write is forced to stable
// storage (RWF_DSYNC), not the whole cache.
func (f *File) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	if err := f.checkWrite("write", off, int64(len(p))); err != nil {
		return err
	}
	var err error
	if f.direct {
		if !isAligned(p, off) {
			defer f.lockEdges(off, int64(len(p)))()
		}
		err = f.directWrite(p, off, fua)
	} else {
		err = f.write(p, off, fua)
	}
	if err != nil {
		return fmt.Errorf("backend: writing %s at %d: %w", f.path, off, err)
	}
	return nil
}

// Flush makes every completed write durable.
func (f *File) Flush(context.Context) error {
	if err := f.sys.Datasync(); err != nil {
		return fmt.Errorf("backend: flushing %s: %w", f.path, err)
	}
	return nil
}

// editRange is the frame Trim and Zero share around edit: the write checks,
// nothing to do for an empty range, the edge lock under O_DIRECT (editing
// part of a block rewrites its other bytes, like a read-modify-write), and
// a flush afterwards for FUA.
func (f *File) editRange(ctx context.Context, op string, off, length int64, fua bool, edit func() error) error {
	if err := f.checkWrite(op, off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if f.direct {
		defer f.lockEdges(off, length)()
	}
	if err := edit(); err != nil {
		return err
	}
	if fua {
		return f.Flush(ctx)
	}
	return nil
}

// Trim punches a hole (files) or discards (block devices). Trim is a hint,
// so a store that cannot discard succeeds without doing anything.
func (f *File) Trim(ctx context.Context, off, length int64, fua bool) error {
	return f.editRange(ctx, "trim", off, length, fua, func() error {
		var err error
		if f.blockDev {
			// Partial sectors are left alone: discarding nothing is allowed.
			if a0, a1 := alignUp(off, f.sector), alignDown(off+length, f.sector); a0 < a1 {
				err = f.sys.RangeIoctl(unix.BLKDISCARD, a0, a1-a0)
			}
		} else {
			err = f.sys.Fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		}
		if err != nil && !isNotSupported(err) {
			return fmt.Errorf("backend: trimming %s at %d+%d: %w", f.path, off, length, err)
		}
		return nil
	})
}

// Zero makes the range read as zeroes: by punching a hole unless NoHole, by
// asking the filesystem or device to zero it, and only as a last resort by
// writing zeroes, which a fast zero refuses instead.
func (f *File) Zero(ctx context.Context, off, length int64, flags nbd.ZeroFlags) error {
	return f.editRange(ctx, "zero", off, length, flags&nbd.ZeroFUA != 0, func() error {
		var err error
		if f.blockDev {
			err = f.zeroBlockDev(ctx, off, length, flags)
		} else {
			err = f.zeroFile(ctx, off, length, flags)
		}
		if err != nil && !errors.Is(err, nbd.ErrNotSupported) {
			return fmt.Errorf("backend: zeroing %s at %d+%d: %w", f.path, off, length, err)
		}
		return err // nil, or ErrNotSupported as it is: a refused fast zero
	})
}

func (f *File) zeroFile(ctx context.Context, off, length int64, flags nbd.ZeroFlags) error {
	if flags&nbd.ZeroNoHole == 0 {
		err := f.sys.Fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if !isNotSupported(err) {
			return err
		}
	}
	err := f.sys.Fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if !isNotSupported(err) {
		return err
	}
	if flags&nbd.ZeroFast != 0 {
		return nbd.ErrNotSupported
	}
	return f.writeZeroes(ctx, off, length)
}

func (f *File) zeroBlockDev(ctx context.Context, off, length int64, flags nbd.ZeroFlags) error {
	// Decide a fast zero before touching anything: the kernel drops the
	// page cache of the range (dirty pages included) before it finds out
	// the device cannot zero, so a refusal after trying could lose writes.
	if flags&nbd.ZeroFast != 0 && !f.offloadZeroes {
		return nbd.ErrNotSupported
	}
	a0, a1 := alignUp(off, f.sector), alignDown(off+length, f.sector)
	if a0 < a1 {
		var err error
		if flags&nbd.ZeroNoHole == 0 {
			// fallocate(PUNCH_HOLE) on a block device is a zeroout that
			// may unmap and never falls back to writing.
			err = f.sys.Fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, a0, a1-a0)
		}
		if flags&nbd.ZeroNoHole != 0 || isNotSupported(err) {
			// Falls back to writing zero pages inside the kernel; it also
			// re-zeroes what a failed punch may have dropped from the cache.
			err = f.sys.RangeIoctl(unix.BLKZEROOUT, a0, a1-a0)
		}
		if err != nil {
			return err
		}
	} else {
		a0, a1 = off+length, off+length
	}
	if err := f.writeZeroes(ctx, off, a0-off); err != nil {
		return err
	}
	return f.writeZeroes(ctx, a1, off+length-a1)
}

// writeZeroes writes the range from a shared zero buffer. The caller holds
// the edge locks under O_DIRECT.
func (f *File) writeZeroes(ctx context.Context, off, length int64) error {
	zeros := f.zeros()
	for length > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		// The first chunk ends on an alignment boundary so that under
		// O_DIRECT the rest go straight from the zero buffer.
		n := min(length, bounceSize-off%dioAlign)
		var err error
		if f.direct {
			err = f.directWrite(zeros[:n], off, false)
		} else {
			err = f.write(zeros[:n], off, false)
		}
		if err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Extents reports holes and data with SEEK_DATA/SEEK_HOLE. The lseeks move
// the shared file offset, which nothing else uses: all I/O is positional.
func (f *File) Extents(_ context.Context, off, length int64) ([]nbd.Extent, error) {
	if err := f.checkRange("extents", off, length); err != nil {
		return nil, err
	}
	if f.blockDev || length == 0 {
		return []nbd.Extent{{Length: length}}, nil
	}
	end := off + length
	var out []nbd.Extent
	for off < end && len(out) < maxExtents {
		data, err := f.sys.Seek(off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO): // only a hole up to EOF
			data = end
		case errors.Is(err, unix.EINVAL) || isNotSupported(err):
			// The filesystem cannot tell: everything is data.
			return append(out, nbd.Extent{Length: end - off}), nil
		case err != nil:
			return nil, fmt.Errorf("backend: seeking data in %s at %d: %w", f.path, off, err)
		}
		if data > off {
			n := min(data, end) - off
			out = append(out, nbd.Extent{Length: n, Hole: true, Zero: true})
			off += n
			continue
		}
		hole, err := f.sys.Seek(off, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("backend: seeking hole in %s at %d: %w", f.path, off, err)
		}
		if hole <= off { // cannot happen after SEEK_DATA said off is data; never loop on it
			hole = end
		}
		n := min(hole, end) - off
		out = append(out, nbd.Extent{Length: n})
		off += n
	}
	return out, nil
}

// Cache asks the kernel to read the range ahead. Under O_DIRECT the page
// cache is not used, so there is nothing to warm.
func (f *File) Cache(_ context.Context, off, length int64) error {
	if err := f.checkRange("cache", off, length); err != nil {
		return err
	}
	if f.direct {
		return nil
	}
	if err := f.sys.Fadvise(off, length, unix.FADV_WILLNEED); err != nil {
		return fmt.Errorf("backend: prefetching %s at %d+%d: %w", f.path, off, length, err)
	}
	return nil
}

// readFull reads all of p; anything less is an error.
func (f *File) readFull(p []byte, off int64) error {
	n, err := f.sys.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = fmt.Errorf("short read, %d of %d bytes: %w", n, len(p), io.ErrUnexpectedEOF)
	}
	return err
}

// write writes all of p; with fua it is durable on return.
func (f *File) write(p []byte, off int64, fua bool) error {
	if fua && !f.noDsync.Load() {
		n, err := f.sys.WriteAtDsync(p, off)
		if !isNotSupported(err) && !errors.Is(err, unix.ENOSYS) {
			return shortWrite(n, len(p), err)
		}
		f.noDsync.Store(true)
	}
	n, err := f.sys.WriteAt(p, off)
	if err := shortWrite(n, len(p), err); err != nil {
		return err
	}
	if fua {
		return f.sys.Datasync()
	}
	return nil
}

func shortWrite(n, want int, err error) error {
	if err == nil && n < want {
		return fmt.Errorf("short write, %d of %d bytes: %w", n, want, io.ErrShortWrite)
	}
	return err
}

// directRead reads under O_DIRECT, staging unaligned requests through an
// aligned bounce buffer.
func (f *File) directRead(p []byte, off int64) error {
	if isAligned(p, off) {
		return f.readFull(p, off)
	}
	bp := f.bounce.Get().(*[]byte)
	defer f.bounce.Put(bp)
	for len(p) > 0 {
		a0 := alignDown(off, dioAlign)
		a1 := min(alignUp(off+int64(len(p)), dioAlign), a0+bounceSize)
		b := (*bp)[:a1-a0]
		if err := f.readFull(b, a0); err != nil {
			return err
		}
		n := copy(p, b[off-a0:])
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// directWrite writes under O_DIRECT. Unaligned requests are staged through
// an aligned buffer, reading partial edge blocks first; the caller holds
// the edge locks for them.
func (f *File) directWrite(p []byte, off int64, fua bool) error {
	if isAligned(p, off) {
		return f.write(p, off, fua)
	}
	bp := f.bounce.Get().(*[]byte)
	defer f.bounce.Put(bp)
	for len(p) > 0 {
		a0 := alignDown(off, dioAlign)
		a1 := min(alignUp(off+int64(len(p)), dioAlign), a0+bounceSize)
		b := (*bp)[:a1-a0]
		n := min(int64(len(p)), a1-off)
		head, tail := off > a0, off+n < a1
		if head {
			if err := f.readFull(b[:dioAlign], a0); err != nil {
				return err
			}
		}
		if tail && (!head || a1-a0 > dioAlign) {
			if err := f.readFull(b[len(b)-dioAlign:], a1-dioAlign); err != nil {
				return err
			}
		}
		copy(b[off-a0:], p[:n])
		if err := f.write(b, a0, fua); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// lockEdges locks the stripes of the partial blocks at either end of the
// range, in stripe order so that two ranges cannot deadlock, and returns
// the unlock.
func (f *File) lockEdges(off, length int64) func() {
	var idx [2]int
	k := 0
	if off%dioAlign != 0 {
		idx[k] = int(off / dioAlign % edgeStripes)
		k++
	}
	if end := off + length; end%dioAlign != 0 {
		if s := int((end - 1) / dioAlign % edgeStripes); k == 0 || s != idx[0] {
			idx[k] = s
			k++
		}
	}
	if k == 2 && idx[0] > idx[1] {
		idx[0], idx[1] = idx[1], idx[0]
	}
	for _, i := range idx[:k] {
		f.edges[i].Lock()
	}
	return func() {
		for _, i := range idx[:k] {
			f.edges[i].Unlock()
		}
	}
}

func isAligned(p []byte, off int64) bool {
	return off%dioAlign == 0 && len(p)%dioAlign == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%dioAlign == 0
}

// alignedBuf returns n bytes starting on a dioAlign boundary.
func alignedBuf(n int) []byte {
	b := make([]byte, n+dioAlign)
	skip := (dioAlign - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%dioAlign)) % dioAlign
	return b[skip : skip+n : skip+n]
}

func alignDown(v, a int64) int64 { return v - v%a }
func alignUp(v, a int64) int64   { return alignDown(v+a-1, a) }

// isNotSupported: the filesystem or device lacks the operation. Ext4 says
// EOPNOTSUPP; some filesystems and old kernels say ENOTTY for an unknown
// ioctl.
func isNotSupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY)
}

// FileRange lets the NBD server send reads with sendfile(2) straight from
// the page cache. Not under O_DIRECT: there the page cache is not what the
// disk holds, and not through a test seam that is not a real file.
func (f *File) FileRange(off, length int64) (*os.File, int64, bool) {
	o, ok := f.sys.(*osFile)
	if !ok || f.direct || f.checkRange("read", off, length) != nil {
		return nil, 0, false
	}
	return o.f, off, true
}
