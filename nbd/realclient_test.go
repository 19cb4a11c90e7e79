package nbd_test

// Tests of the NBD server against real NBD clients (libnbd's nbdinfo,
// nbdcopy, nbdfuse and nbdsh, qemu-io, fio) and against a raw socket. The
// server runs in-process; the clients are the Debian tools, so what is
// checked is what an independent implementation of the protocol sees.
//
// This file holds the shared helpers and the nbdinfo tests; the others:
//
//	realclient_qemu_test.go    qemu-io (aio, zeroes, FUA, discard), concurrency, qemu-img
//	realclient_copy_test.go    nbdcopy over 4 connections, fio with verification
//	realclient_ext4_test.go    ext4 through nbdfuse + a loop device (root)
//	realclient_nbdsh_test.go   structured replies, block status, DF, CACHE, FAST_ZERO
//	realclient_raw_test.go     malformed input from a raw socket
//
// Each needs its Debian tools (tools/testenv: skipped without them, failed
// under CI). nbdsh also needs python3-libnbd.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/nbd/backend"
	"github.com/tandem-ha/tandem/tools/testenv"
)

const (
	// shutdownTimeout bounds the server's drain at the end of a test.
	shutdownTimeout = 30 * time.Second

	kib = 1 << 10
	mib = 1 << 20
)

// served is one running in-process server and how clients reach it.
type served struct {
	srv  *nbd.Server
	addr string // host:port, or the socket path for unix
	unix bool
}

// uri returns the NBD URI of export name on this server.
func (s *served) uri(name string) string {
	if s.unix {
		return "nbd+unix:///" + name + "?socket=" + s.addr
	}
	return "nbd://" + s.addr + "/" + name
}

// startServer serves opts on a fresh loopback TCP listener. The server is
// shut down (drained and flushed) when the test ends, and Serve must then
// report ErrServerClosed.
func startServer(t *testing.T, opts nbd.Options) *served {
	t.Helper()
	return startOn(t, opts, "127.0.0.1:0")
}

// startUnixServer serves opts on a unix socket in the test's temp dir.
func startUnixServer(t *testing.T, opts nbd.Options) *served {
	t.Helper()
	return startOn(t, opts, "unix:"+filepath.Join(t.TempDir(), "nbd.sock"))
}

func startOn(t *testing.T, opts nbd.Options, addr string) *served {
	t.Helper()
	srv, err := nbd.NewServer(opts)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	l, err := nbd.Listen(addr)
	if err != nil {
		t.Fatalf("Listen(%q): %v", addr, err)
	}
	if l == nil {
		t.Fatalf("Listen(%q) returned a nil listener", addr)
	}
	s := &served{srv: srv}
	if ua, ok := l.Addr().(*net.UnixAddr); ok {
		s.unix, s.addr = true, ua.Name
	} else {
		s.addr = l.Addr().String()
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-done:
			if !errors.Is(err, nbd.ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-ctx.Done():
			t.Errorf("Serve did not return after Shutdown")
		}
	})
	return s
}

// memDevice returns a memory device of size bytes.
func memDevice(t *testing.T, size int64) nbd.Device {
	t.Helper()
	return backend.NewMemory(size)
}

// fileDevice creates a sparse backing file of size bytes in the test's temp
// dir and returns the device and the file's path.
func fileDevice(t *testing.T, size int64) (nbd.Device, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "backing.img")
	f, err := backend.OpenFile(path, backend.FileOptions{Size: size, Create: true})
	if err != nil {
		t.Fatalf("backend.OpenFile: %v", err)
	}
	// Cleanups run last-in first-out: callers open the device before they
	// start the server, so the server is drained before the file closes.
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("closing backing file: %v", err)
		}
	})
	return f, path
}

// op is one mutating call that reached a device.
type op struct {
	kind   string // "write", "flush", "trim", "zero"
	off    int64
	length int64
	fua    bool
	zflags nbd.ZeroFlags
}

// recDevice wraps a Device: it can override the advertised features and it
// records every mutating call, so tests can see what the server asked the
// device to do (and that it asked nothing when it must refuse).
type recDevice struct {
	nbd.Device
	features *nbd.Features // nil: the inner device's

	// gate, if set, is called on every WriteAt before it is passed on.
	gate func(off int64)

	mu  sync.Mutex
	ops []op
}

