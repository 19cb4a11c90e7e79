package authority

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/tandem-ha/tandem/cluster"
	bolt "go.etcd.io/bbolt"
)

// Errors Propose returns besides cluster.Apply's refusals; callers branch
// on them.
var (
	// ErrNoQuorum: no leader could be reached before the context ended
	// (a majority of voters is down or cut off). Nothing was appended.
	ErrNoQuorum = errors.New("authority: no quorum: no leader reachable")
	// ErrOutcomeUnknown: the command reached a leader that lost its
	// leadership, or the context ended, before it was committed. It may
	// still commit: OnCommit tells.
	ErrOutcomeUnknown = errors.New("authority: outcome unknown: the command may still commit")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("authority: closed")
	// ErrRefused wraps cluster.Apply's refusal of a committed command
	// (errors.Is also matches cluster's sentinel). The entry is in the
	// log: OnCommit delivers it, with the refusal, on every node, so a
	// caller must not also report it as a ProposalFailed.
	ErrRefused = errors.New("authority: refused")
	// ErrVoters: the on-disk voter set differs from the configured one.
	ErrVoters = errors.New("authority: voter set differs from the one on disk")

	// errNotLeader: the node asked is not (or no longer) the leader and
	// nothing was appended; Propose looks for the leader again.
	errNotLeader = errors.New("authority: not the leader")
)

const (
	// proposeDefault bounds a Propose whose context has no deadline.
	proposeDefault = 10 * time.Second
	// retryPause is how long Propose waits before looking for a leader
	// again (an election takes a few hundred milliseconds).
	retryPause = 20 * time.Millisecond
	// rpcTimeout is raft's I/O deadline for one RPC between voters.
	rpcTimeout = time.Second
	// snapshotsKept on disk.
	snapshotsKept = 2
)

// Status is this node's view of the log.
type Status struct {
	// State is raft's: Follower, Candidate, Leader or Shutdown.
	State string `json:"state"`
	// Leader is the leader's name, "" when none is known.
	Leader string `json:"leader"`
	// Quorum: this node is the leader (raft steps a leader down after
	// LeaderLease without a majority), or it heard from a leader within
	// the last Heartbeat timeout. Commands can be committed.
	Quorum bool `json:"quorum"`
	// Applied is the raft index of the last command applied here.
	Applied uint64 `json:"applied"`
}

