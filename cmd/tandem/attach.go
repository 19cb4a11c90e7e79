package main

import (
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/nbd/kernel"
)

const attachLong = `Connect the kernel NBD device DEVICE to the export at URI, so that the export
can be partitioned, formatted and mounted like a local disk.

URI is nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH; the
export name is required. attach stays in the foreground (like nbd-client
-nofork) until the device is detached (tandem detach DEVICE), the server goes
away, or it receives SIGINT or SIGTERM, on which it disconnects cleanly.

Needs root and the nbd kernel module (modprobe nbd).`

func newAttachCmd(a *app) *cobra.Command {
	var (
		blockSize   uint32
		timeout     time.Duration
		dialTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:               "attach URI DEVICE",
		Short:             "Connect a kernel NBD device (/dev/nbdN) to an export",
		Long:              attachLong,
		Example:           "  tandem attach nbd://127.0.0.1:10809/disk /dev/nbd0\n  tandem attach 'nbd+unix:///disk?socket=/run/tandem.sock' /dev/nbd1",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeDevice(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			uri, device := args[0], args[1]
			target, err := kernel.ParseURI(uri)
			if err != nil {
				return fmt.Errorf("attach: %w", err)
			}
			if target.Export == "" {
				return fmt.Errorf("attach: %q names no export (want nbd://HOST[:PORT]/EXPORT)", uri)
			}
			// Fail on a missing module before touching the network.
			if err := kernel.CheckDevice(device); err != nil {
				return fmt.Errorf("attach: %w", err)
			}
			d := net.Dialer{Timeout: dialTimeout}
			conn, err := d.DialContext(cmd.Context(), target.Network, target.Address)
			if err != nil {
				return fmt.Errorf("attach: connecting to %s: %w", uri, err)
			}
			a.log.Info("attaching", "uri", uri, "device", device)
			return kernel.Attach(cmd.Context(), conn, device, kernel.Options{
				Export:      target.Export,
				BlockSize:   blockSize,
				Timeout:     timeout,
				OnConnected: func() { a.log.Info("attached", "device", device, "uri", uri) },
				Logger:      a.log,
			})
		},
	}
	cmd.Flags().Uint32Var(&blockSize, "block-size", 0, "logical block size, 512 to 4096 (0: the server's preferred size)")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "kernel request timeout, whole seconds (0: none)")
	cmd.Flags().DurationVar(&dialTimeout, "dial-timeout", 10*time.Second, "how long to try to reach the server")
	return cmd
}

func newDetachCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:               "detach DEVICE",
		Short:             "Disconnect a kernel NBD device",
		Long:              "Disconnect the kernel NBD device DEVICE from its server; the tandem attach\nholding it then exits. Unmount the device first.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeDevice(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := kernel.Detach(args[0]); err != nil {
				return fmt.Errorf("detach: %w", err)
			}
			a.log.Info("detached", "device", args[0])
			return nil
		},
	}
}

// completeDevice offers the /dev/nbdN devices for argument number pos and
// nothing (no file names either) for the others.
func completeDevice(pos int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) == pos {
			return nbdDevices(), cobra.ShellCompDirectiveNoFileComp
		}
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
}

func nbdDevices() []string {
	m, _ := filepath.Glob("/dev/nbd[0-9]*")
	return m
}
