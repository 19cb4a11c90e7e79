package daemon

import (
	"context"
	"fmt"
	"os"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/nbd/backend"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/replicate/disk"
)

// tandem resize (DRBD's resize, grow only): the admin makes both
// replicas' devices larger (lvextend, truncate), sets the resource's size
// in the configuration file on both nodes, and runs tandem resize on the
// primary. The daemon reads the file again for the new size; the volume
// asks the peer, whose daemon reads its own file and opens its grown
// device (growHook), grows there, then here, and resyncs the new range.

// resize is POST /v1/resources/NAME/resize.
func (d *Daemon) resize(ctx context.Context, r *resource, opts replicate.ResizeOptions) (ResizeResult, error) {
	r.roleMu.Lock()
	defer r.roleMu.Unlock()
	v, err := r.upVolume()
	if err != nil {
		return ResizeResult{}, err
	}
	n, err := d.fileResource(r)
	if err != nil {
		return ResizeResult{}, err
	}
	res := ResizeResult{From: v.Size(), To: n.Size}
	if err := v.Resize(ctx, n.Size, opts); err != nil {
		return res, fmt.Errorf("%s: resize: %w", r.cfg.Name, err)
	}
	if res.From != res.To {
		d.events.publish(Event{Kind: KindVolume, Resource: r.cfg.Name, Text: fmt.Sprintf("resized from %d to %d bytes (tandem resize)", res.From, res.To)})
	}
	return res, nil
}

// fileResource is the resource as the configuration file says now.
func (d *Daemon) fileResource(r *resource) (*config.Resource, error) {
	nc, err := d.loadFile()
	if err != nil {
		return nil, err
	}
	n := nc.Resource(r.cfg.Name)
	if n == nil {
		return nil, fmt.Errorf("%w: %s no longer lists resource %s", ErrConfigInvalid, d.cfg.Path, r.cfg.Name)
	}
	return n, nil
}

// loadFile reads and validates the configuration file again (adjust,
// resize).
func (d *Daemon) loadFile() (*config.Config, error) {
	if d.cfg.Path == "" {
		return nil, fmt.Errorf("%w: the daemon was not started from a file", ErrConfigInvalid)
	}
	nc, err := config.Load(d.cfg.Path)
	if err == nil {
		err = nc.Validate(d.node.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfigInvalid, err)
	}
	return nc, nil
}

// growHook is the volume's Config.Grow: the size must be what this
// node's configuration file says, and the device must hold it.
func (d *Daemon) growHook(r *resource) func(ctx context.Context, size int64) (replicate.GrowTarget, error) {
	return func(ctx context.Context, size int64) (replicate.GrowTarget, error) {
		n, err := d.fileResource(r)
		if err != nil {
			return replicate.GrowTarget{}, fmt.Errorf("node %s: %w", d.node.Name, err)
		}
		if n.Size != size {
			return replicate.GrowTarget{}, fmt.Errorf("node %s: its configuration (%s) says size %d for %s, not %d: set it there first", d.node.Name, d.cfg.Path, n.Size, r.cfg.Name, size)
		}
		r.mu.Lock()
		s := r.storage
		r.mu.Unlock()
		if s == nil {
			return replicate.GrowTarget{}, fmt.Errorf("node %s: %s is not open", d.node.Name, r.cfg.Name)
		}
		grown, tgt, err := s.grown(r.cfg, r.rp, size)
		if err != nil {
			return replicate.GrowTarget{}, fmt.Errorf("node %s: %w", d.node.Name, err)
		}
		tgt.Done = func() {
			r.mu.Lock()
			r.storage = grown
			r.mu.Unlock()
			r.gate.size.Store(size)
			// Not under cfgMu here: the volume holds its I/O lock, which an
			// adjust holding cfgMu may wait for.
			go func() {
				d.cfgMu.Lock()
				r.cfg.Size = size
				// The file's list too: the next adjust compares with it.
				if c := d.cfg.Resource(r.cfg.Name); c != nil {
					c.Size = size
				}
				d.cfgMu.Unlock()
			}()
			d.log.Info("resource grown", "resource", r.cfg.Name, "size", size)
		}
		return tgt, nil
	}
}

