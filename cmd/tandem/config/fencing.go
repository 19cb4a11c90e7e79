package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tandem-ha/tandem/fence"
)

// FenceType is how a fencing level reaches the node.
type FenceType string

const (
	FenceIPMI   FenceType = "ipmi"   // the node's BMC, IPMI over LAN
	FenceAgent  FenceType = "agent"  // a fence-agents compatible program
	FenceManual FenceType = "manual" // an operator's `tandem fence confirm`
)

// FenceLevel is one entry of a node's fencing list: a way to switch that
// node off. Levels are tried in order; the first that confirms wins.
type FenceLevel struct {
	Type FenceType
	// Timeout bounds one action through this level; for manual, how long
	// it waits for an operator's confirmation (0: it only looks).
	Timeout time.Duration

	// ipmi
	Address     string // BMC host or IP
	Port        int
	Username    string
	CipherSuite int
	Privilege   string
	Interface   string
	Retries     int

	// ipmi and agent: the file holding the password (read at each use).
	PasswordFile string

	// agent
	Agent   string            // absolute path of the program
	Options map[string]string // key=value lines for its stdin
	Plug    string            // plug=, "" for none

	lines lines
}

// Defaults of the fencing keys (docs/configuration.md lists the same).
const (
	DefaultFenceIPMITimeout   = fence.DefaultIPMITimeout
	DefaultFenceAgentTimeout  = fence.DefaultAgentTimeout
	DefaultFenceManualTimeout = 0
	DefaultFenceIPMIRetries   = fence.DefaultIPMIRetries
	maxFenceTimeout           = 10 * time.Minute
	maxManualWait             = 24 * time.Hour
	maxFenceRetries           = 10
)

var (
	fenceTypes    = []string{string(FenceIPMI), string(FenceAgent), string(FenceManual)}
	ipmiOnlyKeys  = []string{"address", "port", "username", "cipher-suite", "privilege", "interface", "retries"}
	agentOnlyKeys = []string{"agent", "options", "plug"}
	// fenceKeys are the keys of nodes[N].fencing[M], of every type.
	fenceKeys = append(append([]string{"type", "timeout", "password-file"}, ipmiOnlyKeys...), agentOnlyKeys...)
	// fenceTypeKeys says which keys each type takes.
	fenceTypeKeys = map[FenceType][]string{
		FenceIPMI:   append([]string{"type", "timeout", "password-file"}, ipmiOnlyKeys...),
		FenceAgent:  append([]string{"type", "timeout", "password-file"}, agentOnlyKeys...),
		FenceManual: {"type", "timeout"},
	}
	privileges     = []string{fence.PrivilegeAdministrator, fence.PrivilegeOperator}
	ipmiInterfaces = []string{fence.InterfaceLanplus, fence.InterfaceLan}
)

// fencing reads nodes[N].fencing: a list of levels.
func (d *decoder) fencing(e entry, path string) []FenceLevel {
	items, ok := d.sequence(e, path)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.add(e.key.Line, path, "no levels", "list at least one level (type: ipmi, agent or manual), or remove the key")
		return nil
	}
	out := make([]FenceLevel, 0, len(items))
	manualAt := 0
	for i, n := range items {
		p := fmt.Sprintf("%s[%d]", path, i)
		l := d.fenceLevel(n, p)
		if l.Type == FenceManual {
			if manualAt != 0 {
				d.add(l.lines.at("type"), p+".type", fmt.Sprintf("a second manual level (the first is on line %d)", manualAt),
					"keep one manual level: a confirmation counts for all of them")
			} else {
				manualAt = l.lines.at("type")
			}
		}
		out = append(out, l)
	}
	return out
}

