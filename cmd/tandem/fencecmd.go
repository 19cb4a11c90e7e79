package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/fence"
)

const fenceLong = `Fence (STONITH) a node by hand, through the levels configured for it
(nodes[].fencing in the configuration file): each level is tried in order
until one confirms; every attempt is printed with its result, duration and
error. "off" succeeds only when a device reports the node off.

  tandem fence status NODE    power state, from the first level that answers
  tandem fence test NODE      ask every level for the status: checks addresses,
                              credentials and agents without touching power
  tandem fence off NODE       switch off, confirmed
  tandem fence on NODE        switch on
  tandem fence reboot NODE    confirmed off, then on
  tandem fence confirm NODE   record that you have checked NODE is off, for
                              when no device can (read its help first)

These run here, with this host's password files and agents. The exit
status is 1 when the action failed; "status" exits 0 for a node that is
on and 2 for one that is off, as fence-agents do. See docs/operations.md.`

// fenceFlags are the flags every fence subcommand shares.
type fenceFlags struct {
	node   string
	asJSON bool
	since  string
}

func newFenceCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fence",
		Short: "Fence a node by hand: status, test, off, on, reboot, confirm",
		Long:  fenceLong,
		Args:  cobra.NoArgs,
	}
	for _, c := range []struct {
		action      fence.Action
		test        bool
		short, long string
	}{
		{fence.ActionStatus, false, "Show a node's power state", "Ask the node's fencing levels, in order, for its power state; the first that\nanswers gives it. Nothing is switched."},
		{fence.ActionStatus, true, "Check every fencing level of a node without switching anything", "Ask every fencing level of the node for its power state, to check that\neach device is reachable and accepts this host's credentials, and that\neach agent runs. Nothing is switched. The exit status is 1 if any level\nthat has a device does not answer; a manual level has nothing to check."},
		{fence.ActionOff, false, "Switch a node off, confirmed", "Switch the node off through its first level that confirms it is off.\nA manual level counts only a confirmation (tandem fence confirm) given\nafter this command started, or after --since."},
		{fence.ActionOn, false, "Switch a node on", "Switch the node on through the first level that manages to."},
		{fence.ActionReboot, false, "Switch a node off (confirmed) and on again", "Switch the node off through the first level that confirms it, then on\nagain through the same level. The reboot counts as done once off is\nconfirmed, as with fence-agents; a failed power-on is shown as a note."},
	} {
		cmd.AddCommand(newFenceActionCmd(a, c.action, c.test, c.short, c.long))
	}
	cmd.AddCommand(newFenceConfirmCmd(a))
	return cmd
}

func newFenceActionCmd(a *app, action fence.Action, test bool, short, long string) *cobra.Command {
	var f fenceFlags
	use := string(action)
	if test {
		use = "test"
	}
	cmd := &cobra.Command{
		Use:     use + " NODE",
		Short:   short,
		Long:    long,
		Example: fmt.Sprintf("  tandem fence %s beta\n  tandem --config ./lab.yaml fence %s beta --node alpha --json", use, use),
		Args:    exactlyOneNode,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFence(cmd.Context(), a, configPath(cmd), args[0], action, test, f)
		},
	}
	addFenceFlags(cmd, &f)
	if action == fence.ActionOff || action == fence.ActionReboot {
		cmd.Flags().StringVar(&f.since, "since", "", "count manual confirmations given after this time: a duration ago (15m) or an RFC 3339 time (default: when this command started)")
	}
	return cmd
}

func addFenceFlags(cmd *cobra.Command, f *fenceFlags) {
	cmd.Flags().StringVar(&f.node, "node", "", "the node this command runs on, whose data-dir holds the confirmations (default: the node named like this host)")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the result as JSON")
}

func exactlyOneNode(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s: want one NODE (the node to act on), got %d arguments", cmd.CommandPath(), len(args))
	}
	return nil
}

