package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/tools/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// labSize keeps create-md, resync and verify quick.
const labSize = 4 << 20

// testLab brings a lab up in a fresh directory and registers a cleanup
// that takes it down and checks that nothing is left.
func testLab(t *testing.T) (*Lab, string) {
	t.Helper()
	return upLab(t, Params{Size: labSize, Resources: 1})
}

// upLab brings a lab with p up in a fresh directory and registers its
// teardown, as testLab.
func upLab(t *testing.T, p Params) (*Lab, string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip", "nft", "ipmi_sim", "ipmitool", "nbdinfo", "qemu-io", "bash", "timeout")
	bin := testenv.BuildTandem(t)
	lab, err := Open(filepath.Join(t.TempDir(), "lab"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := lab.Up(ctx, bin, p, io.Discard); err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(lab.logTails())
			keepLogs(t, lab)
		}
		checkDown(t, lab)
	})
	return lab, bin
}

// keepLogs copies a failed test's daemon logs to $TANDEM_LAB_KEEP_LOGS/<test>
// when that is set: the lab directory itself goes with the test.
func keepLogs(t *testing.T, lab *Lab) {
	dir := os.Getenv("TANDEM_LAB_KEEP_LOGS")
	if dir == "" {
		return
	}
	dst := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-"+time.Now().Format("150405.000"))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Logf("keeping the logs: %v", err)
		return
	}
	ents, _ := os.ReadDir(lab.l.logs())
	for _, e := range ents {
		if data, err := os.ReadFile(filepath.Join(lab.l.logs(), e.Name())); err == nil {
			_ = os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644)
		}
	}
	t.Logf("logs kept in %s", dst)
}

// checkDown takes the lab down, twice (it is idempotent), and checks that
// no namespace, link, process or file of it is left.
func checkDown(t *testing.T, lab *Lab) {
	t.Helper()
	var procs []proc
	for _, rec := range lab.PIDRecords() {
		if p, err := readProc(rec); err == nil {
			procs = append(procs, p)
		}
	}
	ctx := context.Background()
	for i := range 2 {
		if err := lab.Down(ctx); err != nil {
			t.Errorf("lab down (%d): %v", i+1, err)
		}
	}
	for _, p := range procs {
		if p.alive() {
			t.Errorf("pid %d still runs after lab down", p.PID)
		}
	}
	out := testenv.Run(t, "ip", "netns", "list")
	for _, ns := range lab.n.allNetns() {
		if strings.Contains(out, ns) {
			t.Errorf("namespace %s left after lab down:\n%s", ns, out)
		}
	}
	links := testenv.Run(t, "ip", "-o", "link")
	for _, h := range hosts {
		if strings.Contains(links, " "+port(h)+"@") || strings.Contains(links, " "+port(h)+":") {
			t.Errorf("link %s in the root namespace after lab down:\n%s", port(h), links)
		}
	}
	if _, err := os.Stat(lab.Dir()); !errors.Is(err, os.ErrNotExist) {
		ents, _ := os.ReadDir(lab.Dir())
		t.Errorf("lab directory %s left after lab down (%v): %v", lab.Dir(), err, ents)
	}
}

// inNS runs argv in node's namespace, bounded; it returns the output and
// the exit code.
func inNS(t *testing.T, lab *Lab, node string, argv ...string) (string, int) {
	t.Helper()
	ns, err := lab.Netns(node)
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := testenv.RunErr("ip", append([]string{"netns", "exec", ns}, argv...)...)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return stdout + stderr, ee.ExitCode()
	case err != nil:
		t.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	return stdout + stderr, 0
}

