package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/tandem-ha/tandem/replicate"
)

// One resource is taken down and brought up again without the rest of
// the node (DRBD's drbdadm down / up): to replace its disk, recreate its
// metadata or bring up one that did not open at start, while the node's
// other resources, primaries among them, go on.

// ErrTakenDown is why a resource an admin took down stays down.
var ErrTakenDown = errors.New("taken down by an admin (tandem up brings it back)")

// up opens a resource that is down. Already up: nothing to do.
func (d *Daemon) up(ctx context.Context, r *resource) error {
	r.roleMu.Lock()
	defer r.roleMu.Unlock()
	if d.isStopping() {
		return ErrShuttingDown
	}
	if r.removed {
		return fmt.Errorf("%w %q: removed from the configuration by tandem adjust", ErrUnknownResource, r.cfg.Name)
	}
	if r.volume() != nil {
		return nil
	}
	if err := d.openResource(ctx, r); err != nil {
		return fmt.Errorf("%s: %w: %w", r.cfg.Name, ErrResourceDown, err)
	}
	d.events.publish(Event{Kind: KindVolume, Resource: r.cfg.Name, Text: "resource up (tandem up)"})
	return nil
}

// down closes a resource's volume (flushed, metadata clean) and releases
// its devices. Refused on the Primary: demote it first, or its clients
// lose their device. Already down: nothing to do.
func (d *Daemon) down(ctx context.Context, r *resource) error {
	r.roleMu.Lock()
	defer r.roleMu.Unlock()
	v := r.volume()
	if v == nil {
		return nil
	}
	if st := v.Status(); st.Role == replicate.Primary {
		return fmt.Errorf("%s: down: %w: demote it first (its NBD clients would lose their device)", r.cfg.Name, replicate.ErrIsPrimary)
	}
	if err := d.closeResource(ctx, r, ErrTakenDown); err != nil {
		return err
	}
	d.events.publish(Event{Kind: KindVolume, Resource: r.cfg.Name, Text: "resource down (tandem down): devices released"})
	return nil
}

// closeResource takes the volume out of the gate, the cluster layer's
// view and status first (they see the resource down from then on), then
// closes it and its storage; why is what status says from then on. Called
// with roleMu held.
func (d *Daemon) closeResource(ctx context.Context, r *resource, why error) error {
	r.mu.Lock()
	v, s := r.vol, r.storage
	r.vol, r.storage, r.downErr = nil, nil, why
	r.mu.Unlock()
	r.gate.setVolume(nil)
	var errs []error
	if v != nil {
		if err := v.Close(ctx); err != nil {
			d.log.Error("closing volume", "resource", r.cfg.Name, "err", err)
			errs = append(errs, fmt.Errorf("resource %s: %w", r.cfg.Name, err))
		} else {
			d.log.Info("resource closed", "resource", r.cfg.Name)
		}
	}
	if s != nil {
		if err := s.Close(); err != nil {
			errs = append(errs, fmt.Errorf("resource %s: %w", r.cfg.Name, err))
		}
	}
	return errors.Join(errs...)
}

// upVolume is the volume, or ErrResourceDown with the reason.
func (r *resource) upVolume() (Volume, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.vol == nil {
		return nil, fmt.Errorf("%s: %w: %v", r.cfg.Name, ErrResourceDown, r.downErr)
	}
	return r.vol, nil
}

func (d *Daemon) isStopping() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stopping
}
