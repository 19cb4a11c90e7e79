package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cluster/manager"
	tconfig "github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
	"github.com/tandem-ha/tandem/tools/lab"
)

// rowFailover is the -rows name of the failover measurement: crashes of
// the primary in the lab (namespaces, IPMI BMCs, VIP), with the cluster
// layer's default timings.
const rowFailover = "failover"

// Bounds of one crash: the client's write loop, and the crashed node's
// return to an UpToDate, connected Secondary.
const (
	failoverWriteLimit = time.Minute
	failoverResyncWait = 2 * time.Minute
	failoverTryEvery   = 50 * time.Millisecond
	failoverInFlight   = 8
)

// failoverSample is one crash: from the SIGKILL to the first completed
// write at the VIP, and the survivor's timeline split into phases.
type failoverSample struct {
	From                               string
	Total                              time.Duration
	Detect, Fence, Promote, VIP, Other time.Duration
}

// runFailover brings a lab up with the cluster layer, crashes the primary
// n times (alternating nodes: each crash hits whoever is primary, and the
// crashed node comes back and resyncs before the next), and writes the
// section into cfg.Out. The lab is torn down whatever happens.
func runFailover(ctx context.Context, cfg config, bin string, work string, log *slog.Logger) (err error) {
	if err := lab.RequireRoot(); err != nil {
		return fmt.Errorf("bench: the %s row needs root (network namespaces): %w", rowFailover, err)
	}
	for _, tool := range []string{"ip", "nft", "ipmi_sim", "ipmitool", "qemu-io", "timeout"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("bench: the %s row needs %s: %w", rowFailover, tool, err)
		}
	}
	l, err := lab.Open(filepath.Join(work, "lab"))
	if err != nil {
		return fmt.Errorf("bench: failover lab: %w", err)
	}
	defer func() {
		// A fresh context: the lab goes down even when ctx was cancelled.
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if derr := l.Down(dctx); derr != nil && !errors.Is(derr, lab.ErrNoLab) {
			log.Warn("failover lab down", "err", derr)
			err = errors.Join(err, fmt.Errorf("bench: failover lab down: %w", derr))
		}
	}()
	log.Info("failover: lab up with the cluster layer")
	if err := l.Up(ctx, bin, lab.Params{Size: 64 << 20, Resources: 1, ClusterLayer: true}, os.Stderr); err != nil {
		return fmt.Errorf("bench: failover lab up: %w", err)
	}
	lcfg, err := tconfig.Load(l.ConfigPath())
	if err != nil {
		return fmt.Errorf("bench: failover lab config: %w", err)
	}
	var samples []failoverSample
	for i := range cfg.FailoverCrashes {
		s, err := failoverOnce(ctx, l, lcfg, i)
		if err != nil {
			return fmt.Errorf("bench: failover %d: %w", i+1, err)
		}
		log.Info("failover", "crash", i+1, "of", s.From, "total", s.Total, "detect", s.Detect, "fence", s.Fence, "promote", s.Promote, "vip", s.VIP)
		samples = append(samples, s)
	}
	section := renderFailover(samples)
	if cfg.Out == "" {
		fmt.Print(section)
		return nil
	}
	return writeFailoverSection(cfg.Out, section)
}

