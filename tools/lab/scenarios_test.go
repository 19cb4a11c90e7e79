package lab

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// The failure scenarios of the cluster layer in the lab, each with a
// client writing through the VIP and every acknowledged write read back
// at the end, and the replicas compared byte for byte.

// upClusterLab brings a cluster-layer lab up and registers its teardown.
func upClusterLab(t *testing.T) (*Lab, string) {
	t.Helper()
	return upLab(t, Params{Size: labSize, Resources: 1, ClusterLayer: true})
}

// clusterLab is upClusterLab, alpha Primary with the VIP and the pair in
// sync.
func clusterLab(t *testing.T) (*Lab, string) {
	t.Helper()
	lab, bin := upClusterLab(t)
	waitFor(t, lab, "alpha Primary with the VIP, bravo UpToDate", func(s *Status) bool {
		return s.Resources[0].Primary == Alpha && s.Resources[0].VIPHolder == Alpha && s.InSync(1)
	})
	return lab, bin
}

// workload writes through the VIP from the client, one qemu-io process
// per write, each write to a slot of its own with a pattern of its own
// (so a write that failed leaves no doubt about what a later read must
// find), and remembers the writes that were acknowledged.
type workload struct {
	lab *Lab
	mu  sync.Mutex
	// acked maps a slot to its pattern; next is the next slot.
	acked map[int]byte
	next  int
	stop  chan struct{}
	done  chan struct{}
}

const (
	slotSize = 32 << 10
	slots    = labSize / slotSize
)

func newWorkload(lab *Lab) *workload {
	return &workload{lab: lab, acked: map[int]byte{}}
}

// clientIO runs one qemu-io command against the VIP, bounded; ok when it
// exited 0 and reported no failure.
func clientIO(lab *Lab, seconds int, cmd string) (bool, string) {
	ns, err := lab.Netns(Client)
	if err != nil {
		return false, err.Error()
	}
	out, errOut, err := testenv.RunErr("ip", "netns", "exec", ns, "timeout", fmt.Sprint(seconds), "qemu-io", "-f", "raw", "-c", cmd, URI(0))
	all := out + errOut
	return err == nil && !strings.Contains(all, "failed") && !strings.Contains(all, "error"), all
}

// write writes the next slot; it reports whether the write was
// acknowledged, and false when the slots are used up.
func (w *workload) write(seconds int) bool {
	w.mu.Lock()
	slot := w.next
	if slot >= slots {
		w.mu.Unlock()
		return false
	}
	w.next++
	w.mu.Unlock()
	pat := byte(slot%250 + 1)
	ok, _ := clientIO(w.lab, seconds, fmt.Sprintf("write -P 0x%02x %d %d", pat, slot*slotSize, slotSize))
	if ok {
		w.mu.Lock()
		w.acked[slot] = pat
		w.mu.Unlock()
	}
	return ok
}

// mustWrite writes n slots, each of which must be acknowledged.
func (w *workload) mustWrite(t *testing.T, n int) {
	t.Helper()
	for range n {
		if !w.write(30) {
			t.Fatalf("a write through the VIP was not acknowledged (slot %d)", w.next-1)
		}
	}
}

// start writes in the background until halt, at most one slot every
// 100 ms; failures (the VIP moving) are retried on the next slot.
func (w *workload) start() {
	w.stop, w.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			w.mu.Lock()
			full := w.next >= slots
			w.mu.Unlock()
			if full {
				return
			}
			w.write(10)
		}
	}()
}

func (w *workload) halt() {
	close(w.stop)
	<-w.done
}

// check reads every acknowledged slot back through the VIP.
func (w *workload) check(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
	for slot, pat := range w.acked {
		if ok, out := clientIO(w.lab, 30, fmt.Sprintf("read -P 0x%02x %d %d", pat, slot*slotSize, slotSize)); !ok {
			t.Fatalf("acknowledged write of slot %d (pattern 0x%02x) lost:\n%s", slot, pat, out)
		}
	}
	t.Logf("%d acknowledged writes of %d read back", len(w.acked), w.next)
}

// tandemOn runs the tandem CLI in node's namespace against the lab's
// configuration; it must succeed.
func tandemOn(t *testing.T, lab *Lab, bin, node string, args ...string) string {
	t.Helper()
	out, code := inNS(t, lab, node, append([]string{bin, "--config", lab.ConfigPath()}, args...)...)
	if code != 0 {
		t.Fatalf("tandem %s on %s: exit %d:\n%s", strings.Join(args, " "), node, code, out)
	}
	return out
}

// verifyReplicas checks that both replicas hold the same bytes.
func verifyReplicas(t *testing.T, lab *Lab, bin, primary string) {
	t.Helper()
	tandemOn(t, lab, bin, primary, "verify", "r0", "--node", primary)
}

