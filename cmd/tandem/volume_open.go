package main

import (
	"context"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
)

// openVolume is where the daemon gets its replicated volumes.
func openVolume(ctx context.Context, cfg replicate.Config) (daemon.Volume, error) {
	v, err := replicate.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return v, nil
}
