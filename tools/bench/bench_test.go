package main

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseFioRecorded(t *testing.T) {
	// Recorded from fio 3.33 against nbdkit; the nbd engine prints
	// "fio: connected to NBD server" on stdout before the JSON.
	tests := []struct {
		file string
		read bool
		want sample
	}{
		{"testdata/fio-nbd-randwrite.json", false, sample{IOPS: 13173.826174, BW: 53959992, P50: 62.720, P99: 134.144, ClatP50: 48.384}},
		{"testdata/fio-nbd-read.json", true, sample{IOPS: 1329.025845, BW: 1393584604, P50: 5144.576, P99: 24248.320, ClatP50: 5079.040}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b), "fio: connected") {
				t.Fatalf("sample lost its banner line; the prefix handling is no longer tested")
			}
			got, err := parseFio(b, tc.read)
			if err != nil {
				t.Fatal(err)
			}
			if !near(got.IOPS, tc.want.IOPS) || !near(got.BW, tc.want.BW) ||
				!near(got.P50, tc.want.P50) || !near(got.P99, tc.want.P99) || !near(got.ClatP50, tc.want.ClatP50) {
				t.Errorf("parseFio = %+v, want %+v", got, tc.want)
			}
			// The other direction did no I/O in these jobs.
			if _, err := parseFio(b, !tc.read); err == nil {
				t.Errorf("parsing the idle direction succeeded, want an error")
			}
		})
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }

func TestParseFioErrors(t *testing.T) {
	good := `{"jobs":[{"jobname":"x","error":0,"write":{"iops":10,"bw_bytes":40960,"total_ios":10,
		"clat_ns":{"percentile":{"50.000000":500,"99.000000":900}},
		"lat_ns":{"percentile":{"50.000000":1000,"99.000000":2000}}}}]}`
	if s, err := parseFio([]byte(good), false); err != nil || s.P50 != 1 || s.P99 != 2 || s.ClatP50 != 0.5 {
		t.Fatalf("parseFio(good) = %+v, %v", s, err)
	}
	bad := map[string]string{
		"empty":      "",
		"no json":    "fio: nbd_connect_uri: connect: Connection refused\n",
		"truncated":  `{"jobs":[{"jobname":"x"`,
		"job error":  strings.Replace(good, `"error":0`, `"error":5`, 1),
		"no io":      strings.Replace(good, `"total_ios":10`, `"total_ios":0`, 1),
		"no p99":     strings.Replace(good, `"99.000000":2000`, `"99.900000":2000`, 1),
		"no lat":     strings.Replace(good, `"lat_ns"`, `"other"`, 1),
		"two jobs":   `{"jobs":[{"jobname":"a"},{"jobname":"b"}]}`,
		"jobs empty": `{"jobs":[]}`,
	}
	for name, in := range bad {
		if s, err := parseFio([]byte(in), false); err == nil {
			t.Errorf("%s: parseFio = %+v, want an error", name, s)
		}
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{[]float64{5}, 5},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{10, 10, 1}, 10},
	}
	for _, tc := range tests {
		in := append([]float64(nil), tc.in...)
		if got := median(in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Fatalf("median reordered its input: %v", in)
			}
		}
	}
}

func TestSummarize(t *testing.T) {
	s := summarize([]sample{
		{IOPS: 100, BW: 3, P50: 10, P99: 50},
		{IOPS: 300, BW: 1, P50: 30, P99: 10},
		{IOPS: 200, BW: 2, P50: 20, P99: 30},
	}, false)
	want := summary{N: 3, IOPS: 200, BW: 2, P50: 20, P99: 30, Min: 100, Max: 300}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("summarize = %+v, want %+v", s, want)
	}
	// The split by process is the median of each process over the
	// samples that have it; one without (a process could not be read)
	// is left out rather than counted as zero.
	s = summarize([]sample{
		{IOPS: 1, FioCores: 0.1, ServerCores: []float64{0.5, 0.9}},
		{IOPS: 2},
		{IOPS: 3, FioCores: 0.3, ServerCores: []float64{0.7, 0.3}},
		{IOPS: 4, FioCores: 0.2, ServerCores: []float64{0.6, 0.4}},
	}, false)
	if s.FioCores != 0.2 || !reflect.DeepEqual(s.ServerCores, []float64{0.6, 0.4}) {
		t.Errorf("split = fio %v, servers %v; want 0.2, [0.6 0.4]", s.FioCores, s.ServerCores)
	}
	if s := summarize([]sample{{IOPS: 1, BW: 7}, {IOPS: 2, BW: 9}}, true); s.Min != 7 || s.Max != 9 {
		t.Errorf("bandwidth range = %v-%v, want 7-9", s.Min, s.Max)
	}
	if s := summarize(nil, false); s.N != 0 {
		t.Errorf("summarize(nil).N = %d", s.N)
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"1G": 1 << 30, "512M": 512 << 20, "64MiB": 64 << 20, "4k": 4096, "1048576": 1 << 20}
	for in, want := range good {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1G", "0", "1X", "1.5G"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-quick", "-targets", "raw,nbdkit"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Reps != 1 || cfg.Runtime != 3*time.Second || cfg.Ramp != time.Second {
		t.Errorf("-quick gave reps %d runtime %v ramp %v", cfg.Reps, cfg.Runtime, cfg.Ramp)
	}
	if strings.Join(cfg.Targets, ",") != "nbdkit,raw" {
		t.Errorf("targets %v not in table order", cfg.Targets)
	}
	if len(cfg.Rows) != len(defaultRows) {
		t.Errorf("%d rows, want the %d default ones", len(cfg.Rows), len(defaultRows))
	}
	cfg, err = parseFlags([]string{"-quick", "-reps", "2"})
	if err != nil || cfg.Reps != 2 {
		t.Errorf("explicit -reps under -quick: reps %d, %v", cfg.Reps, err)
	}
	for _, args := range [][]string{
		{"-targets", "nbd-server"}, {"-rows", "nope"}, {"-runtime", "1500ms"}, {"-reps", "0"},
		{"-size", "1000000"}, {"extra"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%q) succeeded, want an error", args)
		}
	}
}

