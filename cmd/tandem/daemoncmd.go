package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
)

const daemonLong = `Run this node's replicas of the configured resources until SIGINT or
SIGTERM: open each replica's data and metadata, start its replication link
to the peer, export it over NBD on the replica's nbd-listen address, and
answer the admin commands (status, promote, demote, ...) on the node's
admin socket.

Roles are manual: every resource starts Secondary, and its NBD export
refuses I/O (EPERM, advertised read-only) until "tandem promote" makes this
node Primary for it. A node without replicas (a witness) idles.

The configuration is checked strictly first (as "tandem config validate");
any problem stops the daemon before anything is opened. A resource whose
metadata is missing or corrupt stays down (its status says why) and is
never reinitialised: run "tandem create-md" and restart the daemon.

On SIGHUP the daemon re-reads its configuration file and applies the
alerts, resync and split-brain changes, or nothing if anything else
changed (as tandem adjust; the log says which).

On SIGINT or SIGTERM the NBD servers finish the requests in flight, each
volume flushes and marks its metadata clean, and the admin socket is
removed. Scripts can wait for --ready-file: it appears once everything is
up, with the admin socket and the NBD addresses, one per line.`

const daemonExample = `  tandem daemon                                   # this host's node, /etc/tandem/tandem.yaml
  tandem --config ./lab.yaml daemon --node alpha --log-format json`

type daemonFlags struct {
	node            string
	pidFile         string
	readyFile       string
	shutdownTimeout time.Duration
}

func newDaemonCmd(a *app) *cobra.Command {
	var f daemonFlags
	cmd := &cobra.Command{
		Use:     "daemon [--node NAME]",
		Short:   "Run this node's replicated resources",
		Long:    daemonLong,
		Example: daemonExample,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDaemon(cmd.Context(), a, configPath(cmd), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.node, "node", "", "the node to run as (default: the node named like this host)")
	fl.StringVar(&f.pidFile, "pid-file", "", "write the process id to this file")
	fl.StringVar(&f.readyFile, "ready-file", "", "write \"admin SOCKET\" and \"nbd ADDR\" lines to this file once running")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long to drain NBD and close the volumes on SIGTERM")
	return cmd
}

func runDaemon(ctx context.Context, a *app, path string, f daemonFlags) error {
	if f.shutdownTimeout <= 0 {
		return fmt.Errorf("daemon: --shutdown-timeout %v: must be positive", f.shutdownTimeout)
	}
	cfg, node, err := loadChecked(a, path, f.node, "daemon")
	if err != nil {
		return err
	}
	d, err := daemon.New(daemon.Options{
		Config: cfg, Node: node, Open: openVolume, Logger: a.log,
		ShutdownTimeout: f.shutdownTimeout, Version: version,
		Fencer: clusterFencer(cfg, node, a.log),
	})
	if err != nil {
		return err
	}
	ready := func() error {
		if f.pidFile != "" {
			if err := writeFileAtomic(f.pidFile, strconv.Itoa(os.Getpid())+"\n"); err != nil {
				return fmt.Errorf("daemon: writing --pid-file: %w", err)
			}
		}
		// The ready file goes last: its presence promises everything else.
		if f.readyFile != "" {
			lines := []string{"admin " + d.AdminSocket()}
			for _, addr := range d.NBDAddrs() {
				lines = append(lines, "nbd "+addr)
			}
			if err := writeFileAtomic(f.readyFile, strings.Join(lines, "\n")+"\n"); err != nil {
				return fmt.Errorf("daemon: writing --ready-file: %w", err)
			}
		}
		return nil
	}
	defer removeRunFiles(a.log, serveConfig{serveFlags: serveFlags{pidFile: f.pidFile, readyFile: f.readyFile}})
	return d.Run(ctx, ready)
}

// loadChecked loads the configuration and checks it strictly for the
// local node, printing every problem; it returns the node's name.
func loadChecked(a *app, path, node, what string) (*config.Config, string, error) {
	cfg, err := config.Load(path)
	if err == nil {
		var n *config.Node
		if n, err = cfg.LocalNode(node); err != nil {
			return nil, "", fmt.Errorf("%s: %w", what, err)
		}
		node = n.Name
		err = cfg.Validate(node)
	}
	if err != nil {
		ps := config.Problems(err)
		if len(ps) == 0 {
			if errors.Is(err, os.ErrNotExist) {
				return nil, "", fmt.Errorf("%s: %w (pass --config PATH)", what, err)
			}
			return nil, "", fmt.Errorf("%s: %w", what, err)
		}
		for _, p := range ps {
			fmt.Fprintln(a.stderr, p)
		}
		return nil, "", fmt.Errorf("%s: %s in %s (tandem config validate shows the same)", what, plural(len(ps), "problem"), path)
	}
	return cfg, node, nil
}

// loadForAdmin loads the configuration to find a node's admin socket; the
// local files are the daemon's business, so only the file is checked.
func loadForAdmin(path, node, what string) (*config.Config, *config.Node, error) {
	cfg, err := config.Load(path)
	if err != nil {
		if ps := config.Problems(err); len(ps) > 0 {
			return nil, nil, fmt.Errorf("%s: %s: %v (see tandem config validate)", what, path, ps[0])
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("%s: %w (pass --config PATH)", what, err)
		}
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	n, err := cfg.LocalNode(node)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	return cfg, n, nil
}
