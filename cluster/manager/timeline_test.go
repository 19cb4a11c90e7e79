package manager

import (
	"slices"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
)

// TestTimelineOfAPrimaryDeclaredDeadBeforeTheRecordCaughtUp: a node that
// has just started may hear that the primary died before its copy of the
// record names that primary (the log is still catching up); the failover
// it then carries out still shows where it came from, its detection and
// its fencing (the bench's failover row found this after a restart).
func TestTimelineOfAPrimaryDeclaredDeadBeforeTheRecordCaughtUp(t *testing.T) {
	clock := newTestClock()
	m, err := New(Config{
		Machine:   cluster.Config{Node: "b", Voters: voters, Resources: []cluster.ResourceConfig{{Name: "r0", Replicas: [2]string{"a", "b"}}}},
		Resources: map[string]Resource{"r0": {Volume: newFakeVolume("b", &journal{}), Gate: &fakeGate{}}},
		Log:       logFor{newMemLog(clock, &journal{}), "b"},
		Fencer:    func(string) (Fencer, error) { return nil, nil },
		Clock:     clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	dead := clock.Now()
	m.observe(cluster.MemberChange{At: dead, Node: "a", State: cluster.MemberDead})
	if len(m.tl) != 0 {
		t.Fatal("a timeline without a record naming the primary")
	}
	clock.advance(400 * time.Millisecond)
	rec := cluster.NewRecord()
	rec.Index = 9
	rec.Resources["r0"] = &cluster.Resource{Name: "r0", Primary: "a", Epoch: 3}
	m.observe(cluster.Committed{At: clock.Now(), Record: rec})
	m.noteFenceStart(cluster.FenceNode{Node: "a", Epochs: map[string]uint64{"r0": 3}})
	clock.advance(20 * time.Millisecond)
	m.observe(cluster.FenceResult{At: clock.Now(), Node: "a", Epochs: map[string]uint64{"r0": 3}, Method: "ipmi"})
	tl := m.tl["r0"]
	if tl == nil || tl.f.From != "a" || !tl.f.Started.Equal(dead) {
		t.Fatalf("timeline %+v, want one from a started when it was declared dead", tl)
	}
	var steps []string
	for _, s := range tl.f.Steps {
		steps = append(steps, s.Name)
	}
	if !slices.Equal(steps, []string{"detect", "fence"}) {
		t.Fatalf("steps %v", steps)
	}
	// A fence of a node the record does not call primary starts none.
	delete(m.tl, "r0")
	rec.Resources["r0"].Primary = "b"
	m.noteFenceStart(cluster.FenceNode{Node: "a", Epochs: map[string]uint64{"r0": 3}})
	if len(m.tl) != 0 {
		t.Fatal("a failover timeline for fencing a node that is not primary")
	}
}
