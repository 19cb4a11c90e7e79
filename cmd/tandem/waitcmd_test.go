package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon/daemontest"
	"github.com/tandem-ha/tandem/replicate"
)

func TestWaitReached(t *testing.T) {
	up := func(f func(*daemon.ResourceStatus)) daemon.ResourceStatus {
		rs := daemon.ResourceStatus{Up: true}
		rs.Resource, rs.Role, rs.Disk, rs.Conn, rs.PeerDisk = "r0", replicate.Secondary, replicate.UpToDate, replicate.Connected, replicate.UpToDate
		if f != nil {
			f(&rs)
		}
		return rs
	}
	for _, c := range []struct {
		name    string
		rs      daemon.ResourceStatus
		cond    string
		cluster bool
		ok      bool
		gives   bool // why is set: it cannot come by itself
	}{
		{"in sync", up(nil), "in-sync", false, true, false},
		{"resync running", up(func(rs *daemon.ResourceStatus) {
			rs.Conn, rs.Resync = replicate.SyncSource, &replicate.Progress{}
		}), "in-sync", false, false, false},
		{"resync running is connected", up(func(rs *daemon.ResourceStatus) { rs.Conn = replicate.SyncTarget }), "connected", false, true, false},
		{"out of sync", up(func(rs *daemon.ResourceStatus) { rs.OutOfSync = 4096 }), "in-sync", false, false, false},
		{"peer outdated", up(func(rs *daemon.ResourceStatus) { rs.PeerDisk = replicate.Outdated }), "in-sync", false, false, false},
		{"connecting", up(func(rs *daemon.ResourceStatus) { rs.Conn = replicate.Connecting }), "connected", false, false, false},
		{"standalone", up(func(rs *daemon.ResourceStatus) { rs.Conn = replicate.StandAlone }), "in-sync", false, false, true},
		{"standalone, cluster layer", up(func(rs *daemon.ResourceStatus) { rs.Conn = replicate.StandAlone }), "connected", true, false, false},
		{"standalone is up", up(func(rs *daemon.ResourceStatus) { rs.Conn = replicate.StandAlone }), "up", false, true, false},
		{"standalone can be promoted", up(func(rs *daemon.ResourceStatus) { rs.Conn = replicate.StandAlone }), "primary", false, false, false},
		{"down", daemon.ResourceStatus{}, "up", false, false, false},
		{"down, standalone", daemon.ResourceStatus{Status: replicate.Status{Conn: replicate.StandAlone}}, "connected", false, false, false},
		{"primary", up(func(rs *daemon.ResourceStatus) { rs.Role = replicate.Primary }), "primary", false, true, false},
		{"secondary", up(nil), "secondary", false, true, false},
	} {
		ok, why := waitReached(c.rs, c.cond, c.cluster)
		if ok != c.ok || (why != "") != c.gives {
			t.Errorf("%s: %v %q, want %v (gives up %v)", c.name, ok, why, c.ok, c.gives)
		}
	}
}

func TestWaitCommand(t *testing.T) {
	fs, args := fakeAlpha(t)
	v := fs.Get("r0")

	// The link comes up while it waits.
	time.AfterFunc(300*time.Millisecond, func() { v.Set(func(f *daemontest.Volume) { f.Conn = replicate.Connected }) })
	if out := mustRun(t, args("wait", "r0", "--for", "connected", "--timeout", "20s")...); !strings.Contains(out, "r0: connected after") ||
		!strings.Contains(out, "Secondary UpToDate, Connected") {
		t.Errorf("wait --for connected: %q", out)
	}
	var rs daemon.ResourceStatus
	if err := json.Unmarshal([]byte(mustRun(t, args("wait", "r0", "--for", "secondary", "--json")...)), &rs); err != nil || rs.Role != replicate.Secondary {
		t.Errorf("wait --json: %+v %v", rs, err)
	}

	// Not reached in time: exit status 2, and what it is doing.
	_, _, err := execute(t, args("wait", "r0", "--for", "primary", "--timeout", "300ms")...)
	var es *exitStatus
	if !errors.As(err, &es) || es.Code != 2 || !strings.Contains(es.Msg, "primary not reached within 300ms; now Secondary UpToDate, Connected") {
		t.Errorf("wait timing out: %v", err)
	}

	// StandAlone without the cluster layer: nothing will connect it.
	v.Set(func(f *daemontest.Volume) { f.Conn = replicate.StandAlone })
	start := time.Now()
	mustFail(t, "it will not happen by itself: r0 is StandAlone; tandem connect r0", args("wait", "r0", "--for", "in-sync", "--timeout", "1m")...)
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("giving up on StandAlone took %v", took)
	}

	mustFail(t, `unknown resource "nope"`, args("wait", "nope", "--for", "up")...)
	mustFail(t, `--for "synced": want one of up, connected, in-sync, primary, secondary`, args("wait", "r0", "--for", "synced")...)
	mustFail(t, "want a positive duration", args("wait", "r0", "--timeout", "0s")...)
	mustFail(t, "want one RESOURCE", args("wait")...)
}
