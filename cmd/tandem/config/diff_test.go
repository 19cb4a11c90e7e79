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