func (d *decoder) fenceLevel(n *yaml.Node, path string) FenceLevel {
	l := FenceLevel{lines: lines{}}
	f, ok := d.mapping(n, path, fenceKeys, l.lines)
	if !ok {
		return l
	}
	line := deref(n).Line
	d.required(line, path, f, map[string]string{
		"type": "add type: ipmi, agent or manual",
	})
	if e, ok := f["type"]; ok {
		if v, ok := d.enum(e, path+".type", fenceTypes, "ipmi: the node's BMC; agent: a fence-agents program; manual: an operator's confirmation"); ok {
			l.Type = FenceType(v)
		}
	}
	if l.Type == "" {
		return l // keys cannot be judged without a type
	}
	allowed := fenceTypeKeys[l.Type]
	var keys []string
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if slices.Contains(allowed, k) {
			continue
		}
		owner := FenceIPMI
		if slices.Contains(agentOnlyKeys, k) {
			owner = FenceAgent
		}
		fix := fmt.Sprintf("remove it: it is a key of type %s levels", owner)
		if k == "password-file" {
			fix = "remove it: a manual level has no device to log in to"
		}
		d.add(f[k].key.Line, path+"."+k, fmt.Sprintf("%q does not apply to a %s level", k, l.Type), fix)
		delete(f, k)
	}

	switch l.Type {
	case FenceIPMI:
		l.Port, l.CipherSuite = fence.DefaultIPMIPort, fence.DefaultIPMICipherSuite
		l.Privilege, l.Interface = fence.PrivilegeAdministrator, fence.InterfaceLanplus
		l.Timeout, l.Retries = DefaultFenceIPMITimeout, DefaultFenceIPMIRetries
		d.required(line, path, f, map[string]string{
			"address":       "add address: HOST (the BMC's host name or IP address)",
			"username":      "add username: NAME (a BMC user with operator or administrator privilege)",
			"password-file": "add password-file: /etc/tandem/NODE-bmc.password (a file holding the BMC password, chmod 600)",
		})
		if e, ok := f["address"]; ok {
			l.Address = d.host(e, path+".address")
		}
		if e, ok := f["port"]; ok {
			l.Port = d.intRange(e, path+".port", 1, 65535, "write the BMC's UDP port (623 unless it was changed)")
		}
		if e, ok := f["username"]; ok {
			if s, ok := d.scalar(e, path+".username"); ok {
				if len(s) > 16 || strings.ContainsAny(s, "\n\r") {
					d.add(e.val.Line, path+".username", fmt.Sprintf("%q is not an IPMI user name (at most 16 characters)", s), "write the BMC user's name")
				} else {
					l.Username = s
				}
			}
		}
		if e, ok := f["cipher-suite"]; ok {
			if _, lan := f["interface"]; lan && scalarValue(f["interface"]) == fence.InterfaceLan {
				d.add(e.key.Line, path+".cipher-suite", "cipher-suite applies to interface lanplus only (IPMI 2.0)",
					"remove cipher-suite, or use interface: lanplus")
			} else {
				l.CipherSuite = d.cipherSuite(e, path+".cipher-suite")
			}
		}
		if e, ok := f["privilege"]; ok {
			if v, ok := d.enum(e, path+".privilege", privileges, "powering a node off needs at least operator"); ok {
				l.Privilege = v
			}
		}
		if e, ok := f["interface"]; ok {
			if v, ok := d.enum(e, path+".interface", ipmiInterfaces, "lanplus is IPMI 2.0 (authenticated, encrypted); lan is IPMI 1.5, for old BMCs only"); ok {
				l.Interface = v
			}
		}
		if e, ok := f["retries"]; ok {
			l.Retries = d.intRange(e, path+".retries", 0, maxFenceRetries, "write how many times a failed operation is tried again with a new session")
		}
		if e, ok := f["timeout"]; ok {
			l.Timeout = d.fenceTimeout(e, path+".timeout", time.Second, maxFenceTimeout)
		}
	case FenceAgent:
		l.Timeout = DefaultFenceAgentTimeout
		d.required(line, path, f, map[string]string{
			"agent": "add agent: /usr/sbin/fence_... (the fence agent's absolute path)",
		})
		if e, ok := f["agent"]; ok {
			l.Agent = d.absPath(e, path+".agent")
		}
		if e, ok := f["options"]; ok {
			l.Options = d.agentOptions(e, path+".options")
		}
		if e, ok := f["plug"]; ok {
			if s, ok := d.scalar(e, path+".plug"); ok {
				if strings.ContainsAny(s, "\n\r") {
					d.add(e.val.Line, path+".plug", "the plug contains a line break", "write the name the agent knows the node by (a VM name, an outlet number)")
				} else {
					l.Plug = s
				}
			}
		}
		if e, ok := f["timeout"]; ok {
			l.Timeout = d.fenceTimeout(e, path+".timeout", time.Second, maxFenceTimeout)
		}
	case FenceManual:
		l.Timeout = DefaultFenceManualTimeout
		if e, ok := f["timeout"]; ok {
			l.Timeout = d.fenceTimeout(e, path+".timeout", 0, maxManualWait)
		}
	}
	if e, ok := f["password-file"]; ok {
		l.PasswordFile = d.absPath(e, path+".password-file")
	}
	return l
}

func scalarValue(e entry) string {
	if n := deref(e.val); n != nil && n.Kind == yaml.ScalarNode {
		return n.Value
	}
	return ""
}

