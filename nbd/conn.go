package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
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
	export       string // the export of the transmission phase

	// transmission phase
	dev    Device
	limits limits
	br     *bufio.Reader

	wmu sync.Mutex
	wc  net.Conn // where replies go
	// rawOut is the socket for sendfile; nil under TLS.
	rawOut  syscall.RawConn
	out     []byte // replies not yet written
	werr    error
	pending atomic.Int32 // replies waiting for wmu; the last one flushes

	slots chan struct{}
	bytes *semaphore.Weighted
	// readMu makes one worker at a time the reader; the fields below it
	// are guarded by it. Long-lived workers spare a goroutine creation and
	// a stack growth per request.
	readMu   sync.Mutex
	readDone bool
	nworkers int
	idle     atomic.Int32 // workers waiting for readMu
	workers  sync.WaitGroup
}

type job struct {
	req     request
	payload []byte
	weight  int64
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

func (c *serverConn) usesExport(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.transmitting && c.export == name
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
	e := sess.export
	c.mu.Lock()
	c.nc = nc
	c.transmitting = true
	c.export = e.Name
	stop := c.shutdown
	c.mu.Unlock()
	if stop {
		return
	}
	// After c.export is set: RemoveExport either finds it or has
	// replaced the list already (exports.go).
	if !c.srv.exported(e.Name) {
		c.log.Info("nbd: export removed during the handshake", "export", e.Name)
		return
	}

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
	c.wc = nc
	if sc, ok := nc.(syscall.Conn); ok {
		if _, isFS := c.dev.(FileSource); isFS {
			c.rawOut, _ = sc.SyscallConn()
		}
	}
	c.out = make([]byte, 0, connBufSize+64<<10)
	c.slots = make(chan struct{}, c.srv.opts.QueueDepth)
	c.bytes = semaphore.NewWeighted(c.srv.opts.MaxInFlightBytes)

	c.readMu.Lock()
	c.startWorker()
	c.readMu.Unlock()
	c.workers.Wait()
}

// startWorker adds a goroutine to the connection's pool. Called with
// readMu held.
func (c *serverConn) startWorker() {
	c.nworkers++
	c.workers.Add(1)
	go c.worker()
}

// worker is the connection's leader/follower loop: whoever holds readMu
// reads the next request, passes the reader role on, and executes the
// request itself. Handing the request to another goroutine instead would
// put a wake-up of another thread on the critical path of every request;
// here the next reader wakes while this one works. The pool grows only
// when nobody is waiting to read, so it never exceeds QueueDepth + 1
// (every executing worker holds a slot).
func (c *serverConn) worker() {
	defer c.workers.Done()
	for {
		c.idle.Add(1)
		c.readMu.Lock()
		c.idle.Add(-1)
		if c.readDone {
			c.readMu.Unlock()
			return
		}
		j, ok := c.readOne()
		if !ok {
			c.readDone = true
			c.readMu.Unlock()
			return
		}
		if c.idle.Load() == 0 && c.nworkers <= c.srv.opts.QueueDepth {
			c.startWorker()
		}
		c.readMu.Unlock()
		c.handle(j.req, j.payload, j.weight)
	}
}

// readOne reads the next request, with its payload, once flow control
// admits it. ok=false ends reading on this connection.
func (c *serverConn) readOne() (j job, ok bool) {
	if c.isShutdown() {
		return job{}, false
	}
	var hdr [requestHeaderSize]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		switch {
		case c.isShutdown():
		case errors.Is(err, io.EOF):
			c.log.Debug("nbd: client closed the connection without NBD_CMD_DISC")
		default:
			c.log.Info("nbd: reading request", "err", err)
		}
		return job{}, false
	}
	req, err := parseRequest(hdr[:])
	if err != nil {
		c.log.Warn("nbd: dropping connection", "err", err)
		return job{}, false
	}
	if req.typ == cmdDisc {
		c.log.Debug("nbd: client disconnected")
		return job{}, false
	}
	if req.typ == cmdWrite && req.length > c.limits.maxPayload {
		// The payload cannot be skipped safely: a client this far off
		// the limits it was given is not trusted to be in frame.
		c.log.Warn("nbd: dropping connection: write payload above the advertised maximum",
			"length", req.length, "max", c.limits.maxPayload)
		return job{}, false
	}
	var weight int64
	if (req.typ == cmdWrite || req.typ == cmdRead) && req.length <= c.limits.maxPayload {
		weight = int64(req.length)
	}
	select {
	case c.slots <- struct{}{}:
	case <-c.ctx.Done():
		return job{}, false
	}
	if err := c.bytes.Acquire(c.ctx, weight); err != nil {
		<-c.slots
		return job{}, false
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
			return job{}, false
		}
	}
	return job{req, payload, weight}, true
}

