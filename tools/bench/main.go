// Command bench compares tandem's NBD server with nbdkit, qemu-nbd and
// go-nbd serving the same file, plus the file itself through io_uring as the
// upper limit, using fio; measures a replicated pair of tandem daemons
// (protocol C, peer on loopback) on the write workloads and its resync
// rate against the goals of docs/benchmarks.md; and rewrites the results
// part of that document. Run it from the module root: go run ./tools/bench.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type config struct {
	Reps    int
	Runtime time.Duration
	Ramp    time.Duration
	Size    int64
	Out     string
	Dir     string
	Targets []string
	Rows    []row
	// Resync selects the resync row (the replicated target only).
	Resync bool
	// ResyncSize is what the bitmap resync measurement dirties.
	ResyncSize int64
	Tandem     string // prebuilt tandem binary; built from ./cmd/tandem if empty
	// Failover selects the failover row (the lab, as root), with
	// FailoverCrashes crashes.
	Failover        bool
	FailoverCrashes int
}

// rowResync is the -rows name of the resync measurements, which are not
// a fio workload.
const rowResync = "resync"

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	reps := fs.Int("reps", 3, "repetitions of every workload and target")
	runtime := fs.Duration("runtime", 8*time.Second, "measured time per fio run (whole seconds)")
	ramp := fs.Duration("ramp", 2*time.Second, "fio ramp_time before measuring (whole seconds)")
	size := fs.String("size", "1G", "size of the served file")
	out := fs.String("out", "docs/benchmarks.md", "document whose results section is rewritten (empty: print to stdout)")
	dir := fs.String("dir", "/var/tmp", "directory for the served files (on the work disk, not tmpfs)")
	targets := fs.String("targets", strings.Join(allTargets, ","), "comma-separated targets: "+strings.Join(allTargets, ","))
	rows := fs.String("rows", strings.Join(append(slices.Clone(defaultRows), rowResync, rowFailover), ","), "comma-separated workloads, from: "+rowNames())
	resyncSize := fs.String("resync-size", "", "data written while the secondary is down, for the bitmap resync (default: half of -size)")
	tandem := fs.String("tandem", "", "tandem binary to use instead of building ./cmd/tandem")
	crashes := fs.Int("failover-crashes", 10, "crashes of the primary the failover row measures")
	quick := fs.Bool("quick", false, "smoke run: 1 repetition of 3s + 1s ramp (unless -reps/-runtime/-ramp are given)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("bench: unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if !set["reps"] {
			*reps = 1
		}
		if !set["runtime"] {
			*runtime = 3 * time.Second
		}
		if !set["ramp"] {
			*ramp = time.Second
		}
	}
	cfg := config{Reps: *reps, Runtime: *runtime, Ramp: *ramp, Out: *out, Dir: *dir, Tandem: *tandem, FailoverCrashes: *crashes}
	if cfg.FailoverCrashes < 1 || cfg.FailoverCrashes > 100 {
		return config{}, errors.New("bench: -failover-crashes must be from 1 to 100")
	}
	if cfg.Reps < 1 {
		return config{}, errors.New("bench: -reps must be at least 1")
	}
	if cfg.Runtime < time.Second || cfg.Runtime%time.Second != 0 || cfg.Ramp < 0 || cfg.Ramp%time.Second != 0 {
		return config{}, errors.New("bench: -runtime must be whole seconds (at least 1s) and -ramp whole seconds")
	}
	var err error
	if cfg.Size, err = parseSize(*size); err != nil {
		return config{}, err
	}
	if cfg.Size%(1<<20) != 0 {
		return config{}, errors.New("bench: -size must be a multiple of 1M (the largest block size)")
	}
	cfg.ResyncSize = max(cfg.Size/2&^(1<<20-1), 1<<20)
	if *resyncSize != "" {
		if cfg.ResyncSize, err = parseSize(*resyncSize); err != nil {
			return config{}, err
		}
	}
	if cfg.ResyncSize%(1<<20) != 0 || cfg.ResyncSize > cfg.Size {
		return config{}, errors.New("bench: -resync-size must be a multiple of 1M and at most -size")
	}
	for _, name := range splitList(*targets) {
		if !has(allTargets, name) {
			return config{}, fmt.Errorf("bench: unknown target %q (want %s)", name, strings.Join(allTargets, ","))
		}
		cfg.Targets = append(cfg.Targets, name)
	}
	for _, name := range splitList(*rows) {
		if name == rowResync {
			cfg.Resync = true
			continue
		}
		if name == rowFailover {
			cfg.Failover = true
			continue
		}
		r, ok := findRow(name)
		if !ok {
			return config{}, fmt.Errorf("bench: unknown workload %q (want %s)", name, rowNames())
		}
		cfg.Rows = append(cfg.Rows, r)
	}
	if len(cfg.Rows) == 0 && !cfg.Resync && cfg.Failover {
		cfg.Targets = nil // the failover row alone runs no target
		return cfg, nil
	}
	if len(cfg.Targets) == 0 || len(cfg.Rows) == 0 && !cfg.Resync {
		return config{}, errors.New("bench: need at least one target and one workload")
	}
	if cfg.Resync && !has(cfg.Targets, tRepl) {
		if set["rows"] {
			return config{}, fmt.Errorf("bench: the %s row needs target %s", rowResync, tRepl)
		}
		cfg.Resync = false // the default rows, without the replicated target
	}
	// A target with nothing to run is left out of the default target
	// list, and refused when named.
	kept := cfg.Targets[:0]
	for _, name := range cfg.Targets {
		runs := name == tRepl && cfg.Resync
		for _, r := range cfg.Rows {
			runs = runs || targetRuns(name, r.Name)
		}
		switch {
		case runs:
			kept = append(kept, name)
		case set["targets"]:
			return config{}, fmt.Errorf("bench: target %s runs none of the selected workloads (it runs %s)", name, targetRowNames(name))
		}
	}
	cfg.Targets = kept
	if len(cfg.Targets) == 0 {
		return config{}, errors.New("bench: no target runs any of the selected workloads")
	}
	// Table order, whatever order the flag gave.
	var ordered []string
	for _, t := range allTargets {
		if has(cfg.Targets, t) {
			ordered = append(ordered, t)
		}
	}
	cfg.Targets = ordered
	return cfg, nil
}

