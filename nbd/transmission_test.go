package nbd

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func oneExport(dev *memDevice) Options {
	return Options{Exports: []Export{{Name: "d", Device: dev}}}
}

func TestReadWriteRoundTrip(t *testing.T) {
	noLeaks(t)
	dev := newMem(1<<20, allFeatures)
	_, addr := startServer(t, oneExport(dev))
	for _, structured := range []bool{false, true} {
		c := dial(t, addr)
		c.goExport("d", structured)
		data := bytes.Repeat([]byte{0xa5, 0x5a, byte(len(addr))}, 40000)
		if r := c.do(cmdWrite, 0, 4095, uint32(len(data)), data); r.errno != 0 {
			t.Fatalf("write: %+v", r)
		}
		r := c.do(cmdRead, 0, 4095, uint32(len(data)), nil)
		if r.errno != 0 || !bytes.Equal(r.data, data) {
			t.Fatalf("structured=%v: read back %d bytes, errno %d", structured, len(r.data), r.errno)
		}
		if !bytes.Equal(dev.snapshot()[4095:4095+len(data)], data) {
			t.Fatal("device content differs")
		}
	}
}

func TestRepliesOutOfOrder(t *testing.T) {
	noLeaks(t)
	dev := newMem(1<<20, allFeatures)
	release := make(chan struct{})
	dev.hook = func(op string, off, n int64) error {
		if op == "read" && off == 0 {
			<-release
		}
		return nil
	}
	_, addr := startServer(t, oneExport(dev))
	c := dial(t, addr)
	c.goExport("d", false)
	c.request(cmdRead, 0, 1, 0, 512, nil)
	c.request(cmdRead, 0, 2, 4096, 512, nil)
	lens := map[uint64]int{1: 512, 2: 512}
	if r := c.readReply(lens); r.handle != 2 {
		t.Fatalf("first reply is for handle %d: the slow request blocked the fast one", r.handle)
	}
	close(release)
	if r := c.readReply(lens); r.handle != 1 || r.errno != 0 {
		t.Fatalf("second reply %+v", r)
	}
}

func TestQueueDepthBoundsReader(t *testing.T) {
	noLeaks(t)
	dev := newMem(1<<20, allFeatures)
	var entered atomic.Int32
	release := make(chan struct{})
	dev.hook = func(op string, off, n int64) error {
		entered.Add(1)
		<-release
		return nil
	}
	opts := oneExport(dev)
	opts.QueueDepth = 3
	_, addr := startServer(t, opts)
	c := dial(t, addr)
	c.goExport("d", false)
	for h := uint64(1); h <= 10; h++ {
		c.request(cmdWrite, 0, h, 0, 512, make([]byte, 512))
	}
	deadline := time.Now().Add(10 * time.Second)
	for entered.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // give an unbounded reader the chance to overrun
	if n := entered.Load(); n != 3 {
		t.Fatalf("%d requests reached the device with a queue depth of 3", n)
	}
	close(release)
	seen := map[uint64]bool{}
	for i := 0; i < 10; i++ {
		r := c.readReply(nil)
		if r.errno != 0 || seen[r.handle] {
			t.Fatalf("reply %+v (dup %v)", r, seen[r.handle])
		}
		seen[r.handle] = true
	}
}

func TestDeviceErrorsMapped(t *testing.T) {
	noLeaks(t)
	dev := newMem(1<<20, allFeatures)
	var inject atomic.Pointer[error]
	dev.hook = func(op string, off, n int64) error {
		if e := inject.Load(); e != nil && op != "flush" {
			return *e
		}
		return nil
	}
	_, addr := startServer(t, oneExport(dev))
	c := dial(t, addr)
	c.goExport("d", true)
	cases := []struct {
		err   error
		cmd   uint16
		flags uint16
		want  uint32
	}{
		{syscall.ENOSPC, cmdWrite, 0, errnoNOSPC},
		{syscall.EDQUOT, cmdWrite, 0, errnoNOSPC},
		{errors.New("disk on fire"), cmdWrite, 0, errnoIO},
		{&os.PathError{Op: "pwrite", Path: "x", Err: syscall.EROFS}, cmdWrite, 0, errnoPERM},
		{ErrReadOnly, cmdTrim, 0, errnoPERM},
		{syscall.EIO, cmdRead, 0, errnoIO},
		{ErrNotSupported, cmdWriteZeroes, cmdFlagFastZero, errnoNOTSUP},
		{ErrNotSupported, cmdTrim, 0, errnoINVAL}, // ENOTSUP only answers FAST_ZERO
		{ErrShutdown, cmdRead, 0, errnoSHUTDOWN},
	}
	for _, tc := range cases {
		inject.Store(&tc.err)
		var payload []byte
		if tc.cmd == cmdWrite {
			payload = make([]byte, 512)
		}
		r := c.do(tc.cmd, tc.flags, 0, 512, payload)
		if r.errno != tc.want {
			t.Errorf("%v on %s: errno %d, want %d", tc.err, cmdName(tc.cmd), r.errno, tc.want)
		}
		if r.msg == "" {
			t.Errorf("%v on %s: structured error without a message", tc.err, cmdName(tc.cmd))
		}
	}
	inject.Store(nil)
	if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
		t.Fatalf("connection unusable after errors: %+v", r)
	}
}

