package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/replicate"
)

// The scenarios of a cut replication link (issue 5, rules 3 and 4): the
// link between alpha and bravo alone is cut, both still see the witness.

// recordOf is r0 in the authority record as node's cluster layer last
// saw it, nil when its daemon does not answer or has no record yet.
func recordOf(s *Status, node string) *cluster.Resource {
	st := layer(s, node)
	if st == nil || st.ClusterLayer.Record == nil {
		return nil
	}
	return st.ClusterLayer.Record.Resource("r0")
}

// replicaState is node's replica of r0 in the record as seen by viewer.
func replicaState(s *Status, viewer, node string) cluster.ReplicaState {
	res := recordOf(s, viewer)
	if res == nil {
		return ""
	}
	return res.State(node)
}

// fenceAudits lists the fencing records in node's audit log.
func fenceAudits(t *testing.T, lab *Lab, node string) []daemon.AuditRecord {
	t.Helper()
	f, err := os.Open(filepath.Join(lab.l.dataDir(node), daemon.AuditFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []daemon.AuditRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var r daemon.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit log of %s: %v: %s", node, err, sc.Text())
		}
		if r.Kind == "fence" || strings.HasPrefix(r.Op, "fence") {
			out = append(out, r)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("audit log of %s: %v", node, err)
	}
	return out
}

// noFencing fails the test if anything was fenced: no fencing in either
// data node's audit log, none in the record.
func noFencing(t *testing.T, lab *Lab, s *Status) {
	t.Helper()
	for _, n := range dataNodes {
		if a := fenceAudits(t, lab, n); len(a) > 0 {
			t.Fatalf("%s fenced on a cut link: %+v", n, a)
		}
	}
	for _, n := range clusterNodes {
		if st := layer(s, n); st != nil && st.ClusterLayer.Record != nil && len(st.ClusterLayer.Record.Fences) > 0 {
			t.Fatalf("the record seen by %s holds fencings: %+v", n, st.ClusterLayer.Record.Fences)
		}
	}
}

// holdFor polls the status for d and fails as soon as cond is false: what
// must stay true over a window, not just at one instant.
func holdFor(t *testing.T, lab *Lab, d time.Duration, what string, cond func(*Status) error) *Status {
	t.Helper()
	end := time.Now().Add(d)
	for {
		s := status(t, lab)
		if err := cond(s); err != nil {
			t.Fatalf("%s did not hold: %v; status:\n%s", what, err, s.Table())
		}
		if time.Now().After(end) {
			return s
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// bravoOutdatedEverywhere: every voter's copy of the record has bravo
// Outdated and alpha still primary at epoch.
func bravoOutdatedEverywhere(epoch uint64) func(*Status) bool {
	return func(s *Status) bool {
		for _, n := range clusterNodes {
			res := recordOf(s, n)
			if res == nil || res.State(Bravo) != cluster.StateOutdated || res.Primary != Alpha || res.Epoch != epoch {
				return false
			}
		}
		return true
	}
}

// recordViews says what each voter's status holds of r0's record, for a
// failure's message: a view that lags is the question then.
func recordViews(s *Status) string {
	var out []string
	for _, n := range clusterNodes {
		st := layer(s, n)
		if st == nil || st.ClusterLayer.Record == nil {
			out = append(out, n+": no cluster status")
			continue
		}
		res := st.ClusterLayer.Record.Resource("r0")
		if res == nil {
			out = append(out, fmt.Sprintf("%s: record index %d without r0", n, st.ClusterLayer.Record.Index))
			continue
		}
		out = append(out, fmt.Sprintf("%s: index %d, primary %q epoch %d, bravo %s, quorum %v", n, st.ClusterLayer.Record.Index, res.Primary, res.Epoch, res.State(Bravo), st.ClusterLayer.Quorum))
	}
	return strings.Join(out, "; ")
}

// cutAndWriteOn brings a cluster lab up (alpha Primary, in sync), writes,
// cuts alpha–bravo and writes on: every write acknowledged (the first
// one after the cut waits for the link's ping timeout and the
// mark-outdated commit, within the write's bound), bravo Outdated in
// every voter's record with alpha still primary at its epoch.
func cutAndWriteOn(t *testing.T) (lab *Lab, bin string, w *workload, epoch uint64) {
	t.Helper()
	lab, bin = clusterLab(t)
	// Registered after upLab's teardown, so it runs before it.
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(keyLogLines(lab))
		}
	})
	epoch = recordOf(status(t, lab), Alpha).Epoch
	w = newWorkload(lab)
	w.mustWrite(t, 4)
	if err := lab.Cut(context.Background(), Alpha, Bravo); err != nil {
		t.Fatal(err)
	}
	w.mustWrite(t, 4)
	if err := lab.WaitFor(context.Background(), "bravo Outdated in every voter's record, alpha still primary", syncWait, bravoOutdatedEverywhere(epoch)); err != nil {
		t.Fatalf("%v\neach voter's view: %s", err, recordViews(status(t, lab)))
	}
	logHandoff(t, lab)
	return lab, bin, w, epoch
}

// TestScenarioCutLink: the replication link alpha–bravo is cut, both still
// see the witness. Nothing fails over and nothing is fenced (rule 4);
// alpha goes on writing, bravo marked Outdated in the authority record
// first (rule 3). After the heal bravo resyncs from the bitmap, not in
// full, and is UpToDate again.
func TestScenarioCutLink(t *testing.T) {
	lab, bin, w, epoch := cutAndWriteOn(t)
	ctx := context.Background()
	// Longer than the failure detector, the link veto and the lease put
	// together: a false failover or fencing would show in this window.
	// Writes go on through it, each one acknowledged.
	s := holdFor(t, lab, 15*time.Second, "alpha serving degraded, bravo Secondary and Outdated, nobody fenced", func(s *Status) error {
		if p, q, sv := serving(s, Alpha); !p || !q || !sv {
			return errors.New("alpha is not a serving primary with quorum")
		}
		if s.Resources[0].Primary != Alpha || s.Resources[0].VIPHolder != Alpha {
			return errors.New("r0 is not primary on alpha with the VIP")
		}
		if b := s.Node(Bravo); b.PID == 0 || b.Power != "on" || b.Role != "Secondary" {
			return errors.New("bravo is not a running Secondary")
		}
		if res := recordOf(s, Witness); res == nil || res.Primary != Alpha || res.Epoch != epoch || res.State(Bravo) != cluster.StateOutdated {
			return errors.New("the record moved")
		}
		noFencing(t, lab, s)
		if !w.write(30) {
			return errors.New("a degraded write through the VIP was not acknowledged")
		}
		return nil
	})
	outOfSync := s.Node(Alpha).Resources[0].OutOfSync
	if outOfSync <= 0 || outOfSync >= labSize {
		t.Fatalf("alpha has %d bytes out of sync after degraded writes; want some, less than the whole %d", outOfSync, labSize)
	}
	if err := lab.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	lr := rejoined(t, lab, bin, w, epoch)
	t.Logf("bitmap resync after the heal: %d bytes (alpha had %d out of sync)", lr.TotalBytes, outOfSync)
}

// rejoined waits until bravo has resynced after a heal and checks what
// the cut scenarios end with: a bitmap resync, nobody fenced, alpha still
// primary at epoch, writes on, every acknowledged one read back, the
// replicas equal.
func rejoined(t *testing.T, lab *Lab, bin string, w *workload, epoch uint64) *replicate.Progress {
	t.Helper()
	waitBravoResynced(t, lab)
	s := status(t, lab)
	lr := bitmapResync(t, s, false)
	noFencing(t, lab, s)
	if res := recordOf(s, Witness); res.Epoch != epoch || res.Primary != Alpha {
		t.Fatalf("after the heal the record says primary %q at epoch %d; want alpha at %d", res.Primary, res.Epoch, epoch)
	}
	w.mustWrite(t, 2)
	w.check(t)
	verifyReplicas(t, lab, bin, Alpha)
	return lr
}

// TestScenarioCutThenCrashPrimary: the link is cut, alpha writes on
// (bravo Outdated in the record), then alpha crashes. Bravo, Outdated,
// does not promote (rule 3), and says so. Alpha restarted comes back as
// primary, it has the newest data; after the heal bravo resyncs; no
// acknowledged write is lost.
func TestScenarioCutThenCrashPrimary(t *testing.T) {
	lab, bin, w, epoch := cutAndWriteOn(t)
	ctx := context.Background()
	if err := lab.Crash(Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "bravo and the witness see alpha gone", func(s *Status) bool {
		b, wi := layer(s, Bravo), layer(s, Witness)
		return b != nil && wi != nil && b.ClusterLayer.Members[Alpha] == cluster.MemberDead && wi.ClusterLayer.Members[Alpha] == cluster.MemberDead
	})
	holdFor(t, lab, 15*time.Second, "no primary, bravo Outdated and not promoting", func(s *Status) error {
		// Alpha's interface is down with the VIP still on it, as on a
		// machine without power.
		if len(s.Resources[0].Primaries) != 0 || s.Resources[0].VIPHolder == Bravo {
			return errors.New("a primary appeared, or bravo claimed the VIP")
		}
		if p, _, _ := serving(s, Bravo); p {
			return errors.New("bravo's cluster layer acts as primary")
		}
		res := recordOf(s, Bravo)
		if res == nil || res.Primary != Alpha || res.Epoch != epoch || res.State(Bravo) != cluster.StateOutdated {
			return errors.New("the record moved")
		}
		noFencing(t, lab, s)
		return nil
	})
	if why := noFailoverReason(t, lab); !strings.Contains(why, "Outdated in the authority record") {
		t.Fatalf("bravo's status does not say why it does not take over: %q", why)
	} else {
		t.Logf("bravo: %s", why)
	}
	if out := tandemOn(t, lab, bin, Bravo, "status", "--node", Bravo); !strings.Contains(out, "r0: NO FAILOVER") {
		t.Fatalf("tandem status on bravo does not say why it does not take over:\n%s", out)
	}
	if ok, _ := clientIO(lab, 5, "read 0 4k"); ok {
		t.Fatal("the VIP serves with alpha down and bravo Outdated")
	}

	// Alpha, still cut from bravo, comes back and is primary again: its
	// data is the newest, bravo stays Outdated.
	if err := lab.Restart(ctx, Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "alpha Primary again with the VIP", func(s *Status) bool {
		p, q, sv := serving(s, Alpha)
		return p && q && sv && s.Resources[0].Primary == Alpha && s.Resources[0].VIPHolder == Alpha
	})
	w.mustWrite(t, 4)
	if err := lab.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "bravo resynced, UpToDate in the record", func(s *Status) bool {
		return inSyncOn(Alpha)(s) && replicaState(s, Witness, Bravo) == cluster.StateUpToDate
	})
	s := status(t, lab)
	lr := bitmapResync(t, s, true)
	t.Logf("bitmap resync after the heal: %d bytes (the hot extents of alpha's crash included)", lr.TotalBytes)
	if res := recordOf(s, Witness); res.Primary != Alpha || res.Epoch <= epoch || res.State(Alpha) != cluster.StateUpToDate {
		t.Fatalf("record after alpha's return: %+v", res)
	}
	noFencing(t, lab, s)
	w.mustWrite(t, 2)
	w.check(t)
	verifyReplicas(t, lab, bin, Alpha)
}

