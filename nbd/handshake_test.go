package nbd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// noLeaks fails the test if goroutines started during it outlive it.
// Register it first so that it runs after every other cleanup.
func noLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines leaked:\n%s", n-before, buf[:runtime.Stack(buf, true)])
		}
	})
}

func twoExports() Options {
	return Options{Exports: []Export{
		{Name: "disk", Description: "the disk", Device: newMem(1<<20, allFeatures)},
		{Name: "ro", Device: newMem(4096, Features{ReadOnly: true})},
	}}
}

func TestGreetingAndList(t *testing.T) {
	noLeaks(t)
	_, addr := startServer(t, twoExports())
	c := dialRaw(t, addr)
	if hf := c.hello(flagCFixedNewstyle); hf != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", hf)
	}
	rs := c.opt(optList, nil)
	if lastType(rs) != repAck || len(rs) != 3 {
		t.Fatalf("LIST: %d replies, last %#x", len(rs), lastType(rs))
	}
	got := []string{}
	for _, r := range rs[:2] {
		n := binary.BigEndian.Uint32(r.data)
		got = append(got, string(r.data[4:4+n])+"|"+string(r.data[4+n:]))
	}
	if strings.Join(got, ",") != "disk|the disk,ro|" {
		t.Fatalf("LIST gave %q", got)
	}
	if rs := c.opt(optList, []byte{1}); lastType(rs) != repErrInvalid {
		t.Fatalf("LIST with data: %#x", lastType(rs))
	}
	if rs := c.opt(optAbort, nil); lastType(rs) != repAck {
		t.Fatalf("ABORT: %#x", lastType(rs))
	}
	c.expectClosed()
}

func TestUnknownClientFlagsCloses(t *testing.T) {
	noLeaks(t)
	_, addr := startServer(t, twoExports())
	c := dialRaw(t, addr)
	c.hello(1 << 5)
	c.expectClosed()
}

func TestBadOptionMagicCloses(t *testing.T) {
	noLeaks(t)
	_, addr := startServer(t, twoExports())
	c := dial(t, addr)
	c.write(make([]byte, 16))
	c.expectClosed()
}

func TestOversizedOptionCloses(t *testing.T) {
	noLeaks(t)
	_, addr := startServer(t, twoExports())
	c := dial(t, addr)
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, optGo)
	b = binary.BigEndian.AppendUint32(b, 1<<30)
	c.write(b)
	c.expectClosed()
}

func TestOptionErrors(t *testing.T) {
	noLeaks(t)
	_, addr := startServer(t, twoExports())
	c := dial(t, addr)
	cases := []struct {
		name string
		opt  uint32
		data []byte
		want uint32
	}{
		{"unknown option", 99, []byte("xyz"), repErrUnsup},
		{"extended headers", optExtendedHeaders, nil, repErrUnsup},
		{"starttls without config", optStartTLS, nil, repErrPolicy},
		{"GO unknown export", optGo, nameData("nope", 0, 0), repErrUnknown},
		{"INFO unknown export", optInfo, nameData("nope", 0, 0), repErrUnknown},
		{"GO truncated", optGo, []byte{0, 0, 0, 9, 'a'}, repErrInvalid},
		{"GO wrong request count", optGo, nameData("disk", 0, 3, 0, 1), repErrInvalid},
		{"meta context before structured", optListMetaContext, metaData("disk"), repErrInvalid},
		{"structured with data", optStructuredReply, []byte{0}, repErrInvalid},
	}
	for _, tc := range cases {
		if got := lastType(c.opt(tc.opt, tc.data)); got != tc.want {
			t.Errorf("%s: reply %#x, want %#x", tc.name, got, tc.want)
		}
	}
	// After all that the connection still works.
	c.goExport("disk", false)
	if c.size != 1<<20 {
		t.Fatalf("size %d", c.size)
	}
}

