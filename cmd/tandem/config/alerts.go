package config

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Alert is a program the daemon runs for events of its node (Pacemaker's
// alert agents, DRBD's handlers): a split brain, a failed disk, a
// failover or a fencing reaches someone even when nobody watches
// `tandem events`. Every daemon runs its alerts for its own events, so
// the program must exist on every node (Validate checks the local one).
type Alert struct {
	// Path is the program (absolute). It gets the event in TANDEM_ALERT_*
	// variables and as one JSON line on stdin.
	Path string
	// Kinds are the event kinds it wants (nil: every kind).
	Kinds []string
	// Resources limits it to events about these resources (nil: all).
	// Events about no resource (membership, quorum, the daemon) concern
	// every resource of the node and still reach it.
	Resources []string
	// Recipient is handed to the program as TANDEM_ALERT_RECIPIENT (an
	// address, a channel): one program serves several recipients.
	Recipient string
	// Timeout bounds one run; the program's process group is killed then.
	Timeout time.Duration

	lines lines
	// resLines are the lines of Resources' items.
	resLines []int
}

// DefaultAlertTimeout bounds one run of an alert program.
const DefaultAlertTimeout = 30 * time.Second

// AlertKinds are the event kinds a daemon publishes (daemon.Kind*), which
// alerts[].kinds may name.
var AlertKinds = []string{"member", "quorum", "commit", "failover", "fence", "volume", "resync", "vip", "action", "alert", "admin", "daemon"}

var (
	alertKeys     = []string{"path", "kinds", "resources", "recipient", "timeout"}
	alertTimeouts = [2]time.Duration{time.Second, 10 * time.Minute}
)

// maxRecipient bounds alerts[].recipient: it travels in an environment
// variable.
const maxRecipient = 1024

func (d *decoder) alerts(e entry, path string) []Alert {
	items, ok := d.sequence(e, path)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.add(e.key.Line, path, "no alerts", "list at least one program (path: /usr/local/sbin/tandem-alert), or remove the key")
	}
	var out []Alert
	for i, n := range items {
		out = append(out, d.alert(n, fmt.Sprintf("%s[%d]", path, i)))
	}
	return out
}

func (d *decoder) alert(n *yaml.Node, path string) Alert {
	a := Alert{Timeout: DefaultAlertTimeout, lines: lines{}}
	f, ok := d.mapping(n, path, alertKeys, a.lines)
	if !ok {
		return a
	}
	d.required(deref(n).Line, path, f, map[string]string{
		"path": "add path: /usr/local/sbin/tandem-alert (the program to run for each event)",
	})
	if e, ok := f["path"]; ok {
		a.Path = d.absPath(e, path+".path")
	}
	if e, ok := f["kinds"]; ok {
		a.Kinds, _ = d.distinctList(e, path+".kinds", "kind", "list the event kinds to pass on, or remove the key for every kind",
			func(v entry, p string) (string, bool) {
				return d.enum(v, p, AlertKinds, "see the kinds of `tandem events` in docs/operations.md")
			})
	}
	if e, ok := f["resources"]; ok {
		a.Resources, a.resLines = d.distinctList(e, path+".resources", "resource", "list the resources whose events to pass on, or remove the key for all of them",
			func(v entry, p string) (string, bool) {
				s := d.name(v, p)
				return s, s != ""
			})
	}
	if e, ok := f["recipient"]; ok {
		if s, ok := d.scalar(e, path+".recipient"); ok {
			switch {
			case strings.ContainsAny(s, "\n\r\x00"):
				d.add(e.val.Line, path+".recipient", "the recipient contains a line break or a NUL", "write it on one line")
			case len(s) > maxRecipient:
				d.add(e.val.Line, path+".recipient", fmt.Sprintf("%d bytes, more than %d", len(s), maxRecipient), "shorten it")
			default:
				a.Recipient = s
			}
		}
	}
	if e, ok := f["timeout"]; ok {
		a.Timeout = d.boundedDuration(e, path+".timeout", alertTimeouts)
	}
	return a
}

