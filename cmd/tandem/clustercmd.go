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

	"github.com/tandem-ha/tandem/cluster/authority"
	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
)

// The cluster layer's admin commands: they go to any node's daemon, which
// commits them to the authority log; the machines of the nodes concerned
// carry them out.

const switchoverLong = `Move a resource to the other replica, cleanly: the primary holds I/O,
waits until the peer is in sync, demotes and releases the VIP; then the
peer promotes at the next epoch and claims the VIP. Nobody is fenced. It
is cancelled (and the primary resumes) if the peer is not connected and
UpToDate, or does not get in sync within the switchover timeout.

Needs the cluster layer (gossip and authority addresses in the
configuration). Failback after a failover is this command, unless the
resource has automatic failback.`

const standbyLong = `Put a data node in standby: it runs no resource as primary. Each
resource it is primary of is switched over to its peer first (as with
switchover); unstandby lets it take resources again (it takes nothing
back by itself unless failback is automatic). Needs the cluster layer.`

const transferLong = `Hand the authority log's leadership from the node that leads it to
another voter (raft's leadership transfer), for maintenance: before
restarting the leader, or to put the leadership on the witness, which
reaches both data nodes. Run it on the leader (tandem status shows it
on the "authority log" line; --node picks the daemon); elsewhere it is
refused and names the leader. Nothing fails over: the log only changes
who orders its entries. Needs the cluster layer.`

func clusterCommands(a *app) []*cobra.Command {
	var to string
	switchover := clusterCmd(a, "switchover RESOURCE [--to NODE]", "Move a resource to its other replica without fencing", switchoverLong,
		"  tandem switchover r0\n  tandem switchover r0 --to bravo --json", "switchover", true,
		func(arg string) daemon.ClusterRequest { return daemon.ClusterRequest{Resource: arg, Node: to} })
	switchover.Flags().StringVar(&to, "to", "", "the node to move it to (default: the replica that is not primary)")
	return []*cobra.Command{
		switchover,
		clusterCmd(a, "standby NODE", "Put a data node in standby: its resources move to their peers", standbyLong,
			"  tandem standby alpha", "standby", false, func(arg string) daemon.ClusterRequest { return daemon.ClusterRequest{Node: arg} }),
		clusterCmd(a, "unstandby NODE", "Let a node in standby run resources again", standbyLong,
			"  tandem unstandby alpha", "unstandby", false, func(arg string) daemon.ClusterRequest { return daemon.ClusterRequest{Node: arg} }),
		clusterCmd(a, "transfer-leadership NODE", "Hand the authority log's leadership to another voter", transferLong,
			"  tandem transfer-leadership witness --node alpha", "transfer-leadership", false, func(arg string) daemon.ClusterRequest { return daemon.ClusterRequest{Node: arg} }),
	}
}

func clusterCmd(a *app, use, short, long, example, op string, isResource bool, req func(string) daemon.ClusterRequest) *cobra.Command {
	var f adminFlags
	cmd := &cobra.Command{
		Use: use, Short: short, Long: long, Example: example,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				what := "NODE"
				if isResource {
					what = "RESOURCE"
				}
				return fmt.Errorf("%s: want one %s, got %d arguments", cmd.Name(), what, len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			what := cmd.Name()
			c, err := f.client(cmd, what)
			if err != nil {
				return err
			}
			reply, err := c.Cluster(cmd.Context(), op, req(args[0]))
			if err != nil {
				return adminError(a, &f, what, args[0], err)
			}
			if f.asJSON {
				return printJSON(a.stdout, reply)
			}
			fmt.Fprintln(a.stdout, reply.Text)
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

// printAuthority is the authority log's line of tandem status.
func printAuthority(w io.Writer, st *authority.Status) {
	if st == nil {
		return
	}
	leader := st.Leader
	if leader == "" {
		leader = "none known"
	}
	q := ""
	if !st.Quorum {
		q = ", NO QUORUM"
	}
	fmt.Fprintf(w, "  authority log: leader %s (this node: %s%s), applied index %d\n", leader, st.State, q, st.Applied)
}

// printClusterLayer is the cluster part of tandem status.
func printClusterLayer(w io.Writer, st *manager.Status) {
	if st == nil {
		return
	}
	q := "quorum"
	if !st.Quorum {
		q = "NO QUORUM"
	}
	var members []string
	for _, n := range slices.Sorted(maps.Keys(st.Members)) {
		members = append(members, n+" "+string(st.Members[n]))
	}
	fmt.Fprintf(w, "cluster layer: %s; voters: %s (this node: %s)\n", q, strings.Join(members, ", "), st.Node)
	rec := st.Record
	if rec == nil || len(rec.Resources) == 0 {
		fmt.Fprintln(w, "  authority record: empty (no resource defined yet)")
		return
	}
	if len(rec.Standby) > 0 {
		fmt.Fprintf(w, "  standby: %s\n", strings.Join(rec.Standby, ", "))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  RESOURCE\tPRIMARY\tEPOCH\tREPLICAS\tLAST FAILOVER")
	for _, name := range slices.Sorted(maps.Keys(rec.Resources)) {
		res := rec.Resources[name]
		var reps []string
		for _, n := range slices.Sorted(maps.Keys(res.Replicas)) {
			reps = append(reps, n+" "+string(res.Replicas[n].State))
		}
		primary := res.Primary
		if primary == "" {
			primary = "-"
		}
		if res.Held {
			primary += " (held)"
		}
		last := "-"
		if lf := res.LastFailover; lf != nil {
			last = fmt.Sprintf("%s->%s epoch %d %s at %s", orDash(lf.From), lf.To, lf.Epoch, lf.How, lf.At.UTC().Format(time.RFC3339))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", name, primary, res.Epoch, strings.Join(reps, ", "), last)
	}
	tw.Flush()
	for _, f := range st.Fencing {
		how := "in progress"
		if f.LastError != "" {
			how = fmt.Sprintf("FAILING: %s", oneLine(f.LastError))
		}
		fmt.Fprintf(w, "  FENCING %s (blocks %s): attempt %d since %s, %s; once you know %s is off, `tandem fence confirm %s` unblocks it\n",
			f.Node, strings.Join(f.Resources, ", "), f.Attempts, f.Since.UTC().Format(time.RFC3339), how, f.Node, f.Node)
	}
	for _, r := range st.Resources {
		if r.Blocked != "" {
			fmt.Fprintf(w, "  %s: NO FAILOVER: %s\n", r.Resource, r.Blocked)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(st.LastFailover)) {
		f := st.LastFailover[name]
		var steps []string
		for _, s := range f.Steps {
			steps = append(steps, fmt.Sprintf("%s %.3fs", s.Name, s.Seconds))
		}
		fmt.Fprintf(w, "  last promotion here of %s: %.3fs in all (%s)\n", name, f.Seconds, strings.Join(steps, ", "))
	}
}

// oneLine puts s on one line (fencing errors list every level on a line
// of its own).
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
