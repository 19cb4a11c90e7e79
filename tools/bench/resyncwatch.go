package main

import (
	"errors"
	"fmt"
	"time"
)

// resyncWatch times one resync from the outside, from the statuses of the
// sync source polled every few milliseconds. The rate is the bytes copied
// between the first poll that saw the resync running and the first poll
// that saw both replicas in sync, over the time between those two polls:
// bytes done before the first sighting are not counted, and the end is
// seen at most one poll interval late, so the figure errs low, never high.
type resyncWatch struct {
	wantFull bool
	// before is the source's last_resync when the resync was triggered,
	// to tell a resync that ran entirely between two polls from none.
	before *progress

	started bool
	t0      time.Time
	done0   int64
	total   int64
}

// resyncSample is one timed resync.
type resyncSample struct {
	Bytes int64 // the resync's total_bytes
	// Rate is the externally timed rate in bytes/s (0 if the resync was
	// never seen running).
	Rate    float64
	Seconds float64 // the timed part
	// VolumeRate is the source's own figure (last_resync), 0 if the
	// daemon did not report one.
	VolumeRate float64
	// ToInSync is from the trigger (daemon start, resync command) to the
	// first in-sync poll: start-up and connection set-up included.
	ToInSync time.Duration
	// PerGiB is the machine's busy CPU-seconds per GiB resynced, from the
	// trigger to in sync (full sync only; 0 if not measured).
	PerGiB float64
}

var errResyncUnseen = errors.New("bench: the resync finished between two polls; use a larger -resync-size")

// observe takes the source's status at time at; it returns true once the
// resync is over, with the sample.
func (w *resyncWatch) observe(at time.Time, st resStatus) (bool, resyncSample, error) {
	if !st.Up {
		return false, resyncSample{}, fmt.Errorf("bench: the sync source went down: %s", st.Error)
	}
	if st.Conn == "SyncTarget" {
		return false, resyncSample{}, fmt.Errorf("bench: the primary became the sync target (%s)", st)
	}
	if st.Conn == "StandAlone" {
		return false, resyncSample{}, fmt.Errorf("bench: the link went StandAlone during the resync (%s)", st)
	}
	if p := st.Resync; p != nil {
		if !w.started {
			if p.Full != w.wantFull {
				return false, resyncSample{}, fmt.Errorf("bench: wanted a %s resync, the volume runs a %s one (%d bytes)", kind(w.wantFull), kind(p.Full), p.TotalBytes)
			}
			w.started, w.t0, w.done0, w.total = true, at, p.DoneBytes, p.TotalBytes
		}
		return false, resyncSample{}, nil
	}
	if !st.inSync() {
		return false, resyncSample{}, nil
	}
	last := st.LastResync
	ran := w.started || (last != nil && (w.before == nil || *last != *w.before))
	if !ran {
		// In sync and nothing happened yet: the resync has not begun
		// (the daemon is starting, the command is on its way).
		return false, resyncSample{}, nil
	}
	if !w.started {
		return false, resyncSample{}, errResyncUnseen
	}
	s := resyncSample{Bytes: w.total, Seconds: at.Sub(w.t0).Seconds()}
	if s.Seconds > 0 {
		s.Rate = float64(w.total-w.done0) / s.Seconds
	}
	if last != nil && (w.before == nil || *last != *w.before) {
		if last.Full != w.wantFull || last.TotalBytes != w.total {
			return false, resyncSample{}, fmt.Errorf("bench: the finished resync (full %v, %d bytes) is not the one timed (full %v, %d bytes)", last.Full, last.TotalBytes, w.wantFull, w.total)
		}
		s.VolumeRate = last.Rate
	}
	return true, s, nil
}

func kind(full bool) string {
	if full {
		return "full"
	}
	return "bitmap"
}
