package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
)

const waitLong = `Wait until a resource on this node reaches a state, as DRBD's
wait-connect and wait-sync do for scripts: start the daemons, wait for
the link, promote; resync, wait until it ends, switch over.

--for is one of:

  up          the resource is open (its metadata and devices are in place)
  connected   the link to the peer is up (Connected, SyncSource,
              SyncTarget, VerifySource or VerifyTarget)
  in-sync     Connected, both disks UpToDate, nothing out of sync and no
              resync running: the peer holds a full copy
  primary     this node is Primary
  secondary   this node is Secondary

Exit status 0 once the state is reached (it prints the state), 2 when
--timeout passes first (it prints what the resource is doing), 1 when the
state cannot come by itself: the link is StandAlone on a node without the
cluster layer (after tandem disconnect, a split brain or a refused peer:
nothing reconnects it but tandem connect or tandem resolve), and on any
other error.`

// waitConds are the states `tandem wait --for` knows, in help order.
var waitConds = []string{"up", "connected", "in-sync", "primary", "secondary"}

// waitPoll is how often the daemon is asked.
const waitPoll = 100 * time.Millisecond

func newWaitCmd(a *app) *cobra.Command {
	var f adminFlags
	var cond string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait RESOURCE --for up|connected|in-sync|primary|secondary [--timeout D]",
		Short: "Wait until a resource is connected, in sync, primary...",
		Long:  waitLong,
		Example: "  tandem wait r0 --for connected --timeout 30s && tandem promote r0\n" +
			"  tandem resync r0 && tandem wait r0 --for in-sync --timeout 2h",
		Args: oneResource,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !slices.Contains(waitConds, cond) {
				return fmt.Errorf("wait: --for %q: want one of %s", cond, strings.Join(waitConds, ", "))
			}
			if timeout <= 0 {
				return fmt.Errorf("wait: --timeout %v: want a positive duration (e.g. 30s, 2h)", timeout)
			}
			c, err := f.client(cmd, "wait")
			if err != nil {
				return err
			}
			res := args[0]
			start := time.Now()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			rs, err := waitFor(ctx, c, res, cond)
			switch {
			case errors.Is(err, context.DeadlineExceeded) && cmd.Context().Err() == nil:
				msg := fmt.Sprintf("wait %s: %s not reached within %v; now %s", res, cond, timeout, describeState(rs))
				if f.asJSON {
					_ = printJSON(a.stdout, rs)
				}
				return &exitStatus{Code: 2, Msg: msg}
			case err != nil:
				var ae *daemon.APIError
				if errors.As(err, &ae) {
					return adminError(a, &f, "wait", res, err)
				}
				if f.asJSON && rs.Resource != "" {
					_ = printJSON(a.stdout, rs)
				}
				return fmt.Errorf("wait %s: %w", res, err)
			}
			if f.asJSON {
				return printJSON(a.stdout, rs)
			}
			fmt.Fprintf(a.stdout, "%s: %s after %v: %s\n", res, cond, time.Since(start).Round(time.Millisecond), describeState(rs))
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&cond, "for", "in-sync", "the state to wait for: "+strings.Join(waitConds, ", "))
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "give up (exit status 2) after this long")
	return cmd
}

// errWillNotHappen: the resource is in a state it does not leave by
// itself, so waiting longer cannot help.
var errWillNotHappen = errors.New("it will not happen by itself")

// waitFor asks the daemon until res is in state cond, ctx ends
// (returning the last status seen with ctx's error), or the state cannot
// come (errWillNotHappen).
func waitFor(ctx context.Context, c *daemon.Client, res, cond string) (daemon.ResourceStatus, error) {
	var last daemon.ResourceStatus
	t := time.NewTicker(waitPoll)
	defer t.Stop()
	for {
		ns, err := c.Status(ctx, res)
		switch {
		case err == nil && len(ns.Resources) == 1:
			last = ns.Resources[0]
			ok, why := waitReached(last, cond, ns.ClusterLayer != nil)
			if ok {
				return last, nil
			}
			if why != "" {
				return last, fmt.Errorf("%w: %s", errWillNotHappen, why)
			}
		case err == nil:
			return last, fmt.Errorf("the daemon reported %d resources for %s", len(ns.Resources), res)
		case ctx.Err() != nil:
			return last, ctx.Err()
		default:
			var ae *daemon.APIError
			if errors.As(err, &ae) {
				return last, err // unknown resource and the like: asking again will not change it
			}
			// The daemon may be starting or restarting: ask again.
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-t.C:
		}
	}
}

// waitReached says whether rs is in state cond, or (why) why it cannot get
// there by itself. With the cluster layer a StandAlone link may still be
// reconnected by the node manager, so only a node without it gives up.
func waitReached(rs daemon.ResourceStatus, cond string, clusterLayer bool) (ok bool, why string) {
	linked := rs.Up && slices.Contains([]replicate.ConnState{replicate.Connected, replicate.SyncSource, replicate.SyncTarget,
		replicate.VerifySource, replicate.VerifyTarget}, rs.Conn)
	switch cond {
	case "up":
		return rs.Up, ""
	case "connected":
		ok = linked
	case "in-sync":
		ok = rs.Up && rs.Conn == replicate.Connected && rs.Disk == replicate.UpToDate && rs.PeerDisk == replicate.UpToDate &&
			rs.OutOfSync == 0 && rs.Resync == nil
	case "primary":
		return rs.Up && rs.Role == replicate.Primary, ""
	case "secondary":
		return rs.Up && rs.Role == replicate.Secondary, ""
	}
	if ok || clusterLayer || !rs.Up || rs.Conn != replicate.StandAlone {
		return ok, ""
	}
	why = rs.Resource + " is StandAlone"
	if rs.Reason != "" {
		why += " (" + rs.Reason + ")"
	}
	return false, why + "; tandem connect " + rs.Resource + " (or tandem resolve after a split brain) starts it connecting"
}

// describeState is one line of what a resource is doing.
func describeState(rs daemon.ResourceStatus) string {
	if rs.Resource == "" {
		return "no answer from the daemon"
	}
	if !rs.Up {
		return "down: " + rs.Error
	}
	s := fmt.Sprintf("%s %s, %s, peer %s %s/%s, %s out of sync", rs.Role, rs.Disk, rs.Conn, rs.Peer, rs.PeerRole, rs.PeerDisk, humanBytes(rs.OutOfSync))
	if p := rs.Resync; p != nil {
		s += ", resync " + progress(p)
	}
	if rs.Reason != "" {
		s += ", reason: " + rs.Reason
	}
	return s
}
