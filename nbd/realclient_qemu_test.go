package nbd_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// qemuIO runs qemu-io on uri with the given commands. The cache mode is
// writeback so that qemu sends FUA only when a command asks for it (its
// default, writethrough, sets FUA on every write and would hide a server
// that ignores the flag).
func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-t", "writeback", "-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := testenv.Run(t, "qemu-io", append(args, uri)...)
	// qemu-io's exit status covers failed commands, but the message is
	// what makes a failure readable.
	if strings.Contains(out, "verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}
	return out
}

type region struct {
	off, length int64
	pat         byte
}

func TestRealClientQemuIO(t *testing.T) {
	testenv.RequireTool(t, "qemu-io")
	const size = 64 * mib
	file, path := fileDevice(t, size)
	dev := &recDevice{Device: file}
	s := startServer(t, nbd.Options{Exports: []nbd.Export{{Name: "q", Device: dev}}})
	uri := s.uri("q")

	// Many distinct regions, not all aligned to the preferred block size,
	// written with aio so that qemu keeps many requests in flight.
	var regions []region
	for i := range 48 {
		regions = append(regions, region{
			off:    int64(i)*(768*kib) + int64(i%5)*512,
			length: 64*kib + int64(i%3)*4*kib,
			pat:    byte(0x10 + i),
		})
	}
	var cmds []string
	for _, r := range regions {
		cmds = append(cmds, fmt.Sprintf("aio_write -P 0x%02x %d %d", r.pat, r.off, r.length))
	}
	cmds = append(cmds, "aio_flush")
	for _, r := range regions {
		cmds = append(cmds, fmt.Sprintf("read -P 0x%02x %d %d", r.pat, r.off, r.length))
	}
	qemuIO(t, uri, cmds...)

	const (
		zeroOff      = 40 * mib // write -z: NO_HOLE
		unmapOff     = 41 * mib // write -z -u: may punch
		zeroFUAOff   = 42 * mib // write -z -f
		fuaOff       = 43 * mib // write -f
		discardOff   = 44 * mib
		zeroLen      = 256 * kib
		fuaLen       = 64 * kib
		discardLen   = 1 * mib
		preZeroedPat = 0x77
	)
	qemuIO(t, uri,
		fmt.Sprintf("write -P 0x%x %d %d", preZeroedPat, zeroOff, 3*mib),
		fmt.Sprintf("write -z %d %d", zeroOff, zeroLen),
		fmt.Sprintf("write -z -u %d %d", unmapOff, zeroLen),
		fmt.Sprintf("write -z -f %d %d", zeroFUAOff, zeroLen),
		fmt.Sprintf("write -f -P 0x99 %d %d", fuaOff, fuaLen),
		fmt.Sprintf("write -P 0x66 %d %d", discardOff, discardLen),
		fmt.Sprintf("discard %d %d", discardOff, discardLen),
		"flush",
		fmt.Sprintf("read -P 0 %d %d", zeroOff, zeroLen),
		fmt.Sprintf("read -P 0x%x %d %d", preZeroedPat, zeroOff+zeroLen, mib-zeroLen),
		fmt.Sprintf("read -P 0 %d %d", unmapOff, zeroLen),
		fmt.Sprintf("read -P 0 %d %d", zeroFUAOff, zeroLen),
		fmt.Sprintf("read -P 0x99 %d %d", fuaOff, fuaLen),
	)

	// The backing file itself holds the data (the file backend writes
	// through to it; the server has no cache of its own).
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(img)) != size {
		t.Fatalf("backing file is %d bytes, want %d", len(img), size)
	}
	check := func(what string, off, n int64, pat byte) {
		t.Helper()
		if !bytes.Equal(img[off:off+n], bytes.Repeat([]byte{pat}, int(n))) {
			t.Errorf("backing file: %s at %d+%d is not 0x%02x", what, off, n, pat)
		}
	}
	for _, r := range regions {
		check("aio region", r.off, r.length, r.pat)
	}
	check("write -z", zeroOff, zeroLen, 0)
	check("write -z -u", unmapOff, zeroLen, 0)
	check("write -z -f", zeroFUAOff, zeroLen, 0)
	check("write -f", fuaOff, fuaLen, 0x99)

	// What reached the device: the flags must have been passed through.
	ops := dev.recorded()
	find := func(kind string, off, length int64) (op, bool) {
		for _, o := range ops {
			if o.kind == kind && o.off == off && o.length == length {
				return o, true
			}
		}
		return op{}, false
	}
	for _, r := range regions {
		if o, ok := find("write", r.off, r.length); !ok {
			t.Errorf("no WriteAt(%d, %d) reached the device", r.off, r.length)
		} else if o.fua {
			t.Errorf("aio write at %d arrived with FUA; qemu did not ask for it", r.off)
		}
	}
	if o, ok := find("zero", zeroOff, zeroLen); !ok {
		t.Errorf("write -z did not reach the device as Zero: %v", ops)
	} else if o.zflags&nbd.ZeroNoHole == 0 || o.zflags&nbd.ZeroFUA != 0 {
		t.Errorf("write -z: Zero flags %b, want NoHole without FUA", o.zflags)
	}
	if o, ok := find("zero", unmapOff, zeroLen); !ok {
		t.Errorf("write -z -u did not reach the device as Zero: %v", ops)
	} else if o.zflags&nbd.ZeroNoHole != 0 {
		t.Errorf("write -z -u: Zero flags %b, NoHole set although qemu allowed unmapping", o.zflags)
	}
	if o, ok := find("zero", zeroFUAOff, zeroLen); !ok {
		t.Errorf("write -z -f did not reach the device as Zero: %v", ops)
	} else if o.zflags&nbd.ZeroFUA == 0 {
		t.Errorf("write -z -f: Zero flags %b, FUA missing", o.zflags)
	}
	if _, ok := find("trim", discardOff, discardLen); !ok {
		t.Errorf("discard did not reach the device as Trim: %v", ops)
	}
	fuaIdx := -1
	for i, o := range ops {
		if o.kind == "write" && o.off == fuaOff && o.length == fuaLen {
			fuaIdx = i
		}
	}
	switch {
	case fuaIdx < 0:
		t.Errorf("write -f did not reach the device")
	case dev.Features().FUA && !ops[fuaIdx].fua:
		t.Errorf("write -f reached the device without FUA")
	case !dev.Features().FUA:
		// The server may emulate FUA with a flush after the write.
		if !hasOpAfter(ops, fuaIdx, "flush") {
			t.Errorf("write -f on a device without native FUA was not followed by a flush")
		}
	}
	// aio_flush must have become a device Flush after the aio writes.
	lastAIO := 0
	for i, o := range ops {
		if o.kind == "write" && o.off == regions[len(regions)-1].off {
			lastAIO = i
		}
	}
	if !hasOpAfter(ops, lastAIO, "flush") {
		t.Errorf("aio_flush did not reach the device as Flush")
	}
}

