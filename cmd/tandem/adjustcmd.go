package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

const adjustLong = `Make this node's daemon read its configuration file again and apply what
may change while it runs (drbdadm adjust; SIGHUP does the same):

  alerts                      the programs, kinds, resources, recipients
  nodes[].fencing             at the next fencing attempt
  resources[].resync          max-rate, app-share, checksum: a running
                              resync or verify takes the new rate at once
  resources[].split-brain     the policy of the next connection's decision
  resources[].protocol,       the replication link's settings: the
  resources[].compression,    resource's session restarts with them (the
  resources[].tls,            writes of the gap are resynced); a TLS file
  replicas' address           renewed under the same path counts as a change
  replicas' device, meta      while the resource is down here (tandem down)
  on-no-quorum, failback,     the cluster layer's policies
  preferred-primary
  timing.ping-interval, ping-timeout, ack-timeout, failback-after
  resources added             exported and opened as tandem up does (run
                              tandem create-md for it first)
  resources removed           once down here (tandem down): export closed

The daemon re-reads the file it was started with (its path is printed),
validates it as tandem config validate does (and loads the TLS files),
and lists what differs. If anything else differs (a node, an nbd-listen,
a VIP, the bitmap, the cluster layer's timings...), nothing is applied
and the keys are named: restart the daemon for those. So the daemon
always runs one file's settings, and the configuration hash that tandem
status compares between nodes is that file's. --dry-run only lists the
differences; a larger size is applied by tandem resize.`

func newAdjustCmd(a *app) *cobra.Command {
	var f adminFlags
	var dryRun bool
	cmd := &cobra.Command{
		Use:     "adjust [--dry-run]",
		Short:   "Apply the configuration file's changes to the running daemon",
		Long:    adjustLong,
		Example: "  tandem adjust --dry-run\n  tandem adjust",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client(cmd, "adjust")
			if err != nil {
				return err
			}
			res, err := c.Adjust(cmd.Context(), dryRun)
			if err != nil {
				return adminError(a, &f, "adjust", "", err)
			}
			if f.asJSON {
				return printJSON(a.stdout, res)
			}
			switch {
			case len(res.Changes) == 0:
				fmt.Fprintf(a.stdout, "%s: nothing to change\n", res.Path)
			case !res.Applied:
				fmt.Fprintf(a.stdout, "%s: would change %s\n", res.Path, strings.Join(res.Changes, ", "))
			default:
				fmt.Fprintf(a.stdout, "%s: changed %s\n", res.Path, strings.Join(res.Changes, ", "))
			}
			for _, n := range res.Notes {
				fmt.Fprintln(a.stdout, n)
			}
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only list what the file would change")
	return cmd
}
