package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
)

// The admin commands talk to the running daemon of a node over its admin
// socket (HTTP+JSON, root-only), found through the configuration: --node,
// or the node named like this host.

type adminFlags struct {
	node   string
	asJSON bool
}

func (f *adminFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.node, "node", "", "the node whose daemon to ask (default: the node named like this host)")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the reply (or the refusal) as JSON; keys in docs/operations.md")
}

// client finds the node's admin socket in the configuration.
func (f *adminFlags) client(cmd *cobra.Command, what string) (*daemon.Client, error) {
	_, n, err := loadForAdmin(configPath(cmd), f.node, what)
	if err != nil {
		return nil, err
	}
	return daemon.NewClient(n.AdminSocket, n.Name), nil
}

// oneResource is the Args check of the commands that take RESOURCE.
func oneResource(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s: want one RESOURCE, got %d arguments (the resources are listed by tandem status)", cmd.Name(), len(args))
	}
	return nil
}

// hint says what a refusal means and what to do about it.
func hint(code, resource string) string {
	switch code {
	case daemon.CodeNotUpToDate:
		return "the local data is not UpToDate; promote --force makes it Primary anyway and discards whatever the peer has that it lacks"
	case daemon.CodePeerPrimary:
		return fmt.Sprintf("the peer is Primary: demote it first (tandem demote %s on the peer)", resource)
	case daemon.CodeNotPrimary:
		return "this needs the Primary: run it there, or promote this node first"
	case daemon.CodeNotConnected:
		return fmt.Sprintf("the replicas are not connected: tandem connect %s, and check tandem status %s on both nodes", resource, resource)
	case daemon.CodeSplitBrain:
		return fmt.Sprintf("split brain: both replicas wrote while apart; on the node whose changes to throw away run tandem resolve %s --discard-my-data (docs/operations.md, Split brain)", resource)
	case daemon.CodeBusy:
		return fmt.Sprintf("a resync or verify is running: see tandem status %s", resource)
	case daemon.CodeResourceDown:
		return fmt.Sprintf("tandem status %s says why; fix it (e.g. tandem create-md %s), then tandem up %s", resource, resource, resource)
	case daemon.CodeShuttingDown:
		return "the daemon is stopping"
	case daemon.CodeIsPrimary:
		return fmt.Sprintf("this node is Primary: tandem demote %s first", resource)
	case daemon.CodeDiskFailed:
		return fmt.Sprintf("the local disk returned an I/O error and is detached; replace it and run tandem attach-disk %s (a full resync from the peer follows; a Primary needs its peer connected, else demote it and promote the peer first)", resource)
	case daemon.CodeDiskAttached:
		return "the local disk has not failed: attach-disk replaces a failed disk only (tandem down and tandem up replace a healthy one)"
	case daemon.CodeResizeRefused:
		return fmt.Sprintf("the new size cannot be taken: grow both devices first and set the same size in the configuration file on both nodes (docs/operations.md, Growing a resource); tandem status %s says more", resource)
	case daemon.CodeForeignDisk:
		return "the disk at the configured path holds other tandem metadata: check the device and meta paths (tandem dump-md shows it), or pass --force to overwrite it"
	case daemon.CodePeerLost:
		return fmt.Sprintf("the peer went away during the operation: check tandem status %s, reconnect and retry", resource)
	case daemon.CodeStaleEpoch:
		return "the peer has seen a newer epoch: this node was deposed as Primary"
	}
	return ""
}