func testReport() report {
	var targets []*target
	for i, name := range []string{tTandem, tNbdkit, tGoNBD, tRaw} {
		tg := &target{Name: name, Port: 10000 + i}
		if name == tRaw {
			tg.Engine = []string{"--ioengine=io_uring", "--filename=/var/tmp/x/bench.img"}
		} else {
			tg.Server = []string{name, "--port", "1"}
			tg.Engine = []string{"--ioengine=nbd", "--uri=" + tg.uri()}
		}
		targets = append(targets, tg)
	}
	rows := []row{allRows[0], allRows[3]}
	return report{
		Started: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC),
		Elapsed: 90 * time.Second,
		Machine: machine{CPUs: 2, Model: "Test CPU", Versions: [][2]string{{"fio", "fio-3.33"}}},
		Reps:    3, Runtime: 8 * time.Second, Ramp: 2 * time.Second, Size: 1 << 30,
		File: "/var/tmp/x/bench.img", Prepare: "Filled.",
		Targets: targets,
		Rows:    rows,
		Results: map[string]map[string][]sample{
			"randread-4k-qd32": {
				tTandem: {{IOPS: 60000, P50: 400, P99: 900}, {IOPS: 66000, P50: 410, P99: 950}, {IOPS: 63000, P50: 405, P99: 920}},
				tNbdkit: {{IOPS: 70000, P50: 300, P99: 800}, {IOPS: 70000, P50: 300, P99: 800}, {IOPS: 70000, P50: 300, P99: 800}},
				tGoNBD:  {{IOPS: 31500, P50: 800, P99: 2000}},
				tRaw:    {{IOPS: 180000, P50: 50, P99: 90}, {IOPS: 180000, P50: 50, P99: 90}, {IOPS: 180000, P50: 50, P99: 90}},
			},
			"read-1m-qd8": {
				tTandem: {{BW: 2048 << 20}, {BW: 2048 << 20}, {BW: 2048 << 20}},
				tNbdkit: {{BW: 1024 << 20}, {BW: 1024 << 20}, {BW: 1024 << 20}},
				tRaw:    {{BW: 4096 << 20}, {BW: 4096 << 20}, {BW: 4096 << 20}},
			},
		},
		Failures: []string{"read-1m-qd8 on go-nbd, repetition 1: fio: exit status 1"},
	}
}

func TestRenderResults(t *testing.T) {
	out := renderResults(testReport())
	for _, want := range []string{
		"| workload | tandem | nbdkit | go-nbd | raw file (io_uring) |",
		"| 4k randread QD32 (IOPS) | 63.0k (60.0k-66.0k) | 70.0k (70.0k-70.0k) | 31.5k [1 of 3 runs] | 180.0k (180.0k-180.0k) |",
		"| 1M seqread QD8 (MiB/s) | 2048 (2048-2048) | 1024 (1024-1024) | failed | 4096 (4096-4096) |",
		"| 4k randread QD32 | 405 / 920 | 300 / 800 | 800 / 2000 | 50.0 / 90.0 |",
		"| workload | tandem / nbdkit | tandem / go-nbd | tandem / raw file (io_uring) |",
		"| 4k randread QD32 | 0.90 | 2.00 | 0.35 |",
		"| 1M seqread QD8 | 2.00 | - | 0.50 |",
		"**1 run(s) failed**",
		"The machine has 2 vCPU(s)",
		"fio --name=randread-4k-qd32 --rw=randread --bs=4k --iodepth=32 --numjobs=1 --group_reporting --time_based --lat_percentiles=1 --runtime=8s --ramp_time=2s --output-format=json --ioengine=nbd --uri=nbd://127.0.0.1:10000/bench\n",
		"fio --name=read-1m-qd8 --rw=read --bs=1M --iodepth=8 --numjobs=1 --group_reporting --time_based --lat_percentiles=1 --runtime=8s --ramp_time=2s --output-format=json --ioengine=io_uring --filename=/var/tmp/x/bench.img\n",
		"nbdkit `--uri=nbd://127.0.0.1:10001/bench`",
		"\nnbdkit --port 1\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered results lack %q:\n%s", want, out)
		}
	}
}