// targetRuns says whether target name takes part in workload row.
func targetRuns(name, row string) bool { return name != tRepl || has(replRows, row) }

func targetRowNames(name string) string {
	if name == tRepl {
		return strings.Join(append(slices.Clone(replRows), rowResync), ",")
	}
	return "every fio workload"
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func rowNames() string {
	names := make([]string, len(allRows))
	for i, r := range allRows {
		names[i] = r.Name
	}
	return strings.Join(append(names, rowResync, rowFailover), ",")
}

func findRow(name string) (row, bool) {
	for _, r := range allRows {
		if r.Name == name {
			return r, true
		}
	}
	return row{}, false
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if len(cfg.Targets) > 0 {
		err = run(ctx, cfg, log)
	}
	if err == nil && cfg.Failover {
		err = failoverMain(ctx, cfg, log)
	}
	stop()
	if err != nil {
		log.Error("benchmark failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, log *slog.Logger) (err error) {
	started := time.Now()
	loadStart := loadAvg()
	if l := loadStart; l != "" {
		log.Info("load average before the run (other work on the machine skews the results)", "load", l)
	}
	need := []string{"fio", "nbdinfo", "go"}
	if has(cfg.Targets, tNbdkit) {
		need = append(need, "nbdkit")
	}
	if has(cfg.Targets, tQemu) {
		need = append(need, "qemu-nbd")
	}
	for _, tool := range need {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("bench: %s is required: %w", tool, err)
		}
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}

	files := int64(1)
	if has(cfg.Targets, tRepl) {
		files += 2 // both replicas' devices
	}
	if err := checkDir(cfg.Dir, files*cfg.Size); err != nil {
		return err
	}
	work, err := os.MkdirTemp(cfg.Dir, "tandem-bench-")
	if err != nil {
		return fmt.Errorf("bench: creating work directory: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(work); rerr != nil && err == nil {
			err = fmt.Errorf("bench: removing %s: %w", work, rerr)
		}
	}()

	bins, err := build(ctx, cfg, root, work, log)
	if err != nil {
		return err
	}

	var targets []*target
	var stoppers []func() error // in start order; run in reverse
	defer func() {
		for i := len(stoppers) - 1; i >= 0; i-- {
			if serr := stoppers[i](); serr != nil {
				log.Warn("stopping", "err", serr)
				if err == nil {
					err = serr
				}
			}
		}
	}()
	file := filepath.Join(work, "bench.img")
	paths := []string{file}
	var repl *target
	for _, name := range cfg.Targets {
		t, err := newTarget(name, file, cfg.Size, bins, work)
		if err != nil {
			return err
		}
		targets = append(targets, t)
		if t.pair != nil {
			repl = t
			paths = append(paths, t.pair.devices()...)
		}
	}
	log.Info("filling the served files", "paths", strings.Join(paths, ","), "size", cfg.Size)
	synced, err := fill(ctx, paths, cfg.Size)
	if err != nil {
		return err
	}
	defer func() {
		for _, f := range synced {
			f.Close()
		}
	}()
	// Start every run without the previous run's dirty pages.
	syncAll := func() error {
		for _, f := range synced {
			if err := f.Sync(); err != nil {
				return fmt.Errorf("bench: syncing %s: %w", f.Name(), err)
			}
		}
		return nil
	}

	var peer *netPeer
	if repl != nil {
		if peer, err = startNetPeer(ctx, bins.NetPeer, work); err != nil {
			return err
		}
		stoppers = append(stoppers, peer.proc.stopDefault)
		log.Info("loopback peer ready", "pid", peer.proc.pid, "addr", peer.addr)
	}
	for _, t := range targets {
		stoppers = append(stoppers, t.stop)
		if err := t.start(ctx, cfg.Size, filepath.Join(work, t.Name+".log")); err != nil {
			return err
		}
		switch {
		case t.pair != nil:
			log.Info("replicated pair ready", "target", t.Name, "primary pid", t.pair.Primary.proc.pid,
				"secondary pid", t.pair.Secondary.proc.pid, "uri", t.uri())
		case t.Server != nil:
			log.Info("server ready", "target", t.Name, "pid", t.proc.pid, "uri", t.uri())
		}
	}

	perRep := 0
	for _, r := range cfg.Rows {
		for _, t := range targets {
			if t.runs(r.Name) {
				perRep++
			}
		}
	}
	total := cfg.Reps * perRep
	log.Info("running", "runs", total, "estimate", (time.Duration(total) * (cfg.Runtime + cfg.Ramp + time.Second)).String())
	results := map[string]map[string][]sample{}
	var link linkResults
	var failures []string
	n := 0
	for rep := range cfg.Reps {
		for _, r := range cfg.Rows {
			if results[r.Name] == nil {
				results[r.Name] = map[string][]sample{}
			}
			for i := range targets {
				t := targets[(i+rep)%len(targets)]
				if !t.runs(r.Name) {
					continue
				}
				n++
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("bench: interrupted: %w", err)
				}
				if err := syncAll(); err != nil {
					return err
				}
				s, err := runOn(ctx, r, t, cfg)
				if err != nil {
					if ctx.Err() != nil {
						return fmt.Errorf("bench: interrupted: %w", ctx.Err())
					}
					msg := fmt.Sprintf("%s on %s, repetition %d: %v", r.Name, t.Name, rep+1, err)
					log.Error("run failed", "run", n, "of", total, "err", msg)
					failures = append(failures, msg)
					continue
				}
				results[r.Name][t.Name] = append(results[r.Name][t.Name], s)
				log.Info("run", "n", fmt.Sprintf("%d/%d", n, total), "rep", rep+1, "row", r.Name, "target", t.Name,
					"iops", fmt.Sprintf("%.0f", s.IOPS), "MiB/s", fmt.Sprintf("%.0f", s.BW/(1<<20)),
					"p50us", fmt.Sprintf("%.1f", s.P50), "p99us", fmt.Sprintf("%.1f", s.P99))
			}
		}
		if repl != nil {
			if err := syncAll(); err != nil {
				return err
			}
			fails, err := measureLink(ctx, cfg, repl, peer, rep, &link, syncAll, log)
			failures = append(failures, fails...)
			if err != nil {
				return err
			}
		}
	}

	var verify *verifyOutcome
	if repl != nil {
		log.Info("verifying that both replicas hold the same data")
		vr, verr := repl.pair.verify(ctx)
		verify = &verifyOutcome{Report: vr, Err: verr}
		if verr != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("bench: interrupted: %w", ctx.Err())
			}
			failures = append(failures, verr.Error())
		}
	}

	rep := report{
		Started: started,
		Machine: describeMachine(ctx, cfg.Dir, tandemRevision(ctx, root, cfg.Tandem)),
		Reps:    cfg.Reps, Runtime: cfg.Runtime, Ramp: cfg.Ramp, Size: cfg.Size,
		File:     file,
		Prepare:  "It is filled once with pseudo-random data (ChaCha8, written in 1 MiB blocks and fsynced) before the servers start, so every block is allocated, nothing is a hole or compressible, and reads return real data.",
		Targets:  targets,
		Rows:     cfg.Rows,
		Results:  results,
		Failures: failures,
		Resync:   cfg.Resync,
		Link:     link,
		Verify:   verify,
		Peer:     peer,
	}
	rep.Elapsed = time.Since(started)
	rep.Load = [2]string{loadStart, loadAvg()}
	doc := renderResults(rep)
	if cfg.Out == "" {
		fmt.Print(doc)
	} else {
		if err := writeDoc(cfg.Out, doc); err != nil {
			return err
		}
		log.Info("results written", "path", cfg.Out)
	}
	if len(failures) > 0 {
		return fmt.Errorf("bench: %d measurement(s) failed (listed in the results)", len(failures))
	}
	return nil
}

