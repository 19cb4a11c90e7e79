package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

const connBufSize = 128 << 10

// serverConn is one client connection: the handshake, then the
// transmission phase, where a single reader decodes requests and runs each
// in its own goroutine; replies go out in completion order.
type serverConn struct {
	srv    *Server
	id     uint64
	log    *slog.Logger
	ctx    context.Context // cancelled only by a hard close
	cancel context.CancelFunc

	mu           sync.Mutex
	nc           net.Conn
	transmitting bool
	shutdown     bool

	// transmission phase
	dev    Device
	limits limits
	br     *bufio.Reader

	wmu     sync.Mutex
	bw      *bufio.Writer
	werr    error
	pending atomic.Int32 // replies waiting for wmu; the last one flushes

	slots    chan struct{}
	bytes    *semaphore.Weighted
	inflight sync.WaitGroup
}

func newServerConn(s *Server, nc net.Conn, id uint64) *serverConn {
	ctx, cancel := context.WithCancel(context.Background())
	return &serverConn{
		srv:    s,
		id:     id,
		nc:     nc,
		ctx:    ctx,
		cancel: cancel,
		log:    s.log.With("conn", id, "remote", nc.RemoteAddr().String()),
	}
}

// beginShutdown stops the connection from taking new work; requests in
// flight complete and are answered.
func (c *serverConn) beginShutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shutdown = true
	if c.transmitting {
		// Unblocks the reader; it sees the flag and stops reading.
		c.nc.SetReadDeadline(time.Unix(1, 0))
	} else {
		c.nc.Close()
	}
}

func (c *serverConn) abort() {
	c.cancel()
	c.mu.Lock()
	c.nc.Close()
	c.mu.Unlock()
}

func (c *serverConn) isShutdown() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shutdown
}

func (c *serverConn) serve() {
	defer c.cancel()
	defer func() {
		c.mu.Lock()
		c.nc.Close()
		c.mu.Unlock()
	}()

	raw := c.nc
	raw.SetDeadline(time.Now().Add(c.srv.opts.HandshakeTimeout))
	hctx, hcancel := context.WithTimeout(c.ctx, c.srv.opts.HandshakeTimeout)
	nc, sess, err := c.srv.negotiate(hctx, raw)
	hcancel()
	if err != nil {
		switch {
		case errors.Is(err, errClientAbort), errors.Is(err, ErrServerClosed):
			c.log.Debug("nbd: handshake ended", "reason", err)
		default:
			c.log.Info("nbd: handshake failed", "err", err)
		}
		return
	}
	// Clear the deadline before publishing the phase, so that a shutdown
	// racing with us sets a deadline nobody overwrites.
	nc.SetDeadline(time.Time{})
	c.mu.Lock()
	c.nc = nc
	c.transmitting = true
	stop := c.shutdown
	c.mu.Unlock()
	if stop {
		return
	}

	e := sess.export
	c.dev = e.Device
	c.limits = limits{
		flags:      c.srv.transmissionFlags(e, sess),
		structured: sess.structured,
		baseAlloc:  sess.baseAlloc,
		size:       uint64(e.Device.Size()),
		maxPayload: c.srv.opts.MaxPayload,
	}
	c.log.Debug("nbd: transmission", "export", e.Name, "structured", sess.structured,
		"base_allocation", sess.baseAlloc, "tls", sess.tls, "flags", c.limits.flags)
	c.transmit(nc)
}

func (c *serverConn) transmit(nc net.Conn) {
	c.br = bufio.NewReaderSize(nc, connBufSize)
	c.bw = bufio.NewWriterSize(nc, connBufSize)
	c.slots = make(chan struct{}, c.srv.opts.QueueDepth)
	c.bytes = semaphore.NewWeighted(c.srv.opts.MaxInFlightBytes)

	c.readLoop()
	c.inflight.Wait()
	c.wmu.Lock()
	if c.werr == nil {
		c.bw.Flush()
	}
	c.wmu.Unlock()
}

