package authority

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/tandem-ha/tandem/cluster"
)

var secret = []byte("tandem-test-secret")

var testTimeouts = Timeouts{Heartbeat: 500 * time.Millisecond, Election: 500 * time.Millisecond, LeaderLease: 400 * time.Millisecond}

// testCluster is three real voters on loopback with on-disk stores.
type testCluster struct {
	t     *testing.T
	names []string
	cfgs  []Config
	nodes []*Authority

	mu       sync.Mutex
	commits  map[string][]cluster.Committed
	statuses map[string][]Status
}

func newTestCluster(t *testing.T) *testCluster {
	t.Helper()
	c := &testCluster{t: t, names: []string{"a", "b", "w"}, commits: map[string][]cluster.Committed{}, statuses: map[string][]Status{}}
	var voters []Voter
	var lns []net.Listener
	for _, n := range c.names {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		voters = append(voters, Voter{Name: n, Addr: ln.Addr().String()})
	}
	out := io.Discard
	if testing.Verbose() {
		out = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	for i, n := range c.names {
		c.cfgs = append(c.cfgs, Config{
			Node: n, Voters: voters, Listener: lns[i], Dir: t.TempDir(), Secret: secret,
			Logger: log,
			// Tests run beside others on two loaded cores, under -race:
			// slower than the defaults, so a starved process does not
			// depose a healthy leader mid-test. TestLeaderFailover measures
			// the defaults.
			Timeouts: testTimeouts,
			OnCommit: func(e cluster.Committed) { c.mu.Lock(); c.commits[n] = append(c.commits[n], e); c.mu.Unlock() },
			OnStatus: func(s Status) { c.mu.Lock(); c.statuses[n] = append(c.statuses[n], s); c.mu.Unlock() },
		})
	}
	c.nodes = make([]*Authority, len(c.names))
	t.Cleanup(func() {
		for i := range c.nodes {
			c.stop(i)
		}
	})
	return c
}

func (c *testCluster) start(i int) *Authority {
	c.t.Helper()
	a, err := Open(c.cfgs[i])
	if err != nil {
		c.t.Fatalf("open %s: %v", c.names[i], err)
	}
	// A restart listens on the address again.
	c.cfgs[i].Listener = nil
	c.nodes[i] = a
	return a
}

func (c *testCluster) startAll() {
	for i := range c.names {
		c.start(i)
	}
}

func (c *testCluster) stop(i int) {
	if c.nodes[i] != nil {
		if err := c.nodes[i].Close(); err != nil {
			c.t.Errorf("close %s: %v", c.names[i], err)
		}
		c.nodes[i] = nil
	}
}

func (c *testCluster) committed(n string) []cluster.Committed {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]cluster.Committed(nil), c.commits[n]...)
}

// waitFor polls cond for at most d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// leader waits until the running nodes agree on a leader and returns it.
// (Right after a start a late candidate can still depose the first leader;
// once every node follows one, proposals in the tests commit.)
func (c *testCluster) leader() int {
	c.t.Helper()
	idx := -1
	waitFor(c.t, 15*time.Second, "no leader elected", func() bool {
		idx = -1
		for i, a := range c.nodes {
			if a != nil && a.raft.State() == raft.Leader {
				idx = i
			}
		}
		if idx < 0 {
			return false
		}
		for _, a := range c.nodes {
			if a != nil && a.Status().Leader != c.names[idx] {
				return false
			}
		}
		return true
	})
	return idx
}

func (c *testCluster) follower() int {
	l := c.leader()
	for i, a := range c.nodes {
		if a != nil && i != l {
			return i
		}
	}
	c.t.Fatal("no follower running")
	return -1
}

func (c *testCluster) propose(i int, cmd cluster.Command) (*cluster.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.nodes[i].Propose(ctx, cmd)
}

