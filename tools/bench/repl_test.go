package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tandemconfig "github.com/tandem-ha/tandem/cmd/tandem/config"
)

func TestParseStatusRecorded(t *testing.T) {
	// Recorded from GET /v1/status?resource=bench on a primary during a
	// full resync, and on the same primary once in sync.
	b, err := os.ReadFile("testdata/status-syncsource.json")
	if err != nil {
		t.Fatal(err)
	}
	st, err := parseStatus(b, "bench")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Up || st.Role != "Primary" || st.Conn != "SyncSource" || st.PeerDisk != "Inconsistent" || st.OutOfSync != 46137344 || !st.NBDServing {
		t.Errorf("status = %+v", st)
	}
	if p := st.Resync; p == nil || !p.Full || p.TotalBytes != 67108864 || p.DoneBytes != 20971520 || p.SentBytes != 23068672 {
		t.Errorf("resync = %+v", st.Resync)
	}
	if p := st.LastResync; p == nil || p.Rate != 239409543.49827716 {
		t.Errorf("last_resync = %+v", st.LastResync)
	}
	if st.inSync() {
		t.Error("a SyncSource status counts as in sync")
	}
	b, err = os.ReadFile("testdata/status-in-sync.json")
	if err != nil {
		t.Fatal(err)
	}
	if st, err = parseStatus(b, "bench"); err != nil || !st.inSync() || st.Resync != nil || st.LastResync == nil {
		t.Errorf("in-sync status = %+v, %v", st, err)
	}
	if _, err := parseStatus(b, "other"); err == nil {
		t.Error("a resource the reply does not have was found")
	}
	for _, bad := range []string{"", "{", `{"resources": {}}`, "null"} {
		if st, err := parseStatus([]byte(bad), "bench"); err == nil {
			t.Errorf("parseStatus(%q) = %+v, want an error", bad, st)
		}
	}
}

func TestInSync(t *testing.T) {
	ok := resStatus{Up: true, Conn: "Connected", Disk: "UpToDate", PeerDisk: "UpToDate"}
	if !ok.inSync() {
		t.Fatal("in-sync status not in sync")
	}
	for name, f := range map[string]func(*resStatus){
		"down":          func(s *resStatus) { s.Up = false },
		"connecting":    func(s *resStatus) { s.Conn = "Connecting" },
		"outdated":      func(s *resStatus) { s.Disk = "Outdated" },
		"peer unknown":  func(s *resStatus) { s.PeerDisk = "DUnknown" },
		"out of sync":   func(s *resStatus) { s.OutOfSync = 4096 },
		"resync active": func(s *resStatus) { s.Resync = &progress{} },
	} {
		s := ok
		f(&s)
		if s.inSync() {
			t.Errorf("%s: counted as in sync", name)
		}
	}
}

func TestParseCreateMD(t *testing.T) {
	b, err := os.ReadFile("testdata/create-md-new-blank.json")
	if err != nil {
		t.Fatal(err)
	}
	g, err := parseCreateMD(b)
	if err != nil || g != 11472533310199618693 {
		t.Errorf("parseCreateMD = %d, %v; want 11472533310199618693 (a uint64 above 2^63, which a float would round)", g, err)
	}
	for _, bad := range []string{"", "{}", `{"superblock": {"generations": {"current": 0}}}`, `{"superblock": null}`, "warning: x"} {
		if g, err := parseCreateMD([]byte(bad)); err == nil {
			t.Errorf("parseCreateMD(%q) = %d, want an error", bad, g)
		}
	}
}

