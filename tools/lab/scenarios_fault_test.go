package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// The fault scenarios of issue 5 in the lab: the witness and the
// secondary lost together, the primary's BMC down when the primary dies,
// automatic failback, and fio's own verification through a failover.
// Each runs a client through the VIP, reads back every acknowledged
// write and compares the replicas byte for byte at the end.

// faultLab is clusterLab with other parameters (the cluster layer always
// on): alpha Primary with the VIP, the pair in sync.
func faultLab(t *testing.T, p Params) (*Lab, string) {
	t.Helper()
	p.ClusterLayer = true
	lab, bin := upLab(t, p)
	waitFor(t, lab, "alpha Primary with the VIP, bravo UpToDate", inSyncOn(Alpha))
	return lab, bin
}

// timedWrite is one write of a timedWriter: when it started and ended,
// and whether it was acknowledged.
type timedWrite struct {
	slot       int
	start, end time.Time
	ok         bool
}

// timedWriter runs w's writes in the background, one at a time, each
// bounded by seconds, and remembers when each started and ended, so a
// test can tell when writes were acknowledged.
type timedWriter struct {
	w       *workload
	seconds int
	mu      sync.Mutex
	writes  []timedWrite
	stop    chan struct{}
	done    chan struct{}
}

func startTimedWriter(w *workload, seconds int) *timedWriter {
	tw := &timedWriter{w: w, seconds: seconds, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tw.done)
		for {
			select {
			case <-tw.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			w.mu.Lock()
			slot, full := w.next, w.next >= slots
			w.mu.Unlock()
			if full {
				return
			}
			start := time.Now()
			ok := w.write(tw.seconds)
			tw.mu.Lock()
			tw.writes = append(tw.writes, timedWrite{slot: slot, start: start, end: time.Now(), ok: ok})
			tw.mu.Unlock()
		}
	}()
	return tw
}

// halt stops the writer (idempotent) and returns every write it made.
func (tw *timedWriter) halt() []timedWrite {
	select {
	case <-tw.stop:
	default:
		close(tw.stop)
	}
	<-tw.done
	return tw.snapshot()
}

func (tw *timedWriter) snapshot() []timedWrite {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	return append([]timedWrite(nil), tw.writes...)
}

// ackedAfter counts the writes of ws acknowledged after at.
func ackedAfter(ws []timedWrite, at time.Time) int {
	n := 0
	for _, x := range ws {
		if x.ok && x.end.After(at) {
			n++
		}
	}
	return n
}

// waitAcked waits (bounded) until tw has had n writes acknowledged after
// at.
func waitAcked(t *testing.T, tw *timedWriter, at time.Time, n int, what string) {
	t.Helper()
	deadline := time.Now().Add(syncWait)
	for ackedAfter(tw.snapshot(), at) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %d writes acknowledged through the VIP within %v", what, n, syncWait)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// noAckBetween fails the test if a write was acknowledged in (from, to).
func noAckBetween(t *testing.T, ws []timedWrite, from, to time.Time, why string) {
	t.Helper()
	for _, x := range ws {
		if x.ok && x.end.After(from) && x.end.Before(to) {
			t.Fatalf("%s: the write of slot %d (started %v, acknowledged %v) was acknowledged %v after the fault",
				why, x.slot, x.start.Format(time.StampMilli), x.end.Format(time.StampMilli), x.end.Sub(from).Round(time.Millisecond))
		}
	}
}

// errFound ends an event stream once the event looked for has come.
var errFound = errors.New("found")

// sawEvent reports whether node's daemon retains an event for which match
// holds (the retained ring, without following: events --now).
func sawEvent(t *testing.T, lab *Lab, node string, match func(daemon.Event) bool) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := lab.client(node).EventsNow(ctx, 0, func(ev daemon.Event) error {
		if match(ev) {
			return errFound
		}
		return nil
	})
	return errors.Is(err, errFound)
}

