package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/tools/lab"
)

const labLong = `Run a whole tandem cluster on this machine, in network namespaces: data
nodes alpha and bravo, a witness, and a client for workloads, joined by a
bridge in a namespace of its own, on 198.51.100.0/24 with no default route
(nothing leaves the machine; the root namespace has no lab address). Each
data node has an OpenIPMI ipmi_sim BMC whose power-off kills the node's
daemon and whose power-on starts it again. Resource r0 is served at
nbd://198.51.100.100:10809/r0, its VIP.

Everything lives in --dir (default /tmp/tandem-lab); the namespace names
are derived from it, so two labs in two directories coexist. Needs root.
See docs/operations.md, "The lab".`

const labExample = `  tandem lab up
  tandem lab status
  tandem lab exec client -- nbdinfo nbd://198.51.100.100:10809/r0
  tandem lab exec alpha -- tandem --config /tmp/tandem-lab/tandem.yaml fence off bravo --node alpha
  tandem lab crash bravo; tandem lab restart bravo
  tandem lab cut alpha bravo; tandem lab isolate witness; tandem lab heal
  tandem lab down`

func newLabCmd(a *app) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:     "lab",
		Short:   "Run a whole cluster in network namespaces on this machine",
		Long:    labLong,
		Example: labExample,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", lab.DefaultDir, "the lab's directory (state, disks, logs); one lab per directory")
	// Every command but the BMC hook (which ipmi_sim runs as root) acts
	// on namespaces or root-only admin sockets.
	open := func() (*lab.Lab, error) {
		if err := lab.RequireRoot(); err != nil {
			return nil, err
		}
		return lab.Open(dir)
	}

	var size string
	var resources int
	var clusterLayer bool
	var failback string
	var failbackAfter time.Duration
	up := &cobra.Command{
		Use:   "up [--size SIZE] [--resources N] [--cluster-layer [--failback auto] [--failback-after D]]",
		Short: "Build the lab and wait until r0 is Primary on alpha with bravo UpToDate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p := lab.DefaultParams
			p.Resources = resources
			p.ClusterLayer = clusterLayer
			switch failback {
			case "manual":
			case "auto":
				p.FailbackAuto = true
			default:
				return fmt.Errorf("lab up: --failback %q: want manual or auto", failback)
			}
			p.FailbackAfter = failbackAfter
			if size != "" {
				n, err := config.ParseSize(size)
				if err != nil {
					return fmt.Errorf("lab up: --size %q: %w", size, err)
				}
				p.Size = n
			}
			l, err := open()
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("lab up: finding the tandem binary: %w", err)
			}
			if err := l.Up(cmd.Context(), self, p, a.stderr); err != nil {
				return err
			}
			s, err := l.Status(cmd.Context())
			if err != nil {
				return err
			}
			printLabSummary(a, l, s)
			return nil
		},
	}
	up.Flags().StringVar(&size, "size", "64M", "size of each resource (a multiple of 4K)")
	up.Flags().IntVar(&resources, "resources", 1, "number of resources (r0, r1, ...), each with its own VIP")
	up.Flags().BoolVar(&clusterLayer, "cluster-layer", false, "run the cluster layer (gossip and authority on every node): the daemons elect the primary, fence and fail over by themselves")
	up.Flags().StringVar(&failback, "failback", "manual", "with --cluster-layer: manual, or auto (every resource moves back to alpha once alpha has been in sync for --failback-after)")
	up.Flags().DurationVar(&failbackAfter, "failback-after", 0, "with --cluster-layer: timing.failback-after, 1s to 24h (default: the configuration's default, 60s)")

	var asJSON bool
	status := &cobra.Command{
		Use:   "status [--json]",
		Short: "The cluster's status, each daemon's PID and each BMC's power state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			s, err := l.Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.stdout, s)
			}
			_, err = fmt.Fprint(a.stdout, s.Table())
			return err
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")

	exec := &cobra.Command{
		Use:   "exec NODE -- CMD [ARGS...]",
		Short: "Run a command inside a node's namespace (client is where workloads run)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return fmt.Errorf("lab exec: want NODE -- CMD [ARGS...]")
			}
			l, err := open()
			if err != nil {
				return err
			}
			code, err := l.Exec(cmd.Context(), args[0], args[1:], os.Stdin, os.Stdout, os.Stderr)
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitStatus{Code: code, Msg: fmt.Sprintf("lab exec %s: %s exited with status %d", args[0], args[1], code)}
			}
			return nil
		},
	}

	// withLab is the RunE of a command that acts on the lab.
	withLab := func(act func(cmd *cobra.Command, l *lab.Lab, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			return act(cmd, l, args)
		}
	}
	nodeCmd := func(use, short string, act func(cmd *cobra.Command, l *lab.Lab, node string) error) *cobra.Command {
		return &cobra.Command{
			Use: use + " NODE", Short: short, Args: cobra.ExactArgs(1),
			RunE: withLab(func(cmd *cobra.Command, l *lab.Lab, args []string) error { return act(cmd, l, args[0]) }),
		}
	}
	crash := nodeCmd("crash", "SIGKILL a node's daemon, like a power cut (its BMC reports off)", func(cmd *cobra.Command, l *lab.Lab, node string) error {
		if err := l.Crash(node); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s: daemon killed, power off\n", node)
		return nil
	})
	restart := nodeCmd("restart", "Power-cycle a node: kill its daemon if it runs, start it again", func(cmd *cobra.Command, l *lab.Lab, node string) error {
		if err := l.Restart(cmd.Context(), node); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s: daemon running, pid %d\n", node, l.DaemonPID(node))
		return nil
	})
	isolate := nodeCmd("isolate", "Drop all traffic to and from a node (alpha, bravo, witness, client)", func(cmd *cobra.Command, l *lab.Lab, node string) error {
		if err := l.Isolate(cmd.Context(), node); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s: isolated (tandem lab heal undoes it)\n", node)
		return nil
	})
	cut := &cobra.Command{
		Use: "cut NODE1 NODE2", Short: "Drop the traffic between two nodes only", Args: cobra.ExactArgs(2),
		RunE: withLab(func(cmd *cobra.Command, l *lab.Lab, args []string) error {
			if err := l.Cut(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s <-> %s: cut (tandem lab heal undoes it)\n", args[0], args[1])
			return nil
		}),
	}
	heal := &cobra.Command{
		Use: "heal", Short: "Remove every isolation and cut", Args: cobra.NoArgs,
		RunE: withLab(func(cmd *cobra.Command, l *lab.Lab, args []string) error {
			if err := l.Heal(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "network healed")
			return nil
		}),
	}
	down := &cobra.Command{
		Use: "down", Short: "Remove every namespace, link, process and file of the lab (idempotent)", Args: cobra.NoArgs,
		RunE: withLab(func(cmd *cobra.Command, l *lab.Lab, args []string) error {
			if err := l.Down(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "lab in %s removed\n", l.Dir())
			return nil
		}),
	}
	// ipmi_sim's chassis control; not for people.
	hook := &cobra.Command{
		Use: "bmc-hook -- NODE get|set PARAM [VALUE]", Hidden: true, Args: cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return lab.BMCHook(cmd.Context(), dir, args, func(s string) { fmt.Fprintln(a.stdout, s) })
		},
	}
	cmd.AddCommand(up, status, exec, crash, restart, isolate, cut, heal, down, hook)
	return cmd
}

