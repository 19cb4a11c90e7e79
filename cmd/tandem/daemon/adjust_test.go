package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon/daemontest"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/replicate/disk"
)

// editLab rewrites the lab's file with old replaced by new.
func editLab(t *testing.T, l *lab, old, new string) {
	t.Helper()
	b, err := os.ReadFile(l.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%q is not in the file", old)
	}
	write(t, l.cfg.Path, strings.Replace(string(b), old, new, 1), 0o644)
}

// A file that fails validation on this node changes nothing.
func TestAdjustRefusesAnInvalidFile(t *testing.T) {
	l := newLab(t)
	d, _, _ := l.start(t, "alpha")
	before := d.Status().Nodes["alpha"].ConfigHash
	editLab(t, l, "resources:\n", "alerts:\n  - path: "+filepath.Join(l.dir, "missing-alert")+"\nresources:\n")
	_, err := d.Adjust(t.Context(), false)
	if !errors.Is(err, ErrConfigInvalid) || !strings.Contains(err.Error(), "missing-alert does not exist on this host") {
		t.Fatalf("adjust with a missing alert program: %v", err)
	}
	if st := d.Status(); len(st.Alerts) != 0 || st.Nodes["alpha"].ConfigHash != before {
		t.Errorf("the refused file changed the daemon: %+v", st.Alerts)
	}
}

// Replaced alerts hand over at the adjust: the old runner passes on what
// came before it, the new one what comes after, none twice, none lost;
// and SIGHUP does what tandem adjust does.
func TestAdjustHandsAlertsOverOnSIGHUP(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	dir := t.TempDir()
	prog := alertScript(t, dir, "")
	editLab(t, l, "resources:\n", "alerts:\n  - path: "+prog+"\n    kinds: [alert]\n    recipient: old\nresources:\n")
	cfg, err := config.Load(l.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	l.cfg = cfg
	d, err := New(Options{Config: cfg, Node: "alpha", Open: fakeOpen(&daemontest.Fakes{}), Version: "test", ShutdownTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, func() error { close(ready); return nil }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	<-ready
	d.events.publish(Event{Kind: KindAlert, Text: "before"})
	editLab(t, l, "recipient: old", "recipient: new")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the new alert in the status", func() bool {
		st := d.Status().Alerts
		return len(st) == 1 && st[0].Recipient == "new"
	})
	d.events.publish(Event{Kind: KindAlert, Text: "after"})
	waitUntil(t, "both runs", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "runs"))
		return strings.Count(string(b), "\n") >= 2
	})
	time.Sleep(100 * time.Millisecond) // a duplicate would show now
	var got []string
	for _, r := range readRuns(t, dir) {
		got = append(got, r.recipient+":"+r.text)
	}
	// Each runner delivers its own events; the two run side by side, so
	// the old one's may land after the new one's.
	slices.Sort(got)
	if strings.Join(got, " ") != "new:after old:before" {
		t.Errorf("runs: %v", got)
	}
	ev, _ := d.events.after(0)
	found := false
	for _, e := range ev {
		found = found || e.Kind == KindAdmin && strings.Contains(e.Text, "adjust")
	}
	if !found {
		t.Error("no admin event for the SIGHUP's adjust")
	}
}

func TestLiveChange(t *testing.T) {
	for path, want := range map[string]bool{
		"Alerts": true, "Alerts[/usr/local/bin/page]": true,
		"Resources[r0].SplitBrain": true, "Resources[r0].Resync.MaxRate": true,
		"Resources[r0].Protocol": true, "Resources[r0].Compression": true, "Resources[r0].TLS": true,
		"Resources[r0].TLS.Cert": true, "Resources[r0].TLS (files changed)": true,
		"Resources[r0].PreferredPrimary": true, "Resources[r0].OnNoQuorum": true, "Resources[r0].Failback": true,
		"Timing.FailbackAfter": true, "Timing.Lease": false, "Resources[r0].VIP.Address": false,
		"Nodes[beta].Fencing": true, "Nodes[beta].Fencing[0].PasswordFile": true, "Nodes[beta].FencingX": false,
		"Resources[r0].ALExtents": false, "Resources[r0].Size": false, "Resources[r0].Replicas[alpha].Address": true, "Resources[r0].Replicas[alpha].NBDListen": false,
		"Resources[r0].TLSX": false, "Nodes[alpha].Address": false, "Timing.PingTimeout": true, "Timing.PingInterval": true, "Timing.AckTimeout": true, "Timing.ProbeInterval": false, "Cluster": false,
	} {
		if got := LiveChange(path); got != want {
			t.Errorf("LiveChange(%q) = %v, want %v", path, got, want)
		}
	}
}

