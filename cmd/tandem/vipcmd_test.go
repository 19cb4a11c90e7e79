package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/tools/testenv"
)

// vipHead: two data nodes and a witness, before the resources.
const vipHead = `cluster: lab
secret-file: /etc/tandem/secret
nodes:
  - {name: alpha, address: 192.0.2.11}
  - {name: beta, address: 192.0.2.12}
  - {name: wit, address: 192.0.2.13}
resources:
`

// vipConfig: alpha puts both VIPs on IFACE, beta on a link that does not
// exist; wit holds no replica.
const vipConfig = vipHead + `  - name: db
    size: 1M
    vip: {address: 198.51.100.100/24, interface: IFACE}
    replicas:
      alpha: {device: /dev/vg0/db, address: "192.0.2.11:7789", nbd-listen: "[::]:10809"}
      beta: {device: /dev/vg0/db, address: "192.0.2.12:7789", nbd-listen: "[::]:10809", vip-interface: nosuch0}
  - name: web
    size: 1M
    vip: {address: "2001:db8::100/64", interface: IFACE}
    replicas:
      alpha: {device: /dev/vg0/web, address: "192.0.2.11:7790", nbd-listen: "[::]:10809"}
      beta: {device: /dev/vg0/web, address: "192.0.2.12:7790", nbd-listen: "[::]:10809", vip-interface: nosuch0}
`

func writeVIPConfig(t *testing.T, iface string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tandem.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(vipConfig, "IFACE", iface)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Without root: the addresses are nowhere here, so nothing is held; a
// missing interface is reported and fails the command; a witness has none.
func TestVIPStatusNotHeld(t *testing.T) {
	path := writeVIPConfig(t, "lo")
	out, errOut, err := execute(t, "--config", path, "vip", "status", "--node", "alpha")
	if err != nil {
		t.Fatalf("err %v, stderr %q", err, errOut)
	}
	for _, want := range []string{"RESOURCE  VIP                INTERFACE  STATE\n",
		"db        198.51.100.100/24  lo         not held\n", "web       2001:db8::100/64   lo         not held\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout %q lacks %q", out, want)
		}
	}

	out, _, err = execute(t, "--config", path, "vip", "status", "--node", "beta", "--json")
	if err == nil || !strings.Contains(err.Error(), "db: vip: no such interface: nosuch0") {
		t.Errorf("missing interface: err %v", err)
	}
	var st vipStatusJSON
	if jerr := json.Unmarshal([]byte(out), &st); jerr != nil {
		t.Fatalf("--json output %q: %v", out, jerr)
	}
	if st.Node != "beta" || len(st.VIPs) != 2 || st.VIPs[0].Interface != "nosuch0" || st.VIPs[0].Held || st.VIPs[0].Error == "" {
		t.Errorf("beta's status: %+v", st)
	}

	out, _, err = execute(t, "--config", path, "vip", "status", "--node", "wit")
	if err != nil || out != "node wit has no VIPs (no resource it holds a replica of has a vip)\n" {
		t.Errorf("witness: %q, %v", out, err)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(vipConfig, "198.51.100.100/24", "198.51.100.0/24", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, err = execute(t, "--config", bad, "vip", "status", "--node", "alpha")
	if err == nil || !strings.Contains(errOut, "bad.yaml:10: resources[0].vip.address: 198.51.100.0/24 is the network address") {
		t.Errorf("invalid file: err %v, stderr %q", err, errOut)
	}
}

// The built binary, run as the lab runs a node (ip netns exec), in a
// namespace of its own whose link holds one of the two VIPs and whose
// loopback has the other one by mistake.
func TestVIPStatusInNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip")
	bin := testenv.BuildTandem(t)
	ns := netnsAdd(t, "vipst")
	for _, args := range [][]string{
		{"link", "add", "vip0", "type", "veth", "peer", "name", "vip1"}, // this kernel has no dummy links
		{"link", "set", "vip0", "up"},
		{"link", "set", "lo", "up"},
		{"addr", "add", "198.51.100.100/25", "dev", "vip0"},
		{"addr", "add", "2001:db8::100/128", "dev", "lo"},
	} {
		testenv.Run(t, "ip", append([]string{"-n", ns}, args...)...)
	}
	path := writeVIPConfig(t, "vip0")
	out := testenv.Run(t, "ip", "netns", "exec", ns, bin, "--config", path, "vip", "status", "--node", "alpha", "--json")
	var st vipStatusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("--json output %q: %v", out, err)
	}
	want := vipStatusJSON{Node: "alpha", VIPs: []vipEntryJSON{
		{Resource: "db", Address: "198.51.100.100/24", Interface: "vip0", Held: true, Prefix: "198.51.100.100/25"},
		{Resource: "web", Address: "2001:db8::100/64", Interface: "vip0", Elsewhere: []string{"lo"}},
	}}
	if fmt.Sprint(st) != fmt.Sprint(want) {
		t.Errorf("status\n got %+v\nwant %+v", st, want)
	}
	out = testenv.Run(t, "ip", "netns", "exec", ns, bin, "--config", path, "vip", "status", "--node", "alpha")
	for _, s := range []string{"held as 198.51.100.100/25", "not held, also on lo"} {
		if !strings.Contains(out, s) {
			t.Errorf("table %q lacks %q", out, s)
		}
	}
}

