package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// memDevice is the test double for Device: a byte slice with hooks to
// block, fail or count operations. (nbd/backend has the real ones; this
// package's tests cannot import it without a cycle.)
type memDevice struct {
	mu      sync.Mutex
	data    []byte
	feat    Features
	flushes int
	fuas    int
	zflags  []ZeroFlags
	// hook runs before every operation; it may block or fail it.
	hook    func(op string, off, n int64) error
	extents []Extent
}

func newMem(size int, f Features) *memDevice {
	return &memDevice{data: make([]byte, size), feat: f}
}

var allFeatures = Features{Flush: true, FUA: true, Trim: true, Zero: true, FastZero: true, Cache: true, Extents: true, MultiConn: true}

func (m *memDevice) run(op string, off, n int64) error {
	if m.hook != nil {
		return m.hook(op, off, n)
	}
	return nil
}

func (m *memDevice) Size() int64        { return int64(len(m.data)) }
func (m *memDevice) Features() Features { return m.feat }
func (m *memDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := m.run("read", off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}
func (m *memDevice) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	if err := m.run("write", off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	if fua {
		m.fuas++
	}
	return nil
}
func (m *memDevice) Flush(context.Context) error {
	if err := m.run("flush", 0, 0); err != nil {
		return err
	}
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}
func (m *memDevice) Trim(_ context.Context, off, n int64, fua bool) error {
	if err := m.run("trim", off, n); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}
func (m *memDevice) Zero(_ context.Context, off, n int64, f ZeroFlags) error {
	if err := m.run("zero", off, n); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.zflags = append(m.zflags, f)
	clear(m.data[off : off+n])
	return nil
}
func (m *memDevice) Cache(_ context.Context, off, n int64) error { return m.run("cache", off, n) }
func (m *memDevice) Extents(_ context.Context, off, n int64) ([]Extent, error) {
	if err := m.run("extents", off, n); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.extents, nil
}
func (m *memDevice) snapshot() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.data)
}

// startServer serves exports on loopback and stops the server when the
// test ends, failing it if goroutines were left behind.
func startServer(t testing.TB, opts Options) (*Server, string) {
	t.Helper()
	s, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return s, l.Addr().String()
}

// testClient speaks just enough NBD to drive the server byte by byte.
type testClient struct {
	t  testing.TB
	nc net.Conn
	// transmission phase
	structured bool
	size       uint64
	flags      uint16
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func dialRaw(t testing.TB, addr string) *testClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return &testClient{t: t, nc: nc}
}

// hello reads the greeting and sends client flags.
func (c *testClient) hello(clientFlags uint32) uint16 {
	c.t.Helper()
	var b [18]byte
	c.readFull(b[:])
	if binary.BigEndian.Uint64(b[0:]) != magicNBD || binary.BigEndian.Uint64(b[8:]) != magicIHaveOpt {
		c.t.Fatalf("bad greeting % x", b)
	}
	c.write(binary.BigEndian.AppendUint32(nil, clientFlags))
	return binary.BigEndian.Uint16(b[16:])
}

func dial(t testing.TB, addr string) *testClient {
	c := dialRaw(t, addr)
	c.hello(flagCFixedNewstyle | flagCNoZeroes)
	return c
}

func (c *testClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *testClient) readFull(b []byte) {
	c.t.Helper()
	if _, err := io.ReadFull(c.nc, b); err != nil {
		c.t.Fatalf("read: %v", err)
	}
}

