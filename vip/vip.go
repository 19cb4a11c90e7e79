// Package vip claims and releases a service address (a VIP) on a node: it
// adds the address to an interface through netlink and tells the segment
// about it, with gratuitous ARP for IPv4 and unsolicited neighbour
// advertisements for IPv6, after checking that no other host answers for
// it. It knows nothing of roles or quorum: the caller decides when a node
// may hold an address (after the old holder is fenced) and this package
// makes it so.
//
// Every operation can run in another network namespace than the caller's
// (WithNetns), which is how the tests and the lab drive several nodes from
// one process.
package vip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Errors callers branch on.
var (
	// ErrAddressInUse: another host answered for the address; the claim
	// was refused and nothing was changed. The error is a *ConflictError
	// naming the MAC that answered.
	ErrAddressInUse = errors.New("vip: address in use by another host")
	// ErrNoInterface: the configured interface does not exist.
	ErrNoInterface = errors.New("vip: no such interface")
	// ErrInterfaceDown: the interface is down or has no carrier, so no
	// neighbour would hear the announcement.
	ErrInterfaceDown = errors.New("vip: interface down")
)

// ConflictError reports the host that answered for an address we were about
// to claim.
type ConflictError struct {
	Address   netip.Addr
	Interface string
	MAC       net.HardwareAddr // who answered
	How       string           // what it did, e.g. "answered an ARP probe for it"
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("vip: %s is in use on the segment of %s: %s %s; not claiming it (find the host with that MAC, or its stale configuration, and remove the address there)",
		e.Address, e.Interface, e.MAC, e.How)
}

func (e *ConflictError) Unwrap() error { return ErrAddressInUse }

// Option changes how a VIP works.
type Option func(*VIP)

// WithNetns runs every operation in the network namespace h instead of the
// caller's. The caller keeps h open while the VIP is in use and closes it.
func WithNetns(h netns.NsHandle) Option {
	return func(v *VIP) { v.ns = namespace{h: h, set: true} }
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(v *VIP) { v.log = l }
}

// WithAfter replaces time.After for the delays between announcements (the
// burst interval and the repeat), so tests can step time.
func WithAfter(after func(time.Duration) <-chan time.Time) Option {
	return func(v *VIP) { v.after = after }
}

// VIP is one service address on this node. Its methods may be called from
// several goroutines; claims and releases of one VIP are serialised.
type VIP struct {
	cfg   Config
	ns    namespace
	log   *slog.Logger
	after func(time.Duration) <-chan time.Time

	mu     sync.Mutex    // serialises Claim, Release and Close
	stop   chan struct{} // closed to stop the repeat burst; nil when none runs
	repeat chan struct{} // closed when the repeat goroutine has ended
}

// New checks cfg and returns its VIP. Nothing is touched until Claim.
func New(cfg Config, opts ...Option) (*VIP, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	v := &VIP{cfg: cfg, log: slog.Default(), after: time.After}
	for _, o := range opts {
		o(v)
	}
	v.log = v.log.With("vip", cfg.Address.String(), "interface", cfg.Interface)
	return v, nil
}

// Config returns the VIP's configuration.
func (v *VIP) Config() Config { return v.cfg }