// claimConfig: db's VIP on vip0 on both nodes, with a quick second burst.
const claimConfig = vipHead + `  - name: db
    size: 1M
    vip: {address: 198.51.100.100/24, interface: vip0, announce-repeat-after: 200ms}
    replicas:
      alpha: {device: /dev/vg0/db, address: "192.0.2.11:7789", nbd-listen: "[::]:10809"}
      beta: {device: /dev/vg0/db, address: "192.0.2.12:7789", nbd-listen: "[::]:10809"}
`

// netnsAdd makes a named network namespace, deleted at cleanup; the name
// carries the pid and the time so that parallel runs cannot collide.
func netnsAdd(t *testing.T, role string) string {
	t.Helper()
	ns := fmt.Sprintf("tandem-%s-%d-%d", role, os.Getpid(), time.Now().UnixNano()%1e9)
	testenv.Run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if _, stderr, err := testenv.RunErr("ip", "netns", "del", ns); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, stderr)
		}
	})
	return ns
}

// Moving a VIP by hand between two nodes, each in its own namespace, joined
// by a veth pair: beta's claim is refused while alpha holds the address
// (naming alpha's MAC), alpha releases, beta claims and waits for the
// second burst, release is idempotent.
func TestVIPClaimReleaseCLI(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip")
	bin := testenv.BuildTandem(t)
	nsA, nsB := netnsAdd(t, "vipa"), netnsAdd(t, "vipb")
	// Both ends are created straight in their namespaces: nothing appears
	// in the root namespace.
	testenv.Run(t, "ip", "link", "add", "vip0", "netns", nsA, "type", "veth", "peer", "name", "vip0", "netns", nsB)
	for _, ns := range []string{nsA, nsB} {
		testenv.Run(t, "ip", "-n", ns, "link", "set", "vip0", "up")
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(testenv.Run(t, "ip", "-n", nsA, "-j", "link", "show", "vip0")), &links); err != nil || len(links) != 1 {
		t.Fatalf("alpha's MAC: %v %v", links, err)
	}
	macA := links[0].Address
	path := filepath.Join(t.TempDir(), "tandem.yaml")
	if err := os.WriteFile(path, []byte(claimConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	tandem := func(ns, node string, args ...string) (string, string, error) {
		all := append([]string{"netns", "exec", ns, bin, "--config", path}, args...)
		return testenv.RunErr("ip", append(all, "--node", node)...)
	}

	// Carrier comes a moment after both ends are up; bounded wait.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, errOut, err := tandem(nsA, "alpha", "vip", "claim", "db")
		if err == nil {
			if !strings.Contains(out, "claimed 198.51.100.100/24 on vip0 for db; announced 5 times\n") {
				t.Errorf("alpha's claim said %q", out)
			}
			break
		}
		if !strings.Contains(errOut, "interface down") || time.Now().After(deadline) {
			t.Fatalf("alpha's claim: %v\n%s%s", err, out, errOut)
		}
		time.Sleep(50 * time.Millisecond)
	}

	_, errOut, err := tandem(nsB, "beta", "vip", "claim", "db")
	if err == nil || !strings.Contains(errOut, macA+" answered an ARP probe") || !strings.Contains(errOut, "in use") {
		t.Fatalf("beta's claim while alpha holds the VIP: err %v, stderr %q; want a refusal naming %s", err, errOut, macA)
	}
	if out, _, _ := tandem(nsB, "beta", "vip", "status"); !strings.Contains(out, "not held") {
		t.Fatalf("beta after the refused claim: %q", out)
	}

	for _, want := range []string{"released 198.51.100.100/24 from vip0 for db\n", "198.51.100.100/24 was not on vip0 for db: nothing to release\n"} {
		if out, errOut, err := tandem(nsA, "alpha", "vip", "release", "db"); err != nil || out != want {
			t.Fatalf("alpha's release: %v %q %q, want %q", err, out, errOut, want)
		}
	}
	out, errOut, err := tandem(nsB, "beta", "vip", "claim", "db", "--json")
	var res vipChangeJSON
	if err != nil || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("beta's claim after alpha's release: %v\n%s%s", err, out, errOut)
	}
	if want := (vipChangeJSON{Resource: "db", Address: "198.51.100.100/24", Interface: "vip0", Held: true, Announced: 5, Repeated: 5}); res != want {
		t.Fatalf("beta's claim: %+v, want %+v", res, want)
	}
	out, errOut, err = tandem(nsB, "beta", "vip", "claim", "db")
	if err != nil || !strings.Contains(out, "already held; announced again 198.51.100.100/24 on vip0") || !strings.Contains(out, "announced 5 more times after 200ms") {
		t.Fatalf("beta's second claim: %v\n%s%s", err, out, errOut)
	}
	if out, _, _ := tandem(nsB, "beta", "vip", "status"); !strings.Contains(out, "db        198.51.100.100/24  vip0       held") {
		t.Fatalf("beta's status after its claim: %q", out)
	}
	if out, _, _ := tandem(nsA, "alpha", "vip", "status"); !strings.Contains(out, "not held") {
		t.Fatalf("alpha's status after beta's claim: %q", out)
	}
	if _, errOut, err := tandem(nsB, "wit", "vip", "claim", "db"); err == nil || !strings.Contains(errOut, "node wit holds no replica of db") {
		t.Errorf("the witness claiming: %v %q", err, errOut)
	}
	if _, errOut, err := tandem(nsB, "beta", "vip", "claim", "nosuch"); err == nil || !strings.Contains(errOut, `no resource "nosuch"`) {
		t.Errorf("an unknown resource: %v %q", err, errOut)
	}
}