// reachable tries a TCP connection from node to addr:port. A connection
// or a refusal (RST) means the packets flow; a timeout, or no answer to
// ARP, that they are dropped.
func reachable(t *testing.T, lab *Lab, node, addr string, port int) bool {
	t.Helper()
	out, code := inNS(t, lab, node, "timeout", "2", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", addr, port))
	switch code {
	case 0:
		return true
	case 124:
		return false
	}
	if strings.Contains(out, "refused") {
		return true
	}
	if strings.Contains(out, "No route to host") || strings.Contains(out, "unreachable") {
		return false // neighbour resolution failed: nothing answers ARP
	}
	t.Fatalf("probe %s -> %s:%d: exit %d: %s", node, addr, port, code, out)
	return false
}

func status(t *testing.T, lab *Lab) *Status {
	t.Helper()
	s, err := lab.Status(context.Background())
	if err != nil {
		t.Fatalf("lab status: %v", err)
	}
	return s
}

func waitFor(t *testing.T, lab *Lab, what string, cond func(*Status) bool) {
	t.Helper()
	if err := lab.WaitFor(context.Background(), what, syncWait, cond); err != nil {
		t.Fatal(err)
	}
}

func qemuIO(t *testing.T, lab *Lab, cmd string) {
	t.Helper()
	out, code := inNS(t, lab, Client, "qemu-io", "-f", "raw", "-c", cmd, URI(0))
	if code != 0 || strings.Contains(out, "failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io %q from the client: exit %d:\n%s", cmd, code, out)
	}
}