func (d *decoder) intRange(e entry, path string, lo, hi int, fix string) int {
	s, ok := d.scalar(e, path)
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		d.add(e.val.Line, path, fmt.Sprintf("%q is not a whole number from %d to %d", s, lo, hi), fix)
		return 0
	}
	return n
}

func (d *decoder) cipherSuite(e entry, path string) int {
	s, ok := d.scalar(e, path)
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(s)
	allowed := make([]string, len(fence.CipherSuites))
	for i, c := range fence.CipherSuites {
		allowed[i] = strconv.Itoa(c)
	}
	fix := "use 3 (HMAC-SHA1, AES-128: every IPMI 2.0 BMC has it) or 17 (HMAC-SHA256, AES-128) where the BMC offers it; allowed: " + strings.Join(allowed, ", ")
	switch {
	case err != nil:
		d.add(e.val.Line, path, fmt.Sprintf("%q is not a cipher suite number", s), fix)
	case n == 0:
		d.add(e.val.Line, path, "cipher suite 0 has no authentication: anyone on the BMC's network could power nodes off", fix)
	case slices.Contains([]int{4, 5, 9, 10, 13, 14, 18, 19}, n):
		d.add(e.val.Line, path, fmt.Sprintf("cipher suite %d encrypts with RC4, which is broken", n), fix)
	case !slices.Contains(fence.CipherSuites, n):
		d.add(e.val.Line, path, fmt.Sprintf("cipher suite %d is not supported", n), fix)
	default:
		return n
	}
	return 0
}

func (d *decoder) fenceTimeout(e entry, path string, lo, hi time.Duration) time.Duration {
	s, ok := d.scalar(e, path)
	if !ok {
		return 0
	}
	t, err := time.ParseDuration(strings.TrimSpace(s))
	switch {
	case err != nil:
		d.add(e.val.Line, path, fmt.Sprintf("%q is not a duration", s), "write a number with its unit, e.g. 20s or 2m")
	case t < lo || t > hi:
		d.add(e.val.Line, path, fmt.Sprintf("%s is not from %v to %v", s, lo, hi), "write how long one action through this level may take, e.g. 20s")
	default:
		return t
	}
	return 0
}

func (d *decoder) agentOptions(e entry, path string) map[string]string {
	n := deref(e.val)
	if n.Kind != yaml.MappingNode {
		d.add(n.Line, path, "want a mapping of option: value, found "+describe(n),
			"write each option the agent takes on its own line, e.g. ip: 192.0.2.21")
		return nil
	}
	out := map[string]string{}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		p := path + "." + k.Value
		if first, dup := seen[k.Value]; dup {
			d.add(k.Line, p, fmt.Sprintf("option %q given twice (first on line %d)", k.Value, first), "remove one of them")
			continue
		}
		seen[k.Value] = k.Line
		if v.Kind != yaml.ScalarNode {
			d.add(v.Line, p, "want a single value, found "+describe(v), "write the option's value on the same line")
			continue
		}
		val := v.Value
		if v.ShortTag() == "!!null" {
			val = "" // "key:" alone: a flag option such as ssl_insecure
		}
		if err := fence.CheckAgentOption(k.Value, val); err != nil {
			fix := "write the option as the agent's stdin key (see its man page, e.g. fence_ipmilan(8))"
			if slices.Contains([]string{"action", "plug", "port"}, k.Value) {
				fix = "remove it: tandem writes action=, and plug= from the level's plug key"
			}
			d.add(k.Line, p, err.Error(), fix)
			continue
		}
		if k.Value == "password" || k.Value == "passwd" {
			// The file is the same on every node and often readable by
			// many: the password belongs in a file of its own.
			d.add(k.Line, p, "a password in the configuration file",
				"put it in a file of its own (chmod 600) and name that file with this level's password-file key")
			continue
		}
		out[k.Value] = val
	}
	return out
}

