package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// machine describes where the numbers came from.
type machine struct {
	CPUs     int
	Model    string
	Memory   string
	Kernel   string
	BenchFS  string // filesystem type and device of the bench directory
	Versions [][2]string
}

func describeMachine(ctx context.Context, benchDir, tandemRev string) machine {
	m := machine{
		CPUs:    runtime.NumCPU(),
		Model:   procField("/proc/cpuinfo", "model name"),
		Memory:  memTotal(),
		Kernel:  firstLine(readFile("/proc/sys/kernel/osrelease")),
		BenchFS: strings.Join(strings.Fields(firstLine(command(ctx, "findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", benchDir))), " "),
	}
	m.Versions = [][2]string{
		{"tandem", tandemRev},
		{"fio", firstLine(command(ctx, "fio", "--version"))},
		{"nbdkit", firstLine(command(ctx, "nbdkit", "--version"))},
		{"qemu-nbd", firstLine(command(ctx, "qemu-nbd", "--version"))},
		{"go-nbd", "github.com/pojntfx/go-nbd " + goNBDVersion(ctx)},
		{"go", runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH},
	}
	return m
}

// procField returns the value of the first "key : value" line.
func procField(path, key string) string {
	sc := bufio.NewScanner(strings.NewReader(readFile(path)))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "unknown"
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return string(b)
}

// command runs a short informational command; failures become the text.
func command(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return fmt.Sprintf("unknown (%s: %v)", name, err)
	}
	return string(bytes.TrimSpace(out))
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// goNBDVersion is the go-nbd version the module builds gonbd with.
func goNBDVersion(ctx context.Context) string {
	v := command(ctx, "go", "list", "-m", "-f", "{{.Version}}", "github.com/pojntfx/go-nbd")
	return firstLine(v)
}

// tandemRevision names the source tandem was built from.
func tandemRevision(ctx context.Context, root, prebuilt string) string {
	if prebuilt != "" {
		return "prebuilt binary " + prebuilt
	}
	rev := command(ctx, "git", "-C", root, "describe", "--always", "--dirty", "--tags")
	if strings.HasPrefix(rev, "unknown") {
		return "built from the working tree (no git revision)"
	}
	return "built from " + rev
}

// memTotal is MemTotal from /proc/meminfo in GiB.
func memTotal() string {
	v := procField("/proc/meminfo", "MemTotal")
	var kb int64
	if _, err := fmt.Sscanf(v, "%d kB", &kb); err != nil {
		return v
	}
	return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
}

// loadAvg is the 1, 5 and 15 minute load averages, or "" if unknown.
func loadAvg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 || strings.HasPrefix(f[0], "unknown") {
		return ""
	}
	return strings.Join(f[:3], " ")
}
