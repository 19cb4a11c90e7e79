package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cluster/authority"
	"github.com/tandem-ha/tandem/fence"
	"github.com/tandem-ha/tandem/replicate"
)

// testClock is a clock the test moves; every manager's loop gets a tick
// when it does.
type testClock struct {
	mu   sync.Mutex
	now  time.Time
	subs []chan time.Time
}

func newTestClock() *testClock {
	return &testClock{now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Ticks(time.Duration) (<-chan time.Time, func()) {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	c.subs = append(c.subs, ch)
	c.mu.Unlock()
	return ch, func() {}
}

// advance moves time by d and ticks every loop (a tick already pending is
// enough: it reads the clock when it runs).
func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	now := c.now
	subs := append([]chan time.Time(nil), c.subs...)
	c.mu.Unlock()
	for _, ch := range subs {
		select {
		case ch <- now:
		default:
		}
	}
}

// journal is the order in which things happened across the fakes.
type journal struct {
	mu    sync.Mutex
	lines []string
}

func (j *journal) add(f string, a ...any) {
	j.mu.Lock()
	j.lines = append(j.lines, fmt.Sprintf(f, a...))
	j.mu.Unlock()
}

func (j *journal) snapshot() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.lines...)
}

func (j *journal) index(line string) int {
	for i, l := range j.snapshot() {
		if l == line {
			return i
		}
	}
	return -1
}

// memLog is an in-memory authority log shared by the test's managers:
// Apply in one order, every commit delivered to every connected member.
// A member cut off gets ErrNoQuorum.
type memLog struct {
	mu      sync.Mutex
	rec     *cluster.Record
	members map[string]*Manager
	cut     map[string]bool
	clock   *testClock
	j       *journal
}

func newMemLog(c *testClock, j *journal) *memLog {
	return &memLog{rec: cluster.NewRecord(), members: map[string]*Manager{}, cut: map[string]bool{}, clock: c, j: j}
}

func (l *memLog) record() *cluster.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rec
}

func (l *memLog) setCut(node string, cut bool) {
	l.mu.Lock()
	l.cut[node] = cut
	l.mu.Unlock()
}

// logFor is the Log of one member.
type logFor struct {
	l    *memLog
	node string
}

func (f logFor) Propose(ctx context.Context, cmd cluster.Command) (*cluster.Record, error) {
	l := f.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut[f.node] {
		return nil, fmt.Errorf("test log: %s: %w", f.node, authority.ErrNoQuorum)
	}
	next, err := cluster.Apply(l.rec, cmd)
	if err == nil {
		l.rec = next
		if cmd.Op == cluster.OpPromote || cmd.Op == cluster.OpMarkOutdated || cmd.Op == cluster.OpFenced {
			l.j.add("commit %s", cmd.String())
		}
	}
	e := cluster.Committed{At: l.clock.Now(), Cmd: cmd, Err: err, Record: l.rec}
	for n, m := range l.members {
		if !l.cut[n] {
			m.Commit(e)
		}
	}
	if err != nil {
		return l.rec, fmt.Errorf("%w: %w", authority.ErrRefused, err)
	}
	return l.rec, nil
}

type fakeVolume struct {
	mu      sync.Mutex
	node    string
	st      replicate.Status
	refuse  error // Promote fails with it
	refuseN int   // ... this many more times (0: always)
	j       *journal
}

func newFakeVolume(node string, j *journal) *fakeVolume {
	return &fakeVolume{node: node, j: j, st: replicate.Status{Resource: "r0", Node: node,
		Role: replicate.Secondary, Disk: replicate.UpToDate, Conn: replicate.Connected, PeerDisk: replicate.UpToDate}}
}

func (v *fakeVolume) Status() replicate.Status {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st
}

func (v *fakeVolume) Promote(ctx context.Context, force bool) (replicate.PromoteResult, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.refuse != nil {
		err := v.refuse
		if v.refuseN > 0 {
			if v.refuseN--; v.refuseN == 0 {
				v.refuse = nil
			}
		}
		return replicate.PromoteResult{}, err
	}
	v.st.Role = replicate.Primary
	v.st.Epoch++
	v.j.add("%s promote", v.node)
	return replicate.PromoteResult{Epoch: v.st.Epoch}, nil
}

func (v *fakeVolume) Demote(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.st.Role = replicate.Secondary
	v.j.add("%s demote", v.node)
	return nil
}

func (v *fakeVolume) Resync(ctx context.Context, full bool) error {
	v.j.add("%s resync", v.node)
	return nil
}

func (v *fakeVolume) PeerFenced(ctx context.Context) error {
	v.j.add("%s peer-fenced", v.node)
	v.peerGone()
	return nil
}

// peerGone is what the volume reports once the link to its peer died.
func (v *fakeVolume) peerGone() {
	v.mu.Lock()
	v.st.Conn, v.st.PeerDisk, v.st.PeerRole = replicate.Connecting, replicate.DiskUnknown, replicate.RoleUnknown
	v.mu.Unlock()
}

type fakeGate struct {
	mu    sync.Mutex
	node  string
	mode  IOMode
	lease time.Time
	j     *journal
}

func (g *fakeGate) SetLease(until time.Time) {
	g.mu.Lock()
	g.lease = until
	g.mu.Unlock()
}

func (g *fakeGate) getLease() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lease
}

func (g *fakeGate) SetIO(m IOMode) {
	g.mu.Lock()
	g.mode = m
	g.mu.Unlock()
	g.j.add("%s io %s", g.node, m)
}

func (g *fakeGate) get() IOMode {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mode
}

type fakeFencer struct {
	mu    sync.Mutex
	err   error
	calls int
	since []time.Time // Request.Since of each call
	off   func()      // the node's power goes
	j     *journal
	node  string
}