// Claim makes this node the holder of the address, in this order:
//
//  1. probe: unless the address is already on the interface, ask the
//     segment whether anyone answers for it (ARP probes from 0.0.0.0, or
//     duplicate address detection); an answer refuses the claim with a
//     *ConflictError (ErrAddressInUse) and nothing is changed;
//  2. add the address to the interface (IPv6 with nodad: usable at once);
//  3. announce: Announce.Count gratuitous ARPs or unsolicited neighbour
//     advertisements, so that neighbours replace the old MAC in their
//     caches now rather than when their entries expire;
//  4. return, and send Announce.RepeatCount more after Announce.RepeatAfter
//     in the background (stopped by Release or Close).
//
// If announcing fails, an address that Claim added is removed again. A
// claim of an address already held re-announces it: that is how a restarted
// daemon refreshes the neighbours' caches. An IPv6 address found tentative
// or dadfailed does not count as held: it is removed and probed for.
func (v *VIP) Claim(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.stopRepeat()

	h, l, have, err := v.locate()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := usable(l); err != nil {
		return err
	}
	// An IPv6 address someone added without nodad whose kernel duplicate
	// detection failed (or still runs) is not ours to re-announce: remove it
	// and run our own check, which names the MAC that answers.
	if have != nil && have.Flags&(syscall.IFA_F_DADFAILED|syscall.IFA_F_TENTATIVE) != 0 {
		v.log.Warn("vip: the address is on the interface but tentative or failed duplicate detection; removing it and probing", "flags", have.Flags)
		if err := h.AddrDel(l, have); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			return fmt.Errorf("vip: removing tentative %s from %s: %w", v.cfg.Address, v.cfg.Interface, err)
		}
		have = nil
	}
	ifi := netInterface(l)
	ann, err := v.open(ifi)
	if err != nil {
		return err
	}
	defer ann.Close()

	added := false
	if have == nil {
		// Our own kernel does not answer our probe: an address left on
		// another interface of this node would go unnoticed.
		if st := inspect(v.cfg, v.ns); len(st.Elsewhere) > 0 {
			v.log.Warn("vip: the address is also on other interfaces of this node; neighbours may reach it there", "elsewhere", st.Elsewhere)
		}
		if n := v.cfg.Probe.Count; n > 0 {
			start := time.Now()
			if err := ann.probe(ctx, n, v.cfg.Probe.Interval); err != nil {
				if errors.Is(err, ErrAddressInUse) {
					v.log.Warn("vip: claim refused: another host answers for the address", "err", err)
					return err // names the address already
				}
				return fmt.Errorf("vip: probing for %s: %w", v.cfg.Address, err)
			}
			v.log.Debug("vip: probe found no other holder", "probes", n, "took", time.Since(start))
		}
		if err := ctxDone(ctx); err != nil {
			return fmt.Errorf("vip: claiming %s: %w", v.cfg.Address, err)
		}
		switch err := h.AddrAdd(l, nlAddr(v.cfg.Address)); {
		case err == nil:
			added = true
		case errors.Is(err, syscall.EEXIST):
			// Added meanwhile by someone else on this node: not ours to
			// remove if announcing fails.
		default:
			return fmt.Errorf("vip: adding %s to %s: %w", v.cfg.Address, v.cfg.Interface, err)
		}
	} else if p := prefixOf(have); p != v.cfg.Address {
		v.log.Warn("vip: address already on the interface with another prefix length; keeping it", "have", p)
	}

	if err := v.burst(ctx, ann, v.cfg.Announce.Count); err != nil {
		if added {
			if derr := h.AddrDel(l, nlAddr(v.cfg.Address)); derr != nil && !errors.Is(derr, syscall.EADDRNOTAVAIL) {
				err = errors.Join(err, fmt.Errorf("vip: removing %s again: %w", v.cfg.Address, derr))
			}
		}
		return fmt.Errorf("vip: announcing %s: %w", v.cfg.Address, err)
	}
	v.log.Info("vip: claimed", "added", added, "announcements", v.cfg.Announce.Count)
	if v.cfg.Announce.RepeatCount > 0 {
		v.startRepeat()
	}
	return nil
}

// Release removes the address from the interface. Releasing an address this
// node does not hold (or whose interface is gone) is not an error: after a
// crash or a demote the caller cannot know, and must be able to make sure.
// It stops a pending repeat of the announcement first.
func (v *VIP) Release(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.stopRepeat()
	if err := ctx.Err(); err != nil {
		return err
	}
	h, l, have, err := v.locate()
	if errors.Is(err, ErrNoInterface) {
		v.log.Info("vip: released: interface gone, so the address is too")
		return nil
	}
	if err != nil {
		return err
	}
	defer h.Close()
	if have == nil {
		v.log.Debug("vip: release: not held")
		return nil
	}
	// Delete what is there, whatever its prefix length: a VIP held with
	// another prefix is still the VIP.
	if err := h.AddrDel(l, have); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("vip: removing %s from %s: %w", v.cfg.Address, v.cfg.Interface, err)
	}
	v.log.Info("vip: released")
	return nil
}

