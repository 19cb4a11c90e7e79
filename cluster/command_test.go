package cluster

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func cmd(op Op, by string, f func(*Command)) Command {
	c := Command{Version: RecordVersion, Op: op, By: by, ID: by + "/test", At: t0, Resource: "r0"}
	if f != nil {
		f(&c)
	}
	return c
}

// mustApply applies commands that must all be accepted.
func mustApply(t *testing.T, rec *Record, cmds ...Command) *Record {
	t.Helper()
	for _, c := range cmds {
		next, err := Apply(rec, c)
		if err != nil {
			t.Fatalf("Apply(%v): %v", c, err)
		}
		rec = next
	}
	return rec
}

func define() Command {
	return cmd(OpDefine, "a", func(c *Command) { c.Replicas = []string{"a", "b"}; c.Preferred = "a" })
}
func report(node string, st ReplicaState) Command {
	return cmd(OpReportDisk, node, func(c *Command) { c.Node = node; c.State = st })
}
func promote(node string, epoch uint64) Command {
	return cmd(OpPromote, node, func(c *Command) { c.Node = node; c.Epoch = epoch })
}
func demote(node string, epoch uint64) Command {
	return cmd(OpDemote, node, func(c *Command) { c.Node = node; c.Epoch = epoch })
}
func fenced(node, by string, epoch uint64) Command {
	return cmd(OpFenced, by, func(c *Command) {
		c.Resource = ""
		c.Node = node
		c.Epochs = map[string]uint64{"r0": epoch}
		c.Method = "ipmi"
	})
}
func markOutdated(primary, node string, epoch uint64) Command {
	return cmd(OpMarkOutdated, primary, func(c *Command) { c.Node = node; c.Epoch = epoch })
}

// running is a: primary at epoch 1, b UpToDate.
func running(t *testing.T) *Record {
	return mustApply(t, NewRecord(), define(), report("a", StateUpToDate), report("b", StateUpToDate), promote("a", 1))
}