func (c *serverConn) readLoop() {
	var hdr [requestHeaderSize]byte
	for {
		if c.isShutdown() {
			return
		}
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			switch {
			case c.isShutdown():
			case errors.Is(err, io.EOF):
				c.log.Debug("nbd: client closed the connection without NBD_CMD_DISC")
			default:
				c.log.Info("nbd: reading request", "err", err)
			}
			return
		}
		req, err := parseRequest(hdr[:])
		if err != nil {
			c.log.Warn("nbd: dropping connection", "err", err)
			return
		}
		if req.typ == cmdDisc {
			c.log.Debug("nbd: client disconnected")
			return
		}
		if req.typ == cmdWrite && req.length > c.limits.maxPayload {
			// The payload cannot be skipped safely: a client this far off
			// the limits it was given is not trusted to be in frame.
			c.log.Warn("nbd: dropping connection: write payload above the advertised maximum",
				"length", req.length, "max", c.limits.maxPayload)
			return
		}
		var weight int64
		if (req.typ == cmdWrite || req.typ == cmdRead) && req.length <= c.limits.maxPayload {
			weight = int64(req.length)
		}
		select {
		case c.slots <- struct{}{}:
		case <-c.ctx.Done():
			return
		}
		if err := c.bytes.Acquire(c.ctx, weight); err != nil {
			<-c.slots
			return
		}
		var payload []byte
		if req.typ == cmdWrite {
			payload = c.srv.pool.get(int(req.length))
			if _, err := io.ReadFull(c.br, payload); err != nil {
				c.srv.pool.put(payload)
				c.bytes.Release(weight)
				<-c.slots
				if !c.isShutdown() {
					c.log.Info("nbd: reading write payload", "err", err)
				}
				return
			}
		}
		c.inflight.Add(1)
		go c.handle(req, payload, weight)
	}
}

func (c *serverConn) handle(req request, payload []byte, weight int64) {
	defer func() {
		if payload != nil {
			c.srv.pool.put(payload)
		}
		c.bytes.Release(weight)
		<-c.slots
		c.inflight.Done()
	}()
	if errno, msg := c.limits.validate(&req); errno != 0 {
		c.log.Debug("nbd: request refused", "cmd", cmdName(req.typ), "offset", req.offset,
			"length", req.length, "flags", req.flags, "errno", errnoName(errno), "why", msg)
		c.replyError(&req, errno, msg)
		return
	}
	ctx := c.ctx
	off, n := int64(req.offset), int64(req.length)
	fua := req.flags&cmdFlagFUA != 0
	var err error
	switch req.typ {
	case cmdRead:
		buf := c.srv.pool.get(int(req.length))
		defer c.srv.pool.put(buf)
		if err = c.dev.ReadAt(ctx, buf, off); err == nil {
			c.replyData(&req, buf)
			return
		}
	case cmdWrite:
		err = c.dev.WriteAt(ctx, payload, off, fua)
	case cmdFlush:
		err = c.dev.Flush(ctx)
	case cmdTrim:
		err = c.dev.Trim(ctx, off, n, fua)
	case cmdWriteZeroes:
		var zf ZeroFlags
		if fua {
			zf |= ZeroFUA
		}
		if req.flags&cmdFlagNoHole != 0 {
			zf |= ZeroNoHole
		}
		if req.flags&cmdFlagFastZero != 0 {
			zf |= ZeroFast
		}
		err = c.dev.Zero(ctx, off, n, zf)
	case cmdCache:
		err = c.dev.(Cacher).Cache(ctx, off, n)
	case cmdBlockStatus:
		var exts []Extent
		if exts, err = c.dev.(Extenter).Extents(ctx, off, n); err == nil {
			c.replyBlockStatus(&req, exts)
			return
		}
	}
	if err != nil {
		errno := errnoFor(err)
		// ENOTSUP is only meaningful to a client that asked for a fast zero.
		if errno == errnoNOTSUP && !(req.typ == cmdWriteZeroes && req.flags&cmdFlagFastZero != 0) {
			errno = errnoINVAL
		}
		if errno != errnoNOTSUP {
			c.log.Warn("nbd: device error", "cmd", cmdName(req.typ), "offset", off, "length", n,
				"errno", errnoName(errno), "err", err)
		}
		c.replyError(&req, errno, err.Error())
		return
	}
	c.replyOK(&req)
}

// send runs write under the writer lock. Replies are buffered and the
// last waiting sender flushes, so a deep queue costs one syscall per
// batch while a lone request is flushed at once.
func (c *serverConn) send(write func(w *bufio.Writer) error) {
	c.pending.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr == nil {
		c.werr = write(c.bw)
	}
	if c.pending.Add(-1) == 0 && c.werr == nil {
		c.werr = c.bw.Flush()
	}
	if c.werr != nil {
		// The client cannot receive replies any more: stop reading too.
		c.mu.Lock()
		c.nc.Close()
		c.mu.Unlock()
	}
}