// inSyncOn is the pair connected, in sync, with primary Primary and the
// VIP on it.
func inSyncOn(primary string) func(*Status) bool {
	return func(s *Status) bool {
		return s.Resources[0].Primary == primary && s.Resources[0].VIPHolder == primary && s.InSync(1)
	}
}

// layer is node's cluster-layer status, nil when its daemon does not
// answer.
func layer(s *Status, node string) *daemon.NodeStatus {
	n := s.Node(node)
	if n == nil || n.status == nil || n.status.ClusterLayer == nil {
		return nil
	}
	return n.status
}

// serving reports whether node's cluster layer has quorum and serves r0
// as primary.
func serving(s *Status, node string) (primary, quorum, serves bool) {
	st := layer(s, node)
	if st == nil {
		return false, false, false
	}
	for _, r := range st.ClusterLayer.Resources {
		if r.Resource == "r0" {
			return r.Primary, st.ClusterLayer.Quorum, r.Serving
		}
	}
	return false, st.ClusterLayer.Quorum, false
}

// TestScenarioWitnessCrash: the witness dies; the data nodes keep quorum
// between them, nothing fails over; the witness comes back.
func TestScenarioWitnessCrash(t *testing.T) {
	lab, bin := clusterLab(t)
	ctx := context.Background()
	w := newWorkload(lab)
	w.mustWrite(t, 4)
	if err := lab.Crash(Witness); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "alpha and bravo see the witness gone", func(s *Status) bool {
		a, b := layer(s, Alpha), layer(s, Bravo)
		return a != nil && b != nil && a.ClusterLayer.Members[Witness] != "Alive" && b.ClusterLayer.Members[Witness] != "Alive"
	})
	w.mustWrite(t, 8)
	s := status(t, lab)
	if p, q, sv := serving(s, Alpha); !p || !q || !sv || !inSyncOn(Alpha)(s) {
		t.Fatalf("without the witness: alpha primary %v quorum %v serving %v; resource %+v", p, q, sv, s.Resources[0])
	}
	if err := lab.Restart(ctx, Witness); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "the witness back as a member", func(s *Status) bool {
		a, b := layer(s, Alpha), layer(s, Bravo)
		return a != nil && b != nil && a.ClusterLayer.Members[Witness] == "Alive" && b.ClusterLayer.Members[Witness] == "Alive"
	})
	w.mustWrite(t, 4)
	if s := status(t, lab); !inSyncOn(Alpha)(s) {
		t.Fatalf("after the witness came back: %+v", s.Resources[0])
	}
	w.check(t)
	verifyReplicas(t, lab, bin, Alpha)
}

// TestScenarioSwitchover: switchover to bravo and back, then standby and
// unstandby of alpha, under a running workload.
func TestScenarioSwitchover(t *testing.T) {
	lab, bin := clusterLab(t)
	w := newWorkload(lab)
	w.mustWrite(t, 2)
	w.start()
	defer func() {
		if w.done != nil {
			select {
			case <-w.done:
			default:
				w.halt()
			}
		}
	}()
	tandemOn(t, lab, bin, Bravo, "switchover", "r0", "--to", Bravo, "--node", Bravo)
	waitFor(t, lab, "bravo Primary with the VIP, in sync", inSyncOn(Bravo))
	tandemOn(t, lab, bin, Alpha, "switchover", "r0", "--to", Alpha, "--node", Alpha)
	waitFor(t, lab, "alpha Primary with the VIP, in sync", inSyncOn(Alpha))
	tandemOn(t, lab, bin, Witness, "standby", Alpha, "--node", Witness)
	waitFor(t, lab, "alpha in standby, bravo Primary", func(s *Status) bool {
		st := layer(s, Bravo)
		return inSyncOn(Bravo)(s) && st != nil && st.ClusterLayer.Record != nil &&
			len(st.ClusterLayer.Record.Standby) == 1 && st.ClusterLayer.Record.Standby[0] == Alpha
	})
	tandemOn(t, lab, bin, Witness, "unstandby", Alpha, "--node", Witness)
	waitFor(t, lab, "alpha out of standby", func(s *Status) bool {
		st := layer(s, Bravo)
		return st != nil && st.ClusterLayer.Record != nil && len(st.ClusterLayer.Record.Standby) == 0 && s.InSync(1)
	})
	w.halt()
	s := status(t, lab)
	if s.Resources[0].Primary != Bravo {
		t.Fatalf("unstandby moved r0 back without automatic failback: primary %q", s.Resources[0].Primary)
	}
	w.mustWrite(t, 2)
	w.check(t)
	verifyReplicas(t, lab, bin, Bravo)
}