// checkFencing: no two nodes name the same fencing device. A copied level
// whose address was not changed would make fencing one node switch off the
// other: the survivor.
func (c *Config) checkFencing(ps *problems) {
	type use struct {
		node string
		line int
	}
	seen := map[string]use{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		for j := range n.Fencing {
			l := &n.Fencing[j]
			var key, what string
			switch {
			case l.Type == FenceIPMI && l.Address != "":
				key = "ipmi\x00" + normHost(l.Address) + "\x00" + strconv.Itoa(l.Port)
				what = fmt.Sprintf("the BMC %s port %d", l.Address, l.Port)
			case l.Type == FenceAgent && l.Agent != "":
				opts := make([]string, 0, len(l.Options))
				for k, v := range l.Options {
					opts = append(opts, k+"="+v)
				}
				sort.Strings(opts)
				key = "agent\x00" + l.Agent + "\x00" + strings.Join(opts, "\n") + "\x00" + l.Plug
				what = fmt.Sprintf("agent %s with the same options and plug %q", l.Agent, l.Plug)
			default:
				continue
			}
			line := l.lines.at("")
			if first, dup := seen[key]; dup && first.node != n.Name {
				fix := "give each node its own BMC address (or port)"
				if l.Type == FenceAgent {
					fix = "set the plug (or the options) that name " + n.Name + " to the agent"
				}
				ps.add(line, fmt.Sprintf("nodes[%d].fencing[%d]", i, j),
					fmt.Sprintf("%s also fences node %s (line %d): fencing %s would switch %s off", what, first.node, first.line, n.Name, first.node), fix)
				continue
			}
			seen[key] = use{n.Name, line}
		}
	}
}

// checkLocalFencing looks, on this host, at the files it would use to fence
// the other nodes: their levels' password files and agents. A node never
// fences itself, so its own levels' files live elsewhere.
func (c *Config) checkLocalFencing(ps *problems, local string) {
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.Name == local {
			continue
		}
		for j := range n.Fencing {
			l := &n.Fencing[j]
			path := fmt.Sprintf("nodes[%d].fencing[%d]", i, j)
			if l.PasswordFile != "" {
				checkPasswordFile(ps, l.PasswordFile, l.lines.at("password-file"), path+".password-file", n.Name)
			}
			if l.Agent != "" {
				checkProgram(ps, l.Agent, l.lines.at("agent"), path+".agent",
					"install it (fence_* agents are in the Debian package fence-agents), or correct the path", "point agent at the fence agent program")
			}
		}
	}
}

func checkPasswordFile(ps *problems, file string, line int, path, node string) {
	st, err := os.Stat(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		ps.add(line, path, fmt.Sprintf("%s does not exist (this node needs it to fence %s)", file, node),
			fmt.Sprintf("write the BMC or agent password into it: printf '%%s' PASSWORD > %s && chmod 600 %s", file, file))
		return
	case err != nil:
		ps.add(line, path, err.Error(), "make it readable by the daemon (root)")
		return
	case !st.Mode().IsRegular():
		ps.add(line, path, fmt.Sprintf("%s is not a regular file", file), "point password-file at a file holding the password")
		return
	case st.Size() == 0:
		ps.add(line, path, fmt.Sprintf("%s is empty", file), "write the password into it")
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		ps.add(line, path, fmt.Sprintf("%s is readable by others than its owner (mode %04o)", file, perm),
			fmt.Sprintf("chmod 600 %s", file))
	}
}

// checkProgram checks that file is a program the daemon can run; missing
// and notRegular are the fixes for those two cases.
func checkProgram(ps *problems, file string, line int, path, missing, notRegular string) {
	st, err := os.Stat(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		ps.add(line, path, fmt.Sprintf("%s does not exist on this host", file), missing)
	case err != nil:
		ps.add(line, path, err.Error(), "make it accessible to the daemon (root)")
	case !st.Mode().IsRegular():
		ps.add(line, path, fmt.Sprintf("%s is not a regular file", file), notRegular)
	case st.Mode().Perm()&0o111 == 0:
		ps.add(line, path, fmt.Sprintf("%s is not executable (mode %04o)", file, st.Mode().Perm()), fmt.Sprintf("chmod 755 %s", file))
	}
}

// canonFence is a fencing level in the configuration hash.
type canonFence struct {
	Type         string            `json:"type"`
	TimeoutNS    int64             `json:"timeout-ns"`
	Address      string            `json:"address,omitempty"`
	Port         int               `json:"port,omitempty"`
	Username     string            `json:"username,omitempty"`
	CipherSuite  int               `json:"cipher-suite,omitempty"`
	Privilege    string            `json:"privilege,omitempty"`
	Interface    string            `json:"interface,omitempty"`
	Retries      int               `json:"retries,omitempty"`
	PasswordFile string            `json:"password-file,omitempty"`
	Agent        string            `json:"agent,omitempty"`
	Options      map[string]string `json:"options,omitempty"` // encoding/json sorts map keys
	Plug         string            `json:"plug,omitempty"`
}

func canonFencing(levels []FenceLevel) []canonFence {
	var out []canonFence
	for _, l := range levels {
		out = append(out, canonFence{string(l.Type), int64(l.Timeout), l.Address, l.Port, l.Username, l.CipherSuite,
			l.Privilege, l.Interface, l.Retries, l.PasswordFile, l.Agent, l.Options, l.Plug})
	}
	return out
}
