package nbd

import (
	"context"
	"errors"
	"syscall"
)

// errnoFor maps a device error to the NBD error value sent on the wire.
// The protocol allows only a handful of values; everything unknown is EIO
// so that a client never mistakes a failed write for a transient condition.
func errnoFor(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrNotSupported):
		return errnoNOTSUP
	case errors.Is(err, ErrReadOnly):
		return errnoPERM
	case errors.Is(err, ErrNoSpace):
		return errnoNOSPC
	case errors.Is(err, ErrShutdown), errors.Is(err, context.Canceled):
		return errnoSHUTDOWN
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return errnoNOSPC
		case syscall.EPERM, syscall.EACCES, syscall.EROFS:
			return errnoPERM
		case syscall.EINVAL:
			return errnoINVAL
		case syscall.ENOMEM:
			return errnoNOMEM
		case syscall.EOVERFLOW:
			return errnoOVERFLOW
		case syscall.ENOTSUP:
			return errnoNOTSUP
		case syscall.ESHUTDOWN:
			return errnoSHUTDOWN
		}
	}
	return errnoIO
}

// errnoName is for logs and error-chunk messages.
func errnoName(e uint32) string {
	switch e {
	case 0:
		return "OK"
	case errnoPERM:
		return "EPERM"
	case errnoIO:
		return "EIO"
	case errnoNOMEM:
		return "ENOMEM"
	case errnoINVAL:
		return "EINVAL"
	case errnoNOSPC:
		return "ENOSPC"
	case errnoOVERFLOW:
		return "EOVERFLOW"
	case errnoNOTSUP:
		return "ENOTSUP"
	case errnoSHUTDOWN:
		return "ESHUTDOWN"
	}
	return "E?"
}
