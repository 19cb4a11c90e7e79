package daemon

import (
	"context"
	"fmt"
	"net"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/nbd"
)

// listenNBD opens an NBD listener. A TCP listener is bound with
// IP_FREEBIND, so that nbd-listen may name a service address (VIP) that
// is not on this node yet: a Secondary listens on it before it holds it,
// and clients reach it once the address moves here (keepalived setups do
// the same with net.ipv4.ip_nonlocal_bind). Unix sockets go through
// nbd.Listen, which also clears a stale socket file.
func listenNBD(addr string) (net.Listener, error) {
	if strings.HasPrefix(addr, "unix:") {
		return nbd.Listen(addr)
	}
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
			if serr == nil && network == "tcp6" {
				// Older kernels know only the IPv4 option, which
				// covers IPv6 sockets there too.
				_ = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen %q: %w", addr, err)
	}
	return l, nil
}
