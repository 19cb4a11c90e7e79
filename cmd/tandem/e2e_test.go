package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/tandem-ha/tandem/tools/testenv"
)

type nbdinfoExport struct {
	Name       string `json:"export-name"`
	Size       int64  `json:"export-size"`
	ReadOnly   bool   `json:"is_read_only"`
	CanFlush   bool   `json:"can_flush"`
	CanTrim    bool   `json:"can_trim"`
	CanMulti   bool   `json:"can_multi_conn"`
	CanZero    bool   `json:"can_zero"`
	CanFastZer bool   `json:"can_fast_zero"`
}

func nbdinfo(t *testing.T, uri string) nbdinfoExport {
	t.Helper()
	out := testenv.Run(t, "nbdinfo", "--json", "--no-content", uri)
	var info struct {
		Exports []nbdinfoExport `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo %s printed %q: %v", uri, out, err)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo %s: %d exports, want 1", uri, len(info.Exports))
	}
	return info.Exports[0]
}

func TestServeEndToEnd(t *testing.T) {
	testenv.RequireTool(t, "nbdinfo", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img") // missing: serve creates it
	sock := filepath.Join(dir, "nbd.sock")
	pidFile := filepath.Join(dir, "pid")
	const size = 64 << 20

	s := testenv.StartTandemServe(t,
		"--listen", "unix:"+sock,
		"--listen", "127.0.0.1:0",
		"--export", "disk="+img,
		"--size", "64M",
		"--description", "e2e test disk",
		"--pid-file", pidFile,
	)
	if len(s.Addrs) != 2 || s.Addrs[0] != "unix:"+sock || !strings.HasPrefix(s.Addrs[1], "127.0.0.1:") || strings.HasSuffix(s.Addrs[1], ":0") {
		t.Fatalf("ready file lists %q, want the unix socket and 127.0.0.1:PORT", s.Addrs)
	}
	if b, err := os.ReadFile(pidFile); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(s.Pid()) {
		t.Fatalf("pid file holds %q (%v), want %d", b, err, s.Pid())
	}

	// The file was created sparse at the requested size.
	var st syscall.Stat_t
	if err := syscall.Stat(img, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size {
		t.Fatalf("%s is %d bytes, want %d", img, st.Size, size)
	}
	if st.Blocks*512 >= size {
		t.Errorf("%s is not sparse: %d bytes allocated", img, st.Blocks*512)
	}

	unixURI := "nbd+unix:///disk?socket=" + sock
	tcpURI := "nbd://" + s.Addrs[1] + "/disk"
	for _, uri := range []string{unixURI, tcpURI} {
		info := nbdinfo(t, uri)
		if info.Name != "disk" || info.Size != size || info.ReadOnly {
			t.Errorf("nbdinfo %s = %+v, want a writable 64 MiB export named disk", uri, info)
		}
	}

	// A write through the TCP listener must be on disk after SIGTERM (the
	// shutdown flushes), and read back through the unix socket before.
	testenv.Run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xa5 1M 64k", tcpURI)
	if out, errOut, err := testenv.RunErr("qemu-io", "-f", "raw", "-c", "read -P 0xa5 1M 64k", unixURI); err != nil || strings.Contains(out+errOut, "Pattern verification failed") {
		t.Fatalf("qemu-io read back: %v\n%s%s", err, out, errOut)
	}

	if err := s.Stop(t); err != nil {
		t.Fatalf("tandem serve did not exit 0 after SIGTERM: %v\n%s", err, s.Stderr())
	}
	for _, p := range []string{pidFile, sock} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after exit (stat: %v)", p, err)
		}
	}
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if got := data[1<<20 : 1<<20+64<<10]; !bytes.Equal(got, bytes.Repeat([]byte{0xa5}, 64<<10)) {
		t.Fatalf("written range not on disk after shutdown")
	}
	if !bytes.Equal(data[:1<<20], make([]byte, 1<<20)) {
		t.Fatalf("bytes before the written range changed")
	}
	if !strings.Contains(s.Stderr(), "listening") {
		t.Errorf("no startup log line:\n%s", s.Stderr())
	}
}

func TestServeReadOnly(t *testing.T) {
	testenv.RequireTool(t, "nbdinfo", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "ro.img")
	want := bytes.Repeat([]byte("tandem!\n"), 512) // 4 KiB
	if err := os.WriteFile(img, want, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "ro.sock")
	s := testenv.StartTandemServe(t, "--listen", "unix:"+sock, "--export", "="+img, "--read-only", "--log-format", "json")

	uri := "nbd+unix:///?socket=" + sock // the default export
	info := nbdinfo(t, uri)
	if !info.ReadOnly || info.Size != int64(len(want)) {
		t.Fatalf("nbdinfo = %+v, want a read-only %d-byte export", info, len(want))
	}
	if out, errOut, err := testenv.RunErr("qemu-io", "-f", "raw", "-c", "write -P 0 0 512", uri); err == nil && !strings.Contains(out+errOut, "failed") {
		t.Fatalf("write to a read-only export succeeded:\n%s%s", out, errOut)
	}
	if err := s.Stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, s.Stderr())
	}
	if got, err := os.ReadFile(img); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read-only export changed on disk (%v)", err)
	}
	// --log-format json: every stderr line is a JSON object.
	for _, line := range strings.Split(strings.TrimSpace(s.Stderr()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
	}
}

// TestServeRefusesBusyAddress checks that a listen failure is an error exit,
// not a server that silently serves fewer addresses.
func TestServeRefusesBusyAddress(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	s := testenv.StartTandemServe(t, "--listen", "127.0.0.1:0", "--export", "a="+img, "--size", "1M")
	out, errOut, err := testenv.RunErr(testenv.BuildTandem(t), "serve", "--listen", s.Addrs[0], "--export", "a="+img)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("second serve on %s: %v, want exit status 1\n%s%s", s.Addrs[0], err, out, errOut)
	}
	if !strings.Contains(out+errOut, "listening on "+s.Addrs[0]) {
		t.Errorf("error does not name the address:\n%s%s", out, errOut)
	}
	if err := s.Stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, s.Stderr())
	}
}

// TestAttachKernelDevice drives /dev/nbd0 through tandem attach and detach.
// This test bed's kernel has no nbd module, so it is reported as skipped
// here; it runs wherever /dev/nbd0 exists.
func TestAttachKernelDevice(t *testing.T) {
	testenv.RequireDevice(t, "/dev/nbd0")
	testenv.RequireRoot(t)
	const dev = "/dev/nbd0"
	dir := t.TempDir()
	img := filepath.Join(dir, "k.img")
	sock := filepath.Join(dir, "k.sock")
	s := testenv.StartTandemServe(t, "--listen", "unix:"+sock, "--export", "k="+img, "--size", "16M")

	bin := testenv.BuildTandem(t)
	attach := testenv.Start(t, bin, "attach", "nbd+unix:///k?socket="+sock, dev)
	// Runs before Start's cleanup kills attach: detach first, so the kernel
	// lets go of the device.
	t.Cleanup(func() { _, _, _ = testenv.RunErr(bin, "detach", dev) })

	// The device is usable once the kernel knows its size.
	sizeFile := filepath.Join("/sys/block", filepath.Base(dev), "size")
	attach.WaitFor(t, dev+" to get its size", func() bool {
		b, err := os.ReadFile(sizeFile)
		return err == nil && strings.TrimSpace(string(b)) == fmt.Sprint(16<<20/512)
	})

	block := bytes.Repeat([]byte{0x5a}, 4096)
	f, err := os.OpenFile(dev, os.O_RDWR|os.O_SYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(block, 8192); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	testenv.Run(t, bin, "detach", dev)
	if err := attach.Wait(t); err != nil {
		t.Fatalf("attach exit after detach: %v\n%s", err, attach.Stderr())
	}
	if err := s.Stop(t); err != nil {
		t.Fatalf("serve exit: %v\n%s", err, s.Stderr())
	}
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data[8192:8192+4096], block) {
		t.Fatal("block written through /dev/nbd0 is not in the backing file")
	}
}