func (d *recDevice) Features() nbd.Features {
	if d.features != nil {
		return *d.features
	}
	return d.Device.Features()
}

func (d *recDevice) record(o op) {
	d.mu.Lock()
	d.ops = append(d.ops, o)
	d.mu.Unlock()
}

// recorded returns a copy of the calls seen so far.
func (d *recDevice) recorded() []op {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]op(nil), d.ops...)
}

func (d *recDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if d.gate != nil {
		d.gate(off)
	}
	d.record(op{kind: "write", off: off, length: int64(len(p)), fua: fua})
	return d.Device.WriteAt(ctx, p, off, fua)
}

func (d *recDevice) Flush(ctx context.Context) error {
	d.record(op{kind: "flush"})
	return d.Device.Flush(ctx)
}

func (d *recDevice) Trim(ctx context.Context, off, length int64, fua bool) error {
	d.record(op{kind: "trim", off: off, length: length, fua: fua})
	return d.Device.Trim(ctx, off, length, fua)
}

func (d *recDevice) Zero(ctx context.Context, off, length int64, flags nbd.ZeroFlags) error {
	d.record(op{kind: "zero", off: off, length: length, zflags: flags})
	return d.Device.Zero(ctx, off, length, flags)
}

// Extents and Cache pass through when the inner device has them; the server
// only calls them when the advertised features say so.
func (d *recDevice) Extents(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	if e, ok := d.Device.(nbd.Extenter); ok {
		return e.Extents(ctx, off, length)
	}
	return []nbd.Extent{{Length: length}}, nil
}

func (d *recDevice) Cache(ctx context.Context, off, length int64) error {
	if c, ok := d.Device.(nbd.Cacher); ok {
		return c.Cache(ctx, off, length)
	}
	return nil
}

// fillPattern returns n bytes that differ from block to block and from seed
// to seed, so that misplaced or stale data is noticed.
func fillPattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed ^ byte(i>>9) ^ byte(i*7)
	}
	return p
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("hashing %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// readDevice reads the whole device through its own interface.
func readDevice(t *testing.T, d nbd.Device) []byte {
	t.Helper()
	buf := make([]byte, d.Size())
	if err := d.ReadAt(t.Context(), buf, 0); err != nil {
		t.Fatalf("device ReadAt: %v", err)
	}
	return buf
}

// nbdinfoExport is the part of `nbdinfo --json` this package checks.
type nbdinfoExport struct {
	Name         string   `json:"export-name"`
	Description  *string  `json:"description"`
	Size         int64    `json:"export-size"`
	Contexts     []string `json:"contexts"`
	IsRotational *bool    `json:"is_rotational"`
	IsReadOnly   *bool    `json:"is_read_only"`
	CanCache     *bool    `json:"can_cache"`
	CanDF        *bool    `json:"can_df"`
	CanFastZero  *bool    `json:"can_fast_zero"`
	CanFlush     *bool    `json:"can_flush"`
	CanFUA       *bool    `json:"can_fua"`
	CanMultiConn *bool    `json:"can_multi_conn"`
	CanTrim      *bool    `json:"can_trim"`
	CanZero      *bool    `json:"can_zero"`
	BlockMin     *int64   `json:"block_size_minimum"`
	BlockPref    *int64   `json:"block_size_preferred"`
	BlockMax     *int64   `json:"block_size_maximum"`
}

type nbdinfoOutput struct {
	Protocol   string          `json:"protocol"`
	TLS        bool            `json:"TLS"`
	Structured bool            `json:"structured"`
	Exports    []nbdinfoExport `json:"exports"`
}

func nbdinfoJSON(t *testing.T, args ...string) nbdinfoOutput {
	t.Helper()
	out := testenv.Run(t, "nbdinfo", append([]string{"--json"}, args...)...)
	var info nbdinfoOutput
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("parsing nbdinfo --json: %v\n%s", err, out)
	}
	return info
}

// checkFlag compares one boolean nbdinfo reports with what was advertised.
func checkFlag(t *testing.T, name string, got *bool, want bool) {
	t.Helper()
	switch {
	case got == nil:
		t.Errorf("nbdinfo did not report %s", name)
	case *got != want:
		t.Errorf("%s = %v, want %v", name, *got, want)
	}
}

