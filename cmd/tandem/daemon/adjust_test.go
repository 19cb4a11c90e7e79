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
		"Resources[r9] (added)": true, "Resources[r0] (removed)": true, "Resources (order)": true, "Resources": false,
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

// labResource is a resource of the lab's file on alpha and beta, with
// its devices in dir; port is alpha's link port (beta's is the next).
func labResource(dir, name string, port int, nbdAlpha string) string {
	return fmt.Sprintf(`  - name: %[2]s
    size: 1M
    replicas:
      alpha:
        device: %[1]s/alpha-%[2]s.img
        meta: %[1]s/alpha-%[2]s.md
        address: 127.0.0.1:%[3]d
        nbd-listen: %[4]s
      beta:
        device: %[1]s/beta-%[2]s.img
        meta: %[1]s/beta-%[2]s.md
        address: 127.0.0.1:%[5]d
        nbd-listen: unix:%[1]s/beta.nbd
`, dir, name, port, nbdAlpha, port+1)
}

// TestAdjustAddsAndRemovesResources: resources added to the file come up
// (on the node's NBD server, or on a new listener), a removed one must be
// down first, and the others are not touched.
func TestAdjustAddsAndRemovesResources(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	d, fs, _ := l.start(t, "alpha")
	c := l.client("alpha")
	ctx := t.Context()
	r0 := fs.Get("r0")
	shared, own := "unix:"+l.dir+"/alpha.nbd", "unix:"+l.dir+"/alpha2.nbd"
	for _, n := range []string{"r2", "r3"} {
		truncate(t, filepath.Join(l.dir, "alpha-"+n+".img"), labSize)
	}
	b, err := os.ReadFile(l.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	write(t, l.cfg.Path, string(b)+labResource(l.dir, "r2", 17793, own)+labResource(l.dir, "r3", 17795, shared), 0o644)
	nc, err := config.Load(l.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateMetadata(nc, nc.Resource("r3"), "alpha", CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	res, err := c.Adjust(ctx, true)
	if err != nil || res.Applied || !slices.Equal(res.Changes, []string{"Resources[r2] (added)", "Resources[r3] (added)"}) {
		t.Fatalf("dry run: %+v %v", res, err)
	}
	if len(d.resourceList()) != 2 || d.server(own) != nil {
		t.Fatal("the dry run changed the daemon")
	}
	res, err = c.Adjust(ctx, false)
	if err != nil || !res.Applied || len(res.Notes) != 2 {
		t.Fatalf("adjust adding r2 and r3: %+v %v", res, err)
	}
	contains(t, "r2's note", res.Notes[0], "resource r2 added but down")
	contains(t, "r2's note", res.Notes[0], "tandem create-md r2")
	contains(t, "r3's note", res.Notes[1], "resource r3 added and up")
	if got := d.server(shared).srv.Exports(); !slices.Equal(got, []string{"r0", "r1", "r3"}) {
		t.Errorf("exports on %s: %v", shared, got)
	}
	if s := d.server(own); s == nil || !slices.Equal(s.srv.Exports(), []string{"r2"}) {
		t.Fatalf("no NBD server for r2 on %s", own)
	}
	if !slices.Contains(d.NBDAddrs(), own) {
		t.Errorf("NBDAddrs %v lacks %s", d.NBDAddrs(), own)
	}
	st, err := c.Status(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, rs := range st.Resources {
		names = append(names, rs.Resource)
	}
	if !slices.Equal(names, []string{"r0", "r1", "r2", "r3"}) {
		t.Fatalf("status lists %v", names)
	}
	if _, err := CreateMetadata(nc, nc.Resource("r2"), "alpha", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Up(ctx, "r2"); err != nil {
		t.Fatalf("up r2 after create-md: %v", err)
	}
	if fs.Get("r0") != r0 {
		t.Error("adding resources reopened r0")
	}
	if res, err := c.Adjust(ctx, true); err != nil || len(res.Changes) != 0 {
		t.Fatalf("adjust again: %+v %v, want nothing to change", res, err)
	}

	// Removing r1 (up) is refused and changes nothing; once down it goes,
	// and with r2 its own listener.
	b, _ = os.ReadFile(l.cfg.Path)
	full := string(b)
	r1 := full[strings.Index(full, "  - name: r1\n"):strings.Index(full, "  - name: r2\n")]
	r2 := labResource(l.dir, "r2", 17793, own)
	write(t, l.cfg.Path, strings.Replace(strings.Replace(full, r1, "", 1), r2, "", 1), 0o644)
	if _, err := c.Adjust(ctx, false); !errors.Is(err, ErrNeedsRestart) || !strings.Contains(err.Error(), "tandem down r1 first") {
		t.Fatalf("removing an up resource: %v", err)
	}
	if len(d.resourceList()) != 4 {
		t.Fatal("the refused adjust changed the resources")
	}
	for _, n := range []string{"r1", "r2"} {
		if err := c.Down(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	res, err = c.Adjust(ctx, false)
	if err != nil || !res.Applied || !slices.Equal(res.Changes, []string{"Resources[r1] (removed)", "Resources[r2] (removed)"}) {
		t.Fatalf("removing r1 and r2: %+v %v", res, err)
	}
	if got := d.server(shared).srv.Exports(); !slices.Equal(got, []string{"r0", "r3"}) {
		t.Errorf("exports on %s after the removal: %v", shared, got)
	}
	if d.server(own) != nil || slices.Contains(d.NBDAddrs(), own) {
		t.Error("r2's NBD server still runs")
	}
	if err := c.Up(ctx, "r1"); !errors.Is(err, ErrUnknownResource) {
		t.Errorf("up of a removed resource: %v", err)
	}
	fresh, err := config.Load(l.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Status().Nodes["alpha"].ConfigHash; got != fresh.Hash() {
		t.Errorf("configuration hash %s, the file's is %s", got, fresh.Hash())
	}
	if fs.Get("r0") != r0 || r0.Status().Role != replicate.Secondary {
		t.Error("the removals touched r0")
	}
}
