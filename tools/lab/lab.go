package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
)

// DefaultDir is where a lab lives without --dir.
const DefaultDir = "/tmp/tandem-lab"

// Sentinel errors callers branch on.
var (
	// ErrNotRoot: namespaces, veths and nftables need root.
	ErrNotRoot = errors.New("lab: needs root (network namespaces, veth pairs, nftables, ipmi_sim on port 623)")
	// ErrNoLab: nothing is up in the directory.
	ErrNoLab = errors.New("lab: no lab is up in this directory")
	// ErrExists: Up found a lab (or the remains of one) in the directory.
	ErrExists = errors.New("lab: a lab is already up in this directory (or left over from a crashed run)")
	// ErrUnknownNode: not one of alpha, bravo, witness, client.
	ErrUnknownNode = errors.New("lab: unknown node")
)

// Tools the lab runs, with the Debian packages that ship them.
var requiredTools = map[string]string{
	"ip":       "iproute2",
	"nft":      "nftables",
	"ipmi_sim": "openipmi",
}

// Lab is the lab in one directory. Its methods act on the machine: they
// need root.
type Lab struct {
	l layout
	n names
}

// state is what Up records for the later commands.
type state struct {
	// Tandem is the binary the daemons, the BMC hooks and the client
	// commands run.
	Tandem string `json:"tandem"`
	Params Params `json:"params"`
}

// Open returns the lab in dir (which need not exist yet).
func Open(dir string) (*Lab, error) {
	if dir == "" {
		dir = DefaultDir
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("lab: %s: %w", dir, err)
	}
	return &Lab{l: layout{dir: abs}, n: newNames(abs)}, nil
}

// Dir is the lab's directory.
func (lab *Lab) Dir() string { return lab.l.dir }

// ConfigPath is the cluster configuration the lab wrote.
func (lab *Lab) ConfigPath() string { return lab.l.config() }

// Netns is the network namespace of a node (alpha, bravo, witness,
// client).
func (lab *Lab) Netns(node string) (string, error) {
	if _, ok := hostAddr[node]; !ok {
		return "", fmt.Errorf("%w %q: want one of %s", ErrUnknownNode, node, strings.Join(hosts, ", "))
	}
	return lab.n.netns(node), nil
}

// BridgeNetns is the namespace of the bridge and the BMCs.
func (lab *Lab) BridgeNetns() string { return lab.n.bridgeNS() }

// PIDRecords are the files in which the lab records the processes it
// started (daemons and BMCs).
func (lab *Lab) PIDRecords() []string {
	var out []string
	for _, n := range clusterNodes {
		out = append(out, lab.l.procRecord(n))
	}
	for _, n := range dataNodes {
		out = append(out, lab.l.procRecord("bmc-"+n))
	}
	return out
}

func (lab *Lab) state() (state, error) {
	var st state
	b, err := os.ReadFile(lab.l.state())
	if errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("%w: %s (run tandem lab up --dir %s)", ErrNoLab, lab.l.dir, lab.l.dir)
	}
	if err != nil {
		return st, fmt.Errorf("lab: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("lab: %s: %w", lab.l.state(), err)
	}
	return st, nil
}

// RequireRoot returns ErrNotRoot unless the process runs as root, and an
// error naming the package of each missing tool.
func RequireRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w; run it as root (sudo)", ErrNotRoot)
	}
	var missing []string
	for _, t := range []string{"ip", "nft", "ipmi_sim"} {
		if _, err := lookPath(t); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install -y %s)", t, requiredTools[t]))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("lab: missing tools: %s", strings.Join(missing, ", "))
	}
	return nil
}

