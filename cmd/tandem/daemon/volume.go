package daemon

import (
	"context"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/replicate"
	"github.com/tandem-ha/tandem/replicate/disk"
)

// Volume is what the daemon needs of a replicated volume: the methods of
// *replicate.Volume (see replicate/api.go), so a fake can stand in for it.
type Volume interface {
	nbd.Device
	Status() replicate.Status
	Promote(ctx context.Context, force bool) (replicate.PromoteResult, error)
	Demote(ctx context.Context) error
	Connect(ctx context.Context) error
	Disconnect(ctx context.Context) error
	Resync(ctx context.Context, full bool) error
	PauseSync(ctx context.Context) error
	ResumeSync(ctx context.Context) error
	Tune(t replicate.Tunables) error
	SetLink(ctx context.Context, s replicate.LinkSettings) (bool, error)
	Verify(ctx context.Context, repair bool) (replicate.VerifyReport, error)
	Resolve(ctx context.Context, discardMyData bool) error
	PeerFenced(ctx context.Context) error
	Outdate(ctx context.Context) error
	// AttachCheck and Attach replace a failed disk (attachdisk.go).
	AttachCheck() error
	Resize(ctx context.Context, size int64, opts replicate.ResizeOptions) error
	Attach(ctx context.Context, data nbd.Device, meta disk.Disk) error
	Close(ctx context.Context) error
}

// OpenFunc opens a volume; the binary passes a wrapper of replicate.Open.
type OpenFunc func(ctx context.Context, cfg replicate.Config) (Volume, error)