// Authority is one voter's replica of the authority log.
type Authority struct {
	cfg    Config
	t      Timeouts
	log    *slog.Logger
	raft   *raft.Raft
	fsm    *fsm
	store  *raftboltdb.BoltStore
	trans  *raft.NetworkTransport
	stream *streamLayer
	obs    *raft.Observer

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Open starts this node's voter: opens (or creates) the on-disk log in
// cfg.Dir, bootstraps the fixed voter set if the log is empty (every voter
// does, with the same set, so whichever starts first forms the cluster),
// and joins the election. It refuses a log whose voter set differs from
// cfg.Voters.
func Open(cfg Config) (_ *Authority, err error) {
	// Open owns cfg.Listener, also when it fails.
	var closers []func() error
	if cfg.Listener != nil {
		closers = append(closers, cfg.Listener.Close)
	}
	defer func() {
		if err != nil {
			for _, c := range slices.Backward(closers) {
				c()
			}
		}
	}()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Authority{cfg: cfg, t: cfg.timeouts(), log: cfg.Logger.With("node", cfg.Node), done: make(chan struct{})}

	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("authority: %w", err)
	}
	a.store, err = raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(cfg.Dir, "raft.db"),
		// Another process holding the store is an error, not a hang.
		BoltOptions: &bolt.Options{Timeout: time.Second},
	})
	if err != nil {
		return nil, fmt.Errorf("authority: opening the log store in %s: %w", cfg.Dir, err)
	}
	closers = append(closers, a.store.Close)
	hlog := newHclog(a.log, "raft")
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, snapshotsKept, hlog.Named("snapshot"))
	if err != nil {
		return nil, fmt.Errorf("authority: opening the snapshot store in %s: %w", cfg.Dir, err)
	}

	self, _ := cfg.voter(cfg.Node)
	adv, err := net.ResolveTCPAddr("tcp", self.Addr)
	if err != nil {
		return nil, fmt.Errorf("authority: own address %s: %w", self.Addr, err)
	}
	ln := cfg.Listener
	if ln == nil {
		bind := cfg.Bind
		if bind == "" {
			bind = self.Addr
		}
		if ln, err = net.Listen("tcp", bind); err != nil {
			return nil, fmt.Errorf("authority: %w", err)
		}
		closers = append(closers, ln.Close)
	}
	a.stream = newStreamLayer(ln, adv, append([][]byte{cfg.Secret}, cfg.AcceptSecrets...), cfg.TLS, a.log, a.serveForward)
	a.stream.dialer = cfg.dial
	a.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  a.stream,
		MaxPool: 3,
		Timeout: rpcTimeout,
		Logger:  hlog.Named("net"),
	})
	closers = append(closers, func() error { err := a.trans.Close(); a.stream.wait(); return err })

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Node)
	rc.HeartbeatTimeout = a.t.Heartbeat
	rc.ElectionTimeout = a.t.Election
	rc.LeaderLeaseTimeout = a.t.LeaderLease
	rc.CommitTimeout = a.t.Commit
	rc.Logger = hlog
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	want := raft.Configuration{}
	for _, v := range cfg.Voters {
		want.Servers = append(want.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(v.Name), Address: raft.ServerAddress(v.Addr)})
	}
	existing, err := raft.HasExistingState(a.store, a.store, snaps)
	if err != nil {
		return nil, fmt.Errorf("authority: reading %s: %w", cfg.Dir, err)
	}
	if existing {
		// Refuse another voter set before this node takes part in any
		// election with it.
		probe := *rc
		_, inmem := raft.NewInmemTransport("")
		got, err := raft.GetConfiguration(&probe, newFSM(cfg.Now, nil), a.store, a.store, snaps, inmem)
		inmem.Close()
		if err != nil {
			return nil, fmt.Errorf("authority: reading the voter set in %s: %w", cfg.Dir, err)
		}
		if !sameVoters(got, want) {
			return nil, fmt.Errorf("authority: %s holds voters %v, the configuration names %v (changing the voter set is not supported): %w",
				cfg.Dir, got.Servers, want.Servers, ErrVoters)
		}
	} else {
		if err := raft.BootstrapCluster(rc, a.store, a.store, snaps, a.trans, want); err != nil {
			return nil, fmt.Errorf("authority: bootstrapping the voters: %w", err)
		}
		a.log.Info("authority: bootstrapped the voter set", "voters", len(cfg.Voters))
	}
	a.fsm = newFSM(cfg.Now, cfg.OnCommit)
	a.raft, err = raft.NewRaft(rc, a.fsm, a.store, a.store, snaps, a.trans)
	if err != nil {
		return nil, fmt.Errorf("authority: starting raft: %w", err)
	}
	closers = append(closers, func() error { return a.raft.Shutdown().Error() })

	ch := make(chan raft.Observation, 16)
	a.obs = raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.RaftState, raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	a.raft.RegisterObserver(a.obs)
	a.wg.Add(1)
	go a.observe(ch)
	return a, nil
}

func sameVoters(got, want raft.Configuration) bool {
	key := func(s raft.Server) string { return fmt.Sprintf("%s\x00%s\x00%v", s.ID, s.Address, s.Suffrage) }
	g, w := []string{}, []string{}
	for _, s := range got.Servers {
		g = append(g, key(s))
	}
	for _, s := range want.Servers {
		w = append(w, key(s))
	}
	slices.Sort(g)
	slices.Sort(w)
	return slices.Equal(g, w)
}

func (a *Authority) observe(ch <-chan raft.Observation) {
	defer a.wg.Done()
	h := handoff{failing: map[string]bool{}}
	for {
		select {
		case <-a.done:
			return
		case o := <-ch:
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				h.failing[string(d.PeerID)] = true
				a.maybeHandOff(&h, string(d.PeerID), d.LastContact)
				continue
			case raft.ResumedHeartbeatObservation:
				delete(h.failing, string(d.PeerID))
				continue
			case raft.LeaderObservation:
				clear(h.failing) // a new term: the new leader's heartbeats tell
			}
			st := a.Status()
			if lo, ok := o.Data.(raft.LeaderObservation); ok {
				a.log.Info("authority: leader changed", "leader", string(lo.LeaderID), "state", st.State)
			}
			if a.cfg.OnStatus != nil {
				a.cfg.OnStatus(st)
			}
		}
	}
}

