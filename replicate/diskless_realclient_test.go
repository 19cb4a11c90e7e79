package replicate

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// A real client on the primary's export does not see the disk failure: qemu-io writes and reads patterns
// through the diskless primary, and nbdcopy of the whole export gives the
// peer's bytes.
func TestDisklessPrimaryRealClients(t *testing.T) {
	testenv.RequireTool(t, "qemu-io", "nbdcopy")
	p := newPair(t, pairOpts{blank: true})
	p.waitConnected(10 * time.Second)
	mustPromote(t, p.a, false)

	srv, err := nbd.NewServer(nbd.Options{Exports: []nbd.Export{{Name: "r0", Device: p.a.v}}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx) // a flush on the dead disk may fail it
		if err := <-done; !errors.Is(err, nbd.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	uri := "nbd+unix:///r0?socket=" + sock
	qemuIO := func(cmds ...string) string {
		t.Helper()
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out, errOut, _ := testenv.RunErr("qemu-io", append(args, uri)...)
		return out + errOut
	}

	if out := qemuIO("write -P 0xa5 0 1M"); !strings.Contains(out, "wrote 1048576/1048576") {
		t.Fatalf("qemu-io write before the failure: %s", out)
	}
	failDisks(p.a)
	if out := qemuIO("write -P 0x11 1M 64k", "read -P 0x11 1M 64k"); strings.Contains(out, "error") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io write that hits the disk error: %s, want it done through the peer", out)
	}
	waitFor(t, 5*time.Second, "alpha Diskless", func() bool { return p.a.v.Status().Disk == Diskless })
	out := qemuIO("write -P 0x3c 2M 3M", "flush", "write -z 6M 64k", "discard 7M 64k",
		"read -P 0xa5 0 1M", "read -P 0x3c 2M 3M", "read -P 0 6M 64k")
	if strings.Contains(out, "failed") || strings.Contains(out, "error") || strings.Count(out, "read ") != 3 {
		t.Fatalf("qemu-io through the diskless primary:\n%s", out)
	}

	img := filepath.Join(t.TempDir(), "copy.img")
	testenv.Run(t, "nbdcopy", uri, img)
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p.b.data.Bytes()) {
		t.Fatal("nbdcopy of the diskless primary's export differs from the peer's data")
	}
	if !bytes.Equal(got[2<<20:5<<20], bytes.Repeat([]byte{0x3c}, 3<<20)) {
		t.Fatal("the write made through the diskless primary is not in the copy")
	}
	// The cleanups close alpha; on the dead disk that fails (checked in
	// TestDisklessPrimaryWithoutPeerFails).
	p.a.data.SetFault(nil)
	p.a.meta.SetFault(nil)
}
