package authority

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/tandem-ha/tandem/cluster"
)

// fsm applies committed log entries to the authority record with
// cluster.Apply. Every voter runs the same entries through the same pure
// function, so refusals are identical everywhere and are part of the
// outcome, not failures of the log.
type fsm struct {
	now      func() time.Time
	onCommit func(cluster.Committed)

	mu  sync.RWMutex
	rec *cluster.Record
	// applied is the raft index of the last command applied here (raft's
	// own AppliedIndex runs ahead: it counts entries handed to the FSM
	// goroutine, not applied). restores counts snapshot restores, which
	// jump over entries without applying them one by one.
	applied, restores uint64
	// changed is closed and replaced whenever applied or restores moves.
	changed chan struct{}
}

// applyResult is what raft hands back to the proposer on the leader.
type applyResult struct {
	rec *cluster.Record
	err error
}

func newFSM(now func() time.Time, onCommit func(cluster.Committed)) *fsm {
	return &fsm{now: now, onCommit: onCommit, rec: cluster.NewRecord(), changed: make(chan struct{})}
}

// progress returns the applied index, the restore count and a channel
// closed when either moves.
func (f *fsm) progress() (applied, restores uint64, changed <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied, f.restores, f.changed
}

// moved must be called with mu held.
func (f *fsm) moved() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fsm) record() *cluster.Record {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.rec
}

// Apply implements raft.FSM.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := cluster.UnmarshalCommand(l.Data)
	f.mu.Lock()
	rec := f.rec
	if err == nil {
		var next *cluster.Record
		next, err = cluster.Apply(rec, cmd)
		if err == nil {
			rec = next
			f.rec = next
		}
	} else {
		// Proposals are checked before they reach the log; an entry that
		// still does not decode (a newer tandem's) changes nothing on any
		// voter, like a refusal.
		err = fmt.Errorf("authority: log entry %d: %w", l.Index, err)
	}
	f.applied = l.Index
	f.moved()
	f.mu.Unlock()
	if f.onCommit != nil {
		f.onCommit(cluster.Committed{At: f.now(), Cmd: cmd, Err: err, Record: rec})
	}
	return applyResult{rec: rec, err: err}
}

// Snapshot implements raft.FSM. The record is immutable once applied, so
// the snapshot holds the pointer and encodes it off raft's FSM goroutine.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return snapshot{rec: f.record()}, nil
}

// Restore implements raft.FSM: the record is replaced by the snapshot's,
// which is checked as strictly as any record (cluster.UnmarshalRecord). The
// consumer sees a Committed with no command and the restored record.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("authority: reading a snapshot: %w", err)
	}
	rec, err := cluster.UnmarshalRecord(b)
	if err != nil {
		return fmt.Errorf("authority: restoring a snapshot: %w", err)
	}
	f.mu.Lock()
	f.rec = rec
	f.restores++
	f.moved()
	f.mu.Unlock()
	if f.onCommit != nil {
		f.onCommit(cluster.Committed{At: f.now(), Record: rec})
	}
	return nil
}

type snapshot struct{ rec *cluster.Record }

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	b, err := s.rec.Marshal()
	if err == nil {
		_, err = sink.Write(b)
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("authority: writing a snapshot: %w", err)
	}
	return sink.Close()
}

func (snapshot) Release() {}
