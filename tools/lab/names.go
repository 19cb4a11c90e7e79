package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"path/filepath"
)

// The lab's nodes. Data nodes hold a replica of every resource and have a
// BMC; the witness only votes; the client is where workloads run.
const (
	Alpha   = "alpha"
	Bravo   = "bravo"
	Witness = "witness"
	Client  = "client"
)

// DataNodes are the nodes with replicas and BMCs, in configuration order.
var dataNodes = []string{Alpha, Bravo}

// clusterNodes are the nodes that run tandem daemon.
var clusterNodes = []string{Alpha, Bravo, Witness}

// hosts are every namespace with an interface on the lab's segment.
var hosts = []string{Alpha, Bravo, Witness, Client}

// Network facts. The prefix is TEST-NET-2 (RFC 5737): never routed.
const (
	prefixLen = 24
	// ifName is each host's interface on the segment; bridgeName the
	// bridge in the bridge namespace.
	ifName     = "eth0"
	bridgeName = "br0"
	nbdPort    = 10809
	// replPortBase is resource i's replication port on both data nodes.
	replPortBase = 7789
	bmcPort      = 623
	bmcUser      = "admin"
)

var (
	hostAddr = map[string]netip.Addr{
		Alpha:   netip.MustParseAddr("198.51.100.11"),
		Bravo:   netip.MustParseAddr("198.51.100.12"),
		Witness: netip.MustParseAddr("198.51.100.13"),
		Client:  netip.MustParseAddr("198.51.100.50"),
	}
	// bmcAddr: the BMCs live in the bridge namespace, each on an address
	// of its own on the bridge, like a management port on the segment.
	bmcAddr = map[string]netip.Addr{
		Alpha: netip.MustParseAddr("198.51.100.21"),
		Bravo: netip.MustParseAddr("198.51.100.22"),
	}
	vipBase = netip.MustParseAddr("198.51.100.100")
)

// maxResources keeps the VIPs (.100 up) inside the /24.
const maxResources = 100

// Address is the lab address of a host (alpha, bravo, witness, client).
func Address(node string) (netip.Addr, bool) {
	a, ok := hostAddr[node]
	return a, ok
}

// ResourceName is the name of resource i: r0, r1, ...
func ResourceName(i int) string { return fmt.Sprintf("r%d", i) }

// VIP is the service address of resource i.
func VIP(i int) netip.Addr {
	a := vipBase
	for range i {
		a = a.Next()
	}
	return a
}

// URI is the NBD URI of resource i, through its VIP.
func URI(i int) string {
	return fmt.Sprintf("nbd://%s:%d/%s", VIP(i), nbdPort, ResourceName(i))
}

// names are the kernel-visible names of one lab, derived from its
// directory so that two labs never share one.
type names struct {
	tag string // 8 hex digits of the directory's hash
}

func newNames(dir string) names {
	sum := sha256.Sum256([]byte(filepath.Clean(dir)))
	return names{tag: hex.EncodeToString(sum[:4])}
}

// netns is the namespace of a host; "net" is the bridge's.
func (n names) netns(host string) string { return "tandem-lab-" + n.tag + "-" + host }

// bridgeNS holds the bridge and the BMCs.
func (n names) bridgeNS() string { return n.netns("net") }

// allNetns lists every namespace a lab may have made.
func (n names) allNetns() []string {
	out := []string{n.bridgeNS()}
	for _, h := range hosts {
		out = append(out, n.netns(h))
	}
	return out
}

// port is the bridge-side end of a host's veth pair. It lives in the
// lab's own bridge namespace, so it needs no lab-unique name.
func port(host string) string { return "p-" + host }
