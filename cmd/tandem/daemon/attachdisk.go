package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/tandem-ha/tandem/replicate/md"
)

// attach-disk replaces a failed disk under the running volume (DRBD's
// attach after a detach on I/O error): the daemon writes new metadata on
// the disk now at the configured device and meta paths and hands it to
// the volume, which takes it as an Inconsistent replica and syncs it in
// full from the peer. A diskless primary goes on serving its clients
// through the peer meanwhile; a failed secondary becomes a sync target.
// Unlike tandem down, replace, create-md, up, the primary's NBD clients
// never see the resource go away.

// ErrForeignDisk: the new disk holds metadata attach-disk does not
// overwrite without force.
var ErrForeignDisk = errors.New("the new disk holds other tandem metadata")

// attachDisk is POST /v1/resources/NAME/attach-disk.
func (d *Daemon) attachDisk(ctx context.Context, r *resource, force bool) error {
	r.roleMu.Lock()
	defer r.roleMu.Unlock()
	v, err := r.upVolume()
	if err != nil {
		return err
	}
	// Before anything is written on the new disk: a refusal (a healthy
	// disk, no peer to sync from) leaves every disk as it was.
	if err := v.AttachCheck(); err != nil {
		return fmt.Errorf("%s: attach-disk: %w", r.cfg.Name, err)
	}
	// The failed disk's files and locks go first: the new disk is most
	// often at the same path, and a second flock of one file in this
	// process would conflict. The volume does no I/O to a failed disk.
	r.mu.Lock()
	old := r.storage
	r.storage = nil
	r.mu.Unlock()
	if old != nil {
		if err := old.Close(); err != nil {
			d.log.Warn("attach-disk: closing the failed disk", "resource", r.cfg.Name, "err", err)
		}
	}
	s, err := OpenStorage(r.cfg, r.rp, OpenOptions{CreateMeta: true})
	if err != nil {
		return fmt.Errorf("%s: attach-disk: %w", r.cfg.Name, err)
	}
	if err := d.writeNewMetadata(r, s, force); err != nil {
		s.Close()
		return fmt.Errorf("%s: attach-disk: %w", r.cfg.Name, err)
	}
	// Whatever the volume says, s holds metadata of a new disk (all out of
	// sync): it stays open and locked, and a restart takes it as such.
	r.mu.Lock()
	r.storage = s
	r.mu.Unlock()
	if err := v.Attach(ctx, s.Data, s.Meta); err != nil {
		return fmt.Errorf("%s: attach-disk: %w", r.cfg.Name, err)
	}
	st := v.Status()
	d.log.Info("attach-disk: new disk attached", "resource", r.cfg.Name, "role", st.Role, "disk", st.Disk, "connection", st.Conn)
	d.events.publish(Event{Kind: KindVolume, Resource: r.cfg.Name, Text: "new disk attached (tandem attach-disk): a full sync from the peer follows"})
	return nil
}

// writeNewMetadata writes this replica's metadata on the new disk, as
// create-md --force would, unless what is there is another replica's
// tandem metadata or corrupt: then the path may name the wrong disk, and
// only force overwrites it. The previous metadata of this very replica
// (the old disk put back) is rewritten: its state is not trusted.
func (d *Daemon) writeNewMetadata(r *resource, s *Storage, force bool) error {
	info, err := md.Dump(s.Meta)
	switch {
	case errors.Is(err, md.ErrNoMetadata):
	case errors.Is(err, md.ErrCorrupt), errors.Is(err, md.ErrVersion):
		if !force {
			return fmt.Errorf("%w, unusable (%v): is %s the right disk? --force overwrites it", ErrForeignDisk, err, r.rp.Device)
		}
	case err != nil:
		return fmt.Errorf("reading the new disk's metadata: %w", err)
	default:
		if err := foreign(info.Superblock, d.cfg.Cluster, r.cfg, d.node.Name, r.peer.Node); err != nil && !force {
			return fmt.Errorf("%w: %v: is %s the right disk? --force overwrites it", ErrForeignDisk, err, r.rp.Device)
		}
	}
	sb := newSuperblock(d.cfg.Cluster, r.cfg, d.node.Name, r.peer.Node, 0)
	if err := md.Create(s.Meta, sb, md.CreateOptions{Force: true}); err != nil {
		return fmt.Errorf("writing the new disk's metadata: %w", err)
	}
	return nil
}