func TestApplyRefusals(t *testing.T) {
	outdatedB := func(t *testing.T) *Record { return mustApply(t, running(t), markOutdated("a", "b", 1)) }
	aFenced := func(t *testing.T) *Record { return mustApply(t, running(t), fenced("a", "b", 1)) }
	cases := []struct {
		name string
		rec  func(*testing.T) *Record
		cmd  Command
		want error
	}{
		{"promote at a stale epoch", running, promote("b", 1), ErrStaleEpoch},
		{"promote skipping an epoch", aFenced, promote("b", 3), ErrStaleEpoch},
		{"promote while the primary is neither fenced nor demoted", running, promote("b", 2), ErrNotFenced},
		{"promote an Outdated replica without force", func(t *testing.T) *Record {
			return mustApply(t, outdatedB(t), fenced("a", "b", 1))
		}, promote("b", 2), ErrNotUpToDate},
		{"promote a replica never reported", func(t *testing.T) *Record { return mustApply(t, NewRecord(), define()) }, promote("a", 1), ErrNotUpToDate},
		{"forced promotion that does not say what it discards", func(t *testing.T) *Record {
			return mustApply(t, outdatedB(t), fenced("a", "b", 1))
		}, cmd(OpPromote, "b", func(c *Command) { c.Node = "b"; c.Epoch = 2; c.Force = true }), ErrBadCommand},
		{"promote on behalf of another node", aFenced, cmd(OpPromote, "a", func(c *Command) { c.Node = "b"; c.Epoch = 2 }), ErrBadCommand},
		{"promote the primary again", running, promote("a", 2), ErrNotAllowed},
		{"promote a standby node", func(t *testing.T) *Record {
			return mustApply(t, aFenced(t), cmd(OpStandby, "b", func(c *Command) { c.Node = "b" }))
		}, promote("b", 2), ErrStandby},
		{"automatic promotion of a held resource", func(t *testing.T) *Record {
			return mustApply(t, running(t), cmd(OpDemote, "a", func(c *Command) { c.Node = "a"; c.Epoch = 1; c.Hold = true }))
		}, promote("b", 2), ErrHeld},
		{"fence confirmation for an older epoch", func(t *testing.T) *Record {
			return mustApply(t, aFenced(t), promote("b", 2))
		}, fenced("b", "a", 1), ErrStaleEpoch},
		{"fence confirmation of a node that is not primary", running, fenced("b", "a", 1), ErrStaleEpoch},
		{"fence confirmation without a method", running, cmd(OpFenced, "b", func(c *Command) {
			c.Node = "a"
			c.Epochs = map[string]uint64{"r0": 1}
		}), ErrBadCommand},
		{"a fenced primary confirms itself", aFenced, cmd(OpConfirmPrimary, "a", func(c *Command) { c.Node = "a"; c.Epoch = 1 }), ErrFenced},
		{"a fenced primary marks its peer Outdated", aFenced, markOutdated("a", "b", 1), ErrFenced},
		{"demote by a node that is not primary", running, demote("b", 1), ErrNotPrimary},
		{"demote at a stale epoch", running, demote("a", 0), ErrStaleEpoch},
		{"demote on behalf of the primary", running, cmd(OpDemote, "b", func(c *Command) { c.Node = "a"; c.Epoch = 1 }), ErrBadCommand},
		{"confirm on behalf of the primary", running, cmd(OpConfirmPrimary, "w", func(c *Command) { c.Node = "a"; c.Epoch = 1 }), ErrBadCommand},
		{"a deposed primary marks the new one Outdated", func(t *testing.T) *Record {
			return mustApply(t, aFenced(t), promote("b", 2))
		}, markOutdated("a", "b", 1), ErrStaleEpoch},
		{"a secondary marks the primary Outdated", running, cmd(OpMarkOutdated, "b", func(c *Command) { c.Node = "a"; c.Epoch = 1 }), ErrNotPrimary},
		{"mark-uptodate on an older view", outdatedB, cmd(OpMarkUpToDate, "a", func(c *Command) { c.Node = "b"; c.Epoch = 1; c.IfSeq = 1 }), ErrSeqMismatch},
		{"a replica raises itself to UpToDate", outdatedB, report("b", StateUpToDate), ErrNotAllowed},
		{"report for another node", running, cmd(OpReportDisk, "a", func(c *Command) { c.Node = "b"; c.State = StateOutdated }), ErrBadCommand},
		{"report of an unknown state", running, report("b", "Shiny"), ErrBadCommand},
		{"switchover without a primary", func(t *testing.T) *Record { return mustApply(t, running(t), demote("a", 1)) },
			cmd(OpSwitchover, "a", func(c *Command) { c.Node = "b" }), ErrNotAllowed},
		{"switchover to an Outdated replica", outdatedB, cmd(OpSwitchover, "a", func(c *Command) { c.Node = "b" }), ErrNotUpToDate},
		{"switchover to the primary", running, cmd(OpSwitchover, "a", func(c *Command) { c.Node = "a" }), ErrNotAllowed},
		{"unknown resource", running, cmd(OpDemote, "a", func(c *Command) { c.Resource = "nope"; c.Node = "a"; c.Epoch = 1 }), ErrUnknownResource},
		{"node without a replica", running, cmd(OpDemote, "w", func(c *Command) { c.Node = "w"; c.Epoch = 1 }), ErrNoReplica},
		{"standby of a witness", running, cmd(OpStandby, "w", func(c *Command) { c.Node = "w" }), ErrNoReplica},
		{"redefine with other replicas", running, cmd(OpDefine, "a", func(c *Command) { c.Replicas = []string{"a", "c"} }), ErrNotAllowed},
		{"define with one replica", running, cmd(OpDefine, "a", func(c *Command) { c.Resource = "r1"; c.Replicas = []string{"a", "a"} }), ErrBadCommand},
		{"no proposer", running, cmd(OpDemote, "", func(c *Command) { c.Node = "a"; c.Epoch = 1 }), ErrBadCommand},
		{"newer command version", running, cmd(OpDemote, "a", func(c *Command) { c.Node = "a"; c.Epoch = 1; c.Version = 2 }), ErrVersion},
		{"unknown op", running, cmd("explode", "a", func(c *Command) { c.Node = "a" }), ErrBadCommand},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := tc.rec(t)
			before, _ := rec.Marshal()
			got, err := Apply(rec, tc.cmd)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Apply(%v) = %v, want %v", tc.cmd, err, tc.want)
			}
			if got != rec {
				t.Errorf("a refused command returned a different record")
			}
			after, _ := rec.Marshal()
			if string(before) != string(after) {
				t.Errorf("a refused command changed the record:\n%s\n%s", before, after)
			}
		})
	}
}