func TestRenderWithoutTandem(t *testing.T) {
	r := testReport()
	r.Targets = r.Targets[1:]
	out := renderResults(r)
	if strings.Contains(out, "tandem /") {
		t.Errorf("ratios rendered without tandem:\n%s", out)
	}
	if !strings.Contains(out, "against nbdkit (the other NBD servers differ only in `--uri`: go-nbd") {
		t.Errorf("fio commands not shown against nbdkit:\n%s", out)
	}
}

func TestMergeDoc(t *testing.T) {
	fresh := mergeDoc("", "RESULTS\n")
	if !strings.HasPrefix(fresh, defaultHeader) || !strings.HasSuffix(fresh, marker+"\n\nRESULTS\n") {
		t.Errorf("fresh document:\n%s", fresh)
	}
	old := "# Mine\n\nhand-written notes\n\n" + marker + "\n\nold results\nmore\n"
	got := mergeDoc(old, "new results\n")
	want := "# Mine\n\nhand-written notes\n\n" + marker + "\n\nnew results\n"
	if got != want {
		t.Errorf("mergeDoc = %q, want %q", got, want)
	}
	if again := mergeDoc(got, "new results\n"); again != got {
		t.Errorf("mergeDoc is not stable: %q", again)
	}
	noMarker := mergeDoc("# Only notes\n", "R\n")
	if noMarker != "# Only notes\n\n"+marker+"\n\nR\n" {
		t.Errorf("document without marker: %q", noMarker)
	}
}

func TestWriteDoc(t *testing.T) {
	path := t.TempDir() + "/docs/benchmarks.md"
	if err := writeDoc(path, "first\n"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	edited := strings.Replace(string(b), "# Benchmarks", "# Benchmarks (edited)", 1)
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeDoc(path, "second\n"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	s := string(b)
	if !strings.Contains(s, "# Benchmarks (edited)") || strings.Contains(s, "first") || !strings.HasSuffix(s, "second\n") {
		t.Errorf("rewritten document:\n%s", s)
	}
	entries, err := os.ReadDir(strings.TrimSuffix(path, "/benchmarks.md"))
	if err != nil || len(entries) != 1 {
		t.Errorf("docs directory holds %v (%v), want only benchmarks.md", entries, err)
	}
}

func TestShellJoin(t *testing.T) {
	got := shellJoin([]string{"fio", "--uri=nbd://127.0.0.1:1/bench", "a b", "it's"})
	want := `fio --uri=nbd://127.0.0.1:1/bench 'a b' 'it'\''s'`
	if got != want {
		t.Errorf("shellJoin = %s, want %s", got, want)
	}
}

func TestCPUBusyMoves(t *testing.T) {
	m := startCPU()
	if m.err != nil {
		t.Fatal(m.err)
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	if c := m.cores(); c <= 0 || c > float64(runtime.NumCPU())+0.5 {
		t.Fatalf("cores busy while spinning: %.2f (of %d)", c, runtime.NumCPU())
	}
}

func TestParseProcStat(t *testing.T) {
	// A command name may hold spaces and parentheses: fields are counted
	// from its last ')'. utime 250 and stime 150 ticks: 4 s.
	line := "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 7 0 1000 2000000 300 18446744073709551615\n"
	got, err := parseProcStat([]byte(line))
	if err != nil || got != 4 {
		t.Errorf("parseProcStat = %v, %v; want 4", got, err)
	}
	for _, bad := range []string{"", "4242 (x) S 1 2 3", "4242 (x) S 1 4242 4242 0 -1 0 0 0 0 0 x 150 0 0"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q) took it", bad)
		}
	}
	// This process has used some CPU by now.
	if v, err := procCPU(os.Getpid()); err != nil || v < 0 {
		t.Errorf("procCPU(self) = %v, %v", v, err)
	}
}

func TestIOPSLogWindows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app_iops.1.log")
	if err := os.WriteFile(path, []byte("100, 1000, 1, 4096, 0\n200, 3000, 1, 4096, 0\n300, 500, 1, 4096, 0\n400, 700, 1, 4096, 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := readIOPSLog(path)
	if err != nil || len(l) != 4 {
		t.Fatalf("readIOPSLog: %v %v", l, err)
	}
	if m := l.mean(100*time.Millisecond, 200*time.Millisecond); m != 2000 {
		t.Errorf("mean of the first two: %v", m)
	}
	if m := l.mean(time.Second, 2*time.Second); m != 0 {
		t.Errorf("mean of an empty window: %v", m)
	}
	if k := (appShareSample{Before: 1000, During: 300, After: 1000}).Kept(); k != 0.3 {
		t.Errorf("kept %v", k)
	}
	if err := os.WriteFile(path, []byte("x, y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readIOPSLog(path); err == nil {
		t.Error("a bad line accepted")
	}
}