func TestInfoReportsExport(t *testing.T) {
	noLeaks(t)
	_, addr := startServer(t, twoExports())
	c := dial(t, addr)
	rs := c.opt(optInfo, nameData("disk", 0, 2, 0, byte(infoName), 0, byte(infoDescription)))
	if lastType(rs) != repAck {
		t.Fatalf("INFO: %#x", lastType(rs))
	}
	seen := map[uint16][]byte{}
	for _, r := range rs[:len(rs)-1] {
		if r.typ != repInfo {
			t.Fatalf("unexpected reply %#x", r.typ)
		}
		seen[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	if sz := binary.BigEndian.Uint64(seen[infoExport]); sz != 1<<20 {
		t.Errorf("size %d", sz)
	}
	fl := binary.BigEndian.Uint16(seen[infoExport][8:])
	want := flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes |
		flagSendFastZero | flagCanMultiConn | flagSendCache
	if fl != want {
		t.Errorf("flags %#x, want %#x", fl, want)
	}
	if string(seen[infoName]) != "disk" || string(seen[infoDescription]) != "the disk" {
		t.Errorf("name %q description %q", seen[infoName], seen[infoDescription])
	}
	bs := seen[infoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 1 || binary.BigEndian.Uint32(bs[4:]) != 4096 ||
		binary.BigEndian.Uint32(bs[8:]) != defaultMaxPayload {
		t.Errorf("block sizes % x", bs)
	}
	// INFO leaves the client in negotiation; the read-only export says so.
	rs = c.opt(optInfo, nameData("ro", 0, 0))
	if fl := binary.BigEndian.Uint16(rs[0].data[10:]); fl != flagHasFlags|flagReadOnly {
		t.Errorf("ro flags %#x", fl)
	}
	// Structured replies add DF.
	c.goExport("disk", true)
	if c.flags&flagSendDF == 0 {
		t.Errorf("structured session without SEND_DF: %#x", c.flags)
	}
}

func TestExportNameOption(t *testing.T) {
	noLeaks(t)
	_, addr := startServer(t, twoExports())
	for _, noZeroes := range []bool{true, false} {
		c := dialRaw(t, addr)
		cf := flagCFixedNewstyle
		if noZeroes {
			cf |= flagCNoZeroes
		}
		c.hello(cf)
		c.sendOpt(optExportName, []byte("disk"))
		b := make([]byte, 10)
		c.readFull(b)
		if binary.BigEndian.Uint64(b) != 1<<20 {
			t.Fatalf("size % x", b)
		}
		if !noZeroes {
			c.readFull(make([]byte, 124))
		}
		// Transmission works right after.
		if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 || len(r.data) != 512 {
			t.Fatalf("read after EXPORT_NAME: %+v", r)
		}
		c.request(cmdDisc, 0, 1, 0, 0, nil)
		c.expectClosed()
	}
	// An unknown name can only be answered by hanging up.
	c := dial(t, addr)
	c.sendOpt(optExportName, []byte("nope"))
	c.expectClosed()
}

func TestDefaultExport(t *testing.T) {
	noLeaks(t)
	_, addr := startServer(t, twoExports())
	c := dial(t, addr)
	c.goExport("", false)
	if c.size != 1<<20 {
		t.Fatalf("default export size %d, want the first export's", c.size)
	}
}

func TestMetaContexts(t *testing.T) {
	noLeaks(t)
	_, addr := startServer(t, twoExports())
	c := dial(t, addr)
	c.opt(optStructuredReply, nil)
	rs := c.opt(optListMetaContext, metaData("disk"))
	if len(rs) != 2 || rs[0].typ != repMetaContext || string(rs[0].data[4:]) != metaContextBaseAllocation {
		t.Fatalf("LIST_META_CONTEXT: %+v", rs)
	}
	if rs := c.opt(optListMetaContext, metaData("disk", "qemu:dirty-bitmap:x")); len(rs) != 1 || rs[0].typ != repAck {
		t.Fatalf("foreign namespace listed: %+v", rs)
	}
	// The read-only memory export has no Extents feature: nothing offered.
	if rs := c.opt(optSetMetaContext, metaData("ro", metaContextBaseAllocation)); len(rs) != 1 {
		t.Fatalf("context offered for a device without extents: %+v", rs)
	}
	rs = c.opt(optSetMetaContext, metaData("disk", metaContextBaseAllocation))
	if len(rs) != 2 || binary.BigEndian.Uint32(rs[0].data) != baseAllocationID {
		t.Fatalf("SET_META_CONTEXT: %+v", rs)
	}
	if rs := c.opt(optSetMetaContext, metaData("nope", metaContextBaseAllocation)); lastType(rs) != repErrUnknown {
		t.Fatalf("meta context on unknown export: %#x", lastType(rs))
	}
	if rs := c.opt(optSetMetaContext, append(metaData("disk", "x"), 1)); lastType(rs) != repErrInvalid {
		t.Fatalf("trailing bytes accepted: %#x", lastType(rs))
	}
}

func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "tandem-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func TestTLS(t *testing.T) {
	noLeaks(t)
	opts := twoExports()
	opts.TLSConfig = selfSigned(t)
	opts.Exports[0].TLSOnly = true
	_, addr := startServer(t, opts)

	c := dial(t, addr)
	if rs := c.opt(optGo, nameData("disk", 0, 0)); lastType(rs) != repErrTLSReqd {
		t.Fatalf("TLS-only export without TLS: %#x", lastType(rs))
	}
	rs := c.opt(optList, nil)
	if len(rs) != 2 { // only "ro" before TLS
		t.Fatalf("LIST before TLS shows %d entries", len(rs)-1)
	}
	if rs := c.opt(optStartTLS, nil); lastType(rs) != repAck {
		t.Fatalf("STARTTLS: %#x", lastType(rs))
	}
	tc := tls.Client(c.nc, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Fatalf("TLS version %#x, want 1.3", v)
	}
	c.nc = tc
	if rs := c.opt(optStartTLS, nil); lastType(rs) != repErrInvalid {
		t.Fatalf("second STARTTLS: %#x", lastType(rs))
	}
	c.goExport("disk", true)
	if r := c.do(cmdWrite, 0, 0, 3, []byte("abc")); r.errno != 0 {
		t.Fatalf("write over TLS: %+v", r)
	}
	if r := c.do(cmdRead, 0, 0, 3, nil); string(r.data) != "abc" {
		t.Fatalf("read over TLS: %q", r.data)
	}
}

func TestRequireTLS(t *testing.T) {
	noLeaks(t)
	opts := twoExports()
	opts.TLSConfig = selfSigned(t)
	opts.RequireTLS = true
	_, addr := startServer(t, opts)
	c := dial(t, addr)
	for _, o := range []uint32{optList, optInfo, optGo, optStructuredReply} {
		if rs := c.opt(o, nil); lastType(rs) != repErrTLSReqd {
			t.Errorf("option %d before TLS: %#x", o, lastType(rs))
		}
	}
	c.sendOpt(optExportName, []byte("disk"))
	c.expectClosed()
}

func TestNewServerValidates(t *testing.T) {
	dev := newMem(512, Features{})
	for name, o := range map[string]Options{
		"no exports":      {},
		"nil device":      {Exports: []Export{{Name: "a"}}},
		"duplicate":       {Exports: []Export{{Name: "a", Device: dev}, {Name: "a", Device: dev}}},
		"tls-only no tls": {Exports: []Export{{Name: "a", Device: dev, TLSOnly: true}}},
		"nul in name":     {Exports: []Export{{Name: "a\x00b", Device: dev}}},
	} {
		if _, err := NewServer(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// An export whose Available hook refuses: GO is answered with the
// reason and the client stays in negotiation, INFO still describes it,
// EXPORT_NAME hangs up; once available, GO enters transmission.
func TestUnavailableExport(t *testing.T) {
	noLeaks(t)
	var down atomic.Bool
	down.Store(true)
	opts := twoExports()
	opts.Exports[0].Available = func() error {
		if down.Load() {
			return errors.New("it is not Primary here")
		}
		return nil
	}
	_, addr := startServer(t, opts)
	c := dial(t, addr)
	rs := c.opt(optGo, nameData("disk", 0, 0))
	if lastType(rs) != repErrUnknown || !strings.Contains(string(rs[len(rs)-1].data), `export "disk" is not available here: it is not Primary here`) {
		t.Fatalf("GO of an unavailable export: %#x %q", lastType(rs), rs[len(rs)-1].data)
	}
	if rs := c.opt(optInfo, nameData("disk", 0, 0)); lastType(rs) != repAck {
		t.Fatalf("INFO of an unavailable export: %#x, want it described", lastType(rs))
	}
	down.Store(false)
	c.goExport("disk", false)
	if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 || len(r.data) != 512 {
		t.Fatalf("read after GO once available: %+v", r)
	}
	c.request(cmdDisc, 0, 1, 0, 0, nil)
	c.expectClosed()

	down.Store(true)
	c = dial(t, addr)
	c.sendOpt(optExportName, []byte("disk"))
	c.expectClosed()
}
