package config

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/vip"
)

// vipBase: two resources with a VIP each, one IPv4 with every key, one IPv6
// with the defaults and a per-replica interface; every NBD listener takes
// connections to any address of its node, so to the VIPs too.
const vipBase = `cluster: lab
secret-file: /etc/tandem/secret
nodes:
  - name: alpha
    address: 192.0.2.11
  - name: beta
    address: 192.0.2.12
  - name: gamma
    address: 192.0.2.13
resources:
  - name: db
    size: 10G
    vip:
      address: 198.51.100.100/24
      interface: eth0
      announce-count: 3
      announce-interval: 20ms
      announce-repeat-count: 2
      announce-repeat-after: 2s
      probe-count: 4
      probe-interval: 250ms
    replicas:
      alpha:
        device: /dev/vg0/db
        address: 192.0.2.11:7789
        nbd-listen: "[::]:10809"
      beta:
        device: /dev/vg0/db
        address: 192.0.2.12:7789
        nbd-listen: 0.0.0.0:10809
  - name: web
    size: 1T
    replicas:
      alpha:
        device: /dev/vg0/web
        address: 192.0.2.11:7790
        nbd-listen: "[::]:10809"
      beta:
        device: /dev/vg0/web
        address: 192.0.2.12:7790
        nbd-listen: "[2001:db8::100]:10810"
        vip-interface: bond0.100
    vip: {address: "2001:db8::100/64", interface: eth1}
`