// TestPairConfigValidates checks the generated configuration with the
// daemon's own strict reader, on both nodes, with the files in place.
func TestPairConfigValidates(t *testing.T) {
	dir := t.TempDir()
	const size = 64 << 20
	p, err := newPair("/usr/local/bin/tandem", dir, size)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p.SecretPath); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() < 32 {
		t.Fatalf("secret file: %v, %v", fi, err)
	}
	for _, dev := range p.devices() {
		if err := os.WriteFile(dev, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(dev, size+p.MetaSize); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := tandemconfig.Load(p.ConfigPath)
	if err != nil {
		t.Fatalf("generated configuration refused: %v\n%s", err, p.ConfigText)
	}
	for _, node := range []string{"alpha", "beta"} {
		if err := cfg.Validate(node); err != nil {
			t.Errorf("validate --node %s: %v\n%s", node, err, p.ConfigText)
		}
	}
	res := cfg.Resource(replResource)
	if res == nil || res.Size != size || res.Protocol != "C" || res.Resync.MaxRate != 1<<40 {
		t.Fatalf("resource = %+v", res)
	}
	if p.Primary.NBDPort == p.Secondary.NBDPort || p.Primary.ReplPort == p.Secondary.ReplPort {
		t.Errorf("ports shared: %+v %+v", p.Primary, p.Secondary)
	}
	// One byte short of the internal metadata: the computed size is the
	// one the daemon needs, not a guess with slack.
	if err := os.Truncate(p.Primary.Device, size+p.MetaSize-1); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate("alpha"); err == nil {
		t.Error("a device one byte too small validated; MetaSize is not the daemon's")
	}
}

func at(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }

func TestResyncWatch(t *testing.T) {
	old := &progress{Full: true, TotalBytes: 1 << 30, DoneBytes: 1 << 30, Rate: 5e8}
	inSync := resStatus{Up: true, Role: "Primary", Conn: "Connected", Disk: "UpToDate", PeerDisk: "UpToDate", LastResync: old}
	running := func(done int64) resStatus {
		s := resStatus{Up: true, Role: "Primary", Conn: "SyncSource", Disk: "UpToDate", PeerDisk: "Inconsistent", OutOfSync: 100<<20 - done, LastResync: old}
		s.Resync = &progress{TotalBytes: 100 << 20, DoneBytes: done}
		return s
	}
	finished := inSync
	finished.LastResync = &progress{TotalBytes: 100 << 20, DoneBytes: 100 << 20, Rate: 123e6}

	t.Run("timed", func(t *testing.T) {
		w := &resyncWatch{before: old}
		steps := []struct {
			ms int
			st resStatus
		}{
			{0, resStatus{Up: true, Conn: "Connecting", Disk: "UpToDate", PeerDisk: "DUnknown", OutOfSync: 100 << 20, LastResync: old}},
			{10, inSync}, // an old in-sync view: not the end of this resync
			{20, running(20 << 20)},
			{520, running(70 << 20)},
			{1020, finished},
		}
		for i, s := range steps {
			done, got, err := w.observe(at(s.ms), s.st)
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			if done != (i == len(steps)-1) {
				t.Fatalf("step %d: done = %v", i, done)
			}
			if done {
				// 80 MiB copied between the first sighting and the end, in 1 s.
				if got.Bytes != 100<<20 || got.Seconds != 1 || got.Rate != 80<<20 || got.VolumeRate != 123e6 {
					t.Errorf("sample = %+v", got)
				}
			}
		}
	})
	t.Run("unseen", func(t *testing.T) {
		w := &resyncWatch{before: old}
		if _, _, err := w.observe(at(0), finished); !errors.Is(err, errResyncUnseen) {
			t.Errorf("a resync over before the first poll: %v, want errResyncUnseen", err)
		}
	})
	t.Run("no last_resync in the daemon", func(t *testing.T) {
		w := &resyncWatch{}
		plain := inSync
		plain.LastResync = nil
		if done, _, err := w.observe(at(0), plain); done || err != nil {
			t.Fatalf("in sync before anything ran: done %v, %v", done, err)
		}
		r := running(0)
		r.LastResync = nil
		w.observe(at(10), r)
		done, s, err := w.observe(at(110), plain)
		if !done || err != nil || s.Rate != float64(100<<20)/0.1 || s.VolumeRate != 0 {
			t.Errorf("done %v, %+v, %v", done, s, err)
		}
	})
	bad := map[string]struct {
		wantFull bool
		seq      []resStatus
	}{
		"full instead of bitmap": {false, []resStatus{func() resStatus { s := running(0); s.Resync.Full = true; return s }()}},
		"bitmap instead of full": {true, []resStatus{running(0)}},
		"primary is the target":  {false, []resStatus{{Up: true, Conn: "SyncTarget"}}},
		"standalone":             {false, []resStatus{running(0), {Up: true, Conn: "StandAlone", Reason: "split brain"}}},
		"down":                   {false, []resStatus{{Up: false, Error: "disk failed"}}},
		"another resync ended": {false, []resStatus{running(0), func() resStatus {
			s := finished
			s.LastResync = &progress{TotalBytes: 7 << 20}
			return s
		}()}},
	}
	for name, tc := range bad {
		t.Run(name, func(t *testing.T) {
			w := &resyncWatch{wantFull: tc.wantFull, before: old}
			var err error
			for i, st := range tc.seq {
				if _, _, err = w.observe(at(i*10), st); err != nil {
					break
				}
			}
			if err == nil {
				t.Errorf("no error for %s", name)
			}
		})
	}
}

func TestNearestRank(t *testing.T) {
	s, err := summarizeRTT([]float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6})
	if err != nil || s.N != 10 || s.P50 != 5 || s.P99 != 10 {
		t.Errorf("summarizeRTT = %+v, %v", s, err)
	}
	if s, _ := summarizeRTT([]float64{42}); s.P50 != 42 || s.P99 != 42 {
		t.Errorf("one value: %+v", s)
	}
	if _, err := summarizeRTT(nil); err == nil {
		t.Error("no round trips gave no error")
	}
}

