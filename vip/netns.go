package vip

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// namespace is where a VIP's interface lives: the caller's own network
// namespace, or one given by handle (the lab runs every node in its own).
type namespace struct {
	h   netns.NsHandle
	set bool
}

func (ns namespace) String() string {
	if !ns.set {
		return "the current network namespace"
	}
	return "network namespace " + ns.h.String()
}

// netlink opens a netlink handle whose sockets live in the namespace; it
// needs no thread tricks, the library creates its sockets there.
func (ns namespace) netlink() (*netlink.Handle, error) {
	var h *netlink.Handle
	var err error
	if ns.set {
		h, err = netlink.NewHandleAt(ns.h)
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("vip: netlink in %s: %w", ns, err)
	}
	return h, nil
}

// run calls fn with the calling thread in the namespace. Sockets opened by fn
// stay in that namespace for their whole life, so only their creation needs
// this; using them afterwards works from any goroutine.
//
// A namespace belongs to a thread, not to a goroutine, so fn runs on a
// goroutine locked to its thread. If switching back fails the goroutine
// exits still locked, and the Go runtime then ends that thread instead of
// handing a thread in the wrong namespace to other goroutines.
func (ns namespace) run(fn func() error) error {
	if !ns.set {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("vip: reading the thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns.h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("vip: entering %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("vip: leaving %s: %w (thread discarded)", ns, err)
			return // still locked: the runtime ends the thread
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
