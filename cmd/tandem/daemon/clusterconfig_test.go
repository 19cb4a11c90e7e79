package daemon

import (
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cmd/tandem/config"
)

// TestMachineConfigFailback: the file's failback and failback-after reach
// the decision machine (they once stopped at the parser: failback: auto
// could not be configured at all).
func TestMachineConfigFailback(t *testing.T) {
	const file = `cluster: c
secret-file: /etc/tandem/secret
timing:
  failback-after: 3s
nodes:
  - name: alpha
    address: 192.0.2.11
  - name: bravo
    address: 192.0.2.12
  - name: witness
    address: 192.0.2.13
resources:
  - name: r0
    size: 1G
    preferred-primary: alpha
    failback: auto
    replicas:
      alpha: {device: /dev/vg0/r0, address: 192.0.2.11:7789}
      bravo: {device: /dev/vg0/r0, address: 192.0.2.12:7789}
  - name: r1
    size: 1G
    preferred-primary: bravo
    replicas:
      alpha: {device: /dev/vg0/r1, address: 192.0.2.11:7790}
      bravo: {device: /dev/vg0/r1, address: 192.0.2.12:7790}
`
	cfg, err := config.Parse("tandem.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	node, err := cfg.Node("alpha")
	if err != nil {
		t.Fatal(err)
	}
	mc := (&Daemon{cfg: cfg, node: node}).machineConfig()
	if len(mc.Resources) != 2 {
		t.Fatalf("machine resources %+v", mc.Resources)
	}
	r0, r1 := mc.Resources[0], mc.Resources[1]
	if r0.Failback != cluster.FailbackAuto || r0.FailbackAfter != 3*time.Second {
		t.Errorf("r0: failback %q after %v; want auto after 3s", r0.Failback, r0.FailbackAfter)
	}
	if r1.Failback != cluster.FailbackManual {
		t.Errorf("r1: failback %q; want manual (the default)", r1.Failback)
	}
	if _, err := cluster.NewMachine(mc); err != nil {
		t.Errorf("the machine refuses the configuration: %v", err)
	}
}
