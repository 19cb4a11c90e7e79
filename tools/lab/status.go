package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
)

var lookPath = exec.LookPath

// Status is `tandem lab status`: the cluster seen through every daemon,
// plus what only the lab knows (PIDs, BMC power, faults in force).
type Status struct {
	Dir       string           `json:"dir"`
	Config    string           `json:"config"`
	Resources []ResourceStatus `json:"resources"`
	Nodes     []NodeStatus     `json:"nodes"`
	// Isolated and Cuts are the network faults in force.
	Isolated []string    `json:"isolated"`
	Cuts     [][2]string `json:"cuts"`
}

// ResourceStatus is one resource across the cluster.
type ResourceStatus struct {
	Name string `json:"name"`
	// Primary is the node whose daemon reports Primary, "" if none (or
	// more than one: then Primaries lists them).
	Primary   string   `json:"primary"`
	Primaries []string `json:"primaries"`
	VIP       string   `json:"vip"`
	// VIPHolder is the powered-on node whose lab interface holds the VIP,
	// "" if none.
	VIPHolder string `json:"vip_holder"`
	URI       string `json:"uri"`
}

// NodeStatus is one host of the lab.
type NodeStatus struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Netns   string `json:"netns"`
	Witness bool   `json:"witness,omitempty"`
	// Role and Disk are those of the first resource (r0), spelled as in
	// tandem status; Resources has each one. Empty when the daemon does
	// not answer, and for the witness and the client.
	Role      string         `json:"role,omitempty"`
	Disk      string         `json:"disk,omitempty"`
	Resources []NodeResource `json:"resources,omitempty"`
	PID       int            `json:"pid"`
	Power     string         `json:"power,omitempty"`
	BMC       string         `json:"bmc,omitempty"`
	Error     string         `json:"error,omitempty"`
	status    *daemon.NodeStatus
}

// NodeResource is one resource on one data node.
type NodeResource struct {
	Resource   string `json:"resource"`
	Role       string `json:"role"`
	Disk       string `json:"disk"`
	Connection string `json:"connection"`
	PeerDisk   string `json:"peer_disk"`
	OutOfSync  int64  `json:"out_of_sync_bytes"`
	Resync     string `json:"resync,omitempty"`
}

// statusWait bounds one admin request of Status.
const statusWait = 5 * time.Second

// Status gathers the lab's status. A daemon that does not answer is
// reported in its node's Error, not as an error of Status.
func (lab *Lab) Status(ctx context.Context) (*Status, error) {
	if _, err := lab.state(); err != nil {
		return nil, err
	}
	cfg, err := config.Load(lab.l.config())
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	f, err := readFaults(lab.l.faults())
	if err != nil {
		return nil, err
	}
	s := &Status{Dir: lab.l.dir, Config: lab.l.config(), Isolated: f.Isolated, Cuts: f.Cuts}
	if s.Isolated == nil {
		s.Isolated = []string{}
	}
	if s.Cuts == nil {
		s.Cuts = [][2]string{}
	}
	for _, h := range hosts {
		ns := NodeStatus{Name: h, Address: hostAddr[h].String(), Netns: lab.n.netns(h), Witness: h == Witness}
		if h != Client {
			ns.PID = lab.DaemonPID(h)
			ns.Power = readPower(lab.l, h)
		}
		if _, ok := bmcAddr[h]; ok {
			ns.BMC = fmt.Sprintf("%s:%d", bmcAddr[h], bmcPort)
			// The BMC's own answer, over IPMI, is the power state.
			if p, err := lab.bmcQuery(ctx, h); err != nil {
				ns.Power = "unknown"
				ns.Error = "bmc: " + err.Error()
			} else {
				ns.Power = p
			}
		}
		if h != Client && ns.PID != 0 {
			c, cancel := context.WithTimeout(ctx, statusWait)
			st, err := lab.client(h).Status(c, "")
			cancel()
			if err != nil {
				ns.Error = strings.TrimPrefix(ns.Error+"; ", "; ") + err.Error()
			} else {
				ns.status = &st
				for i, r := range st.Resources {
					nr := NodeResource{Resource: r.Resource, Role: string(r.Role), Disk: string(r.Disk),
						Connection: string(r.Conn), PeerDisk: string(r.PeerDisk), OutOfSync: r.OutOfSync}
					if r.Resync != nil {
						nr.Resync = fmt.Sprintf("%.1f%%", r.Resync.Percent)
					}
					if i == 0 {
						ns.Role, ns.Disk = nr.Role, nr.Disk
					}
					ns.Resources = append(ns.Resources, nr)
				}
			}
		}
		s.Nodes = append(s.Nodes, ns)
	}
	for i, r := range cfg.Resources {
		rs := ResourceStatus{Name: r.Name, VIP: VIP(i).String(), URI: URI(i), Primaries: []string{}}
		for _, n := range s.Nodes {
			for _, nr := range n.Resources {
				if nr.Resource == r.Name && nr.Role == "Primary" {
					rs.Primaries = append(rs.Primaries, n.Name)
				}
			}
		}
		if len(rs.Primaries) == 1 {
			rs.Primary = rs.Primaries[0]
		}
		for _, n := range dataNodes {
			// A node without power holds nothing: its interface keeps the
			// address it had (down) until the restart flushes it.
			if readPower(lab.l, n) != PowerOn {
				continue
			}
			if held, _ := lab.holdsAddr(ctx, n, VIP(i)); held {
				rs.VIPHolder = n
			}
		}
		s.Resources = append(s.Resources, rs)
	}
	return s, nil
}

