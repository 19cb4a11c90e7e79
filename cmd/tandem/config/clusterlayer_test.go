package config

import (
	"strings"
	"testing"
)

const layered = `cluster: lab
secret-file: /etc/tandem/secret
nodes:
  - name: alpha
    address: 192.0.2.1
    gossip: 192.0.2.1:7946
    authority: 192.0.2.1:7947
  - name: beta
    address: 192.0.2.2
    gossip: 192.0.2.2:7946
    authority: 192.0.2.2:7947
  - name: wit
    address: 192.0.2.3
    gossip: 192.0.2.3:7946
    authority: 192.0.2.3:7947
resources:
  - name: r0
    size: 1M
    replicas:
      alpha:
        device: /dev/a
        address: 192.0.2.1:7789
      beta:
        device: /dev/b
        address: 192.0.2.2:7789
`

func TestClusterLayerKeys(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(layered))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(""); err != nil {
		t.Fatal(err)
	}
	if !cfg.ClusterLayer() || cfg.Nodes[2].Gossip != "192.0.2.3:7946" || cfg.Nodes[0].Authority != "192.0.2.1:7947" {
		t.Fatalf("cluster layer %v, nodes %+v", cfg.ClusterLayer(), cfg.Nodes)
	}
	manual := strings.NewReplacer("    gossip: 192.0.2.1:7946\n", "", "    gossip: 192.0.2.2:7946\n", "", "    gossip: 192.0.2.3:7946\n", "",
		"    authority: 192.0.2.1:7947\n", "", "    authority: 192.0.2.2:7947\n", "", "    authority: 192.0.2.3:7947\n", "").Replace(layered)
	if cfg, err := Parse("tandem.yaml", []byte(manual)); err != nil || cfg.ClusterLayer() {
		t.Fatalf("without the keys: %v, cluster layer %v", err, cfg.ClusterLayer())
	}
	for _, c := range []struct{ name, from, to, want string }{
		{"one node without gossip", "    gossip: 192.0.2.2:7946\n", "", "nodes[1].gossip: node beta has no gossip address"},
		{"address used twice", "authority: 192.0.2.3:7947", "authority: 192.0.2.3:7946", "192.0.2.3:7946 is also node wit's gossip address"},
		{"wildcard", "gossip: 192.0.2.1:7946", "gossip: 0.0.0.0:7946", "listens everywhere"},
		{"no port", "authority: 192.0.2.1:7947", "authority: 192.0.2.1", "is not HOST:PORT"},
		{"two voters", "  - name: wit\n    address: 192.0.2.3\n    gossip: 192.0.2.3:7946\n    authority: 192.0.2.3:7947\n", "", "2 nodes (alpha, beta): the cluster layer's quorum needs an odd number of voters"},
	} {
		t.Run(c.name, func(t *testing.T) {
			text := strings.Replace(layered, c.from, c.to, 1)
			if text == layered {
				t.Fatal("the case changes nothing")
			}
			cfg, err := Parse("tandem.yaml", []byte(text))
			if err == nil {
				err = cfg.Validate("")
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}
