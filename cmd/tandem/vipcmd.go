package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/vip"
)

func newVIPCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vip",
		Short: "Service addresses (VIPs) of the resources",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newVIPStatusCmd(a), newVIPClaimCmd(a), newVIPReleaseCmd(a))
	return cmd
}

const vipClaimLong = `Claim a resource's VIP on this node by hand: probe that no other host
answers for the address, add it to the interface, announce it (gratuitous
ARP or unsolicited neighbour advertisements), and wait for the configured
second burst before exiting (Ctrl-C stops waiting; the address stays).

Refused, with nothing changed, when another host answers for the address:
the error names the MAC that answered. Claiming an address this node
already holds announces it again.

The cluster layer claims and releases VIPs itself on promotion and
demotion. By hand, claim only after the old holder is fenced or demoted and
its VIP released, and release it here before demoting. Needs root.`

// vipChangeJSON is the --json result of claim and release.
type vipChangeJSON struct {
	Resource  string `json:"resource"`
	Address   string `json:"address"`
	Interface string `json:"interface"`
	// WasHeld: the address was on the interface before the command.
	WasHeld bool `json:"was_held"`
	// Held: it is there now.
	Held bool `json:"held"`
	// Announced and Repeated count the announcements of a claim: the
	// first burst and the second one (0 if not waited for).
	Announced int `json:"announced,omitempty"`
	Repeated  int `json:"repeated,omitempty"`
	// Note says why the second burst was not waited for.
	Note string `json:"note,omitempty"`
}

