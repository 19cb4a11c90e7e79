package lab

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
)

// TestClusterLayerFailover is the cluster layer in the lab: nobody
// promotes by hand; the daemons elect alpha (preferred) and put the VIP on
// it; a client writes through the VIP; alpha is crashed (power cut
// through its BMC's hook); bravo detects it, fences it through the IPMI
// BMC, commits itself at epoch 2, claims the VIP and serves the client's
// data; alpha, powered on again, resyncs and rejoins as Secondary.
func TestClusterLayerFailover(t *testing.T) {
	lab, _ := upClusterLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cfg, err := config.Load(lab.ConfigPath())
	if err != nil || !cfg.ClusterLayer() {
		t.Fatalf("lab config: %v, cluster layer %v", err, err == nil && cfg.ClusterLayer())
	}
	s := status(t, lab)
	if s.Resources[0].Primary != Alpha || s.Resources[0].VIPHolder != Alpha {
		t.Fatalf("after up: primary %q, VIP on %q; want alpha for both", s.Resources[0].Primary, s.Resources[0].VIPHolder)
	}
	qemuIO(t, lab, "write -P 0x3c 0 2M")
	qemuIO(t, lab, "read -P 0x3c 0 2M")

	crashed := time.Now()
	if err := lab.Crash(Alpha); err != nil {
		t.Fatal(err)
	}
	// The client retries, as a reconnecting NBD client would, until the
	// VIP serves again; every read is verified.
	var resumed time.Duration
	for i := 0; ; i++ {
		out, code := inNS(t, lab, Client, "timeout", "5", "qemu-io", "-f", "raw", "-c", "read -P 0x3c 0 2M", URI(0))
		if code == 0 && !strings.Contains(out, "failed") && !strings.Contains(out, "error") {
			resumed = time.Since(crashed)
			break
		}
		if strings.Contains(out, "Pattern verification failed") {
			t.Fatalf("the client read other data than it wrote after the failover:\n%s", out)
		}
		if time.Since(crashed) > time.Minute {
			t.Fatalf("the VIP did not serve again within a minute of the crash; last try exit %d:\n%s", code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("crash of alpha to verified I/O at the VIP: %v", resumed.Round(time.Millisecond))
	s = status(t, lab)
	if s.Resources[0].Primary != Bravo || s.Resources[0].VIPHolder != Bravo {
		t.Fatalf("after the failover: primary %q, VIP on %q; want bravo", s.Resources[0].Primary, s.Resources[0].VIPHolder)
	}
	nb, _ := cfg.Node(Bravo)
	ns, err := daemon.NewClient(nb.AdminSocket, Bravo).Status(ctx, "")
	if err != nil || ns.ClusterLayer == nil {
		t.Fatalf("bravo status: %v", err)
	}
	res := ns.ClusterLayer.Record.Resource("r0")
	if res == nil || res.Primary != Bravo || res.Epoch != 2 || res.LastFailover == nil || res.LastFailover.How != "fenced" {
		t.Fatalf("record: %+v", res)
	}
	f := ns.ClusterLayer.LastFailover["r0"]
	if f == nil {
		t.Fatal("no failover timeline on bravo")
	}
	var names []string
	for _, st := range f.Steps {
		names = append(names, st.Name)
		t.Logf("failover step %-7s %.3fs (elapsed %.3fs) %s", st.Name, st.Seconds, st.Elapsed, st.Detail)
	}
	// The order that keeps the failover safe: the old primary fenced before
	// the promotion is committed, both before the volume is promoted or the
	// VIP claimed, I/O served last. Promote and VIP claim may come in either
	// order: when the survivor's link has not yet timed out (a crash that
	// took the link down before the kernel sent a reset), the volume refuses
	// the promotion until it does, and the manager claims the VIP meanwhile;
	// the NBD gate serves nothing before both.
	pos := map[string]int{}
	for i, n := range names {
		pos[n] = i
	}
	order := func(a, b string) bool {
		pa, oka := pos[a]
		pb, okb := pos[b]
		return oka && okb && pa < pb
	}
	if len(names) != 6 || !order("detect", "fence") || !order("fence", "commit") ||
		!order("commit", "promote") || !order("commit", "vip") || !order("promote", "serve") || !order("vip", "serve") {
		t.Fatalf("failover steps %v: want detect, fence, commit, then promote and vip, then serve", names)
	}
	// The on-call hears of it: bravo's alert program got the failover's
	// steps and the fencing, in order.
	alerts := awaitAlerts(t, lab, Bravo, "failover step serve")
	fenced, served := strings.Index(alerts, "node alpha confirmed off"), strings.Index(alerts, "failover step serve")
	if fenced < 0 || fenced > served || !strings.Contains(alerts, " failover r0 failover step detect") {
		t.Fatalf("bravo's alerts do not tell the failover (fencing, then serve):\n%s", alerts)
	}
	qemuIO(t, lab, "write -P 0x4d 2M 1M")

	if err := lab.Restart(ctx, Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "alpha back as an UpToDate Secondary, bravo Primary with the VIP", func(s *Status) bool {
		a := s.Node(Alpha)
		return s.Resources[0].Primary == Bravo && s.Resources[0].VIPHolder == Bravo &&
			a.Role == "Secondary" && a.Disk == "UpToDate" && len(a.Resources) == 1 && a.Resources[0].Connection == "Connected"
	})
	qemuIO(t, lab, "read -P 0x3c 0 2M")
	qemuIO(t, lab, "read -P 0x4d 2M 1M")
}

// awaitAlerts waits (bounded) until node's alert file holds what, and
// returns the file.
func awaitAlerts(t *testing.T, lab *Lab, node, what string) string {
	t.Helper()
	var b []byte
	for range 100 {
		b, _ = os.ReadFile(lab.l.alerts(node))
		if strings.Contains(string(b), what) {
			return string(b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s's alerts never showed %q:\n%s", node, what, b)
	return ""
}

// firstLogTime is the time of the first line of a daemon's log that
// contains what (slog's text or JSON form).
func firstLogTime(t *testing.T, path, what string) (time.Time, bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`"?time"?[=:]"?([0-9T:.+Z-]+)`)
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, what) {
			continue
		}
		if m := re.FindStringSubmatch(line); m != nil {
			if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
				return at, true
			}
		}
	}
	return time.Time{}, false
}

// TestClusterLayerIsolatedPrimary: alpha is cut off from everyone (the
// BMC network stays reachable to bravo). Alpha loses quorum and suspends
// I/O; bravo fences it through its BMC, waits out its lease and takes over
// with the VIP, although its volume sees alpha Primary until the
// replication link's ping timeout (the manager retries the promotion).
func TestClusterLayerIsolatedPrimary(t *testing.T) {
	lab, _ := upClusterLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	qemuIO(t, lab, "write -P 0x21 0 1M")
	if err := lab.Isolate(ctx, Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "bravo Primary with the VIP", func(s *Status) bool {
		return s.Resources[0].Primary == Bravo && s.Resources[0].VIPHolder == Bravo
	})
	qemuIO(t, lab, "read -P 0x21 0 1M")
	promoted, ok := firstLogTime(t, lab.l.log(Bravo), "failover: promote")
	if !ok {
		t.Fatalf("bravo never logged its promotion")
	}
	// Bravo fences alpha as soon as it is declared dead, so its BMC may
	// power alpha off before alpha notices it lost quorum; if it did
	// notice, that was before bravo promoted.
	if suspended, ok := firstLogTime(t, lab.l.log(Alpha), "lost quorum as primary"); ok {
		if !suspended.Before(promoted) {
			t.Fatalf("alpha suspended I/O at %v, after bravo promoted at %v", suspended, promoted)
		}
		t.Logf("alpha suspended I/O %v before bravo promoted", promoted.Sub(suspended).Round(time.Millisecond))
	} else {
		t.Logf("alpha was powered off by its BMC before it noticed the loss of quorum")
	}
	if err := lab.Heal(ctx); err != nil {
		t.Fatal(err)
	}
}
