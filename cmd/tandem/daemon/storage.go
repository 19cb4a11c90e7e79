package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/nbd/backend"
	"github.com/tandem-ha/tandem/replicate/disk"
	"github.com/tandem-ha/tandem/replicate/md"
)

// Layout is the metadata layout of a resource: the data area is the
// resource's size on both replicas, so the metadata size follows from the
// configuration alone (the same computation as config validate).
func Layout(res *config.Resource) (md.Layout, error) {
	l, err := md.NewLayout(res.Size, md.Options{Granularity: res.BitmapGranularity, MaxHotExtents: res.ALExtents})
	if err != nil {
		return md.Layout{}, fmt.Errorf("resource %s: %w", res.Name, err)
	}
	return l, nil
}

// Storage is one local replica's data area and metadata area, locked
// against every other tandem process for as long as it is open.
type Storage struct {
	// Data is [0, size) of the device, served by nbd/backend (FUA,
	// punched holes, sendfile).
	Data nbd.Device
	// Meta is the metadata area: the rest of the device behind the data
	// (meta: internal, where md.InternalLayout would put it for a device
	// of exactly size plus metadata), or the whole external file.
	Meta disk.Disk

	file     *backend.File
	metaFile *disk.File
	locks    []*fileLock
	// retired are the files of the size before a resize (resize.go),
	// closed with the rest.
	retired []interface{ Close() error }
}

// OpenOptions qualify OpenStorage.
type OpenOptions struct {
	// CreateMeta creates a missing external metadata file (create-md).
	CreateMeta bool
	// NoData opens the metadata area only (create-md, dump-md).
	NoData bool
	// NoLock skips the locks (dump-md reads while a daemon runs).
	NoLock bool
}

// OpenStorage opens the replica rp of res. The data is [0, res.Size) of
// rp.Device; with internal metadata the metadata follows right after.
func OpenStorage(res *config.Resource, rp *config.Replica, opts OpenOptions) (_ *Storage, err error) {
	l, err := Layout(res)
	if err != nil {
		return nil, err
	}
	s := &Storage{}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if !opts.NoLock {
		lk, err := lockPath(rp.Device, false)
		if err != nil {
			return nil, fmt.Errorf("resource %s: device: %w", res.Name, lockHint(err))
		}
		s.locks = append(s.locks, lk)
	}
	if rp.InternalMeta() {
		f, err := disk.OpenFile(rp.Device, disk.FileOptions{})
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", res.Name, err)
		}
		s.metaFile = f
		if need := res.Size + l.MetaSize(); f.Size() < need {
			return nil, fmt.Errorf("resource %s: %s has %d bytes; %d of data and %d of internal metadata need %d (grow it, e.g. truncate -s %d %s)",
				res.Name, rp.Device, f.Size(), res.Size, l.MetaSize(), need, need, rp.Device)
		}
		s.Meta = disk.NewRegion(f, res.Size, f.Size()-res.Size)
	} else {
		if !opts.NoLock {
			lk, err := lockPath(rp.Meta, opts.CreateMeta)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("resource %s: metadata: %w", res.Name, lockHint(err))
			}
			if err != nil {
				return nil, fmt.Errorf("resource %s: metadata file %s does not exist: %w (create it with tandem create-md %s)", res.Name, rp.Meta, md.ErrNoMetadata, res.Name)
			}
			s.locks = append(s.locks, lk)
		}
		fo := disk.FileOptions{}
		if st, err := os.Stat(rp.Meta); opts.CreateMeta && (errors.Is(err, os.ErrNotExist) || err == nil && st.Mode().IsRegular() && st.Size() == 0) {
			// A file create-md made (or the lock made empty) gets its size.
			if err == nil {
				if err := os.Truncate(rp.Meta, l.MetaSize()); err != nil {
					return nil, fmt.Errorf("resource %s: sizing %s: %w", res.Name, rp.Meta, err)
				}
			} else {
				fo = disk.FileOptions{Create: true, Size: l.MetaSize()}
			}
		}
		f, err := disk.OpenFile(rp.Meta, fo)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("resource %s: metadata file %s does not exist: %w (create it with tandem create-md %s)", res.Name, rp.Meta, md.ErrNoMetadata, res.Name)
			}
			return nil, fmt.Errorf("resource %s: %w", res.Name, err)
		}
		s.metaFile = f
		if f.Size() < l.MetaSize() {
			return nil, fmt.Errorf("resource %s: metadata file %s has %d bytes, the metadata needs %d", res.Name, rp.Meta, f.Size(), l.MetaSize())
		}
		s.Meta = f
	}
	if opts.NoData {
		return s, nil
	}
	f, err := backend.OpenFile(rp.Device, backend.FileOptions{})
	if err != nil {
		return nil, fmt.Errorf("resource %s: %w", res.Name, err)
	}
	s.file = f
	if f.Size() < res.Size {
		return nil, fmt.Errorf("resource %s: %s has %d bytes, the resource's size is %d", res.Name, rp.Device, f.Size(), res.Size)
	}
	s.Data = &window{File: f, size: res.Size}
	return s, nil
}

func lockHint(err error) error {
	if errors.Is(err, ErrInUse) {
		return fmt.Errorf("%w (is tandem daemon running for it? stop it first)", err)
	}
	return err
}

// Close closes the files and drops the locks; the caller closed the
// volume on top first.
func (s *Storage) Close() error {
	var errs []error
	if s.file != nil {
		errs = append(errs, s.file.Close())
		s.file = nil
	}
	if s.metaFile != nil {
		errs = append(errs, s.metaFile.Close())
		s.metaFile = nil
	}
	for _, f := range s.retired {
		errs = append(errs, f.Close())
	}
	s.retired = nil
	for _, l := range s.locks {
		l.release()
	}
	s.locks = nil
	return errors.Join(errs...)
}

// window is [0, size) of a backing file: the data area, with the internal
// metadata (or unused space) behind it out of reach. The NBD server and the
// volume check ranges against Size before calling, so the methods only
// forward; the optional interfaces are kept so sendfile and extents work.
type window struct {
	*backend.File
	size int64
}

func (w *window) Size() int64 { return w.size }

func (w *window) Extents(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	length = min(length, w.size-off)
	return w.File.Extents(ctx, off, length)
}

func (w *window) FileRange(off, length int64) (*os.File, int64, bool) {
	if off < 0 || length < 0 || off+length > w.size {
		return nil, 0, false
	}
	return w.File.FileRange(off, length)
}
