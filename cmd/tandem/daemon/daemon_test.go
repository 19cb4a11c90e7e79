package daemon

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon/daemontest"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/replicate/md"
)

func TestDaemonWiresResourcesToVolumes(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	_, fs, _ := l.start(t, "alpha")

	r0, r1 := fs.Get("r0"), fs.Get("r1")
	if r0 == nil || r1 == nil {
		t.Fatalf("volumes opened: %d", fs.Len())
	}
	c := r0.Cfg
	if c.Cluster != "lab" || c.Node != "alpha" || c.Peer != "beta" || c.Listen != "127.0.0.1:17789" || c.PeerAddress != "127.0.0.1:17790" ||
		c.Protocol != "C" || r1.Cfg.Protocol != "A" || string(c.Secret) != "0123456789abcdef0123456789abcdef" || c.SplitBrain != "disconnect" {
		t.Errorf("r0 volume config: %+v", c)
	}
	if c.Data.Size() != labSize {
		t.Errorf("data area %d bytes, want the resource size %d", c.Data.Size(), labSize)
	}
	layout, _ := Layout(l.cfg.Resource("r0"))
	if c.Meta.Size() < layout.MetaSize() {
		t.Errorf("metadata area %d bytes, want at least %d", c.Meta.Size(), layout.MetaSize())
	}
	// The metadata area is the one create-md wrote: its superblock loads.
	if info, err := md.Dump(c.Meta); err != nil || info.Superblock.Resource != "r0" {
		t.Errorf("metadata area: %v %+v", err, info.Superblock)
	}

	ns, err := l.client("alpha").Status(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if ns.Node != "alpha" || ns.Cluster != "lab" || ns.Witness || len(ns.Resources) != 2 {
		t.Fatalf("status: %+v", ns)
	}
	for _, rs := range ns.Resources {
		if !rs.Up || rs.Role != replicate.Secondary || rs.NBDServing || rs.Epoch != 7 || rs.NBDListen != "unix:"+l.dir+"/alpha.nbd" {
			t.Errorf("resource status: %+v", rs)
		}
	}
	one, err := l.client("alpha").Status(t.Context(), "r1")
	if err != nil || len(one.Resources) != 1 || one.Resources[0].Resource != "r1" {
		t.Errorf("status r1: %+v %v", one, err)
	}
	if _, err := l.client("alpha").Status(t.Context(), "nope"); !errors.Is(err, ErrUnknownResource) {
		t.Errorf("status of an unknown resource: %v", err)
	}
}

func TestAdminOperationsAndRefusals(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	d, fs, logs := l.start(t, "alpha")
	c := l.client("alpha")
	ctx := t.Context()
	v := fs.Get("r0")
	gate := d.resourceList()[0].gate

	buf := make([]byte, 4096)
	if err := gate.ReadAt(ctx, buf, 0); !errors.Is(err, syscall.EPERM) || !errors.Is(err, replicate.ErrNotPrimary) {
		t.Errorf("read on a secondary: %v, want EPERM/not primary", err)
	}
	var errno syscall.Errno
	if err := gate.WriteAt(ctx, buf, 0, false); !errors.As(err, &errno) || errno != syscall.EPERM {
		t.Errorf("write on a secondary maps to errno %v (%v), want EPERM", errno, err)
	}
	if !gate.Features().ReadOnly {
		t.Error("a secondary's export is not advertised read-only")
	}

	v.Refuse("promote", replicate.ErrNotUpToDate)
	_, err := c.Promote(ctx, "r0", false)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != CodeNotUpToDate || !errors.Is(err, replicate.ErrNotUpToDate) {
		t.Fatalf("refused promote: %v", err)
	}
	if gate.primary.Load() {
		t.Fatal("gate opened after a refused promotion")
	}
	v.Set(func(f *daemontest.Volume) {
		f.PromoteResult = replicate.PromoteResult{Epoch: 8, Discarded: "the peer's newer data"}
	})
	res, err := c.Promote(ctx, "r0", true)
	if err != nil || res.Epoch != 8 || res.Discarded == "" {
		t.Fatalf("forced promote: %+v %v", res, err)
	}
	if err := gate.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 0, false); err != nil {
		t.Fatalf("write on the primary: %v", err)
	}
	if gate.Features().ReadOnly {
		t.Error("the primary's export is read-only")
	}
	if ns, _ := c.Status(ctx, "r0"); !ns.Resources[0].NBDServing || ns.Resources[0].Role != replicate.Primary {
		t.Errorf("status after promote: %+v", ns.Resources[0])
	}

	v.Set(func(f *daemontest.Volume) {
		f.Report = replicate.VerifyReport{ComparedBytes: labSize, Differing: []replicate.Range{{Offset: 4096, Length: 4096}}, Repaired: true}
	})
	rep, err := c.Verify(ctx, "r0", true)
	if err != nil || len(rep.Differing) != 1 || rep.Differing[0].Offset != 4096 || !rep.Repaired {
		t.Errorf("verify: %+v %v", rep, err)
	}
	for _, op := range []func() error{
		func() error { return c.Resync(ctx, "r0", true) },
		func() error { return c.Disconnect(ctx, "r0") },
		func() error { return c.Connect(ctx, "r0") },
		func() error { return c.PeerFenced(ctx, "r0") },
		func() error { return c.Resolve(ctx, "r0", true) },
		func() error { return c.Demote(ctx, "r0") },
	} {
		if err := op(); err != nil {
			t.Errorf("operation: %v", err)
		}
	}
	if err := gate.ReadAt(ctx, buf, 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("read after demote: %v", err)
	}
	want := []string{"promote", "promote-force", "verify-repair", "resync-full", "disconnect", "connect", "peer-fenced", "resolve", "demote"}
	if got := v.Calls(); !slices.Equal(got, want) {
		t.Errorf("volume calls %v, want %v", got, want)
	}
	if err := c.Resolve(ctx, "r0", false); !errors.As(err, &ae) || ae.Code != CodeBadRequest {
		t.Errorf("resolve without discard: %v", err)
	}

	v.Refuse("promote", nil)
	v.Refuse("demote", errors.New("flush failed"))
	if _, err := c.Promote(ctx, "r0", false); err != nil {
		t.Fatal(err)
	}
	if err := c.Demote(ctx, "r0"); err == nil {
		t.Fatal("failed demote succeeded")
	}
	if !gate.primary.Load() {
		t.Error("a failed demotion left a primary's export closed")
	}
	v.Refuse("verify", replicate.ErrNotConnected)
	if _, err := c.Verify(ctx, "r0", false); !errors.Is(err, replicate.ErrNotConnected) {
		t.Errorf("verify while not connected: %v", err)
	}
	contains(t, "logs", logs.String(), "admin request refused")
}