func TestInvalidRequestsChangeNothing(t *testing.T) {
	noLeaks(t)
	dev := newMem(1<<20, allFeatures)
	for i := range dev.data {
		dev.data[i] = byte(i * 7)
	}
	ro := newMem(8192, Features{ReadOnly: true})
	noTrim := newMem(8192, Features{})
	opts := Options{Exports: []Export{{Name: "d", Device: dev}, {Name: "ro", Device: ro}, {Name: "plain", Device: noTrim}}}
	opts.MaxPayload = 1 << 16
	_, addr := startServer(t, opts)
	before := dev.snapshot()

	type tc struct {
		name          string
		export        string
		structured    bool
		cmd, flags    uint16
		off           uint64
		length        uint32
		payload, want uint32
	}
	size := uint64(1 << 20)
	cases := []tc{
		{"write past end", "d", false, cmdWrite, 0, size - 100, 512, 512, errnoNOSPC},
		{"zeroes past end", "d", false, cmdWriteZeroes, 0, size, 1, 0, errnoNOSPC},
		{"read past end", "d", false, cmdRead, 0, size, 1, 0, errnoINVAL},
		{"trim past end", "d", false, cmdTrim, 0, size - 1, 2, 0, errnoINVAL},
		{"offset overflow", "d", false, cmdRead, 0, ^uint64(0) - 10, 512, 0, errnoINVAL},
		{"unknown command", "d", false, 42, 0, 0, 512, 0, errnoINVAL},
		{"unknown flag", "d", false, cmdWrite, 1 << 9, 0, 512, 512, errnoINVAL},
		{"no-hole on write", "d", false, cmdWrite, cmdFlagNoHole, 0, 512, 512, errnoINVAL},
		{"DF without structured", "d", false, cmdRead, cmdFlagDF, 0, 512, 0, errnoINVAL},
		{"flush with offset", "d", false, cmdFlush, 0, 512, 0, 0, errnoINVAL},
		{"zero-length read", "d", false, cmdRead, 0, 0, 0, 0, errnoINVAL},
		{"zero-length write", "d", false, cmdWrite, 0, 0, 0, 0, errnoINVAL},
		{"read above max payload", "d", true, cmdRead, 0, 0, 1<<16 + 1, 0, errnoINVAL},
		{"block status without context", "d", true, cmdBlockStatus, 0, 0, 512, 0, errnoINVAL},
		{"write on read-only", "ro", false, cmdWrite, 0, 0, 512, 512, errnoPERM},
		{"trim on read-only", "ro", false, cmdTrim, 0, 0, 512, 0, errnoPERM},
		{"FUA not advertised", "ro", false, cmdRead, cmdFlagFUA, 0, 512, 0, errnoINVAL},
		{"trim not advertised", "plain", false, cmdTrim, 0, 0, 512, 0, errnoINVAL},
		{"flush not advertised", "plain", false, cmdFlush, 0, 0, 0, 0, errnoINVAL},
		{"cache not advertised", "plain", false, cmdCache, 0, 0, 512, 0, errnoINVAL},
		{"zeroes not advertised", "plain", false, cmdWriteZeroes, 0, 0, 512, 0, errnoINVAL},
		{"fast zero not advertised", "plain", false, cmdWriteZeroes, cmdFlagFastZero, 0, 512, 0, errnoINVAL},
	}
	conns := map[string]*testClient{}
	for _, tc := range cases {
		key := tc.export
		if tc.structured {
			key += "+s"
		}
		c := conns[key]
		if c == nil {
			c = dial(t, addr)
			c.goExport(tc.export, tc.structured)
			conns[key] = c
		}
		r := c.do(tc.cmd, tc.flags, tc.off, tc.length, bytes.Repeat([]byte{0xee}, int(tc.payload)))
		if r.errno != tc.want {
			t.Errorf("%s: errno %s, want %s", tc.name, errnoName(r.errno), errnoName(tc.want))
		}
		if len(r.data) != 0 {
			t.Errorf("%s: error reply carried %d bytes of data", tc.name, len(r.data))
		}
	}
	for key, c := range conns {
		if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
			t.Errorf("connection %s broken after invalid requests: %+v", key, r)
		}
	}
	if !bytes.Equal(dev.snapshot(), before) {
		t.Fatal("an invalid request changed the device")
	}
	if !bytes.Equal(ro.snapshot(), make([]byte, 8192)) {
		t.Fatal("the read-only device was written")
	}
}