func TestParseVIP(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(vipBase))
	if err != nil {
		t.Fatal(err)
	}
	db, web := cfg.Resource("db"), cfg.Resource("web")
	want := vip.Config{Address: netip.MustParsePrefix("198.51.100.100/24"), Interface: "eth0",
		Announce: vip.Announce{Count: 3, Interval: 20 * time.Millisecond, RepeatCount: 2, RepeatAfter: 2 * time.Second},
		Probe:    vip.Probe{Count: 4, Interval: 250 * time.Millisecond}}
	for _, node := range []string{"alpha", "beta"} {
		if got, ok := db.VIPFor(node); !ok || got != want {
			t.Errorf("db VIP on %s = %+v, %v; want %+v", node, got, ok, want)
		}
	}
	if _, ok := db.VIPFor("gamma"); ok {
		t.Error("the witness got a VIP")
	}
	w6 := vip.Config{Address: netip.MustParsePrefix("2001:db8::100/64"), Interface: "eth1", Announce: vip.DefaultAnnounce(), Probe: vip.DefaultProbe()}
	if got, _ := web.VIPFor("alpha"); got != w6 {
		t.Errorf("web VIP on alpha = %+v, want %+v", got, w6)
	}
	w6.Interface = "bond0.100"
	if got, _ := web.VIPFor("beta"); got != w6 {
		t.Errorf("web VIP on beta (vip-interface) = %+v, want %+v", got, w6)
	}
	for _, r := range cfg.Resources {
		for _, rp := range r.Replicas {
			c, _ := r.VIPFor(rp.Node)
			if err := c.Check(); err != nil {
				t.Errorf("%s on %s: the vip package refuses what config accepted: %v", r.Name, rp.Node, err)
			}
		}
	}

	if vs := cfg.VIPs("beta"); len(vs) != 2 || vs["db"] != want || vs["web"] != w6 {
		t.Errorf("VIPs(beta) = %+v", vs)
	}
	if vs := cfg.VIPs("gamma"); len(vs) != 0 {
		t.Errorf("VIPs(gamma) = %+v", vs)
	}

	plain, err := Parse("tandem.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := plain.Resource("db").VIPFor("alpha"); ok {
		t.Error("a resource without vip has one")
	}
	if plain.Hash() == cfg.Hash() {
		t.Error("adding VIPs did not change the hash")
	}
	other, err := Parse("tandem.yaml", []byte(strings.Replace(vipBase, "probe-count: 4", "probe-count: 5", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if other.Hash() == cfg.Hash() {
		t.Error("changing probe-count did not change the hash")
	}
}

func TestParseVIPProblems(t *testing.T) {
	addr := "      address: 198.51.100.100/24\n"
	runProblemCases(t, vipBase, []problemCase{
		{"typo in a vip key", []string{"      announce-count: 3\n", "      anounce-count: 3 #A\n"},
			[]want{{"#A", "resources[0].vip.anounce-count", `did you mean "announce-count"?`}}},
		{"unknown vip key", []string{"      announce-count: 3\n", "      colour: red #A\n"},
			[]want{{"#A", "resources[0].vip.colour", "remove it (keys here: address, interface"}}},
		{"vip key at the resource level", []string{"    size: 10G\n", "    size: 10G\n    probe-count: 2 #A\n"},
			[]want{{"#A", "resources[0].probe-count", `"probe-count" belongs in resources[N].vip`}}},
		{"no prefix length", []string{addr, "      address: 198.51.100.100 #A\n"},
			[]want{{"#A", "resources[0].vip.address", `"198.51.100.100" has no prefix length; write ADDRESS/PREFIX`}}},
		{"not a CIDR", []string{addr, "      address: 198.51.100.300/24 #A\n"},
			[]want{{"#A", "resources[0].vip.address", `"198.51.100.300/24" is not ADDRESS/PREFIX`}}},
		{"prefix too long", []string{addr, "      address: 198.51.100.100/33 #A\n"},
			[]want{{"#A", "resources[0].vip.address", "is not ADDRESS/PREFIX"}}},
		{"network address", []string{addr, "      address: 198.51.100.0/24 #A\n"},
			[]want{{"#A", "resources[0].vip.address", "198.51.100.0/24 is the network address of 198.51.100.0/24"}}},
		{"broadcast address", []string{addr, "      address: 198.51.100.255/24 #A\n"},
			[]want{{"#A", "resources[0].vip.address", "is the broadcast address of 198.51.100.0/24"}}},
		{"IPv6 subnet-router anycast", []string{`"2001:db8::100/64"`, `"2001:db8::/64"`},
			[]want{{"    vip: {address", "resources[1].vip.address", "subnet-router anycast"}}},
		{"the VIP of two resources", []string{`"2001:db8::100/64"`, `198.51.100.100/25`, `"[2001:db8::100]:10810"`, `"[::]:10810"`},
			[]want{{"    vip: {address", "resources[1].vip.address", "198.51.100.100 is also the VIP of resource db (line 14); give each resource its own"}}},
		{"a node's own address", []string{addr, "      address: 192.0.2.12/24 #A\n"},
			[]want{{"#A", "resources[0].vip.address", "192.0.2.12 is the address of node beta (nodes[1], line 7); use an address of its own"}}},
		{"missing address", []string{addr, ""},
			[]want{{"    vip:\n", "resources[0].vip", `missing key "address"`}}},
		{"no interface for a replica", []string{"      interface: eth0\n", "", "      alpha:\n        device: /dev/vg0/db\n", "      alpha: #A\n        device: /dev/vg0/db\n",
			"      beta:\n        device: /dev/vg0/db\n", "      beta: #B\n        device: /dev/vg0/db\n"},
			[]want{{"#A", "resources[0].replicas.alpha", "no interface for the VIP on alpha; add interface: NAME to the vip, or vip-interface"},
				{"#B", "resources[0].replicas.beta", "no interface for the VIP on beta"}}},
		{"vip-interface without a vip", []string{"    vip: {address: \"2001:db8::100/64\", interface: eth1}\n", "", "        vip-interface: bond0.100\n", "        vip-interface: bond0.100 #A\n"},
			[]want{{"#A", "resources[1].replicas.beta.vip-interface", "vip-interface without a vip"}}},
		{"bad interface name", []string{"      interface: eth0\n", "      interface: eth0/1 #A\n"},
			[]want{{"#A", "resources[0].vip.interface", `"eth0/1" is not an interface name`}}},
		{"interface name too long", []string{"        vip-interface: bond0.100\n", "        vip-interface: a-sixteen-chars0 #A\n"},
			[]want{{"#A", "resources[1].replicas.beta.vip-interface", "longer than 15 characters"}}},
		{"announce-count 0", []string{"      announce-count: 3\n", "      announce-count: 0 #A\n"},
			[]want{{"#A", "resources[0].vip.announce-count", `"0" is not a whole number from 1 to 100`}}},
		{"probe-count not a number", []string{"      probe-count: 4\n", "      probe-count: many #A\n"},
			[]want{{"#A", "resources[0].vip.probe-count", `"many" is not a whole number from 0 to 20`}}},
		{"duration without a unit", []string{"      announce-repeat-after: 2s\n", "      announce-repeat-after: 5 #A\n"},
			[]want{{"#A", "resources[0].vip.announce-repeat-after", `"5" is not a duration; write a number with its unit`}}},
		{"probe interval too short", []string{"      probe-interval: 250ms\n", "      probe-interval: 1ms #A\n"},
			[]want{{"#A", "resources[0].vip.probe-interval", "1ms is not from 10ms to 5s"}}},
		{"negative interval", []string{"      announce-interval: 20ms\n", "      announce-interval: -1s #A\n"},
			[]want{{"#A", "resources[0].vip.announce-interval", "-1s is not from 0s to 1s"}}},
		{"default NBD listener on the node address", []string{"        nbd-listen: 0.0.0.0:10809\n", ""},
			[]want{{"      beta:\n        device: /dev/vg0/db", "resources[0].replicas.beta.nbd-listen", "nbd-listen 192.0.2.12:10809 (the default) of beta does not accept connections to the VIP 198.51.100.100"}}},
		{"IPv4 wildcard for an IPv6 VIP", []string{`nbd-listen: "[2001:db8::100]:10810"`, "nbd-listen: 0.0.0.0:10810 #A"},
			[]want{{"#A", "resources[1].replicas.beta.nbd-listen", `set nbd-listen: "[::]:10809"`}}},
		{"unix socket NBD listener", []string{`nbd-listen: "[2001:db8::100]:10810"`, "nbd-listen: unix:/run/tandem/nbd.sock #A"},
			[]want{{"#A", "resources[1].replicas.beta.nbd-listen", "does not accept connections to the VIP 2001:db8::100"}}},
		{"vip as a list", []string{"    vip:\n", "    vip: #A\n      - 198.51.100.100/24\n", addr, "", "      interface: eth0\n", "", "      announce-count: 3\n", "", "      announce-interval: 20ms\n", "", "      announce-repeat-count: 2\n", "", "      announce-repeat-after: 2s\n", "", "      probe-count: 4\n", "", "      probe-interval: 250ms\n", ""},
			[]want{{"      - 198", "resources[0].vip", "want a mapping of keys, found a list"}}},
	})
}

// Validating as a node checks that its VIP interfaces exist on this host.
func TestValidateLocalVIPInterface(t *testing.T) {
	ifs, err := net.Interfaces()
	if err != nil || len(ifs) == 0 {
		t.Skipf("no interfaces to name: %v", err)
	}
	present := ifs[0].Name
	_, cfg := setupLocal(t)
	for i := range cfg.Resources {
		for j := range cfg.Resources[i].Replicas {
			rp := &cfg.Resources[i].Replicas[j]
			rp.NBDListen = map[string]string{"alpha": "0.0.0.0:10809", "beta": "0.0.0.0:10810"}[rp.Node]
		}
	}
	cfg.Resources[0].VIP = &VIP{Address: netip.MustParsePrefix("198.51.100.100/24"), Interface: present,
		Announce: vip.DefaultAnnounce(), Probe: vip.DefaultProbe(), lines: lines{}}
	if err := cfg.Validate("alpha"); err != nil {
		t.Fatalf("VIP on %s, which exists: %v", present, err)
	}
	cfg.Resources[0].Replica("alpha").VIPInterface = "nosuch0"
	ps := Problems(cfg.Validate("alpha"))
	if len(ps) != 1 || ps[0].Path != "resources[0].replicas.alpha.vip-interface" || !strings.Contains(ps[0].Msg, "interface nosuch0 does not exist on this host") {
		t.Fatalf("missing interface: %v", ps)
	}
	// Other nodes' interfaces are theirs: not looked at here.
	cfg.Resources[0].Replica("beta").VIPInterface = "nosuch1"
	if err := cfg.Validate("wit"); err != nil {
		t.Errorf("validating as the witness: %v", err)
	}
}

// A Config built in code gets the VIP checks Parse does while reading.
func TestValidateVIPBuiltInCode(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(vipBase))
	if err != nil {
		t.Fatal(err)
	}
	cfg.parsed = false
	if err := cfg.Validate(""); err != nil {
		t.Fatalf("valid config built in code: %v", err)
	}
	cfg.Resources[0].VIP.Announce.Count = 0
	ps := Problems(cfg.Validate(""))
	if len(ps) != 1 || ps[0].Path != "resources[0].vip" || !strings.Contains(ps[0].Msg, "announce count 0") {
		t.Fatalf("got %v", ps)
	}
}
