package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// What applications keep while a resync runs (the issue: at least half
// of their throughput, resync.app-share, 0.5 by default). One fio run of
// 4k random writes at QD32 on the primary logs its IOPS every 100 ms;
// appSyncAfter into it the secondary is made the target of a full sync,
// timed from the primary's status. The share kept is the IOPS while the
// sync ran over the IOPS of the same run before it and after it: one run,
// one process, so the machine's load moves both sides alike.

const (
	appSyncAfter = 3 * time.Second
	appRuntime   = 30 * time.Second
	// appMargin is left out at each edge of a window: the times of fio's
	// log and of the status polls line up only to some tens of ms.
	appMargin = 250 * time.Millisecond
)

// appShareSample is one such run.
type appShareSample struct {
	Before, During, After float64 // IOPS
	SyncSeconds           float64
}

// Kept is During over the mean of Before and After.
func (s appShareSample) Kept() float64 {
	base := (s.Before + s.After) / 2
	if base <= 0 {
		return 0
	}
	return s.During / base
}

var appRow = row{Name: "app-during-sync", Title: "4k randwrite QD32 during a full sync", RW: "randwrite", BS: "4k", QD: 32, Jobs: 1}

// appShareArgs is the fio command line (no ramp: the log's times count
// from the job's start).
func appShareArgs(engine []string, logPrefix string) []string {
	return append(fioArgs(appRow, engine, appRuntime, 0), "--write_iops_log="+logPrefix, "--log_avg_msec=100")
}

func measureAppShare(ctx context.Context, repl *target) (appShareSample, error) {
	dir, err := os.MkdirTemp("", "tandem-bench-iops-")
	if err != nil {
		return appShareSample{}, err
	}
	defer os.RemoveAll(dir)
	prefix := filepath.Join(dir, "app")
	st, err := repl.pair.Primary.admin.status(ctx, replResource)
	if err != nil {
		return appShareSample{}, err
	}
	if !st.inSync() {
		return appShareSample{}, fmt.Errorf("bench: the pair is not in sync before the run (%s)", st)
	}
	fctx, cancel := context.WithTimeout(ctx, appRuntime+60*time.Second)
	defer cancel()
	argv := appShareArgs(repl.Engine, prefix)
	cmd := exec.CommandContext(fctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return appShareSample{}, err
	}
	wait := func() error {
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("bench: fio: %w: %s", err, tailBytes([]byte(out.String())))
		}
		return nil
	}
	select {
	case <-ctx.Done():
		_ = wait()
		return appShareSample{}, ctx.Err()
	case <-time.After(appSyncAfter):
	}
	syncStart := time.Since(start)
	if _, err := repl.pair.cli(ctx, repl.pair.fullResyncArgs()); err != nil {
		_ = wait()
		return appShareSample{}, err
	}
	_, err = repl.pair.Primary.admin.waitFor(ctx, replResource, "the full sync under load to end", appRuntime, 20*time.Millisecond, resStatus.inSync)
	syncEnd := time.Since(start)
	if werr := wait(); werr != nil {
		return appShareSample{}, werr
	}
	if err != nil {
		return appShareSample{}, err
	}
	if syncEnd > appRuntime-time.Second {
		return appShareSample{}, fmt.Errorf("bench: the full sync took %s under load, beyond the fio run's end: nothing after it to compare", syncEnd-syncStart)
	}
	if syncEnd-syncStart < 2*appMargin+200*time.Millisecond {
		return appShareSample{}, fmt.Errorf("bench: the full sync took only %s under load: too short to measure", syncEnd-syncStart)
	}
	log, err := readIOPSLog(prefix + "_iops.1.log")
	if err != nil {
		return appShareSample{}, err
	}
	s := appShareSample{
		Before:      log.mean(time.Second, syncStart-appMargin),
		During:      log.mean(syncStart+appMargin, syncEnd-appMargin),
		After:       log.mean(syncEnd+appMargin, appRuntime-appMargin),
		SyncSeconds: (syncEnd - syncStart).Seconds(),
	}
	if s.Before == 0 || s.During == 0 && s.After == 0 {
		return s, fmt.Errorf("bench: fio's IOPS log has no samples in the windows (%d lines)", len(log))
	}
	return s, nil
}

// iopsLog is fio's IOPS log: one averaged value per interval.
type iopsLog []struct {
	at   time.Duration
	iops float64
}

// readIOPSLog reads "msec, value, direction, block size, offset[, ...]".
func readIOPSLog(path string) (iopsLog, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bench: fio's IOPS log: %w", err)
	}
	defer f.Close()
	var l iopsLog
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ",")
		if len(fields) < 2 {
			continue
		}
		ms, err1 := strconv.ParseInt(strings.TrimSpace(fields[0]), 10, 64)
		v, err2 := strconv.ParseFloat(strings.TrimSpace(fields[1]), 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("bench: fio's IOPS log %s: bad line %q", path, sc.Text())
		}
		l = append(l, struct {
			at   time.Duration
			iops float64
		}{time.Duration(ms) * time.Millisecond, v})
	}
	return l, sc.Err()
}

// mean is the average IOPS of the intervals that end within [from, to].
func (l iopsLog) mean(from, to time.Duration) float64 {
	var sum float64
	n := 0
	for _, e := range l {
		if e.at >= from && e.at <= to {
			sum += e.iops
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}