func failoverOnce(ctx context.Context, l *lab.Lab, lcfg *tconfig.Config, i int) (failoverSample, error) {
	var s failoverSample
	st, err := l.Status(ctx)
	if err != nil {
		return s, err
	}
	p := st.Resources[0].Primary
	if p != lab.Alpha && p != lab.Bravo || st.Resources[0].VIPHolder != p {
		return s, fmt.Errorf("before the crash: primary %q, VIP on %q", p, st.Resources[0].VIPHolder)
	}
	survivor := lab.Alpha
	if p == lab.Alpha {
		survivor = lab.Bravo
	}
	s.From = p
	pattern := fmt.Sprintf("0x%02x", 0x10+i)
	write := []string{"timeout", "3", "qemu-io", "-f", "raw", "-c", "write -P " + pattern + " 0 64k", lab.URI(0)}
	if out, code := clientRun(ctx, l, write); code != 0 || failedIO(out) {
		return s, fmt.Errorf("write before the crash: exit %d: %s", code, out)
	}
	killed := time.Now()
	if err := l.Crash(p); err != nil {
		return s, err
	}
	total, err := firstWrite(ctx, l, write, killed)
	if err != nil {
		return s, fmt.Errorf("crash of %s: %w", p, err)
	}
	s.Total = total
	n, err := lcfg.Node(survivor)
	if err != nil {
		return s, err
	}
	ns, err := daemon.NewClient(n.AdminSocket, survivor).Status(ctx, "")
	if err != nil || ns.ClusterLayer == nil {
		return s, fmt.Errorf("%s status: %v", survivor, err)
	}
	f := ns.ClusterLayer.LastFailover["r0"]
	if f == nil || f.From != p {
		return s, fmt.Errorf("no failover from %s in %s's timeline: %+v", p, survivor, f)
	}
	phases(&s, f, killed)
	if err := l.Restart(ctx, p); err != nil {
		return s, err
	}
	// UpToDate in the authority record too, not only locally: until the
	// primary's mark-uptodate is committed the record still calls the
	// restarted node Outdated, and a crash of the primary then leaves
	// nobody to take over (rightly: the record cannot tell that the
	// restarted node holds every acknowledged write).
	err = l.WaitFor(ctx, p+" back as an UpToDate, connected Secondary, UpToDate in the record", failoverResyncWait, func(st *lab.Status) bool {
		nd := st.Node(p)
		if st.Resources[0].Primary != survivor || st.Resources[0].VIPHolder != survivor || nd == nil ||
			nd.Role != "Secondary" || nd.Disk != "UpToDate" || len(nd.Resources) != 1 || nd.Resources[0].Connection != "Connected" {
			return false
		}
		ns, err := daemon.NewClient(n.AdminSocket, survivor).Status(ctx, "")
		if err != nil || ns.ClusterLayer == nil {
			return false
		}
		res := ns.ClusterLayer.Record.Resource("r0")
		return res != nil && res.State(p) == cluster.StateUpToDate
	})
	return s, err
}

// phases splits the survivor's timeline: detection from the kill to the
// detector's verdict, then the fence, the promotion (commit and the
// volume's promote) and the VIP claim as the manager timed them; Other is
// what is left of the total (the serve step, the client's reconnect).
func phases(s *failoverSample, f *manager.Failover, killed time.Time) {
	sec := func(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }
	for _, st := range f.Steps {
		switch st.Name {
		case "detect":
			s.Detect = st.At.Sub(killed)
		case "fence":
			s.Fence = sec(st.Seconds)
		case "commit", "promote":
			s.Promote += sec(st.Seconds)
		case "vip":
			s.VIP = sec(st.Seconds)
		}
	}
	s.Other = max(0, s.Total-s.Detect-s.Fence-s.Promote-s.VIP)
}