// checkFeatures checks every transmission flag nbdinfo saw against f.
func checkFeatures(t *testing.T, e nbdinfoExport, f nbd.Features) {
	t.Helper()
	checkFlag(t, "is_read_only", e.IsReadOnly, f.ReadOnly)
	checkFlag(t, "is_rotational", e.IsRotational, f.Rotational)
	checkFlag(t, "can_flush", e.CanFlush, f.Flush)
	checkFlag(t, "can_fua", e.CanFUA, f.FUA)
	checkFlag(t, "can_trim", e.CanTrim, f.Trim)
	checkFlag(t, "can_zero", e.CanZero, f.Zero)
	checkFlag(t, "can_fast_zero", e.CanFastZero, f.FastZero)
	checkFlag(t, "can_cache", e.CanCache, f.Cache)
	checkFlag(t, "can_multi_conn", e.CanMultiConn, f.MultiConn)
	// DF is about structured replies, which the server always offers.
	checkFlag(t, "can_df", e.CanDF, true)
	hasAlloc := false
	for _, c := range e.Contexts {
		if c == "base:allocation" {
			hasAlloc = true
		}
	}
	if hasAlloc != f.Extents {
		t.Errorf("contexts = %q, base:allocation expected: %v", e.Contexts, f.Extents)
	}
}

func TestRealClientNbdinfoFileExport(t *testing.T) {
	testenv.RequireTool(t, "nbdinfo")
	const size = 64 * mib
	dev, _ := fileDevice(t, size)
	const desc = "tandem test export"
	opts := nbd.Options{
		Exports:    []nbd.Export{{Name: "disk0", Description: desc, Device: dev}},
		MaxPayload: 16 * mib,
	}
	s := startServer(t, opts)

	info := nbdinfoJSON(t, s.uri("disk0"))
	if info.Protocol != "newstyle-fixed" {
		t.Errorf("protocol = %q, want newstyle-fixed", info.Protocol)
	}
	if !info.Structured {
		t.Errorf("structured replies were not negotiated")
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo reported %d exports, want 1", len(info.Exports))
	}
	e := info.Exports[0]
	if e.Size != size {
		t.Errorf("export-size = %d, want %d", e.Size, size)
	}
	if e.Description == nil || *e.Description != desc {
		t.Errorf("description = %v, want %q", e.Description, desc)
	}
	f := dev.Features()
	checkFeatures(t, e, f)
	// A local file is what the brief's feature list is written for: every
	// data-path feature must be on (and advertised) for it.
	for name, on := range map[string]bool{
		"Flush": f.Flush, "FUA": f.FUA, "Trim": f.Trim, "Zero": f.Zero,
		"FastZero": f.FastZero, "MultiConn": f.MultiConn, "Cache": f.Cache, "Extents": f.Extents,
	} {
		if !on {
			t.Errorf("backend.File does not report %s", name)
		}
	}
	if f.ReadOnly {
		t.Errorf("backend.File opened read-write reports ReadOnly")
	}
	wantMin, wantPref, wantMax := int64(f.MinBlock), int64(f.PreferredBlock), int64(f.MaxBlock)
	if wantMin == 0 {
		wantMin = 1
	}
	if wantPref == 0 {
		wantPref = 4096
	}
	if wantMax == 0 {
		wantMax = int64(opts.MaxPayload)
	}
	checkBlockSizes(t, e, wantMin, wantPref, wantMax)
}

func checkBlockSizes(t *testing.T, e nbdinfoExport, min, pref, max int64) {
	t.Helper()
	for _, c := range []struct {
		name string
		got  *int64
		want int64
	}{
		{"block_size_minimum", e.BlockMin, min},
		{"block_size_preferred", e.BlockPref, pref},
		{"block_size_maximum", e.BlockMax, max},
	} {
		switch {
		case c.got == nil:
			t.Errorf("%s not reported (NBD_INFO_BLOCK_SIZE missing)", c.name)
		case *c.got != c.want:
			t.Errorf("%s = %d, want %d", c.name, *c.got, c.want)
		}
	}
}

