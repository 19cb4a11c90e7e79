package vip

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tandem-ha/tandem/tools/testenv"
)

// The test segment: hosts, each in a network namespace of its own with an
// eth0, joined by veth pairs to a bridge that lives in yet another
// namespace. Nothing is created in the root namespace, there is no default
// route anywhere, and the addresses (198.51.100.0/24, 2001:db8::/64) exist
// only inside these namespaces.
//
// The namespaces have no names: each exists only through the file
// descriptors this process holds, so parallel runs cannot collide on a name,
// and even a test killed by SIGKILL leaves nothing behind (the kernel
// destroys a namespace, with its links, when its last reference goes).
// Cleanup still deletes every link and closes every handle explicitly.

type host struct {
	name string
	ns   netns.NsHandle
	nl   *netlink.Handle
	eth  netlink.Link
	mac  net.HardwareAddr
}

type segment struct {
	bridgeNS netns.NsHandle
	bridgeNL *netlink.Handle
	hosts    map[string]*host
}

// waitBound caps every wait of these tests; nothing is asserted about speed.
const waitBound = 5 * time.Second

// newNetns creates an anonymous network namespace, closed at cleanup.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	type result struct {
		h   netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			c <- result{err: err}
			return
		}
		defer orig.Close()
		h, err := netns.New() // also moves this thread into it
		if serr := netns.Set(orig); serr != nil {
			c <- result{h, errors.Join(err, serr)}
			return // stays locked: the runtime ends the thread
		}
		runtime.UnlockOSThread()
		c <- result{h, err}
	}()
	r := <-c
	if r.err != nil {
		if r.h.IsOpen() {
			r.h.Close()
		}
		t.Fatalf("creating a network namespace: %v", r.err)
	}
	t.Cleanup(func() { r.h.Close() })
	return r.h
}