// Held reports whether the address is on the configured interface.
func (v *VIP) Held() (bool, error) {
	st := inspect(v.cfg, v.ns)
	return st.Held, st.Err
}

// WaitAnnounced blocks until the repeat of the announcement that the last
// Claim scheduled has been sent (or stopped by Release or Close), or ctx
// ends. A short-lived caller (tandem vip claim) uses it so that its exit
// does not cut the repeat.
func (v *VIP) WaitAnnounced(ctx context.Context) error {
	v.mu.Lock()
	done := v.repeat
	v.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops a pending repeat of the announcement and leaves the address as
// it is (the daemon releases explicitly on shutdown; a crash leaves it, and
// fencing takes care of that).
func (v *VIP) Close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.stopRepeat()
}

// locate finds the VIP's interface and its entry for the address (nil when
// not there). The caller closes the netlink handle, which is nil on error.
func (v *VIP) locate() (*netlink.Handle, netlink.Link, *netlink.Addr, error) {
	h, err := v.ns.netlink()
	if err != nil {
		return nil, nil, nil, err
	}
	l, err := findLink(h, v.ns, v.cfg.Interface)
	if err != nil {
		h.Close()
		return nil, nil, nil, err
	}
	have, err := findAddr(h, l, v.cfg.Address.Addr())
	if err != nil {
		h.Close()
		return nil, nil, nil, err
	}
	return h, l, have, nil
}

// announcer is the protocol of one address family.
type announcer interface {
	probe(ctx context.Context, count int, interval time.Duration) error
	announce() error
	Close() error
}

func (v *VIP) open(ifi *net.Interface) (announcer, error) {
	if v.cfg.Address.Addr().Is4() {
		return openARP(v.ns, ifi, v.cfg.Address.Addr())
	}
	return openND(v.ns, ifi, v.cfg.Address.Addr())
}

// burst sends n announcements, Announce.Interval apart.
func (v *VIP) burst(ctx context.Context, a announcer, n int) error {
	for i := range n {
		if i > 0 && v.cfg.Announce.Interval > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-v.after(v.cfg.Announce.Interval):
			}
		}
		if err := a.announce(); err != nil {
			return err
		}
	}
	return nil
}

// startRepeat sends the second burst later, unless stopped first. Called
// with v.mu held.
func (v *VIP) startRepeat() {
	stop, done := make(chan struct{}), make(chan struct{})
	v.stop, v.repeat = stop, done
	go func() {
		defer close(done)
		select {
		case <-stop:
			return
		case <-v.after(v.cfg.Announce.RepeatAfter):
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := v.reannounce(ctx); err != nil && ctx.Err() == nil {
			v.log.Warn("vip: repeating the announcement", "err", err)
		}
	}()
}

// reannounce is the second burst. It looks the interface up afresh and
// sends nothing if the address is no longer there: announcing an address
// someone else removed would pull its traffic to a node that drops it.
func (v *VIP) reannounce(ctx context.Context) error {
	h, l, have, err := v.locate()
	if err != nil {
		return err
	}
	defer h.Close()
	if have == nil {
		v.log.Warn("vip: not repeating the announcement: the address was removed from the interface meanwhile")
		return nil
	}
	a, err := v.open(netInterface(l))
	if err != nil {
		return err
	}
	defer a.Close()
	if err := v.burst(ctx, a, v.cfg.Announce.RepeatCount); err != nil {
		return err
	}
	v.log.Debug("vip: repeated the announcement", "announcements", v.cfg.Announce.RepeatCount)
	return nil
}

// stopRepeat ends a pending repeat and waits for it. Called with v.mu held.
func (v *VIP) stopRepeat() {
	if v.stop == nil {
		return
	}
	close(v.stop)
	<-v.repeat
	v.stop, v.repeat = nil, nil
}

func prefixOf(a *netlink.Addr) netip.Prefix {
	ip, _ := netip.AddrFromSlice(a.IP)
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones)
}
