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

// procCPU returns the CPU-seconds process pid (all its threads) has used,
// user and system, from /proc/PID/stat.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: cpu time of %d: %w", pid, err)
	}
	return parseProcStat(b)
}

// parseProcStat reads utime and stime (fields 14 and 15) from a
// /proc/PID/stat line. The command name (field 2) may hold spaces and
// parentheses, so the fields are counted from its last ')'.
func parseProcStat(b []byte) (float64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("bench: /proc/PID/stat has no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so utime (14) is f[11] and stime (15) f[12].
	if len(f) < 13 {
		return 0, errors.New("bench: /proc/PID/stat is too short")
	}
	var sum uint64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bench: /proc/PID/stat: %w", err)
		}
		sum += v
	}
	return float64(sum) / userHZ, nil
}

// procMeter measures the CPU some processes used over an interval, each
// on its own.
type procMeter struct {
	pids  []int
	start []float64
	ok    bool
}

func startProcs(pids []int) procMeter {
	m := procMeter{pids: pids, start: make([]float64, len(pids)), ok: true}
	for i, pid := range pids {
		v, err := procCPU(pid)
		if err != nil {
			m.ok = false
		}
		m.start[i] = v
	}
	return m
}

// seconds returns each process's CPU-seconds since startProcs, or nil if
// any could not be read (a process that exited takes its count with it).
func (m procMeter) seconds() []float64 {
	if !m.ok {
		return nil
	}
	out := make([]float64, len(m.pids))
	for i, pid := range m.pids {
		v, err := procCPU(pid)
		if err != nil {
			return nil
		}
		out[i] = v - m.start[i]
	}
	return out
}
