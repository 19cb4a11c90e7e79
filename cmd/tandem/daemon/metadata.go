package daemon

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/replicate/md"
)

// CreateOptions qualify CreateMetadata (tandem create-md).
type CreateOptions struct {
	// Force overwrites metadata that is there, valid or corrupt.
	Force bool
	// NewBlank marks a brand-new pair as in sync: both nodes must then
	// be given the same Generation (the first create-md picks one and
	// prints the command for the peer).
	NewBlank bool
	// Generation is the Current generation to record (0: a random one).
	Generation uint64
}

// Created is what CreateMetadata wrote.
type Created struct {
	Superblock md.Superblock `json:"superblock"`
	// Location says where the metadata is ("internal, at byte N of
	// DEVICE" or the external file).
	Location string `json:"location"`
	// Warnings are things the admin should know (e.g. --new-blank on a
	// device that already holds data).
	Warnings []string `json:"warnings"`
}

// ErrNotLocal: the node holds no replica of the resource.
var ErrNotLocal = errors.New("no replica on this node")

// LocalReplica returns node's replica of the resource called name and its
// peer, with errors that say what to fix.
func LocalReplica(cfg *config.Config, name, node string) (*config.Resource, *config.Replica, error) {
	res := cfg.Resource(name)
	if res == nil {
		var names []string
		for _, r := range cfg.Resources {
			names = append(names, r.Name)
		}
		return nil, nil, fmt.Errorf("no resource %q in %s (resources: %v)", name, cfg.Path, names)
	}
	rp := res.Replica(node)
	if rp == nil {
		return nil, nil, fmt.Errorf("resource %s: node %s: %w (its replicas are on %s and %s); pass --node", name, node, ErrNotLocal, res.Replicas[0].Node, res.Replicas[1].Node)
	}
	return res, rp, nil
}

// CreateMetadata writes new metadata for node's replica of res. It refuses
// while a daemon has the replica open, and refuses to overwrite anything
// that looks like tandem metadata (valid or corrupt) unless forced.
func CreateMetadata(cfg *config.Config, res *config.Resource, node string, opts CreateOptions) (Created, error) {
	rp, peer := res.Replica(node), res.Peer(node)
	if rp == nil || peer == nil {
		return Created{}, fmt.Errorf("resource %s: node %s: %w", res.Name, node, ErrNotLocal)
	}
	if opts.Generation != 0 && !opts.NewBlank {
		return Created{}, errors.New("a generation is only given with --new-blank (both nodes of a new, empty pair get the same one)")
	}
	s, err := OpenStorage(res, rp, OpenOptions{CreateMeta: true, NoData: true})
	if err != nil {
		return Created{}, err
	}
	defer s.Close()
	c := Created{Location: rp.Meta}
	if rp.InternalMeta() {
		c.Location = fmt.Sprintf("internal: %s from byte %d", rp.Device, res.Size)
	}
	gen := opts.Generation
	if opts.NewBlank && gen == 0 {
		gen = md.NewGeneration()
	}
	if err := md.Create(s.Meta, newSuperblock(cfg.Cluster, res, node, peer.Node, gen), md.CreateOptions{Force: opts.Force, NewBlank: opts.NewBlank}); err != nil {
		return Created{}, fmt.Errorf("resource %s: %w", res.Name, err)
	}
	info, err := md.Dump(s.Meta)
	if err != nil || info.Superblock == nil {
		return Created{}, fmt.Errorf("resource %s: reading back the new metadata: %w", res.Name, err)
	}
	c.Superblock = *info.Superblock
	if opts.NewBlank {
		if used, err := holdsData(rp.Device, res.Size); err == nil && used {
			c.Warnings = append(c.Warnings, fmt.Sprintf("--new-blank: %s already holds data in its first %d bytes; the pair counts as in sync only if the peer's data is byte-identical (otherwise run tandem verify %s --repair once connected)", rp.Device, res.Size, res.Name))
		}
	}
	return c, nil
}

// newSuperblock is the superblock of node's new metadata for res.
func newSuperblock(cluster string, res *config.Resource, node, peer string, gen uint64) md.Superblock {
	return md.Superblock{
		DataSize: res.Size, Granularity: res.BitmapGranularity, MaxHotExtents: res.ALExtents,
		Cluster: cluster, Resource: res.Name, Node: node, Peer: peer,
		Gen: md.Generations{Current: gen},
	}
}

// foreign says whose metadata sb is when it is not node's replica of res
// in cluster (nil when it is).
func foreign(sb *md.Superblock, cluster string, res *config.Resource, node, peer string) error {
	if sb.Cluster != cluster || sb.Resource != res.Name || sb.Node != node || sb.Peer != peer {
		return fmt.Errorf("the metadata belongs to cluster %q resource %q node %q (peer %q), not cluster %q resource %q node %q (peer %q)",
			sb.Cluster, sb.Resource, sb.Node, sb.Peer, cluster, res.Name, node, peer)
	}
	return nil
}

// holdsData reports whether a regular file has any allocated block in
// [0, size); a block device cannot tell, and counts as empty.
func holdsData(path string, size int64) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return false, err
	}
	off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return false, nil // no data anywhere
	}
	if err != nil {
		return false, err
	}
	return off < size, nil
}

// DumpMetadata describes node's replica's metadata without changing it. It
// takes no lock, so it works while a daemon runs (and then shows the state
// as last written).
func DumpMetadata(res *config.Resource, rp *config.Replica) (md.DumpInfo, error) {
	s, err := OpenStorage(res, rp, OpenOptions{NoData: true, NoLock: true})
	if err != nil {
		return md.DumpInfo{ActiveSlot: -1}, err
	}
	defer s.Close()
	return md.Dump(s.Meta)
}