func printLabSummary(a *app, l *lab.Lab, s *lab.Status) {
	w := a.stdout
	fmt.Fprintf(w, "lab up in %s (config %s)\n\n", l.Dir(), l.ConfigPath())
	for _, r := range s.Resources {
		fmt.Fprintf(w, "%s: %s (VIP %s), primary %s\n", r.Name, r.URI, r.VIP, r.Primary)
	}
	fmt.Fprintln(w, "\nnodes (each in its own network namespace):")
	for _, n := range []string{lab.Alpha, lab.Bravo, lab.Witness, lab.Client} {
		ns, _ := l.Netns(n)
		addr, _ := lab.Address(n)
		fmt.Fprintf(w, "  %-8s %-15s tandem lab exec %s -- CMD    (ip netns exec %s CMD)\n", n, addr, n, ns)
	}
	fmt.Fprintf(w, "\ntry: tandem lab exec client -- nbdinfo %s\n", lab.URI(0))
	fmt.Fprintf(w, "     tandem --config %s status --node alpha\n", l.ConfigPath())
	fmt.Fprintln(w, "     tandem lab status; tandem lab down")
	if l.Dir() != lab.DefaultDir {
		fmt.Fprintf(w, "(add --dir %s to every tandem lab command)\n", l.Dir())
	}
}
