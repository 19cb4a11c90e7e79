package nbd

import (
	"encoding/binary"
	"fmt"
)

// request is one decoded transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// parseRequest decodes a 28-byte request header.
func parseRequest(b []byte) (request, error) {
	if len(b) < requestHeaderSize {
		return request{}, fmt.Errorf("%w: short request header (%d bytes)", errProtocol, len(b))
	}
	if m := binary.BigEndian.Uint32(b); m != magicRequest {
		return request{}, fmt.Errorf("%w: bad request magic %#x", errProtocol, m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		handle: binary.BigEndian.Uint64(b[8:]),
		offset: binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("CMD_%d", t)
}

// limits is what a request is checked against: the negotiated
// transmission flags, the session and the export size.
type limits struct {
	flags      uint16
	structured bool
	baseAlloc  bool
	size       uint64
	maxPayload uint32
}

// validate returns the NBD error for a request the server must refuse,
// with a message for the client, or 0 if the request may run.
func (l *limits) validate(r *request) (uint32, string) {
	allowed := uint16(0)
	if l.flags&flagSendFUA != 0 {
		allowed |= cmdFlagFUA
	}
	switch r.typ {
	case cmdRead:
		if l.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdTrim, cmdFlush, cmdCache:
	case cmdWriteZeroes:
		allowed |= cmdFlagNoHole
		if l.flags&flagSendFastZero != 0 {
			allowed |= cmdFlagFastZero
		}
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
	default:
		return errnoINVAL, fmt.Sprintf("unknown command %d", r.typ)
	}
	if bad := r.flags &^ allowed; bad != 0 {
		return errnoINVAL, fmt.Sprintf("%s: unsupported command flags %#x", cmdName(r.typ), bad)
	}
	ro := l.flags&flagReadOnly != 0
	need := func(bit uint16) bool { return l.flags&bit != 0 }
	switch r.typ {
	case cmdFlush:
		if !need(flagSendFlush) {
			return errnoINVAL, "FLUSH not supported by this export"
		}
		if r.offset != 0 || r.length != 0 {
			return errnoINVAL, "FLUSH with non-zero offset or length"
		}
		return 0, ""
	case cmdWrite:
		if ro {
			return errnoPERM, "export is read-only"
		}
	case cmdTrim:
		if ro {
			return errnoPERM, "export is read-only"
		}
		if !need(flagSendTrim) {
			return errnoINVAL, "TRIM not supported by this export"
		}
	case cmdWriteZeroes:
		if ro {
			return errnoPERM, "export is read-only"
		}
		if !need(flagSendWriteZeroes) {
			return errnoINVAL, "WRITE_ZEROES not supported by this export"
		}
	case cmdCache:
		if !need(flagSendCache) {
			return errnoINVAL, "CACHE not supported by this export"
		}
	case cmdBlockStatus:
		if !l.baseAlloc {
			return errnoINVAL, "BLOCK_STATUS without a negotiated meta context"
		}
	}
	if r.length == 0 {
		return errnoINVAL, fmt.Sprintf("%s with zero length", cmdName(r.typ))
	}
	if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > l.maxPayload {
		return errnoINVAL, fmt.Sprintf("%s of %d bytes exceeds the maximum of %d", cmdName(r.typ), r.length, l.maxPayload)
	}
	end := r.offset + uint64(r.length)
	if end < r.offset || end > l.size {
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return errnoNOSPC, fmt.Sprintf("%s past the end of the export (%d bytes)", cmdName(r.typ), l.size)
		}
		return errnoINVAL, fmt.Sprintf("%s past the end of the export (%d bytes)", cmdName(r.typ), l.size)
	}
	return 0, ""
}