// firstWrite is a reconnecting client: a fresh connection every
// failoverTryEvery, each try bounded by timeout(1) in argv, several in
// flight at once (at most failoverInFlight), so that a try stuck on the
// dead primary's connection does not hide the moment the VIP serves again.
// It returns the time from killed to the first try that completed.
func firstWrite(ctx context.Context, l *lab.Lab, argv []string, killed time.Time) (time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		at   time.Time
		out  string
		code int
	}
	results := make(chan result, failoverInFlight)
	inFlight, last := 0, result{code: -1}
	tick := time.NewTicker(failoverTryEvery)
	defer tick.Stop()
	launch := func() {
		inFlight++
		go func() {
			out, code := clientRun(ctx, l, argv)
			results <- result{time.Now(), out, code}
		}()
	}
	launch()
	var err error
	var took time.Duration
	for took == 0 && err == nil {
		select {
		case r := <-results:
			inFlight--
			if r.code == 0 && !failedIO(r.out) {
				took = r.at.Sub(killed)
			}
			last = r
		case <-tick.C:
			switch {
			case time.Since(killed) > failoverWriteLimit:
				err = fmt.Errorf("no write completed at the VIP within %v; last try exit %d: %s", failoverWriteLimit, last.code, last.out)
			case inFlight < failoverInFlight:
				launch()
			}
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	cancel() // ends the tries still running (exec.CommandContext kills them)
	for ; inFlight > 0; inFlight-- {
		<-results
	}
	return took, err
}

func clientRun(ctx context.Context, l *lab.Lab, argv []string) (string, int) {
	var out bytes.Buffer
	code, err := l.Exec(ctx, lab.Client, argv, nil, &out, &out)
	if err != nil {
		return out.String() + err.Error(), -1
	}
	return out.String(), code
}

func failedIO(out string) bool {
	return strings.Contains(out, "failed") || strings.Contains(out, "error")
}

func medianWorst(ds []time.Duration) (time.Duration, time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return m, s[len(s)-1]
}

const (
	failoverBegin = "<!-- failover results: written by `go run ./tools/bench -rows failover` -->"
	failoverEnd   = "<!-- end of failover results -->"
)

func renderFailover(samples []failoverSample) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n## Failover\n\n", failoverBegin)
	fmt.Fprintf(&b, "From SIGKILL of the primary's daemon (`lab crash`) to the first completed 64 KiB write at the VIP from the client namespace (qemu-io, a new connection every 50 ms, up to 8 tries in flight, each bounded to 3 s), with the default timings, %d crashes alternating between alpha and bravo (the crashed node restarted, resynced and marked UpToDate in the authority record before the next). Measured %s, load %s. Phases from the survivor's failover timeline: detection (kill to the detector's verdict), fencing (IPMI power-off through ipmi_sim), promotion (commit of the promotion plus the volume's promote), VIP claim; other is the rest (serve, the client's reconnect).\n\n",
		len(samples), time.Now().UTC().Format("2006-01-02"), cmpOr(loadAvg(), "unknown"))
	b.WriteString("| | median | worst |\n|---|---|---|\n")
	row := func(name string, get func(failoverSample) time.Duration) {
		var ds []time.Duration
		for _, s := range samples {
			ds = append(ds, get(s))
		}
		m, w := medianWorst(ds)
		fmt.Fprintf(&b, "| %s | %.2f s | %.2f s |\n", name, m.Seconds(), w.Seconds())
	}
	row("**crash to first write at the VIP**", func(s failoverSample) time.Duration { return s.Total })
	row("detection", func(s failoverSample) time.Duration { return s.Detect })
	row("fencing", func(s failoverSample) time.Duration { return s.Fence })
	row("promotion (commit + promote)", func(s failoverSample) time.Duration { return s.Promote })
	row("VIP claim", func(s failoverSample) time.Duration { return s.VIP })
	row("other (serve, client reconnect)", func(s failoverSample) time.Duration { return s.Other })
	b.WriteString("\nEach crash: ")
	for i, s := range samples {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %.2f s", s.From, s.Total.Seconds())
	}
	fmt.Fprintf(&b, ".\n\n%s\n", failoverEnd)
	return b.String()
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// writeFailoverSection puts the section before the fio results (which
// mergeDoc rewrites wholesale), replacing an earlier one.
func writeFailoverSection(path, section string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("bench: reading %s: %w", path, err)
	}
	doc := string(old)
	if doc == "" {
		doc = defaultHeader
	}
	if i, j := strings.Index(doc, failoverBegin), strings.Index(doc, failoverEnd); i >= 0 && j > i {
		doc = doc[:i] + strings.TrimSuffix(section, "\n") + doc[j+len(failoverEnd):]
	} else if k := strings.Index(doc, marker); k >= 0 {
		doc = doc[:k] + section + "\n" + doc[k:]
	} else {
		doc = strings.TrimRight(doc, "\n") + "\n\n" + section
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
		return fmt.Errorf("bench: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("bench: writing %s: %w", path, err)
	}
	return nil
}

// failoverMain builds tandem (unless -tandem names one) into a work
// directory of its own and runs the failover row.
func failoverMain(ctx context.Context, cfg config, log *slog.Logger) (err error) {
	work, err := os.MkdirTemp("", "tandem-bench-failover-")
	if err != nil {
		return fmt.Errorf("bench: failover work directory: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(work); rerr != nil && err == nil {
			err = fmt.Errorf("bench: removing %s: %w", work, rerr)
		}
	}()
	bin := cfg.Tandem
	if bin == "" {
		root, err := moduleRoot(ctx)
		if err != nil {
			return err
		}
		bin = filepath.Join(work, "tandem")
		log.Info("building", "package", "./cmd/tandem")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/tandem")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("bench: go build ./cmd/tandem: %w: %s", err, strings.TrimSpace(string(b)))
		}
	}
	return runFailover(ctx, cfg, bin, work, log)
}
