package e2e_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
)

// TestDaemonLifecycle runs the binary as an operator would: ready and pid
// files, status through the admin socket, a second daemon for the same
// node refused, SIGTERM leaves nothing behind.
func TestDaemonLifecycle(t *testing.T) {
	p := newPair(t, pairOptions{size: 4 << 20})
	p.createMD()
	alpha := p.start("alpha")
	p.start("witness")

	ready, err := os.ReadFile(filepath.Join(p.dir, "alpha.ready"))
	if err != nil {
		t.Fatal(err)
	}
	want := "admin " + filepath.Join(p.dir, "alpha.sock") + "\nnbd " + alpha.nbdAddr + "\n"
	if string(ready) != want {
		t.Errorf("ready file %q, want %q", ready, want)
	}
	pid, _ := os.ReadFile(filepath.Join(p.dir, "alpha.pid"))
	if strings.TrimSpace(string(pid)) != strconv.Itoa(alpha.proc.Pid()) {
		t.Errorf("pid file %q, daemon pid %d", pid, alpha.proc.Pid())
	}
	st, err := os.Stat(filepath.Join(p.dir, "alpha.sock"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("admin socket: %v %v", st, err)
	}

	var ns daemon.NodeStatus
	if err := json.Unmarshal([]byte(p.tandem("alpha", "status", "--json")), &ns); err != nil {
		t.Fatal(err)
	}
	if ns.Node != "alpha" || ns.Cluster != "e2e" || ns.PID != alpha.proc.Pid() || len(ns.Resources) != 1 || ns.Resources[0].Role != "Secondary" || ns.Resources[0].NBDServing {
		t.Errorf("status: %+v", ns)
	}
	if out := p.tandem("witness", "status"); !strings.Contains(out, "witness: no replicas here") {
		t.Errorf("witness status: %s", out)
	}

	// A second daemon for alpha is refused and leaves the first alone.
	_, stderr, err := testRunDaemon(p, "alpha")
	if err == nil || !strings.Contains(stderr, "another tandem daemon is running") {
		t.Errorf("second daemon: %v\n%s", err, stderr)
	}
	p.tandem("alpha", "status")

	p.stop("alpha")
	p.stop("witness")
	for _, f := range []string{"alpha.sock", "alpha.ready", "alpha.pid", "witness.sock"} {
		if _, err := os.Stat(filepath.Join(p.dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s left behind after SIGTERM (%v)", f, err)
		}
	}
	if _, stderr, err := p.tandemErr("alpha", "status"); err == nil || !strings.Contains(stderr, "tandem daemon is not running for node alpha") {
		t.Errorf("status after stop: %v %s", err, stderr)
	}
}

// TestDaemonKeepsCorruptResourceDown: a daemon over damaged metadata runs,
// reports the resource down as corrupt, and changes no byte of it.
func TestDaemonKeepsCorruptResourceDown(t *testing.T) {
	p := newPair(t, pairOptions{size: 4 << 20})
	p.createMD()
	dev := p.nodes["alpha"].device
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{p.size + 200, p.size + 4096 + 200} { // both superblock slots
		if _, err := f.WriteAt([]byte{0x5a}, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	before, _ := os.ReadFile(dev)
	p.start("alpha")
	st := p.status("alpha")
	if st.Up || !strings.Contains(st.Error, "corrupt") {
		t.Errorf("status over corrupt metadata: %+v", st)
	}
	if _, stderr, err := p.tandemErr("alpha", "promote", "r0", "--force"); err == nil || !strings.Contains(stderr, "resource is down") {
		t.Errorf("promote of a corrupt resource: %v %s", err, stderr)
	}
	out, _, err := p.tandemErr("alpha", "dump-md", "r0")
	if err == nil || !strings.Contains(out, "INVALID") {
		t.Errorf("dump-md of corrupt metadata: %v\n%s", err, out)
	}
	p.stop("alpha")
	after, _ := os.ReadFile(dev)
	if string(before) != string(after) {
		t.Error("the daemon changed the device with corrupt metadata")
	}
}

func testRunDaemon(p *pair, n string) (string, string, error) {
	return testenvRunErr(p.bin, "--config", p.path, "daemon", "--node", n)
}
