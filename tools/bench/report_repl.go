package main

import (
	"fmt"
	"strings"
)

// The replicated target's part of the report: its goals as ratios of the
// same run, the link and resync measurements, and how they were made.

// replReading is the "How to read this" paragraph of the replicated rows.
const replReading = "The replicated column is a pair of `tandem daemon` processes on this machine, protocol C " +
	"(a write is acknowledged once the peer wrote it too), fio on the primary's NBD export. " +
	"Its peer is on loopback, so the \"network\" costs a round trip through the kernel and no wire time, " +
	"while both daemons, fio and the kernel share the same %d vCPU(s): " +
	"every replicated write costs CPU twice (primary and secondary) on the cores the unreplicated target has to itself. " +
	"The goals compare the replicated target with the unreplicated one measured interleaved in the same run; " +
	"the QD1 budget adds the loopback round trip measured in the same run (64-byte ping-pong between this process and a separate " +
	"process, the median of its p50s) and 50 µs. The resync rate is timed from the outside, from the primary's status polled every " +
	"10 ms (bytes copied after the first sighting, up to the first poll that saw both replicas in sync), " +
	"and compared with one TCP stream over loopback between two processes, run right after each resync for as long as it took: " +
	"on loopback that stream is bounded by CPU (copies through the kernel), not by a link, so it is a hard upper bound for a resync " +
	"that also reads, frames and writes the data on the other side."

// goal is one line of the replication goals table.
type goal struct {
	What, Measured, Target, Met string
}

func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// replGoals computes the goals from the medians of the run.
func replGoals(r report) []goal {
	var gs []goal
	ratioGoal := func(rowName, what string, want float64) {
		rw, ok := findRow(rowName)
		if !ok || !rowSelected(r.Rows, rowName) {
			return
		}
		t := summarize(r.Results[rowName][tTandem], rw.Bandwidth)
		p := summarize(r.Results[rowName][tRepl], rw.Bandwidth)
		g := goal{What: what, Target: fmt.Sprintf("≥ %.2f", want), Met: notRun}
		if t.N == 0 || p.N == 0 || !has(targetNames(r.Targets), tTandem) {
			g.Measured = "not measured"
			gs = append(gs, g)
			return
		}
		x, y, unit := p.IOPS, t.IOPS, "IOPS"
		if rw.Bandwidth {
			x, y, unit = p.BW, t.BW, "MiB/s"
		}
		f := func(v float64) string {
			if rw.Bandwidth {
				return fmt.Sprintf("%.0f", v/(1<<20))
			}
			return iops(v)
		}
		if y > 0 {
			g.Measured = fmt.Sprintf("%.2f (%s / %s %s)", x/y, f(x), f(y), unit)
			g.Met = met(x/y >= want)
		}
		gs = append(gs, g)
	}
	ratioGoal("randwrite-4k-qd32", "4k randwrite QD32: replicated / unreplicated IOPS", 0.7)
	ratioGoal("write-1m-qd8", "1M seqwrite QD8: replicated / unreplicated MiB/s", 0.85)

	if rowSelected(r.Rows, "randwrite-4k-qd1") {
		t := summarize(r.Results["randwrite-4k-qd1"][tTandem], false)
		p := summarize(r.Results["randwrite-4k-qd1"][tRepl], false)
		g := goal{What: "4k randwrite QD1: replicated p50 latency", Measured: "not measured", Target: "unreplicated p50 + loopback round trip p50 + 50 µs", Met: notRun}
		if p.N > 0 {
			g.Measured = latency(p.P50) + " µs"
		}
		if t.N > 0 && len(r.Link.RTT) > 0 && has(targetNames(r.Targets), tTandem) {
			rtt := median(rttP50s(r.Link.RTT))
			budget := t.P50 + rtt + 50
			g.Target = fmt.Sprintf("≤ %s µs (%s + %s + 50)", latency(budget), latency(t.P50), latency(rtt))
			if p.N > 0 {
				g.Met = met(p.P50 <= budget)
			}
		}
		gs = append(gs, g)
	}

	if r.Resync {
		for _, k := range []struct {
			what    string
			samples []resyncSample
			link    []float64
		}{
			{"bitmap resync: rate / loopback TCP stream", r.Link.Bitmap, r.Link.BitmapStream},
			{"full sync: rate / loopback TCP stream", r.Link.Full, r.Link.FullStream},
		} {
			g := goal{What: k.what, Measured: "not measured", Target: "≥ 0.80", Met: notRun}
			if len(k.samples) > 0 && len(k.link) > 0 {
				rate, lk := median(resyncRates(k.samples)), median(k.link)
				if lk > 0 {
					g.Measured = fmt.Sprintf("%.2f (%s / %s MiB/s)", rate/lk, mibs(rate), mibs(lk))
					g.Met = met(rate/lk >= 0.8)
				}
			}
			gs = append(gs, g)
		}
		g := goal{What: "4k randwrite QD32 IOPS during a full sync / before and after it (resync.app-share 0.5)", Measured: "not measured", Target: "≥ 0.50", Met: notRun}
		if len(r.Link.AppShare) > 0 {
			kept := median(column(r.Link.AppShare, appShareSample.Kept))
			g.Measured = fmt.Sprintf("%.2f (%.0f / %.0f IOPS)", kept, median(column(r.Link.AppShare, func(s appShareSample) float64 { return s.During })),
				median(column(r.Link.AppShare, func(s appShareSample) float64 { return (s.Before + s.After) / 2 })))
			g.Met = met(kept >= 0.5)
		}
		gs = append(gs, g)
	}
	return gs
}