// holdsAddr reports whether node's lab interface has addr.
func (lab *Lab) holdsAddr(ctx context.Context, node string, addr netip.Addr) (bool, error) {
	out, err := run(ctx, "", "ip", "-n", lab.n.netns(node), "-o", "addr", "show", "dev", ifName)
	if err != nil {
		return false, err
	}
	return strings.Contains(out, " "+addr.String()+"/"), nil
}

// InSync reports whether both data nodes hold all n resources, Connected
// and UpToDate on both sides, whatever their roles.
func (s *Status) InSync(n int) bool {
	for _, name := range dataNodes {
		node := s.node(name)
		if node == nil || len(node.Resources) != n {
			return false
		}
		for _, r := range node.Resources {
			if r.Connection != "Connected" || r.Disk != "UpToDate" || r.PeerDisk != "UpToDate" {
				return false
			}
		}
	}
	return true
}

// Serving reports whether each of the n resources has exactly one
// Primary, UpToDate, holding the resource's VIP, with its peer UpToDate
// and connected: the state `lab up` returns in.
func (s *Status) Serving(n int) bool {
	if len(s.Resources) != n {
		return false
	}
	for _, r := range s.Resources {
		if r.Primary == "" || r.VIPHolder != r.Primary {
			return false
		}
		p := s.node(r.Primary)
		ok := false
		for _, nr := range p.Resources {
			if nr.Resource == r.Name {
				ok = nr.Disk == "UpToDate" && nr.PeerDisk == "UpToDate" && nr.Connection == "Connected"
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func (s *Status) node(name string) *NodeStatus {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i]
		}
	}
	return nil
}

// Node is the status of one host, nil for an unknown name.
func (s *Status) Node(name string) *NodeStatus { return s.node(name) }

// Resource is the status of one resource, nil for an unknown name.
func (s *Status) Resource(name string) *ResourceStatus {
	for i := range s.Resources {
		if s.Resources[i].Name == name {
			return &s.Resources[i]
		}
	}
	return nil
}

// ErrTimeout: a WaitFor condition did not come true in time.
var ErrTimeout = errors.New("lab: timed out")

// WaitFor polls the status until cond holds, for at most limit.
func (lab *Lab) WaitFor(ctx context.Context, what string, limit time.Duration, cond func(*Status) bool) error {
	deadline := time.Now().Add(limit)
	var last *Status
	for {
		s, err := lab.Status(ctx)
		if err != nil {
			return err
		}
		if cond(s) {
			return nil
		}
		last = s
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v waiting for %s; last status:\n%s", ErrTimeout, limit, what, last.Table())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery * 4):
		}
	}
}

// Table renders the status for people.
func (s *Status) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lab %s (config %s)\n\n", s.Dir, s.Config)
	fmt.Fprintf(&b, "%-8s %-15s %-9s %-10s %-11s %-8s %-6s %s\n", "NODE", "ADDRESS", "ROLE", "DISK", "CONNECTION", "PID", "POWER", "NOTE")
	for _, n := range s.Nodes {
		role, disk, conn := n.Role, n.Disk, ""
		if len(n.Resources) > 0 {
			conn = n.Resources[0].Connection
		}
		switch {
		case n.Name == Client:
			role = "(client)"
		case n.Witness:
			role = "(witness)"
		}
		pid := "-"
		if n.PID != 0 {
			pid = fmt.Sprint(n.PID)
		} else if n.Name != Client {
			pid = "down"
		}
		dash := func(v string) string {
			if v == "" {
				return "-"
			}
			return v
		}
		fmt.Fprintf(&b, "%-8s %-15s %-9s %-10s %-11s %-8s %-6s %s\n", n.Name, n.Address, dash(role), dash(disk), dash(conn), pid, dash(n.Power), n.Error)
	}
	b.WriteString("\n")
	for _, r := range s.Resources {
		p := r.Primary
		if p == "" {
			p = "none"
			if len(r.Primaries) > 1 {
				p = "SEVERAL: " + strings.Join(r.Primaries, ", ")
			}
		}
		h := r.VIPHolder
		if h == "" {
			h = "nobody"
		}
		fmt.Fprintf(&b, "%s: primary %s, VIP %s on %s, %s\n", r.Name, p, r.VIP, h, r.URI)
	}
	if len(s.Isolated) > 0 {
		fmt.Fprintf(&b, "isolated: %s\n", strings.Join(s.Isolated, ", "))
	}
	for _, c := range s.Cuts {
		fmt.Fprintf(&b, "cut: %s <-> %s\n", c[0], c[1])
	}
	return b.String()
}

// Exec runs argv inside node's namespace with the given standard streams
// (nil: /dev/null) and returns its exit code (-1 if it could not run).
// Pass *os.File streams (a terminal) to give the command the terminal.
func (lab *Lab) Exec(ctx context.Context, node string, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if _, err := lab.Netns(node); err != nil {
		return -1, err
	}
	if len(argv) == 0 {
		return -1, fmt.Errorf("lab: exec %s: no command given", node)
	}
	if !netnsExists(lab.n.netns(node)) {
		return -1, fmt.Errorf("%w: %s (no namespace %s)", ErrNoLab, lab.l.dir, lab.n.netns(node))
	}
	full := inNetns(lab.n.netns(node), argv...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, fmt.Errorf("lab: exec in %s: %w", node, err)
	}
	return 0, nil
}
