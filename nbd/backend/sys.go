//go:build linux

package backend

import (
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysFile is everything File asks of the kernel. It is a seam so that tests
// can stand in for disks and filesystems this machine does not have: one
// without fallocate, a kernel without RWF_DSYNC, a disk that returns EIO.
// Offsets and lengths are in bytes; errors are the kernel's, unwrapped.
type sysFile interface {
	// ReadAt and WriteAt are pread and pwrite with io.ReaderAt/WriterAt
	// semantics (an error whenever n < len(p)).
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// WriteAtDsync writes p and makes that write, and only it, durable
	// (pwritev2 with RWF_DSYNC). ENOSYS or EOPNOTSUPP mean the kernel
	// cannot; nothing was written then.
	WriteAtDsync(p []byte, off int64) (int, error)
	Datasync() error
	Fallocate(mode uint32, off, length int64) error
	// RangeIoctl issues a block device ioctl that takes a {start, length}
	// pair: BLKDISCARD or BLKZEROOUT.
	RangeIoctl(req uint, off, length int64) error
	Seek(off int64, whence int) (int64, error)
	Fadvise(off, length int64, advice int) error
	Close() error
}

// osFile implements sysFile on an *os.File. Raw-fd calls go through
// SyscallConn so that a call racing with Close fails with os.ErrClosed
// instead of hitting whatever file reuses the descriptor number.
type osFile struct {
	f  *os.File
	rc syscall.RawConn
}

func newOSFile(f *os.File) (*osFile, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &osFile{f: f, rc: rc}, nil
}

func (s *osFile) control(fn func(fd int) error) error {
	var opErr error
	if err := s.rc.Control(func(fd uintptr) { opErr = fn(int(fd)) }); err != nil {
		// The only failure is a closed file; say so the way ReadAt does.
		return os.ErrClosed
	}
	return opErr
}

func (s *osFile) ReadAt(p []byte, off int64) (int, error)  { return s.f.ReadAt(p, off) }
func (s *osFile) WriteAt(p []byte, off int64) (int, error) { return s.f.WriteAt(p, off) }
func (s *osFile) Seek(off int64, whence int) (int64, error) {
	return s.f.Seek(off, whence)
}
func (s *osFile) Close() error { return s.f.Close() }

func (s *osFile) WriteAtDsync(p []byte, off int64) (int, error) {
	n := 0
	err := s.control(func(fd int) error {
		for n < len(p) {
			m, err := unix.Pwritev2(fd, [][]byte{p[n:]}, off+int64(n), unix.RWF_DSYNC)
			switch {
			case err == unix.EINTR:
				continue
			case err != nil:
				return err
			case m == 0:
				return io.ErrShortWrite
			}
			n += m
		}
		return nil
	})
	return n, err
}

func (s *osFile) Datasync() error {
	return s.control(func(fd int) error { return retryEINTR(func() error { return unix.Fdatasync(fd) }) })
}

func (s *osFile) Fallocate(mode uint32, off, length int64) error {
	return s.control(func(fd int) error {
		return retryEINTR(func() error { return unix.Fallocate(fd, mode, off, length) })
	})
}

func (s *osFile) RangeIoctl(req uint, off, length int64) error {
	r := [2]uint64{uint64(off), uint64(length)}
	return s.control(func(fd int) error {
		return retryEINTR(func() error {
			_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&r)))
			if e != 0 {
				return e
			}
			return nil
		})
	})
}

func (s *osFile) Fadvise(off, length int64, advice int) error {
	return s.control(func(fd int) error { return unix.Fadvise(fd, off, length, advice) })
}

// blockDevGeometry returns a block device's size and logical sector size.
func (s *osFile) blockDevGeometry() (size int64, sector int, err error) {
	err = s.control(func(fd int) error {
		var sz uint64
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&sz))); e != 0 {
			return e
		}
		size = int64(sz)
		var err error
		sector, err = unix.IoctlGetInt(fd, unix.BLKSSZGET)
		return err
	})
	return size, sector, err
}

func retryEINTR(fn func() error) error {
	for {
		if err := fn(); err != unix.EINTR {
			return err
		}
	}
}