func (c *serverConn) handle(req request, payload []byte, weight int64) {
	defer func() {
		if payload != nil {
			c.srv.pool.put(payload)
		}
		c.bytes.Release(weight)
		<-c.slots
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
		if n >= directWriteMin && c.rawOut != nil {
			if f, fo, ok := c.dev.(FileSource).FileRange(off, n); ok {
				c.replyFile(&req, f, fo)
				return
			}
		}
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

// send appends a reply under the writer lock. Replies are buffered and
// the last waiting sender flushes, so a deep queue costs one syscall per
// batch while a lone request is flushed at once.
func (c *serverConn) send(appendReply func(b []byte) []byte) {
	c.pending.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr == nil {
		c.out = appendReply(c.out)
	}
	if (c.pending.Add(-1) == 0 || len(c.out) >= connBufSize) && c.werr == nil {
		c.flushLocked(nil, nil)
	}
}

// flushLocked writes the buffered replies, then hdr and data if given,
// in one writev: a large read payload is never copied.
func (c *serverConn) flushLocked(hdr, data []byte) {
	if len(c.out) == 0 && hdr == nil {
		return
	}
	bufs := net.Buffers{c.out, hdr, data}
	_, c.werr = bufs.WriteTo(c.wc)
	c.out = c.out[:0]
	if c.werr != nil {
		// The client cannot receive replies any more: stop reading too.
		c.mu.Lock()
		c.nc.Close()
		c.mu.Unlock()
	}
}

func appendSimpleHeader(b []byte, errno uint32, handle uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, magicSimpleReply)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, handle)
}

func appendChunkHeader(b []byte, flags, typ uint16, handle uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, magicStructReply)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	return binary.BigEndian.AppendUint32(b, length)
}

func (c *serverConn) replyOK(req *request) {
	c.send(func(b []byte) []byte { return appendSimpleHeader(b, 0, req.handle) })
}

// directWriteMin is the read size from which the payload bypasses the
// reply buffer.
const directWriteMin = 32 << 10

// appendDataHeader starts a successful read reply.
func (c *serverConn) appendDataHeader(b []byte, req *request) []byte {
	if !c.limits.structured {
		return appendSimpleHeader(b, 0, req.handle)
	}
	b = appendChunkHeader(b, replyFlagDone, replyTypeOffsetData, req.handle, 8+req.length)
	return binary.BigEndian.AppendUint64(b, req.offset)
}

func (c *serverConn) replyData(req *request, data []byte) {
	var hb [structReplyHdrSize + 8]byte
	hdr := c.appendDataHeader(hb[:0], req)
	if len(data) < directWriteMin {
		c.send(func(b []byte) []byte { return append(append(b, hdr...), data...) })
		return
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr == nil {
		c.flushLocked(hdr, data)
	}
}

// replyFile sends a read reply whose data comes from f by sendfile.
func (c *serverConn) replyFile(req *request, f *os.File, fileOff int64) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	// The buffered replies and this header go out with MSG_MORE: the
	// kernel holds them for the data instead of waking the client for a
	// 28-byte segment.
	c.out = c.appendDataHeader(c.out, req)
	err := sendMore(c.rawOut, c.out)
	c.out = c.out[:0]
	if err == nil {
		err = sendFile(c.rawOut, f, fileOff, int64(req.length))
	}
	if err != nil {
		// Once the header is out the data is promised: only hanging up
		// is left (the spec's rule for an error after a successful reply
		// header).
		c.log.Warn("nbd: read reply failed; dropping the connection",
			"offset", req.offset, "length", req.length, "err", err)
		c.werr = err
		c.mu.Lock()
		c.nc.Close()
		c.mu.Unlock()
	}
}

// replyError answers with an error; with structured replies the message
// travels along for the client's user to read.
func (c *serverConn) replyError(req *request, errno uint32, msg string) {
	c.send(func(b []byte) []byte {
		if !c.limits.structured {
			return appendSimpleHeader(b, errno, req.handle)
		}
		if len(msg) > maxStringLen {
			msg = msg[:maxStringLen]
		}
		b = appendChunkHeader(b, replyFlagDone, replyTypeError, req.handle, uint32(6+len(msg)))
		b = binary.BigEndian.AppendUint32(b, errno)
		b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
		return append(b, msg...)
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
	c.send(func(b []byte) []byte {
		b = appendChunkHeader(b, replyFlagDone, replyTypeBlockStatus, req.handle, uint32(len(desc)))
		return append(b, desc...)
	})
}
