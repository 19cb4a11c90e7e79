package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate/md"
)

const createMDLong = `Write new metadata (superblock, activity log, out-of-sync bitmap) for this
node's replica of RESOURCE: at the end of its device (meta: internal) or in
its metadata file, which is created if missing. Run it on both data nodes
before the first "tandem daemon", with the daemon stopped. The configuration
is checked first as strictly as the daemon checks it.

It refuses to overwrite metadata that is there, valid or corrupt, unless
--force (which throws away the replica's sync state: the next connect may
need a full sync).

A new replica is Inconsistent: after both daemons start, "tandem promote
RESOURCE --force" on the node whose data to keep makes it the source of a
full initial sync. For a brand-new pair whose devices are both empty,
--new-blank skips that sync: it marks the replica in sync under a
generation that both nodes must share. The first create-md --new-blank
picks one and prints the command to run on the peer, with --generation.`

const createMDExample = `  # on alpha, then on beta (new pair, full initial sync from the node promoted with --force)
  tandem create-md r0

  # a brand-new pair of empty devices: no initial sync
  tandem create-md r0 --node alpha --new-blank
  tandem create-md r0 --node beta --new-blank --generation 0x5c1e4f2a9b3d7e60   # as printed on alpha`

func newCreateMDCmd(a *app) *cobra.Command {
	var node, gen string
	var opts daemon.CreateOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "create-md RESOURCE [--node NAME] [--force] [--new-blank [--generation HEX]]",
		Short:   "Create a replica's on-disk metadata",
		Long:    createMDLong,
		Example: createMDExample,
		Args:    oneResource,
		RunE: func(cmd *cobra.Command, args []string) error {
			if gen != "" {
				if !opts.NewBlank {
					return fmt.Errorf("create-md: --generation goes with --new-blank")
				}
				g, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(gen), "0x"), 16, 64)
				if err != nil || g == 0 {
					return fmt.Errorf("create-md: --generation %q: want the non-zero hex number printed by the first create-md --new-blank", gen)
				}
				opts.Generation = g
			}
			// The same strict check as the daemon's: a wrong device path
			// must not get metadata written onto it.
			cfg, nodeName, err := loadChecked(a, configPath(cmd), node, "create-md")
			if err != nil {
				return err
			}
			n, _ := cfg.Node(nodeName)
			res, _, err := daemon.LocalReplica(cfg, args[0], n.Name)
			if err != nil {
				return fmt.Errorf("create-md: %w", err)
			}
			c, err := daemon.CreateMetadata(cfg, res, n.Name, opts)
			if err != nil {
				return fmt.Errorf("create-md: %w", err)
			}
			peer := res.Peer(n.Name).Node
			for _, w := range c.Warnings {
				fmt.Fprintln(a.stderr, "warning:", w)
			}
			if asJSON {
				return printJSON(a.stdout, c)
			}
			sb := c.Superblock
			fmt.Fprintf(a.stdout, "%s on %s: metadata written (%s, %d bytes), generation %#016x, %s\n",
				res.Name, n.Name, c.Location, sb.MetaSize, sb.Gen.Current, md.DiskState(sb.Flags))
			switch {
			case opts.NewBlank && opts.Generation == 0:
				fmt.Fprintf(a.stdout, "on %s run: tandem create-md %s --node %s --new-blank --generation %#016x\n", peer, res.Name, peer, sb.Gen.Current)
			case opts.NewBlank:
				fmt.Fprintf(a.stdout, "both replicas share generation %#016x: they start in sync\n", sb.Gen.Current)
			default:
				fmt.Fprintf(a.stdout, "next: create-md on %s too, start both daemons, then tandem promote %s --force on the node whose data to keep (a full sync to the other follows)\n", peer, res.Name)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&node, "node", "", "the node whose replica to initialise (default: the node named like this host)")
	fl.BoolVar(&opts.Force, "force", false, "overwrite existing (or corrupt) metadata, losing its sync state")
	fl.BoolVar(&opts.NewBlank, "new-blank", false, "mark a brand-new, empty pair as in sync (both nodes get the same --generation)")
	fl.StringVar(&gen, "generation", "", "with --new-blank: the generation printed by the first node's create-md")
	fl.BoolVar(&asJSON, "json", false, "print the new superblock as JSON")
	return cmd
}