// distinctList parses a non-empty list of values, each once, with item
// parsing one; it returns them and their lines.
func (d *decoder) distinctList(e entry, path, what, emptyFix string, item func(entry, string) (string, bool)) (vals []string, at []int) {
	items, _ := d.sequence(e, path)
	if len(items) == 0 && deref(e.val).Kind == yaml.SequenceNode {
		d.add(e.key.Line, path, "no "+what+"s", emptyFix)
	}
	for j, n := range items {
		p := fmt.Sprintf("%s[%d]", path, j)
		s, ok := item(entry{key: e.key, val: n}, p)
		if !ok {
			continue
		}
		if slices.Contains(vals, s) {
			d.add(n.Line, p, fmt.Sprintf("%s %q listed twice", what, s), "remove one of them")
			continue
		}
		vals, at = append(vals, s), append(at, n.Line)
	}
	return vals, at
}

// checkAlerts finds the same program given twice for one recipient (it
// would run twice per event) and, for a Config built in code, bad fields.
func (c *Config) checkAlerts(ps *problems) {
	type key struct{ path, recipient string }
	seen := map[key]int{}
	for i, a := range c.Alerts {
		p := fmt.Sprintf("alerts[%d]", i)
		if !c.parsed {
			if !strings.HasPrefix(a.Path, "/") {
				ps.add(0, p+".path", fmt.Sprintf("%q is not an absolute path", a.Path), "set it to the program's full path")
			}
			if a.Timeout < alertTimeouts[0] || a.Timeout > alertTimeouts[1] {
				ps.add(0, p+".timeout", fmt.Sprintf("%v is not from %v to %v", a.Timeout, alertTimeouts[0], alertTimeouts[1]), "use DefaultAlertTimeout")
			}
			for _, k := range a.Kinds {
				if !slices.Contains(AlertKinds, k) {
					ps.add(0, p+".kinds", fmt.Sprintf("%q is not an event kind", k), "use "+quoteList(AlertKinds))
				}
			}
		}
		for j, r := range a.Resources {
			if c.Resource(r) == nil {
				line := a.lines.at("resources")
				if j < len(a.resLines) {
					line = a.resLines[j]
				}
				names := c.resourceNames()
				fix := "use " + quoteList(names)
				if g := suggest(r, names); g != "" {
					fix = fmt.Sprintf("did you mean %q? (resources: %s)", g, quoteList(names))
				}
				ps.add(line, fmt.Sprintf("%s.resources[%d]", p, j), fmt.Sprintf("no resource %q in this file", r), fix)
			}
		}
		if a.Path == "" {
			continue
		}
		k := key{a.Path, a.Recipient}
		if first, dup := seen[k]; dup {
			ps.add(a.lines.at("path"), p, fmt.Sprintf("%s for recipient %q is listed twice (first at alerts[%d])", a.Path, a.Recipient, first),
				"remove one of them, or give each its own recipient")
			continue
		}
		seen[k] = i
	}
}

// checkLocalAlerts looks for each alert's program on this host.
func (c *Config) checkLocalAlerts(ps *problems) {
	for i, a := range c.Alerts {
		if a.Path != "" {
			checkProgram(ps, a.Path, a.lines.at("path"), fmt.Sprintf("alerts[%d].path", i),
				"install it on every node (each daemon runs the alerts for its own events), or correct the path", "point path at the alert program")
		}
	}
}

// Wants reports whether the alert takes events of kind about resource
// ("" for an event about the node or the cluster).
func (a *Alert) Wants(kind, resource string) bool {
	if a.Kinds != nil && !slices.Contains(a.Kinds, kind) {
		return false
	}
	return resource == "" || a.Resources == nil || slices.Contains(a.Resources, resource)
}

// canonAlert is an alert in the configuration hash.
type canonAlert struct {
	Path      string   `json:"path"`
	Kinds     []string `json:"kinds,omitempty"`
	Resources []string `json:"resources,omitempty"`
	Recipient string   `json:"recipient,omitempty"`
	TimeoutNS int64    `json:"timeout-ns"`
}

func canonAlerts(as []Alert) []canonAlert {
	var out []canonAlert
	for _, a := range as {
		k := slices.Clone(a.Kinds)
		slices.Sort(k)
		r := slices.Clone(a.Resources)
		slices.Sort(r)
		out = append(out, canonAlert{a.Path, k, r, a.Recipient, int64(a.Timeout)})
	}
	return out
}
