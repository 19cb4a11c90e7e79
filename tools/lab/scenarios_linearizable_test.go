package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/tandem-ha/tandem/tools/testenv"
	"golang.org/x/sys/unix"
)

// TestScenarioLinearizableCrash: libnbd clients in the client namespace
// (one connection each, through the VIP) read and write 256 blocks of
// 4 KiB, each a register, while alpha is crashed, bravo takes over
// (fence, promotion, VIP), and alpha comes back and resyncs under the
// load. The history of every operation, timed by the clients, must be
// linearizable (porcupine): no acknowledged write lost, no read of a value
// older than one already read or acknowledged, no torn block unless a
// write to it ran at the same time (NBD leaves overlapping requests in
// flight together undefined, and the page cache copies a write into a
// page that a read may be copying out).
func TestScenarioLinearizableCrash(t *testing.T) {
	lab, bin := clusterLab(t)
	linearizableAcross(t, lab, bin, "alpha crashed", func(context.Context) error { return lab.Crash(Alpha) },
		func(ctx context.Context) error { return lab.Restart(ctx, Alpha) })
}

// TestScenarioLinearizablePartition: the same clients, while alpha is cut
// from bravo and the witness but not from the clients: the classic split
// brain. Alpha must stop serving (it lost quorum; bravo fences it through
// its BMC) before bravo serves, or a client still connected to alpha reads
// a value bravo has overwritten. After the heal alpha is powered on and
// resyncs.
func TestScenarioLinearizablePartition(t *testing.T) {
	lab, bin := clusterLab(t)
	linearizableAcross(t, lab, bin, "alpha cut from bravo and the witness", func(ctx context.Context) error {
		if err := lab.Cut(ctx, Alpha, Bravo); err != nil {
			return err
		}
		return lab.Cut(ctx, Alpha, Witness)
	}, func(ctx context.Context) error {
		if err := lab.Heal(ctx); err != nil {
			return err
		}
		return lab.Restart(ctx, Alpha)
	})
}

// TestScenarioLinearizableSwitchover: the same clients through an admin
// switchover to bravo: alpha drains and demotes, bravo promotes and
// claims the VIP, and no client may see the device go back in time.
func TestScenarioLinearizableSwitchover(t *testing.T) {
	lab, bin := clusterLab(t)
	linearizableAcross(t, lab, bin, "switchover to bravo", func(context.Context) error {
		tandemOn(t, lab, bin, Bravo, "switchover", "r0", "--to", Bravo, "--node", Bravo)
		return nil
	}, func(context.Context) error { return nil })
}

// linearizableAcross runs the clients on alpha, applies fault, waits for
// bravo to serve, then recovers alpha and waits for its resync, and
// checks the clients' history.
func linearizableAcross(t *testing.T, lab *Lab, bin, faultName string, fault, recover func(context.Context) error) {
	t.Helper()
	testenv.RequireTool(t, "nbdsh") // python3-libnbd, which linclient.py imports
	began := time.Now()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(began).Seconds(), what) }

	script, err := filepath.Abs("testdata/linclient.py")
	if err != nil {
		t.Fatal(err)
	}
	// In the logs directory, so that a failed run keeps it with the logs
	// (TANDEM_LAB_KEEP_LOGS).
	out := filepath.Join(lab.l.logs(), "linclient-history.jsonl")
	const clients, blocks = 4, 256
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Pipes with descriptors of their own: the child reads and writes
	// them directly, so that it exiting (or failing) is seen at once.
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	exited := make(chan error, 1)
	go func() {
		// The python of Debian's python3-libnbd, not whatever is first on
		// PATH.
		code, err := lab.Exec(ctx, Client, []string{"/usr/bin/python3", script, URI(0), fmt.Sprint(clients), fmt.Sprint(blocks), "120", out},
			stdinR, stdoutW, &stderr)
		if err == nil && code != 0 {
			err = fmt.Errorf("exit %d", code)
		}
		stdinR.Close()
		stdoutW.Close()
		exited <- err
	}()
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdoutR)
		for sc.Scan() {
			lines <- sc.Text()
		}
		stdoutR.Close()
		close(lines)
	}()
	stopClients := func() error {
		stdinW.Close()
		err := <-exited
		for range lines {
		}
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = stopClients()
		}
	}()
	select {
	case l := <-lines:
		if l != "ready" {
			t.Fatalf("linclient.py: %q, want ready\n%s", l, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("linclient.py did not get ready in a minute\n%s", stderr.String())
	}
	phase("clients running on alpha")
	time.Sleep(3 * time.Second)

	// The clients time operations on CLOCK_MONOTONIC too (Python's
	// time.monotonic_ns): the fault is placed in their history.
	faultAt := monotonicNow(t)
	if err := fault(ctx); err != nil {
		t.Fatal(err)
	}
	phase(faultName)
	waitFor(t, lab, "bravo Primary with the VIP", func(s *Status) bool {
		return s.Resources[0].Primary == Bravo && s.Resources[0].VIPHolder == Bravo
	})
	phase("bravo serves")
	time.Sleep(3 * time.Second)
	if err := recover(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "alpha resynced as Secondary, bravo Primary with the VIP", inSyncOn(Bravo))
	phase("alpha resynced")
	time.Sleep(2 * time.Second)
	stopped = true
	if err := stopClients(); err != nil {
		t.Fatalf("linclient.py: %v\n%s", err, stderr.String())
	}
	phase("clients stopped")

	ops, st, err := readHistory(out, blocks, faultAt)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("history: %d operations: %d writes acknowledged, %d reads, %d failed (%d writes of unknown outcome), %d reads torn by a write running at the same time; after the fault %d writes acknowledged, %d reads",
		len(ops), st.writes, st.reads, st.failed, st.unknown, st.tornOverlapped, st.writesAfter, st.readsAfter)
	if st.torn > 0 {
		t.Fatalf("%d reads returned a block mixing two values with no write to it running at the same time", st.torn)
	}
	// The clients must have worked on both sides of the failover, or the
	// check proves little.
	if st.writes < 200 || st.reads < 200 || st.writesAfter < 100 || st.readsAfter < 100 {
		t.Fatalf("too little I/O to judge: %+v", st)
	}
	testenv.CheckLinearizable(t, blocks, ops)
	verifyReplicas(t, lab, bin, Bravo)
	phase("linearizable; replicas identical")
}

// monotonicNow reads CLOCK_MONOTONIC in ns, the clock linclient.py
// times operations with (network namespaces share it).
func monotonicNow(t *testing.T) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano()
}

