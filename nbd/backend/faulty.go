package backend

import (
	"context"

	"github.com/tandem-ha/tandem/nbd"
)

// Op names a Device call for Faulty.
type Op string

// The operations Faulty can fail.
const (
	OpRead    Op = "read"
	OpWrite   Op = "write"
	OpFlush   Op = "flush"
	OpTrim    Op = "trim"
	OpZero    Op = "zero"
	OpExtents Op = "extents"
	OpCache   Op = "cache"
)

// Faulty wraps a Device so that tests can make any call fail, e.g. to check
// that EIO, ENOSPC or EPERM from the disk reach the client:
//
//	dev := backend.Faulty{Device: backend.NewMemory(size), Fail: func(op backend.Op, off, n int64) error {
//		if op == backend.OpWrite && off >= 1<<20 {
//			return syscall.ENOSPC
//		}
//		return nil
//	}}
//
// Fail is called before each operation (Flush with 0, 0); a non-nil result
// is returned without calling the wrapped device. Fail may also count or
// block calls; it is called concurrently. Features are the wrapped
// device's.
type Faulty struct {
	nbd.Device
	Fail func(op Op, off, length int64) error
}

var (
	_ nbd.Device   = Faulty{}
	_ nbd.Extenter = Faulty{}
	_ nbd.Cacher   = Faulty{}
)

func (f Faulty) fail(op Op, off, length int64) error {
	if f.Fail == nil {
		return nil
	}
	return f.Fail(op, off, length)
}

// ReadAt fails or reads.
func (f Faulty) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := f.fail(OpRead, off, int64(len(p))); err != nil {
		return err
	}
	return f.Device.ReadAt(ctx, p, off)
}

// WriteAt fails or writes.
func (f Faulty) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := f.fail(OpWrite, off, int64(len(p))); err != nil {
		return err
	}
	return f.Device.WriteAt(ctx, p, off, fua)
}

// Flush fails or flushes.
func (f Faulty) Flush(ctx context.Context) error {
	if err := f.fail(OpFlush, 0, 0); err != nil {
		return err
	}
	return f.Device.Flush(ctx)
}

// Trim fails or trims.
func (f Faulty) Trim(ctx context.Context, off, length int64, fua bool) error {
	if err := f.fail(OpTrim, off, length); err != nil {
		return err
	}
	return f.Device.Trim(ctx, off, length, fua)
}

// Zero fails or zeroes.
func (f Faulty) Zero(ctx context.Context, off, length int64, flags nbd.ZeroFlags) error {
	if err := f.fail(OpZero, off, length); err != nil {
		return err
	}
	return f.Device.Zero(ctx, off, length, flags)
}

// Extents fails, or asks the wrapped device if it is an Extenter (else
// nbd.ErrNotSupported; its Features say Extents is false then).
func (f Faulty) Extents(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	if err := f.fail(OpExtents, off, length); err != nil {
		return nil, err
	}
	e, ok := f.Device.(nbd.Extenter)
	if !ok {
		return nil, nbd.ErrNotSupported
	}
	return e.Extents(ctx, off, length)
}

// Cache fails, or asks the wrapped device if it is a Cacher (else
// nbd.ErrNotSupported).
func (f Faulty) Cache(ctx context.Context, off, length int64) error {
	if err := f.fail(OpCache, off, length); err != nil {
		return err
	}
	c, ok := f.Device.(nbd.Cacher)
	if !ok {
		return nbd.ErrNotSupported
	}
	return c.Cache(ctx, off, length)
}