// linkResults are the replicated target's measurements beyond fio.
type linkResults struct {
	RTT []rttSample
	// ResyncSize is what each bitmap resync dirtied.
	ResyncSize int64
	Bitmap     []resyncSample
	Full       []resyncSample
	// BitmapStream and FullStream are the loopback TCP stream, in
	// bytes/s, measured right after each resync for as long as it took.
	BitmapStream []float64
	FullStream   []float64
	// FullStreamPerGiB: the machine's busy CPU-seconds per GiB of the
	// stream after each full sync.
	FullStreamPerGiB []float64
	// AppShare: what applications kept during a full sync (appshare.go).
	AppShare []appShareSample
}

type verifyOutcome struct {
	Report verifyReport
	Err    error
}

// measureLink runs one repetition of the link probes and resyncs: the
// round trip, then each resync followed by a TCP stream of the same
// duration. A failed measurement is returned as a message; an error
// means the run cannot go on (interrupted, or the pair is broken).
func measureLink(ctx context.Context, cfg config, repl *target, peer *netPeer, rep int, out *linkResults, syncAll func() error, log *slog.Logger) ([]string, error) {
	var fails []string
	failed := func(what string, err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("bench: interrupted: %w", ctx.Err())
		}
		msg := fmt.Sprintf("%s, repetition %d: %v", what, rep+1, err)
		log.Error("measurement failed", "err", msg)
		fails = append(fails, msg)
		return nil
	}
	rtt, err := pingPong(ctx, peer.addr, pingMax, pingDuration)
	if err != nil {
		if err := failed("loopback round trip", err); err != nil {
			return fails, err
		}
	} else {
		out.RTT = append(out.RTT, rtt)
		log.Info("loopback round trip", "rep", rep+1, "n", rtt.N, "p50us", fmt.Sprintf("%.1f", rtt.P50), "p99us", fmt.Sprintf("%.1f", rtt.P99))
	}
	if !cfg.Resync {
		return fails, nil
	}
	out.ResyncSize = cfg.ResyncSize
	for _, full := range []bool{false, true} {
		if err := syncAll(); err != nil {
			return fails, err
		}
		var s resyncSample
		if full {
			cpu := startCPU()
			s, err = repl.pair.fullResync(ctx)
			if c := cpu.seconds(); err == nil && c > 0 && s.Bytes > 0 {
				s.PerGiB = c / (float64(s.Bytes) / (1 << 30))
			}
		} else {
			s, err = repl.pair.bitmapResync(ctx, repl.uri(), cfg.ResyncSize)
		}
		if err != nil {
			if err := failed(kind(full)+" resync", err); err != nil {
				return fails, err
			}
			// The pair may be half-way; the next measurements need it whole.
			if repl.pair.Secondary.proc == nil {
				if err := repl.pair.startDaemon(ctx, repl.pair.Secondary, true); err != nil {
					return fails, err
				}
			}
			if _, werr := repl.pair.Primary.admin.waitFor(ctx, replResource, "the pair back in sync", resyncLimit, 100*time.Millisecond, resStatus.inSync); werr != nil {
				return fails, werr
			}
			continue
		}
		log.Info("resync", "rep", rep+1, "kind", kind(full), "bytes", s.Bytes, "MiB/s", fmt.Sprintf("%.0f", s.Rate/(1<<20)),
			"volume MiB/s", fmt.Sprintf("%.0f", s.VolumeRate/(1<<20)), "to in sync", s.ToInSync.Round(time.Millisecond).String())
		dur := max(time.Duration(s.Seconds*float64(time.Second)), time.Second)
		cpu := startCPU()
		bps, err := stream(ctx, peer.addr, dur)
		streamCPU := cpu.seconds()
		if err != nil {
			if err := failed("loopback TCP stream", err); err != nil {
				return fails, err
			}
			continue
		}
		log.Info("loopback TCP stream", "rep", rep+1, "after", kind(full), "duration", dur.Round(time.Millisecond).String(), "MiB/s", fmt.Sprintf("%.0f", bps/(1<<20)))
		if full {
			out.Full, out.FullStream = append(out.Full, s), append(out.FullStream, bps)
			if streamCPU > 0 && bps > 0 {
				out.FullStreamPerGiB = append(out.FullStreamPerGiB, streamCPU/(bps*dur.Seconds()/(1<<30)))
			}
		} else {
			out.Bitmap, out.BitmapStream = append(out.Bitmap, s), append(out.BitmapStream, bps)
		}
	}
	if err := syncAll(); err != nil {
		return fails, err
	}
	a, err := measureAppShare(ctx, repl)
	if err != nil {
		if err := failed("applications during a full sync", err); err != nil {
			return fails, err
		}
		if _, werr := repl.pair.Primary.admin.waitFor(ctx, replResource, "the pair back in sync", resyncLimit, 100*time.Millisecond, resStatus.inSync); werr != nil {
			return fails, werr
		}
		return fails, nil
	}
	log.Info("applications during a full sync", "rep", rep+1, "iops before", fmt.Sprintf("%.0f", a.Before), "during", fmt.Sprintf("%.0f", a.During),
		"after", fmt.Sprintf("%.0f", a.After), "kept", fmt.Sprintf("%.2f", a.Kept()), "sync s", fmt.Sprintf("%.2f", a.SyncSeconds))
	out.AppShare = append(out.AppShare, a)
	return fails, nil
}