// bitmapResync is bravo's last resync, which must have been driven by the
// bitmap (not full) and, unless alpha crashed, copied some but not all of
// r0. After a crash of the primary the bitmap also covers the
// activity-log extents that were hot, 4 MiB each: all of the lab's r0.
func bitmapResync(t *testing.T, s *Status, crashed bool) *replicate.Progress {
	t.Helper()
	st := layer(s, Bravo)
	if st == nil || len(st.Resources) == 0 || st.Resources[0].LastResync == nil {
		t.Fatalf("bravo reports no resync after the heal")
	}
	lr := st.Resources[0].LastResync
	if lr.Full || lr.TotalBytes <= 0 || lr.TotalBytes > labSize || (!crashed && lr.TotalBytes == labSize) {
		t.Fatalf("bravo's resync after the heal: %+v; want a bitmap resync of what alpha wrote alone", lr)
	}
	return lr
}

// keyLogLines are the lines of every daemon's log that tell what the
// cluster layer decided (membership, fencing, failover, leadership,
// alerts), for a failed run: the tails alone often miss the moment.
func keyLogLines(lab *Lab) string {
	key := regexp.MustCompile(`(?i)fenc|failover|declared|dead|suspect|promot|alert|leadership|quorum|deposed|marked outdated|without the peer`)
	var b strings.Builder
	for _, n := range clusterNodes {
		data, err := os.ReadFile(lab.l.log(n))
		if err != nil {
			fmt.Fprintf(&b, "--- %s: %v\n", n, err)
			continue
		}
		fmt.Fprintf(&b, "--- %s (key lines) ---\n", n)
		k := 0
		for _, line := range strings.Split(string(data), "\n") {
			if key.MatchString(line) && !strings.Contains(line, "level=DEBUG") && k < 80 {
				b.WriteString(line + "\n")
				k++
			}
		}
	}
	return b.String()
}

