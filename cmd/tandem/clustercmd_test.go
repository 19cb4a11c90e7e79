package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cluster/manager"
)

// TestStatusShowsBlockedFencing: a fencing that keeps failing is in
// tandem status, with what it blocks, how long, why, and the way out (as
// Pacemaker's crm_mon lists failed fencing actions).
func TestStatusShowsBlockedFencing(t *testing.T) {
	since := time.Date(2026, 12, 2, 1, 2, 3, 0, time.UTC)
	st := &manager.Status{Status: cluster.Status{Node: "bravo", Quorum: true,
		Members: map[string]cluster.MemberState{"alpha": cluster.MemberDead, "witness": cluster.MemberAlive},
		Fencing: []cluster.FencingStatus{{Node: "alpha", Resources: []string{"r0", "r1"}, Attempts: 3, Since: since,
			LastError: errors.New("fence: off alpha: every fencing level failed\nlevel 1 (ipmi 198.51.100.21:623): device unreachable").Error()}},
	}}
	st.Record = cluster.NewRecord()
	st.Record.Resources["r0"] = &cluster.Resource{Name: "r0", Primary: "alpha", Epoch: 1,
		Replicas: map[string]*cluster.Replica{"alpha": {State: cluster.StateUpToDate}, "bravo": {State: cluster.StateUpToDate}}}
	var b strings.Builder
	printClusterLayer(&b, st)
	out := b.String()
	for _, want := range []string{
		"FENCING alpha (blocks r0, r1): attempt 3 since 2026-12-02T01:02:03Z",
		"FAILING: fence: off alpha: every fencing level failed; level 1 (ipmi 198.51.100.21:623): device unreachable",
		"`tandem fence confirm alpha` unblocks it",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	st.Fencing = nil
	b.Reset()
	printClusterLayer(&b, st)
	if strings.Contains(b.String(), "FENCING") {
		t.Errorf("status without a fencing in progress mentions one:\n%s", b.String())
	}
}