type historyStats struct {
	writes, reads, failed, unknown, torn int
	tornOverlapped                       int // torn while a write to the block ran: allowed
	writesAfter, readsAfter              int // called after the fault
}

// readHistory turns linclient.py's records into porcupine operations: a
// failed read is left out (it returned nothing), a failed write may take
// effect at any time after its call or never.
func readHistory(path string, blocks int, faultAt int64) ([]porcupine.Operation, historyStats, error) {
	var st historyStats
	f, err := os.Open(path)
	if err != nil {
		return nil, st, fmt.Errorf("the clients' history: %w", err)
	}
	defer f.Close()
	type rec struct {
		client   int
		kind     string
		block    int
		value    int64
		call, rt int64
		ok       bool
	}
	var recs []rec
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var raw []any
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil || len(raw) != 7 {
			return nil, st, fmt.Errorf("the clients' history: bad record %q", sc.Text())
		}
		num := func(i int) int64 { v, _ := raw[i].(float64); return int64(v) }
		kind, _ := raw[1].(string)
		ok, _ := raw[6].(bool)
		r := rec{client: int(num(0)), kind: kind, block: int(num(2)), value: num(3), call: num(4), rt: num(5), ok: ok}
		if r.block < 0 || r.block >= blocks || (kind != "w" && kind != "r") {
			return nil, st, fmt.Errorf("the clients' history: bad record %q", sc.Text())
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, st, fmt.Errorf("the clients' history: %w", err)
	}
	writeOverlaps := func(recs []rec, r rec) bool {
		for _, w := range recs {
			end := w.rt
			if !w.ok {
				end = math.MaxInt64
			}
			if w.kind == "w" && w.block == r.block && w.call < r.rt && end > r.call {
				return true
			}
		}
		return false
	}
	var ops []porcupine.Operation
	for _, r := range recs {
		after := r.call > faultAt
		switch {
		case r.kind == "w":
			ret := r.rt
			if r.ok {
				st.writes++
				if after {
					st.writesAfter++
				}
			} else {
				st.failed++
				st.unknown++
				ret = math.MaxInt64
			}
			// The values are large: JSON's float64 holds them exactly
			// (client << 40 | sequence is below 2^53).
			ops = append(ops, porcupine.Operation{ClientId: r.client, Input: testenv.BlockInput{Write: true, Block: r.block, Value: uint64(r.value)}, Call: r.call, Output: testenv.BlockOutput{}, Return: ret})
		case !r.ok:
			st.failed++
		case r.value < 0:
			if writeOverlaps(recs, r) {
				st.tornOverlapped++
			} else {
				st.torn++
			}
		default:
			st.reads++
			if after {
				st.readsAfter++
			}
			ops = append(ops, porcupine.Operation{ClientId: r.client, Input: testenv.BlockInput{Block: r.block}, Call: r.call, Output: testenv.BlockOutput{Value: uint64(r.value)}, Return: r.rt})
		}
	}
	return ops, st, nil
}

// readHistory's bookkeeping, without a lab: a failed write is of unknown
// outcome, a failed read is dropped, a torn read counts against the run
// only when no write to its block ran at the same time.
func TestReadHistory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "h.jsonl")
	lines := []string{
		`[0, "w", 1, 5, 100, 200, true]`,
		`[1, "r", 1, 5, 300, 400, true]`,
		`[0, "w", 2, 6, 500, 900, false]`,   // unknown outcome
		`[1, "r", 2, 0, 600, 700, false]`,   // failed read: dropped
		`[1, "r", 1, -1, 150, 250, true]`,   // torn while the write of 5 ran
		`[1, "r", 2, -1, 1000, 1100, true]`, // torn, the failed write may still be running: allowed
		`[2, "r", 3, -1, 10, 20, true]`,     // torn with no write to block 3: a failure
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ops, st, err := readHistory(path, 4, 250)
	if err != nil {
		t.Fatal(err)
	}
	// The fault at 250: the good read (300) came after it, the good write
	// (100) before.
	want := historyStats{writes: 1, reads: 1, failed: 2, unknown: 1, torn: 1, tornOverlapped: 2, writesAfter: 0, readsAfter: 1}
	if st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	if len(ops) != 3 || ops[2].Return != math.MaxInt64 {
		t.Errorf("operations %+v: want the two writes and the good read, the failed write open-ended", ops)
	}
	for _, bad := range []string{`[0, "x", 1, 5, 1, 2, true]`, `[0, "w", 9, 5, 1, 2, true]`, `not json`} {
		if err := os.WriteFile(path, []byte(bad+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, err := readHistory(path, 4, 0); err == nil {
			t.Errorf("readHistory took %s", bad)
		}
	}
}
