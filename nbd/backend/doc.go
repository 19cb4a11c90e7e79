// Package backend holds the storage devices the NBD server serves: a file
// or block device (File), a sparse in-memory disk (Memory) and a wrapper
// that injects failures (Faulty).
package backend

// maxExtents bounds one Extents answer; the client asks again for the rest,
// and a huge fragmented file cannot make one reply enormous.
const maxExtents = 64