// TestLinkProbes runs the probes against the real netpeer process.
func TestLinkProbes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "netpeer")
	// go test puts its own go first on PATH.
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./netpeer").CombinedOutput(); err != nil {
		t.Fatalf("building netpeer: %v\n%s", err, out)
	}
	peer, err := startNetPeer(ctx, bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := peer.proc.stopDefault(); err != nil {
			t.Error(err)
		}
	}()
	rtt, err := pingPong(ctx, peer.addr, 300, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rtt.N != 300 || rtt.P50 <= 0 || rtt.P99 < rtt.P50 {
		t.Errorf("round trip = %+v, want 300 samples with 0 < p50 <= p99", rtt)
	}
	bps, err := stream(ctx, peer.addr, 200*time.Millisecond)
	if err != nil || bps <= 0 {
		t.Errorf("stream = %v B/s, %v", bps, err)
	}
	// A mode the peer does not know: it drops the connection.
	c, err := dialPeer(ctx, peer.addr, 'x')
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("unknown mode answered %d byte(s)", n)
	}
	c.Close()
	if !strings.Contains(tail(filepath.Join(dir, "netpeer.log")), "unknown mode") {
		t.Errorf("netpeer log lacks the refusal: %s", tail(filepath.Join(dir, "netpeer.log")))
	}
}