const (
	// handoffAfter: how long a leader goes without reaching a live voter
	// before it hands its leadership over (a few heartbeat failures: a
	// blip does not move the leadership, a cut does, well before the
	// replication link's ping timeout makes the primary write without its
	// peer).
	handoffAfter = 2 * time.Second
	// handoffRetry: at most one handoff attempt per this period.
	handoffRetry = 5 * time.Second
	// handoffAwayRetry: a preferred leader hands over at most once per
	// this period. If no voter reaches the unreached one (the authority
	// port blocked while gossip still passes), the voter it hands to
	// hands back after handoffAfter; this bounds that ping-pong to two
	// moves per period instead of two per handoffRetry.
	handoffAwayRetry = 30 * time.Second
)

// handoff is the observer's memory for Config.PreferredLeaders: the peers
// whose heartbeats fail now, and the last attempt.
type handoff struct {
	failing map[string]bool
	last    time.Time
}

// maybeHandOff hands the leadership to another voter this leader
// reaches when it has not reached peer, which is alive, since
// lastContact (Config.PreferredLeaders). A leader that is not preferred
// hands it to a preferred voter only, so the leadership settles there; a
// preferred leader (the witness, cut off from one data node) hands it to
// the other data node, which may reach both: otherwise the cut-off node,
// whose pre-votes the other refuses while it hears the witness, could
// commit nothing although a majority reaches it.
func (a *Authority) maybeHandOff(h *handoff, peer string, lastContact time.Time) {
	preferred := slices.Contains(a.cfg.PreferredLeaders, a.cfg.Node)
	retry := handoffRetry
	if preferred {
		retry = handoffAwayRetry
	}
	if len(a.cfg.PreferredLeaders) == 0 || a.raft.State() != raft.Leader ||
		time.Since(lastContact) < handoffAfter || time.Since(h.last) < retry {
		return
	}
	alive := func(n string) bool { return a.cfg.Alive == nil || a.cfg.Alive(n) }
	if !alive(peer) {
		return // dead, not cut off: no other leader would reach it either
	}
	for _, to := range a.handoffCandidates(preferred) {
		v, ok := a.cfg.voter(to)
		if !ok || to == peer || to == a.cfg.Node || h.failing[to] || !alive(to) {
			continue
		}
		h.last = time.Now()
		a.log.Warn("authority: handing the leadership to a voter that may reach every node: this leader has not reached a live voter",
			"to", to, "unreached", peer, "since", time.Since(lastContact).Round(time.Millisecond))
		f := a.raft.LeadershipTransferToServer(raft.ServerID(to), raft.ServerAddress(v.Addr))
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := f.Error(); err != nil {
				a.log.Warn("authority: leadership handoff failed", "to", to, "err", err)
			}
		}()
		return
	}
}

// handoffCandidates are the voters a leader may hand over to, the
// preferred ones first; the others only when this leader is preferred.
func (a *Authority) handoffCandidates(preferred bool) []string {
	out := slices.Clone(a.cfg.PreferredLeaders)
	if preferred {
		for _, v := range a.cfg.Voters {
			if !slices.Contains(out, v.Name) {
				out = append(out, v.Name)
			}
		}
	}
	return out
}

// ErrNotLeading: a leadership transfer asked of a node that does not lead.
var ErrNotLeading = errors.New("authority: this node does not lead the log")

// TransferLeadership hands this node's leadership to the voter to (an
// admin's maintenance step: before restarting the leader, or to put the
// leadership on the witness). It returns once to leads, or with why not.
func (a *Authority) TransferLeadership(ctx context.Context, to string) error {
	v, ok := a.cfg.voter(to)
	switch {
	case !ok:
		return fmt.Errorf("authority: transfer leadership: %q is not a voter", to)
	case to == a.cfg.Node && a.raft.State() == raft.Leader:
		return nil
	case a.raft.State() != raft.Leader:
		_, leader := a.raft.LeaderWithID()
		return fmt.Errorf("%w: the leader is %q; ask it", ErrNotLeading, string(leader))
	}
	a.log.Info("authority: handing the leadership over on request", "to", to)
	f := a.raft.LeadershipTransferToServer(raft.ServerID(to), raft.ServerAddress(v.Addr))
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("authority: transfer leadership to %s: %w", to, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("authority: transfer leadership to %s: %w", to, ctx.Err())
	}
}

