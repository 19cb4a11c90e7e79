package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon/daemontest"
)

func TestEventsCommand(t *testing.T) {
	lab := daemontest.NewLab(t)
	c := []string{"--config", lab.Path}
	for _, r := range []string{"r0", "r1"} {
		mustRun(t, append(c, "create-md", r, "--node", "alpha")...)
	}
	mustFail(t, "tandem daemon is not running for node alpha", append(c, "events", "--node", "alpha")...)
	startFakeDaemon(t, lab)
	mustRun(t, append(c, "promote", "r0", "--node", "alpha")...)

	// --since 0 replays what the daemon holds: its start, then the
	// promotion (volume changes may come between, from the watcher).
	out := mustRun(t, append(c, "events", "--node", "alpha", "--since", "0", "--count", "2", "--json")...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("--count 2 printed %d lines:\n%s", len(lines), out)
	}
	var evs []daemon.Event
	for _, l := range lines {
		var ev daemon.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("--json line %q: %v", l, err)
		}
		evs = append(evs, ev)
	}
	if evs[0].Kind != daemon.KindDaemon || evs[0].Seq != 1 || evs[0].Node != "alpha" || evs[1].Seq != 2 {
		t.Errorf("events: %+v", evs)
	}
	// The admin action is in the replay, in human form: time, node, kind,
	// resource, text (after seq 1: the admin action and the volume change,
	// in either order).
	found := false
	for _, l := range strings.Split(mustRun(t, append(c, "events", "--node", "alpha", "--since", "1", "--count", "2")...), "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && f[1] == "alpha" && f[2] == "admin" && f[3] == "r0" && strings.Contains(l, "promote done") {
			found = true
		}
	}
	if !found {
		t.Errorf("the human replay lacks the promotion's admin event")
	}
	// --now prints what the daemon holds and exits: at least the start
	// and the admin action, each line once, in order.
	now := strings.Split(strings.TrimSpace(mustRun(t, append(c, "events", "--node", "alpha", "--now", "--json")...)), "\n")
	var last uint64
	admin := false
	for _, l := range now {
		var ev daemon.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Seq <= last {
			t.Fatalf("--now line %q after seq %d: %v", l, last, err)
		}
		last = ev.Seq
		admin = admin || ev.Kind == daemon.KindAdmin
	}
	if len(now) < 2 || !admin {
		t.Errorf("--now printed %d events, admin %v:\n%s", len(now), admin, strings.Join(now, "\n"))
	}
	// Filters: the admin actions about r1 only (none, but the daemon's
	// start is about no resource and shows), then every admin action.
	mustRun(t, append(c, "promote", "r1", "--node", "alpha")...)
	kinds := func(args ...string) []string {
		var out []string
		for _, l := range strings.Split(strings.TrimSpace(mustRun(t, append(append(c, "events", "--node", "alpha", "--now", "--json"), args...)...)), "\n") {
			var ev daemon.Event
			if err := json.Unmarshal([]byte(l), &ev); err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			out = append(out, ev.Kind+":"+ev.Resource)
		}
		return out
	}
	if got := strings.Join(kinds("--kind", "admin,daemon", "--resource", "r1"), " "); got != "daemon: admin:r1" {
		t.Errorf("--kind admin,daemon --resource r1: %s", got)
	}
	if got := strings.Join(kinds("--kind", "admin"), " "); got != "admin:r0 admin:r1" {
		t.Errorf("--kind admin: %s", got)
	}
	mustFail(t, `--kind "admn": want one of member, quorum`, append(c, "events", "--node", "alpha", "--kind", "admn")...)
	mustFail(t, "unknown command \"extra\"", append(c, "events", "extra", "--node", "alpha")...)
}

func TestStatusWarnsWhenNodesDisagree(t *testing.T) {
	var b strings.Builder
	printStatus(&b, daemon.NodeStatus{Node: "alpha", Cluster: "lab", Version: "v1", Nodes: map[string]daemon.SoftState{
		"alpha": {Version: "v1", ConfigHash: "h1"}, "beta": {Version: "v2", ConfigHash: "h1"}}}, false)
	if !strings.Contains(b.String(), "WARNING: node beta runs version v2 (here v1)") {
		t.Errorf("status of disagreeing nodes:\n%s", b.String())
	}
	b.Reset()
	printStatus(&b, daemon.NodeStatus{Node: "alpha", Nodes: map[string]daemon.SoftState{"alpha": {Version: "v1"}, "beta": {Version: "v1"}}}, false)
	if strings.Contains(b.String(), "WARNING") {
		t.Errorf("status of agreeing nodes warns:\n%s", b.String())
	}
}

func TestStatusWarnsOfAFailingAlert(t *testing.T) {
	at := time.Date(2026, 12, 3, 13, 0, 0, 0, time.UTC)
	ns := daemon.NodeStatus{Node: "alpha", Alerts: []daemon.AlertStatus{
		{Path: "/usr/local/sbin/tandem-mail", Recipient: "oncall@example.com", Runs: 7, Failures: 2, LostEvents: 5,
			LastFailure: &daemon.AlertFailure{Time: at, Seq: 41, Kind: "fence", Error: "exit status 1"}},
		{Path: "/usr/local/sbin/tandem-log", Runs: 9},
	}}
	var b strings.Builder
	printStatus(&b, ns, false)
	want := "WARNING: alert /usr/local/sbin/tandem-mail for oncall@example.com: 2 of 7 runs failed, the last at 2026-12-03T13:00:00Z (fence event 41): exit status 1\n"
	if !strings.Contains(b.String(), want) || strings.Count(b.String(), "WARNING") != 1 || strings.Contains(b.String(), "tandem-log") {
		t.Errorf("status:\n%s\nwant the one warning %q", b.String(), want)
	}
	b.Reset()
	printStatus(&b, ns, true)
	for _, w := range []string{"alert /usr/local/sbin/tandem-mail for oncall@example.com: 7 runs, 2 failed, 5 events lost (it fell behind)\n",
		"alert /usr/local/sbin/tandem-log: 9 runs, 0 failed\n"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("status -v:\n%s\nwant %q", b.String(), w)
		}
	}
}
