package daemon

import (
	"net"
	"testing"
)

// TestNBDListenerBindsAnAddressNotHere: a Secondary listens on its VIP
// before it holds it. 192.0.2.1 (TEST-NET-1) is on no interface; the bind
// sends nothing.
func TestNBDListenerBindsAnAddressNotHere(t *testing.T) {
	if l, err := net.Listen("tcp", "192.0.2.1:0"); err == nil {
		l.Close()
		t.Skip("192.0.2.1 is configured on this host")
	}
	l, err := listenNBD("192.0.2.1:0")
	if err != nil {
		t.Fatalf("listening on an address not on this host: %v", err)
	}
	l.Close()
	l, err = listenNBD("unix:" + t.TempDir() + "/n.sock")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}
