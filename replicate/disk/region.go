package disk

import (
	"fmt"
	"sync/atomic"
)

// region is a window [off, off+size) of another Disk.
type region struct {
	d         Disk
	off, size int64
	closed    atomic.Bool
}

// NewRegion returns the window [off, off+size) of d as a Disk of its own:
// offsets are relative to off, and an access outside the window fails with
// ErrOutOfRange instead of spilling into the neighbouring area (the data
// next to internal metadata, or the metadata next to the data).
//
// Sync syncs all of d (there is no narrower durability on a file or a
// device). Close only stops the region; it does not close d, which the
// caller owns and may have handed out other regions of.
//
// The window must lie inside d; a window that does not is a programming
// error (layouts are validated before regions are made) and panics.
func NewRegion(d Disk, off, size int64) Disk {
	if off < 0 || size < 0 || off > d.Size()-size {
		panic(fmt.Sprintf("disk: region [%d, +%d) outside a disk of %d bytes", off, size, d.Size()))
	}
	return &region{d: d, off: off, size: size}
}

func (r *region) Size() int64 { return r.size }

func (r *region) ReadAt(p []byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	if err := checkRange("region read", off, len(p), r.size); err != nil {
		return 0, err
	}
	return r.d.ReadAt(p, r.off+off)
}

func (r *region) WriteAt(p []byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	if err := checkRange("region write", off, len(p), r.size); err != nil {
		return 0, err
	}
	return r.d.WriteAt(p, r.off+off)
}

func (r *region) Sync() error {
	if r.closed.Load() {
		return ErrClosed
	}
	return r.d.Sync()
}

func (r *region) Close() error {
	r.closed.Store(true)
	return nil
}