// loadForFence reads the file (its own rules only: a problem elsewhere on
// this host, a missing device, must not stop a fencing) and finds the
// target and, if it can, the local node.
func loadForFence(a *app, path, target, localFlag, what string) (*config.Config, *config.Node, error) {
	cfg, err := config.Load(path)
	if err != nil {
		if ps := config.Problems(err); len(ps) > 0 {
			for _, p := range ps {
				fmt.Fprintln(a.stderr, p)
			}
			return nil, nil, fmt.Errorf("%s: %s in %s (see tandem config validate)", what, plural(len(ps), "problem"), path)
		}
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	if _, err := cfg.Node(target); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	local, err := cfg.LocalNode(localFlag)
	switch {
	case err == nil:
	case localFlag == "" && errors.Is(err, config.ErrUnknownNode):
		local = nil // not a node: fine unless a manual level needs the data-dir
	default:
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	return cfg, local, nil
}

func runFence(ctx context.Context, a *app, path, target string, action fence.Action, test bool, f fenceFlags) error {
	what := "fence " + string(action) + " " + target
	if test {
		what = "fence test " + target
	}
	req := fence.Request{}
	if f.since != "" {
		t, err := parseSince(f.since, time.Now())
		if err != nil {
			return fmt.Errorf("%s: --since: %w", what, err)
		}
		req.Since = t
	}
	cfg, local, err := loadForFence(a, path, target, f.node, what)
	if err != nil {
		return err
	}
	var store *fence.Store
	if local != nil {
		store = confirmStore(local)
	}
	fencer, err := fencerFor(cfg, target, store, a.log)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	var res *fence.Result
	switch {
	case test:
		res, err = fencer.Test(ctx)
	case action == fence.ActionStatus:
		res, err = fencer.Status(ctx)
	case action == fence.ActionOff:
		res, err = fencer.Off(ctx, req)
	case action == fence.ActionOn:
		res, err = fencer.On(ctx)
	case action == fence.ActionReboot:
		res, err = fencer.Reboot(ctx, req)
	}
	if local != nil && !test && action != fence.ActionStatus {
		auditFence(ctx, a, local, target, action, res, err)
	}
	if perr := printFenceResult(a, res, test, f.asJSON); perr != nil {
		return fmt.Errorf("%s: %w", what, perr)
	}
	if err != nil {
		if f.asJSON {
			return fmt.Errorf("%s: failed (see the JSON result)", what)
		}
		if test {
			return fmt.Errorf("%s: a level did not answer (see above)", what)
		}
		return fmt.Errorf("%s: every level failed (see above)", what)
	}
	if action == fence.ActionStatus && !test && res != nil && res.State == fence.StateOff {
		return &exitStatus{Code: 2} // fence-agents' "off"; the result is printed
	}
	if local != nil && (action == fence.ActionOff || action == fence.ActionReboot) && !test {
		tellPeerFenced(ctx, a, cfg, local, target)
	}
	return nil
}

// tellPeerFenced tells the local daemon that target is confirmed off, for
// each resource the two share: the daemon ends the replication session to
// the dead node at once instead of at its ping timeout, so that a
// promotion right after the fence does not still see target Primary. A
// daemon that is not running has no session to end; that is not an error.
func tellPeerFenced(ctx context.Context, a *app, cfg *config.Config, local *config.Node, target string) {
	c := daemon.NewClient(local.AdminSocket, local.Name)
	for _, r := range cfg.Resources {
		var here, there bool
		for _, rp := range r.Replicas {
			here = here || rp.Node == local.Name
			there = there || rp.Node == target
		}
		if !here || !there {
			continue
		}
		if err := c.PeerFenced(ctx, r.Name); err != nil && !errors.Is(err, daemon.ErrNotRunning) {
			a.log.Warn("the local daemon was not told that the peer is off; its replication session ends at the ping timeout", "resource", r.Name, "peer", target, "err", err)
		}
	}
}

// auditFence hands a power change run by hand to the local daemon's audit
// log and event stream, where the cluster layer's own fencing is recorded
// too. With the daemon down there is nobody to tell; the command's output
// is then the only record, which a warning says.
func auditFence(ctx context.Context, a *app, local *config.Node, target string, action fence.Action, res *fence.Result, ferr error) {
	req := daemon.FenceLogRequest{Node: target, Action: string(action)}
	if res != nil {
		if b, err := json.Marshal(res); err == nil {
			req.Result = b
		}
	}
	if ferr != nil {
		req.Error = ferr.Error()
	}
	if err := daemon.NewClient(local.AdminSocket, local.Name).FenceLog(ctx, req); err != nil {
		a.log.Warn("this fencing action is not in the audit log: the local daemon could not be told", "node", target, "action", action, "err", err)
	}
}

// parseSince reads --since: a duration before now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: want a positive duration (how long ago)", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a duration (15m) nor an RFC 3339 time (2026-12-01T18:00:00Z)", s)
	}
	if t.After(now) {
		return time.Time{}, fmt.Errorf("%s is in the future", s)
	}
	return t, nil
}

