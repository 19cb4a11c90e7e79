// Package daemontest has a fake replicated volume for tests of the daemon
// and the admin CLI: a memory device with a role, scripted refusals, and a
// record of what it was asked.
package daemontest

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/nbd/backend"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/replicate/disk"
)

// Volume stands in for replicate.Volume: a memory device with a role,
// and scripted refusals. It records what the daemon asked of it.
type Volume struct {
	*backend.Memory
	Cfg replicate.Config

	mu            sync.Mutex
	Role          replicate.Role
	Conn          replicate.ConnState
	Disk          replicate.DiskState // "" reads as UpToDate
	calls         []string
	closed        bool
	refuse        map[string]error // op -> error to return
	Report        replicate.VerifyReport
	PromoteResult replicate.PromoteResult
	tuned         []replicate.Tunables // what Tune was given, in order
	links         []replicate.LinkSettings
}

// Links is what SetLink was given, in order.
func (f *Volume) Links() []replicate.LinkSettings {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.links)
}

// Tunings is what Tune was given, in order.
func (f *Volume) Tunings() []replicate.Tunables {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.tuned)
}

func newVolume(cfg replicate.Config) *Volume {
	return &Volume{Memory: backend.NewMemory(cfg.Data.Size()), Cfg: cfg,
		Role: replicate.Secondary, Conn: replicate.Connecting, refuse: map[string]error{}}
}

func (f *Volume) call(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, op)
	if f.closed {
		return replicate.ErrClosed
	}
	return f.refuse[op]
}

func (f *Volume) Status() replicate.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return replicate.Status{Resource: f.Cfg.Resource, Node: f.Cfg.Node, Peer: f.Cfg.Peer, Role: f.Role,
		Disk: cmp.Or(f.Disk, replicate.UpToDate), Conn: f.Conn, PeerRole: replicate.RoleUnknown, PeerDisk: replicate.DiskUnknown,
		Protocol: f.Cfg.Protocol, Epoch: 7, Size: f.Size(), Generations: replicate.Generations{Current: 0xabc}}
}

func (f *Volume) Promote(ctx context.Context, force bool) (replicate.PromoteResult, error) {
	op := "promote"
	if force {
		op = "promote-force"
	}
	if err := f.call(op); err != nil {
		return replicate.PromoteResult{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Role = replicate.Primary
	return f.PromoteResult, nil
}

func (f *Volume) Demote(ctx context.Context) error {
	if err := f.call("demote"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Role = replicate.Secondary
	return nil
}

func (f *Volume) Connect(ctx context.Context) error    { return f.call("connect") }
func (f *Volume) Disconnect(ctx context.Context) error { return f.call("disconnect") }
func (f *Volume) PeerFenced(ctx context.Context) error { return f.call("peer-fenced") }
func (f *Volume) Outdate(ctx context.Context) error    { return f.call("outdate") }
func (f *Volume) PauseSync(ctx context.Context) error  { return f.call("pause-sync") }

// Tune records the settings it was given (Tuned).
func (f *Volume) Tune(t replicate.Tunables) error {
	if err := f.call("tune"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tuned = append(f.tuned, t)
	return nil
}

// SetLink records the settings it was given (Links); changed is always
// true.
func (f *Volume) SetLink(ctx context.Context, s replicate.LinkSettings) (bool, error) {
	if err := f.call("set-link"); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.links = append(f.links, s)
	f.Cfg.Protocol, f.Cfg.Compression, f.Cfg.TLS = s.Protocol, s.Compression, s.TLS
	return true, nil
}

// AttachCheck refuses as replicate does when the disk has not failed.
func (f *Volume) AttachCheck() error {
	if err := f.call("attach-check"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Disk != replicate.Failed && f.Disk != replicate.Diskless {
		return fmt.Errorf("fake: %w", replicate.ErrDiskAttached)
	}
	return nil
}

// Resize records the call; the memory device keeps its size.
func (f *Volume) Resize(ctx context.Context, size int64, opts replicate.ResizeOptions) error {
	return f.call("resize")
}

// Attach takes the new disk as Inconsistent.
func (f *Volume) Attach(ctx context.Context, data nbd.Device, meta disk.Disk) error {
	if err := f.call("attach"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Disk = replicate.Inconsistent
	return nil
}

func (f *Volume) ResumeSync(ctx context.Context) error { return f.call("resume-sync") }
func (f *Volume) Resync(ctx context.Context, full bool) error {
	if full {
		return f.call("resync-full")
	}
	return f.call("resync")
}

func (f *Volume) Verify(ctx context.Context, repair bool) (replicate.VerifyReport, error) {
	op := "verify"
	if repair {
		op = "verify-repair"
	}
	if err := f.call(op); err != nil {
		return replicate.VerifyReport{}, err
	}
	return f.Report, nil
}

func (f *Volume) Resolve(ctx context.Context, discard bool) error { return f.call("resolve") }

func (f *Volume) Close(ctx context.Context) error {
	if err := f.call("close"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// Calls lists the operations asked of the volume, in order.
func (f *Volume) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// Fakes opens fake volumes and keeps them by resource.
type Fakes struct {
	mu   sync.Mutex
	vols map[string]*Volume
	Err  error // returned by Open
}

// Open opens a fake volume for cfg.
func (fs *Fakes) Open(ctx context.Context, cfg replicate.Config) (*Volume, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.Err != nil {
		return nil, fs.Err
	}
	if fs.vols == nil {
		fs.vols = map[string]*Volume{}
	}
	v := newVolume(cfg)
	fs.vols[cfg.Resource] = v
	return v, nil
}

// Len is the number of volumes opened.
func (fs *Fakes) Len() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.vols)
}

// Get returns the volume of a resource (nil if none was opened).
func (fs *Fakes) Get(name string) *Volume {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.vols[name]
}

// Refuse makes op ("promote", "promote-force", "demote", "verify", ...)
// fail with err from now on (nil: succeed again).
func (f *Volume) Refuse(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.refuse, op)
		return
	}
	f.refuse[op] = err
}

// Set changes the volume under its lock.
func (f *Volume) Set(fn func(f *Volume)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}
