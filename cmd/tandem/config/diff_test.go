package config

import (
	"slices"
	"strings"
	"testing"
)

func TestDiff(t *testing.T) {
	a, err := Parse("tandem.yaml", []byte(alertsBase))
	if err != nil {
		t.Fatal(err)
	}
	// Moving keys to other lines is no change.
	same, err := Parse("tandem.yaml", []byte(strings.Replace(alertsBase, "cluster: lab\n", "# a comment\ncluster: lab\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(a, same); len(d) != 0 {
		t.Errorf("comment only: %v", d)
	}
	edits := strings.NewReplacer("max-rate: 1G/s", "max-rate: 2G/s", "split-brain: discard-zero-changes", "split-brain: disconnect",
		"protocol: B", "protocol: C", "    address: 192.0.2.13\n", "    address: 192.0.2.99\n", "timeout: 45s", "timeout: 50s")
	b, err := Parse("tandem.yaml", []byte(edits.Replace(alertsBase)))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"Nodes[gamma].Address", "Resources[web].Protocol", "Resources[web].Resync.MaxRate", "Resources[web].SplitBrain",
		"Alerts[/usr/local/sbin/tandem-mail].Timeout"}
	got := Diff(a, b)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("diff:\n got  %v\n want %v", got, want)
	}
	fewer, err := Parse("tandem.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(a, fewer); !slices.Equal(d, []string{"Alerts"}) {
		t.Errorf("alerts removed: %v", d)
	}
}

// Nodes that differ in their cluster-layer addresses or timing warn of
// it: the hash covers them (and files without them keep their hash).
func TestHashCoversClusterLayerKeys(t *testing.T) {
	a, err := Parse("tandem.yaml", []byte(layered))
	if err != nil {
		t.Fatal(err)
	}
	for _, edit := range [][2]string{
		{"gossip: 192.0.2.1:7946", "gossip: 192.0.2.1:7956"},
		{"resources:\n", "timing:\n  lease: 3s\nresources:\n"},
	} {
		b, err := Parse("tandem.yaml", []byte(strings.Replace(layered, edit[0], edit[1], 1)))
		if err != nil {
			t.Fatalf("%q: %v", edit[1], err)
		}
		if a.Hash() == b.Hash() {
			t.Errorf("%q kept the hash", edit[1])
		}
	}
	plain, err := Parse("tandem.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if c := plain.canonical(); c.Timing != nil || c.Nodes[0].Gossip != "" {
		t.Errorf("a file without the cluster layer hashes timing or gossip: %+v", c)
	}
}