func TestProtocolViolationsDisconnect(t *testing.T) {
	noLeaks(t)
	dev := newMem(1<<20, allFeatures)
	opts := oneExport(dev)
	opts.MaxPayload = 4096
	_, addr := startServer(t, opts)

	c := dial(t, addr)
	c.goExport("d", false)
	c.write(bytes.Repeat([]byte{0xff}, requestHeaderSize)) // bad magic
	c.expectClosed()

	c = dial(t, addr)
	c.goExport("d", false)
	c.request(cmdWrite, 0, 1, 0, 1<<20, bytes.Repeat([]byte{1}, 8192)) // payload above the maximum
	c.expectClosed()

	c = dial(t, addr)
	c.goExport("d", false)
	c.write([]byte{0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1}) // truncated header, then hang up
	c.nc.Close()

	if !bytes.Equal(dev.snapshot(), make([]byte, 1<<20)) {
		t.Fatal("a malformed request wrote to the device")
	}
	// The server still serves.
	c = dial(t, addr)
	c.goExport("d", false)
	if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
		t.Fatal("server broken by a malformed client")
	}
}

func TestFlagsReachTheDevice(t *testing.T) {
	noLeaks(t)
	dev := newMem(1<<20, allFeatures)
	_, addr := startServer(t, oneExport(dev))
	c := dial(t, addr)
	c.goExport("d", false)
	c.do(cmdWrite, cmdFlagFUA, 0, 512, make([]byte, 512))
	c.do(cmdWrite, 0, 0, 512, make([]byte, 512))
	c.do(cmdFlush, 0, 0, 0, nil)
	c.do(cmdWriteZeroes, cmdFlagFUA|cmdFlagNoHole, 0, 512, nil)
	c.do(cmdWriteZeroes, cmdFlagFastZero, 0, 512, nil)
	if r := c.do(cmdCache, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("cache: %+v", r)
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.fuas != 1 || dev.flushes != 1 {
		t.Fatalf("fua %d flushes %d, want 1 and 1", dev.fuas, dev.flushes)
	}
	if len(dev.zflags) != 2 || dev.zflags[0] != ZeroFUA|ZeroNoHole || dev.zflags[1] != ZeroFast {
		t.Fatalf("zero flags %v", dev.zflags)
	}
}

func TestBlockStatus(t *testing.T) {
	noLeaks(t)
	dev := newMem(1<<20, allFeatures)
	dev.extents = []Extent{
		{Length: 4096, Hole: true, Zero: true},
		{Length: 8192},
		{Length: 4096}, // same status: merged with the previous run
		{Length: 1 << 20, Hole: true, Zero: true},
	}
	_, addr := startServer(t, oneExport(dev))
	c := dial(t, addr)
	c.goExport("d", true, metaContextBaseAllocation)
	r := c.do(cmdBlockStatus, 0, 0, 65536, nil)
	want := [][2]uint32{{4096, stateHole | stateZero}, {12288, 0}, {65536 - 16384, stateHole | stateZero}}
	if r.errno != 0 || len(r.descs) != len(want) {
		t.Fatalf("block status %+v", r)
	}
	for i := range want {
		if r.descs[i] != want[i] {
			t.Fatalf("descriptor %d: %v, want %v", i, r.descs[i], want[i])
		}
	}
	r = c.do(cmdBlockStatus, cmdFlagReqOne, 0, 65536, nil)
	if len(r.descs) != 1 || r.descs[0] != want[0] {
		t.Fatalf("REQ_ONE: %+v", r.descs)
	}
	// A device that reports nothing: "allocated" for the whole range.
	dev.mu.Lock()
	dev.extents = nil
	dev.mu.Unlock()
	r = c.do(cmdBlockStatus, 0, 0, 1000, nil)
	if len(r.descs) != 1 || r.descs[0] != [2]uint32{1000, 0} {
		t.Fatalf("empty extents: %+v", r.descs)
	}
}

func TestShutdownDrainsAndFlushes(t *testing.T) {
	noLeaks(t)
	dev := newMem(1<<20, allFeatures)
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	dev.hook = func(op string, off, n int64) error {
		if op == "write" {
			once.Do(func() { close(entered) })
			<-release
		}
		return nil
	}
	s, err := NewServer(oneExport(dev))
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	c := dial(t, l.Addr().String())
	c.goExport("d", false)
	c.request(cmdWrite, 0, 9, 0, 3, []byte("xyz"))
	<-entered

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if r := c.readReply(nil); r.handle != 9 || r.errno != 0 {
		t.Fatalf("in-flight write not answered: %+v", r)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if !errors.Is(<-served, ErrServerClosed) {
		t.Fatal("Serve did not return ErrServerClosed")
	}
	c.expectClosed()
	if string(dev.snapshot()[:3]) != "xyz" || dev.flushes != 1 {
		t.Fatalf("after shutdown: data %q, flushes %d", dev.snapshot()[:3], dev.flushes)
	}
}

func TestUnixSocket(t *testing.T) {
	noLeaks(t)
	path := filepath.Join(t.TempDir(), "nbd.sock")
	// A stale socket file from a dead server is replaced.
	l0, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	l0.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	l0.Close()
	s, err := NewServer(oneExport(newMem(4096, allFeatures)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen("unix:" + path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	go s.Serve(l)
	defer s.Close()
	if _, err := Listen("unix:" + path); err == nil {
		t.Fatal("a second server could take over a live socket")
	}
	if _, err := Listen("unix:"); err == nil {
		t.Fatal("empty socket path accepted")
	}
}