func putSimpleHeader(b []byte, errno uint32, handle uint64) {
	binary.BigEndian.PutUint32(b[0:], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], handle)
}

func putChunkHeader(b []byte, flags, typ uint16, handle uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:], magicStructReply)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint32(b[16:], length)
}

func (c *serverConn) replyOK(req *request) {
	c.send(func(w *bufio.Writer) error {
		var b [simpleReplySize]byte
		putSimpleHeader(b[:], 0, req.handle)
		_, err := w.Write(b[:])
		return err
	})
}

func (c *serverConn) replyData(req *request, data []byte) {
	c.send(func(w *bufio.Writer) error {
		if !c.limits.structured {
			var b [simpleReplySize]byte
			putSimpleHeader(b[:], 0, req.handle)
			if _, err := w.Write(b[:]); err != nil {
				return err
			}
		} else {
			var b [structReplyHdrSize + 8]byte
			putChunkHeader(b[:], replyFlagDone, replyTypeOffsetData, req.handle, uint32(8+len(data)))
			binary.BigEndian.PutUint64(b[structReplyHdrSize:], req.offset)
			if _, err := w.Write(b[:]); err != nil {
				return err
			}
		}
		_, err := w.Write(data)
		return err
	})
}

// replyError answers with an error; with structured replies the message
// travels along for the client's user to read.
func (c *serverConn) replyError(req *request, errno uint32, msg string) {
	c.send(func(w *bufio.Writer) error {
		if !c.limits.structured {
			var b [simpleReplySize]byte
			putSimpleHeader(b[:], errno, req.handle)
			_, err := w.Write(b[:])
			return err
		}
		if len(msg) > maxStringLen {
			msg = msg[:maxStringLen]
		}
		b := make([]byte, structReplyHdrSize+6, structReplyHdrSize+6+len(msg))
		putChunkHeader(b, replyFlagDone, replyTypeError, req.handle, uint32(6+len(msg)))
		binary.BigEndian.PutUint32(b[structReplyHdrSize:], errno)
		binary.BigEndian.PutUint16(b[structReplyHdrSize+4:], uint16(len(msg)))
		b = append(b, msg...)
		_, err := w.Write(b)
		return err
	})
}

// maxDescriptors bounds one BLOCK_STATUS reply; the client asks again for
// the rest.
const maxDescriptors = 1024

func (c *serverConn) replyBlockStatus(req *request, exts []Extent) {
	desc := make([]byte, 4, 4+8*min(len(exts), maxDescriptors))
	binary.BigEndian.PutUint32(desc, baseAllocationID)
	remaining := int64(req.length)
	var lastStatus uint32
	count := 0
	for _, e := range exts {
		l := min(e.Length, remaining)
		if l <= 0 {
			continue
		}
		var st uint32
		if e.Hole {
			st |= stateHole
		}
		if e.Zero {
			st |= stateZero
		}
		if count > 0 && st == lastStatus {
			// Merge runs the device reported separately.
			i := len(desc) - 8
			binary.BigEndian.PutUint32(desc[i:], binary.BigEndian.Uint32(desc[i:])+uint32(l))
		} else {
			if count == maxDescriptors || (count == 1 && req.flags&cmdFlagReqOne != 0) {
				break
			}
			desc = binary.BigEndian.AppendUint32(desc, uint32(l))
			desc = binary.BigEndian.AppendUint32(desc, st)
			count++
			lastStatus = st
		}
		remaining -= l
		if remaining == 0 {
			break
		}
	}
	if count == 0 {
		// The spec lets a server that cannot tell report "allocated, data".
		desc = binary.BigEndian.AppendUint32(desc, req.length)
		desc = binary.BigEndian.AppendUint32(desc, 0)
	}
	c.send(func(w *bufio.Writer) error {
		var b [structReplyHdrSize]byte
		putChunkHeader(b[:], replyFlagDone, replyTypeBlockStatus, req.handle, uint32(len(desc)))
		if _, err := w.Write(b[:]); err != nil {
			return err
		}
		_, err := w.Write(desc)
		return err
	})
}
