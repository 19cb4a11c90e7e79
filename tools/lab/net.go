package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// toolTimeout bounds one run of ip, nft, ipmitool or a tandem client
// command; they finish in milliseconds unless something hangs.
const toolTimeout = 30 * time.Second

// run runs a command to completion and returns its stdout; a failure
// carries its stderr.
func run(ctx context.Context, stdin string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	cmd.WaitDelay = time.Second
	cmd.Env = append(os.Environ(), "GORACE="+os.Getenv("GORACE")+" "+noRaceExitSleep)
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// noRaceExitSleep stops a tandem binary built with -race (as the tests
// build it) from sleeping a second at exit, which every lab command and
// every BMC request would pay; other binaries ignore it.
const noRaceExitSleep = "atexit_sleep_ms=0"

// inNetns prefixes argv so that it runs in the named namespace.
func inNetns(ns string, argv ...string) []string {
	return append([]string{"ip", "netns", "exec", ns}, argv...)
}

// netnsExists reports whether the named namespace exists.
func netnsExists(ns string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", ns))
	return err == nil
}

// buildNetwork makes the namespaces, the bridge, one veth pair per host
// (bridge port in the bridge namespace, eth0 in the host's) and the
// addresses. Nothing is created in the root namespace: each veth pair is
// created inside the bridge namespace with its peer placed straight into
// the host's. No namespace gets a default route.
func buildNetwork(ctx context.Context, n names) error {
	br := n.bridgeNS()
	steps := [][]string{{"ip", "netns", "add", br}}
	for _, h := range hosts {
		steps = append(steps, []string{"ip", "netns", "add", n.netns(h)})
	}
	steps = append(steps,
		[]string{"ip", "-n", br, "link", "set", "lo", "up"},
		// No snooping: the VIP's gratuitous ARP and IPv6 multicast reach
		// every port, as on a plain switch.
		[]string{"ip", "-n", br, "link", "add", bridgeName, "type", "bridge", "mcast_snooping", "0"},
		[]string{"ip", "-n", br, "link", "set", bridgeName, "up"},
	)
	for _, node := range dataNodes {
		steps = append(steps, []string{"ip", "-n", br, "addr", "add", fmt.Sprintf("%s/%d", bmcAddr[node], prefixLen), "dev", bridgeName})
	}
	for _, h := range hosts {
		ns := n.netns(h)
		steps = append(steps,
			[]string{"ip", "-n", br, "link", "add", port(h), "type", "veth", "peer", "name", ifName, "netns", ns},
			[]string{"ip", "-n", br, "link", "set", port(h), "master", bridgeName, "up"},
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
			[]string{"ip", "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", hostAddr[h], prefixLen), "dev", ifName},
			[]string{"ip", "-n", ns, "link", "set", ifName, "up"},
		)
	}
	for _, s := range steps {
		if _, err := run(ctx, "", s...); err != nil {
			return fmt.Errorf("lab: network: %w", err)
		}
	}
	return nil
}

// linkPower follows a host's power: off takes its interface down; on
// gives it back its own address only (a machine that boots has none of
// the VIPs it held before) and brings it up.
func linkPower(ctx context.Context, n names, host string, on bool) error {
	ns := n.netns(host)
	steps := [][]string{{"ip", "-n", ns, "link", "set", ifName, "down"}}
	if on {
		steps = [][]string{
			{"ip", "-n", ns, "addr", "flush", "dev", ifName},
			{"ip", "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", hostAddr[host], prefixLen), "dev", ifName},
			{"ip", "-n", ns, "link", "set", ifName, "up"},
		}
	}
	for _, s := range steps {
		if _, err := run(ctx, "", s...); err != nil {
			return fmt.Errorf("lab: power of %s: %w", host, err)
		}
	}
	return nil
}

// netnsInode is the identity of a named namespace: the inode of its file.
func netnsInode(ns string) (uint64, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/run/netns", ns), &st); err != nil {
		return 0, false
	}
	return st.Ino, true
}

// pidsInNetns lists the processes whose network namespace is ns: those a
// lab started there and anything a user ran with `lab exec`.
func pidsInNetns(ns string) []int {
	ino, ok := netnsInode(ns)
	if !ok {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == ino {
			out = append(out, pid)
		}
	}
	return out
}

