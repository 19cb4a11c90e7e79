package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon/daemontest"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/replicate/md"
)

// startFakeDaemon runs alpha's daemon of lab in process, on fake volumes.
func startFakeDaemon(t *testing.T, lab *daemontest.Lab) *daemontest.Fakes {
	t.Helper()
	fs := &daemontest.Fakes{}
	d, err := daemon.New(daemon.Options{Config: lab.Config, Node: "alpha", Version: "test",
		Open: func(ctx context.Context, cfg replicate.Config) (daemon.Volume, error) {
			v, err := fs.Open(ctx, cfg)
			if err != nil {
				return nil, err
			}
			return v, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(context.Background()) })
	return fs
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, err := execute(t, args...)
	if err != nil {
		t.Fatalf("tandem %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

func mustFail(t *testing.T, want string, args ...string) (stdout string) {
	t.Helper()
	out, _, err := execute(t, args...)
	if err == nil {
		t.Fatalf("tandem %s succeeded, want an error with %q\n%s", strings.Join(args, " "), want, out)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("tandem %s: %v, want it to contain %q", strings.Join(args, " "), err, want)
	}
	return out
}

func TestCreateAndDumpMD(t *testing.T) {
	lab := daemontest.NewLab(t)
	c := []string{"--config", lab.Path}

	out := mustRun(t, append(c, "create-md", "r0", "--node", "alpha")...)
	for _, w := range []string{"r0 on alpha: metadata written (internal", "Inconsistent", "tandem promote r0 --force"} {
		if !strings.Contains(out, w) {
			t.Errorf("create-md output lacks %q:\n%s", w, out)
		}
	}
	mustFail(t, "--force", append(c, "create-md", "r0", "--node", "alpha")...)
	mustRun(t, append(c, "create-md", "r0", "--node", "alpha", "--force")...)

	out = mustRun(t, append(c, "create-md", "r1", "--node", "alpha", "--new-blank")...)
	i := strings.Index(out, "--generation ")
	if i < 0 {
		t.Fatalf("create-md --new-blank does not print the peer's command:\n%s", out)
	}
	gen := strings.Fields(out[i+len("--generation "):])[0]
	out = mustRun(t, append(c, "create-md", "r1", "--node", "beta", "--new-blank", "--generation", gen)...)
	if !strings.Contains(out, "start in sync") {
		t.Errorf("second new-blank create-md:\n%s", out)
	}
	mustFail(t, "--generation goes with --new-blank", append(c, "create-md", "r1", "--node", "beta", "--generation", gen)...)
	mustFail(t, "non-zero hex", append(c, "create-md", "r1", "--node", "beta", "--new-blank", "--force", "--generation", "xyz")...)
	mustFail(t, "no replica on this node", append(c, "create-md", "r1", "--node", "witness")...)
	mustFail(t, `no resource "nope"`, append(c, "create-md", "nope", "--node", "alpha")...)

	var a, b md.DumpInfo
	if err := json.Unmarshal([]byte(mustRun(t, append(c, "dump-md", "r1", "--node", "alpha", "--json")...)), &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(mustRun(t, append(c, "dump-md", "r1", "--node", "beta", "--json")...)), &b); err != nil {
		t.Fatal(err)
	}
	if a.Superblock.Gen != b.Superblock.Gen || a.DiskState != "UpToDate" || a.Superblock.Node != "alpha" || b.Superblock.Node != "beta" {
		t.Errorf("new-blank pair: %+v / %+v", a.Superblock, b.Superblock)
	}
	out = mustRun(t, append(c, "dump-md", "r0", "--node", "alpha")...)
	for _, w := range []string{"slot 0: valid", "(in use)", "flags FullSyncNeeded|Clean", "bitmap: 0 of 256 bits set"} {
		if !strings.Contains(out, w) {
			t.Errorf("dump-md output lacks %q:\n%s", w, out)
		}
	}
	mustFail(t, "no metadata", append(c, "dump-md", "r0", "--node", "beta")...)
}

func TestAdminCommandsWithoutDaemon(t *testing.T) {
	lab := daemontest.NewLab(t)
	for _, args := range [][]string{
		{"status"}, {"promote", "r0"}, {"demote", "r0"}, {"verify", "r0"}, {"connect", "r0"},
	} {
		mustFail(t, "tandem daemon is not running for node alpha", append([]string{"--config", lab.Path}, append(args, "--node", "alpha")...)...)
	}
	out := mustFail(t, "not running", "--config", lab.Path, "status", "--node", "alpha", "--json")
	var eb daemon.ErrorBody
	if err := json.Unmarshal([]byte(out), &eb); err != nil || eb.Code != "no_daemon" {
		t.Errorf("status --json without a daemon: %q (%v)", out, err)
	}
	mustFail(t, "want one RESOURCE", "--config", lab.Path, "promote", "--node", "alpha")
	mustFail(t, "--discard-my-data is required", "--config", lab.Path, "resolve", "r0", "--node", "alpha")
	mustFail(t, `unknown node "nope"`, "--config", lab.Path, "status", "--node", "nope")
}

// fakeAlpha is a lab whose alpha runs its daemon on fake volumes (both
// resources' metadata created); args makes a command line for alpha.
func fakeAlpha(t *testing.T) (fs *daemontest.Fakes, args func(...string) []string) {
	t.Helper()
	lab := daemontest.NewLab(t)
	c := []string{"--config", lab.Path}
	for _, r := range []string{"r0", "r1"} {
		mustRun(t, append(c, "create-md", r, "--node", "alpha")...)
	}
	return startFakeDaemon(t, lab), func(a ...string) []string {
		return append(append(append([]string{}, c...), a...), "--node", "alpha")
	}
}

func TestAdminCommands(t *testing.T) {
	fs, cmdline := fakeAlpha(t)
	run := func(args ...string) string { return mustRun(t, cmdline(args...)...) }
	fail := func(want string, args ...string) string { return mustFail(t, want, cmdline(args...)...) }

	out := run("status")
	for _, w := range []string{"node alpha of cluster lab", "RESOURCE", "r0", "r1", "Secondary", "UpToDate", "refusing"} {
		if !strings.Contains(out, w) {
			t.Errorf("status lacks %q:\n%s", w, out)
		}
	}
	if out := run("status", "r0"); !strings.Contains(out, "generations: current 0x0000000000000abc") || strings.Contains(out, "r1") ||
		!strings.Contains(out, "application I/O here since it opened: 0 B read, 0 B written") {
		t.Errorf("status r0:\n%s", out)
	}
	var ns daemon.NodeStatus
	if err := json.Unmarshal([]byte(run("status", "--json")), &ns); err != nil || len(ns.Resources) != 2 || ns.Resources[0].Role != replicate.Secondary {
		t.Fatalf("status --json: %+v %v", ns, err)
	}
	fail(`unknown resource "nope"`, "status", "nope")

	v := fs.Get("r0")
	v.Refuse("promote", replicate.ErrNotUpToDate)
	fail("promote --force makes it Primary anyway", "promote", "r0")
	out = fail("refused", "promote", "r0", "--json")
	var eb daemon.ErrorBody
	if err := json.Unmarshal([]byte(out), &eb); err != nil || eb.Code != daemon.CodeNotUpToDate {
		t.Errorf("promote --json refusal: %q %v", out, err)
	}
	v.Set(func(f *daemontest.Volume) {
		f.PromoteResult = replicate.PromoteResult{Epoch: 9, Discarded: "4 KiB the peer wrote"}
	})
	if out := run("promote", "r0", "--force"); !strings.Contains(out, "r0: Primary (epoch 9)") || !strings.Contains(out, "forced: discarded 4 KiB the peer wrote") {
		t.Errorf("promote --force:\n%s", out)
	}
	if out := run("status"); !strings.Contains(out, "serving") {
		t.Errorf("status after promote:\n%s", out)
	}

	v.Set(func(f *daemontest.Volume) {
		f.Report = replicate.VerifyReport{ComparedBytes: 1 << 20, Differing: []replicate.Range{{Offset: 8192, Length: 4096}}}
	})
	out = fail("tandem verify r0 --repair resyncs them", "verify", "r0")
	if !strings.Contains(out, "offset 8192 length 4096") {
		t.Errorf("verify output:\n%s", out)
	}
	v.Set(func(f *daemontest.Volume) { f.Report.Repaired = true })
	if out := run("verify", "r0", "--repair"); !strings.Contains(out, "repaired") {
		t.Errorf("verify --repair:\n%s", out)
	}
	var rep replicate.VerifyReport
	if err := json.Unmarshal([]byte(run("verify", "r0", "--repair", "--json")), &rep); err != nil || rep.Differing[0].Offset != 8192 {
		t.Errorf("verify --json: %+v %v", rep, err)
	}

	v.Refuse("pause-sync", replicate.ErrIsSyncTarget)
	out = fail("pause-sync r0: replicate: this node is the sync target", "pause-sync", "r0", "--json")
	if err := json.Unmarshal([]byte(out), &eb); err != nil || eb.Code != daemon.CodeIsSyncTarget {
		t.Errorf("pause-sync --json refusal: %q %v", out, err)
	}
	v.Refuse("pause-sync", nil)
	out = fail("attach-disk replaces a failed disk only", "attach-disk", "r0", "--json")
	if err := json.Unmarshal([]byte(out), &eb); err != nil || eb.Code != daemon.CodeDiskAttached {
		t.Errorf("attach-disk --json refusal on a healthy disk: %q %v", out, err)
	}
	v.Refuse("connect", replicate.ErrSplitBrain)
	fail("resolve r0 --discard-my-data", "connect", "r0")
	for _, args := range [][]string{{"demote", "r0"}, {"disconnect", "r0"}, {"resync", "r0", "--full"}, {"resolve", "r0", "--discard-my-data"},
		{"pause-sync", "r0"}, {"resume-sync", "r0"}, {"resize", "r0", "--assume-clean"}, {"outdate", "r0"}} {
		run(args...)
	}
	if out := run("demote", "r0", "--json"); strings.TrimSpace(out) != "{\n  \"ok\": true\n}" {
		t.Errorf("demote --json: %q", out)
	}
	if calls := strings.Join(v.Calls(), " "); calls != "promote promote promote-force verify verify-repair verify-repair pause-sync attach-check connect demote disconnect resync-full resolve pause-sync resume-sync resize outdate demote" {
		t.Errorf("volume calls: %s", calls)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 4096: "4 KiB", 1536: "1.5 KiB", 1 << 30: "1 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestDaemonCommandRefusesBadSetups(t *testing.T) {
	lab := daemontest.NewLab(t)
	mustFail(t, `unknown node "nope"`, "--config", lab.Path, "daemon", "--node", "nope")
	mustFail(t, "--shutdown-timeout", "--config", lab.Path, "daemon", "--node", "alpha", "--shutdown-timeout", "0s")
	mustFail(t, "pass --config PATH", "--config", lab.Path+".missing", "daemon", "--node", "alpha")
	// A device that is missing is a problem of the configuration for
	// this node: reported with the file and line, nothing started.
	if err := os.Remove(filepath.Join(lab.Dir, "alpha-r0.img")); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := execute(t, "--config", lab.Path, "daemon", "--node", "alpha")
	if err == nil || !strings.Contains(err.Error(), "1 problem in") || !strings.Contains(stderr, "tandem.yaml:") {
		t.Fatalf("daemon with a missing device: %v\n%s", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(lab.Dir, "alpha.sock")); !os.IsNotExist(err) {
		t.Errorf("a refused daemon left its admin socket: %v", err)
	}
	// create-md checks as strictly: no metadata is written anywhere.
	mustFail(t, "1 problem in", "--config", lab.Path, "create-md", "r1", "--node", "alpha")
	if _, err := os.Stat(filepath.Join(lab.Dir, "alpha-r1.md")); !os.IsNotExist(err) {
		t.Errorf("create-md with a bad configuration wrote metadata: %v", err)
	}
}

func TestStatusTable(t *testing.T) {
	ns := daemon.NodeStatus{Cluster: "prod", Node: "alpha", PID: 42, Version: "v1", Resources: []daemon.ResourceStatus{
		{Up: true, NBDServing: true, NBDListen: "127.0.0.1:10809", Status: replicate.Status{
			Resource: "db", Peer: "beta", Role: replicate.Primary, Disk: replicate.UpToDate, Conn: replicate.SyncSource,
			PeerRole: replicate.Secondary, PeerDisk: replicate.Inconsistent, Epoch: 3, OutOfSync: 3 << 30,
			Resync: &replicate.Progress{TotalBytes: 4 << 30, DoneBytes: 1 << 30, LeftBytes: 3 << 30, SentBytes: 1 << 30, Percent: 25, Rate: 100 << 20, ETASeconds: 30},
		}},
		{Error: "resource files: no metadata", Status: replicate.Status{Resource: "files", Peer: "beta", Role: replicate.Secondary,
			Disk: replicate.Diskless, Conn: replicate.StandAlone, PeerRole: replicate.RoleUnknown, PeerDisk: replicate.DiskUnknown}},
	}}
	var b strings.Builder
	printStatus(&b, ns, false)
	out := b.String()
	for _, w := range []string{
		"node alpha of cluster prod (data node), daemon pid 42",
		"db        Primary    UpToDate  SyncSource  beta Secondary/Inconsistent  3      3 GiB        serving",
		"files     Secondary  Diskless  StandAlone  beta Unknown/DUnknown        0      0 B          down",
		"resync: 25.0% (1 GiB of 4 GiB, 3 GiB left, 1 GiB sent, 100 MiB/s, ETA 30s; bitmap)",
		"DOWN: resource files: no metadata",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("status table lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "generations") {
		t.Errorf("details without -v:\n%s", out)
	}
	ns.Resources[0].SyncPaused, ns.Resources[0].Resync.Paused = true, true
	b.Reset()
	printStatus(&b, ns, false)
	for _, w := range []string{"ETA 30s; bitmap, PAUSED)", "resyncs from here PAUSED by the administrator (tandem resume-sync db)"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("paused status lacks %q:\n%s", w, b.String())
		}
	}
}