func TestReconcileFollowsTheVolumesRole(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	d, fs, _ := l.start(t, "alpha")
	v, g := fs.Get("r1"), d.resourceList()[1].gate
	v.Set(func(f *daemontest.Volume) { f.Role = replicate.Primary })
	waitUntil(t, "the gate to open", func() bool { return g.primary.Load() })
	v.Set(func(f *daemontest.Volume) { f.Role = replicate.Secondary })
	waitUntil(t, "the gate to close", func() bool { return !g.primary.Load() })
}

func TestResourceWithoutOrWithCorruptMetadataStaysDown(t *testing.T) {
	l := newLab(t)
	// r0 gets metadata, then a flipped byte in both superblocks; r1 none.
	r0 := l.cfg.Resource("r0")
	if _, err := CreateMetadata(l.cfg, r0, "alpha", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(l.dir, "alpha-r0.img")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{labSize + 100, labSize + 4096 + 100} {
		if _, err := f.WriteAt([]byte{0xff}, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	before, _ := os.ReadFile(img)

	_, fs, logs := l.start(t, "alpha")
	if fs.Get("r0") != nil || fs.Get("r1") != nil {
		t.Fatal("a volume was opened on missing or corrupt metadata")
	}
	ns, err := l.client("alpha").Status(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range ns.Resources {
		if rs.Up || rs.Disk != replicate.Diskless || rs.Error == "" {
			t.Errorf("down resource status: %+v", rs)
		}
	}
	contains(t, "r0", ns.Resources[0].Error, "corrupt")
	contains(t, "r1", ns.Resources[1].Error, "create-md r1")
	if _, err := l.client("alpha").Promote(t.Context(), "r0", true); !errors.Is(err, ErrResourceDown) {
		t.Errorf("promote of a down resource: %v", err)
	}
	contains(t, "logs", logs.String(), "resource stays down")
	after, _ := os.ReadFile(img)
	if !bytes.Equal(before, after) {
		t.Error("the daemon changed the corrupt device")
	}
}

func TestMetadataOfAnotherNodeIsRefused(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	// beta's device holds alpha's metadata: a wrong path in the config.
	for _, n := range []string{"r0.img", "r1.md"} {
		b, err := os.ReadFile(filepath.Join(l.dir, "alpha-"+n))
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(l.dir, "beta-"+n), string(b), 0o600)
	}
	_, _, _ = l.start(t, "beta")
	ns, _ := l.client("beta").Status(t.Context(), "r0")
	contains(t, "r0 on beta", ns.Resources[0].Error, `node "alpha"`)
}

func TestAdminSocketOwnership(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	sock := filepath.Join(l.dir, "alpha.sock")

	// A stale socket (a daemon killed with -9) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	d, _, logs := l.start(t, "alpha")
	contains(t, "logs", logs.String(), "removing stale admin socket")
	st, err := os.Stat(sock)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket: %v %v, want a socket with mode 0600", st.Mode(), err)
	}

	// A second daemon for the node is refused, and does not disturb the first.
	d2, _ := New(Options{Config: l.cfg, Node: "alpha", Open: fakeOpen(&daemontest.Fakes{})})
	if err := d2.Start(t.Context()); !errors.Is(err, ErrDaemonRunning) {
		t.Fatalf("second daemon: %v, want ErrDaemonRunning", err)
	}
	if _, err := l.client("alpha").Status(t.Context(), ""); err != nil {
		t.Fatalf("first daemon after the second was refused: %v", err)
	}

	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after shutdown: %v", err)
	}
	if _, err := l.client("alpha").Status(t.Context(), ""); !errors.Is(err, ErrNotRunning) {
		t.Errorf("status without a daemon: %v", err)
	}

	// Something that is not a socket is never removed.
	write(t, sock, "precious", 0o600)
	d3, _ := New(Options{Config: l.cfg, Node: "alpha", Open: fakeOpen(&daemontest.Fakes{})})
	if err := d3.Start(t.Context()); err == nil {
		d3.Shutdown(context.Background())
		t.Fatal("started over a regular file at the socket path")
	}
	if b, _ := os.ReadFile(sock); string(b) != "precious" {
		t.Error("the file at the socket path was changed")
	}
}

func TestShutdownClosesVolumesAndReleasesDevices(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	d, fs, _ := l.start(t, "alpha")
	// While the daemon runs, create-md is refused: the device is in use.
	if _, err := CreateMetadata(l.cfg, l.cfg.Resource("r0"), "alpha", CreateOptions{Force: true}); !errors.Is(err, ErrInUse) {
		t.Errorf("create-md while the daemon runs: %v, want ErrInUse", err)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"r0", "r1"} {
		if calls := fs.Get(name).Calls(); !slices.Contains(calls, "close") {
			t.Errorf("%s: volume not closed: %v", name, calls)
		}
	}
	if _, err := CreateMetadata(l.cfg, l.cfg.Resource("r0"), "alpha", CreateOptions{Force: true}); err != nil {
		t.Errorf("create-md after shutdown: %v", err)
	}
}

func TestWitnessIdles(t *testing.T) {
	l := newLab(t)
	_, fs, logs := l.start(t, "witness")
	ns, err := l.client("witness").Status(t.Context(), "")
	if err != nil || !ns.Witness || len(ns.Resources) != 0 {
		t.Fatalf("witness status: %+v %v", ns, err)
	}
	if fs.Len() != 0 {
		t.Error("a witness opened volumes")
	}
	contains(t, "logs", logs.String(), "witness node")
}

func TestVolumeOpenFailureKeepsResourceDown(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	fs := &daemontest.Fakes{Err: errors.New("address already in use")}
	d, err := New(Options{Config: l.cfg, Node: "alpha", Open: fakeOpen(fs)})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(context.Background())
	ns := d.Status()
	contains(t, "r0", ns.Resources[0].Error, "address already in use")
	// The device lock is released with the failed resource.
	if _, err := CreateMetadata(l.cfg, l.cfg.Resource("r0"), "alpha", CreateOptions{Force: true}); err != nil {
		t.Errorf("create-md on a down resource: %v", err)
	}
}
