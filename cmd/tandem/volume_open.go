package main

import (
	"context"
	"errors"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
)

// openVolume is where the daemon gets its replicated volumes.
func openVolume(ctx context.Context, cfg replicate.Config) (daemon.Volume, error) {
	return nil, errors.New("the replicated volume (replicate.Open) is not in this build yet")
}