// sameEverywhere waits until every running node holds the same record as
// node i.
func (c *testCluster) sameEverywhere(i int) *cluster.Record {
	c.t.Helper()
	want, _ := c.nodes[i].Record().Marshal()
	waitFor(c.t, 5*time.Second, "records differ", func() bool {
		for _, a := range c.nodes {
			if a == nil {
				continue
			}
			if got, _ := a.Record().Marshal(); !bytes.Equal(got, want) {
				return false
			}
		}
		return true
	})
	return c.nodes[i].Record()
}

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func cmd(op cluster.Op, by string, f func(*cluster.Command)) cluster.Command {
	c := cluster.Command{Version: cluster.RecordVersion, Op: op, ID: fmt.Sprintf("%s-%s-%d", by, op, time.Now().UnixNano()), By: by, At: t0}
	if f != nil {
		f(&c)
	}
	return c
}

func define(res string) cluster.Command {
	return cmd(cluster.OpDefine, "a", func(c *cluster.Command) { c.Resource, c.Replicas, c.Preferred = res, []string{"a", "b"}, "a" })
}

func TestCommitIsAppliedOnEveryVoter(t *testing.T) {
	c := newTestCluster(t)
	c.startAll()
	l, f := c.leader(), c.follower()

	// From the leader, then from a follower (forwarded).
	rec, err := c.propose(l, define("r0"))
	if err != nil || rec.Resource("r0") == nil || rec.Index != 1 {
		t.Fatalf("define on the leader: %v, %+v", err, rec)
	}
	rec, err = c.propose(f, define("r1"))
	if err != nil || rec.Resource("r1") == nil || rec.Index != 2 {
		t.Fatalf("define from a follower: %v, %+v", err, rec)
	}
	// Applied on the proposer before Propose returned.
	if got := c.nodes[f].Record(); got.Resource("r1") == nil {
		t.Fatalf("proposer has not applied its own command: %+v", got)
	}
	// A confirmed read from the other follower sees both, at once.
	for i := range c.nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rec, err := c.nodes[i].ReadRecord(ctx)
		cancel()
		if err != nil || rec.Index != 2 || c.nodes[i].Record().Index != 2 {
			t.Fatalf("ReadRecord on %s: %v, %+v", c.names[i], err, rec)
		}
	}
	c.sameEverywhere(l)
	for _, n := range c.names {
		var ops []string
		for _, e := range c.committed(n) {
			if e.Err != nil {
				t.Errorf("%s: %v", n, e.Err)
			}
			ops = append(ops, e.Cmd.Resource)
		}
		if fmt.Sprint(ops) != "[r0 r1]" {
			t.Errorf("%s saw commits %v, want [r0 r1] in order", n, ops)
		}
	}
	st := c.nodes[f].Status()
	if st.State != "Follower" || st.Leader != c.names[l] || !st.Quorum {
		t.Errorf("follower status %+v", st)
	}
}

func TestLeaderFailover(t *testing.T) {
	c := newTestCluster(t)
	for i := range c.cfgs {
		c.cfgs[i].Timeouts = Timeouts{} // the defaults, measured
	}
	c.startAll()
	l := c.leader()
	if _, err := c.propose(l, define("r0")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.stop(l)
	nl := c.leader()
	t.Logf("new leader %s elected %v after the old one closed", c.names[nl], time.Since(start))
	f := c.follower()
	rec, err := c.propose(f, define("r1"))
	if errors.Is(err, ErrOutcomeUnknown) {
		// On a starved machine the new leader can be deposed too: the
		// define is idempotent, ask again.
		t.Logf("first proposal after failover: %v; again", err)
		rec, err = c.propose(f, define("r1"))
	}
	if err != nil || rec.Resource("r1") == nil {
		t.Fatalf("proposal from the follower after failover: %v", err)
	}
	t.Logf("first commit %v after the old leader closed", time.Since(start))
	c.sameEverywhere(nl)
	waitFor(t, 2*time.Second, "OnStatus never reported the new leader", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, s := range c.statuses[c.names[f]] {
			if s.Leader == c.names[nl] && s.State == "Follower" {
				return true
			}
		}
		return false
	})
	// The old leader comes back from its disk and catches up.
	c.start(l)
	c.sameEverywhere(nl)
}

