package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon/daemontest"
)

func TestAdjust(t *testing.T) {
	lab := daemontest.NewLab(t)
	c := []string{"--config", lab.Path}
	for _, r := range []string{"r0", "r1"} {
		mustRun(t, append(c, "create-md", r, "--node", "alpha")...)
	}
	fs := startFakeDaemon(t, lab)
	args := func(a ...string) []string { return append(append(append([]string{}, c...), a...), "--node", "alpha") }
	orig, err := os.ReadFile(lab.Path)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(old, new string) {
		t.Helper()
		b, err := os.ReadFile(lab.Path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), old) {
			t.Fatalf("%q is not in the file", old)
		}
		daemontest.Write(t, lab.Path, strings.Replace(string(b), old, new, 1), 0o644)
	}
	v := fs.Get("r0")

	if out := mustRun(t, args("adjust")...); !strings.Contains(out, "nothing to change") {
		t.Errorf("adjust of the same file: %q", out)
	}
	edit("    size: 1M\n", "    size: 1M\n    resync:\n      max-rate: 5M\n    split-brain: discard-least-changes\n")
	if out := mustRun(t, args("adjust", "--dry-run")...); !strings.Contains(out, "would change Resources[r0].Resync.MaxRate, Resources[r0].SplitBrain") {
		t.Errorf("adjust --dry-run: %q", out)
	}
	if len(v.Tunings()) != 0 {
		t.Fatalf("a dry run tuned the volume: %+v", v.Tunings())
	}
	if out := mustRun(t, args("adjust")...); !strings.Contains(out, "changed Resources[r0].Resync.MaxRate, Resources[r0].SplitBrain") {
		t.Errorf("adjust: %q", out)
	}
	if len(v.Tunings()) != 1 || v.Tunings()[0].Resync.MaxRate != 5<<20 || v.Tunings()[0].SplitBrain != "discard-least-changes" {
		t.Fatalf("the volume was tuned with %+v", v.Tunings())
	}
	if len(fs.Get("r1").Tunings()) != 0 {
		t.Errorf("r1, unchanged, was tuned: %+v", fs.Get("r1").Tunings())
	}
	// The daemon now runs the file: its hash is the file's.
	nc, err := config.Load(lab.Path)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := daemon.NewClient(lab.Config.Nodes[0].AdminSocket, "alpha").Status(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := ns.Nodes["alpha"].ConfigHash; got != nc.Hash() {
		t.Errorf("config hash after adjust %s, the file's %s", got, nc.Hash())
	}

	// Alerts come and go without a restart.
	prog := lab.Dir + "/alert.sh"
	daemontest.Write(t, prog, "#!/bin/sh\nexit 0\n", 0o755)
	edit("resources:\n", "alerts:\n  - path: "+prog+"\n    kinds: [admin]\nresources:\n")
	if out := mustRun(t, args("adjust")...); !strings.Contains(out, "changed Alerts") {
		t.Errorf("adjust with alerts: %q", out)
	}
	ns, err = daemon.NewClient(lab.Config.Nodes[0].AdminSocket, "alpha").Status(t.Context(), "")
	if err != nil || len(ns.Alerts) != 1 || ns.Alerts[0].Path != prog {
		t.Fatalf("alerts after adjust: %+v %v", ns.Alerts, err)
	}

	// The link's protocol and compression: the volume gets them (it
	// restarts its session); r1 is not touched.
	edit("    size: 1M\n", "    size: 1M\n    protocol: B\n    compression: zstd\n")
	if out := mustRun(t, args("adjust")...); !strings.Contains(out, "changed Resources[r0].Protocol, Resources[r0].Compression") {
		t.Errorf("adjust of the protocol: %q", out)
	}
	if l := v.Links(); len(l) != 1 || l[0].Protocol != "B" || l[0].Compression != "zstd" || l[0].TLS != nil {
		t.Fatalf("the volume's link settings: %+v", l)
	}
	if len(fs.Get("r1").Links()) != 0 {
		t.Errorf("r1, unchanged, got link settings: %+v", fs.Get("r1").Links())
	}
	if out := mustRun(t, args("adjust")...); !strings.Contains(out, "nothing to change") || len(v.Links()) != 1 {
		t.Errorf("a second adjust of the same file: %q, links %+v", out, v.Links())
	}

	// The link's timing: every volume takes it, no session restarts.
	edit("resources:\n", "timing:\n  ping-timeout: 9s\n  ack-timeout: 40s\nresources:\n")
	if out := mustRun(t, args("adjust")...); !strings.Contains(out, "changed Timing.PingTimeout, Timing.AckTimeout") {
		t.Errorf("adjust of the link timing: %q", out)
	}
	for _, r := range []string{"r0", "r1"} {
		tu := fs.Get(r).Tunings()
		if len(tu) == 0 || tu[len(tu)-1].Timing.PingTimeout != 9*time.Second || tu[len(tu)-1].Timing.AckTimeout != 40*time.Second {
			t.Errorf("%s tuned with %+v, want the new timing", r, tu)
		}
	}
	if len(v.Links()) != 1 {
		t.Errorf("a timing change restarted the link: %+v", v.Links())
	}

	// What needs a restart: nothing is applied, the keys are named.
	edit("    size: 1M\n", "    size: 1M\n    al-extents: 7\n")
	edit("max-rate: 5M", "max-rate: 7M")
	edit("protocol: B", "protocol: A")
	out := mustFail(t, "the changes need a daemon restart: Resources[r0].ALExtents (only alerts", args("adjust", "--json")...)
	if !strings.Contains(out, `"code": "needs_restart"`) {
		t.Errorf("adjust --json refusal: %s", out)
	}
	if len(v.Tunings()) != 2 || len(v.Links()) != 1 {
		t.Errorf("a refused adjust tuned the volume: %+v, %+v", v.Tunings(), v.Links())
	}
	// A file that does not parse changes nothing either (the CLI reads
	// it first; the daemon's own check is TestAdjustRefusesAnInvalidFile).
	daemontest.Write(t, lab.Path, strings.Replace(string(orig), "cluster: lab", "cluster: lab\ncolour: blue", 1), 0o644)
	mustFail(t, `colour: unknown key "colour"`, args("adjust")...)
	if len(v.Tunings()) != 2 || len(v.Links()) != 1 || v.Calls()[len(v.Calls())-1] != "tune" {
		t.Errorf("an invalid file tuned the volume: %+v", v.Tunings())
	}
}
