package daemon

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// AuditFile is the audit log's name in the node's data-dir.
const AuditFile = "audit.log"

// auditQueue is how many records may wait for the disk; beyond that a
// record is dropped (and counted in the next one written) rather than
// holding up the caller, which may be the node manager's loop.
const auditQueue = 4096

// AuditRecord is one line of DATA_DIR/audit.log: a failover, a fencing
// attempt or result, or an admin action, with who asked and the outcome.
type AuditRecord struct {
	Time time.Time `json:"time"`
	Node string    `json:"node"`
	// Kind: admin, fence, failover.
	Kind string `json:"kind"`
	// Op: the admin operation (promote, demote, resync, verify, resolve,
	// connect, disconnect, peer-fenced, switchover, standby, unstandby,
	// fence-confirm, and fence-off, fence-on, fence-reboot for a power
	// change an admin ran by hand), or fence-attempt, fence-result,
	// failover.
	Op       string `json:"op"`
	Resource string `json:"resource,omitempty"`
	Target   string `json:"target,omitempty"`
	// By: "uid N via admin socket" for an admin action, "cluster layer"
	// for what the node manager decided itself.
	By      string `json:"by"`
	Request any    `json:"request,omitempty"`
	// Outcome: ok, refused or failed; Result or Error says more.
	Outcome string `json:"outcome"`
	Result  any    `json:"result,omitempty"`
	Error   string `json:"error,omitempty"`
	// Dropped counts records lost just before this one (the queue to
	// the disk was full).
	Dropped uint64 `json:"dropped_before,omitempty"`
}

// audit appends records to the audit log from its own goroutine: write
// and fsync per record, never on the caller's path.
type audit struct {
	path string
	log  *slog.Logger
	f    *os.File
	ch   chan AuditRecord
	done chan struct{}

	mu      sync.Mutex
	closed  bool
	dropped uint64
}

func openAudit(path string, log *slog.Logger) (*audit, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	a := &audit{path: path, log: log, f: f, ch: make(chan AuditRecord, auditQueue), done: make(chan struct{})}
	go a.run()
	return a, nil
}

// add queues a record; it never blocks.
func (a *audit) add(r AuditRecord) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	r.Dropped, a.dropped = a.dropped, 0
	select {
	case a.ch <- r:
	default:
		a.dropped += 1 + r.Dropped
		a.log.Error("audit log: queue full, record dropped", "path", a.path, "kind", r.Kind, "op", r.Op, "resource", r.Resource)
	}
}

func (a *audit) run() {
	defer close(a.done)
	for r := range a.ch {
		b, err := json.Marshal(r)
		if err != nil {
			a.log.Error("audit log: encoding a record", "err", err, "op", r.Op)
			continue
		}
		b = append(b, '\n')
		if _, err := a.f.Write(b); err != nil {
			a.log.Error("audit log: write failed", "path", a.path, "err", err)
			continue
		}
		if err := a.f.Sync(); err != nil {
			a.log.Error("audit log: fsync failed", "path", a.path, "err", err)
		}
	}
}

// close writes what is queued and closes the file.
func (a *audit) close() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.ch)
	a.mu.Unlock()
	<-a.done
	if err := a.f.Close(); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}
