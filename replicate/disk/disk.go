// Package disk is the storage seam under a replica: every durable byte of
// its metadata (and, in crash tests, its data) goes through the small Disk
// interface, so that tests can inject I/O errors and simulate a power cut
// that drops whatever was not synced (the idea of pebble's vfs).
//
// Implementations: File (a regular file or a block device), NewRegion (a
// bounds-checked window of another Disk: internal metadata lives at the end
// of the backing device), and Mem (in memory, with Crash and fault hooks).
// Device adapts any Disk to nbd.Device so the real volume code runs on Mem.
package disk

import (
	"errors"
	"fmt"
)

// Disk is a fixed-size store of bytes. ReadAt and WriteAt have the
// io.ReaderAt and io.WriterAt semantics (an error whenever n < len(p)) and
// may be called concurrently; an access that does not lie entirely inside
// [0, Size) fails with ErrOutOfRange and touches nothing.
type Disk interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes every write that returned before it was called durable
	// (fdatasync): a power cut afterwards cannot lose them.
	Sync() error
	Size() int64
	Close() error
}

var (
	// ErrOutOfRange: an access reaches outside the disk or region.
	ErrOutOfRange = errors.New("disk: access out of range")
	// ErrClosed: the disk was closed.
	ErrClosed = errors.New("disk: closed")
)

// checkRange validates an access of n bytes at off on a disk of size bytes,
// without overflowing for offsets near the int64 limit.
func checkRange(what string, off int64, n int, size int64) error {
	if off < 0 || int64(n) > size || off > size-int64(n) {
		return fmt.Errorf("disk: %s: %d bytes at %d on %d bytes: %w", what, n, off, size, ErrOutOfRange)
	}
	return nil
}