// adminError prints a refusal (as JSON with --json) and returns the error
// that makes the exit status 1.
func adminError(a *app, f *adminFlags, what, resource string, err error) error {
	var ae *daemon.APIError
	if !errors.As(err, &ae) {
		if f.asJSON {
			_ = printJSON(a.stdout, daemon.ErrorBody{Error: err.Error(), Code: "no_daemon"})
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if f.asJSON {
		_ = printJSON(a.stdout, daemon.ErrorBody{Error: ae.Message, Code: ae.Code})
	}
	if resource != "" {
		what += " " + resource
	}
	if h := hint(ae.Code, resource); h != "" {
		return fmt.Errorf("%s refused: %s\n  %s", what, ae.Message, h)
	}
	return fmt.Errorf("%s: %s", what, ae.Message)
}

// doneCmd describes a command RESOURCE whose reply is only "done".
type doneCmd struct {
	use, short, long, example string
	// flags adds the command's own flags, bound to variables that call
	// reads.
	flags func(cmd *cobra.Command)
	// check refuses a command line before the daemon is asked (nil: none).
	check func() error
	call  func(ctx context.Context, c *daemon.Client, res string) error
	done  string // printed with the resource name
}

func newDoneCmd(a *app, d doneCmd) *cobra.Command {
	var f adminFlags
	cmd := &cobra.Command{
		Use:     d.use,
		Short:   d.short,
		Long:    d.long,
		Example: d.example,
		Args:    oneResource,
		RunE: func(cmd *cobra.Command, args []string) error {
			what := cmd.Name()
			if d.check != nil {
				if err := d.check(); err != nil {
					return err
				}
			}
			c, err := f.client(cmd, what)
			if err != nil {
				return err
			}
			if err := d.call(cmd.Context(), c, args[0]); err != nil {
				return adminError(a, &f, what, args[0], err)
			}
			if f.asJSON {
				return printJSON(a.stdout, daemon.Done{OK: true})
			}
			fmt.Fprintf(a.stdout, d.done+"\n", args[0])
			return nil
		},
	}
	f.add(cmd)
	if d.flags != nil {
		d.flags(cmd)
	}
	return cmd
}

func newPromoteCmd(a *app) *cobra.Command {
	var f adminFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "promote RESOURCE [--force]",
		Short: "Make this node Primary for a resource",
		Long: `Make this node Primary for RESOURCE: its NBD export starts serving I/O and
writes are replicated to the peer.

Refused while the peer is Primary (demote it first), and while the local
data is not UpToDate (Outdated, Inconsistent) or a split brain is pending.
--force promotes anyway: it is how the first node of a new pair becomes the
source of the initial sync, and how a lone survivor is brought up after
losing its peer; the command prints what the promotion discards.`,
		Example: "  tandem promote r0\n  tandem promote r0 --force   # says what it discards",
		Args:    oneResource,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client(cmd, "promote")
			if err != nil {
				return err
			}
			res, err := c.Promote(cmd.Context(), args[0], force)
			if err != nil {
				return adminError(a, &f, "promote", args[0], err)
			}
			if f.asJSON {
				return printJSON(a.stdout, res)
			}
			fmt.Fprintf(a.stdout, "%s: Primary (epoch %d)\n", args[0], res.Epoch)
			if res.Discarded != "" {
				fmt.Fprintf(a.stdout, "forced: discarded %s\n", res.Discarded)
			}
			// A link that gave up (e.g. two Inconsistent replicas, neither
			// a possible sync source) does not retry by itself: say so.
			if ns, err := c.Status(cmd.Context(), args[0]); err == nil && len(ns.Resources) == 1 && ns.Resources[0].Conn == replicate.StandAlone {
				fmt.Fprintf(a.stdout, "the replication link is StandAlone (%s): run tandem connect %s on both nodes to sync the peer\n", ns.Resources[0].Reason, args[0])
			}
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&force, "force", false, "promote even with data that is not UpToDate (prints what is discarded)")
	return cmd
}

func newVerifyCmd(a *app) *cobra.Command {
	var f adminFlags
	var repair bool
	cmd := &cobra.Command{
		Use:   "verify RESOURCE [--repair]",
		Short: "Compare both replicas online",
		Long: `Compare the digests of both replicas of RESOURCE, block by block, while
they stay in use, and print the ranges that differ. It runs on either node,
with the replicas connected: on the Secondary it asks the Primary to run it
(the Primary orders the writes, so only it can compare both replicas at the
same point while applications write) and prints the Primary's report. With
--repair the differing ranges are marked out of sync and resynced from the
Primary (from this node while neither is Primary). The command waits until
the comparison is done; interrupting it stops the verify. It exits 1 when
the replicas differ and were not repaired.`,
		Example: "  tandem verify r0\n  tandem verify r0 --repair",
		Args:    oneResource,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client(cmd, "verify")
			if err != nil {
				return err
			}
			rep, err := c.Verify(cmd.Context(), args[0], repair)
			if err != nil {
				return adminError(a, &f, "verify", args[0], err)
			}
			if f.asJSON {
				if err := printJSON(a.stdout, rep); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(a.stdout, "%s: compared %s, %s differ\n", args[0], humanBytes(rep.ComparedBytes), plural(len(rep.Differing), "range"))
				for _, r := range rep.Differing {
					fmt.Fprintf(a.stdout, "  offset %d length %d\n", r.Offset, r.Length)
				}
				if rep.OmittedRanges > 0 {
					fmt.Fprintf(a.stdout, "  ... and %s more (run it on the primary for the whole list)\n", plural(int(rep.OmittedRanges), "range"))
				}
				if rep.Repaired && len(rep.Differing) > 0 {
					fmt.Fprintln(a.stdout, "repaired: the differing ranges were resynced")
				}
			}
			if len(rep.Differing) > 0 && !rep.Repaired {
				return fmt.Errorf("verify %s: the replicas differ in %s; tandem verify %s --repair resyncs them", args[0], plural(len(rep.Differing)+int(rep.OmittedRanges), "range"), args[0])
			}
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&repair, "repair", false, "resync the ranges that differ")
	return cmd
}

func newResyncCmd(a *app) *cobra.Command {
	var full bool
	return newDoneCmd(a, doneCmd{
		use:   "resync RESOURCE [--full]",
		short: "Resync this replica from the peer",
		long: `Make this node's replica of RESOURCE the sync target: the blocks marked
out of sync (or, with --full, every block) are copied from the peer. Needs
the replicas connected; progress shows in tandem status.`,
		example: "  tandem resync r0\n  tandem resync r0 --full",
		flags: func(cmd *cobra.Command) {
			cmd.Flags().BoolVar(&full, "full", false, "copy every block, not only those marked out of sync")
		},
		call: func(ctx context.Context, c *daemon.Client, res string) error { return c.Resync(ctx, res, full) },
		done: "%[1]s: resync from the peer started (tandem status %[1]s shows progress)",
	})
}

func newAttachDiskCmd(a *app) *cobra.Command {
	var force bool
	return newDoneCmd(a, doneCmd{
		use:   "attach-disk RESOURCE [--force]",
		short: "Replace this node's failed disk without taking the resource down",
		long: `After the local disk of RESOURCE failed (tandem status: disk Failed, or
Diskless on a Primary the peer serves), put the replacement at the
configured device and meta paths and run this: the daemon writes new
metadata on it (as create-md --force would) and gives it to the running
volume, which syncs it in full from the peer (DRBD's attach). A diskless
Primary goes on serving its NBD clients through the peer meanwhile, and its
I/O is local again once the sync is done; a failed Secondary becomes the
sync target. Refused while the disk is healthy, on a Primary whose disk
failed with no peer connected (demote it: what it acknowledged alone is
lost with that disk), and, without --force, when the new disk holds
another replica's or corrupt tandem metadata (the path may name the wrong
disk).`,
		example: "  tandem attach-disk r0\n  tandem status r0   # SyncTarget, then UpToDate",
		flags: func(cmd *cobra.Command) {
			cmd.Flags().BoolVar(&force, "force", false, "overwrite another replica's or corrupt tandem metadata found on the new disk")
		},
		call: func(ctx context.Context, c *daemon.Client, res string) error { return c.AttachDisk(ctx, res, force) },
		done: "%[1]s: new disk attached; a full sync from the peer runs (tandem status %[1]s shows progress)",
	})
}

func newResizeCmd(a *app) *cobra.Command {
	var clean, alone bool
	return newDoneCmd(a, doneCmd{
		use:   "resize RESOURCE [--assume-clean] [--assume-peer-has-space]",
		short: "Grow a resource online to the size its configuration now says",
		long: `Grow RESOURCE on both replicas without stopping it (DRBD's resize; grow
only). First make both nodes' devices larger (lvextend, truncate: with
internal metadata by at least the metadata's size, which moves behind the
new end), set the resource's size in the configuration file on both nodes,
then run this on the Primary, with the peer connected and UpToDate. The
daemon reads the file for the new size, the peer's daemon checks its own
file says the same and grows first, then this node; I/O waits for the
moment of the switch. The new range is resynced to the peer (it shows in
tandem status), unless --assume-clean says both devices hold the same
bytes there (both zeroed). With the peer down or disconnected it is
refused, unless --assume-peer-has-space: this node grows alone and the
peer grows when it connects (its file must say the same size and its
device hold it, or it stays StandAlone saying why), then the new range
resyncs. NBD clients connected before keep the old size until they
reconnect. Resizing to the current size does nothing.`,
		example: "  lvextend -L +10G vg/r0   # on both nodes, and size: in tandem.yaml on both\n  tandem resize r0",
		flags: func(cmd *cobra.Command) {
			cmd.Flags().BoolVar(&clean, "assume-clean", false, "do not resync the new range: both devices hold the same bytes there")
			cmd.Flags().BoolVar(&alone, "assume-peer-has-space", false, "with the peer not connected, grow this node alone; the peer grows when it connects")
		},
		call: func(ctx context.Context, c *daemon.Client, res string) error {
			_, err := c.Resize(ctx, res, daemon.ResizeRequest{AssumeClean: clean, AssumePeerHasSpace: alone})
			return err
		},
		done: "%[1]s: grown to the configured size (tandem status %[1]s shows the resync of the new range)",
	})
}

func newResolveCmd(a *app) *cobra.Command {
	var discard bool
	return newDoneCmd(a, doneCmd{
		use:   "resolve RESOURCE --discard-my-data",
		short: "End a split brain by discarding this node's changes",
		long: `After a split brain (both replicas of RESOURCE wrote while apart, so
neither overwrote the other and both stay StandAlone), run this on the node
whose changes are to be thrown away: it becomes the sync target, its
changes since the split are overwritten by the peer's, and the replicas
connect and resync. It must not be Primary (demote it first). Then run
tandem connect RESOURCE on the other node if it is StandAlone.`,
		example: "  tandem demote r0 && tandem resolve r0 --discard-my-data",
		flags: func(cmd *cobra.Command) {
			cmd.Flags().BoolVar(&discard, "discard-my-data", false, "throw away this node's changes since the split brain")
		},
		check: func() error {
			if !discard {
				return errors.New("resolve: --discard-my-data is required: run it on the node whose changes since the split are thrown away")
			}
			return nil
		},
		call: func(ctx context.Context, c *daemon.Client, res string) error { return c.Resolve(ctx, res, true) },
		done: "%s: this node's changes are discarded; it resyncs from the peer",
	})
}

// adminCommands are the commands that drive a running daemon.
func adminCommands(a *app) []*cobra.Command {
	return []*cobra.Command{
		newStatusCmd(a),
		newEventsCmd(a), // eventscmd.go
		newPromoteCmd(a),
		newDoneCmd(a, doneCmd{use: "demote RESOURCE", short: "Make this node Secondary for a resource",
			long: `Make this node Secondary for RESOURCE: its NBD export stops passing I/O
(clients get EPERM), writes in flight finish and are flushed on both
replicas first.`,
			call: func(ctx context.Context, c *daemon.Client, res string) error { return c.Demote(ctx, res) }, done: "%s: Secondary"}),
		newDoneCmd(a, doneCmd{use: "connect RESOURCE", short: "Connect a resource's replication link",
			long: `Start connecting RESOURCE's replication link to the peer (after disconnect,
a refused peer or a split brain). On connect the replicas compare
generations and resync what differs.`,
			call: func(ctx context.Context, c *daemon.Client, res string) error { return c.Connect(ctx, res) }, done: "%s: connecting to the peer"}),
		newDoneCmd(a, doneCmd{use: "disconnect RESOURCE", short: "Disconnect a resource's replication link",
			long: `Drop RESOURCE's replication link and stay StandAlone until tandem connect.
A Primary keeps serving and records its writes in the out-of-sync bitmap.`,
			call: func(ctx context.Context, c *daemon.Client, res string) error { return c.Disconnect(ctx, res) }, done: "%s: StandAlone"}),
		newResyncCmd(a),
		newDoneCmd(a, doneCmd{use: "outdate RESOURCE", short: "Mark this node's replica Outdated",
			long: `Mark this node's replica of RESOURCE Outdated (DRBD's outdate), durably: it
is not promoted without --force until a session with the peer finds it
current again (in sync, or after a resync). For maintenance, or a fencing
script that keeps a node from taking over. Refused on the Primary and on a
Secondary connected to the Primary, whose writes keep it current
(disconnect it first); Inconsistent data stays Inconsistent.`,
			example: "  tandem disconnect r0 && tandem outdate r0",
			call:    func(ctx context.Context, c *daemon.Client, res string) error { return c.Outdate(ctx, res) },
			done:    "%s: Outdated"}),
		newDoneCmd(a, doneCmd{use: "pause-sync RESOURCE", short: "Pause the resyncs this node is the source of",
			long: `Hold RESOURCE's resync from this node (drbdadm pause-sync): the running one
stops before its next chunk, and a later one (another session) waits too,
until tandem resume-sync. Applications keep writing; their writes are
replicated and, where not yet synced, marked as usual. Run it on the sync
source (the target is refused: the source drives the resync). The pause
lasts until resume-sync or the daemon's restart; tandem status shows it.`,
			example: "  tandem pause-sync r0   # business hours\n  tandem resume-sync r0",
			call:    func(ctx context.Context, c *daemon.Client, res string) error { return c.PauseSync(ctx, res) },
			done:    "%[1]s: resync paused (tandem resume-sync %[1]s)"}),
		newDoneCmd(a, doneCmd{use: "resume-sync RESOURCE", short: "Let a paused resync go on",
			long: `Let RESOURCE's resyncs from this node go on after tandem pause-sync (nothing happens if none is paused).`,
			call: func(ctx context.Context, c *daemon.Client, res string) error { return c.ResumeSync(ctx, res) },
			done: "%s: resync resumed"}),
		newVerifyCmd(a),
		newResolveCmd(a),
		newAttachDiskCmd(a),
		newResizeCmd(a),
		newDoneCmd(a, doneCmd{use: "down RESOURCE", short: "Take one resource down on this node, releasing its devices",
			long: `Close RESOURCE on this node (flushed, metadata marked clean), release its
backing device and metadata, and stop serving its NBD export, while the
daemon's other resources go on (drbdadm down). Refused on the Primary:
demote it first. Then the disk can be replaced and tandem create-md run on
it; tandem up RESOURCE opens it again. Under the cluster layer the node's
replica counts as Failed meanwhile and is never promoted.`,
			example: "  tandem down r0 && tandem create-md r0 --force && tandem up r0",
			call:    func(ctx context.Context, c *daemon.Client, res string) error { return c.Down(ctx, res) }, done: "%s: down, devices released"}),
		newDoneCmd(a, doneCmd{use: "up RESOURCE", short: "Open a resource that is down on this node",
			long: `Open RESOURCE on this node again (drbdadm up): after tandem down, or a
resource that stayed down at start (no metadata, corrupt metadata, a
missing device). The metadata is checked as at start and never written
if it is unusable; the replica connects to its peer and resyncs what the
generations say (a full sync for fresh metadata). Refused, with the
reason, if it still cannot open.`,
			call: func(ctx context.Context, c *daemon.Client, res string) error { return c.Up(ctx, res) }, done: "%s: up"}),
	}
}
