package disk

import (
	"context"
	"fmt"

	"github.com/tandem-ha/tandem/nbd"
)

// DeviceOptions configure Device.
type DeviceOptions struct {
	// ReadOnly refuses writes, trims and zeroes with nbd.ErrReadOnly.
	ReadOnly bool
}

// zeroChunk bounds the buffer Trim and Zero write from, so that zeroing a
// large range does not allocate its size.
const zeroChunk = 1 << 20

// device adapts a Disk to nbd.Device.
type device struct {
	d    Disk
	opts DeviceOptions
}

// Device adapts d to nbd.Device, so that crash tests can run a volume (or
// an NBD server) on a Mem. FUA is a write followed by Sync, Flush is Sync,
// and Trim and Zero write zeroes: a Disk has no holes, and deterministic
// zeroes keep replicas comparable byte for byte. A fast zero is refused
// with nbd.ErrNotSupported (writing zeroes is not faster than writing), and
// the features say so. Sync covers writes from every caller, hence
// MultiConn.
func Device(d Disk, opts DeviceOptions) nbd.Device {
	return &device{d: d, opts: opts}
}

func (v *device) Size() int64 { return v.d.Size() }

func (v *device) Features() nbd.Features {
	return nbd.Features{
		ReadOnly:  v.opts.ReadOnly,
		Flush:     true,
		FUA:       true,
		Trim:      true,
		Zero:      true,
		MultiConn: true,
	}
}

func (v *device) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := v.d.ReadAt(p, off); err != nil {
		return err
	}
	return nil
}

func (v *device) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if v.opts.ReadOnly {
		return nbd.ErrReadOnly
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := v.d.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		return v.d.Sync()
	}
	return nil
}

func (v *device) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return v.d.Sync()
}

func (v *device) Trim(ctx context.Context, off, length int64, fua bool) error {
	return v.zero(ctx, off, length, fua)
}

func (v *device) Zero(ctx context.Context, off, length int64, flags nbd.ZeroFlags) error {
	if flags&nbd.ZeroFast != 0 {
		return nbd.ErrNotSupported
	}
	return v.zero(ctx, off, length, flags&nbd.ZeroFUA != 0)
}

func (v *device) zero(ctx context.Context, off, length int64, fua bool) error {
	if v.opts.ReadOnly {
		return nbd.ErrReadOnly
	}
	if off < 0 || length < 0 || off > v.d.Size()-length {
		return fmt.Errorf("disk: zeroing %d bytes at %d on %d bytes: %w", length, off, v.d.Size(), ErrOutOfRange)
	}
	buf := make([]byte, min(length, zeroChunk))
	for length > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(length, int64(len(buf)))
		if _, err := v.d.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	if fua {
		return v.d.Sync()
	}
	return nil
}
