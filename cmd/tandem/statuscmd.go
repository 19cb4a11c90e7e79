package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
)

const statusLong = `Show the state of this node's resources, as its daemon sees them: role,
disk state, replication link, the peer's role and disk, epoch, data out of
sync, resync and verify progress, and whether the NBD export serves; a
warning for each alert program that failed (its last failure).

Without RESOURCE a table of all of them; with RESOURCE also the details
(generations, the reason of a StandAlone link, the NBD listener). --json
prints the daemon's reply; its keys are stable and documented in
docs/operations.md.`

func newStatusCmd(a *app) *cobra.Command {
	var f adminFlags
	var verbose bool
	cmd := &cobra.Command{
		Use:     "status [RESOURCE] [--json]",
		Short:   "Show the resources of this node",
		Long:    statusLong,
		Example: "  tandem status\n  tandem status r0\n  tandem status --json | jq '.resources[] | {resource, role, disk, connection}'",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client(cmd, "status")
			if err != nil {
				return err
			}
			res := ""
			if len(args) == 1 {
				res = args[0]
			}
			ns, err := c.Status(cmd.Context(), res)
			if err != nil {
				return adminError(a, &f, "status", res, err)
			}
			if f.asJSON {
				return printJSON(a.stdout, ns)
			}
			printStatus(a.stdout, ns, verbose || res != "")
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "show the details of every resource")
	return cmd
}

func printStatus(w io.Writer, ns daemon.NodeStatus, details bool) {
	kind := "data node"
	if ns.Witness {
		kind = "witness: no replicas here"
	}
	fmt.Fprintf(w, "node %s of cluster %s (%s), daemon pid %d, version %s\n", ns.Node, ns.Cluster, kind, ns.PID, ns.Version)
	for _, s := range daemon.Disagreements(ns.Node, ns.Nodes) {
		fmt.Fprintf(w, "WARNING: %s\n", s)
	}
	printAlerts(w, ns.Alerts, details)
	printClusterLayer(w, ns.ClusterLayer) // clustercmd.go
	printAuthority(w, ns.Authority)
	if ns.ClusterLayer != nil {
		printSoftStates(w, ns)
	}
	if len(ns.Resources) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tROLE\tDISK\tCONNECTION\tPEER\tEPOCH\tOUT-OF-SYNC\tNBD")
	for _, rs := range ns.Resources {
		nbd := "refusing"
		if rs.NBDServing {
			nbd = "serving"
		}
		if !rs.Up {
			nbd = "down"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s %s/%s\t%d\t%s\t%s\n", rs.Resource, rs.Role, rs.Disk, rs.Conn,
			rs.Peer, rs.PeerRole, rs.PeerDisk, rs.Epoch, humanBytes(rs.OutOfSync), nbd)
	}
	tw.Flush()
	for _, rs := range ns.Resources {
		var lines []string
		if !rs.Up {
			lines = append(lines, "DOWN: "+rs.Error)
		} else if rs.Reason != "" {
			lines = append(lines, "reason: "+rs.Reason)
		}
		if p := rs.Resync; p != nil {
			lines = append(lines, "resync: "+progress(p))
		}
		if rs.SyncPaused {
			lines = append(lines, fmt.Sprintf("resyncs from here PAUSED by the administrator (tandem resume-sync %s)", rs.Resource))
		}
		if p := rs.Verify; p != nil {
			lines = append(lines, "verify: "+progress(p))
		}
		if rs.SuspendedIO {
			lines = append(lines, "I/O suspended")
		}
		if details && rs.LastResync != nil {
			lines = append(lines, "last resync: "+progress(rs.LastResync))
		}
		if details {
			g := rs.Generations
			lines = append(lines,
				fmt.Sprintf("generations: current %#016x, bitmap %#016x, history %s", g.Current, g.Bitmap, hexList(g.History[:])),
				fmt.Sprintf("protocol %s, size %s, nbd %s", rs.Protocol, humanBytes(rs.Size), rs.NBDListen),
				fmt.Sprintf("application I/O here since it opened: %s read, %s written", humanBytes(rs.ReadBytes), humanBytes(rs.WrittenBytes)))
		}
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s:\n", rs.Resource)
		for _, l := range lines {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
}

// printAlerts warns of alert programs that failed (a failing alert is
// what would have told someone of the next split brain); with details it
// lists every alert's record.
func printAlerts(w io.Writer, as []daemon.AlertStatus, details bool) {
	for _, a := range as {
		name := a.Path
		if a.Recipient != "" {
			name += " for " + a.Recipient
		}
		if f := a.LastFailure; f != nil {
			fmt.Fprintf(w, "WARNING: alert %s: %d of %d runs failed, the last at %s (%s event %d): %s\n",
				name, a.Failures, a.Runs, f.Time.UTC().Format(time.RFC3339), f.Kind, f.Seq, f.Error)
		}
		if details {
			line := fmt.Sprintf("alert %s: %d runs, %d failed", name, a.Runs, a.Failures)
			if a.LostEvents > 0 {
				line += fmt.Sprintf(", %d events lost (it fell behind)", a.LostEvents)
			}
			fmt.Fprintln(w, line)
		}
	}
}

func progress(p *replicate.Progress) string {
	kind := "bitmap"
	if p.Full {
		kind = "full"
	}
	if p.Checksum {
		kind += ", checksum"
	}
	if p.Paused {
		kind += ", PAUSED"
	}
	return fmt.Sprintf("%.1f%% (%s of %s, %s left, %s sent, %s/s, ETA %.0fs; %s)", p.Percent,
		humanBytes(p.DoneBytes), humanBytes(p.TotalBytes), humanBytes(p.LeftBytes), humanBytes(p.SentBytes),
		humanBytes(int64(p.Rate)), p.ETASeconds, kind)
}

// humanBytes prints a byte count with a binary unit: 0 B, 4 KiB, 1.5 GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, u := float64(n), 0
	for v >= unit && u < 5 {
		v /= unit
		u++
	}
	s := fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[u-1])
	if v == float64(int64(v)) {
		s = fmt.Sprintf("%d %ciB", int64(v), "KMGTPE"[u-1])
	}
	return s
}

// printSoftStates shows what the other nodes gossiped about themselves:
// their version and their replicas (a view that may lag a gossip round).
func printSoftStates(w io.Writer, ns daemon.NodeStatus) {
	var others []string
	for _, n := range slices.Sorted(maps.Keys(ns.Nodes)) {
		if n != ns.Node {
			others = append(others, n)
		}
	}
	if len(others) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE (GOSSIP)\tVERSION\tREPLICAS")
	for _, n := range others {
		s := ns.Nodes[n]
		var reps []string
		for _, r := range s.Resources {
			t := fmt.Sprintf("%s %s/%s/%s", r.Name, r.Role, r.Disk, r.Conn)
			if r.Sync != nil {
				t += fmt.Sprintf(" %d%%", *r.Sync)
			}
			reps = append(reps, t)
		}
		if s.More > 0 {
			reps = append(reps, fmt.Sprintf("and %d more", s.More))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", n, s.Version, orDash(strings.Join(reps, ", ")))
	}
	tw.Flush()
}