// TestRealClientNbdinfoFlags advertises several feature sets, each flag on
// in some and off in others, so that a flag mapped to the wrong bit or
// always set shows up.
func TestRealClientNbdinfoFlags(t *testing.T) {
	testenv.RequireTool(t, "nbdinfo")
	sets := map[string]nbd.Features{
		"all": {Flush: true, FUA: true, Trim: true, Zero: true, FastZero: true, Cache: true,
			Extents: true, MultiConn: true, Rotational: true,
			MinBlock: 512, PreferredBlock: 64 * kib, MaxBlock: 1 * mib},
		"none": {},
		"odd": {Flush: true, Trim: true, FastZero: true, Zero: true, Extents: true,
			MinBlock: 1, PreferredBlock: 4 * kib, MaxBlock: 4 * mib},
		"even":     {FUA: true, Flush: true, Cache: true, MultiConn: true, Rotational: true},
		"readonly": {ReadOnly: true, Flush: true, Cache: true, Extents: true, MultiConn: true},
	}
	for name, f := range sets {
		t.Run(name, func(t *testing.T) {
			dev := &recDevice{Device: memDevice(t, 8*mib), features: &f}
			opts := nbd.Options{Exports: []nbd.Export{{Name: name, Device: dev}}, MaxPayload: 8 * mib}
			s := startServer(t, opts)
			info := nbdinfoJSON(t, s.uri(name))
			if len(info.Exports) != 1 {
				t.Fatalf("nbdinfo reported %d exports, want 1", len(info.Exports))
			}
			checkFeatures(t, info.Exports[0], f)
			if info.Exports[0].Size != 8*mib {
				t.Errorf("export-size = %d, want %d", info.Exports[0].Size, 8*mib)
			}
			min, pref, max := int64(f.MinBlock), int64(f.PreferredBlock), int64(f.MaxBlock)
			if min == 0 {
				min, pref, max = 1, 4096, int64(opts.MaxPayload)
			}
			checkBlockSizes(t, info.Exports[0], min, pref, max)
			if ops := dev.recorded(); len(ops) != 0 {
				t.Errorf("nbdinfo caused device calls %v", ops)
			}
		})
	}
}

// TestRealClientReadOnlyExport: a read-only export says so, and a write
// that the client sends anyway is refused by the server with EPERM before
// it reaches the device.
func TestRealClientReadOnlyExport(t *testing.T) {
	testenv.RequireTool(t, "nbdinfo", "qemu-io")
	f := nbd.Features{ReadOnly: true, Flush: true, Trim: true, Zero: true, Extents: true}
	mem := memDevice(t, 4*mib)
	dev := &recDevice{Device: mem, features: &f}
	s := startServer(t, nbd.Options{Exports: []nbd.Export{{Name: "ro", Device: dev}}})

	info := nbdinfoJSON(t, s.uri("ro"))
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo reported %d exports, want 1", len(info.Exports))
	}
	checkFlag(t, "is_read_only", info.Exports[0].IsReadOnly, true)

	// qemu opens the image read-write and must fail (at open or at the
	// write); either way nothing may reach the device.
	out, errOut, err := testenv.RunErr("qemu-io", "-f", "raw", "-c", "write -P 0x55 0 4k", s.uri("ro"))
	if err == nil {
		t.Errorf("qemu-io write on a read-only export succeeded:\n%s%s", out, errOut)
	}

	// libnbd refuses locally unless strict mode is off; with it off the
	// requests reach the server, which must answer EPERM itself.
	py := `
import errno
h.set_strict_mode(0)
for name, fn in [("pwrite", lambda: h.pwrite(b"\x55" * 4096, 0)),
                 ("trim", lambda: h.trim(4096, 0)),
                 ("zero", lambda: h.zero(4096, 0))]:
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, "%s: errno %s, want EPERM" % (name, e.errnum)
    else:
        raise AssertionError(name + " on a read-only export succeeded")
assert h.pread(4096, 0) == bytes(4096)
print("ok")
`
	if out := runNbdsh(t, s.uri("ro"), py); !strings.Contains(out, "ok") {
		t.Errorf("nbdsh script did not finish: %s", out)
	}
	for _, o := range dev.recorded() {
		if o.kind != "flush" {
			t.Errorf("device saw %+v on a read-only export", o)
		}
	}
	if !bytes.Equal(readDevice(t, mem), make([]byte, 4*mib)) {
		t.Errorf("read-only export's data changed")
	}
}

