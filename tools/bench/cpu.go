package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// The machine's CPU time, read from /proc/stat around a run: what every
// process and the kernel (loopback TCP, softirqs) spent, not only the
// servers'. On a machine shared with other work it over-counts, so the
// report compares targets of one run only.

// userHZ is the unit of /proc/stat (USER_HZ, 100 on every Linux ABI).
const userHZ = 100

// cpuBusy returns the seconds all CPUs spent busy since boot: user, nice,
// system, irq, softirq and steal (not idle, not iowait).
func cpuBusy() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("bench: cpu time: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("bench: cpu time: /proc/stat does not start with the cpu line")
	}
	var busy uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system . . irq softirq steal
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bench: cpu time: field %d of /proc/stat: %w", i, err)
		}
		busy += v
	}
	return float64(busy) / userHZ, nil
}

// cpuMeter measures the cores busy over an interval.
type cpuMeter struct {
	start time.Time
	busy  float64
	err   error
}

func startCPU() cpuMeter {
	b, err := cpuBusy()
	return cpuMeter{start: time.Now(), busy: b, err: err}
}

// seconds is the CPU time all CPUs were busy since startCPU; 0 if it
// could not be read.
func (m cpuMeter) seconds() float64 {
	b, err := cpuBusy()
	if m.err != nil || err != nil {
		return 0
	}
	return b - m.busy
}

// cores is the mean number of CPUs busy since startCPU; 0 if it could
// not be read.
func (m cpuMeter) cores() float64 {
	b, err := cpuBusy()
	wall := time.Since(m.start).Seconds()
	if m.err != nil || err != nil || wall <= 0 {
		return 0
	}
	return (b - m.busy) / wall
}