func printFenceResult(a *app, res *fence.Result, test, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	switch {
	case test && res.OK:
		fmt.Fprintf(a.stdout, "%s: every level answers; power %s\n", res.Node, res.State)
	case test:
		fmt.Fprintf(a.stdout, "%s: not every level answers\n", res.Node)
	case !res.OK:
		fmt.Fprintf(a.stdout, "%s: %s FAILED: no level succeeded\n", res.Node, res.Action)
	case res.Action == fence.ActionStatus:
		fmt.Fprintf(a.stdout, "%s: power %s (level %d, %s)\n", res.Node, res.State, res.Level, res.Method)
	case res.Action == fence.ActionOn:
		fmt.Fprintf(a.stdout, "%s: on (level %d, %s, %.2fs)\n", res.Node, res.Level, res.Method, res.Duration.Seconds())
	default:
		fmt.Fprintf(a.stdout, "%s: %s done, off confirmed by level %d (%s) in %.2fs\n", res.Node, res.Action, res.Level, res.Method, res.Duration.Seconds())
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LEVEL\tMETHOD\tRESULT\tSTATE\tTIME\tDETAIL")
	for _, at := range res.Attempts {
		result, state, detail := "ok", at.State.String(), at.Note
		if !at.OK {
			result, detail = "failed", at.Error
		}
		if at.Action != fence.ActionStatus && !at.OK {
			state = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.2fs\t%s\n", at.Level, at.Method, result, state, at.Duration.Seconds(), detail)
	}
	return tw.Flush()
}

const fenceConfirmLong = `Record that you have verified, yourself, that NODE is powered off: the way
out when no fencing device can confirm it (the BMC is dead, the PDU is
unreachable), so that the cluster may take over NODE's resources.

THIS IS A PROMISE ONLY YOU CAN KEEP. If NODE is in fact still running and
still writing, the cluster will promote the other side and both will write
to the same data: split brain, with writes lost or mixed. Check the power,
not the network: a node that does not answer on the network may be alive
(a cut link, a hung NIC). Pull the power cords, switch the PDU outlet or
the hypervisor's VM off, look at the power LED; then confirm.

The confirmation is written durably to the fence directory in the local
node's data-dir, with the time, your login name and this host. It counts
only for fencing requests made before it: a confirmation given today
cannot stand for a failure of tomorrow. With the cluster layer it is
also committed to the authority log, which unblocks a failover waiting
for NODE whatever fencing levels NODE has (an IPMI level alone is
enough). Without it, only a manual level (nodes[].fencing[].type: manual)
reads the record: a fencing waiting on one goes on as soon as it appears;
'tandem fence off NODE --since 15m' uses a recent one.

Without --yes, the command asks you to type the node's name.`

func newFenceConfirmCmd(a *app) *cobra.Command {
	var f fenceFlags
	var yes bool
	cmd := &cobra.Command{
		Use:     "confirm NODE",
		Short:   "Record that you have checked a node is off (when no device can)",
		Long:    fenceConfirmLong,
		Example: "  tandem fence confirm beta\n  tandem fence confirm beta --yes --node alpha",
		Args:    exactlyOneNode,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFenceConfirm(a, cmd, configPath(cmd), args[0], yes, f)
		},
	}
	addFenceFlags(cmd, &f)
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask: you have checked that NODE is off")
	return cmd
}

func runFenceConfirm(a *app, cmd *cobra.Command, path, target string, yes bool, f fenceFlags) error {
	what := "fence confirm " + target
	cfg, local, err := loadForFence(a, path, target, f.node, what)
	if err != nil {
		return err
	}
	if local == nil {
		return fmt.Errorf("%s: this host is not a node of the configuration, so there is no data-dir to record in: pass --node NAME (the node this runs on)", what)
	}
	if local.Name == target {
		return fmt.Errorf("%s: %s is the node this command runs on: confirm from another node that %s is off", what, target, target)
	}
	fmt.Fprintf(a.stderr, `WARNING: you are confirming that %[1]s is powered OFF.
  The cluster will then act as if %[1]s were fenced: it may promote the other
  side of %[1]s's resources. If %[1]s is still running, both sides write to the
  same data (split brain): writes are lost or mixed. Check the power (cords,
  PDU, hypervisor, power LED), not the network.
`, target)
	if !yes {
		fmt.Fprintf(a.stderr, "Type %s to confirm that it is off: ", target)
		line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
		if strings.TrimSpace(line) != target {
			if err != nil && strings.TrimSpace(line) == "" {
				return fmt.Errorf("%s: not confirmed: no answer on stdin (pass --yes in scripts)", what)
			}
			return fmt.Errorf("%s: not confirmed: the answer was not %q; nothing recorded", what, target)
		}
	}
	by := os.Getenv("SUDO_USER")
	if by == "" {
		if u, err := user.Current(); err == nil {
			by = u.Username
		}
	}
	host, _ := os.Hostname()
	store := confirmStore(local)
	c, err := store.Confirm(target, by, host)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	a.log.Warn("fencing confirmed by hand", "node", target, "by", by, "host", host, "at", c.At, "dir", store.Dir())
	if !cfg.ClusterLayer() && !hasManualLevel(cfg, target) {
		// Only a manual level reads the record without the cluster layer:
		// say so rather than let the operator wait for an effect.
		fmt.Fprintf(a.stderr, "note: %[1]s has no manual fencing level (nodes[].fencing type: manual) and the cluster layer is off, so nothing acts on this record: 'tandem fence off %[1]s' still tries only its devices; with manual roles, promoting the other side is your step (tandem promote)\n", target)
	}
	if cfg.ClusterLayer() {
		// The cluster layer records it in the authority log (method
		// "manual"), which unblocks a failover waiting for this node.
		reply, err := daemon.NewClient(local.AdminSocket, local.Name).Cluster(cmd.Context(), "fence-confirm", daemon.ClusterRequest{Node: target})
		if err != nil {
			return fmt.Errorf("%s: recorded locally in %s, but the cluster layer refused it: %w", what, store.Dir(), err)
		}
		if !f.asJSON {
			fmt.Fprintln(a.stdout, reply.Text)
		}
	}
	if f.asJSON {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(c)
	}
	fmt.Fprintf(a.stdout, "confirmed: %s is off, by %s on %s at %s (recorded in %s)\n", target, by, host, c.At.Format(time.RFC3339), store.Dir())
	return nil
}

// hasManualLevel reports whether node target's fencing has a manual level,
// the one kind that reads the confirmations of tandem fence confirm.
func hasManualLevel(cfg *config.Config, target string) bool {
	n, err := cfg.Node(target)
	if err != nil {
		return false
	}
	for _, l := range n.Fencing {
		if l.Type == config.FenceManual {
			return true
		}
	}
	return false
}