func TestApplyFailoverAndForce(t *testing.T) {
	rec := mustApply(t, running(t), markOutdated("a", "b", 1), fenced("a", "b", 1))
	res := rec.Resource("r0")
	if res.Fenced == nil || res.Fenced.Epoch != 1 || res.Fenced.Node != "a" || len(rec.Fences) != 1 {
		t.Fatalf("fencing confirmation not recorded: %+v %+v", res.Fenced, rec.Fences)
	}
	// Outdated: only force, and it must say what it discards.
	forced := cmd(OpPromote, "b", func(c *Command) {
		c.Node, c.Epoch, c.Force, c.Manual = "b", 2, true, true
		c.Discarded = "writes a acknowledged since it marked b Outdated"
	})
	rec = mustApply(t, rec, forced)
	res = rec.Resource("r0")
	if res.Primary != "b" || res.Epoch != 2 || res.Fenced != nil {
		t.Fatalf("after forced promotion: %+v", res)
	}
	if res.State("b") != StateUpToDate || res.State("a") != StateOutdated {
		t.Errorf("forced promotion: b %s, a %s; want UpToDate, Outdated", res.State("b"), res.State("a"))
	}
	if lf := res.LastFailover; lf == nil || lf.How != "forced" || lf.From != "a" || !strings.Contains(lf.Discarded, "acknowledged") {
		t.Errorf("last failover = %+v", res.LastFailover)
	}
	// a comes back Outdated: it cannot promote, nor raise itself.
	if _, err := Apply(rec, report("a", StateUpToDate)); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("a raising itself: %v", err)
	}
	// After the resync the primary marks it UpToDate at the current seq.
	rec = mustApply(t, rec, cmd(OpMarkUpToDate, "b", func(c *Command) { c.Node, c.Epoch, c.IfSeq = "a", 2, res.Seq }))
	if rec.Resource("r0").State("a") != StateUpToDate {
		t.Errorf("mark-uptodate did not take")
	}
}

func TestApplySwitchoverAndStandby(t *testing.T) {
	rec := mustApply(t, running(t), cmd(OpSwitchover, "w", func(c *Command) { c.Node = "b" }))
	if rec.Resource("r0").Target != "b" {
		t.Fatalf("target not set")
	}
	rec = mustApply(t, rec, demote("a", 1))
	if res := rec.Resource("r0"); res.Primary != "" || res.LastPrimary != "a" || res.Target != "b" {
		t.Fatalf("after demote: %+v", res)
	}
	rec = mustApply(t, rec, promote("b", 2))
	res := rec.Resource("r0")
	if res.Primary != "b" || res.Target != "" || res.LastFailover.How != "demoted" || res.LastFailover.From != "a" {
		t.Fatalf("after switchover: %+v %+v", res, res.LastFailover)
	}
	rec = mustApply(t, rec,
		cmd(OpStandby, "w", func(c *Command) { c.Node = "b" }),
		cmd(OpStandby, "w", func(c *Command) { c.Node = "a" }),
		cmd(OpStandby, "w", func(c *Command) { c.Node = "a" }))
	if !reflect.DeepEqual(rec.Standby, []string{"a", "b"}) {
		t.Fatalf("standby = %v", rec.Standby)
	}
	rec = mustApply(t, rec, cmd(OpUnstandby, "w", func(c *Command) { c.Node = "b" }), cmd(OpUnstandby, "w", func(c *Command) { c.Node = "b" }))
	if !reflect.DeepEqual(rec.Standby, []string{"a"}) || !rec.IsStandby("a") || rec.IsStandby("b") {
		t.Fatalf("standby = %v", rec.Standby)
	}
}