func replReport() report {
	r := testReport()
	pr := &pair{ConfigPath: "/w/tandem.yaml", ConfigText: "cluster: bench\n", SecretPath: "/w/secret", Size: 1 << 30, MetaSize: 110592,
		Primary:   &pairNode{Name: "alpha", Device: "/w/alpha.img", NBDPort: 20000},
		Secondary: &pairNode{Name: "beta", Device: "/w/beta.img", PidFile: "/w/beta.pid", Argv: []string{"tandem", "daemon", "--node", "beta"}},
		Setup:     [][]string{{"tandem", "create-md", "bench", "--new-blank"}}, bin: "tandem"}
	repl := &target{Name: tRepl, Port: 20000, pair: pr}
	repl.Engine = []string{"--ioengine=nbd", "--uri=" + repl.uri()}
	r.Targets = append([]*target{r.Targets[0], repl}, r.Targets[1:]...)
	r.Rows = []row{allRows[0], allRows[1], allRows[2], allRows[4]}
	r.Results["randwrite-4k-qd32"] = map[string][]sample{
		tTandem: {{IOPS: 30000}, {IOPS: 40000}, {IOPS: 35000}},
		tRepl:   {{IOPS: 21000}, {IOPS: 28000}, {IOPS: 24500}}, // 0.70 exactly
		tNbdkit: {{IOPS: 35000}},
	}
	r.Results["randwrite-4k-qd1"] = map[string][]sample{
		tTandem: {{IOPS: 10000, P50: 100}},
		tRepl:   {{IOPS: 5000, P50: 181}},
	}
	r.Results["write-1m-qd8"] = map[string][]sample{
		tTandem: {{BW: 2000 << 20, Cores: 1, FioCores: 0.2, ServerCores: []float64{0.7}}},
		tRepl:   {{BW: 1000 << 20, Cores: 2, FioCores: 0.2, ServerCores: []float64{1.0, 0.6}}},
	}
	r.Resync = true
	r.Link = linkResults{
		RTT:              []rttSample{{N: 10, P50: 30, P99: 90}, {N: 10, P50: 32, P99: 80}, {N: 10, P50: 31, P99: 70}},
		ResyncSize:       512 << 20,
		Bitmap:           []resyncSample{{Bytes: 600 << 20, Rate: 400 << 20, VolumeRate: 410 << 20, ToInSync: 2 * time.Second}},
		BitmapStream:     []float64{500 << 20},
		Full:             []resyncSample{{Bytes: 1 << 30, Rate: 300 << 20, PerGiB: 4}},
		FullStream:       []float64{1000 << 20},
		FullStreamPerGiB: []float64{1},
	}
	r.Verify = &verifyOutcome{Report: verifyReport{ComparedBytes: 1 << 30}}
	r.Peer = &netPeer{argv: []string{"/w/netpeer", "-listen", "127.0.0.1:1"}}
	return r
}

func TestRenderReplicated(t *testing.T) {
	out := renderResults(replReport())
	for _, want := range []string{
		"| workload | tandem | tandem replicated (C) | nbdkit | go-nbd | raw file (io_uring) |",
		// Reads are not run by the replicated target: "-", not "failed".
		"| 4k randread QD32 (IOPS) | 63.0k (60.0k-66.0k) | - | 70.0k (70.0k-70.0k) |",
		"| 4k randwrite QD32 (IOPS) | 35.0k (30.0k-40.0k) | 24.5k (21.0k-28.0k) | 35.0k [1 of 3 runs] | failed | failed |",
		"| 4k randread QD32 | 405 / 920 | - | 300 / 800 |",
		// The tandem / other ratios leave the replicated target out.
		"| workload | tandem / nbdkit | tandem / go-nbd | tandem / raw file (io_uring) |",
		"| 4k randwrite QD32: replicated / unreplicated IOPS | 0.70 (24.5k / 35.0k IOPS) | ≥ 0.70 | yes |",
		"| 1M seqwrite QD8: replicated / unreplicated MiB/s | 0.50 (1000 / 2000 MiB/s) | ≥ 0.85 | **no** |",
		// 100 + the median RTT p50 of 31 + 50 = 181: just met.
		"| 4k randwrite QD1: replicated p50 latency | 181 µs | ≤ 181 µs (100 + 31.0 + 50) | yes |",
		"| bitmap resync: rate / loopback TCP stream | 0.80 (400 / 500 MiB/s) | ≥ 0.80 | yes |",
		"| full sync: rate / loopback TCP stream | 0.30 (300 / 1000 MiB/s) | ≥ 0.80 | **no** |",
		"| loopback TCP round trip, 64-byte ping-pong, p50 (µs) | 31.0 (30.0-32.0) |",
		"| loopback TCP round trip, p99 (µs) | 80.0 (70.0-90.0) |",
		"| bitmap resync after writing 512 MiB with the secondary down: bytes resynced (MiB) | 600 |",
		"| ... the primary's own figure, `last_resync.rate_bytes_per_second` (MiB/s) | 410 |",
		"| ... from starting the secondary's daemon to both replicas in sync (s) | 2.00 |",
		"| ... the primary's own figure, `last_resync.rate_bytes_per_second` (MiB/s) | not measured |",
		"| `tandem verify` of both replicas after the run | compared 1 GiB, 0 range(s) differ |",
		"tandem-repl `--uri=nbd://127.0.0.1:20000/bench`",
		"```yaml\ncluster: bench\n```",
		"\ntandem create-md bench --new-blank\n",
		"kill -TERM $(cat /w/beta.pid)",
		"fio --name=dirty --rw=write --bs=1M --iodepth=8 --numjobs=1 --offset=0 --size=536870912 --ioengine=nbd --uri=nbd://127.0.0.1:20000/bench --output-format=json",
		"\ntandem daemon --node beta   # beta comes back",
		"tandem --config /w/tandem.yaml resync bench --full --json --node beta",
		"`/w/netpeer -listen 127.0.0.1:1` runs as a separate process",
		"each device is 1073852416 bytes",
		"both daemons, fio and the kernel share the same 2 vCPU(s)",
		// 4 times the CPU per GiB: with both vCPUs, half the unreplicated rate.
		"| write-1m-qd8 | 1.00, 0.51 s/GiB | 2.00, 2.05 s/GiB | 4.00 | 0.50 | 0.85 |",
		// The split: 0.51 s/GiB unreplicated plus the secondary's 0.61 with
		// both vCPUs busy: 2 / (1.13 s/GiB × 1.95 GiB/s) = 0.91.
		"| write-1m-qd8 | 0.10 s/GiB, 0.36 s/GiB, 0.05 s/GiB | 0.20 s/GiB, 1.02 s/GiB, 0.61 s/GiB, 0.20 s/GiB | 0.91 | 0.85 |",
		// 4 times the stream's CPU per GiB: half of its 1000 MiB/s with both vCPUs.
		"| 4.00 s | 1.00 s | 4.00 | 0.51 | 0.80 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered results lack %q", want)
		}
	}
	if t.Failed() {
		t.Logf("rendered:\n%s", out)
	}
}

