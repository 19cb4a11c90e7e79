package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
)

// addConfigCommand registers the global --config flag (every cluster command
// reads the same file) and the config command. Commands read the flag with
// configPath, since the value lives in the flag set, not in app.
func addConfigCommand(root *cobra.Command, a *app) {
	root.PersistentFlags().String("config", config.DefaultPath, "the cluster configuration file, identical on every node")
	root.AddCommand(newConfigCmd(a))
}

// configPath is the --config value seen by cmd (inherited from the root).
func configPath(cmd *cobra.Command) string {
	if f := cmd.Flag("config"); f != nil {
		return f.Value.String()
	}
	return config.DefaultPath
}

func newConfigCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Check the cluster configuration file",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newConfigValidateCmd(a), newConfigDiffCmd(a))
	return cmd
}

const configDiffLong = `Compare the configuration file (--config) with OTHER, key by key, every key
counted (not only those in the configuration hash): print one line per
setting that differs, and say which of them tandem adjust applies to a
running daemon and which need its restart. Exit status 1 when they
differ, 0 when they do not (as diff(1)); both files must parse.

Use it before rolling a new file out: tandem config diff --config
/etc/tandem/tandem.yaml ./tandem.yaml.new`

func newConfigDiffCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "diff OTHER",
		Short:   "List the settings two configuration files differ in",
		Long:    configDiffLong,
		Example: "  tandem config diff ./tandem.yaml.new",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cur, err := config.Load(configPath(cmd))
			if err != nil {
				return err
			}
			other, err := config.Load(args[0])
			if err != nil {
				return err
			}
			changes := daemon.ConfigDiff(cur, other)
			if len(changes) == 0 {
				fmt.Fprintf(a.stdout, "%s and %s: no difference\n", cur.Path, other.Path)
				return nil
			}
			for _, c := range changes {
				how := "needs a daemon restart"
				switch _, removed := strings.CutSuffix(c, "(removed)"); {
				case removed && daemon.LiveChange(c):
					how = "tandem adjust applies it once the resource is down (tandem down)"
				case daemon.LiveChange(c):
					how = "tandem adjust applies it"
				}
				fmt.Fprintf(a.stdout, "%s\t%s\n", c, how)
			}
			return &exitStatus{Code: 1}
		},
	}
}

const configValidateLong = `Check the configuration file without starting anything, and print every
problem with its file:line, the key and how to fix it; exit status 1 if there
is any.

The file's own rules (known keys, required keys, values, names used once,
no two resources on one device or one port) are checked everywhere. The
files of one node (the secret file, its devices, metadata files and TLS
files) are checked only for the node this command runs as: --node, or else
the node named like this host. Nodes' files elsewhere are not looked at, so
the same file validates on every node.

The keys are documented in docs/configuration.md.`

func newConfigValidateCmd(a *app) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:     "validate",
		Short:   "Check a configuration file",
		Long:    configValidateLong,
		Example: "  tandem config validate\n  tandem --config ./lab.yaml config validate --node alpha",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runConfigValidate(a, configPath(cmd), node)
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "check the local files of this node (default: the node named like this host)")
	return cmd
}

func runConfigValidate(a *app, path, node string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return reportProblems(a, path, err)
	}
	var note string
	if node == "" {
		n, err := cfg.LocalNode("")
		switch {
		case err == nil:
			node = n.Name
		case errors.Is(err, config.ErrUnknownNode):
			host, _ := os.Hostname()
			note = fmt.Sprintf("local files not checked: this host (%s) is not a node; pass --node NAME to check that node's files", host)
		default:
			return fmt.Errorf("config validate: %w", err)
		}
	}
	if err := cfg.Validate(node); err != nil {
		return reportProblems(a, path, err)
	}
	alerts := ""
	if len(cfg.Alerts) > 0 {
		alerts = ", " + plural(len(cfg.Alerts), "alert")
	}
	fmt.Fprintf(a.stdout, "ok: cluster %s, %s (%s), %s%s\n", cfg.Cluster,
		plural(len(cfg.Nodes), "node"), roles(cfg), plural(len(cfg.Resources), "resource"), alerts)
	if note != "" {
		fmt.Fprintln(a.stdout, note)
	} else {
		fmt.Fprintf(a.stdout, "checked the local files of node %s\n", node)
	}
	return nil
}

// reportProblems prints each problem on its own line and returns the summary
// that run prints last, so the exit status is 1.
func reportProblems(a *app, path string, err error) error {
	ps := config.Problems(err)
	if len(ps) == 0 {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("config validate: %w (pass --config PATH)", err)
		}
		return fmt.Errorf("config validate: %w", err)
	}
	for _, p := range ps {
		fmt.Fprintln(a.stderr, p)
	}
	return fmt.Errorf("config validate: %s in %s", plural(len(ps), "problem"), path)
}

// roles reads "alpha, beta data; gamma witness".
func roles(cfg *config.Config) string {
	data, wit := cfg.DataNodes(), cfg.Witnesses()
	var b strings.Builder
	if len(data) == 0 {
		b.WriteString("no data nodes")
	} else {
		b.WriteString(strings.Join(data, ", ") + " data")
	}
	switch len(wit) {
	case 0:
		b.WriteString("; no witness")
	case 1:
		b.WriteString("; " + wit[0] + " witness")
	default:
		b.WriteString("; " + strings.Join(wit, ", ") + " witnesses")
	}
	return b.String()
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
