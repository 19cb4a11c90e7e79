package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
)

// app carries what every command shares, instead of package globals.
type app struct {
	stdout, stderr io.Writer
	logFormat      string
	logLevel       string
	log            *slog.Logger
}

const rootLong = `tandem turns two Linux storage nodes and a small witness into one highly
available block device, exported over NBD (the Network Block Device
protocol), with synchronous replication, quorum, fencing and a floating
service address.

Replicated resources (docs/operations.md). With gossip and authority
addresses in the configuration, the cluster layer detects a dead primary,
fences it, promotes the survivor and moves the service address; without
them roles are set by hand, as with DRBD alone:

  tandem daemon      run this node's replicas, their NBD exports, the admin API
  tandem create-md   create a replica's metadata (dump-md shows it)
  tandem status      roles, disk and link states, resync progress
  tandem wait        until a resource is connected, in sync, primary... (for scripts)
  tandem adjust      apply the configuration file's alerts, resync and split-brain changes (SIGHUP too)
  tandem events      follow the node's changes as they happen (audit log: DATA_DIR/audit.log)
  tandem promote / demote / connect / disconnect / resync / verify / resolve
  tandem pause-sync / resume-sync   hold a resync from this node, let it go on
  tandem down / up   take one resource down (devices released) and bring it back
  tandem switchover / standby / unstandby   move resources, under the cluster layer

Fencing, by hand through each node's configured levels (docs/operations.md):

  tandem fence status|test|off|on|reboot NODE
  tandem fence confirm NODE   record that you checked NODE is off

A whole cluster on this machine, in network namespaces (docs/operations.md):

  tandem lab up|status|exec|crash|restart|isolate|cut|heal|down

One node, no replication:

  tandem serve    export files or block devices over NBD to any NBD client
                  (qemu-img, nbdinfo, nbdcopy, nbdfuse, fio, nbd-client, ...)
  tandem attach   connect a kernel NBD device (/dev/nbdN) to an export
  tandem detach   disconnect a kernel NBD device
  tandem version  print the version

Try it:

  truncate -s 1G disk.img
  tandem serve --listen 127.0.0.1:10809 --export disk=disk.img
  nbdinfo nbd://127.0.0.1:10809/disk        # in another shell`

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "tandem",
		Short:         "Highly available block storage over NBD",
		Long:          rootLong,
		SilenceErrors: true, // run prints the error once, prefixed
		SilenceUsage:  true, // a failed server should not print a flag list
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(a.stderr, a.logFormat, a.logLevel)
			if err != nil {
				return err
			}
			a.log = log
			return nil
		},
	}
	root.PersistentFlags().StringVar(&a.logFormat, "log-format", "text", "log format on stderr: text or json")
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	_ = root.RegisterFlagCompletionFunc("log-format", cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
	_ = root.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions([]string{"debug", "info", "warn", "error"}, cobra.ShellCompDirectiveNoFileComp))

	root.AddCommand(newVersionCmd(a), newServeCmd(a), newAttachCmd(a), newDetachCmd(a))
	root.AddCommand(newDaemonCmd(a), newCreateMDCmd(a), newDumpMDCmd(a))
	root.AddCommand(adminCommands(a)...)
	root.AddCommand(newWaitCmd(a), newAdjustCmd(a))
	root.AddCommand(clusterCommands(a)...)
	root.AddCommand(newVIPCmd(a))
	root.AddCommand(newFenceCmd(a))
	root.AddCommand(newLabCmd(a))
	addConfigCommand(root, a) // the global --config flag and tandem config
	return root
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
}