// Status reports this node's view of the log.
func (a *Authority) Status() Status {
	_, id := a.raft.LeaderWithID()
	applied, _, _ := a.fsm.progress()
	st := Status{State: a.raft.State().String(), Leader: string(id), Applied: applied}
	switch a.raft.State() {
	case raft.Leader:
		st.Quorum = true
	case raft.Follower:
		st.Quorum = id != "" && time.Since(a.raft.LastContact()) < a.t.Heartbeat
	}
	return st
}

// Record returns the authority record as applied on this node: every entry
// up to this node's last apply (a follower may lag the leader by a
// heartbeat). A Propose from this node that returned has been applied here.
func (a *Authority) Record() *cluster.Record { return a.fsm.record().Clone() }

// Snapshot makes raft write a snapshot of the record now and compact the
// log behind it (raft also does so every SnapshotThreshold entries).
func (a *Authority) Snapshot() error {
	if err := a.raft.Snapshot().Error(); err != nil {
		return fmt.Errorf("authority: snapshot: %w", err)
	}
	return nil
}

// Propose appends cmd to the log and returns once a majority of voters has
// it and this node has applied it (unless ctx ends first: it is committed
// either way): the record after it, or ErrRefused wrapping cluster.Apply's
// refusal (errors.Is works with cluster's sentinels) with the record
// unchanged. From a follower the command is forwarded to the leader. Other
// failures are ErrNoQuorum (nothing appended), ErrOutcomeUnknown, ErrClosed
// or the command's own encoding error; those are a cluster.ProposalFailed.
func (a *Authority) Propose(ctx context.Context, cmd cluster.Command) (*cluster.Record, error) {
	b, err := cmd.Marshal()
	if err != nil {
		return nil, err
	}
	// Refuse here what every voter would refuse to decode.
	if _, err := cluster.UnmarshalCommand(b); err != nil {
		return nil, fmt.Errorf("authority: %s: %w", cmd, err)
	}
	res, err := a.submit(ctx, cmd.String(), b)
	if err != nil {
		return nil, err
	}
	if res.err != nil {
		return res.rec, fmt.Errorf("%w: %w", ErrRefused, res.err)
	}
	return res.rec, nil
}

// ReadRecord returns a record no older than any entry committed before the
// call, confirmed by the leader (through the log: a barrier entry committed
// on a majority), and applied on this node too. It fails with ErrNoQuorum
// when no leader answers before ctx ends. Record is the cheaper local read.
func (a *Authority) ReadRecord(ctx context.Context) (*cluster.Record, error) {
	res, err := a.submit(ctx, "read", nil)
	if err != nil {
		return nil, err
	}
	return res.rec.Clone(), nil
}

// submit runs a proposal (b) or a read (b nil) on the leader, forwarded if
// that is not this node, looking for the leader again while there is none,
// and waits until this node applied the outcome.
func (a *Authority) submit(ctx context.Context, what string, b []byte) (applyResult, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, proposeDefault)
		defer cancel()
	}
	for {
		select {
		case <-a.done:
			return applyResult{}, fmt.Errorf("authority: %s: %w", what, ErrClosed)
		case <-ctx.Done():
			return applyResult{}, fmt.Errorf("authority: %s: %w: %w", what, ErrNoQuorum, ctx.Err())
		default:
		}
		var res applyResult
		var index uint64
		var err error
		switch _, id := a.raft.LeaderWithID(); {
		case a.raft.State() == raft.Leader && b != nil:
			res, index, err = a.applyLocal(ctx, b)
		case a.raft.State() == raft.Leader:
			res, index, err = a.readLocal(ctx)
		case id != "":
			res, index, err = a.forward(ctx, string(id), b)
		default:
			err = errNotLeader
		}
		if errors.Is(err, errNotLeader) || (b == nil && errors.Is(err, ErrOutcomeUnknown)) {
			// Nothing was appended (or it was a read): wait for (or find)
			// the leader.
			sleep(ctx, a.done, retryPause)
			continue
		}
		if err != nil {
			return applyResult{}, fmt.Errorf("authority: %s: %w", what, err)
		}
		a.waitApplied(ctx, index)
		return res, nil
	}
}

