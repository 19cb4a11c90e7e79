package vip

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
)

// The probes read whatever arrives on the segment: no frame may make the
// conflict checks panic, and a conflict they report always names a MAC.

func FuzzARPCheck(f *testing.F) {
	vip := "198.51.100.100"
	for _, seed := range [][]byte{
		arpBytes(f, arp.OperationReply, theirMAC, vip, "0.0.0.0"),
		arpBytes(f, arp.OperationRequest, theirMAC, "0.0.0.0", vip),
		arpBytes(f, arp.OperationRequest, ourMAC, vip, vip),
		{}, {0xff},
	} {
		f.Add(seed)
	}
	a := &arpConn{ifi: &net.Interface{Name: "eth0", HardwareAddr: ourMAC}, ip: netip.MustParseAddr(vip)}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkConflict(t, a.check(b))
	})
}

func FuzzNDCheck(f *testing.F) {
	vip := netip.MustParseAddr("2001:db8::100")
	tlla := []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: theirMAC}}
	for _, seed := range [][]byte{
		ndBytes(f, theirMAC, &ndp.NeighborAdvertisement{Override: true, TargetAddress: vip, Options: tlla}, "fe80::a", "ff02::1"),
		ndBytes(f, theirMAC, &ndp.NeighborSolicitation{TargetAddress: vip}, "::", "ff02::1:ff00:100"),
		{}, {0x33, 0x33},
	} {
		f.Add(seed)
	}
	n := &ndConn{ifi: &net.Interface{Name: "eth0", HardwareAddr: ourMAC}, ip: vip}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkConflict(t, n.check(b))
	})
}

func checkConflict(t *testing.T, err error) {
	if err == nil {
		return
	}
	var ce *ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("check returned %v, not a *ConflictError", err)
	}
	if len(ce.MAC) == 0 || sameMAC(ce.MAC, ourMAC) {
		t.Fatalf("conflict %v names MAC %v", err, ce.MAC)
	}
}