func TestNoQuorumNothingTakesEffect(t *testing.T) {
	c := newTestCluster(t)
	c.startAll()
	l := c.leader()
	if _, err := c.propose(l, define("r0")); err != nil {
		t.Fatal(err)
	}
	c.sameEverywhere(l)
	survivor := (l + 1) % 3
	for i := range c.nodes {
		if i != survivor {
			c.stop(i)
		}
	}
	// A lone leader steps down within its lease; a follower stops
	// claiming quorum a heartbeat timeout after it last heard the leader.
	waitFor(t, 5*time.Second, "survivor alone still claims quorum", func() bool {
		st := c.nodes[survivor].Status()
		return !st.Quorum && st.State != "Leader"
	})
	before := c.nodes[survivor].Record()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := c.nodes[survivor].Propose(ctx, define("lost"))
	if !errors.Is(err, ErrNoQuorum) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("propose without quorum: %v, want ErrNoQuorum", err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer rcancel()
	if _, err := c.nodes[survivor].ReadRecord(rctx); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("confirmed read without quorum: %v, want ErrNoQuorum", err)
	}
	if got := c.nodes[survivor].Record(); got.Index != before.Index || got.Resource("lost") != nil {
		t.Fatalf("a failed proposal changed the record: %+v", got)
	}
	// The others return; the failed command never appears.
	for i := range c.nodes {
		if i != survivor {
			c.start(i)
		}
	}
	nl := c.leader()
	if _, err := c.propose(survivor, define("r1")); err != nil {
		t.Fatal(err)
	}
	rec := c.sameEverywhere(nl)
	if rec.Resource("lost") != nil || rec.Index != 2 {
		t.Fatalf("after recovery: %+v", rec)
	}
}

func TestCloseEndsAWaitingProposal(t *testing.T) {
	c := newTestCluster(t)
	c.startAll()
	l := c.leader()
	survivor := (l + 1) % 3
	for i := range c.nodes {
		if i != survivor {
			c.stop(i)
		}
	}
	a := c.nodes[survivor]
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := a.Propose(ctx, define("r0"))
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	c.stop(survivor)
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("propose during close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a waiting Propose")
	}
	if _, err := a.Propose(context.Background(), define("r1")); !errors.Is(err, ErrClosed) {
		t.Fatalf("propose after close: %v", err)
	}
}