// removeNetns kills what still runs in each of the lab's namespaces and
// deletes them; their veths go with them.
func removeNetns(ctx context.Context, n names) error {
	var errs []error
	for _, ns := range n.allNetns() {
		if !netnsExists(ns) {
			continue
		}
		for _, pid := range pidsInNetns(ns) {
			if st, ok := procStart(pid); ok {
				_ = stopProc(proc{PID: pid, Start: st}, syscall.SIGKILL, 0)
			}
		}
		if _, err := run(ctx, "", "ip", "netns", "delete", ns); err != nil {
			errs = append(errs, fmt.Errorf("lab: %w", err))
		}
	}
	return errors.Join(errs...)
}

// faults are the network faults in force: isolated hosts and cut pairs.
type faults struct {
	Isolated []string    `json:"isolated,omitempty"`
	Cuts     [][2]string `json:"cuts,omitempty"`
}

func (f *faults) normalize() {
	sort.Strings(f.Isolated)
	f.Isolated = dedupe(f.Isolated)
	for i := range f.Cuts {
		if f.Cuts[i][0] > f.Cuts[i][1] {
			f.Cuts[i][0], f.Cuts[i][1] = f.Cuts[i][1], f.Cuts[i][0]
		}
	}
	sort.Slice(f.Cuts, func(i, j int) bool {
		return f.Cuts[i][0]+" "+f.Cuts[i][1] < f.Cuts[j][0]+" "+f.Cuts[j][1]
	})
	var cuts [][2]string
	for i, c := range f.Cuts {
		if i == 0 || c != f.Cuts[i-1] {
			cuts = append(cuts, c)
		}
	}
	f.Cuts = cuts
}

func dedupe(s []string) []string {
	var out []string
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// nftTable is the lab's table in the bridge namespace.
const nftTable = "tandem_lab"

// ruleset renders the faults as an nftables bridge table. Filtering on the
// bridge ports works like pulling cables: it catches every frame (ARP,
// the VIP, replication, gossip) whatever its addresses. An isolated host
// also loses the bridge namespace itself (the BMCs), while its own BMC
// stays reachable from the others, like an out-of-band management port.
func (f faults) ruleset() string {
	var b strings.Builder
	// Declaring then deleting makes the load idempotent.
	fmt.Fprintf(&b, "table bridge %s\ndelete table bridge %s\n", nftTable, nftTable)
	fmt.Fprintf(&b, "table bridge %s {\n", nftTable)
	b.WriteString("  chain forward {\n    type filter hook forward priority 0; policy accept;\n")
	for _, h := range f.Isolated {
		fmt.Fprintf(&b, "    iifname %q drop\n    oifname %q drop\n", port(h), port(h))
	}
	for _, c := range f.Cuts {
		fmt.Fprintf(&b, "    iifname %q oifname %q drop\n    iifname %q oifname %q drop\n",
			port(c[0]), port(c[1]), port(c[1]), port(c[0]))
	}
	b.WriteString("  }\n  chain input {\n    type filter hook input priority 0; policy accept;\n")
	for _, h := range f.Isolated {
		fmt.Fprintf(&b, "    iifname %q drop\n", port(h))
	}
	b.WriteString("  }\n  chain output {\n    type filter hook output priority 0; policy accept;\n")
	for _, h := range f.Isolated {
		fmt.Fprintf(&b, "    oifname %q drop\n", port(h))
	}
	b.WriteString("  }\n}\n")
	return b.String()
}

func (f faults) empty() bool { return len(f.Isolated) == 0 && len(f.Cuts) == 0 }

// applyFaults loads the faults into the bridge namespace; none removes
// the table.
func applyFaults(ctx context.Context, n names, f faults) error {
	rs := f.ruleset()
	if f.empty() {
		rs = fmt.Sprintf("table bridge %s\ndelete table bridge %s\n", nftTable, nftTable)
	}
	if _, err := run(ctx, rs, inNetns(n.bridgeNS(), "nft", "-f", "-")...); err != nil {
		return fmt.Errorf("lab: loading the fault rules: %w", err)
	}
	return nil
}

func readFaults(path string) (faults, error) {
	var f faults
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("lab: %w", err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("lab: %s: %w", path, err)
	}
	return f, nil
}

func writeFaults(path string, f faults) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return writeAtomic(path, string(b)+"\n", 0o644)
}
