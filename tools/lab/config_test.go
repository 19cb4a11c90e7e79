package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
)

// TestConfigYAML: the generated configuration is accepted by the strict
// reader, and says what the lab promises: three nodes on their lab
// addresses, the data nodes fenced through their own BMCs, every resource
// with its VIP on the lab interface and an NBD listener that accepts it.
func TestConfigYAML(t *testing.T) {
	dir := t.TempDir()
	l := layout{dir: dir}
	p := Params{Size: 8 << 20, Resources: 3}
	yaml := configYAML(l, p)
	cfg, err := config.Parse(l.config(), []byte(yaml))
	if err != nil {
		t.Fatalf("generated configuration refused: %v\n%s", err, yaml)
	}
	if got := cfg.DataNodes(); strings.Join(got, ",") != "alpha,bravo" {
		t.Errorf("data nodes %v, want alpha, bravo", got)
	}
	if got := cfg.Witnesses(); strings.Join(got, ",") != "witness" {
		t.Errorf("witnesses %v, want witness", got)
	}
	for _, name := range clusterNodes {
		n, err := cfg.Node(name)
		if err != nil {
			t.Fatal(err)
		}
		if n.Address != hostAddr[name].String() {
			t.Errorf("%s: address %s, want %s", name, n.Address, hostAddr[name])
		}
		if n.AdminSocket != l.adminSocket(name) || n.DataDir != l.dataDir(name) {
			t.Errorf("%s: admin socket %s, data dir %s: not under the lab directory", name, n.AdminSocket, n.DataDir)
		}
		bmc, hasBMC := bmcAddr[name]
		if !hasBMC {
			if len(n.Fencing) != 0 {
				t.Errorf("%s has fencing %+v; only data nodes have BMCs", name, n.Fencing)
			}
			continue
		}
		if len(n.Fencing) != 1 {
			t.Fatalf("%s: %d fencing levels, want 1 (its BMC)", name, len(n.Fencing))
		}
		f := n.Fencing[0]
		if f.Type != config.FenceIPMI || f.Address != bmc.String() || f.Port != bmcPort || f.Username != bmcUser ||
			f.PasswordFile != l.bmcPassword() || f.CipherSuite != 3 {
			t.Errorf("%s: fencing %+v, want ipmi %s:%d as %s with cipher suite 3", name, f, bmc, bmcPort, bmcUser)
		}
	}
	if len(cfg.Resources) != p.Resources {
		t.Fatalf("%d resources, want %d", len(cfg.Resources), p.Resources)
	}
	for i, r := range cfg.Resources {
		if r.Name != fmt.Sprintf("r%d", i) || r.Size != p.Size {
			t.Errorf("resource %d: %s of %d bytes", i, r.Name, r.Size)
		}
		if r.VIP == nil || r.VIP.Address.String() != fmt.Sprintf("198.51.100.%d/24", 100+i) || r.VIP.Interface != ifName {
			t.Errorf("%s: vip %+v, want 198.51.100.%d/24 on %s", r.Name, r.VIP, 100+i, ifName)
		}
		for _, n := range dataNodes {
			rep := r.Replica(n)
			if rep == nil {
				t.Fatalf("%s has no replica on %s", r.Name, n)
			}
			if want := fmt.Sprintf("%s:%d", hostAddr[n], replPortBase+i); rep.Address != want {
				t.Errorf("%s on %s: replication address %s, want %s", r.Name, n, rep.Address, want)
			}
			if rep.Device != l.disk(n, r.Name) || !rep.InternalMeta() {
				t.Errorf("%s on %s: device %s meta %s", r.Name, n, rep.Device, rep.Meta)
			}
		}
	}
	if got := URI(0); got != "nbd://198.51.100.100:10809/r0" {
		t.Errorf("URI(0) = %s", got)
	}

	// With its files in place it validates for the witness, which checks
	// the password file of every BMC it would fence through.
	for _, d := range []string{l.disks(), l.dataDir(Witness)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{l.secret(), l.bmcPassword()} {
		if err := os.WriteFile(f, []byte("0123456789abcdef\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(l.alertProgram(), []byte(alertScript(l)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(Witness); err != nil {
		t.Errorf("does not validate for the witness: %v", err)
	}
	// Every daemon's events reach the lab's alert program.
	if len(cfg.Alerts) != 1 || cfg.Alerts[0].Path != l.alertProgram() || cfg.Alerts[0].Kinds != nil {
		t.Errorf("alerts %+v, want the lab's program for every kind", cfg.Alerts)
	}
	// The disks hold the data and the internal metadata.
	size, err := diskSize(cfg, "r0")
	if err != nil {
		t.Fatal(err)
	}
	if size <= p.Size {
		t.Errorf("disk size %d leaves no room for metadata behind %d bytes of data", size, p.Size)
	}
}

func TestParamsCheck(t *testing.T) {
	for _, p := range []Params{{Size: 0, Resources: 1}, {Size: 4095, Resources: 1}, {Size: 4096, Resources: 0}, {Size: 4096, Resources: maxResources + 1},
		{Size: 4096, Resources: 1, FailbackAuto: true}, {Size: 4096, Resources: 1, ClusterLayer: true, FailbackAfter: time.Millisecond}} {
		if err := p.check(); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	if err := DefaultParams.check(); err != nil {
		t.Errorf("default params refused: %v", err)
	}
}

// TestNames: two directories never share a namespace name, and a
// directory always maps to the same ones (Down finds them from it).
func TestNames(t *testing.T) {
	a, b := newNames("/tmp/lab-a"), newNames("/tmp/lab-b")
	if a.bridgeNS() == b.bridgeNS() || a.netns(Alpha) == b.netns(Alpha) {
		t.Errorf("labs in two directories share namespace names: %s", a.netns(Alpha))
	}
	if newNames("/tmp/lab-a/").netns(Alpha) != a.netns(Alpha) {
		t.Error("the same directory, spelled with a trailing slash, maps to other names")
	}
	seen := map[string]bool{}
	for _, ns := range a.allNetns() {
		if seen[ns] {
			t.Errorf("namespace %s twice", ns)
		}
		seen[ns] = true
	}
	for _, h := range hosts {
		if len(port(h)) > 15 {
			t.Errorf("port name %s is longer than an interface name may be", port(h))
		}
	}
}

// TestRuleset: an isolation drops a host's port both ways and towards the
// bridge namespace (the BMCs); a cut drops only the frames between two
// ports.
func TestRuleset(t *testing.T) {
	f := faults{Isolated: []string{Client, Client}, Cuts: [][2]string{{Bravo, Alpha}, {Alpha, Bravo}}}
	f.normalize()
	if len(f.Isolated) != 1 || len(f.Cuts) != 1 || f.Cuts[0] != [2]string{Alpha, Bravo} {
		t.Fatalf("normalize: %+v", f)
	}
	rs := f.ruleset()
	for _, want := range []string{
		`iifname "p-client" drop`, `oifname "p-client" drop`,
		`iifname "p-alpha" oifname "p-bravo" drop`, `iifname "p-bravo" oifname "p-alpha" drop`,
		"hook input", "hook output", "hook forward",
	} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	if strings.Contains(rs, `"p-witness"`) {
		t.Errorf("ruleset touches an unaffected host:\n%s", rs)
	}
}

func TestLayoutUnderDir(t *testing.T) {
	l := layout{dir: "/x/lab"}
	for _, p := range append(l.made(), l.procRecord(Alpha), l.disk(Alpha, "r0"), filepath.Join(l.bmcDir(Bravo), "hook")) {
		if !strings.HasPrefix(p, "/x/lab/") {
			t.Errorf("%s is outside the lab directory", p)
		}
	}
}

// TestConfigYAMLFailback: with FailbackAuto every resource says failback:
// auto, and FailbackAfter becomes timing.failback-after; without them the
// file keeps failback manual and the default timing.
func TestConfigYAMLFailback(t *testing.T) {
	l := layout{dir: t.TempDir()}
	for _, p := range []Params{
		{Size: 8 << 20, Resources: 2, ClusterLayer: true},
		{Size: 8 << 20, Resources: 2, ClusterLayer: true, FailbackAuto: true, FailbackAfter: 3 * time.Second},
	} {
		if err := p.check(); err != nil {
			t.Fatalf("%+v refused: %v", p, err)
		}
		yaml := configYAML(l, p)
		cfg, err := config.Parse(l.config(), []byte(yaml))
		if err != nil {
			t.Fatalf("%+v: generated configuration refused: %v\n%s", p, err, yaml)
		}
		want, after := config.FailbackManual, time.Duration(0)
		if p.FailbackAuto {
			want, after = config.FailbackAuto, p.FailbackAfter
		}
		for _, r := range cfg.Resources {
			if r.Failback != want || r.PreferredPrimary != Alpha {
				t.Errorf("%+v: %s has failback %q, preferred %q; want %q, alpha", p, r.Name, r.Failback, r.PreferredPrimary, want)
			}
		}
		if cfg.Timing.FailbackAfter != after {
			t.Errorf("%+v: failback-after %v, want %v", p, cfg.Timing.FailbackAfter, after)
		}
	}
}