func TestRestartCatchesUpFromDisk(t *testing.T) {
	c := newTestCluster(t)
	c.startAll()
	f := c.follower()
	c.stop(f)
	l := c.leader()
	for i := range 5 {
		if _, err := c.propose(l, define(fmt.Sprintf("r%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	c.start(f)
	rec := c.sameEverywhere(l)
	if rec.Index != 5 {
		t.Fatalf("index %d", rec.Index)
	}
	// All three restart from disk at once: the record survives.
	for i := range c.nodes {
		c.stop(i)
	}
	c.startAll()
	c.leader()
	waitFor(t, 5*time.Second, "record not replayed after a full restart", func() bool {
		for _, a := range c.nodes {
			if a.Record().Index != 5 {
				return false
			}
		}
		return true
	})
}

func TestRefusalReachesProposerAndChangesNothing(t *testing.T) {
	c := newTestCluster(t)
	c.startAll()
	l, f := c.leader(), c.follower()
	if _, err := c.propose(l, define("r0")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := c.propose(f, cmd(cluster.OpReportDisk, n, func(c *cluster.Command) {
			c.Resource, c.Node, c.State = "r0", n, cluster.StateUpToDate
		})); err != nil {
			t.Fatal(err)
		}
	}
	before := c.sameEverywhere(l)
	// A promotion at a stale epoch (not current+1), from a follower and
	// from the leader.
	stale := cmd(cluster.OpPromote, "b", func(c *cluster.Command) { c.Resource, c.Node, c.Epoch = "r0", "b", 5 })
	for _, i := range []int{f, l} {
		rec, err := c.propose(i, stale)
		if !errors.Is(err, cluster.ErrStaleEpoch) || !errors.Is(err, ErrRefused) {
			t.Fatalf("from %s: %v, want ErrStaleEpoch", c.names[i], err)
		}
		if rec == nil || rec.Index != before.Index {
			t.Fatalf("refused command returned record %+v", rec)
		}
	}
	after := c.sameEverywhere(l)
	if a, b := mustMarshal(t, after), mustMarshal(t, before); !bytes.Equal(a, b) {
		t.Fatalf("a refusal changed the record:\n%s\n%s", a, b)
	}
	for _, n := range c.names {
		es := c.committed(n)
		waitFor(t, 2*time.Second, n+" did not see both refusals", func() bool { es = c.committed(n); return len(es) == 5 })
		for _, e := range es[3:] {
			if !errors.Is(e.Err, cluster.ErrStaleEpoch) || e.Record.Index != before.Index {
				t.Errorf("%s: refusal committed as %v, index %d", n, e.Err, e.Record.Index)
			}
		}
	}
	// A good promotion still commits.
	rec, err := c.propose(f, cmd(cluster.OpPromote, "b", func(c *cluster.Command) { c.Resource, c.Node, c.Epoch = "r0", "b", 1 }))
	if err != nil || rec.Resource("r0").Primary != "b" {
		t.Fatalf("promote: %v", err)
	}
}

func mustMarshal(t *testing.T, r *cluster.Record) []byte {
	t.Helper()
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSnapshotRestartAndInstall(t *testing.T) {
	c := newTestCluster(t)
	for i := range c.cfgs {
		c.cfgs[i].TrailingLogs = 1
	}
	c.startAll()
	l := c.leader()
	for i := range 4 {
		if _, err := c.propose(l, define(fmt.Sprintf("r%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	c.sameEverywhere(l)
	for _, a := range c.nodes {
		if err := a.Snapshot(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.propose(l, define("after")); err != nil {
		t.Fatal(err)
	}
	want := mustMarshal(t, c.sameEverywhere(l))

	// A follower that lost its disk: it bootstraps an empty log and gets
	// the leader's snapshot (the entries behind it are compacted away).
	f := c.follower()
	c.stop(f)
	if err := os.RemoveAll(c.cfgs[f].Dir); err != nil {
		t.Fatal(err)
	}
	c.start(f)
	waitFor(t, 5*time.Second, "wiped follower did not catch up", func() bool {
		return bytes.Equal(mustMarshal(t, c.nodes[f].Record()), want)
	})
	restored := false
	for _, e := range c.committed(c.names[f]) {
		restored = restored || (e.Cmd.Op == "" && e.Err == nil && e.Record != nil)
	}
	if !restored {
		t.Error("the wiped follower's OnCommit never saw the restored record")
	}
	// A restart of everyone starts from the snapshots plus the tail.
	for i := range c.nodes {
		c.stop(i)
	}
	c.startAll()
	c.leader()
	waitFor(t, 5*time.Second, "record differs after restoring from snapshots", func() bool {
		for _, a := range c.nodes {
			if !bytes.Equal(mustMarshal(t, a.Record()), want) {
				return false
			}
		}
		return true
	})
}

func TestReopenWithOtherVotersRefused(t *testing.T) {
	c := newTestCluster(t)
	c.startAll()
	c.leader()
	c.stop(2)
	cfg := c.cfgs[2]
	cfg.Voters = append([]Voter(nil), cfg.Voters...)
	cfg.Voters[0].Name = "z"
	if _, err := Open(cfg); !errors.Is(err, ErrVoters) {
		t.Fatalf("reopen with another voter set: %v, want ErrVoters", err)
	}
	// The refused open released its store and port: the right config
	// opens.
	c.start(2)
}

func TestWrongSecretRefused(t *testing.T) {
	c := newTestCluster(t)
	c.startAll()
	l := c.leader()
	intruder := &streamLayer{secrets: [][]byte{[]byte("not the secret")}}
	for _, p := range []byte{purposeRaft, purposeForward} {
		conn, err := intruder.dial(c.cfgs[l].Voters[l].Addr, time.Second, p)
		if !errors.Is(err, ErrAuth) {
			if conn != nil {
				conn.Close()
			}
			t.Fatalf("purpose %c with a wrong secret: %v, want ErrAuth", p, err)
		}
	}
	// Garbage instead of a handshake is dropped, and the cluster works on.
	conn, err := net.Dial("tcp", c.cfgs[l].Voters[l].Addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(bytes.Repeat([]byte{0}, 64))
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err == nil {
		t.Errorf("server answered %d bytes to garbage", n)
	}
	conn.Close()
	if _, err := c.propose(c.follower(), define("r0")); err != nil {
		t.Fatal(err)
	}
}

func TestConfigRefused(t *testing.T) {
	good := func() Config {
		return Config{Node: "a", Voters: []Voter{{"a", "127.0.0.1:1"}, {"b", "127.0.0.1:2"}, {"w", "127.0.0.1:3"}}, Dir: t.TempDir(), Secret: secret}
	}
	cases := map[string]func(*Config){
		"no node":        func(c *Config) { c.Node = "" },
		"not a voter":    func(c *Config) { c.Node = "x" },
		"no voters":      func(c *Config) { c.Voters = nil },
		"duplicate name": func(c *Config) { c.Voters[1].Name = "a" },
		"duplicate addr": func(c *Config) { c.Voters[1].Addr = "127.0.0.1:1" },
		"bad addr":       func(c *Config) { c.Voters[2].Addr = "nowhere" },
		"no dir":         func(c *Config) { c.Dir = "" },
		"no secret":      func(c *Config) { c.Secret = nil },
		"negative":       func(c *Config) { c.Timeouts.Heartbeat = -time.Second },
		"lease > hb":     func(c *Config) { c.Timeouts.LeaderLease = time.Second },
		"election < hb":  func(c *Config) { c.Timeouts.Heartbeat, c.Timeouts.Election = time.Second, 500*time.Millisecond },
		"tiny":           func(c *Config) { c.Timeouts.Heartbeat = time.Millisecond },
		"tls, no cert":   func(c *Config) { c.TLS = &tls.Config{} },
	}
	for name, mod := range cases {
		cfg := good()
		mod(&cfg)
		if _, err := Open(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
		if entries, _ := os.ReadDir(cfg.Dir); cfg.Dir != "" && len(entries) != 0 {
			t.Errorf("%s: refused config left files in %s", name, cfg.Dir)
		}
	}
}

func TestDirInUseRefused(t *testing.T) {
	c := newTestCluster(t)
	c.start(0)
	cfg := c.cfgs[0]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = ln
	if a, err := Open(cfg); err == nil {
		a.Close()
		t.Fatal("a second voter opened the same data directory")
	}
	// The refused open closed what it opened, the listener included.
	if _, err := ln.Accept(); err == nil {
		t.Fatal("the refused open left its listener open")
	}
}

// The middle of a secret rotation: one node already proves the new secret
// and accepts the old, the others still prove the old and accept the new.
// The log works across them, in both directions (commits from a leader
// and forwarded from every node); a secret none of them accepts is still
// refused.
func TestRotatingSecretKeepsTheLogRunning(t *testing.T) {
	c := newTestCluster(t)
	rotated := []byte("the next cluster secret, rolled in")
	for i := range c.cfgs {
		if c.names[i] == "b" {
			c.cfgs[i].Secret, c.cfgs[i].AcceptSecrets = rotated, [][]byte{secret}
		} else {
			c.cfgs[i].AcceptSecrets = [][]byte{rotated}
		}
	}
	c.startAll()
	for i, n := range c.names {
		if rec, err := c.propose(i, define("r-"+n)); err != nil || rec.Resource("r-"+n) == nil {
			t.Fatalf("define from %s mid-rotation: %v, %+v", n, err, rec)
		}
	}
	c.sameEverywhere(c.leader())
	l := c.leader()
	for _, k := range [][]byte{rotated, secret} {
		// It proves k and, mid-rotation like the others, accepts both.
		conn, err := (&streamLayer{secrets: [][]byte{k, rotated, secret}}).dial(c.cfgs[l].Voters[l].Addr, time.Second, purposeForward)
		if err != nil {
			t.Fatalf("a peer proving an accepted secret was refused: %v", err)
		}
		conn.Close()
	}
	if conn, err := (&streamLayer{secrets: [][]byte{[]byte("neither the old nor the new")}}).dial(c.cfgs[l].Voters[l].Addr, time.Second, purposeForward); !errors.Is(err, ErrAuth) {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("a secret nobody accepts: %v, want ErrAuth", err)
	}
}