// waitEvent waits, bounded, until sawEvent holds.
func waitEvent(t *testing.T, lab *Lab, node, what string, match func(daemon.Event) bool) {
	t.Helper()
	deadline := time.Now().Add(syncWait)
	for !sawEvent(t, lab, node, match) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no such event on %s within %v", what, node, syncWait)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// killBMC kills node's ipmi_sim by its recorded PID: the BMC is dead,
// its address refuses IPMI.
func killBMC(t *testing.T, lab *Lab, node string) {
	t.Helper()
	if err := stopRecorded(lab.l.procRecord("bmc-"+node), syscall.SIGKILL, 0); err != nil {
		t.Fatalf("stopping the BMC of %s: %v", node, err)
	}
}

// reviveBMC starts node's ipmi_sim again and waits until it answers.
func reviveBMC(t *testing.T, lab *Lab, node string) {
	t.Helper()
	if err := startBMC(lab.l, lab.n, node); err != nil {
		t.Fatalf("starting the BMC of %s: %v", node, err)
	}
	if err := lab.waitBMC(context.Background(), node); err != nil {
		t.Fatal(err)
	}
}

// TestScenarioWitnessAndSecondaryCrash: bravo dies (alpha goes on alone
// with the witness's vote, bravo marked Outdated), then the witness: alpha
// has lost quorum and stops acknowledging writes within its lease, the
// VIP released. Both come back: quorum returns, alpha confirms it is
// still primary and resumes, bravo resyncs what it missed.
func TestScenarioWitnessAndSecondaryCrash(t *testing.T) {
	lab, bin := clusterLab(t)
	ctx := context.Background()
	w := newWorkload(lab)
	w.mustWrite(t, 4)
	if err := lab.Crash(Bravo); err != nil {
		t.Fatal(err)
	}
	// Writes without bravo: each waits for bravo's Outdated mark (rule 3),
	// committed with the witness's vote.
	w.mustWrite(t, 4)
	var seen string // what the condition saw last, for a failure's message
	if err := lab.WaitFor(ctx, "bravo Outdated in the record, alpha serving with quorum", syncWait, func(s *Status) bool {
		r := recordOf(s, Alpha)
		p, q, sv := serving(s, Alpha)
		var st cluster.ReplicaState
		if r != nil {
			st = r.State(Bravo)
		}
		seen = fmt.Sprintf("alpha's record answered %v, bravo %q in it; alpha primary %v, quorum %v, serving %v", r != nil, st, p, q, sv)
		return r != nil && st == cluster.StateOutdated && p && q && sv
	}); err != nil {
		t.Fatalf("%v\nlast seen: %s", err, seen)
	}

	tw := startTimedWriter(w, 2)
	defer tw.halt()
	waitAcked(t, tw, time.Now(), 2, "alpha alone with the witness")
	crashed := time.Now()
	if err := lab.Crash(Witness); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "alpha primary without quorum, I/O suspended, VIP released", func(s *Status) bool {
		p, q, sv := serving(s, Alpha)
		return p && !q && !sv && s.Resources[0].VIPHolder == ""
	})
	suspended := time.Now()
	t.Logf("alpha reported the loss of quorum %v after the witness crash", suspended.Sub(crashed).Round(time.Millisecond))
	// The client keeps trying for a while: nothing may be acknowledged.
	time.Sleep(8 * time.Second)
	restarting := time.Now()
	ws := tw.snapshot()
	// Rule 2: the lease (renewed only with quorum) ends the
	// acknowledgements. The bound adds the detector's and a tick, and slack
	// for this loaded machine; a write acknowledged later than that, or
	// started after alpha said it had suspended, breaks the rule.
	bound := cluster.DefaultLease + cluster.DefaultMargin + cluster.DefaultTickInterval + 5*time.Second
	noAckBetween(t, ws, crashed.Add(bound), restarting, "rule 2: alpha without quorum")
	tried := 0
	for _, x := range ws {
		if x.start.After(suspended.Add(time.Second)) {
			tried++
			if x.ok {
				t.Fatalf("the write of slot %d, started %v after alpha reported I/O suspended, was acknowledged", x.slot, x.start.Sub(suspended).Round(time.Millisecond))
			}
		}
	}
	if tried == 0 {
		t.Fatal("the client tried no write while alpha was without quorum: the check above could not fail")
	}
	t.Logf("%d writes tried while alpha had no quorum, none acknowledged", tried)
	if !sawEvent(t, lab, Alpha, func(ev daemon.Event) bool {
		return ev.Kind == daemon.KindAlert && strings.Contains(ev.Text, "lost quorum as primary")
	}) {
		t.Error("alpha raised no alert for the loss of quorum")
	}

	for _, n := range []string{Witness, Bravo} {
		if err := lab.Restart(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	// The record calls bravo UpToDate only once the resync is done and
	// alpha's mark-uptodate has committed, which needs a raft leader
	// again: wait for both.
	waitFor(t, lab, "alpha serving again with the VIP, bravo resynced and UpToDate in the record", func(s *Status) bool {
		return inSyncOn(Alpha)(s) && replicaState(s, Alpha, Bravo) == cluster.StateUpToDate
	})
	waitAcked(t, tw, restarting, 2, "after quorum came back")
	tw.halt()
	s := status(t, lab)
	if r := recordOf(s, Alpha); r == nil || r.Primary != Alpha || r.Epoch != 1 || r.State(Bravo) != cluster.StateUpToDate {
		t.Fatalf("record after the return: %+v; want alpha primary at epoch 1, bravo UpToDate", r)
	}
	w.mustWrite(t, 2)
	w.check(t)
	verifyReplicas(t, lab, bin, Alpha)
}

// TestScenarioBMCDown: alpha's BMC is dead when alpha crashes. Bravo
// cannot fence it: no promotion, the fencing retried and an alert per
// failure, until an operator, having checked that alpha is off, runs
// `tandem fence confirm alpha` on bravo (the lab's nodes have an IPMI
// level only: confirm needs no manual level). Bravo then promotes (after
// alpha's lease), the VIP moves, I/O resumes; alpha, restarted with its
// BMC back, resyncs as Secondary.
func TestScenarioBMCDown(t *testing.T) {
	lab, bin := clusterLab(t)
	ctx := context.Background()
	w := newWorkload(lab)
	w.mustWrite(t, 4)
	killBMC(t, lab, Alpha)
	if s := status(t, lab); s.Node(Alpha).Power != "unknown" || !strings.Contains(s.Node(Alpha).Error, "bmc") {
		t.Fatalf("with alpha's BMC dead, lab status says power %q, error %q", s.Node(Alpha).Power, s.Node(Alpha).Error)
	}
	tw := startTimedWriter(w, 5)
	defer tw.halt()
	waitAcked(t, tw, time.Now(), 2, "before the crash")
	crashed := time.Now()
	if err := lab.Crash(Alpha); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, lab, Bravo, "a retried fencing of alpha, failed", func(ev daemon.Event) bool {
		return ev.Kind == daemon.KindAlert && strings.Contains(ev.Text, "fencing alpha failed (attempt 2)") &&
			strings.Contains(ev.Text, "tandem fence confirm alpha")
	})
	// Rule 5: the failed fencing blocks the promotion.
	s := status(t, lab)
	if r := recordOf(s, Bravo); r == nil || r.Primary != Alpha || r.Epoch != 1 || (r.Fenced != nil && r.Fenced.Epoch == 1) {
		t.Fatalf("while alpha cannot be fenced, bravo's record says %+v; want alpha primary at epoch 1, not fenced", r)
	}
	if p, _, _ := serving(s, Bravo); p || s.Resources[0].Primary != "" || s.Resources[0].VIPHolder != "" {
		t.Fatalf("promoted without fencing: bravo primary %v, lab primary %q, VIP on %q", p, s.Resources[0].Primary, s.Resources[0].VIPHolder)
	}
	// tandem status says what is blocked and the way out.
	if f := layer(s, Bravo).ClusterLayer.Fencing; len(f) != 1 || f[0].Node != Alpha || f[0].Attempts < 2 || f[0].LastError == "" {
		t.Fatalf("bravo's status lists the fencings %+v; want alpha's, failed at least twice, with its error", f)
	}
	if out := tandemOn(t, lab, bin, Bravo, "status", "--node", Bravo); !strings.Contains(out, "FENCING alpha (blocks r0)") ||
		!strings.Contains(out, "tandem fence confirm alpha") {
		t.Fatalf("tandem status on bravo does not show the blocked fencing:\n%s", out)
	}

	var out bytes.Buffer
	confirmAt := time.Now()
	code, err := lab.Exec(ctx, Bravo, []string{bin, "--config", lab.ConfigPath(), "fence", "confirm", Alpha, "--yes", "--node", Bravo}, nil, &out, &out)
	if err != nil || code != 0 {
		t.Fatalf("tandem fence confirm alpha on bravo: exit %d, %v:\n%s", code, err, out.String())
	}
	t.Logf("fence confirm %v after the crash:\n%s", confirmAt.Sub(crashed).Round(time.Millisecond), out.String())
	noAckBetween(t, tw.snapshot(), crashed.Add(cluster.DefaultLease+cluster.DefaultMargin+5*time.Second), confirmAt,
		"nobody may serve before alpha is fenced")
	waitFor(t, lab, "bravo Primary with the VIP", func(s *Status) bool {
		return s.Resources[0].Primary == Bravo && s.Resources[0].VIPHolder == Bravo
	})
	s = status(t, lab)
	r := recordOf(s, Bravo)
	if r == nil || r.Primary != Bravo || r.Epoch != 2 || r.LastFailover == nil || r.LastFailover.How != "fenced" {
		t.Fatalf("record after the confirmation: %+v (last failover %+v); want bravo at epoch 2 after fencing", r, r.LastFailover)
	}
	// The fencing history in the record says how alpha was fenced: by
	// bravo relaying the operator's word.
	fences := layer(s, Bravo).ClusterLayer.Record.Fences
	if len(fences) != 1 || fences[0].Node != Alpha || fences[0].Method != "manual" || fences[0].By != Bravo || fences[0].Epochs["r0"] != 1 {
		t.Fatalf("fencing history %+v; want one manual confirmation of alpha at epoch 1, relayed by bravo", fences)
	}
	if f := layer(s, Bravo).ClusterLayer.Fencing; len(f) != 0 {
		t.Fatalf("after the confirmation bravo's status still lists the fencings %+v", f)
	}
	waitAcked(t, tw, confirmAt, 2, "after the promotion")

	reviveBMC(t, lab, Alpha)
	if err := lab.Restart(ctx, Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "alpha back as an UpToDate Secondary, bravo Primary with the VIP", func(s *Status) bool {
		return inSyncOn(Bravo)(s) && s.Node(Alpha).Role == "Secondary" && s.Node(Alpha).Power == PowerOn
	})
	tw.halt()
	w.mustWrite(t, 2)
	w.check(t)
	verifyReplicas(t, lab, bin, Bravo)
}

// TestScenarioFailbackAuto: with failback: auto and a short
// failback-after, alpha crashes, bravo takes over; alpha restarts,
// resyncs, stays in sync for failback-after, and the cluster switches r0
// back to it, under a running workload, no acknowledged write lost.
func TestScenarioFailbackAuto(t *testing.T) {
	const after = 3 * time.Second
	lab, bin := faultLab(t, Params{Size: labSize, Resources: 1, FailbackAuto: true, FailbackAfter: after})
	ctx := context.Background()
	w := newWorkload(lab)
	w.mustWrite(t, 4)
	tw := startTimedWriter(w, 10)
	defer tw.halt()
	if err := lab.Crash(Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "bravo Primary with the VIP", func(s *Status) bool {
		return s.Resources[0].Primary == Bravo && s.Resources[0].VIPHolder == Bravo
	})
	waitAcked(t, tw, time.Now(), 2, "on bravo")
	restarted := time.Now()
	if err := lab.Restart(ctx, Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "r0 back on alpha with the VIP, bravo in sync", inSyncOn(Alpha))
	// Alpha must have resynced and then stayed healthy for the whole
	// failback-after before taking r0 back: never earlier than that after
	// its restart (a lower bound, not a timing assertion on the machine's
	// speed).
	if back := time.Since(restarted); back < after {
		t.Fatalf("r0 moved back to alpha %v after its restart, before failback-after (%v)", back, after)
	}
	s := status(t, lab)
	r := recordOf(s, Alpha)
	if r == nil || r.Primary != Alpha || r.Epoch != 3 || r.LastFailover == nil || r.LastFailover.How != "demoted" || r.LastFailover.From != Bravo {
		t.Fatalf("record after the failback: %+v (last failover %+v); want alpha at epoch 3, handed over by bravo", r, r.LastFailover)
	}
	waitAcked(t, tw, time.Now(), 2, "after the failback")
	tw.halt()
	w.mustWrite(t, 2)
	w.check(t)
	verifyReplicas(t, lab, bin, Alpha)
}

// fioRegion is one fio job's part of r0.
const fioRegion = 256 << 10

// fioJob runs fio from the client against the VIP over region k, bounded
// (killed if it does not stop seconds after it was told to):
// sequential 64 KiB writes with crc32c verify headers, throttled so that
// a job lasts a fraction of a second, read back and checked at the end of
// the job; with verifyOnly, only the check (of what an earlier job wrote
// there). ok is fio's exit status 0.
func fioJob(lab *Lab, k int, verifyOnly bool, seconds int) (bool, string) {
	ns, err := lab.Netns(Client)
	if err != nil {
		return false, err.Error()
	}
	// -k: fio, told to stop while its writes wait for replies from a
	// primary that died (no TCP keepalive, nothing to retransmit), waits
	// for them for minutes; SIGKILL it soon after (--thread: one process,
	// no forked job left holding the output pipe).
	args := []string{"netns", "exec", ns, "timeout", "-k", "3", fmt.Sprint(seconds), "fio",
		fmt.Sprintf("--name=region%d", k), "--ioengine=nbd", "--uri=" + URI(0),
		"--rw=write", "--bs=64k", "--iodepth=4", "--thread",
		fmt.Sprintf("--offset=%d", k*fioRegion), fmt.Sprintf("--size=%d", fioRegion),
		"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0"}
	if verifyOnly {
		args = append(args, "--verify_only=1")
	} else {
		args = append(args, "--do_verify=1", "--rate=512k")
	}
	out, errOut, err := testenv.RunErr("ip", args...)
	return err == nil, out + errOut
}

// fioBadData reports whether fio's output says it read other data than
// it had written (rather than failing to reach the VIP).
func fioBadData(out string) bool {
	return strings.Contains(out, "verify:") || strings.Contains(out, "bad magic") || strings.Contains(out, "bad header")
}

// TestScenarioFioVerifyFailover: fio jobs, each writing a region of its
// own with crc32c verify headers and checking it, run one after another
// from the client against the VIP, and alpha is crashed while one runs;
// the jobs go on through the failover. Every job that succeeded (all its
// writes acknowledged and read back) is verified again by fio's verify
// pass on bravo after the failover, and again after alpha has resynced;
// then the replicas are compared.
func TestScenarioFioVerifyFailover(t *testing.T) {
	testenv.RequireTool(t, "fio")
	lab, bin := clusterLab(t)
	ctx := context.Background()
	began := time.Now()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(began).Seconds(), what) }
	const regions = labSize / fioRegion
	var (
		mu       sync.Mutex
		done     []int
		inFlight = -1
		bad      string
	)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for k := range regions {
			mu.Lock()
			inFlight = k
			mu.Unlock()
			jobStart := time.Now()
			ok, out := fioJob(lab, k, false, 6)
			if d := time.Since(jobStart); d > 5*time.Second {
				t.Logf("fio over region %d took %v (ok %v)", k, d.Round(time.Millisecond), ok)
			}
			mu.Lock()
			if ok {
				done = append(done, k)
			} else if fioBadData(out) && bad == "" {
				bad = fmt.Sprintf("region %d:\n%s", k, out)
			}
			mu.Unlock()
		}
	}()
	// Crash alpha once three regions are done, while the fourth runs (its
	// fio started and, most likely, half way through its writes).
	deadline := time.Now().Add(syncWait)
	for {
		mu.Lock()
		n := len(done)
		mu.Unlock()
		if n >= 3 {
			time.Sleep(400 * time.Millisecond)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fio completed %d regions in %v before any fault", n, syncWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := lab.Crash(Alpha); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	crashedIn := inFlight
	mu.Unlock()
	phase(fmt.Sprintf("alpha crashed during region %d", crashedIn))
	<-finished
	phase("every region tried")
	if bad != "" {
		t.Fatalf("fio read back other data than it wrote: %s", bad)
	}
	after := 0
	for _, k := range done {
		if k > crashedIn {
			after++
		}
	}
	t.Logf("fio jobs: regions %v of %d written and verified; alpha crashed during region %d (which %s); %d completed after it",
		done, regions, crashedIn, map[bool]string{true: "completed", false: "failed"}[slices.Contains(done, crashedIn)], after)
	if after < 2 {
		t.Fatalf("%d regions completed after the crash: want at least 2 (the VIP did not serve again?)", after)
	}
	s := status(t, lab)
	if s.Resources[0].Primary != Bravo || s.Resources[0].VIPHolder != Bravo {
		t.Fatalf("after the failover: primary %q, VIP on %q; want bravo", s.Resources[0].Primary, s.Resources[0].VIPHolder)
	}
	verifyAll := func(when string) {
		t.Helper()
		for _, k := range done {
			if ok, out := fioJob(lab, k, true, 30); !ok {
				t.Fatalf("%s: fio's verify pass over region %d failed:\n%s", when, k, out)
			}
		}
	}
	verifyAll("on bravo after the failover")
	phase("verified on bravo")
	if err := lab.Restart(ctx, Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "alpha resynced as Secondary, bravo Primary with the VIP", inSyncOn(Bravo))
	phase("alpha resynced")
	verifyAll("after alpha's resync")
	verifyReplicas(t, lab, bin, Bravo)
	phase("verified after the resync, replicas identical")
}