// A diskless primary serves through its link: a change that would
// restart it is refused, and nothing else of the file is applied.
func TestAdjustRefusesALinkChangeOfADisklessPrimary(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	d, fs, _ := l.start(t, "alpha")
	v := fs.Get("r0")
	v.Set(func(f *daemontest.Volume) { f.Role, f.Disk = replicate.Primary, replicate.Diskless })
	editLab(t, l, "    size: 1M\n", "    size: 1M\n    protocol: A\n    resync:\n      max-rate: 3M\n")
	_, err := d.Adjust(t.Context(), false)
	if !errors.Is(err, replicate.ErrLinkInUse) || !strings.Contains(err.Error(), "diskless") {
		t.Fatalf("adjust of a diskless primary's protocol: %v", err)
	}
	if code, _ := codeOf(err); code != CodeLinkInUse {
		t.Errorf("code %s", code)
	}
	if len(v.Links()) != 0 || len(v.Tunings()) != 0 {
		t.Errorf("the refused adjust applied %+v %+v", v.Links(), v.Tunings())
	}
}

// A node's fencing levels change with adjust: the next fencing attempt
// builds its fencer from the new ones (the daemon's Fencer reads the
// configuration at each call, as tandem daemon's does).
func TestAdjustChangesFencingLive(t *testing.T) {
	l := newLab(t)
	beta := "    data-dir: " + filepath.Join(l.dir, "beta") + "\n"
	editLab(t, l, beta, beta+"    fencing:\n      - type: manual\n        timeout: 5s\n")
	cfg, err := config.Load(l.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	l.cfg = cfg
	l.createMD(t, "alpha")
	levels := func(node string) (manager.Fencer, error) {
		n, err := cfg.Node(node)
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("test: %s has %d levels, the first %s for %v", node, len(n.Fencing), n.Fencing[0].Type, n.Fencing[0].Timeout)
	}
	d, _, _ := l.start(t, "alpha", func(o *Options) { o.Fencer = levels })
	if _, err := d.fencerOf("beta"); err == nil || !strings.Contains(err.Error(), "1 levels, the first manual for 5s") {
		t.Fatalf("before the adjust: %v", err)
	}
	editLab(t, l, "        timeout: 5s\n", "        timeout: 9s\n")
	res, err := d.Adjust(t.Context(), false)
	if err != nil || !res.Applied || !slices.Contains(res.Changes, "Nodes[beta].Fencing[0].Timeout") {
		t.Fatalf("adjust of beta's fencing: %+v, %v", res, err)
	}
	if _, err := d.fencerOf("beta"); err == nil || !strings.Contains(err.Error(), "the first manual for 9s") {
		t.Fatalf("after the adjust: %v", err)
	}
}

// A replica's device and meta paths change while its resource is down:
// refused while it is up (naming down and up), applied once it is down;
// create-md and up then use the new paths. The peer's paths are only
// recorded.
func TestAdjustMovesADownResourcesDisk(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	_, fs, _ := l.start(t, "alpha")
	c := l.client("alpha")
	ctx := t.Context()
	newDev, newMeta := filepath.Join(l.dir, "alpha-r1-new.img"), filepath.Join(l.dir, "alpha-r1-new.md")
	truncate(t, newDev, labSize)
	yaml, err := os.ReadFile(l.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(yaml), l.dir+"/alpha-r1.img", newDev, 1)
	edited = strings.Replace(edited, l.dir+"/alpha-r1.md", newMeta, 1)
	edited = strings.Replace(edited, l.dir+"/beta-r1.md", l.dir+"/beta-r1-new.md", 1)
	write(t, l.cfg.Path, edited, 0o644)
	if _, err := c.Adjust(ctx, false); !errors.Is(err, ErrNeedsRestart) || !strings.Contains(err.Error(), "tandem down RESOURCE, adjust, then tandem up") {
		t.Fatalf("adjust of an up resource's device: %v, want needs_restart naming down and up", err)
	}
	if err := c.Down(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	res, err := c.Adjust(ctx, false)
	if err != nil || !res.Applied || !slices.Contains(res.Changes, "Resources[r1].Replicas[alpha].Device") ||
		!slices.Contains(res.Changes, "Resources[r1].Replicas[beta].Meta") {
		t.Fatalf("adjust of a down resource's device: %+v %v", res, err)
	}
	nc, err := config.Load(l.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateMetadata(nc, nc.Resource("r1"), "alpha", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Up(ctx, "r1"); err != nil {
		t.Fatalf("up on the new paths: %v", err)
	}
	if f, ok := fs.Get("r1").Cfg.Meta.(*disk.File); !ok || f.Path() != newMeta {
		t.Fatalf("r1 opened metadata %T %v, want %s", fs.Get("r1").Cfg.Meta, fs.Get("r1").Cfg.Meta, newMeta)
	}
	if res, err := c.Adjust(ctx, true); err != nil || len(res.Changes) != 0 {
		t.Fatalf("adjust after the move: %+v %v, want nothing to change", res, err)
	}
}