func (f *fakeFencer) Off(ctx context.Context, req fence.Request) (*fence.Result, error) {
	f.mu.Lock()
	f.calls++
	f.since = append(f.since, req.Since)
	err, off := f.err, f.off
	f.mu.Unlock()
	if err != nil {
		f.j.add("fence %s failed", f.node)
		return &fence.Result{Node: f.node}, err
	}
	if off != nil {
		off()
	}
	f.j.add("fence %s", f.node)
	return &fence.Result{Node: f.node, OK: true, Method: "ipmi test"}, nil
}

func (f *fakeFencer) set(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

func (f *fakeFencer) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

type fakeVIPs struct {
	node string
	j    *journal
}

func (v fakeVIPs) Claim(ctx context.Context, resource string) error {
	v.j.add("%s claim %s", v.node, resource)
	return nil
}

func (v fakeVIPs) Release(ctx context.Context, resource string) error {
	v.j.add("%s release %s", v.node, resource)
	return nil
}

// node is one manager with its fakes.
type node struct {
	name   string
	m      *Manager
	vol    *fakeVolume
	gate   *fakeGate
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	alerts []string
}

func (n *node) alertCount(sub string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, a := range n.alerts {
		if strings.Contains(a, sub) {
			c++
		}
	}
	return c
}

type testCluster struct {
	t       *testing.T
	clock   *testClock
	j       *journal
	log     *memLog
	nodes   map[string]*node
	fencers map[string]*fakeFencer
}

var voters = []string{"a", "b", "w"}

func newTestCluster(t *testing.T, onNoQuorum cluster.NoQuorumPolicy, prepare ...func(*testCluster)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, clock: newTestClock(), j: &journal{}, nodes: map[string]*node{}, fencers: map[string]*fakeFencer{}}
	c.log = newMemLog(c.clock, c.j)
	for _, v := range voters {
		c.fencers[v] = &fakeFencer{j: c.j, node: v}
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if !testing.Verbose() {
		logger = slog.New(slog.DiscardHandler)
	}
	for _, name := range voters {
		n := &node{name: name, done: make(chan struct{})}
		res := map[string]Resource{}
		if name != "w" {
			n.vol = newFakeVolume(name, c.j)
			n.gate = &fakeGate{node: name, j: c.j}
			res["r0"] = Resource{Volume: n.vol, Gate: n.gate}
		}
		m, err := New(Config{
			Machine: cluster.Config{Node: name, Voters: voters, Resources: []cluster.ResourceConfig{
				{Name: "r0", Replicas: [2]string{"a", "b"}, Preferred: "a", OnNoQuorum: onNoQuorum}}},
			Resources: res,
			Log:       logFor{c.log, name},
			Fencer: func(target string) (Fencer, error) {
				if f := c.fencers[target]; f != nil {
					return f, nil
				}
				return nil, errors.New("no fencer")
			},
			VIPs:    fakeVIPs{node: name, j: c.j},
			OnAlert: func(a cluster.Alert) { n.mu.Lock(); n.alerts = append(n.alerts, a.Text); n.mu.Unlock() },
			Clock:   c.clock,
			Logger:  logger.With("test_node", name),
		})
		if err != nil {
			t.Fatal(err)
		}
		n.m = m
		c.log.mu.Lock()
		c.log.members[name] = m
		c.log.mu.Unlock()
		c.nodes[name] = n
	}
	for _, p := range prepare {
		p(c)
	}
	for _, n := range c.nodes {
		ctx, cancel := context.WithCancel(context.Background())
		n.cancel = cancel
		go func() { defer close(n.done); _ = n.m.Run(ctx) }()
	}
	// Admin refuses a manager whose Run has not begun (ErrStopped): a
	// test that asks at once must not find one still unscheduled.
	for _, n := range c.nodes {
		deadline := time.Now().Add(10 * time.Second)
		for !n.m.running.Load() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	for _, n := range c.nodes {
		for _, o := range voters {
			if o != n.name {
				n.m.Inject(cluster.MemberChange{At: c.clock.Now(), Node: o, State: cluster.MemberAlive})
			}
		}
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			c.stop(n.name)
		}
	})
	return c
}

// stop ends a node's manager as a power-off would: its log membership
// goes too.
func (c *testCluster) stop(name string) {
	n := c.nodes[name]
	c.log.setCut(name, true)
	n.cancel()
	<-n.done
}

// dead tells every other node that name was declared dead.
func (c *testCluster) dead(name string, to ...string) {
	for _, o := range to {
		c.nodes[o].m.Inject(cluster.MemberChange{At: c.clock.Now(), Node: name, State: cluster.MemberDead})
	}
}

// until advances the clock a tick at a time until cond holds, at most
// limit of test time; it gives the loops real time to run between ticks.
func (c *testCluster) until(what string, limit time.Duration, cond func() bool) {
	c.t.Helper()
	step := cluster.DefaultTickInterval
	for elapsed := time.Duration(0); elapsed <= limit; elapsed += step {
		for range 50 {
			if cond() {
				return
			}
			time.Sleep(time.Millisecond)
		}
		c.clock.advance(step)
	}
	c.t.Fatalf("%s: not after %v of test time; journal:\n%v", what, limit, c.j.snapshot())
}

func (c *testCluster) primary(name string, epoch uint64) func() bool {
	return func() bool {
		res := c.log.record().Resource("r0")
		st := c.nodes[name].m.Status()
		for _, r := range st.Resources {
			if r.Resource == "r0" && r.Primary && r.Serving && r.Epoch == epoch && res != nil && res.Primary == name {
				return c.nodes[name].gate.get() == IOServe
			}
		}
		return false
	}
}