// logHandoff says whether a data node, leading the authority log when the
// link was cut, handed the leadership to the witness (it depends on who
// won the election: cluster/authority's tests cover the handoff itself).
func logHandoff(t *testing.T, lab *Lab) {
	t.Helper()
	for _, n := range dataNodes {
		if at, ok := firstLogTime(t, lab.l.log(n), "handing the leadership"); ok {
			t.Logf("%s led the authority log and handed it to the witness at %s", n, at.Format("15:04:05.000"))
			return
		}
	}
	t.Logf("no data node had to hand the authority's leadership over")
}

// noFailoverReason is what bravo says about not taking over: its
// cluster-layer status, "" when it says nothing.
func noFailoverReason(t *testing.T, lab *Lab) string {
	t.Helper()
	st := layer(status(t, lab), Bravo)
	if st == nil {
		return ""
	}
	for _, r := range st.ClusterLayer.Resources {
		if r.Resource == "r0" {
			return r.Blocked
		}
	}
	return ""
}

// waitBravoResynced waits until bravo is in sync with alpha and UpToDate
// in every voter's record.
func waitBravoResynced(t *testing.T, lab *Lab) {
	t.Helper()
	waitFor(t, lab, "bravo resynced, UpToDate in every voter's record", func(s *Status) bool {
		for _, n := range clusterNodes {
			if replicaState(s, n, Bravo) != cluster.StateUpToDate {
				return false
			}
		}
		return inSyncOn(Alpha)(s)
	})
}