// TestLab is the lab end to end: up, the status JSON, a client writing
// and reading through the VIP, fencing through the BMC, restart and
// resync, network faults, and down leaving nothing behind.
func TestLab(t *testing.T) {
	lab, bin := testLab(t)
	cfg := lab.ConfigPath()

	// Status, through its JSON form.
	s := status(t, lab)
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var js struct {
		Resources []struct{ Name, Primary, VIP, VIPHolder string } `json:"resources"`
		Nodes     []struct {
			Name, Role, Disk, Power string
			PID                     int
		} `json:"nodes"`
	}
	if err := json.Unmarshal(b, &js); err != nil {
		t.Fatal(err)
	}
	if len(js.Resources) != 1 || js.Resources[0].Name != "r0" || js.Resources[0].Primary != Alpha || js.Resources[0].VIP != "198.51.100.100" {
		t.Fatalf("status resources %+v, want r0 primary alpha with VIP 198.51.100.100\n%s", js.Resources, b)
	}
	// The CLI prints the same status as JSON.
	cliOut, cliErr, err := testenv.RunErr(bin, "lab", "status", "--json", "--dir", lab.Dir())
	var cli Status
	if err != nil || json.Unmarshal([]byte(cliOut), &cli) != nil || cli.Resources[0].Primary != Alpha || cli.Node(Bravo).Disk != "UpToDate" {
		t.Fatalf("tandem lab status --json: %v:\n%s%s", err, cliOut, cliErr)
	}
	if s.Resources[0].VIPHolder != Alpha {
		t.Errorf("VIP held by %q, want alpha", s.Resources[0].VIPHolder)
	}
	nodes := map[string]int{}
	for i, n := range js.Nodes {
		nodes[n.Name] = i
	}
	if n := js.Nodes[nodes[Bravo]]; n.Role != "Secondary" || n.Disk != "UpToDate" || n.PID == 0 || n.Power != PowerOn {
		t.Fatalf("bravo: %+v, want Secondary UpToDate, running, power on\n%s", n, b)
	}
	if n := js.Nodes[nodes[Alpha]]; n.Role != "Primary" || n.Disk != "UpToDate" || n.PID == 0 || n.Power != PowerOn {
		t.Fatalf("alpha: %+v, want Primary UpToDate, running, power on", n)
	}
	if n := js.Nodes[nodes[Witness]]; n.PID == 0 {
		t.Fatalf("witness daemon not running: %+v", n)
	}

	// A client in its own namespace reaches the resource through the VIP.
	if out, code := inNS(t, lab, Client, "nbdinfo", URI(0)); code != 0 || !strings.Contains(out, fmt.Sprintf("export-size: %d", labSize)) {
		t.Fatalf("nbdinfo %s from the client: exit %d:\n%s", URI(0), code, out)
	}
	qemuIO(t, lab, "write -P 0x5a 0 1M")
	qemuIO(t, lab, "read -P 0x5a 0 1M")
	// lab exec: the command runs in the namespace, its exit code comes back.
	outFile, err := os.Create(filepath.Join(t.TempDir(), "exec.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()
	if code, err := lab.Exec(context.Background(), Client, []string{"ip", "-o", "-4", "addr", "show", "dev", ifName}, nil, outFile, outFile); err != nil || code != 0 {
		t.Fatalf("lab exec client ip addr: code %d, %v", code, err)
	}
	if b, _ := os.ReadFile(outFile.Name()); !strings.Contains(string(b), hostAddr[Client].String()+"/24") {
		t.Errorf("lab exec client does not run in the client's namespace: %s", b)
	}
	if code, err := lab.Exec(context.Background(), Client, []string{"sh", "-c", "exit 3"}, nil, outFile, outFile); err != nil || code != 3 {
		t.Errorf("lab exec client sh -c 'exit 3': code %d, %v; want 3", code, err)
	}

	// Fencing bravo through its BMC, from alpha, as the cluster will:
	// ipmi_sim's power-off kills bravo's daemon.
	bravoDaemon, err := readProc(lab.l.procRecord(Bravo))
	if err != nil || bravoDaemon.PID != s.Node(Bravo).PID {
		t.Fatalf("bravo's daemon record %+v (%v) does not match the status pid %d", bravoDaemon, err, s.Node(Bravo).PID)
	}
	out, code := inNS(t, lab, Alpha, bin, "--config", cfg, "fence", "off", Bravo, "--node", Alpha, "--json")
	if code != 0 || !strings.Contains(out, `"ok": true`) {
		t.Fatalf("tandem fence off bravo from alpha: exit %d:\n%s", code, out)
	}
	if bravoDaemon.alive() {
		t.Fatalf("bravo's daemon (pid %d) survived its BMC's power-off", bravoDaemon.PID)
	}
	s = status(t, lab)
	if n := s.Node(Bravo); n.Power != PowerOff || n.PID != 0 {
		t.Fatalf("after fence off: bravo power %q pid %d, want off and no daemon", n.Power, n.PID)
	}
	// ipmitool, from another node's namespace, agrees with the BMC.
	ipmi := []string{"ipmitool", "-I", "lanplus", "-C", "3", "-H", bmcAddr[Bravo].String(), "-U", bmcUser, "-f", lab.l.bmcPassword(), "chassis", "power", "status"}
	if out, code := inNS(t, lab, Witness, ipmi...); code != 0 || !strings.Contains(out, "is off") {
		t.Fatalf("ipmitool power status of bravo: exit %d: %s", code, out)
	}
	// A node without power answers nothing.
	if reachable(t, lab, Witness, hostAddr[Bravo].String(), nbdPort) {
		t.Error("bravo's address answers while bravo is powered off")
	}
	// Alpha keeps serving, degraded; then bravo comes back and resyncs.
	qemuIO(t, lab, "write -P 0x6b 1M 1M")
	if err := lab.Restart(context.Background(), Bravo); err != nil {
		t.Fatalf("lab restart bravo: %v", err)
	}
	waitFor(t, lab, "bravo back and UpToDate", func(s *Status) bool {
		a, b := s.Node(Alpha), s.Node(Bravo)
		return len(a.Resources) == 1 && a.Resources[0].Connection == "Connected" && a.Resources[0].PeerDisk == "UpToDate" &&
			a.Resources[0].OutOfSync == 0 && b.Disk == "UpToDate" && b.Power == PowerOn && b.PID != 0
	})
	if out, code := inNS(t, lab, Witness, ipmi...); code != 0 || !strings.Contains(out, "is on") {
		t.Fatalf("ipmitool power status of bravo after restart: exit %d: %s", code, out)
	}
	// Both replicas hold the same bytes after the resync.
	if out, code := inNS(t, lab, Alpha, bin, "--config", cfg, "verify", "r0", "--node", Alpha); code != 0 {
		t.Fatalf("tandem verify r0 after the resync: exit %d:\n%s", code, out)
	}
	qemuIO(t, lab, "read -P 0x6b 1M 1M")

	// lab crash: SIGKILL by PID, and the BMC reports off.
	if err := lab.Crash(Bravo); err != nil {
		t.Fatal(err)
	}
	if out, code := inNS(t, lab, Witness, ipmi...); code != 0 || !strings.Contains(out, "is off") {
		t.Fatalf("ipmitool after lab crash bravo: exit %d: %s", code, out)
	}
	if err := lab.Restart(context.Background(), Bravo); err != nil {
		t.Fatal(err)
	}

	// Network faults. Bravo and alpha serve NBD on every address.
	bravo, alpha, vip := hostAddr[Bravo].String(), hostAddr[Alpha].String(), VIP(0).String()
	if !reachable(t, lab, Alpha, bravo, nbdPort) || !reachable(t, lab, Client, vip, nbdPort) {
		t.Fatal("the healthy lab does not reach bravo from alpha, or the VIP from the client")
	}
	ctx := context.Background()
	if err := lab.Cut(ctx, Alpha, Bravo); err != nil {
		t.Fatal(err)
	}
	if reachable(t, lab, Alpha, bravo, nbdPort) || reachable(t, lab, Bravo, alpha, nbdPort) {
		t.Error("alpha and bravo still reach each other after lab cut alpha bravo")
	}
	if !reachable(t, lab, Witness, bravo, nbdPort) || !reachable(t, lab, Client, vip, nbdPort) || !reachable(t, lab, Alpha, hostAddr[Witness].String(), nbdPort) {
		t.Error("lab cut alpha bravo also cut other pairs")
	}
	if err := lab.Isolate(ctx, Client); err != nil {
		t.Fatal(err)
	}
	if reachable(t, lab, Client, vip, nbdPort) || reachable(t, lab, Client, bravo, nbdPort) {
		t.Error("the isolated client still reaches the cluster")
	}
	s = status(t, lab)
	if len(s.Isolated) != 1 || s.Isolated[0] != Client || len(s.Cuts) != 1 {
		t.Errorf("status faults: isolated %v, cuts %v", s.Isolated, s.Cuts)
	}
	if err := lab.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	if !reachable(t, lab, Alpha, bravo, nbdPort) || !reachable(t, lab, Client, vip, nbdPort) {
		t.Error("lab heal did not restore the links")
	}
	waitFor(t, lab, "alpha and bravo connected after heal", func(s *Status) bool {
		a := s.Node(Alpha)
		return len(a.Resources) == 1 && a.Resources[0].Connection == "Connected" && a.Resources[0].PeerDisk == "UpToDate"
	})
	qemuIO(t, lab, "read -P 0x5a 0 1M")

	// A failover by hand, as the cluster layer will do it: fence alpha
	// through its BMC from bravo, promote bravo, move the VIP. The
	// powered-off alpha no longer answers for the VIP, so the claim's
	// probe finds nobody; the client reads its data through the VIP.
	if out, code := inNS(t, lab, Bravo, bin, "--config", cfg, "fence", "off", Alpha, "--node", Bravo); code != 0 {
		t.Fatalf("fence off alpha from bravo: exit %d:\n%s", code, out)
	}
	if out, code := inNS(t, lab, Bravo, bin, "--config", cfg, "promote", "r0", "--node", Bravo); code != 0 {
		t.Fatalf("promote r0 on bravo: exit %d:\n%s", code, out)
	}
	if out, code := inNS(t, lab, Bravo, bin, "--config", cfg, "vip", "claim", "r0", "--node", Bravo); code != 0 {
		t.Fatalf("vip claim r0 on bravo: exit %d:\n%s", code, out)
	}
	qemuIO(t, lab, "read -P 0x6b 1M 1M")
	if err := lab.Restart(ctx, Alpha); err != nil {
		t.Fatal(err)
	}
	waitFor(t, lab, "bravo Primary, VIP on bravo, alpha back as UpToDate Secondary", func(s *Status) bool {
		a := s.Node(Alpha)
		return s.Resources[0].Primary == Bravo && s.Resources[0].VIPHolder == Bravo &&
			a.Role == "Secondary" && a.Disk == "UpToDate" && a.Resources[0].Connection == "Connected"
	})
}

// TestDownAfterCrashedRun: the remains of a run that died half way (its
// namespaces, a process in one of them that no record names, some files)
// are all removed by Down, from the directory alone.
func TestDownAfterCrashedRun(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip", "nft", "ipmi_sim", "sleep")
	lab, err := Open(filepath.Join(t.TempDir(), "lab"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.Down(context.Background()) })
	if err := os.MkdirAll(lab.l.run(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := buildNetwork(context.Background(), lab.n); err != nil {
		t.Fatal(err)
	}
	stray := testenv.Start(t, "ip", "netns", "exec", lab.n.netns(Client), "sleep", "600")
	checkDown(t, lab)
	select {
	case <-stray.Exited():
	case <-time.After(10 * time.Second):
		t.Errorf("a process in the lab's client namespace (pid %d) survived lab down", stray.Pid())
	}
}

// TestUpFailsCleanly: an Up that fails half way (here: a tandem binary
// that cannot create metadata) removes what it made, and says why.
func TestUpFailsCleanly(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip", "nft", "ipmi_sim", "false")
	lab, err := Open(filepath.Join(t.TempDir(), "lab"))
	if err != nil {
		t.Fatal(err)
	}
	bogus, _ := exec.LookPath("false")
	err = lab.Up(context.Background(), bogus, Params{Size: labSize, Resources: 1}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "create-md") {
		t.Fatalf("lab up with a broken tandem binary: %v, want a create-md failure", err)
	}
	checkDown(t, lab)
}

func TestRefusals(t *testing.T) {
	lab, err := Open(filepath.Join(t.TempDir(), "lab"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Status(context.Background()); !errors.Is(err, ErrNoLab) {
		t.Errorf("status of an empty directory: %v, want ErrNoLab", err)
	}
	if err := lab.Crash("delta"); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("crash delta: %v, want ErrUnknownNode", err)
	}
	if err := lab.Crash(Client); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("crash client (runs no daemon): %v, want ErrUnknownNode", err)
	}
	if err := lab.Cut(context.Background(), Alpha, Alpha); err == nil {
		t.Error("cut alpha alpha accepted")
	}
	if os.Geteuid() != 0 {
		if err := lab.Down(context.Background()); !errors.Is(err, ErrNotRoot) {
			t.Errorf("down as uid %d: %v, want ErrNotRoot", os.Geteuid(), err)
		}
	}
}

// TestUpRefusesUnsafeDir: a directory others could write to is refused
// before anything is made in it.
func TestUpRefusesUnsafeDir(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip", "nft", "ipmi_sim")
	dir := filepath.Join(t.TempDir(), "lab")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	lab, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = lab.Up(context.Background(), "/bin/true", Params{Size: labSize, Resources: 1}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "writable by other users") {
		t.Fatalf("lab up in a mode 0777 directory: %v, want a refusal", err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("the refused up changed %s: %v %v", dir, ents, err)
	}
	for _, ns := range lab.n.allNetns() {
		if netnsExists(ns) {
			t.Errorf("the refused up left namespace %s", ns)
		}
	}
}

// TestTwoLabsCoexist: the networks of two labs, with the same addresses,
// live side by side, and taking one down leaves the other whole.
func TestTwoLabsCoexist(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip", "nft", "ipmi_sim", "bash", "timeout", "sleep")
	var labs [2]*Lab
	for i := range labs {
		l, err := Open(filepath.Join(t.TempDir(), "lab"))
		if err != nil {
			t.Fatal(err)
		}
		labs[i] = l
		t.Cleanup(func() { _ = l.Down(context.Background()) })
		if err := os.MkdirAll(l.l.run(), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := buildNetwork(context.Background(), l.n); err != nil {
			t.Fatalf("network of lab %d: %v", i, err)
		}
	}
	if labs[0].n.bridgeNS() == labs[1].n.bridgeNS() {
		t.Fatal("two labs share a bridge namespace name")
	}
	// A process in lab 1's alpha: lab 0's down must leave it alone, lab
	// 1's must kill it.
	resident := testenv.Start(t, "ip", "netns", "exec", labs[1].n.netns(Alpha), "sleep", "600")
	for i, l := range labs {
		if !reachable(t, l, Client, hostAddr[Alpha].String(), nbdPort) {
			t.Errorf("lab %d: the client does not reach alpha", i)
		}
	}
	checkDown(t, labs[0])
	for _, ns := range labs[1].n.allNetns() {
		if !netnsExists(ns) {
			t.Errorf("taking lab 0 down removed lab 1's namespace %s", ns)
		}
	}
	if !reachable(t, labs[1], Client, hostAddr[Alpha].String(), nbdPort) {
		t.Error("lab 1's client lost alpha when lab 0 went down")
	}
	if !resident.Running() {
		t.Error("taking lab 0 down killed a process in lab 1")
	}
	checkDown(t, labs[1])
	select {
	case <-resident.Exited():
	case <-time.After(10 * time.Second):
		t.Errorf("a process in lab 1 (pid %d) survived its lab down", resident.Pid())
	}
}