// runOn runs one workload on t. On the replicated target it also makes
// sure that every write of the run was replicated: a run in degraded mode
// would measure a single node and pass it off as a pair.
func runOn(ctx context.Context, r row, t *target, cfg config) (sample, error) {
	if t.pair == nil {
		return runFio(ctx, r, t, cfg)
	}
	before, err := t.pair.Primary.admin.waitFor(ctx, replResource, "the pair in sync before the run", time.Minute, 50*time.Millisecond, func(s resStatus) bool {
		return s.inSync() && s.Role == "Primary"
	})
	if err != nil {
		return sample{}, err
	}
	s, err := runFio(ctx, r, t, cfg)
	if err != nil {
		return s, err
	}
	after, err := t.pair.Primary.admin.status(ctx, replResource)
	if err != nil {
		return sample{}, err
	}
	if err := replicatedThroughout(before, after); err != nil {
		return sample{}, err
	}
	return s, nil
}

// replicatedThroughout compares the primary's status before and after a
// run: still in sync with nothing out of sync, and no resync finished in
// between. A write acknowledged without the peer sets bits in the bitmap,
// and a reconnect that resynced them changes last_resync, so either way a
// run that was not replicated all along is caught.
func replicatedThroughout(before, after resStatus) error {
	if !after.inSync() || after.Role != "Primary" {
		return fmt.Errorf("bench: replication was interrupted during the run (after it: %s)", after)
	}
	changed := (before.LastResync == nil) != (after.LastResync == nil) ||
		before.LastResync != nil && *before.LastResync != *after.LastResync
	if changed {
		return fmt.Errorf("bench: a resync ran during the run (%d bytes): the pair lost its link and some writes were not replicated at once", after.LastResync.TotalBytes)
	}
	return nil
}