func (c *testClient) sendOpt(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

func (c *testClient) readOptReply() optReply {
	c.t.Helper()
	var h [20]byte
	c.readFull(h[:])
	if binary.BigEndian.Uint64(h[0:]) != magicOptReply {
		c.t.Fatalf("bad option reply magic % x", h)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	c.readFull(r.data)
	return r
}

// opt sends an option and collects replies up to the final one.
func (c *testClient) opt(opt uint32, data []byte) []optReply {
	c.t.Helper()
	c.sendOpt(opt, data)
	var rs []optReply
	for {
		r := c.readOptReply()
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		rs = append(rs, r)
		if r.typ == repAck || r.typ&(1<<31) != 0 {
			return rs
		}
	}
}

func lastType(rs []optReply) uint32 { return rs[len(rs)-1].typ }

func nameData(name string, rest ...byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	return append(append(b, name...), rest...)
}

func metaData(export string, queries ...string) []byte {
	b := nameData(export)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = append(b, nameData(q)...)
	}
	return b
}

// goExport finishes the handshake with NBD_OPT_GO.
func (c *testClient) goExport(name string, structured bool, meta ...string) {
	c.t.Helper()
	if structured {
		if rs := c.opt(optStructuredReply, nil); lastType(rs) != repAck {
			c.t.Fatalf("structured reply refused: %#x", lastType(rs))
		}
		c.structured = true
	}
	if len(meta) > 0 {
		c.opt(optSetMetaContext, metaData(name, meta...))
	}
	rs := c.opt(optGo, nameData(name, 0, 0))
	if lastType(rs) != repAck {
		c.t.Fatalf("NBD_OPT_GO %q: reply %#x %q", name, lastType(rs), rs[len(rs)-1].data)
	}
	for _, r := range rs {
		if r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport {
			c.size = binary.BigEndian.Uint64(r.data[2:])
			c.flags = binary.BigEndian.Uint16(r.data[10:])
		}
	}
}

func (c *testClient) request(typ, flags uint16, handle, off uint64, length uint32, payload []byte) {
	b := make([]byte, requestHeaderSize, requestHeaderSize+len(payload))
	binary.BigEndian.PutUint32(b[0:], magicRequest)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	c.write(append(b, payload...))
}

// reply is one complete answer, simple or structured (chunks merged).
type reply struct {
	handle uint64
	errno  uint32
	msg    string
	data   []byte // read payload
	descs  [][2]uint32
}

// readReply reads one reply. For simple read replies the caller says how
// long the data is (the protocol does not).
func (c *testClient) readReply(readLen map[uint64]int) reply {
	c.t.Helper()
	var m [4]byte
	c.readFull(m[:])
	switch binary.BigEndian.Uint32(m[:]) {
	case magicSimpleReply:
		var h [12]byte
		c.readFull(h[:])
		r := reply{errno: binary.BigEndian.Uint32(h[0:]), handle: binary.BigEndian.Uint64(h[4:])}
		if n, ok := readLen[r.handle]; ok && r.errno == 0 {
			r.data = make([]byte, n)
			c.readFull(r.data)
		}
		return r
	case magicStructReply:
		var r reply
		for {
			var h [16]byte
			c.readFull(h[:])
			flags := binary.BigEndian.Uint16(h[0:])
			typ := binary.BigEndian.Uint16(h[2:])
			r.handle = binary.BigEndian.Uint64(h[4:])
			p := make([]byte, binary.BigEndian.Uint32(h[12:]))
			c.readFull(p)
			switch typ {
			case replyTypeOffsetData:
				r.data = append(r.data, p[8:]...)
			case replyTypeError:
				r.errno = binary.BigEndian.Uint32(p)
				r.msg = string(p[6 : 6+binary.BigEndian.Uint16(p[4:])])
			case replyTypeBlockStatus:
				for i := 4; i+8 <= len(p); i += 8 {
					r.descs = append(r.descs, [2]uint32{binary.BigEndian.Uint32(p[i:]), binary.BigEndian.Uint32(p[i+4:])})
				}
			case replyTypeNone:
			default:
				c.t.Fatalf("unexpected chunk type %d", typ)
			}
			if flags&replyFlagDone != 0 {
				return r
			}
			var m2 [4]byte
			c.readFull(m2[:])
		}
	default:
		c.t.Fatalf("bad reply magic % x", m)
	}
	return reply{}
}

// do sends one request and waits for its reply.
func (c *testClient) do(typ, flags uint16, off uint64, length uint32, payload []byte) reply {
	c.t.Helper()
	c.request(typ, flags, 7, off, length, payload)
	rl := map[uint64]int{}
	if typ == cmdRead {
		rl[7] = int(length)
	}
	r := c.readReply(rl)
	if r.handle != 7 {
		c.t.Fatalf("reply handle %d, want 7", r.handle)
	}
	return r
}

// expectClosed asserts that the server hangs up.
func (c *testClient) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1024)
	for {
		_, err := c.nc.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.t.Fatal("server kept the connection open")
		}
		return
	}
}