// Up builds the lab and returns once every resource is Primary on alpha
// with bravo UpToDate. tandem is the binary to run. Progress goes to
// progress. On failure everything made so far is removed again, and the
// error carries the end of the daemons' logs.
func (lab *Lab) Up(ctx context.Context, tandem string, p Params, progress io.Writer) (err error) {
	if err := RequireRoot(); err != nil {
		return err
	}
	if err := p.check(); err != nil {
		return err
	}
	if _, serr := os.Stat(lab.l.state()); serr == nil {
		return fmt.Errorf("%w: %s; run tandem lab down --dir %s first", ErrExists, lab.l.dir, lab.l.dir)
	}
	for _, ns := range lab.n.allNetns() {
		if netnsExists(ns) {
			return fmt.Errorf("%w: namespace %s exists; run tandem lab down --dir %s first", ErrExists, ns, lab.l.dir)
		}
	}
	abs, err := filepath.Abs(tandem)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if err := os.MkdirAll(lab.l.dir, 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if err := checkDirSafe(lab.l.dir); err != nil {
		return err
	}
	say := func(format string, args ...any) { fmt.Fprintf(progress, format+"\n", args...) }
	defer func() {
		if err == nil {
			return
		}
		logs := lab.logTails()
		if derr := lab.Down(context.Background()); derr != nil {
			err = errors.Join(err, derr)
		}
		if logs != "" {
			err = fmt.Errorf("%w\n%s", err, logs)
		}
	}()
	// The state file goes first: from here on, Down knows there is a lab.
	b, _ := json.Marshal(state{Tandem: abs, Params: p})
	if err := writeAtomic(lab.l.state(), string(b)+"\n", 0o644); err != nil {
		return err
	}
	for _, d := range []string{lab.l.disks(), lab.l.run(), lab.l.logs(), lab.l.bmcRoot()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	for _, n := range clusterNodes {
		if err := os.MkdirAll(lab.l.dataDir(n), 0o700); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}

	say("network: namespaces %s*, bridge %s in %s, 198.51.100.0/%d, no default route", lab.n.netns(""), bridgeName, lab.n.bridgeNS(), prefixLen)
	if err := buildNetwork(ctx, lab.n); err != nil {
		return err
	}
	if err := applyFaults(ctx, lab.n, faults{}); err != nil {
		return err
	}

	cfg, err := lab.writeFiles(abs, p)
	if err != nil {
		return err
	}
	say("config: %s (%d resource(s) of %d bytes)", lab.l.config(), p.Resources, p.Size)
	if err := lab.createMetadata(ctx, abs, cfg); err != nil {
		return err
	}
	for _, n := range dataNodes {
		if err := startBMC(lab.l, lab.n, n); err != nil {
			return err
		}
		say("bmc: %s's ipmi_sim at %s:%d (in %s)", n, bmcAddr[n], bmcPort, lab.n.bridgeNS())
	}
	for _, n := range dataNodes {
		if err := lab.waitBMC(ctx, n); err != nil {
			return err
		}
	}
	for _, n := range clusterNodes {
		if err := lab.powerOn(ctx, n, true); err != nil {
			return err
		}
		pr, _ := readProc(lab.l.procRecord(n))
		say("daemon: %s pid %d in %s", n, pr.PID, lab.n.netns(n))
	}
	if err := lab.WaitFor(ctx, "alpha and bravo connected and UpToDate", syncWait, func(s *Status) bool {
		return s.InSync(len(cfg.Resources))
	}); err != nil {
		return err
	}
	// The one manual step, left to the cluster layer when it runs: it
	// elects the primary and claims the VIP; the wait below stays.
	if !cfg.ClusterLayer() {
		if err := lab.bootstrapPrimary(ctx, abs, cfg, say); err != nil {
			return err
		}
	} else {
		say("primary: left to the cluster layer (preferred: alpha)")
	}
	return lab.WaitFor(ctx, "a Primary for every resource, its peer UpToDate", syncWait, func(s *Status) bool {
		return s.Serving(len(cfg.Resources))
	})
}

// bmcWait bounds how long a fresh ipmi_sim may take to answer.
const bmcWait = 15 * time.Second

// waitBMC waits until node's BMC answers over IPMI, through the path
// fencing takes, so that a BMC that did not start (its address or port
// taken, a bad configuration) fails Up instead of the first fencing.
func (lab *Lab) waitBMC(ctx context.Context, node string) error {
	deadline := time.Now().Add(bmcWait)
	for {
		_, err := lab.bmcQuery(ctx, node)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: the BMC of %s does not answer after %v (log %s): %w", node, bmcWait, lab.l.log("bmc-"+node), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(4 * pollEvery):
		}
	}
}

// bootstrapPrimary makes alpha Primary of every resource and puts the
// VIPs on it, as an operator would: tandem promote, then tandem vip claim
// inside alpha's namespace.
//
// This is the one manual step of the lab. Once the cluster layer elects
// a primary and claims the VIP by itself, Up drops this call and only
// waits (the Serving wait after it) for the cluster to do it.
func (lab *Lab) bootstrapPrimary(ctx context.Context, tandem string, cfg *config.Config, say func(string, ...any)) error {
	for i, r := range cfg.Resources {
		if _, err := run(ctx, "", tandem, "--config", lab.l.config(), "promote", r.Name, "--node", Alpha); err != nil {
			return fmt.Errorf("lab: promoting alpha: %w", err)
		}
		if _, err := run(ctx, "", inNetns(lab.n.netns(Alpha), tandem, "--config", lab.l.config(),
			"vip", "claim", r.Name, "--node", Alpha)...); err != nil {
			return fmt.Errorf("lab: claiming the VIP of %s on alpha: %w", r.Name, err)
		}
		say("primary: alpha for %s, serving %s", r.Name, URI(i))
	}
	return nil
}

// writeFiles writes the secret, the BMC password, the configuration and
// the sparse disk files, and checks the configuration as the daemons
// will.
func (lab *Lab) writeFiles(tandem string, p Params) (*config.Config, error) {
	secret, password := make([]byte, 32), make([]byte, 6)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if _, err := rand.Read(password); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if err := os.WriteFile(lab.l.secret(), []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	pw := hex.EncodeToString(password)
	if err := os.WriteFile(lab.l.bmcPassword(), []byte(pw+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if err := os.WriteFile(lab.l.alertProgram(), []byte(alertScript(lab.l)), 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	yaml := configYAML(lab.l, p)
	if err := os.WriteFile(lab.l.config(), []byte(yaml), 0o644); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	cfg, err := config.Parse(lab.l.config(), []byte(yaml))
	if err != nil {
		return nil, fmt.Errorf("lab: the generated configuration is refused: %w", err)
	}
	for _, r := range cfg.Resources {
		size, err := diskSize(cfg, r.Name)
		if err != nil {
			return nil, err
		}
		for _, n := range dataNodes {
			if err := truncate(lab.l.disk(n, r.Name), size); err != nil {
				return nil, err
			}
		}
	}
	// The witness sees no interface of its own in the root namespace,
	// and it is the one node whose local checks need none.
	if err := cfg.Validate(Witness); err != nil {
		return nil, fmt.Errorf("lab: the generated configuration does not validate: %w", err)
	}
	return cfg, writeBMCFiles(lab.l, tandem, pw)
}

// checkDirSafe refuses a directory that another user could change under
// root's feet (a symlink, someone else's directory, a group- or
// world-writable one): the lab runs as root what it finds there (the BMC
// hook, the configuration).
func checkDirSafe(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("lab: %s is not a directory (a symlink?); give --dir a directory of its own", dir)
	case ok && st.Uid != uint32(os.Geteuid()):
		return fmt.Errorf("lab: %s belongs to uid %d, not to this user; give --dir a directory of its own", dir, st.Uid)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("lab: %s is writable by other users (mode %v); chmod go-w it or give --dir another directory", dir, fi.Mode().Perm())
	}
	return nil
}

func truncate(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

// createMetadata runs create-md --new-blank on alpha, then on bravo with
// alpha's generation: both fresh sparse files hold zeros, so they start
// in sync.
func (lab *Lab) createMetadata(ctx context.Context, tandem string, cfg *config.Config) error {
	for _, r := range cfg.Resources {
		out, err := run(ctx, "", tandem, "--config", lab.l.config(), "create-md", r.Name, "--node", Alpha, "--new-blank", "--json")
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		var md struct {
			Superblock struct {
				Generations struct {
					Current uint64 `json:"current"`
				} `json:"generations"`
			} `json:"superblock"`
		}
		if err := jsonUnmarshal(out, &md); err != nil || md.Superblock.Generations.Current == 0 {
			return fmt.Errorf("lab: create-md %s on alpha printed no generation (%v): %s", r.Name, err, out)
		}
		gen := fmt.Sprintf("%#x", md.Superblock.Generations.Current)
		if _, err := run(ctx, "", tandem, "--config", lab.l.config(), "create-md", r.Name, "--node", Bravo,
			"--new-blank", "--generation", gen); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	return nil
}

func jsonUnmarshal(s string, v any) error {
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return fmt.Errorf("lab: parsing %q: %w", strings.TrimSpace(s), err)
	}
	return nil
}

// readyWait bounds how long a daemon may take to write its ready file,
// and syncWait how long the pair may take to connect or resync.
const (
	readyWait = 60 * time.Second
	syncWait  = 90 * time.Second
	pollEvery = 50 * time.Millisecond
)

// powerOn starts node's daemon in its namespace, unless it runs. With
// wait it returns once the daemon's ready file is there.
func (lab *Lab) powerOn(ctx context.Context, node string, wait bool) error {
	st, err := lab.state()
	if err != nil {
		return err
	}
	unlock, err := lockNode(lab.l, node)
	if err != nil {
		return err
	}
	defer unlock()
	rec := lab.l.procRecord(node)
	if p, err := readProc(rec); err == nil && p.alive() {
		return writeAtomic(lab.l.power(node), PowerOn+"\n", 0o644)
	}
	_ = os.Remove(lab.l.readyFile(node))
	if err := writeAtomic(lab.l.power(node), PowerOn+"\n", 0o644); err != nil {
		return err
	}
	if err := linkPower(ctx, lab.n, node, true); err != nil {
		return err
	}
	p, err := startDetached(rec, lab.l.log(node), inNetns(lab.n.netns(node), st.Tandem,
		"--config", lab.l.config(), "daemon", "--node", node,
		"--pid-file", lab.l.pidFile(node), "--ready-file", lab.l.readyFile(node)))
	if err != nil {
		return err
	}
	if !wait {
		return nil
	}
	deadline := time.Now().Add(readyWait)
	for {
		if _, err := os.Stat(lab.l.readyFile(node)); err == nil {
			return nil
		}
		if !p.alive() {
			return fmt.Errorf("lab: the daemon of %s (pid %d) exited before it was ready (log %s)", node, p.PID, lab.l.log(node))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: the daemon of %s (pid %d) not ready after %v (log %s)", node, p.PID, readyWait, lab.l.log(node))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// powerOff SIGKILLs node's daemon, like a power cut, takes its link down
// (a machine without power answers nothing, not even ARP for a VIP it
// held) and records the power as off.
func (lab *Lab) powerOff(node string) error {
	unlock, err := lockNode(lab.l, node)
	if err != nil {
		return err
	}
	defer unlock()
	if err := writeAtomic(lab.l.power(node), PowerOff+"\n", 0o644); err != nil {
		return err
	}
	if err := stopRecorded(lab.l.procRecord(node), syscall.SIGKILL, 0); err != nil {
		return err
	}
	return linkPower(context.Background(), lab.n, node, false)
}

func (lab *Lab) checkNode(node string, clusterOnly bool) error {
	for _, n := range clusterNodes {
		if n == node {
			return nil
		}
	}
	if !clusterOnly && node == Client {
		return nil
	}
	want := clusterNodes
	if !clusterOnly {
		want = hosts
	}
	return fmt.Errorf("%w %q: want one of %s", ErrUnknownNode, node, strings.Join(want, ", "))
}

// Crash SIGKILLs node's daemon by its recorded PID, like a power cut: the
// node's BMC reports power off from then on.
func (lab *Lab) Crash(node string) error {
	if err := lab.checkNode(node, true); err != nil {
		return err
	}
	if _, err := lab.state(); err != nil {
		return err
	}
	return lab.powerOff(node)
}

// Restart power-cycles node: SIGKILL if its daemon runs, then start it
// and wait until it is ready. It does not wait for a resync.
func (lab *Lab) Restart(ctx context.Context, node string) error {
	if err := lab.checkNode(node, true); err != nil {
		return err
	}
	if err := lab.powerOff(node); err != nil {
		return err
	}
	return lab.powerOn(ctx, node, true)
}

// DaemonPID is the PID of node's daemon, 0 when it does not run.
func (lab *Lab) DaemonPID(node string) int {
	p, err := readProc(lab.l.procRecord(node))
	if err != nil || !p.alive() {
		return 0
	}
	return p.PID
}

// Isolate drops every frame to and from node (alpha, bravo, witness or
// client) at its bridge port, the BMC network included.
func (lab *Lab) Isolate(ctx context.Context, node string) error {
	if err := lab.checkNode(node, false); err != nil {
		return err
	}
	return lab.changeFaults(ctx, func(f *faults) { f.Isolated = append(f.Isolated, node) })
}

// Cut drops the frames between a and b only.
func (lab *Lab) Cut(ctx context.Context, a, b string) error {
	for _, n := range []string{a, b} {
		if err := lab.checkNode(n, false); err != nil {
			return err
		}
	}
	if a == b {
		return fmt.Errorf("lab: cut %s %s: name two different nodes", a, b)
	}
	return lab.changeFaults(ctx, func(f *faults) { f.Cuts = append(f.Cuts, [2]string{a, b}) })
}

// Heal removes every isolation and cut.
func (lab *Lab) Heal(ctx context.Context) error {
	return lab.changeFaults(ctx, func(f *faults) { *f = faults{} })
}

func (lab *Lab) changeFaults(ctx context.Context, change func(*faults)) error {
	if _, err := lab.state(); err != nil {
		return err
	}
	unlock, err := lockNode(lab.l, "faults")
	if err != nil {
		return err
	}
	defer unlock()
	f, err := readFaults(lab.l.faults())
	if err != nil {
		return err
	}
	change(&f)
	f.normalize()
	if err := applyFaults(ctx, lab.n, f); err != nil {
		return err
	}
	return writeFaults(lab.l.faults(), f)
}

// Down removes everything the lab made: its processes (by recorded PID,
// then whatever still runs in its namespaces), its namespaces with their
// links, and its files. It is idempotent and works on the remains of a
// partial Up or of a crashed run.
func (lab *Lab) Down(ctx context.Context) error {
	if err := RequireRoot(); err != nil {
		return err
	}
	var errs []error
	for _, rec := range lab.PIDRecords() {
		if err := stopRecorded(rec, syscall.SIGKILL, 0); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeNetns(ctx, lab.n); err != nil {
		errs = append(errs, err)
	}
	for _, p := range lab.l.made() {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("lab: %w", err))
		}
	}
	if err := os.Remove(lab.l.dir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		errs = append(errs, fmt.Errorf("lab: %w", err))
	}
	return errors.Join(errs...)
}

// logTails is the end of every log, for an error message.
func (lab *Lab) logTails() string {
	var b strings.Builder
	ents, _ := os.ReadDir(lab.l.logs())
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(lab.l.logs(), e.Name()))
		if err != nil || len(data) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 8 {
			lines = lines[len(lines)-8:]
		}
		fmt.Fprintf(&b, "--- %s (last lines) ---\n%s\n", e.Name(), strings.Join(lines, "\n"))
	}
	return b.String()
}

// client is the admin API client of node's daemon.
func (lab *Lab) client(node string) *daemon.Client {
	return daemon.NewClient(lab.l.adminSocket(node), node)
}
