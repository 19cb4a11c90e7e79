package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// row is one fio workload of the table.
type row struct {
	Name  string // stable id, used as fio's --name and on the command line
	Title string // as printed in the table
	RW    string // fio --rw
	BS    string // fio --bs
	QD    int    // fio --iodepth
	Jobs  int    // fio --numjobs (each job opens its own NBD connection)
	// Bandwidth rows are reported in MiB/s rather than IOPS.
	Bandwidth bool
}

func (r row) read() bool { return r.RW == "read" || r.RW == "randread" }

// allRows lists every workload the tool knows; defaultRows the ones run
// when -rows is not given.
var allRows = []row{
	{Name: "randread-4k-qd32", Title: "4k randread QD32", RW: "randread", BS: "4k", QD: 32, Jobs: 1},
	{Name: "randwrite-4k-qd32", Title: "4k randwrite QD32", RW: "randwrite", BS: "4k", QD: 32, Jobs: 1},
	{Name: "randwrite-4k-qd1", Title: "4k randwrite QD1", RW: "randwrite", BS: "4k", QD: 1, Jobs: 1},
	{Name: "read-1m-qd8", Title: "1M seqread QD8", RW: "read", BS: "1M", QD: 8, Jobs: 1, Bandwidth: true},
	{Name: "write-1m-qd8", Title: "1M seqwrite QD8", RW: "write", BS: "1M", QD: 8, Jobs: 1, Bandwidth: true},
	// Optional: four connections at once (go-nbd and qemu-nbd serve each
	// connection separately, tandem and nbdkit share a thread pool).
	{Name: "randread-4k-4x8", Title: "4k randread 4 jobs x QD8", RW: "randread", BS: "4k", QD: 8, Jobs: 4},
}

var defaultRows = []string{"randread-4k-qd32", "randwrite-4k-qd32", "randwrite-4k-qd1", "read-1m-qd8", "write-1m-qd8"}

// fioArgs is the whole fio command line for one row against one target;
// engine holds the target's --ioengine and what it needs.
func fioArgs(r row, engine []string, runtime, ramp time.Duration) []string {
	args := []string{
		"fio",
		"--name=" + r.Name,
		"--rw=" + r.RW,
		"--bs=" + r.BS,
		fmt.Sprintf("--iodepth=%d", r.QD),
		fmt.Sprintf("--numjobs=%d", r.Jobs),
		"--group_reporting",
		"--time_based",
		// Percentiles of the total latency (submission to completion) as
		// well as fio's default completion-latency ones: see parseFio.
		"--lat_percentiles=1",
		fmt.Sprintf("--runtime=%ds", int(runtime/time.Second)),
		fmt.Sprintf("--ramp_time=%ds", int(ramp/time.Second)),
		"--output-format=json",
	}
	return append(args, engine...)
}

// sample is what one fio run measured for the row's direction.
type sample struct {
	IOPS float64
	BW   float64 // bytes per second
	// P50 and P99 are total latency (fio "lat": submission to completion),
	// in µs. ClatP50 is fio's completion latency, which for the nbd engine
	// leaves out the submission: see parseFio.
	P50, P99 float64
	ClatP50  float64
	// Cores: the machine's CPUs busy on average over the fio run (ramp
	// included), every process and the kernel counted; 0 if unknown.
	Cores float64
	// FioCores and ServerCores split Cores: fio with its job processes,
	// and each of the target's server processes (target.pids order); the
	// rest is the kernel's own threads and other processes. Both are
	// unset if a process's CPU time could not be read.
	FioCores    float64
	ServerCores []float64
}

type fioOutput struct {
	Jobs []struct {
		JobName string `json:"jobname"`
		Error   int    `json:"error"`
		Read    fioDir `json:"read"`
		Write   fioDir `json:"write"`
	} `json:"jobs"`
}

type fioDir struct {
	IOPS     float64 `json:"iops"`
	BWBytes  float64 `json:"bw_bytes"`
	TotalIOs int64   `json:"total_ios"`
	ClatNs   fioLat  `json:"clat_ns"`
	LatNs    fioLat  `json:"lat_ns"`
}

type fioLat struct {
	Percentile map[string]float64 `json:"percentile"`
}

// parseFio reads fio's --output-format=json from its stdout. fio's nbd
// engine prints "fio: connected to NBD server" on stdout before the JSON, so
// everything before the first line starting with '{' is skipped, and
// anything after the JSON value is ignored.
func parseFio(out []byte, read bool) (sample, error) {
	start := -1
	if bytes.HasPrefix(out, []byte("{")) {
		start = 0
	} else if i := bytes.Index(out, []byte("\n{")); i >= 0 {
		start = i + 1
	}
	if start < 0 {
		return sample{}, errors.New("bench: no JSON object in fio output")
	}
	var o fioOutput
	if err := json.NewDecoder(bytes.NewReader(out[start:])).Decode(&o); err != nil {
		return sample{}, fmt.Errorf("bench: decoding fio JSON: %w", err)
	}
	if len(o.Jobs) != 1 {
		// --group_reporting folds every job into one entry.
		return sample{}, fmt.Errorf("bench: fio reported %d jobs, want 1 (group_reporting)", len(o.Jobs))
	}
	j := o.Jobs[0]
	if j.Error != 0 {
		return sample{}, fmt.Errorf("bench: fio job %s failed with error %d", j.JobName, j.Error)
	}
	d := j.Write
	if read {
		d = j.Read
	}
	if d.TotalIOs == 0 {
		return sample{}, fmt.Errorf("bench: fio job %s completed no I/O", j.JobName)
	}
	// Latency is reported from fio's total latency, not its completion
	// latency (clat): the nbd engine sends the request inside its queue
	// hook (tens of µs, the "slat"), and clat only starts after that, so a
	// server that answers while fio is still in its submission path shows
	// an impossibly small clat (a few µs at QD1). lat covers the whole
	// round trip an application sees.
	var s sample
	var err error
	for _, v := range []struct {
		dst *float64
		m   map[string]float64
		p   float64
	}{
		{&s.P50, d.LatNs.Percentile, 50},
		{&s.P99, d.LatNs.Percentile, 99},
		{&s.ClatP50, d.ClatNs.Percentile, 50},
	} {
		if *v.dst, err = percentile(v.m, v.p); err != nil {
			return sample{}, err
		}
		*v.dst /= 1e3
	}
	s.IOPS, s.BW = d.IOPS, d.BWBytes
	return s, nil
}

// percentile finds p in fio's map, whose keys are formatted like
// "99.000000"; matching by value keeps working if fio changes the format.
func percentile(m map[string]float64, p float64) (float64, error) {
	for k, v := range m {
		f, err := strconv.ParseFloat(k, 64)
		if err == nil && f == p {
			return v, nil
		}
	}
	return 0, fmt.Errorf("bench: fio output has no p%g latency (lat_percentiles not set?)", p)
}