// moveLeadership makes node lead the authority log, with the admin
// command on the current leader, and waits until every voter sees it.
func moveLeadership(t *testing.T, lab *Lab, bin, node string) {
	t.Helper()
	leaderSeen := func(s *Status, n string) string {
		if st := s.Node(n).status; st != nil && st.Authority != nil {
			return st.Authority.Leader
		}
		return ""
	}
	var leader string
	waitFor(t, lab, "a leader of the authority log", func(s *Status) bool {
		leader = leaderSeen(s, Witness)
		return leader != ""
	})
	if leader != node {
		tandemOn(t, lab, bin, leader, "transfer-leadership", node, "--node", leader)
	}
	waitFor(t, lab, node+" leading the authority log in every voter's view", func(s *Status) bool {
		for _, n := range clusterNodes {
			if leaderSeen(s, n) != node {
				return false
			}
		}
		return true
	})
}

// TestScenarioWitnessLeadsCutFromPrimary: the witness leads the authority
// log when the link between it and alpha, the primary, is cut; then
// bravo's replica disconnects (tandem disconnect), so alpha must commit
// bravo Outdated before it writes on alone. alpha hears no leader, and
// bravo, which hears the witness, refuses alpha's pre-votes: only the
// witness handing its leadership to bravo lets alpha commit (before
// 2026-12-03 it did not, and alpha's writes hung). Every write is
// acknowledged, nobody is fenced, nothing fails over; after the heal and
// a connect bravo resyncs from the bitmap.
func TestScenarioWitnessLeadsCutFromPrimary(t *testing.T) {
	lab, bin := clusterLab(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(keyLogLines(lab))
		}
	})
	ctx := context.Background()
	epoch := recordOf(status(t, lab), Alpha).Epoch
	w := newWorkload(lab)
	w.mustWrite(t, 4)
	moveLeadership(t, lab, bin, Witness)
	if err := lab.Cut(ctx, Alpha, Witness); err != nil {
		t.Fatal(err)
	}
	w.mustWrite(t, 4)
	tandemOn(t, lab, bin, Bravo, "disconnect", "r0", "--node", Bravo)
	w.mustWrite(t, 4)
	if err := lab.WaitFor(ctx, "bravo Outdated in every voter's record, alpha still primary", syncWait, bravoOutdatedEverywhere(epoch)); err != nil {
		t.Fatalf("%v\neach voter's view: %s", err, recordViews(status(t, lab)))
	}
	at, ok := firstLogTime(t, lab.l.log(Witness), "handing the leadership")
	if !ok {
		t.Fatal("the witness did not hand its leadership over")
	}
	t.Logf("the witness handed the leadership over at %s", at.Format("15:04:05.000"))
	s := status(t, lab)
	if st := s.Node(Alpha).status; st == nil || st.Authority == nil || st.Authority.Leader != Bravo {
		t.Fatalf("alpha's view of the authority log: %+v; want bravo leading", st.Authority)
	}
	if p, q, sv := serving(s, Alpha); !p || !q || !sv {
		t.Fatal("alpha is not a serving primary with quorum")
	}
	noFencing(t, lab, s)
	w.mustWrite(t, 2)

	if err := lab.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	tandemOn(t, lab, bin, Bravo, "connect", "r0", "--node", Bravo)
	rejoined(t, lab, bin, w, epoch)
}
