package daemon

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrInUse: another process (a running daemon, or create-md) holds a lock.
var ErrInUse = errors.New("in use by another tandem process")

// fileLock is an exclusive flock(2) held for the life of a process: a
// daemon on a replica's device, or on its admin socket. The kernel drops it
// when the process dies, so a kill -9 leaves no stale lock behind.
type fileLock struct{ f *os.File }

// lockPath takes an exclusive lock on path, without waiting. create makes
// a missing file (the admin socket's lock file); devices must exist.
func lockPath(path string, create bool) (*fileLock, error) {
	flags := os.O_RDONLY
	if create {
		flags = os.O_RDWR | os.O_CREATE
	}
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is %w", path, ErrInUse)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return &fileLock{f: f}, nil
}

func (l *fileLock) release() {
	if l != nil && l.f != nil {
		l.f.Close() // closing the descriptor drops the flock
		l.f = nil
	}
}
