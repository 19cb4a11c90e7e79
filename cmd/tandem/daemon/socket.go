package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// adminListener is the admin API's Unix socket: mode 0600 from the moment
// it has its name, owned by one daemon (an flock on PATH.lock, which dies
// with the process, so a kill -9 leaves nothing that blocks a restart), and
// accepting only the daemon's own user (or root), checked with SO_PEERCRED.
type adminListener struct {
	*net.UnixListener
	path string
	lock *fileLock
	log  *slog.Logger
	once sync.Once
	err  error
}

// ErrDaemonRunning: another daemon owns the admin socket.
var ErrDaemonRunning = errors.New("another tandem daemon is running for this node")

func listenAdmin(path string, log *slog.Logger) (*adminListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	lock, err := lockPath(path+".lock", true)
	if errors.Is(err, ErrInUse) {
		return nil, fmt.Errorf("admin socket %s: %w (it holds %s.lock); stop it first", path, ErrDaemonRunning, path)
	}
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	l, err := bindAdmin(path, log)
	if err != nil {
		lock.release()
		return nil, err
	}
	return &adminListener{UnixListener: l, path: path, lock: lock, log: log}, nil
}

func bindAdmin(path string, log *slog.Logger) (*net.UnixListener, error) {
	switch st, err := os.Lstat(path); {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("admin socket: %w", err)
	case st.Mode()&os.ModeSocket == 0:
		return nil, fmt.Errorf("admin socket %s exists and is not a socket (%v); remove it or set admin-socket elsewhere", path, st.Mode())
	default:
		// We hold the lock, so no tandem daemon of this version owns it;
		// a connection that is answered means some other process does.
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s: %w (a process answers on it); stop it first", path, ErrDaemonRunning)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("admin socket %s: checking the old socket: %w", path, err)
		}
		log.Info("removing stale admin socket", "path", path)
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin socket: removing stale %s: %w", path, err)
		}
	}
	// Bind in a private directory, chmod, then rename into place: the
	// socket never exists under its name with looser permissions.
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".t")
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	tmpSock := filepath.Join(tmp, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmpSock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false) // it moves; close removes the final name
	if err := os.Chmod(tmpSock, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Rename(tmpSock, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return l, nil
}

// Accept hands over connections from root or the daemon's own user only;
// the 0600 mode already says so, this holds even if someone loosens it.
func (a *adminListener) Accept() (net.Conn, error) {
	for {
		c, err := a.UnixListener.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err == nil && (uid == 0 || uid == os.Geteuid()) {
			return c, nil
		}
		a.log.Warn("admin connection refused", "peer_uid", uid, "err", err)
		c.Close()
	}
}

func peerUID(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

// Close stops listening and removes the socket; the lock goes last.
func (a *adminListener) Close() error {
	a.once.Do(func() {
		a.err = a.UnixListener.Close()
		if err := os.Remove(a.path); err != nil && !errors.Is(err, os.ErrNotExist) && a.err == nil {
			a.err = err
		}
		a.lock.release()
	})
	return a.err
}
