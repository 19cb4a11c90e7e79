package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
)

const eventsLong = `Follow the changes of a node as its daemon sees them, one line per event,
until Ctrl-C: membership (alive, suspect, dead), quorum gained or lost,
commits of the authority record (primary, epoch, replica states, fencing
confirmations), failover steps, fencing attempts and results, volume
changes (role, disk, connection, resync start and end), service address
claims and releases, alerts and admin actions.

Each line: time, node, kind, resource, text. --json prints one JSON object
per line instead (keys in docs/operations.md). --since SEQ first replays
the events the daemon still holds after sequence number SEQ (0: all it
holds), so a script that reconnects misses nothing the daemon kept.
--now prints what the daemon holds and exits.

--kind K (repeatable, or K1,K2) shows only those kinds; --resource R only
the events about R and those about no resource (membership, quorum, the
daemon: they concern every resource), as alerts[] filter them. The
stream's own gap and dropped events always show; --count counts what is
shown.`

func newEventsCmd(a *app) *cobra.Command {
	var f adminFlags
	var since int64
	var count int
	var now bool
	var kinds []string
	var resource string
	cmd := &cobra.Command{
		Use:   "events [--json] [--node NODE] [--since SEQ] [--count N] [--now] [--kind K] [--resource R]",
		Short: "Stream the cluster changes a node sees",
		Long:  eventsLong,
		Example: "  tandem events\n  tandem events --node beta --json | jq -c 'select(.kind == \"failover\")'\n" +
			"  tandem events --since 0 --count 20\n  tandem events --now --json\n  tandem events --kind volume,resync --resource r0",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, k := range kinds {
				if !slices.Contains(config.AlertKinds, k) {
					return fmt.Errorf("events: --kind %q: want one of %s", k, strings.Join(config.AlertKinds, ", "))
				}
			}
			filter := config.Alert{Kinds: kinds}
			if resource != "" {
				filter.Resources = []string{resource}
			}
			c, err := f.client(cmd, "events")
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("since") {
				since = -1
				if now {
					since = 0
				}
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			n := 0
			errEnough := errors.New("enough events")
			stream := c.Events
			if now {
				stream = c.EventsNow
			}
			err = stream(ctx, since, func(ev daemon.Event) error {
				if ev.Kind != daemon.KindGap && ev.Kind != daemon.KindDropped && !filter.Wants(ev.Kind, ev.Resource) {
					return nil
				}
				if err := printEvent(a.stdout, ev, f.asJSON); err != nil {
					return err
				}
				if n++; count > 0 && n >= count {
					return errEnough
				}
				return nil
			})
			switch {
			case err == nil, errors.Is(err, errEnough), errors.Is(err, context.Canceled) && cmd.Context().Err() != nil:
				return nil // the daemon stopped, enough events, or Ctrl-C
			}
			return adminError(a, &f, "events", "", err)
		},
	}
	f.add(cmd)
	cmd.Flags().Int64Var(&since, "since", 0, "replay the retained events after this sequence number first (0: all retained)")
	cmd.Flags().IntVar(&count, "count", 0, "exit after this many events (0: follow until Ctrl-C)")
	cmd.Flags().StringSliceVar(&kinds, "kind", nil, "show only these kinds ("+strings.Join(config.AlertKinds, ", ")+")")
	cmd.Flags().StringVar(&resource, "resource", "", "show only the events about this resource (and those about no resource)")
	cmd.Flags().BoolVar(&now, "now", false, "print the retained events (after --since, default all) and exit instead of following")
	return cmd
}

func printEvent(w io.Writer, ev daemon.Event, asJSON bool) error {
	if asJSON {
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	res := ev.Resource
	if res == "" {
		res = "-"
	}
	_, err := fmt.Fprintf(w, "%s %-8s %-8s %-6s %s\n", ev.Time.Local().Format("2006-01-02T15:04:05.000Z07:00"), ev.Node, ev.Kind, res, ev.Text)
	return err
}
