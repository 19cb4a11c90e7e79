// Package kernel connects a Linux kernel NBD device (/dev/nbdN) to an NBD
// server, so that the export appears as an ordinary block device that can be
// formatted and mounted. It drives the kernel through the ioctl interface
// with the go-nbd client, which negotiates the export in user space and then
// hands the socket to the kernel.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/pojntfx/go-nbd/pkg/client"
)

// DefaultPort is the IANA port for NBD.
const DefaultPort = "10809"

// ErrNoModule means the device node does not exist, which nearly always
// means the nbd kernel module is not loaded.
var ErrNoModule = errors.New("no nbd kernel module: modprobe nbd")

// CheckDevice tells whether path is an NBD device node this process can use.
func CheckDevice(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kernel: %s does not exist: %w", path, ErrNoModule)
	}
	if err != nil {
		return fmt.Errorf("kernel: checking %s: %w", path, err)
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return fmt.Errorf("kernel: %s is not a block device", path)
	}
	return nil
}

// Target is where an NBD URI points.
type Target struct {
	Network string // "tcp" or "unix"
	Address string // host:port or socket path
	Export  string
}

// ParseURI understands nbd://HOST[:PORT]/NAME and
// nbd+unix:///NAME?socket=PATH (the NBD URI specification). TLS schemes are
// refused: the kernel path has no TLS.
func ParseURI(uri string) (Target, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return Target{}, fmt.Errorf("kernel: parsing %q: %w", uri, err)
	}
	export := strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd":
		if u.Hostname() == "" {
			return Target{}, fmt.Errorf("kernel: %q: no host (want nbd://HOST[:PORT]/EXPORT)", uri)
		}
		port := u.Port()
		if port == "" {
			port = DefaultPort
		}
		return Target{Network: "tcp", Address: net.JoinHostPort(u.Hostname(), port), Export: export}, nil
	case "nbd+unix":
		sock := u.Query().Get("socket")
		if sock == "" {
			return Target{}, fmt.Errorf("kernel: %q: no socket (want nbd+unix:///EXPORT?socket=PATH)", uri)
		}
		return Target{Network: "unix", Address: sock, Export: export}, nil
	case "nbds", "nbds+unix":
		return Target{}, fmt.Errorf("kernel: %q: TLS is not supported for kernel attach", uri)
	default:
		return Target{}, fmt.Errorf("kernel: %q: unknown scheme %q (want nbd:// or nbd+unix://)", uri, u.Scheme)
	}
}

// Options tune Attach.
type Options struct {
	// Export is the export name. It must not be empty: the go-nbd client
	// replaces an empty name with "default".
	Export string
	// BlockSize is the kernel's logical block size (512..4096, a power of
	// two); 0 takes the server's preferred block size.
	BlockSize uint32
	// Timeout is the kernel's per-request timeout; 0 means none.
	Timeout time.Duration
	// OnConnected is called once the device has its size and is usable.
	OnConnected func()
	// DisconnectWait bounds how long Attach waits for the kernel to let go
	// after a disconnect before it closes the socket (default 30 s).
	DisconnectWait time.Duration
	Logger         *slog.Logger
}

// Attach binds the device at devicePath to the export over conn and blocks
// until the device is disconnected (by Detach, by the server going away, or
// by ctx ending, in which case it disconnects cleanly and returns nil).
// Attach owns conn and closes it.
func Attach(ctx context.Context, conn net.Conn, devicePath string, opts Options) error {
	defer conn.Close()
	if opts.Export == "" {
		return errors.New("kernel: attach needs an export name")
	}
	if opts.BlockSize != 0 && (opts.BlockSize < client.MinimumBlockSize || opts.BlockSize > client.MaximumBlockSize || opts.BlockSize&(opts.BlockSize-1) != 0) {
		return fmt.Errorf("kernel: block size %d: want a power of two in %d..%d", opts.BlockSize, client.MinimumBlockSize, client.MaximumBlockSize)
	}
	if opts.DisconnectWait <= 0 {
		opts.DisconnectWait = 30 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dev, err := openDevice(devicePath)
	if err != nil {
		return err
	}
	defer dev.Close()

	done := make(chan error, 1)
	go func() {
		done <- client.Connect(conn, dev, &client.Options{
			ExportName:  opts.Export,
			BlockSize:   opts.BlockSize,
			OnConnected: opts.OnConnected,
			Timeout:     int(opts.Timeout / time.Second),
		})
	}()

	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("kernel: attaching %s to export %q: %w", devicePath, opts.Export, err)
		}
		log.Info("device disconnected", "device", devicePath)
		return nil
	case <-ctx.Done():
	}

	log.Info("disconnecting", "device", devicePath)
	derr := client.Disconnect(dev)
	if derr != nil {
		// Still negotiating, or the kernel already let go: closing the
		// socket ends either.
		log.Warn("disconnect ioctl failed; closing the socket", "device", devicePath, "err", derr)
		conn.Close()
	}
	timer := time.NewTimer(opts.DisconnectWait)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		conn.Close()
		return fmt.Errorf("kernel: %s still busy %v after disconnect", devicePath, opts.DisconnectWait)
	}
	return nil
}

// Detach disconnects the device at devicePath from its server (the
// NBD_DISCONNECT and NBD_CLEAR_SOCK ioctls); the attach process holding it
// then returns.
func Detach(devicePath string) error {
	dev, err := openDevice(devicePath)
	if err != nil {
		return err
	}
	defer dev.Close()
	if err := client.Disconnect(dev); err != nil {
		return fmt.Errorf("kernel: disconnecting %s (is it attached?): %w", devicePath, err)
	}
	return nil
}

// openDevice opens an NBD device for the ioctls, after CheckDevice.
func openDevice(devicePath string) (*os.File, error) {
	if err := CheckDevice(devicePath); err != nil {
		return nil, err
	}
	dev, err := os.OpenFile(devicePath, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("kernel: opening %s: %w", devicePath, err)
	}
	return dev, nil
}
