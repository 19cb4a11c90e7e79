//go:build linux

package disk

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FileOptions say how OpenFile opens a file.
type FileOptions struct {
	// Create makes a missing regular file, sparse, of Size bytes.
	Create bool
	// Size, when not 0, is the size the file or device must have; an
	// existing file of another size is refused rather than resized, since
	// a size mismatch means the configuration names the wrong file.
	Size int64
}

// File is a Disk on a regular file or a block device.
type File struct {
	f        *os.File
	rc       syscall.RawConn
	path     string
	size     int64
	blockDev bool
}

var _ Disk = (*File)(nil)

// OpenFile opens the regular file or block device at path for reading and
// writing.
func OpenFile(path string, opts FileOptions) (*File, error) {
	if opts.Size < 0 {
		return nil, fmt.Errorf("disk: %s: negative size %d", path, opts.Size)
	}
	const flags = os.O_RDWR | unix.O_CLOEXEC
	osf, err := os.OpenFile(path, flags, 0)
	created := false
	if errors.Is(err, fs.ErrNotExist) && opts.Create {
		if opts.Size == 0 {
			return nil, fmt.Errorf("disk: creating %s: a size is needed", path)
		}
		osf, err = os.OpenFile(path, flags|os.O_CREATE|os.O_EXCL, 0o600)
		created = err == nil
	}
	if err != nil {
		return nil, fmt.Errorf("disk: opening %s: %w", path, err)
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
	rc, err := osf.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("disk: %s: %w", path, err)
	}
	f := &File{f: osf, rc: rc, path: path}
	fi, err := osf.Stat()
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	switch {
	case fi.Mode().IsRegular():
		f.size = fi.Size()
		if created {
			if err := osf.Truncate(opts.Size); err != nil {
				return nil, fmt.Errorf("disk: sizing %s: %w", path, err)
			}
			// The new file and its size must survive a power cut like
			// anything written into it later: fsync the file (fdatasync
			// would do for the size, but not for a brand-new inode) and
			// the directory entry.
			if err := osf.Sync(); err != nil {
				return nil, fmt.Errorf("disk: syncing new %s: %w", path, err)
			}
			if err := syncDir(filepath.Dir(path)); err != nil {
				return nil, fmt.Errorf("disk: syncing the directory of new %s: %w", path, err)
			}
			f.size = opts.Size
		}
	case fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0:
		size, err := f.blockDevSize()
		if err != nil {
			return nil, fmt.Errorf("disk: block device %s: size: %w", path, err)
		}
		f.size, f.blockDev = size, true
	default:
		return nil, fmt.Errorf("disk: %s is neither a regular file nor a block device (mode %v)", path, fi.Mode())
	}
	if opts.Size > 0 && opts.Size != f.size {
		return nil, fmt.Errorf("disk: %s has %d bytes, not the %d expected", path, f.size, opts.Size)
	}
	return f, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (f *File) blockDevSize() (int64, error) {
	var size uint64
	err := f.control(func(fd int) error {
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); e != 0 {
			return e
		}
		return nil
	})
	return int64(size), err
}

// control runs fn on the descriptor; going through the RawConn makes a call
// racing with Close fail with ErrClosed instead of reaching whatever file
// reuses the descriptor number.
func (f *File) control(fn func(fd int) error) error {
	var opErr error
	if err := f.rc.Control(func(fd uintptr) { opErr = fn(int(fd)) }); err != nil {
		return ErrClosed
	}
	return opErr
}

// Path is the path the file was opened with.
func (f *File) Path() string { return f.path }

// BlockDevice reports whether the file is a block device.
func (f *File) BlockDevice() bool { return f.blockDev }

// Size is the size of the file or device when it was opened.
func (f *File) Size() int64 { return f.size }

// ReadAt reads len(p) bytes at off.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange("read "+f.path, off, len(p), f.size); err != nil {
		return 0, err
	}
	n, err := f.f.ReadAt(p, off)
	if err != nil {
		return n, fmt.Errorf("disk: reading %s: %w", f.path, err)
	}
	return n, nil
}

// WriteAt writes p at off.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange("write "+f.path, off, len(p), f.size); err != nil {
		return 0, err
	}
	n, err := f.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("disk: writing %s: %w", f.path, err)
	}
	return n, nil
}

// Sync is fdatasync: the data written so far, and the file size, are
// durable when it returns (on a block device it also flushes the drive's
// volatile cache).
func (f *File) Sync() error {
	err := f.control(func(fd int) error {
		for {
			if err := unix.Fdatasync(fd); err != unix.EINTR {
				return err
			}
		}
	})
	if err != nil {
		return fmt.Errorf("disk: syncing %s: %w", f.path, err)
	}
	return nil
}

// Close closes the file.
func (f *File) Close() error {
	if err := f.f.Close(); err != nil {
		return fmt.Errorf("disk: closing %s: %w", f.path, err)
	}
	return nil
}