func TestMarkOutdatedAlwaysBumpsSeq(t *testing.T) {
	rec := running(t)
	seen := rec.Resource("r0").Seq
	// The primary saw b in sync at seq `seen`, then the link broke and it
	// marked b Outdated before its first degraded write; a MarkUpToDate
	// made at `seen` that lands after that must be refused, even though
	// b was already Outdated before.
	rec = mustApply(t, rec, markOutdated("a", "b", 1))
	rec = mustApply(t, rec, markOutdated("a", "b", 1))
	late := cmd(OpMarkUpToDate, "a", func(c *Command) { c.Node, c.Epoch, c.IfSeq = "b", 1, seen+1 })
	if _, err := Apply(rec, late); !errors.Is(err, ErrSeqMismatch) {
		t.Fatalf("late mark-uptodate: %v", err)
	}
}

func TestFenceCoversOnlyEpochsSeen(t *testing.T) {
	rec := mustApply(t, running(t),
		cmd(OpDefine, "a", func(c *Command) { c.Resource = "r1"; c.Replicas = []string{"b", "a"} }),
		cmd(OpReportDisk, "a", func(c *Command) { c.Resource = "r1"; c.Node = "a"; c.State = StateUpToDate }),
		cmd(OpPromote, "a", func(c *Command) { c.Resource = "r1"; c.Node = "a"; c.Epoch = 1 }))
	// The fencer saw a primary of r0 at 1 and of r1 at 0 (stale): only r0.
	rec = mustApply(t, rec, cmd(OpFenced, "b", func(c *Command) {
		c.Node, c.Method, c.Epochs = "a", "ipmi", map[string]uint64{"r0": 1, "r1": 0}
	}))
	if rec.Resource("r0").Fenced == nil || rec.Resource("r1").Fenced != nil {
		t.Fatalf("fenced r0=%v r1=%v", rec.Resource("r0").Fenced, rec.Resource("r1").Fenced)
	}
}

func TestRecordJSONRoundTrip(t *testing.T) {
	rec := mustApply(t, running(t), markOutdated("a", "b", 1), fenced("a", "b", 1),
		cmd(OpStandby, "w", func(c *Command) { c.Node = "a" }))
	b1, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalRecord(b1)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := back.Marshal()
	if string(b1) != string(b2) {
		t.Fatalf("round trip differs:\n%s\n%s", b1, b2)
	}
	// Deterministic bytes: the same history twice gives the same record.
	again := mustApply(t, running(t), markOutdated("a", "b", 1), fenced("a", "b", 1),
		cmd(OpStandby, "w", func(c *Command) { c.Node = "a" }))
	if b3, _ := again.Marshal(); string(b3) != string(b1) {
		t.Fatalf("same history, different bytes")
	}

	var m map[string]any
	_ = json.Unmarshal(b1, &m)
	m["version"] = 2
	newer, _ := json.Marshal(m)
	if _, err := UnmarshalRecord(newer); !errors.Is(err, ErrVersion) {
		t.Errorf("newer version: %v", err)
	}
	if _, err := UnmarshalRecord([]byte(`{"version":1,"resources":{},"surprise":1}`)); err == nil {
		t.Errorf("unknown field accepted")
	}
	if _, err := UnmarshalRecord([]byte(`{"version":1,"resources":{"r0":{"name":"r0","replicas":{"a":{"state":"UpToDate"}},"epoch":1}}}`)); err == nil {
		t.Errorf("a resource with one replica accepted")
	}
	if _, err := UnmarshalRecord([]byte(`{"version":1,"resources":{"r0":{"name":"r0","replicas":{"a":{"state":"UpToDate"},"b":{"state":"UpToDate"}},"primary":"c","epoch":1}}}`)); err == nil {
		t.Errorf("a primary without a replica accepted")
	}

	c := fenced("a", "b", 1)
	cb, _ := c.Marshal()
	c2, err := UnmarshalCommand(cb)
	if err != nil || !reflect.DeepEqual(c, c2) {
		t.Fatalf("command round trip: %v\n%+v\n%+v", err, c, c2)
	}
	if _, err := UnmarshalCommand([]byte(`{"version":9,"op":"demote"}`)); !errors.Is(err, ErrVersion) {
		t.Errorf("newer command version: %v", err)
	}
}