func TestReplGoalsMissing(t *testing.T) {
	r := replReport()
	r.Targets = r.Targets[1:] // no unreplicated tandem: nothing to compare with
	r.Link.Bitmap, r.Link.Full = nil, nil
	for _, g := range replGoals(r) {
		if g.Met != notRun {
			t.Errorf("%s: met %q without the data to decide", g.What, g.Met)
		}
		if strings.HasPrefix(g.What, "4k randwrite QD32") || strings.HasPrefix(g.What, "bitmap") {
			if g.Measured != "not measured" {
				t.Errorf("%s: measured %q", g.What, g.Measured)
			}
		}
	}
	r = replReport()
	r.Verify = &verifyOutcome{Err: errors.New("bench: verify after the run: 2 range(s) of the replicas differ")}
	if out := renderResults(r); !strings.Contains(out, "| `tandem verify` of both replicas after the run | failed: bench: verify after the run: 2 range(s) of the replicas differ |") {
		t.Errorf("verify failure not shown:\n%s", out)
	}
}

func TestParseFlagsReplicated(t *testing.T) {
	cfg, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !has(cfg.Targets, tRepl) || !cfg.Resync || cfg.ResyncSize != 512<<20 {
		t.Errorf("defaults: targets %v, resync %v, resync size %d", cfg.Targets, cfg.Resync, cfg.ResyncSize)
	}
	// Only reads: the replicated target has nothing to run and leaves the
	// default list.
	cfg, err = parseFlags([]string{"-rows", "randread-4k-qd32"})
	if err != nil || has(cfg.Targets, tRepl) || cfg.Resync || len(cfg.Targets) != len(allTargets)-1 {
		t.Errorf("-rows randread-4k-qd32: targets %v, resync %v, %v", cfg.Targets, cfg.Resync, err)
	}
	// Only the resync: only the replicated target.
	cfg, err = parseFlags([]string{"-rows", "resync", "-quick"})
	if err != nil || strings.Join(cfg.Targets, ",") != tRepl || !cfg.Resync || len(cfg.Rows) != 0 {
		t.Errorf("-rows resync: targets %v, rows %v, resync %v, %v", cfg.Targets, cfg.Rows, cfg.Resync, err)
	}
	// Without the replicated target, the default rows drop the resync.
	cfg, err = parseFlags([]string{"-targets", "nbdkit"})
	if err != nil || cfg.Resync {
		t.Errorf("-targets nbdkit: resync %v, %v", cfg.Resync, err)
	}
	cfg, err = parseFlags([]string{"-size", "256M", "-resync-size", "64M"})
	if err != nil || cfg.ResyncSize != 64<<20 {
		t.Errorf("-resync-size 64M: %d, %v", cfg.ResyncSize, err)
	}
	for _, args := range [][]string{
		{"-targets", "tandem-repl", "-rows", "randread-4k-qd32"}, // named, nothing to run
		{"-targets", "nbdkit", "-rows", "resync"},                // resync needs the pair
		{"-targets", "nbdkit", "-rows", "randwrite-4k-qd1,resync"},
		{"-size", "256M", "-resync-size", "512M"},
		{"-resync-size", "1000000"},
		{"-resync-size", "0"},
		{"-resync-size", "1536K"},
	} {
		if cfg, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%q) = targets %v rows %d, want an error", args, cfg.Targets, len(cfg.Rows))
		}
	}
}