func nlHandle(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// newSegment builds the bridge and one host per address list: name ->
// addresses of its eth0 (added with nodad, so they are usable at once).
func newSegment(t *testing.T, hosts map[string][]string) *segment {
	t.Helper()
	testenv.RequireRoot(t)
	s := &segment{hosts: map[string]*host{}}
	s.bridgeNS = newNetns(t)
	s.bridgeNL = nlHandle(t, s.bridgeNS)
	off := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}, MulticastSnooping: &off}
	if err := s.bridgeNL.LinkAdd(br); err != nil {
		t.Fatalf("adding the bridge: %v", err)
	}
	t.Cleanup(func() { _ = s.bridgeNL.LinkDel(br) })
	if err := s.bridgeNL.LinkSetUp(br); err != nil {
		t.Fatalf("bridge up: %v", err)
	}
	for name, addrs := range hosts {
		h := &host{name: name, ns: newNetns(t)}
		h.nl = nlHandle(t, h.ns)
		s.hosts[name] = h
		// Before any address: IPv6 on, and no duplicate address
		// detection for the link-local address, which would only delay.
		inNS(t, h.ns, func() error {
			for _, f := range []struct{ path, val string }{
				{"/proc/sys/net/ipv6/conf/default/disable_ipv6", "0"},
				{"/proc/sys/net/ipv6/conf/default/accept_dad", "0"},
			} {
				if err := os.WriteFile(f.path, []byte(f.val), 0o644); err != nil {
					return err
				}
			}
			return nil
		})
		port := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: "p-" + name, MasterIndex: br.Attrs().Index},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(int(h.ns)),
		}
		if err := s.bridgeNL.LinkAdd(port); err != nil {
			t.Fatalf("adding the veth pair of %s: %v", name, err)
		}
		t.Cleanup(func() { _ = s.bridgeNL.LinkDel(port) }) // takes the peer with it
		if err := s.bridgeNL.LinkSetUp(port); err != nil {
			t.Fatalf("bridge port of %s up: %v", name, err)
		}
		for _, ifname := range []string{"lo", "eth0"} {
			l, err := h.nl.LinkByName(ifname)
			if err != nil {
				t.Fatalf("%s of %s: %v", ifname, name, err)
			}
			if err := h.nl.LinkSetUp(l); err != nil {
				t.Fatalf("%s of %s up: %v", ifname, name, err)
			}
		}
		for _, a := range addrs {
			p := netip.MustParsePrefix(a)
			l, _ := h.nl.LinkByName("eth0")
			if err := h.nl.AddrAdd(l, nlAddr(p)); err != nil {
				t.Fatalf("adding %s to %s: %v", a, name, err)
			}
		}
	}
	// Wait for every eth0 to have carrier (both ends of its veth up).
	for _, h := range s.hosts {
		deadline := time.Now().Add(waitBound)
		for {
			l, err := h.nl.LinkByName("eth0")
			if err != nil {
				t.Fatalf("eth0 of %s: %v", h.name, err)
			}
			if usable(l) == nil {
				h.eth, h.mac = l, l.Attrs().HardwareAddr
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("eth0 of %s has no carrier after %v: %v", h.name, waitBound, usable(l))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return s
}

// inNS runs fn with the thread in ns, failing the test on error.
func inNS(t *testing.T, ns netns.NsHandle, fn func() error) {
	t.Helper()
	if err := (namespace{h: ns, set: true}).run(fn); err != nil {
		t.Fatal(err)
	}
}

// serve listens on port (all addresses) in h's namespace and answers every
// connection with the host's name, so a client knows whom it reached.
func (h *host) serve(t *testing.T, network string, port int) {
	t.Helper()
	var l net.Listener
	inNS(t, h.ns, func() error {
		var err error
		l, err = net.Listen(network, fmt.Sprintf(":%d", port))
		return err
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(waitBound))
			fmt.Fprintf(c, "%s\n", h.name)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
}

// dial connects from h's namespace to addr and returns the name the server
// sent.
func (h *host) dial(t *testing.T, addr netip.AddrPort) string {
	t.Helper()
	var c net.Conn
	inNS(t, h.ns, func() error {
		var err error
		// Dial itself must run on the locked thread: the socket is
		// created there.
		c, err = net.DialTimeout("tcp", addr.String(), waitBound)
		return err
	})
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(waitBound))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s: reading from %s: %v", h.name, addr, err)
	}
	return strings.TrimSpace(line)
}

// neighbour returns the MAC of h's neighbour entry for ip on eth0, or nil.
func (h *host) neighbour(t *testing.T, ip netip.Addr) net.HardwareAddr {
	t.Helper()
	ns, err := h.nl.NeighList(h.eth.Attrs().Index, family(ip))
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatalf("%s: listing neighbours: %v", h.name, err)
	}
	for _, n := range ns {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == ip {
			return n.HardwareAddr
		}
	}
	return nil
}

// waitNeighbour waits, bounded, until h's entry for ip is mac, and returns
// how long that took.
func (h *host) waitNeighbour(t *testing.T, ip netip.Addr, mac net.HardwareAddr) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got := h.neighbour(t, ip)
		if sameMAC(got, mac) {
			return time.Since(start)
		}
		if time.Since(start) > waitBound {
			t.Fatalf("%s: neighbour entry for %s is %v after %v, want %v", h.name, ip, got, waitBound, mac)
		}
		time.Sleep(time.Millisecond)
	}
}

// vipOn makes a VIP for host h with fast probes, torn down at cleanup.
func (h *host) vipOn(t *testing.T, cfg Config, opts ...Option) *VIP {
	t.Helper()
	v, err := New(cfg, append([]Option{WithNetns(h.ns), WithLogger(testLogger(t, h.name))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

func (h *host) holds(t *testing.T, p netip.Prefix) bool {
	t.Helper()
	a, err := findAddr(h.nl, h.eth, p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	return a != nil
}

func testLogger(t *testing.T, host string) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("host", host)
}

// testWriter sends log lines to t.Log, so they show with the test that
// wrote them.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
