package nbd

import (
	"context"
	"errors"
	"os"
)

// Device is the block device an export serves. The NBD server calls it
// concurrently from many goroutines; implementations must be safe for that.
//
// Offsets and lengths are already validated against Size (and the block
// size constraints the device reports) when a method is called.
//
// Errors are mapped to NBD error values: a syscall.Errno is mapped by its
// value (ENOSPC, EDQUOT and EFBIG become ENOSPC; EPERM, EACCES and EROFS
// become EPERM; EINVAL; ENOMEM; EOVERFLOW; ENOTSUP/EOPNOTSUPP; ESHUTDOWN),
// the sentinels below by their meaning, and anything else becomes EIO.
type Device interface {
	// Size is the export size in bytes. It must not change while served.
	Size() int64

	// ReadAt fills p from offset off.
	ReadAt(ctx context.Context, p []byte, off int64) error

	// WriteAt writes p at off. With fua the data must be durable when it
	// returns.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error

	// Flush makes durable every write that returned before Flush was
	// called, on any connection (that is what makes CAN_MULTI_CONN true).
	Flush(ctx context.Context) error

	// Trim discards a range (a hint: afterwards its contents are undefined
	// until written again). With fua the discard must be durable on return.
	Trim(ctx context.Context, off, length int64, fua bool) error

	// Zero makes a range read as zeroes. See ZeroFlags.
	Zero(ctx context.Context, off, length int64, flags ZeroFlags) error

	// Features says what the device supports; the server advertises
	// exactly this. It is read once per connection.
	Features() Features
}

// ZeroFlags qualify a Zero request.
type ZeroFlags uint8

const (
	// ZeroFUA: the zeroes must be durable when Zero returns.
	ZeroFUA ZeroFlags = 1 << iota
	// ZeroNoHole: the range must stay allocated (write zeroes, do not punch).
	ZeroNoHole
	// ZeroFast: only succeed if zeroing is cheaper than writing; otherwise
	// return ErrNotSupported at once without touching the range.
	ZeroFast
)

// Features describe a Device's capabilities.
type Features struct {
	ReadOnly   bool // writes, trims and zeroes are refused with EPERM
	Flush      bool // the device has a volatile cache: FLUSH and FUA mean something
	FUA        bool // WriteAt/Trim/Zero honour fua natively
	Trim       bool
	Zero       bool
	FastZero   bool // Zero understands ZeroFast
	Cache      bool // implements Cacher
	Extents    bool // implements Extenter (base:allocation)
	MultiConn  bool // Flush covers writes completed on every connection
	Rotational bool

	// Block size constraints advertised with NBD_INFO_BLOCK_SIZE. Zero
	// values take the server defaults (1, 4096, the server's maximum).
	MinBlock, PreferredBlock, MaxBlock uint32
}

// Extent is one run of the base:allocation context.
type Extent struct {
	Length int64
	Hole   bool // not allocated in the backing store
	Zero   bool // reads as zeroes
}

// Extenter is implemented by devices that know where their holes are.
// Extents describes the range starting at off; it may describe less than
// length (at least one extent) but never more.
type Extenter interface {
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// Cacher is implemented by devices that can prefetch a range (NBD_CMD_CACHE).
type Cacher interface {
	Cache(ctx context.Context, off, length int64) error
}

// Sentinel errors a Device may return; they map to specific NBD errors.
var (
	// ErrNotSupported: the operation or its flags are not supported
	// (ENOTSUP on the wire; required for a refused FAST_ZERO).
	ErrNotSupported = errors.New("nbd: operation not supported")
	// ErrReadOnly: the device refuses writes (EPERM).
	ErrReadOnly = errors.New("nbd: device is read-only")
	// ErrNoSpace: the backing store is full (ENOSPC).
	ErrNoSpace = errors.New("nbd: no space left on device")
	// ErrShutdown: the device is going away (ESHUTDOWN).
	ErrShutdown = errors.New("nbd: device shutting down")
)

// FileSource is implemented by devices that keep a range's bytes in an
// open file. The server then sends large reads over plain TCP or Unix
// sockets with sendfile(2): the page cache pages go to the socket by
// reference, skipping both copies through user space. ok=false means
// "use ReadAt" (for example under O_DIRECT, where the page cache is not
// authoritative).
type FileSource interface {
	FileRange(off, length int64) (f *os.File, fileOff int64, ok bool)
}