func TestParseVerify(t *testing.T) {
	b, err := os.ReadFile("testdata/verify.json") // recorded from tandem verify --json
	if err != nil {
		t.Fatal(err)
	}
	if r, err := parseVerify(b); err != nil || r.ComparedBytes != 64<<20 || len(r.Differing) != 0 {
		t.Errorf("parseVerify = %+v, %v", r, err)
	}
	differ := `{"compared_bytes": 1048576, "differing": [{"offset": 0, "length": 4096}], "repaired": false}`
	if r, err := parseVerify([]byte(differ)); err == nil || len(r.Differing) != 1 {
		t.Errorf("differing replicas: %+v, %v; want an error", r, err)
	}
	for _, bad := range []string{"", `{"error": "not connected", "code": "not_connected"}`, "{"} {
		if r, err := parseVerify([]byte(bad)); err == nil {
			t.Errorf("parseVerify(%q) = %+v, want an error", bad, r)
		}
	}
}

func TestDefaultResyncSize(t *testing.T) {
	for size, want := range map[string]int64{"1G": 512 << 20, "3M": 1 << 20, "1M": 1 << 20} {
		cfg, err := parseFlags([]string{"-size", size})
		if err != nil || cfg.ResyncSize != want {
			t.Errorf("-size %s: resync size %d, %v; want %d", size, cfg.ResyncSize, err, want)
		}
	}
}

func TestReplicatedThroughout(t *testing.T) {
	last := &progress{TotalBytes: 1 << 20, DoneBytes: 1 << 20, Rate: 9e7}
	ok := resStatus{Up: true, Role: "Primary", Conn: "Connected", Disk: "UpToDate", PeerDisk: "UpToDate", LastResync: last}
	if err := replicatedThroughout(ok, ok); err != nil {
		t.Fatalf("a clean run: %v", err)
	}
	fresh := ok
	fresh.LastResync = nil
	if err := replicatedThroughout(fresh, fresh); err != nil {
		t.Fatalf("a clean run without any resync so far: %v", err)
	}
	bad := map[string][2]resStatus{}
	degraded := ok
	degraded.Conn, degraded.PeerDisk, degraded.OutOfSync = "Connecting", "DUnknown", 4096
	bad["degraded at the end"] = [2]resStatus{ok, degraded}
	resyncing := ok
	resyncing.Conn, resyncing.Resync = "SyncSource", &progress{TotalBytes: 8192}
	bad["resyncing at the end"] = [2]resStatus{ok, resyncing}
	resynced := ok
	resynced.LastResync = &progress{TotalBytes: 8192, DoneBytes: 8192, Rate: 1e6}
	bad["resynced during the run"] = [2]resStatus{ok, resynced}
	bad["first resync during the run"] = [2]resStatus{fresh, ok}
	demoted := ok
	demoted.Role = "Secondary"
	bad["demoted"] = [2]resStatus{ok, demoted}
	for name, c := range bad {
		if err := replicatedThroughout(c[0], c[1]); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
