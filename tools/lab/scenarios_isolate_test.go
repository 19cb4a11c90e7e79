package lab

import (
	"context"
	"testing"
	"time"
)

// TestScenarioIsolatePrimary: alpha loses every link (its BMC stays
// reachable, on the lab's management side) under a running workload. It
// suspends for lack of quorum, bravo fences it through its BMC and takes
// over at the VIP, and writes resume there; after the heal alpha is powered
// on again, resyncs from bravo and rejoins as an UpToDate Secondary. Every
// acknowledged write reads back and the replicas are identical.
func TestScenarioIsolatePrimary(t *testing.T) {
	lab, bin := clusterLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w := newWorkload(lab)
	w.mustWrite(t, 4)
	w.start()
	defer func() {
		select {
		case <-w.done:
		default:
			w.halt()
		}
	}()
	if err := lab.Isolate(ctx, Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "bravo Primary with the VIP at epoch 2", func(s *Status) bool {
		st := layer(s, Bravo)
		return s.Resources[0].Primary == Bravo && s.Resources[0].VIPHolder == Bravo &&
			st != nil && st.ClusterLayer.Record != nil && st.ClusterLayer.Record.Resource("r0").Epoch == 2
	})
	// Writes go on at the VIP, now on bravo.
	w.mu.Lock()
	before := len(w.acked)
	w.mu.Unlock()
	deadline := time.Now().Add(time.Minute)
	for {
		w.mu.Lock()
		n := len(w.acked)
		w.mu.Unlock()
		if n >= before+4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no writes acknowledged at the VIP after the failover (%d before, %d now)", before, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Whatever alpha noticed, it noticed before bravo promoted: rule 2.
	promoted, ok := firstLogTime(t, lab.l.log(Bravo), "failover: promote")
	if !ok {
		t.Fatal("bravo never logged its promotion")
	}
	if suspended, ok := firstLogTime(t, lab.l.log(Alpha), "lost quorum as primary"); ok && !suspended.Before(promoted) {
		t.Fatalf("alpha suspended I/O at %v, after bravo promoted at %v", suspended, promoted)
	}
	if st := layer(status(t, lab), Bravo); st == nil || len(st.ClusterLayer.Record.Fences) == 0 ||
		st.ClusterLayer.Record.Fences[len(st.ClusterLayer.Record.Fences)-1].Node != Alpha {
		t.Fatalf("no fencing of alpha in the record: %+v", st)
	}

	if err := lab.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lab.Restart(ctx, Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "alpha back as an UpToDate Secondary, bravo Primary with the VIP", func(s *Status) bool {
		a := s.Node(Alpha)
		return inSyncOn(Bravo)(s) && a != nil && a.Role == "Secondary" && a.Disk == "UpToDate"
	})
	w.halt()
	w.mustWrite(t, 2)
	w.check(t)
	verifyReplicas(t, lab, bin, Bravo)
}