// grown opens the replica's device again for size bytes of data, keeping
// s's locks: the device, and an external metadata file, were made larger.
// Internal metadata moves behind the new end of the data, and must not
// overlap where it was: the device must grow by at least the metadata's
// size. s's files stay open until Close (the volume may still be reading
// through them as it switches).
func (s *Storage) grown(res *config.Resource, rp *config.Replica, size int64) (_ *Storage, _ replicate.GrowTarget, err error) {
	ol, err := Layout(res)
	if err != nil {
		return nil, replicate.GrowTarget{}, err
	}
	nres := *res
	nres.Size = size
	nl, err := Layout(&nres)
	if err != nil {
		return nil, replicate.GrowTarget{}, err
	}
	n := &Storage{locks: s.locks, retired: s.retired}
	if s.file != nil {
		n.retired = append(n.retired, s.file)
	}
	if s.metaFile != nil {
		n.retired = append(n.retired, s.metaFile)
	}
	defer func() {
		if err != nil {
			n.closeFiles()
		}
	}()
	f, err := backend.OpenFile(rp.Device, backend.FileOptions{})
	if err != nil {
		return nil, replicate.GrowTarget{}, fmt.Errorf("resource %s: %w", res.Name, err)
	}
	n.file = f
	tgt := replicate.GrowTarget{Release: n.closeFiles}
	if rp.InternalMeta() {
		need := size + nl.MetaSize()
		if size < res.Size+ol.MetaSize() {
			return nil, tgt, fmt.Errorf("resource %s: growing %d bytes with internal metadata: the metadata (%d bytes) moves behind the new end and must not overlap where it is: grow by at least %d bytes: %w", res.Name, size-res.Size, nl.MetaSize(), ol.MetaSize(), replicate.ErrResizeRefused)
		}
		if f.Size() < need {
			return nil, tgt, fmt.Errorf("resource %s: %s has %d bytes; %d of data and %d of internal metadata need %d (grow the device first, e.g. lvextend, or truncate -s %d %s): %w", res.Name, rp.Device, f.Size(), size, nl.MetaSize(), need, need, rp.Device, replicate.ErrResizeRefused)
		}
		mf, err := disk.OpenFile(rp.Device, disk.FileOptions{})
		if err != nil {
			return nil, tgt, fmt.Errorf("resource %s: %w", res.Name, err)
		}
		n.metaFile = mf
		n.Meta = disk.NewRegion(mf, size, mf.Size()-size)
	} else {
		if f.Size() < size {
			return nil, tgt, fmt.Errorf("resource %s: %s has %d bytes, the new size is %d (grow the device first): %w", res.Name, rp.Device, f.Size(), size, replicate.ErrResizeRefused)
		}
		if st, err := os.Stat(rp.Meta); err == nil && st.Mode().IsRegular() && st.Size() < nl.MetaSize() {
			// The external file grows by the new bitmap pages; the old
			// metadata ignores the room behind it.
			if err := os.Truncate(rp.Meta, nl.MetaSize()); err != nil {
				return nil, tgt, fmt.Errorf("resource %s: growing %s: %w", res.Name, rp.Meta, err)
			}
		}
		mf, err := disk.OpenFile(rp.Meta, disk.FileOptions{})
		if err != nil {
			return nil, tgt, fmt.Errorf("resource %s: %w", res.Name, err)
		}
		n.metaFile = mf
		if mf.Size() < nl.MetaSize() {
			return nil, tgt, fmt.Errorf("resource %s: metadata %s has %d bytes, %d of data need %d: %w", res.Name, rp.Meta, mf.Size(), size, nl.MetaSize(), replicate.ErrResizeRefused)
		}
		n.Meta = mf
		tgt.InPlace = true
	}
	n.Data = &window{File: f, size: size}
	tgt.Data, tgt.Meta = n.Data, n.Meta
	return n, tgt, nil
}

// closeFiles closes the files a grown Storage opened (not the locks it
// shares, nor the retired files).
func (s *Storage) closeFiles() {
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
	if s.metaFile != nil {
		s.metaFile.Close()
		s.metaFile = nil
	}
}