func hasOpAfter(ops []op, i int, kind string) bool {
	for _, o := range ops[i+1:] {
		if o.kind == kind {
			return true
		}
	}
	return false
}

// TestRealClientConcurrentRequests: the server works on several requests
// of one connection at once and replies out of order. The device holds the
// first write until the second has arrived; a server that handles one
// request at a time never delivers the second, and the gate gives up after
// a generous bound and the test fails.
func TestRealClientConcurrentRequests(t *testing.T) {
	testenv.RequireTool(t, "qemu-io")
	const (
		first  = 0
		second = 1 * mib
	)
	arrived := make(chan struct{})
	overlapped := make(chan bool, 1)
	closeArrived := sync.OnceFunc(func() { close(arrived) })
	dev := &recDevice{Device: memDevice(t, 4*mib)}
	dev.gate = func(off int64) {
		switch off {
		case second:
			closeArrived()
		case first:
			ok := false
			select {
			case <-arrived:
				ok = true
			case <-time.After(20 * time.Second):
			}
			select {
			case overlapped <- ok:
			default: // a retried write: the first answer stands
			}
		}
	}
	s := startServer(t, nbd.Options{Exports: []nbd.Export{{Name: "c", Device: dev}}})
	qemuIO(t, s.uri("c"),
		fmt.Sprintf("aio_write -P 0x11 %d 64k", first),
		fmt.Sprintf("aio_write -P 0x22 %d 64k", second),
		"aio_flush",
		fmt.Sprintf("read -P 0x11 %d 64k", first),
		fmt.Sprintf("read -P 0x22 %d 64k", second),
	)
	select {
	case ok := <-overlapped:
		if !ok {
			t.Fatalf("the second write never reached the device while the first was in progress: requests on one connection are serialised")
		}
	default:
		t.Fatalf("the first write never reached the device")
	}
}

// TestRealClientQemuImg: qemu-img's copy path (16 coroutines, out-of-order
// writes, zero detection through block status) into an export, then
// qemu-img compare reading it back, and qemu-img map seeing the hole.
func TestRealClientQemuImg(t *testing.T) {
	testenv.RequireTool(t, "qemu-img")
	const size = 32 * mib
	dev, backing := fileDevice(t, size)
	s := startServer(t, nbd.Options{Exports: []nbd.Export{{Name: "img", Device: dev}}})
	src := filepath.Join(t.TempDir(), "src.img")
	// Data in the first 24 MiB, a hole after it.
	writeRandomFile(t, src, size, func(off int64) bool { return off >= 24*mib })

	testenv.Run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-m", "16", "-W", src, s.uri("img"))
	testenv.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, s.uri("img"))
	if got, want := sha256File(t, backing), sha256File(t, src); got != want {
		t.Fatalf("backing file sha256 %s, want %s", got, want)
	}
	out := testenv.Run(t, "qemu-img", "map", "-f", "raw", "--output=json", s.uri("img"))
	var m []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Zero   bool  `json:"zero"`
		Data   bool  `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("parsing qemu-img map: %v\n%s", err, out)
	}
	for _, e := range m {
		dataPart := e.Start < 24*mib
		if e.Start+e.Length > 24*mib && e.Start < 24*mib {
			t.Errorf("map entry %+v straddles the end of the data at 24 MiB", e)
		}
		if dataPart == e.Zero || dataPart != e.Data {
			t.Errorf("map entry %+v: want data=%v zero=%v", e, dataPart, !dataPart)
		}
	}
}
