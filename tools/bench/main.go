// Command bench compares tandem's NBD server with nbdkit, qemu-nbd and
// go-nbd serving the same file, plus the file itself through io_uring as the
// upper limit, using fio, and rewrites the results part of
// docs/benchmarks.md. Run it from the module root: go run ./tools/bench.
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
	Tandem  string // prebuilt tandem binary; built from ./cmd/tandem if empty
}

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	reps := fs.Int("reps", 3, "repetitions of every workload and target")
	runtime := fs.Duration("runtime", 8*time.Second, "measured time per fio run (whole seconds)")
	ramp := fs.Duration("ramp", 2*time.Second, "fio ramp_time before measuring (whole seconds)")
	size := fs.String("size", "1G", "size of the served file")
	out := fs.String("out", "docs/benchmarks.md", "document whose results section is rewritten (empty: print to stdout)")
	dir := fs.String("dir", "/var/tmp", "directory for the served file (on the work disk, not tmpfs)")
	targets := fs.String("targets", strings.Join(allTargets, ","), "comma-separated targets: "+strings.Join(allTargets, ","))
	rows := fs.String("rows", strings.Join(defaultRows, ","), "comma-separated workloads, from: "+rowNames())
	tandem := fs.String("tandem", "", "tandem binary to use instead of building ./cmd/tandem")
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
	cfg := config{Reps: *reps, Runtime: *runtime, Ramp: *ramp, Out: *out, Dir: *dir, Tandem: *tandem}
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
	for _, name := range splitList(*targets) {
		if !has(allTargets, name) {
			return config{}, fmt.Errorf("bench: unknown target %q (want %s)", name, strings.Join(allTargets, ","))
		}
		cfg.Targets = append(cfg.Targets, name)
	}
	for _, name := range splitList(*rows) {
		r, ok := findRow(name)
		if !ok {
			return config{}, fmt.Errorf("bench: unknown workload %q (want %s)", name, rowNames())
		}
		cfg.Rows = append(cfg.Rows, r)
	}
	if len(cfg.Targets) == 0 || len(cfg.Rows) == 0 {
		return config{}, errors.New("bench: need at least one target and one workload")
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
	return strings.Join(names, ",")
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
	err = run(ctx, cfg, log)
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

	if err := checkDir(cfg.Dir, cfg.Size); err != nil {
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
	file := filepath.Join(work, "bench.img")
	log.Info("filling the served file", "path", file, "size", cfg.Size)
	f, err := fill(ctx, file, cfg.Size)
	if err != nil {
		return err
	}
	defer f.Close()

	var targets []*target
	defer func() {
		for i := len(targets) - 1; i >= 0; i-- {
			if serr := targets[i].stop(); serr != nil {
				log.Warn("stopping server", "target", targets[i].Name, "err", serr)
				if err == nil {
					err = serr
				}
			}
		}
	}()
	for _, name := range cfg.Targets {
		t, err := newTarget(name, file, cfg.Size, bins, work)
		if err != nil {
			return err
		}
		targets = append(targets, t)
		if err := t.start(ctx, cfg.Size, filepath.Join(work, name+".log")); err != nil {
			return err
		}
		if t.Server != nil {
			log.Info("server ready", "target", name, "pid", t.proc.pid, "uri", t.uri())
		}
	}

	total := cfg.Reps * len(cfg.Rows) * len(targets)
	log.Info("running", "runs", total, "estimate", (time.Duration(total) * (cfg.Runtime + cfg.Ramp + time.Second)).String())
	results := map[string]map[string][]sample{}
	var failures []string
	n := 0
	for rep := range cfg.Reps {
		for _, r := range cfg.Rows {
			if results[r.Name] == nil {
				results[r.Name] = map[string][]sample{}
			}
			for i := range targets {
				t := targets[(i+rep)%len(targets)]
				n++
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("bench: interrupted: %w", err)
				}
				// Start every run without the previous run's dirty pages.
				if err := f.Sync(); err != nil {
					return fmt.Errorf("bench: syncing the served file: %w", err)
				}
				s, err := runFio(ctx, r, t, cfg)
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
		return fmt.Errorf("bench: %d of %d runs failed (listed in the results)", len(failures), total)
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
	out, err := cmd.Output()
	if err != nil {
		return sample{}, fmt.Errorf("fio: %w: %s %s", err, strings.TrimSpace(stderr.String()), tailBytes(out))
	}
	return parseFio(out, r.read())
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
	bins := binaries{Tandem: cfg.Tandem, GoNBD: filepath.Join(work, "gonbd")}
	pkgs := map[string]string{}
	if has(cfg.Targets, tGoNBD) {
		pkgs[bins.GoNBD] = "./tools/bench/gonbd"
	}
	if has(cfg.Targets, tTandem) && cfg.Tandem == "" {
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

// fill creates path with size bytes of pseudo-random data, fsynced, and
// returns it open so the caller can sync it between runs.
func fill(ctx context.Context, path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("bench: creating the served file: %w", err)
	}
	src := rand.NewChaCha8([32]byte{'t', 'a', 'n', 'd', 'e', 'm'})
	buf := make([]byte, 1<<20)
	for written := int64(0); written < size; written += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			f.Close()
			return nil, fmt.Errorf("bench: filling the served file: %w", err)
		}
		if _, err := io.ReadFull(src, buf); err != nil {
			f.Close()
			return nil, fmt.Errorf("bench: generating data: %w", err)
		}
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return nil, fmt.Errorf("bench: filling the served file: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("bench: syncing the served file: %w", err)
	}
	return f, nil
}