func rowSelected(rows []row, name string) bool {
	for _, r := range rows {
		if r.Name == name {
			return true
		}
	}
	return false
}

func targetNames(ts []*target) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Name
	}
	return out
}

// column picks one value out of each measurement.
func column[S any](xs []S, f func(S) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func rttP50s(s []rttSample) []float64 { return column(s, func(v rttSample) float64 { return v.P50 }) }
func rttP99s(s []rttSample) []float64 { return column(s, func(v rttSample) float64 { return v.P99 }) }
func resyncRates(s []resyncSample) []float64 {
	return column(s, func(v resyncSample) float64 { return v.Rate })
}

func mibs(bps float64) string { return fmt.Sprintf("%.0f", bps/(1<<20)) }

// spread renders the median with the range of several measurements.
func spread(xs []float64, f func(float64) string) string {
	if len(xs) == 0 {
		return "not measured"
	}
	lo, hi := xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	out := f(median(xs))
	if len(xs) > 1 {
		out += fmt.Sprintf(" (%s-%s)", f(lo), f(hi))
	}
	return out
}

func renderReplication(b *strings.Builder, r report) {
	w := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	w("\n### Replicated volume: goals (protocol C, peer on loopback; medians of this run)\n\n")
	w("| goal | measured | target | met |\n|---|---:|---:|---|\n")
	for _, g := range replGoals(r) {
		w("| %s | %s | %s | %s |\n", g.What, g.Measured, g.Target, g.Met)
	}

	if cs := cpuCosts(r); len(cs) > 0 {
		w("\n### CPU cost of the ratio goals (this machine's busy CPU during the fio runs, every process and the kernel; medians)\n\n")
		w("The ceiling is what the replicated target would reach at its measured CPU cost per unit with all %d vCPUs busy, "+
			"divided by the unreplicated result: a goal above it cannot be met on this machine without doing less work per write.\n\n", r.Machine.CPUs)
		w("| row | unreplicated: cores busy, CPU per unit | replicated: cores busy, CPU per unit | replicated work ÷ unreplicated | ratio ceiling | goal |\n|---|---:|---:|---:|---:|---:|\n")
		for _, c := range cs {
			w("| %s | %.2f, %s | %.2f, %s | %.2f | %.2f | %.2f |\n", c.Row, c.CoresT, c.unit(c.PerT), c.CoresP, c.unit(c.PerP), c.PerP/c.PerT, c.Ceiling, c.Goal)
		}
		renderSplit(w, cs, r.Machine.CPUs)
	}

	if c, ok := syncCost(r); ok {
		w("\n### CPU cost of the full sync against the loopback TCP stream (medians)\n\n")
		w("| full sync: CPU per GiB | stream: CPU per GiB | sync work ÷ stream | ratio ceiling (all %d vCPUs at the sync's cost ÷ the stream's rate) | goal |\n|---:|---:|---:|---:|---:|\n", r.Machine.CPUs)
		w("| %.2f s | %.2f s | %.2f | %.2f | 0.80 |\n", c.PerSync, c.PerStream, c.PerSync/c.PerStream, c.Ceiling)
	}

	w("\n### Link and resync (median of the repetitions, min-max in brackets)\n\n")
	w("| measurement | value |\n|---|---:|\n")
	us := func(v float64) string { return latency(v) }
	w("| loopback TCP round trip, %d-byte ping-pong, p50 (µs) | %s |\n", pingSize, spread(rttP50s(r.Link.RTT), us))
	w("| loopback TCP round trip, p99 (µs) | %s |\n", spread(rttP99s(r.Link.RTT), us))
	if r.Resync {
		secs := func(v float64) string { return fmt.Sprintf("%.2f", v) }
		for _, k := range []struct {
			name, trigger string
			samples       []resyncSample
			link          []float64
		}{
			{fmt.Sprintf("bitmap resync after writing %s with the secondary down", sizeString(r.Link.ResyncSize)), "from starting the secondary's daemon", r.Link.Bitmap, r.Link.BitmapStream},
			{fmt.Sprintf("full sync of %s (`tandem resync --full` on the secondary)", sizeString(r.Size)), "from the resync command", r.Link.Full, r.Link.FullStream},
		} {
			var bytes, vol, toSync []float64
			for _, s := range k.samples {
				bytes = append(bytes, float64(s.Bytes))
				if s.VolumeRate > 0 {
					vol = append(vol, s.VolumeRate)
				}
				toSync = append(toSync, s.ToInSync.Seconds())
			}
			w("| %s: bytes resynced (MiB) | %s |\n", k.name, spread(bytes, mibs))
			w("| ... rate timed from the primary's status (MiB/s) | %s |\n", spread(resyncRates(k.samples), mibs))
			w("| ... the primary's own figure, `last_resync.rate_bytes_per_second` (MiB/s) | %s |\n", spread(vol, mibs))
			w("| ... %s to both replicas in sync (s) | %s |\n", k.trigger, spread(toSync, secs))
			w("| ... loopback TCP stream right after it, as long as the resync took (MiB/s) | %s |\n", spread(k.link, mibs))
		}
		if a := r.Link.AppShare; len(a) > 0 {
			iops := func(v float64) string { return fmt.Sprintf("%.0f", v) }
			w("| applications during a full sync (`%s`, the sync started %s into it): IOPS before the sync | %s |\n", shellJoin(appShareArgs([]string{"--ioengine=nbd", "--uri=URI"}, "LOG")), appSyncAfter, spread(column(a, func(s appShareSample) float64 { return s.Before }), iops))
			w("| ... IOPS while the sync ran | %s |\n", spread(column(a, func(s appShareSample) float64 { return s.During }), iops))
			w("| ... IOPS after it | %s |\n", spread(column(a, func(s appShareSample) float64 { return s.After }), iops))
			w("| ... the full sync under that load (s) | %s |\n", spread(column(a, func(s appShareSample) float64 { return s.SyncSeconds }), secs))
		}
	}
	if v := r.Verify; v != nil {
		res := fmt.Sprintf("compared %s, %d range(s) differ", sizeString(v.Report.ComparedBytes), len(v.Report.Differing))
		if v.Err != nil {
			res = "failed: " + oneLine(v.Err.Error())
		}
		w("| `tandem verify` of both replicas after the run | %s |\n", res)
	}
}

func renderPairMethod(b *strings.Builder, r report, t *target) {
	w := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p := t.pair
	w("\nThe replicated target (`%s`, shown as \"%s\") is two `tandem daemon` processes on 127.0.0.1 replicating "+
		"resource `%s` with protocol C; it runs only %s. Its two replicas, `%s` and `%s`, are filled with the same bytes "+
		"as the served file (one pseudo-random stream written to all three files) and fsynced with it before every run; "+
		"the metadata is internal, behind the %s of data, so each device is %d bytes. Configuration `%s`:\n\n```yaml\n%s```\n\n",
		tRepl, displayName(tRepl), replResource, strings.Join(replRows, ", "), p.Primary.Device, p.Secondary.Device,
		sizeString(p.Size), p.Size+p.MetaSize, p.ConfigPath, p.ConfigText)
	w("The secret file holds 32 random bytes in base64, mode 0600 (like `head -c 32 /dev/urandom | base64 > %s; chmod 600 %s`). "+
		"Set-up, as an operator would do it for a brand-new pair of identical devices (docs/operations.md, `--new-blank`): "+
		"both replicas share one generation and connect in sync, no initial sync; the daemons run in the foreground as children "+
		"of the benchmark and are stopped by their saved PID (SIGTERM, a clean shutdown) at the end:\n\n```\n", p.SecretPath, p.SecretPath)
	for _, argv := range p.Setup {
		w("%s\n", shellJoin(argv))
	}
	w("```\n\nBefore fio starts, both daemons' status must say Connected, UpToDate on both sides, and alpha Primary with its export serving. "+
		"fio runs against alpha's export, `--uri=%s`, with the same command lines as the other servers. "+
		"A replicated run counts only if it was replicated throughout: the pair in sync before it, and after it still in sync, "+
		"nothing out of sync on alpha and no resync finished in between (a write acknowledged without the peer would have set "+
		"bits); otherwise it is listed as failed.\n", t.uri())
	if r.Resync {
		w("\nResync, once per repetition after the fio runs (the state is read from `GET /v1/status?resource=%s` on alpha's admin "+
			"socket every %v, the reply `tandem status %s --json` prints):\n\n```\n", replResource, pollInterval, replResource)
		w("kill -TERM $(cat %s)   # beta's daemon stops cleanly; wait until alpha says Connecting\n", p.Secondary.PidFile)
		w("%s   # %s with beta down; alpha's out_of_sync_bytes must then be at least that\n", shellJoin(dirtyArgs(t.uri(), r.Link.ResyncSize)), sizeString(r.Link.ResyncSize))
		w("%s   # beta comes back: bitmap resync alpha -> beta, timed until both are in sync\n", shellJoin(p.Secondary.Argv))
		w("%s   # then a full sync, timed the same way\n", shellJoin(p.fullResyncArgs()))
		w("```\n")
	}
	if r.Peer != nil {
		w("\nLink probes: `%s` runs as a separate process; the benchmark sends it %d-byte messages one at a time over one TCP "+
			"connection and waits for each echo (%d warm-up round trips, then for at most %v or %d round trips; TCP_NODELAY, "+
			"as Go sets it), and for the stream writes %d KiB buffers on one connection for as long as the resync before it took "+
			"(at least 1 s), half-closes, and divides the byte count the peer confirms by the time from the first write to that "+
			"confirmation.\n", shellJoin(r.Peer.argv), pingSize, pingWarmup, pingDuration, pingMax, streamChunk>>10)
	}
	if r.Verify != nil {
		w("\nAt the end both replicas are compared online: `%s`.\n", shellJoin(p.verifyArgs()))
	}
}

// renderSplit prints the CPU cost tables' split by process, for the rows
// that have one.
func renderSplit(w func(string, ...any), cs []cpuCost, cpus int) {
	var split []cpuCost
	for _, c := range cs {
		if c.Split {
			split = append(split, c)
		}
	}
	if len(split) == 0 {
		return
	}
	w("\nThe same CPU per unit split by process (from /proc/PID/stat and fio's own usage, its job processes included; "+
		"rest is the kernel's threads and any other process, and comes out slightly negative when there are none: the machine's total is counted in clock ticks, each process's time more precisely). The secondary's ceiling is the ratio the replicated target would reach "+
		"with all %d vCPUs busy if it cost the whole unreplicated run plus only the secondary's own CPU, that is with a primary that "+
		"replicates for free: a goal above it cannot be met on this machine by any work on the primary.\n\n", cpus)
	w("| row | unreplicated: fio, server, rest | replicated: fio, primary, secondary, rest | secondary's ceiling | goal |\n|---|---:|---:|---:|---:|\n")
	for _, c := range split {
		w("| %s | %s, %s, %s | %s, %s, %s, %s | %.2f | %.2f |\n", c.Row, c.unit(c.FioT), c.unit(c.ServerT), c.unit(c.RestT),
			c.unit(c.FioP), c.unit(c.PrimaryP), c.unit(c.SecondaryP), c.unit(c.RestP), c.SecondaryCeiling, c.Goal)
	}
}

// cpuCost is one row of the CPU cost table.
type cpuCost struct {
	Row            string
	Bandwidth      bool
	CoresT, CoresP float64
	// PerT, PerP: CPU-seconds per GiB (bandwidth rows) or per write.
	PerT, PerP float64
	Ceiling    float64
	Goal       float64
	// Split of PerT and PerP by process (same unit), when measured:
	// fio, the unreplicated server, the primary, the secondary, and the
	// rest (kernel threads, other processes).
	Split                      bool
	FioT, ServerT, RestT       float64
	FioP, PrimaryP, SecondaryP float64
	RestP                      float64
	// SecondaryCeiling is the ratio with the unreplicated run's whole
	// cost and only the secondary's on top: what a primary costing no more
	// than the unreplicated server (replicating for free) would reach
	// with all vCPUs busy.
	SecondaryCeiling float64
}

func (c cpuCost) unit(v float64) string {
	if c.Bandwidth {
		return fmt.Sprintf("%.2f s/GiB", v)
	}
	return fmt.Sprintf("%.0f µs/write", v*1e6)
}

// cpuCosts relates each ratio goal to the CPU both targets used for it.
func cpuCosts(r report) []cpuCost {
	var out []cpuCost
	for _, g := range []struct {
		row  string
		goal float64
	}{{"randwrite-4k-qd32", 0.7}, {"write-1m-qd8", 0.85}} {
		rw, ok := findRow(g.row)
		if !ok || !rowSelected(r.Rows, g.row) || !has(targetNames(r.Targets), tTandem) {
			continue
		}
		t := summarize(r.Results[g.row][tTandem], rw.Bandwidth)
		p := summarize(r.Results[g.row][tRepl], rw.Bandwidth)
		thr := func(s summary) float64 {
			if rw.Bandwidth {
				return s.BW / (1 << 30)
			}
			return s.IOPS
		}
		if t.N == 0 || p.N == 0 || t.Cores <= 0 || p.Cores <= 0 || thr(t) <= 0 || thr(p) <= 0 {
			continue
		}
		c := cpuCost{Row: g.row, Bandwidth: rw.Bandwidth, CoresT: t.Cores, CoresP: p.Cores,
			PerT: t.Cores / thr(t), PerP: p.Cores / thr(p), Goal: g.goal}
		c.Ceiling = float64(r.Machine.CPUs) / c.PerP / thr(t)
		if len(t.ServerCores) == 1 && len(p.ServerCores) == 2 {
			c.Split = true
			c.FioT, c.ServerT = t.FioCores/thr(t), t.ServerCores[0]/thr(t)
			c.RestT = c.PerT - c.FioT - c.ServerT
			c.FioP, c.PrimaryP, c.SecondaryP = p.FioCores/thr(p), p.ServerCores[0]/thr(p), p.ServerCores[1]/thr(p)
			c.RestP = c.PerP - c.FioP - c.PrimaryP - c.SecondaryP
			c.SecondaryCeiling = float64(r.Machine.CPUs) / (c.PerT + c.SecondaryP) / thr(t)
		}
		out = append(out, c)
	}
	return out
}

// fullSyncCost relates the full sync's CPU to the TCP stream's.
type fullSyncCost struct {
	PerSync, PerStream float64 // CPU-seconds per GiB
	Ceiling            float64
}

func syncCost(r report) (fullSyncCost, bool) {
	var per []float64
	for _, s := range r.Link.Full {
		if s.PerGiB > 0 {
			per = append(per, s.PerGiB)
		}
	}
	if len(per) == 0 || len(r.Link.FullStreamPerGiB) == 0 || len(r.Link.FullStream) == 0 {
		return fullSyncCost{}, false
	}
	c := fullSyncCost{PerSync: median(per), PerStream: median(r.Link.FullStreamPerGiB)}
	if rate := median(r.Link.FullStream) / (1 << 30); rate > 0 && c.PerSync > 0 && c.PerStream > 0 {
		c.Ceiling = float64(r.Machine.CPUs) / c.PerSync / rate
		return c, true
	}
	return fullSyncCost{}, false
}
