package cluster

import (
	"testing"

	"github.com/tandem-ha/tandem/replicate"
)

// The node manager converts replicate.DiskState by a plain conversion: the
// names must stay the same.
func TestDiskStatesMatchReplicate(t *testing.T) {
	for _, p := range []struct {
		ours   DiskState
		theirs replicate.DiskState
	}{
		{DiskUpToDate, replicate.UpToDate}, {DiskOutdated, replicate.Outdated},
		{DiskInconsistent, replicate.Inconsistent}, {DiskDiskless, replicate.Diskless},
		{DiskFailed, replicate.Failed}, {DiskUnknown, replicate.DiskUnknown},
	} {
		if string(p.ours) != string(p.theirs) {
			t.Errorf("cluster %q != replicate %q", p.ours, p.theirs)
		}
	}
	for _, p := range [][2]string{
		{string(StateUpToDate), string(replicate.UpToDate)}, {string(StateOutdated), string(replicate.Outdated)},
		{string(StateInconsistent), string(replicate.Inconsistent)}, {string(StateFailed), string(replicate.Failed)},
	} {
		if p[0] != p[1] {
			t.Errorf("record state %q != replicate %q", p[0], p[1])
		}
	}
}
