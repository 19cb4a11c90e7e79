package nbd_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// Malformed input from a raw TCP client, checked the way a real socket
// sees it: what comes back (an error reply or a clean hang-up), that the
// device never sees a mutating call, that no goroutine of the server
// outlives the connection, and that a well-behaved client on another
// connection keeps working throughout. The protocol-level unit tests of
// package nbd check the individual error codes in more detail.

// Wire values (NetworkBlockDevice/nbd doc/proto.md); this package cannot see
// package nbd's unexported names, and a second spelling checks the first.
const (
	wireNBDMagic    = 0x4e42444d41474943 // "NBDMAGIC"
	wireIHaveOpt    = 0x49484156454F5054 // "IHAVEOPT"
	wireOptReply    = 0x0003e889045565a9
	wireRequest     = 0x25609513
	wireSimpleReply = 0x67446698
	wireExtendedReq = 0x21e41c71

	wireOptExportName = 1
	wireOptGo         = 7

	wireRepAck        = 1
	wireRepErrUnsup   = 1<<31 + 1
	wireRepErrUnknown = 1<<31 + 6

	wireCmdRead  = 0
	wireCmdWrite = 1
	wireCmdDisc  = 2

	wireEINVAL    = 22
	wireENOSPC    = 28
	wireEOVERFLOW = 75
	wireENOMEM    = 12

	clientFixedNoZeroes = 1 | 2
)

// rawDeadline bounds every exchange: a server that neither answers nor
// hangs up fails the test instead of hanging it.
const rawDeadline = 30 * time.Second

type rawClient struct {
	t *testing.T
	c net.Conn
}

func rawDial(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	if err := c.SetDeadline(time.Now().Add(rawDeadline)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c}
}

func (r *rawClient) send(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("sending %d bytes: %v", len(b), err)
	}
}

func (r *rawClient) recv(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r.c, b); err != nil {
		r.t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

// greet reads the server's greeting and, unless clientFlags is nil, answers
// with the client flags.
func (r *rawClient) greet(clientFlags *uint32) {
	r.t.Helper()
	g := r.recv(18)
	if binary.BigEndian.Uint64(g) != wireNBDMagic || binary.BigEndian.Uint64(g[8:]) != wireIHaveOpt {
		r.t.Fatalf("greeting % x is not fixed newstyle", g)
	}
	if clientFlags != nil {
		r.send(binary.BigEndian.AppendUint32(nil, *clientFlags))
	}
}

func (r *rawClient) sendOpt(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, wireIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	r.send(append(b, data...))
}

// optReply reads one option reply.
func (r *rawClient) optReply(wantOpt uint32) (typ uint32, data []byte) {
	r.t.Helper()
	h := r.recv(20)
	if binary.BigEndian.Uint64(h) != wireOptReply {
		r.t.Fatalf("option reply magic % x", h[:8])
	}
	if opt := binary.BigEndian.Uint32(h[8:]); opt != wantOpt {
		r.t.Fatalf("reply for option %d, want %d", opt, wantOpt)
	}
	return binary.BigEndian.Uint32(h[12:]), r.recv(int(binary.BigEndian.Uint32(h[16:])))
}

// optGo sends NBD_OPT_GO for name and returns the final reply type.
func (r *rawClient) optGo(name string) uint32 {
	r.t.Helper()
	d := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	d = append(d, name...)
	d = append(d, 0, 0) // no information requests
	r.sendOpt(wireOptGo, d)
	for range 16 {
		typ, _ := r.optReply(wireOptGo)
		if typ == wireRepAck || typ&(1<<31) != 0 {
			return typ
		}
	}
	r.t.Fatalf("NBD_OPT_GO: no final reply among 16")
	return 0
}

// open completes a handshake for export name (simple replies only).
func (r *rawClient) open(name string) {
	r.t.Helper()
	f := uint32(clientFixedNoZeroes)
	r.greet(&f)
	if typ := r.optGo(name); typ != wireRepAck {
		r.t.Fatalf("NBD_OPT_GO %q: reply %#x", name, typ)
	}
}

func request(flags, typ uint16, handle, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, wireRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// reply reads one simple reply; a successful read carries readLen bytes.
func (r *rawClient) reply(handle uint64, readLen int) (errno uint32, data []byte) {
	r.t.Helper()
	h := r.recv(16)
	if m := binary.BigEndian.Uint32(h); m != wireSimpleReply {
		r.t.Fatalf("reply magic %#x, want a simple reply", m)
	}
	if got := binary.BigEndian.Uint64(h[8:]); got != handle {
		r.t.Fatalf("reply handle %d, want %d", got, handle)
	}
	errno = binary.BigEndian.Uint32(h[4:])
	if errno == 0 && readLen > 0 {
		data = r.recv(readLen)
	}
	return errno, data
}

// closedOrReply waits for the server's reaction to something it cannot
// accept: it either hangs up (io.EOF, ECONNRESET) or sends n bytes first
// (returned). A server that does neither within rawDeadline fails.
func (r *rawClient) closedOrReply(n int) (reply []byte, closed bool) {
	r.t.Helper()
	b := make([]byte, n)
	got, err := io.ReadFull(r.c, b)
	if err == nil {
		return b, false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		r.t.Fatalf("server neither replied nor closed the connection within %v (got %d bytes)", rawDeadline, got)
	}
	if got > 0 && !errors.Is(err, io.ErrUnexpectedEOF) {
		r.t.Fatalf("reading reply: %v", err)
	}
	return b[:got], true
}

// expectClosed requires the server to hang up without sending anything.
func (r *rawClient) expectClosed(what string) {
	r.t.Helper()
	b, closed := r.closedOrReply(1)
	if !closed || len(b) != 0 {
		r.t.Fatalf("%s: server sent % x instead of closing", what, b)
	}
}

// isClosed reports whether err from a write means the peer hung up.
func isClosed(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)
}

// serverGoroutines counts the goroutines running code of package nbd or
// below (not this test package): those a leaked connection leaves behind.
func serverGoroutines() (int, string) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	var dump strings.Builder
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/tandem-ha/tandem/nbd.") || strings.Contains(g, "github.com/tandem-ha/tandem/nbd/") {
			count++
			dump.WriteString(g + "\n\n")
		}
	}
	return count, dump.String()
}

