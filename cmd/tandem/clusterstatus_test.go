package main

import (
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cluster/manager"
)

// A replica that cannot take over a primary that is gone says why in
// `tandem status`.
func TestStatusSaysWhyNoFailover(t *testing.T) {
	rec := cluster.NewRecord()
	rec.Resources["r0"] = &cluster.Resource{Name: "r0", Primary: "alpha", Epoch: 1,
		Replicas: map[string]*cluster.Replica{"alpha": {State: cluster.StateUpToDate}, "bravo": {State: cluster.StateOutdated}}}
	why := "primary alpha of r0 is gone and this replica cannot take over: it is Outdated in the authority record"
	st := &manager.Status{Record: rec, Status: cluster.Status{Node: "bravo", Quorum: true,
		Members:   map[string]cluster.MemberState{"alpha": cluster.MemberDead, "witness": cluster.MemberAlive},
		Resources: []cluster.ResourceStatus{{Resource: "r0", Blocked: why}}}}
	var b strings.Builder
	printClusterLayer(&b, st)
	if !strings.Contains(b.String(), "r0: NO FAILOVER: "+why) || !strings.Contains(b.String(), "bravo Outdated") {
		t.Fatalf("status:\n%s", b.String())
	}
	b.Reset()
	st.Resources[0].Blocked = ""
	printClusterLayer(&b, st)
	if strings.Contains(b.String(), "NO FAILOVER") {
		t.Fatalf("status of a replica that is not blocked:\n%s", b.String())
	}
}
