package authority

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/tandem-ha/tandem/cluster"
)

type memSink struct {
	bytes.Buffer
	canceled, closed bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.canceled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

func applyCmd(t *testing.T, f *fsm, i uint64, c cluster.Command) applyResult {
	t.Helper()
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: b}).(applyResult)
}

func TestFSMSnapshotRoundTrip(t *testing.T) {
	f := newFSM(func() time.Time { return t0 }, nil)
	applyCmd(t, f, 1, define("r0"))
	applyCmd(t, f, 2, cmd(cluster.OpReportDisk, "a", func(c *cluster.Command) { c.Resource, c.Node, c.State = "r0", "a", cluster.StateUpToDate }))
	if res := applyCmd(t, f, 3, cmd(cluster.OpPromote, "a", func(c *cluster.Command) { c.Resource, c.Node, c.Epoch = "r0", "a", 1 })); res.err != nil {
		t.Fatal(res.err)
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// The snapshot holds the record as of now, not as of Persist.
	applyCmd(t, f, 4, define("later"))
	var sink memSink
	if err := snap.Persist(&sink); err != nil || !sink.closed {
		t.Fatalf("persist: %v", err)
	}
	var seen []cluster.Committed
	g := newFSM(func() time.Time { return t0 }, func(e cluster.Committed) { seen = append(seen, e) })
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	got := g.record()
	if got.Resource("later") != nil || got.Resource("r0").Primary != "a" || got.Index != 3 {
		t.Fatalf("restored %+v", got)
	}
	if len(seen) != 1 || seen[0].Record != got || seen[0].Cmd.Op != "" {
		t.Errorf("restore delivered %+v", seen)
	}
	// A damaged snapshot is refused and changes nothing.
	bad := bytes.Replace(sink.Bytes(), []byte(`"primary":"a"`), []byte(`"primary":"x"`), 1)
	if err := g.Restore(io.NopCloser(bytes.NewReader(bad))); err == nil {
		t.Fatal("a snapshot naming a non-replica as primary was restored")
	}
	if g.record() != got {
		t.Fatal("a refused restore changed the record")
	}
}

func TestFSMUndecodableEntryChangesNothing(t *testing.T) {
	var seen []cluster.Committed
	f := newFSM(func() time.Time { return t0 }, func(e cluster.Committed) { seen = append(seen, e) })
	applyCmd(t, f, 1, define("r0"))
	before := f.record()
	res := f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: []byte(`{"version":99,"op":"define"}`)}).(applyResult)
	if !errors.Is(res.err, cluster.ErrVersion) || res.rec != before || f.record() != before {
		t.Fatalf("undecodable entry: %v", res.err)
	}
	if len(seen) != 2 || !errors.Is(seen[1].Err, cluster.ErrVersion) {
		t.Fatalf("commits %+v", seen)
	}
	// Raft's own entries are not commands.
	if r := f.Apply(&raft.Log{Index: 3, Type: raft.LogConfiguration}); r != nil || len(seen) != 2 {
		t.Fatalf("configuration entry applied: %v", r)
	}
}