const dumpMDLong = `Print this node's metadata for RESOURCE without changing it: both superblock
slots (which is valid, which is used), the superblock (names, generations,
flags, epoch), the activity log (the extents a crash now would resync) and
the out-of-sync bitmap. It works whether or not the daemon runs (while it
runs, what was last written is shown). Corrupt metadata is described as far
as it can be read, and the command exits 1.`

func newDumpMDCmd(a *app) *cobra.Command {
	var node string
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "dump-md RESOURCE [--node NAME] [--json]",
		Short:   "Show a replica's on-disk metadata",
		Long:    dumpMDLong,
		Example: "  tandem dump-md r0\n  tandem dump-md r0 --json | jq .superblock.generations",
		Args:    oneResource,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, n, err := loadForAdmin(configPath(cmd), node, "dump-md")
			if err != nil {
				return err
			}
			res, rp, err := daemon.LocalReplica(cfg, args[0], n.Name)
			if err != nil {
				return fmt.Errorf("dump-md: %w", err)
			}
			info, derr := daemon.DumpMetadata(res, rp)
			if asJSON {
				if err := printJSON(a.stdout, info); err != nil {
					return err
				}
			} else {
				printDump(a.stdout, res.Name, n.Name, info)
			}
			if derr != nil {
				return fmt.Errorf("dump-md: %w", derr)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node whose replica to read (default: the node named like this host)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON (keys documented in docs/operations.md)")
	return cmd
}

func printDump(w io.Writer, res, node string, info md.DumpInfo) {
	fmt.Fprintf(w, "metadata of %s on %s\n", res, node)
	for i, s := range info.Slots {
		state := "valid"
		switch {
		case s.Empty:
			state = "empty"
		case !s.Valid:
			state = "INVALID: " + s.Error
		}
		active := ""
		if i == info.ActiveSlot {
			active = " (in use)"
		}
		fmt.Fprintf(w, "  slot %d: %s, seq %d%s\n", i, state, s.Seq, active)
	}
	if sb := info.Superblock; sb != nil {
		fmt.Fprintf(w, "  cluster %s, resource %s, node %s, peer %s, uuid %s\n", sb.Cluster, sb.Resource, sb.Node, sb.Peer, sb.UUID)
		fmt.Fprintf(w, "  disk %s, flags %s, epoch %d\n", info.DiskState, sb.Flags, sb.Epoch)
		fmt.Fprintf(w, "  generations: current %#016x, bitmap %#016x, history %s\n", sb.Gen.Current, sb.Gen.Bitmap, hexList(sb.Gen.History[:]))
		fmt.Fprintf(w, "  data %d bytes, metadata %d bytes, bitmap granularity %d, activity-log extents %d bytes x %d hot at most\n",
			sb.DataSize, sb.MetaSize, sb.Granularity, sb.ALExtentSize, sb.MaxHotExtents)
	}
	if al := info.ActivityLog; al != nil {
		if al.NewestSlot < 0 {
			fmt.Fprintln(w, "  activity log: empty")
		} else {
			fmt.Fprintf(w, "  activity log: newest transaction %d (slot %d), %d hot extents\n", al.NewestSeq, al.NewestSlot, len(al.Hot))
		}
		for _, r := range al.Hot {
			fmt.Fprintf(w, "    hot: offset %d length %d\n", r.Off, r.Len)
		}
	}
	if bm := info.Bitmap; bm != nil {
		fmt.Fprintf(w, "  bitmap: %d of %d bits set, %d bytes out of sync\n", bm.SetBits, bm.Bits, bm.OutOfSyncBytes)
		for _, r := range bm.FirstRanges {
			fmt.Fprintf(w, "    out of sync: offset %d length %d\n", r.Off, r.Len)
		}
	}
	for _, p := range info.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
}

func hexList(gs []uint64) string {
	var parts []string
	for _, g := range gs {
		if g != 0 {
			parts = append(parts, fmt.Sprintf("%#016x", g))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
