package nbd_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// The kernel here has no nbd module, so a filesystem reaches the server
// through nbdfuse (the export as a file on a FUSE mount) and a loop device
// on that file.

// attachment is one nbdfuse + loop device chain. detach undoes it in
// reverse order; it is idempotent and also registered as a cleanup, so a
// failing test still leaves nothing behind.
type attachment struct {
	t        *testing.T
	fuseDir  string
	loop     string
	nbdfuse  *testenv.Proc
	detached bool
}

// attach exposes uri as a loop block device.
func attach(t *testing.T, uri, dir string) *attachment {
	t.Helper()
	a := &attachment{t: t, fuseDir: filepath.Join(dir, "fuse")}
	if err := os.MkdirAll(a.fuseDir, 0o755); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "nbdfuse.pid")
	_ = os.Remove(pidFile)
	a.nbdfuse = testenv.Start(t, "nbdfuse", "-P", pidFile, filepath.Join(a.fuseDir, "disk"), uri)
	t.Cleanup(a.detach)

	// nbdfuse writes its pid file once the FUSE mount serves requests.
	a.nbdfuse.WaitFor(t, "its pid file", func() bool {
		b, err := os.ReadFile(pidFile)
		return err == nil && len(strings.TrimSpace(string(b))) > 0
	})
	a.loop = strings.TrimSpace(testenv.Run(t, "losetup", "-f", "--show", filepath.Join(a.fuseDir, "disk")))
	if !strings.HasPrefix(a.loop, "/dev/loop") {
		t.Fatalf("losetup printed %q, not a loop device", a.loop)
	}
	return a
}

func (a *attachment) detach() {
	t := a.t
	if a.detached {
		return
	}
	a.detached = true
	if a.loop != "" {
		if _, stderr, err := testenv.RunErr("losetup", "-d", a.loop); err != nil {
			t.Errorf("losetup -d %s: %v: %s", a.loop, err, stderr)
		}
	}
	if _, stderr, err := testenv.RunErr("fusermount3", "-u", a.fuseDir); err != nil {
		t.Errorf("fusermount3 -u %s: %v: %s", a.fuseDir, err, stderr)
	}
	// Unmounting makes nbdfuse exit; only if it does not is it killed,
	// by its own PID.
	select {
	case <-a.nbdfuse.Exited():
		if err := a.nbdfuse.Err(); err != nil {
			t.Errorf("nbdfuse exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("nbdfuse still running 30s after fusermount3 -u; killing pid %d", a.nbdfuse.Pid())
		a.nbdfuse.Kill(t)
	}
}

// mountExt4 mounts dev on dir and returns the undo (idempotent, also run
// at cleanup).
func mountExt4(t *testing.T, dev, dir string) func() {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "mount", "-t", "ext4", dev, dir)
	mounted := true
	undo := func() {
		if !mounted {
			return
		}
		mounted = false
		if _, stderr, err := testenv.RunErr("umount", dir); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, stderr)
		}
	}
	t.Cleanup(undo)
	return undo
}

// e2fsckClean runs a forced read-only check; any finding fails the test.
func e2fsckClean(t *testing.T, target string) {
	t.Helper()
	stdout, stderr, err := testenv.RunErr("e2fsck", "-fn", target)
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s%s", target, err, stdout, stderr)
	}
}

func TestRealClientExt4(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount")
	const size = 256 * mib
	dev, backing := fileDevice(t, size)
	s := startServer(t, nbd.Options{Exports: []nbd.Export{{Name: "fs", Device: dev}}})
	uri := s.uri("fs")
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")

	// Phase 1: make a filesystem and fill it.
	a := attach(t, uri, dir)
	testenv.Run(t, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", a.loop)
	umount := mountExt4(t, a.loop, mnt)
	want := map[string]string{}
	for i := range 24 {
		name := filepath.Join(fmt.Sprintf("d%d", i%4), fmt.Sprintf("f%02d", i))
		n := 1<<10 + (i*i*37)%(3*mib) // 1 KiB .. 3 MiB, unaligned
		data := make([]byte, n)
		if _, err := rand.Read(data); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(mnt, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		want[name] = hex.EncodeToString(sum[:])
	}
	syscall.Sync()
	umount()
	e2fsckClean(t, a.loop)
	a.detach()

	// Phase 2: the backing file alone holds a clean filesystem, so the
	// data reached the server and not only the client's caches.
	e2fsckClean(t, backing)

	// Phase 3: a fresh chain (no cache survives), check and read back.
	b := attach(t, uri, dir)
	e2fsckClean(t, b.loop)
	umount = mountExt4(t, b.loop, mnt)
	for name, sum := range want {
		data, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil {
			t.Errorf("reading back %s: %v", name, err)
			continue
		}
		got := sha256.Sum256(data)
		if hex.EncodeToString(got[:]) != sum {
			t.Errorf("%s: sha256 %x after remount, want %s", name, got, sum)
		}
	}
	umount()
	b.detach()
}
