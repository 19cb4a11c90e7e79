package nbd

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// fileDev serves a plain file and offers it for sendfile.
type fileDev struct {
	f         *os.File
	size      int64
	fileReads atomic.Int32
	readAts   atomic.Int32
}

func (d *fileDev) Size() int64 { return d.size }
func (d *fileDev) ReadAt(_ context.Context, p []byte, off int64) error {
	d.readAts.Add(1)
	_, err := d.f.ReadAt(p, off)
	return err
}
func (d *fileDev) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	_, err := d.f.WriteAt(p, off)
	return err
}
func (d *fileDev) Flush(context.Context) error                         { return d.f.Sync() }
func (d *fileDev) Trim(context.Context, int64, int64, bool) error      { return nil }
func (d *fileDev) Zero(context.Context, int64, int64, ZeroFlags) error { return ErrNotSupported }
func (d *fileDev) Features() Features                                  { return Features{Flush: true} }
func (d *fileDev) FileRange(off, n int64) (*os.File, int64, bool) {
	d.fileReads.Add(1)
	return d.f, off, true
}

func TestLargeReadsUseSendfile(t *testing.T) {
	noLeaks(t)
	const size = 4 << 20
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(data)
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	dev := &fileDev{f: f, size: size}
	_, addr := startServer(t, Options{Exports: []Export{{Name: "f", Device: dev}}})

	for _, structured := range []bool{false, true} {
		c := dial(t, addr)
		c.goExport("f", structured)
		// Small reads go through ReadAt, large ones through sendfile;
		// interleave them so buffered replies and sendfile replies mix.
		for i, r := range []struct{ off, n int }{{1, 1 << 20}, {4096, 512}, {size - 65536, 65536}, {12345, 3 << 20}} {
			c.request(cmdRead, 0, uint64(i), uint64(r.off), uint32(r.n), nil)
			got := c.readReply(map[uint64]int{uint64(i): r.n})
			if got.errno != 0 || !bytes.Equal(got.data, data[r.off:r.off+r.n]) {
				t.Fatalf("structured=%v read %d@%d: errno %d, data equal %v", structured, r.n, r.off,
					got.errno, bytes.Equal(got.data, data[r.off:r.off+r.n]))
			}
		}
	}
	if dev.fileReads.Load() != 6 || dev.readAts.Load() != 2 {
		t.Fatalf("sendfile used %d times, ReadAt %d times; want 6 and 2", dev.fileReads.Load(), dev.readAts.Load())
	}

	// If the file is shorter than promised, the header is already out:
	// the only honest answer is to hang up.
	c := dial(t, addr)
	c.goExport("f", false)
	if err := f.Truncate(size / 2); err != nil {
		t.Fatal(err)
	}
	c.request(cmdRead, 0, 1, size/2-4096, 1<<20, nil)
	c.expectClosed()
}
