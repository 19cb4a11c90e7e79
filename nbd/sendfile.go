package nbd

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// sendFile writes n bytes of f from off to the socket behind rc with
// sendfile(2), waiting for the socket through the netpoller.
func sendFile(rc syscall.RawConn, f *os.File, off, n int64) error {
	frc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("nbd: sendfile: %w", err)
	}
	var serr error
	cerr := frc.Control(func(ffd uintptr) {
		werr := rc.Write(func(sfd uintptr) bool {
			for n > 0 {
				o := off
				m, e := unix.Sendfile(int(sfd), int(ffd), &o, int(min(n, 1<<30)))
				if m > 0 {
					off += int64(m)
					n -= int64(m)
				}
				switch {
				case e == unix.EAGAIN:
					return false // wait until the socket is writable
				case e == unix.EINTR:
				case e != nil:
					serr = e
					return true
				case m == 0:
					serr = io.ErrUnexpectedEOF // the file is shorter than the export
					return true
				}
			}
			return true
		})
		if serr == nil {
			serr = werr
		}
	})
	if serr == nil {
		serr = cerr
	}
	if serr != nil {
		return fmt.Errorf("nbd: sendfile: %w", serr)
	}
	return nil
}

// sendMore writes b to the socket behind rc with MSG_MORE, so that it
// leaves in the same segments as the data that follows.
func sendMore(rc syscall.RawConn, b []byte) error {
	var serr error
	werr := rc.Write(func(fd uintptr) bool {
		for len(b) > 0 {
			n, e := unix.SendmsgN(int(fd), b, nil, nil, unix.MSG_MORE|unix.MSG_NOSIGNAL)
			if n > 0 {
				b = b[n:]
			}
			switch {
			case e == unix.EAGAIN:
				return false
			case e == unix.EINTR:
			case e != nil:
				serr = e
				return true
			}
		}
		return true
	})
	if serr == nil {
		serr = werr
	}
	if serr != nil {
		return fmt.Errorf("nbd: send: %w", serr)
	}
	return nil
}