// runFio runs one workload against one target, bounded in time. fio forks
// a process per job, so it runs in its own process group and a timeout
// kills the whole group by the saved PID.
func runFio(ctx context.Context, r row, t *target, cfg config) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Runtime+cfg.Ramp+60*time.Second)
	defer cancel()
	argv := fioArgs(r, t.Engine, cfg.Runtime, cfg.Ramp)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	procs := startProcs(t.pids())
	cpu := startCPU()
	out, err := cmd.Output()
	wall := time.Since(cpu.start).Seconds()
	cores := cpu.cores()
	servers := procs.seconds()
	if err != nil {
		return sample{}, fmt.Errorf("fio: %w: %s %s", err, strings.TrimSpace(stderr.String()), tailBytes(out))
	}
	s, err := parseFio(out, r.read())
	s.Cores = cores
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && wall > 0 && servers != nil {
		// fio's own usage includes its job processes, which it waited for.
		s.FioCores = (time.Duration(ru.Utime.Nano()) + time.Duration(ru.Stime.Nano())).Seconds() / wall
		for _, c := range servers {
			s.ServerCores = append(s.ServerCores, c/wall)
		}
	}
	return s, err
}

func tailBytes(b []byte) string {
	const max = 500
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return strings.TrimSpace(string(b))
}