// settledGoroutines returns the server's goroutine count once it has
// stayed the same for 200 ms (at most 5 s).
func settledGoroutines() int {
	n, _ := serverGoroutines()
	for deadline, since := time.Now().Add(5*time.Second), time.Now(); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		m, _ := serverGoroutines()
		if m != n {
			n, since = m, time.Now()
		} else if time.Since(since) >= 200*time.Millisecond {
			break
		}
	}
	return n
}

// waitGoroutines waits (bounded) until the server is back to at most base
// goroutines after a connection ended.
func waitGoroutines(t *testing.T, base int, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, dump := serverGoroutines()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d server goroutines remain, %d before the connection:\n%s", what, n, base, dump)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRealClientMalformedInput(t *testing.T) {
	const (
		size       = 4 * mib
		maxPayload = 256 * kib
	)
	mem := memDevice(t, size)
	pattern := fillPattern(size, 0x3c)
	if err := mem.WriteAt(t.Context(), pattern, 0, false); err != nil {
		t.Fatal(err)
	}
	dev := &recDevice{Device: mem}
	s := startServer(t, nbd.Options{
		Exports:    []nbd.Export{{Name: "raw", Device: dev}},
		MaxPayload: maxPayload,
		// One request in flight per connection caps the good client's
		// worker pool at two: with the default depth a loaded machine can
		// grow it by one more later (a reader that finds the previous
		// worker not yet back in line starts another), which the
		// goroutine count below would take for a leak.
		QueueDepth: 1,
		Logger:     slog.New(slog.DiscardHandler),
	})

	// A well-behaved client that stays connected through everything.
	good := rawDial(t, s.addr)
	good.open("raw")
	handle := uint64(100)
	checkGood := func(what string) {
		t.Helper()
		handle++
		off := int64(handle%64) * 4 * kib
		good.send(request(0, wireCmdRead, handle, uint64(off), 4*kib))
		errno, data := good.reply(handle, 4*kib)
		if errno != 0 || !bytes.Equal(data, pattern[off:off+4*kib]) {
			t.Fatalf("after %s: the other client's read failed (errno %d) or returned wrong data", what, errno)
		}
		if err := good.c.SetDeadline(time.Now().Add(rawDeadline)); err != nil {
			t.Fatal(err)
		}
	}
	// The good client's connection starts a second worker once a request
	// finds nobody waiting to read the next one, asynchronously: let its
	// pool settle before taking the baseline, or that legitimate worker is
	// counted as a leak of the next malformed connection.
	for range 3 {
		checkGood("start")
		time.Sleep(20 * time.Millisecond)
	}
	base := settledGoroutines()

	fixed := uint32(clientFixedNoZeroes)
	cases := []struct {
		name string
		run  func(t *testing.T, c *rawClient)
	}{
		{"silent client", func(t *testing.T, c *rawClient) {}},
		{"unknown client flags", func(t *testing.T, c *rawClient) {
			f := uint32(1 | 1<<17)
			c.greet(&f)
			c.expectClosed("client flags with unknown bits")
		}},
		{"truncated client flags", func(t *testing.T, c *rawClient) {
			c.greet(nil)
			c.send([]byte{0, 0})
		}},
		{"bad option magic", func(t *testing.T, c *rawClient) {
			c.greet(&fixed)
			c.send([]byte("NOTMAGIC\x00\x00\x00\x07\x00\x00\x00\x00"))
			c.expectClosed("option without IHAVEOPT")
		}},
		{"garbage handshake", func(t *testing.T, c *rawClient) {
			c.greet(&fixed)
			c.send(bytes.Repeat([]byte{0xa5}, 4096))
			c.expectClosed("garbage instead of options")
		}},
		{"unknown option", func(t *testing.T, c *rawClient) {
			c.greet(&fixed)
			c.sendOpt(0x7777, []byte("hello"))
			if typ, _ := c.optReply(0x7777); typ != wireRepErrUnsup {
				t.Errorf("unknown option: reply %#x, want NBD_REP_ERR_UNSUP", typ)
			}
			// The session goes on: the next option is answered normally.
			if typ := c.optGo("raw"); typ != wireRepAck {
				t.Errorf("NBD_OPT_GO after an unknown option: %#x", typ)
			}
		}},
		{"unknown export (GO)", func(t *testing.T, c *rawClient) {
			c.greet(&fixed)
			if typ := c.optGo("nosuch"); typ != wireRepErrUnknown {
				t.Errorf("NBD_OPT_GO for an unknown export: reply %#x, want NBD_REP_ERR_UNKNOWN", typ)
			}
			if typ := c.optGo("raw"); typ != wireRepAck {
				t.Errorf("NBD_OPT_GO after a refused one: %#x", typ)
			}
		}},
		{"unknown export (EXPORT_NAME)", func(t *testing.T, c *rawClient) {
			c.greet(&fixed)
			c.sendOpt(wireOptExportName, []byte("nosuch"))
			c.expectClosed("NBD_OPT_EXPORT_NAME for an unknown export (no error reply exists)")
		}},
		{"huge option length", func(t *testing.T, c *rawClient) {
			c.greet(&fixed)
			b := binary.BigEndian.AppendUint64(nil, wireIHaveOpt)
			b = binary.BigEndian.AppendUint32(b, wireOptGo)
			b = binary.BigEndian.AppendUint32(b, 1<<30)
			c.send(b)
			// Either an error reply (then the server must hang up, as it
			// cannot skip a gigabyte it will never get) or a hang-up.
			if rep, closed := c.closedOrReply(20); !closed {
				if typ := binary.BigEndian.Uint32(rep[12:]); typ&(1<<31) == 0 {
					t.Errorf("1 GiB option: reply %#x is not an error", typ)
				}
				c.expectClosed("after refusing a 1 GiB option")
			}
		}},
		{"truncated option", func(t *testing.T, c *rawClient) {
			c.greet(&fixed)
			b := binary.BigEndian.AppendUint64(nil, wireIHaveOpt)
			b = binary.BigEndian.AppendUint32(b, wireOptGo)
			b = binary.BigEndian.AppendUint32(b, 100)
			c.send(append(b, "raw"...))
		}},
		{"write past the end", func(t *testing.T, c *rawClient) {
			c.open("raw")
			c.send(append(request(0, wireCmdWrite, 1, size-4*kib, 8*kib), bytes.Repeat([]byte{0xee}, 8*kib)...))
			if errno, _ := c.reply(1, 0); errno != wireENOSPC {
				t.Errorf("write past the end: errno %d, want ENOSPC", errno)
			}
			c.send(append(request(0, wireCmdWrite, 2, size+4*kib, 4*kib), bytes.Repeat([]byte{0xee}, 4*kib)...))
			if errno, _ := c.reply(2, 0); errno != wireENOSPC {
				t.Errorf("write beyond the end: errno %d, want ENOSPC", errno)
			}
			// The payloads were consumed: the connection is still in step.
			c.send(request(0, wireCmdRead, 3, 0, 4*kib))
			if errno, data := c.reply(3, 4*kib); errno != 0 || !bytes.Equal(data, pattern[:4*kib]) {
				t.Errorf("read after refused writes: errno %d or wrong data", errno)
			}
		}},
		{"read past the end", func(t *testing.T, c *rawClient) {
			c.open("raw")
			c.send(request(0, wireCmdRead, 1, size-512, 4*kib))
			if errno, _ := c.reply(1, 0); errno != wireEINVAL {
				t.Errorf("read past the end: errno %d, want EINVAL", errno)
			}
		}},
		{"write above max payload", func(t *testing.T, c *rawClient) {
			c.open("raw")
			n := maxPayload + 4*kib
			c.send(request(0, wireCmdWrite, 1, 0, uint32(n)))
			// The server may stop reading at once; a refused send is the
			// hang-up seen from this side.
			if _, err := c.c.Write(bytes.Repeat([]byte{0xee}, n)); err != nil && !isClosed(err) {
				t.Fatalf("sending the payload: %v", err)
			}
			rep, closed := c.closedOrReply(16)
			if closed {
				return
			}
			errno := binary.BigEndian.Uint32(rep[4:])
			if binary.BigEndian.Uint32(rep) != wireSimpleReply || errno == 0 {
				t.Fatalf("oversized write: reply % x is not an error", rep)
			}
			if errno != wireEINVAL && errno != wireEOVERFLOW && errno != wireENOMEM {
				t.Errorf("oversized write: errno %d, want EINVAL, EOVERFLOW or ENOMEM", errno)
			}
			// If it answered, it must have skipped the payload and still
			// be in step (or hang up now).
			c.send(request(0, wireCmdRead, 2, 0, 4*kib))
			if rep, closed := c.closedOrReply(16); !closed {
				if binary.BigEndian.Uint32(rep) != wireSimpleReply || binary.BigEndian.Uint64(rep[8:]) != 2 {
					t.Errorf("after an oversized write the server is out of step: % x", rep)
				}
			}
		}},
		{"unknown command", func(t *testing.T, c *rawClient) {
			c.open("raw")
			c.send(request(0, 0x42, 1, 0, 4*kib))
			if errno, _ := c.reply(1, 0); errno != wireEINVAL {
				t.Errorf("unknown command: errno %d, want EINVAL", errno)
			}
			c.send(request(0, wireCmdRead, 2, 0, 512))
			if errno, _ := c.reply(2, 512); errno != 0 {
				t.Errorf("read after an unknown command: errno %d", errno)
			}
		}},
		{"unknown flags", func(t *testing.T, c *rawClient) {
			c.open("raw")
			c.send(request(1<<12, wireCmdRead, 1, 0, 4*kib))
			if errno, _ := c.reply(1, 0); errno != wireEINVAL {
				t.Errorf("read with unknown flag: errno %d, want EINVAL", errno)
			}
			c.send(append(request(1<<13, wireCmdWrite, 2, 0, 4*kib), bytes.Repeat([]byte{0xee}, 4*kib)...))
			if errno, _ := c.reply(2, 0); errno != wireEINVAL {
				t.Errorf("write with unknown flag: errno %d, want EINVAL", errno)
			}
			c.send(request(0, wireCmdRead, 3, 0, 512))
			if errno, _ := c.reply(3, 512); errno != 0 {
				t.Errorf("read after unknown flags: errno %d", errno)
			}
		}},
		{"garbage after handshake", func(t *testing.T, c *rawClient) {
			c.open("raw")
			c.send(bytes.Repeat([]byte{0x5a}, 4096))
			c.expectClosed("garbage instead of a request")
		}},
		{"extended header without negotiation", func(t *testing.T, c *rawClient) {
			c.open("raw")
			b := binary.BigEndian.AppendUint32(nil, wireExtendedReq)
			c.send(append(b, make([]byte, 28)...))
			c.expectClosed("extended request magic that was never negotiated")
		}},
		{"truncated request", func(t *testing.T, c *rawClient) {
			c.open("raw")
			c.send(request(0, wireCmdWrite, 1, 0, 4*kib)[:11])
		}},
		{"truncated write payload", func(t *testing.T, c *rawClient) {
			c.open("raw")
			c.send(append(request(0, wireCmdWrite, 1, 0, 64*kib), bytes.Repeat([]byte{0xee}, 1*kib)...))
		}},
		{"reset mid-request", func(t *testing.T, c *rawClient) {
			c.open("raw")
			c.send(append(request(0, wireCmdWrite, 1, 0, 64*kib), bytes.Repeat([]byte{0xee}, 1*kib)...))
			// SO_LINGER 0: close sends RST instead of FIN.
			if tc, ok := c.c.(*net.TCPConn); ok {
				if err := tc.SetLinger(0); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"disconnect request", func(t *testing.T, c *rawClient) {
			c.open("raw")
			c.send(request(0, wireCmdDisc, 1, 0, 0))
			c.expectClosed("NBD_CMD_DISC")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, s.addr)
			tc.run(t, c)
			c.c.Close()
			waitGoroutines(t, base, tc.name)
			checkGood(tc.name)
		})
	}

	for _, o := range dev.recorded() {
		if o.kind != "flush" {
			t.Errorf("a malformed request reached the device: %+v", o)
		}
	}
	if !bytes.Equal(readDevice(t, mem), pattern) {
		t.Errorf("the device's data changed")
	}
	// And a new client is still welcome.
	c := rawDial(t, s.addr)
	c.open("raw")
	c.send(request(0, wireCmdRead, 9, 0, 4*kib))
	if errno, data := c.reply(9, 4*kib); errno != 0 || !bytes.Equal(data, pattern[:4*kib]) {
		t.Errorf("a new client after all that: errno %d or wrong data", errno)
	}
}

// TestRealClientMalformedDuringIO: fio verifies its data over four
// connections while raw clients keep sending garbage to the same server;
// the garbage must not disturb the real I/O.
func TestRealClientMalformedDuringIO(t *testing.T) {
	testenv.RequireTool(t, "fio")
	const perJob, jobs = 8 * mib, 4
	dev := memDevice(t, jobs*perJob)
	s := startServer(t, nbd.Options{
		Exports: []nbd.Export{{Name: "io", Device: dev}},
		Logger:  slog.New(slog.DiscardHandler),
	})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var noise int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 2000; i++ { // bounded even if fio hangs
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.Dial("tcp", s.addr)
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(rawDeadline))
			// Read the greeting, then send something wrong.
			_, _ = io.ReadFull(c, make([]byte, 18))
			junk := [][]byte{
				{0, 0, 0, 3},
				[]byte("NOTMAGIC........"),
				bytes.Repeat([]byte{byte(i)}, 512),
			}[i%3]
			_, _ = c.Write(junk)
			_ = c.Close()
			noise++
		}
	}()

	testenv.Run(t, "fio",
		"--name=under-noise", "--ioengine=nbd", "--uri="+s.uri("io"),
		"--rw=randwrite", "--bs=4k", "--iodepth=32",
		fmt.Sprintf("--numjobs=%d", jobs), fmt.Sprintf("--size=%d", perJob),
		fmt.Sprintf("--offset_increment=%d", perJob),
		"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--runtime=120",
		"--output-format=terse")
	close(stop)
	wg.Wait()
	if noise == 0 {
		t.Errorf("no malformed client ran alongside fio")
	}
	t.Logf("%d malformed connections during the fio run", noise)
}
