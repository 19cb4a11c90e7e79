package main

import (
	"bytes"
	"context"
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
	"time"

	"github.com/tandem-ha/tandem/tools/testenv"
)

// Generous bounds for a shared, noisy machine; they only stop a hung test.
const (
	readyWait = 60 * time.Second
	exitWait  = 60 * time.Second
	toolWait  = 60 * time.Second
)

// server is one `tandem serve` subprocess.
type server struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer // read only after exited is closed
	exited chan struct{}
	err    error // Wait's result, valid after exited is closed
	addrs  []string
}

// startServe runs `tandem serve args... --ready-file F` and waits until the
// ready file appears. The process is killed at the end of the test if it is
// still running.
func startServe(t *testing.T, args ...string) *server {
	t.Helper()
	bin := testenv.BuildTandem(t)
	ready := filepath.Join(t.TempDir(), "ready")
	s := &server{exited: make(chan struct{})}
	s.cmd = exec.Command(bin, append([]string{"serve", "--ready-file", ready}, args...)...)
	s.cmd.Stderr = &s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting tandem serve: %v", err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			_ = s.cmd.Process.Kill() // by PID: this process only
			<-s.exited
		}
	})

	deadline := time.Now().Add(readyWait)
	for {
		if b, err := os.ReadFile(ready); err == nil {
			s.addrs = strings.Fields(string(b))
			return s
		}
		select {
		case <-s.exited:
			t.Fatalf("tandem serve exited before it was ready: %v\n%s", s.err, s.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tandem serve not ready after %v", readyWait)
		}
	}
}

// stop sends SIGTERM and returns the exit error (nil for status 0).
func (s *server) stop(t *testing.T) error {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-s.exited:
		return s.err
	case <-time.After(exitWait):
		t.Fatalf("tandem serve still running %v after SIGTERM", exitWait)
		return nil
	}
}

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
	ctx, cancel := context.WithTimeout(context.Background(), toolWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nbdinfo", "--json", "--no-content", uri).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("nbdinfo %s: %v\n%s", uri, err, stderr)
	}
	var info struct {
		Exports []nbdinfoExport `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo %s printed %q: %v", uri, out, err)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo %s: %d exports, want 1", uri, len(info.Exports))
	}
	return info.Exports[0]
}

func runTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func TestServeEndToEnd(t *testing.T) {
	testenv.RequireTool(t, "nbdinfo", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img") // missing: serve creates it
	sock := filepath.Join(dir, "nbd.sock")
	pidFile := filepath.Join(dir, "pid")
	const size = 64 << 20

	s := startServe(t,
		"--listen", "unix:"+sock,
		"--listen", "127.0.0.1:0",
		"--export", "disk="+img,
		"--size", "64M",
		"--description", "e2e test disk",
		"--pid-file", pidFile,
	)
	if len(s.addrs) != 2 || s.addrs[0] != "unix:"+sock || !strings.HasPrefix(s.addrs[1], "127.0.0.1:") || strings.HasSuffix(s.addrs[1], ":0") {
		t.Fatalf("ready file lists %q, want the unix socket and 127.0.0.1:PORT", s.addrs)
	}
	if b, err := os.ReadFile(pidFile); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(s.cmd.Process.Pid) {
		t.Fatalf("pid file holds %q (%v), want %d", b, err, s.cmd.Process.Pid)
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
	tcpURI := "nbd://" + s.addrs[1] + "/disk"
	for _, uri := range []string{unixURI, tcpURI} {
		info := nbdinfo(t, uri)
		if info.Name != "disk" || info.Size != size || info.ReadOnly {
			t.Errorf("nbdinfo %s = %+v, want a writable 64 MiB export named disk", uri, info)
		}
	}

	// A write through the TCP listener must be on disk after SIGTERM (the
	// shutdown flushes), and read back through the unix socket before.
	if out, err := runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0xa5 1M 64k", tcpURI); err != nil {
		t.Fatalf("qemu-io write: %v\n%s", err, out)
	}
	if out, err := runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0xa5 1M 64k", unixURI); err != nil || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io read back: %v\n%s", err, out)
	}

	if err := s.stop(t); err != nil {
		t.Fatalf("tandem serve did not exit 0 after SIGTERM: %v\n%s", err, s.stderr.String())
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
	if !strings.Contains(s.stderr.String(), "listening") {
		t.Errorf("no startup log line:\n%s", s.stderr.String())
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
	s := startServe(t, "--listen", "unix:"+sock, "--export", "="+img, "--read-only", "--log-format", "json")

	uri := "nbd+unix:///?socket=" + sock // the default export
	info := nbdinfo(t, uri)
	if !info.ReadOnly || info.Size != int64(len(want)) {
		t.Fatalf("nbdinfo = %+v, want a read-only %d-byte export", info, len(want))
	}
	if out, err := runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0 0 512", uri); err == nil && !strings.Contains(out, "failed") {
		t.Fatalf("write to a read-only export succeeded:\n%s", out)
	}
	if err := s.stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, s.stderr.String())
	}
	if got, err := os.ReadFile(img); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read-only export changed on disk (%v)", err)
	}
	// --log-format json: every stderr line is a JSON object.
	for _, line := range strings.Split(strings.TrimSpace(s.stderr.String()), "\n") {
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
	s := startServe(t, "--listen", "127.0.0.1:0", "--export", "a="+img, "--size", "1M")
	bin := testenv.BuildTandem(t)
	ctx, cancel := context.WithTimeout(context.Background(), exitWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "serve", "--listen", s.addrs[0], "--export", "a="+img).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("second serve on %s: %v, want exit status 1\n%s", s.addrs[0], err, out)
	}
	if !strings.Contains(string(out), "listening on "+s.addrs[0]) {
		t.Errorf("error does not name the address:\n%s", out)
	}
	if err := s.stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, s.stderr.String())
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
	s := startServe(t, "--listen", "unix:"+sock, "--export", "k="+img, "--size", "16M")

	bin := testenv.BuildTandem(t)
	attach := exec.Command(bin, "attach", "nbd+unix:///k?socket="+sock, dev)
	var attachErr bytes.Buffer
	attach.Stderr = &attachErr
	if err := attach.Start(); err != nil {
		t.Fatal(err)
	}
	attached := make(chan error, 1)
	go func() { attached <- attach.Wait() }()
	t.Cleanup(func() {
		_ = exec.Command(bin, "detach", dev).Run()
		_ = attach.Process.Kill()
	})

	// The device is usable once the kernel knows its size.
	sizeFile := filepath.Join("/sys/block", filepath.Base(dev), "size")
	deadline := time.Now().Add(readyWait)
	for {
		b, err := os.ReadFile(sizeFile)
		if err == nil && strings.TrimSpace(string(b)) == fmt.Sprint(16<<20/512) {
			break
		}
		select {
		case err := <-attached:
			t.Fatalf("attach exited early: %v\n%s", err, attachErr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not get its size: %q %v", dev, b, err)
		}
	}

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

	if out, err := exec.Command(bin, "detach", dev).CombinedOutput(); err != nil {
		t.Fatalf("detach: %v\n%s", err, out)
	}
	select {
	case err := <-attached:
		if err != nil {
			t.Fatalf("attach exit after detach: %v\n%s", err, attachErr.String())
		}
	case <-time.After(exitWait):
		t.Fatalf("attach still running %v after detach", exitWait)
	}
	if err := s.stop(t); err != nil {
		t.Fatalf("serve exit: %v\n%s", err, s.stderr.String())
	}
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data[8192:8192+4096], block) {
		t.Fatal("block written through /dev/nbd0 is not in the backing file")
	}
}