func moduleRoot(ctx context.Context) (string, error) {
	gomod := command(ctx, "go", "env", "GOMOD")
	if gomod == "" || gomod == os.DevNull || strings.HasPrefix(gomod, "unknown") {
		return "", errors.New("bench: run from inside the tandem module (go env GOMOD is empty)")
	}
	return filepath.Dir(gomod), nil
}

// build compiles the Go servers into work so that the PIDs we manage are the
// servers' own (go run would put the go tool in between).
func build(ctx context.Context, cfg config, root, work string, log *slog.Logger) (binaries, error) {
	bins := binaries{Tandem: cfg.Tandem, GoNBD: filepath.Join(work, "gonbd"), NetPeer: filepath.Join(work, "netpeer")}
	pkgs := map[string]string{}
	if has(cfg.Targets, tGoNBD) {
		pkgs[bins.GoNBD] = "./tools/bench/gonbd"
	}
	if has(cfg.Targets, tRepl) {
		pkgs[bins.NetPeer] = "./tools/bench/netpeer"
	}
	if (has(cfg.Targets, tTandem) || has(cfg.Targets, tRepl)) && cfg.Tandem == "" {
		bins.Tandem = filepath.Join(work, "tandem")
		pkgs[bins.Tandem] = "./cmd/tandem"
	}
	for out, pkg := range pkgs {
		log.Info("building", "package", pkg)
		ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		cmd.Dir = root
		b, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			return bins, fmt.Errorf("bench: go build %s: %w: %s", pkg, err, strings.TrimSpace(string(b)))
		}
	}
	return bins, nil
}

// checkDir refuses a bench directory on tmpfs (the file would live in
// memory twice and writeback would cost nothing) or without room for it.
func checkDir(dir string, size int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("bench: -dir %s: %w", dir, err)
	}
	const tmpfsMagic = 0x01021994
	if st.Type == tmpfsMagic {
		return fmt.Errorf("bench: -dir %s is tmpfs; use a directory on a disk (default /var/tmp)", dir)
	}
	if free := int64(st.Bavail) * st.Bsize; free < size+size/10 {
		return fmt.Errorf("bench: -dir %s has %d bytes free, need about %d", dir, free, size+size/10)
	}
	return nil
}

// fill creates each of paths with the same size bytes of pseudo-random
// data, fsynced, and returns them open so the caller can sync them between
// runs. The replicas of the replicated target get the same bytes as the
// served file, so the pair is really in sync when create-md --new-blank
// says so.
func fill(ctx context.Context, paths []string, size int64) (_ []*os.File, err error) {
	var files []*os.File
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
		}
	}()
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("bench: creating %s: %w", p, err)
		}
		files = append(files, f)
	}
	src := rand.NewChaCha8([32]byte{'t', 'a', 'n', 'd', 'e', 'm'})
	buf := make([]byte, 1<<20)
	for written := int64(0); written < size; written += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("bench: filling the served files: %w", err)
		}
		if _, err := io.ReadFull(src, buf); err != nil {
			return nil, fmt.Errorf("bench: generating data: %w", err)
		}
		for _, f := range files {
			if _, err := f.Write(buf); err != nil {
				return nil, fmt.Errorf("bench: filling %s: %w", f.Name(), err)
			}
		}
	}
	for _, f := range files {
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("bench: syncing %s: %w", f.Name(), err)
		}
	}
	return files, nil
}