func newVIPClaimCmd(a *app) *cobra.Command {
	var node string
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "claim RESOURCE",
		Short:   "Claim a resource's VIP on this node (probe, add, announce)",
		Long:    vipClaimLong,
		Example: "  tandem vip claim db\n  tandem --config ./lab.yaml vip claim db --node beta --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := loadVIP(a, configPath(cmd), node, args[0])
			if err != nil {
				return fmt.Errorf("vip claim: %w", err)
			}
			defer v.Close()
			c := v.Config()
			res := vipChangeJSON{Resource: args[0], Address: c.Address.String(), Interface: c.Interface}
			res.WasHeld, _ = v.Held() // for the message only; Claim reports real trouble
			if err := v.Claim(cmd.Context()); err != nil {
				return fmt.Errorf("vip claim %s: %w", args[0], err)
			}
			res.Held, res.Announced = true, c.Announce.Count
			verb := "claimed"
			if res.WasHeld {
				verb = "already held; announced again"
			}
			if !asJSON {
				fmt.Fprintf(a.stdout, "%s %s on %s for %s; announced %d times\n", verb, c.Address, c.Interface, args[0], c.Announce.Count)
			}
			if c.Announce.RepeatCount > 0 {
				if err := v.WaitAnnounced(cmd.Context()); err != nil {
					res.Note = fmt.Sprintf("not waiting for the second burst (%v); the address stays claimed", err)
				} else {
					res.Repeated = c.Announce.RepeatCount
				}
			}
			if asJSON {
				return printJSON(a.stdout, res)
			}
			if res.Note != "" {
				fmt.Fprintln(a.stdout, res.Note)
			} else if res.Repeated > 0 {
				fmt.Fprintf(a.stdout, "announced %d more times after %v\n", res.Repeated, c.Announce.RepeatAfter)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node to claim it as (default: the node named like this host)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func newVIPReleaseCmd(a *app) *cobra.Command {
	var node string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "release RESOURCE",
		Short: "Remove a resource's VIP from this node",
		Long: `Remove a resource's VIP from its interface on this node. Releasing an
address this node does not hold is not an error. Needs root.`,
		Example: "  tandem vip release db\n  tandem vip release db --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := loadVIP(a, configPath(cmd), node, args[0])
			if err != nil {
				return fmt.Errorf("vip release: %w", err)
			}
			defer v.Close()
			c := v.Config()
			res := vipChangeJSON{Resource: args[0], Address: c.Address.String(), Interface: c.Interface}
			res.WasHeld, _ = v.Held()
			if err := v.Release(cmd.Context()); err != nil {
				return fmt.Errorf("vip release %s: %w", args[0], err)
			}
			if asJSON {
				return printJSON(a.stdout, res)
			}
			if res.WasHeld {
				fmt.Fprintf(a.stdout, "released %s from %s for %s\n", c.Address, c.Interface, args[0])
			} else {
				fmt.Fprintf(a.stdout, "%s was not on %s for %s: nothing to release\n", c.Address, c.Interface, args[0])
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node to release it as (default: the node named like this host)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// loadVIP reads the file and returns the resource's VIP as the local node
// uses it.
func loadVIP(a *app, path, nodeName, resource string) (*vip.VIP, error) {
	cfg, err := loadConfigFor(a, path)
	if err != nil {
		return nil, err
	}
	n, err := cfg.LocalNode(nodeName)
	if err != nil {
		return nil, err
	}
	r := cfg.Resource(resource)
	if r == nil {
		var names []string
		for _, r := range cfg.Resources {
			names = append(names, r.Name)
		}
		return nil, fmt.Errorf("no resource %q in %s (resources: %s)", resource, path, strings.Join(names, ", "))
	}
	c, ok := r.VIPFor(n.Name)
	switch {
	case r.VIP == nil:
		return nil, fmt.Errorf("resource %s has no vip in %s", resource, path)
	case !ok:
		return nil, fmt.Errorf("node %s holds no replica of %s, so it never holds its VIP", n.Name, resource)
	}
	return vip.New(c, vip.WithLogger(a.log))
}

// loadConfigFor loads the file, printing each problem on stderr.
func loadConfigFor(a *app, path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		if ps := config.Problems(err); len(ps) > 0 {
			for _, p := range ps {
				fmt.Fprintln(a.stderr, p)
			}
			return nil, fmt.Errorf("%s in %s (see tandem config validate)", plural(len(ps), "problem"), path)
		}
		return nil, err
	}
	return cfg, nil
}

const vipStatusLong = `Show which of this node's configured VIPs it holds, by looking at its
interfaces: no daemon is needed, so it also tells what a stopped or crashed
daemon left behind.

The node is --node, or else the node named like this host; its VIPs are
those of the resources it holds a replica of, each on its interface
(vip-interface of the replica, else vip.interface). STATE is one of

  held                     the address is on the interface
  not held                 it is not
  held as ADDR/LEN         on the interface, with another prefix length
  no interface IFACE       the interface does not exist on this host

and "also on IFACE" when the address sits on another interface as well
(neighbours may reach it there: remove it). Rows are in the order of the
resource names. The exit status is 1 when an
interface is missing or could not be read.`

func newVIPStatusCmd(a *app) *cobra.Command {
	var node string
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "status",
		Short:   "Show which configured VIPs this node holds",
		Long:    vipStatusLong,
		Example: "  tandem vip status\n  tandem --config ./lab.yaml vip status --node alpha --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVIPStatus(a, configPath(cmd), node, asJSON)
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node to report on (default: the node named like this host)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

// vipStatusJSON is the --json form; its field names are an interface.
type vipStatusJSON struct {
	Node string         `json:"node"`
	VIPs []vipEntryJSON `json:"vips"`
}

type vipEntryJSON struct {
	Resource  string   `json:"resource"`
	Address   string   `json:"address"`
	Interface string   `json:"interface"`
	Held      bool     `json:"held"`
	Prefix    string   `json:"prefix,omitempty"`    // as found, when held
	Elsewhere []string `json:"elsewhere,omitempty"` // other interfaces with the address
	Error     string   `json:"error,omitempty"`
}

func runVIPStatus(a *app, path, nodeName string, asJSON bool) error {
	cfg, err := loadConfigFor(a, path)
	if err != nil {
		return fmt.Errorf("vip status: %w", err)
	}
	n, err := cfg.LocalNode(nodeName)
	if err != nil {
		return fmt.Errorf("vip status: %w", err)
	}
	set, err := vip.NewSet(cfg.VIPs(n.Name))
	if err != nil {
		return fmt.Errorf("vip status: %w", err) // config.Load has checked what NewSet does
	}
	names, states := set.Resources(), set.Status()

	out := vipStatusJSON{Node: n.Name, VIPs: []vipEntryJSON{}}
	var failed []string
	for i, st := range states {
		e := vipEntryJSON{Resource: names[i], Address: st.Config.Address.String(), Interface: st.Config.Interface,
			Held: st.Held, Elsewhere: st.Elsewhere}
		if st.Held {
			e.Prefix = st.Prefix.String()
		}
		if st.Err != nil {
			e.Error = st.Err.Error()
			failed = append(failed, fmt.Sprintf("%s: %v", names[i], st.Err))
		}
		out.VIPs = append(out.VIPs, e)
	}

	if asJSON {
		if err := printJSON(a.stdout, out); err != nil {
			return fmt.Errorf("vip status: %w", err)
		}
	} else if len(states) == 0 {
		fmt.Fprintf(a.stdout, "node %s has no VIPs (no resource it holds a replica of has a vip)\n", n.Name)
	} else {
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RESOURCE\tVIP\tINTERFACE\tSTATE")
		for i, st := range states {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", names[i], st.Config.Address, st.Config.Interface, vipState(st))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("vip status: %w", err)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("vip status: %s", strings.Join(failed, "; "))
	}
	return nil
}

func vipState(st vip.State) string {
	var s string
	switch {
	case errors.Is(st.Err, vip.ErrNoInterface):
		s = "no interface " + st.Config.Interface
	case st.Err != nil:
		s = "unknown (" + st.Err.Error() + ")"
	case st.Held && st.Prefix != st.Config.Address:
		s = "held as " + st.Prefix.String()
	case st.Held:
		s = "held"
	default:
		s = "not held"
	}
	if len(st.Elsewhere) > 0 {
		s += ", also on " + strings.Join(st.Elsewhere, ", ")
	}
	return s
}