// sleep waits d or until ctx or done ends; it reports whether d passed.
func sleep(ctx context.Context, done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-done:
	}
	return false
}

// waitApplied waits until this node applied index, so a proposer reads its
// own write and its OnCommit saw the entry before Propose returns; bounded
// by ctx (the entry is committed either way). A snapshot restore covers
// the entries raft counts as applied once it is done.
func (a *Authority) waitApplied(ctx context.Context, index uint64) {
	_, restores0, _ := a.fsm.progress()
	for {
		applied, restores, changed := a.fsm.progress()
		if applied >= index || (restores > restores0 && a.raft.AppliedIndex() >= index) {
			return
		}
		t := time.NewTimer(10 * time.Millisecond) // raft sets AppliedIndex after a restore
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
		case <-a.done:
		}
		t.Stop()
		if ctx.Err() != nil || a.isClosed() {
			return
		}
	}
}

func (a *Authority) isClosed() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// applyLocal appends b on this node, which believes it leads. A refusal is
// in the result; err is the log's failure.
func (a *Authority) applyLocal(ctx context.Context, b []byte) (applyResult, uint64, error) {
	timeout, err := remaining(ctx)
	if err != nil {
		return applyResult{}, 0, err
	}
	f := a.raft.Apply(b, timeout)
	if err := a.await(ctx, f); err != nil {
		return applyResult{}, 0, err
	}
	res, ok := f.Response().(applyResult)
	if !ok {
		return applyResult{}, 0, fmt.Errorf("authority: log entry %d: no result", f.Index())
	}
	return res, f.Index(), nil
}

// readLocal returns the record once this node, which believes it leads,
// has committed an entry in its term on a majority and applied everything
// before it: no record committed before the call is missing.
func (a *Authority) readLocal(ctx context.Context) (applyResult, uint64, error) {
	timeout, err := remaining(ctx)
	if err != nil {
		return applyResult{}, 0, err
	}
	if err := a.await(ctx, a.raft.Barrier(timeout)); err != nil {
		if errors.Is(err, ErrOutcomeUnknown) {
			err = errNotLeader // a read has no outcome to lose: ask again
		}
		return applyResult{}, 0, err
	}
	applied, _, _ := a.fsm.progress()
	return applyResult{rec: a.fsm.record()}, applied, nil
}

func remaining(ctx context.Context) (time.Duration, error) {
	timeout := proposeDefault
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return 0, fmt.Errorf("%w: %w", ErrNoQuorum, context.DeadlineExceeded)
	}
	return timeout, nil
}

// await waits for a raft future and says its failure in this package's
// terms.
func (a *Authority) await(ctx context.Context, f raft.Future) error {
	errc := make(chan error, 1)
	go func() { errc <- f.Error() }()
	select {
	case err := <-errc:
		switch {
		case err == nil:
			return nil
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
			// Nothing was appended: ask the (next) leader.
			return errNotLeader
		case errors.Is(err, raft.ErrEnqueueTimeout):
			return fmt.Errorf("%w: %w", ErrNoQuorum, err)
		case errors.Is(err, raft.ErrRaftShutdown):
			return ErrClosed
		default: // ErrLeadershipLost and the like: appended, not known to commit
			return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
		}
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
	case <-a.done:
		return ErrClosed
	}
}

// Close stops this voter: it leaves the election (the others elect a new
// leader if it led), closes its port and its store. The log stays on disk.
func (a *Authority) Close() error {
	a.closeOnce.Do(func() {
		close(a.done)
		a.raft.DeregisterObserver(a.obs)
		errs := []error{a.raft.Shutdown().Error(), a.trans.Close()}
		a.stream.wait()
		a.wg.Wait()
		errs = append(errs, a.store.Close())
		if err := errors.Join(errs...); err != nil {
			a.closeErr = fmt.Errorf("authority: closing: %w", err)
		}
	})
	return a.closeErr
}