// The whole story with a real NBD client: alpha and beta each serve an
// export (of different sizes, so the client can tell them apart) in their
// own namespace; a client namespace reaches it through the VIP with nbdinfo.
// The VIP moves by hand from alpha to beta and the client's next nbdinfo
// reaches beta at once. Hosts on a bridge in a namespace of its own, lab
// addresses only inside the namespaces, no default route.
func TestVIPFailoverNBDClient(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip", "nbdinfo")
	bin := testenv.BuildTandem(t)
	br := netnsAdd(t, "vipbr")
	testenv.Run(t, "ip", "-n", br, "link", "add", "br0", "type", "bridge")
	testenv.Run(t, "ip", "-n", br, "link", "set", "br0", "up")
	hosts := []struct{ role, ns, addr string }{{"alpha", "", "198.51.100.1/24"}, {"beta", "", "198.51.100.2/24"}, {"client", "", "198.51.100.3/24"}}
	for i := range hosts {
		h := &hosts[i]
		h.ns = netnsAdd(t, "vip"+h.role)
		port := "p" + h.role
		testenv.Run(t, "ip", "link", "add", "eth0", "netns", h.ns, "type", "veth", "peer", "name", port, "netns", br)
		testenv.Run(t, "ip", "-n", br, "link", "set", port, "master", "br0", "up")
		for _, args := range [][]string{{"link", "set", "lo", "up"}, {"link", "set", "eth0", "up"}, {"addr", "add", h.addr, "dev", "eth0"}} {
			testenv.Run(t, "ip", append([]string{"-n", h.ns}, args...)...)
		}
	}
	alpha, beta, client := hosts[0].ns, hosts[1].ns, hosts[2].ns

	dir := t.TempDir()
	path := filepath.Join(dir, "tandem.yaml")
	if err := os.WriteFile(path, []byte(strings.Replace(claimConfig, "interface: vip0", "interface: eth0", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, ns := range []string{alpha, beta} {
		img := filepath.Join(dir, fmt.Sprintf("disk%d.img", i))
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, int64(i+1)<<20); err != nil { // alpha 1 MiB, beta 2 MiB
			t.Fatal(err)
		}
		ready := filepath.Join(dir, fmt.Sprintf("ready%d", i))
		p := testenv.Start(t, "ip", "netns", "exec", ns, bin, "serve", "--ready-file", ready, "--listen", "0.0.0.0:10809", "--export", "db="+img)
		p.WaitFor(t, "the ready file", func() bool { b, err := os.ReadFile(ready); return err == nil && len(b) > 0 })
	}
	vipCmd := func(ns, node string, args ...string) string {
		return testenv.Run(t, "ip", append([]string{"netns", "exec", ns, bin, "--config", path, "vip"}, append(args, "--node", node)...)...)
	}
	size := func() string {
		return strings.TrimSpace(testenv.Run(t, "ip", "netns", "exec", client, "nbdinfo", "--size", "nbd://198.51.100.100:10809/db"))
	}

	// Carrier on fresh veths comes a moment after they are up: wait
	// (bounded) for alpha's first claim to go through.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, errOut, err := testenv.RunErr("ip", "netns", "exec", alpha, bin, "--config", path, "vip", "claim", "db", "--node", "alpha")
		if err == nil {
			break
		}
		if !strings.Contains(errOut, "interface down") || time.Now().After(deadline) {
			t.Fatalf("alpha's claim: %v: %s", err, errOut)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := size(); got != "1048576" {
		t.Fatalf("through the VIP on alpha the client sees size %s, want alpha's 1048576", got)
	}
	vipCmd(alpha, "alpha", "release", "db")
	vipCmd(beta, "beta", "claim", "db")
	if got := size(); got != "2097152" {
		t.Fatalf("after the move the client sees size %s, want beta's 2097152", got)
	}
	// And back: beta releases, alpha claims.
	vipCmd(beta, "beta", "release", "db")
	vipCmd(alpha, "alpha", "claim", "db")
	if got := size(); got != "1048576" {
		t.Fatalf("after moving back the client sees size %s, want alpha's 1048576", got)
	}
}