func TestRealClientNbdinfoList(t *testing.T) {
	testenv.RequireTool(t, "nbdinfo")
	exports := []nbd.Export{
		{Name: "alpha", Description: "first disk", Device: memDevice(t, 1*mib)},
		{Name: "beta", Description: "second disk", Device: memDevice(t, 2*mib)},
		{Name: "gamma", Device: memDevice(t, 3*mib)},
	}
	for _, unix := range []bool{false, true} {
		t.Run(fmt.Sprintf("unix=%v", unix), func(t *testing.T) {
			opts := nbd.Options{Exports: exports}
			var s *served
			if unix {
				s = startUnixServer(t, opts)
			} else {
				s = startServer(t, opts)
			}
			info := nbdinfoJSON(t, "--list", s.uri(""))
			got := map[string]nbdinfoExport{}
			for _, e := range info.Exports {
				got[e.Name] = e
			}
			if len(got) != len(exports) {
				t.Errorf("listed %d exports, want %d: %+v", len(got), len(exports), info.Exports)
			}
			for _, want := range exports {
				e, ok := got[want.Name]
				if !ok {
					t.Errorf("export %q not listed", want.Name)
					continue
				}
				if e.Size != want.Device.Size() {
					t.Errorf("%s: size %d, want %d", want.Name, e.Size, want.Device.Size())
				}
				if want.Description != "" && (e.Description == nil || *e.Description != want.Description) {
					t.Errorf("%s: description %v, want %q", want.Name, e.Description, want.Description)
				}
			}
			// An unknown name must be refused, not mapped to some export.
			if out, errOut, err := testenv.RunErr("nbdinfo", s.uri("nosuch")); err == nil {
				t.Errorf("nbdinfo on an unknown export succeeded:\n%s%s", out, errOut)
			}
		})
	}
}

// mapExtent is one line of `nbdinfo --map --json`.
type mapExtent struct {
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	Type   uint32 `json:"type"`
}

// TestRealClientNbdinfoMap: after data is written and part of it trimmed,
// base:allocation shows the trimmed range and the never-written tail as
// holes and the rest as data.
func TestRealClientNbdinfoMap(t *testing.T) {
	testenv.RequireTool(t, "nbdinfo", "qemu-io")
	const size = 16 * mib
	dev, _ := fileDevice(t, size)
	if !dev.Features().Extents || !dev.Features().Trim {
		t.Fatalf("backend.File must support Extents and Trim for this test: %+v", dev.Features())
	}
	s := startServer(t, nbd.Options{Exports: []nbd.Export{{Name: "m", Device: dev}}})
	testenv.Run(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xa5 0 4M",
		"-c", "discard 1M 1M",
		"-c", "flush",
		s.uri("m"))

	out := testenv.Run(t, "nbdinfo", "--map", "--json", s.uri("m"))
	var extents []mapExtent
	if err := json.Unmarshal([]byte(out), &extents); err != nil {
		t.Fatalf("parsing nbdinfo --map --json: %v\n%s", err, out)
	}
	// The map must tile the export exactly.
	var next int64
	for _, e := range extents {
		if e.Offset != next || e.Length <= 0 {
			t.Fatalf("map does not tile the export at %d: %+v", next, extents)
		}
		next = e.Offset + e.Length
	}
	if next != size {
		t.Fatalf("map ends at %d, want %d: %+v", next, size, extents)
	}
	typeAt := func(off int64) uint32 {
		for _, e := range extents {
			if off >= e.Offset && off < e.Offset+e.Length {
				return e.Type
			}
		}
		return ^uint32(0)
	}
	const hole = 1
	for _, c := range []struct {
		off  int64
		hole bool
	}{
		{0, false}, {1*mib - 1, false},
		{1 * mib, true}, {2*mib - 1, true},
		{2 * mib, false}, {4*mib - 1, false},
		{4 * mib, true}, {size - 1, true},
	} {
		if got := typeAt(c.off)&hole != 0; got != c.hole {
			t.Errorf("offset %d: hole = %v, want %v (map %+v)", c.off, got, c.hole, extents)
		}
	}
}
