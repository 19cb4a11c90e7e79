package daemon

import (
	"errors"
	"os"
	"reflect"
	"slices"
	"testing"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon/daemontest"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/replicate/md"
)

// attach-disk writes new metadata only where the volume takes the disk:
// on a healthy disk it is refused before anything is written; another
// replica's or corrupt metadata on the new disk is overwritten with force
// only; taken, the new disk holds this replica's metadata, all out of
// sync, and the volume has it.
func TestAttachDisk(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	_, fs, _ := l.start(t, "alpha")
	c := l.client("alpha")
	ctx := t.Context()
	res := l.cfg.Resource("r1") // external metadata: alpha-r1.md
	rp := res.Replica("alpha")
	dump := func() (*md.Superblock, error) {
		t.Helper()
		info, err := DumpMetadata(res, rp)
		return info.Superblock, err
	}
	v := fs.Get("r1")
	attached := func() bool { return slices.Contains(v.Calls(), "attach") }

	before, err := dump()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AttachDisk(ctx, "r1", true); !errors.Is(err, replicate.ErrDiskAttached) {
		t.Fatalf("attach-disk on a healthy disk: %v, want disk_attached", err)
	}
	if sb, err := dump(); err != nil || !reflect.DeepEqual(sb, before) || attached() {
		t.Fatalf("a refused attach-disk changed the disk (%v) or attached: %+v -> %+v", err, before, sb)
	}

	v.Set(func(f *daemontest.Volume) { f.Disk = replicate.Failed })
	s, err := OpenStorage(res, rp, OpenOptions{NoLock: true, NoData: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := md.Create(s.Meta, newSuperblock(l.cfg.Cluster, res, "gamma", "beta", 0), md.CreateOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := c.AttachDisk(ctx, "r1", false); !errors.Is(err, ErrForeignDisk) {
		t.Fatalf("attach-disk over node gamma's metadata: %v, want foreign_disk", err)
	} else {
		contains(t, "the refusal", err.Error(), `node "gamma"`)
	}
	if sb, err := dump(); err != nil || sb.Node != "gamma" || attached() {
		t.Fatalf("a refused attach-disk overwrote gamma's metadata (%v, %+v) or attached", err, sb)
	}

	// Both superblock slots flipped: corrupt, refused the same way.
	f, err := os.OpenFile(rp.Meta, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{100, 4096 + 100} {
		if _, err := f.WriteAt([]byte{0xff}, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if _, err := dump(); !errors.Is(err, md.ErrCorrupt) {
		t.Fatalf("the flipped metadata reads %v, want corrupt", err)
	}
	if err := c.AttachDisk(ctx, "r1", false); !errors.Is(err, ErrForeignDisk) || attached() {
		t.Fatalf("attach-disk over corrupt metadata: %v, want foreign_disk", err)
	} else {
		contains(t, "the refusal", err.Error(), "unusable")
	}

	if err := c.AttachDisk(ctx, "r1", true); err != nil {
		t.Fatalf("attach-disk --force: %v", err)
	}
	sb, err := dump()
	if err != nil || sb.Node != "alpha" || sb.Peer != "beta" || sb.Flags&md.FullSyncNeeded == 0 || sb.Flags&md.Consistent != 0 {
		t.Fatalf("the new disk's metadata: %v %+v, want alpha's, Inconsistent, full sync needed", err, sb)
	}
	if !attached() {
		t.Fatalf("the volume was not given the new disk: %v", v.Calls())
	}
	ns, err := c.Status(ctx, "r1")
	if err != nil || ns.Resources[0].Disk != replicate.Inconsistent {
		t.Fatalf("status after attach-disk: %v %+v", err, ns)
	}
	// The new disk is held as the old one was: create-md is refused.
	if _, err := CreateMetadata(l.cfg, res, "alpha", CreateOptions{Force: true}); !errors.Is(err, ErrInUse) {
		t.Fatalf("create-md on the attached disk: %v, want in use", err)
	}
}
