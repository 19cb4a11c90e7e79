package fence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// ConfirmDir is the directory, under a node's data-dir, that holds the
// operators' confirmations.
const ConfirmDir = "fence"

// manualPoll is how often a waiting manual level looks for a confirmation.
const manualPoll = time.Second

// Confirmation is an operator's statement that a node is off: checked by
// hand (the power cord, the hypervisor's console), because no device could
// confirm it. It is what lets the cluster go on when every device fails, and
// it is only as true as the operator's check.
type Confirmation struct {
	Node string    `json:"node"`
	At   time.Time `json:"at"`
	By   string    `json:"by,omitempty"`   // the operator (login name)
	Host string    `json:"host,omitempty"` // where it was given
}

// Store keeps confirmations, one file per node, in a directory (ConfirmDir
// in the local node's data-dir). The cluster layer is meant to commit them
// to the authority record as well; the file is what survives a restart of
// this node in the meantime.
type Store struct {
	dir   string
	clock Clock
}

// NewStore returns the store in dir (created when a confirmation is first
// recorded); clock nil means the wall clock.
func NewStore(dir string, clock Clock) *Store {
	if clock == nil {
		clock = RealClock
	}
	return &Store{dir: dir, clock: clock}
}

// Dir is where the confirmation files are.
func (s *Store) Dir() string { return s.dir }

var nodeName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (s *Store) path(node string) (string, error) {
	// The name becomes a file name: only what a config node name can be.
	if !nodeName.MatchString(node) {
		return "", fmt.Errorf("fence: %q is not a node name", node)
	}
	return filepath.Join(s.dir, node+".confirmed"), nil
}

// Confirm records, durably, that an operator has verified node is off, now.
// The file is written to a temporary name, synced, renamed into place and
// the directory synced: a crash leaves the old record or the new one.
func (s *Store) Confirm(node, by, host string) (Confirmation, error) {
	c := Confirmation{Node: node, At: s.clock.Now().UTC(), By: by, Host: host}
	path, err := s.path(node)
	if err != nil {
		return Confirmation{}, err
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return Confirmation{}, fmt.Errorf("fence: encoding the confirmation: %w", err)
	}
	if err := writeFileAtomic(path, append(data, '\n')); err != nil {
		return Confirmation{}, fmt.Errorf("fence: recording the confirmation for %s: %w", node, err)
	}
	return c, nil
}

// Get returns the latest confirmation for node; ok is false if there is none.
func (s *Store) Get(node string) (c Confirmation, ok bool, err error) {
	path, err := s.path(node)
	if err != nil {
		return Confirmation{}, false, err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Confirmation{}, false, nil
	}
	if err != nil {
		return Confirmation{}, false, fmt.Errorf("fence: reading the confirmation for %s: %w", node, err)
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return Confirmation{}, false, fmt.Errorf("fence: %s: not a confirmation record: %w", path, err)
	}
	if c.Node != node || c.At.IsZero() {
		return Confirmation{}, false, fmt.Errorf("fence: %s: a record for node %q at %v, not for %s", path, c.Node, c.At, node)
	}
	return c, true, nil
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing left to remove
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Manual is the last resort: it succeeds only when an operator has run
// `tandem fence confirm NODE` after the fencing was requested. It waits up
// to Wait for that (0: it only looks once).
type Manual struct {
	node  string
	store *Store
	wait  time.Duration
	clock Clock
}

// NewManual returns the manual level for node, reading confirmations from
// store and waiting up to wait for one.
func NewManual(node string, store *Store, wait time.Duration, clock Clock) *Manual {
	if clock == nil {
		clock = RealClock
	}
	return &Manual{node: node, store: store, wait: wait, clock: clock}
}

func (m *Manual) String() string { return "manual confirmation" }

// Status is not something an operator's confirmation can tell.
func (m *Manual) Status(context.Context) (State, error) {
	return StateUnknown, fmt.Errorf("fence: manual: no power status without a device: %w", ErrUnsupported)
}

// On cannot be done by tandem without a device.
func (m *Manual) On(context.Context) error {
	return fmt.Errorf("fence: manual: power %s on by hand: %w", m.node, ErrUnsupported)
}

// Off succeeds once a confirmation newer than req.Since exists.
func (m *Manual) Off(ctx context.Context, req Request) error {
	since := req.Since
	if since.IsZero() {
		since = m.clock.Now()
	}
	deadline := m.clock.Now().Add(m.wait)
	for {
		c, ok, err := m.store.Get(m.node)
		if err != nil {
			return err
		}
		if ok && c.At.After(since) {
			return nil
		}
		if !m.clock.Now().Before(deadline) {
			return m.missing(c, ok, since)
		}
		if err := sleep(ctx, m.clock, min(manualPoll, deadline.Sub(m.clock.Now()))); err != nil {
			return fmt.Errorf("%w (while waiting: %v)", m.missing(c, ok, since), err)
		}
	}
}

// Reboot is Off: the operator confirms off, bringing the node back is theirs.
func (m *Manual) Reboot(ctx context.Context, req Request) error { return m.Off(ctx, req) }

func (m *Manual) missing(c Confirmation, ok bool, since time.Time) error {
	what := "none recorded"
	if ok {
		what = fmt.Sprintf("the latest, %s, is older than the fencing request (%s)", c.At.UTC().Format(time.RFC3339), since.UTC().Format(time.RFC3339))
	}
	return fmt.Errorf("fence: manual: %w for %s (%s): make sure %s is off, then run `tandem fence confirm %s` (records in %s)",
		ErrNoConfirmation, m.node, what, m.node, m.node, m.store.Dir())
}
