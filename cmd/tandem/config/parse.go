package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/tandem-ha/tandem/replicate/md"
)

// The keys each level of the file may hold. Anything else is an error: a
// misspelt optional key would otherwise silently leave its default in force.
var (
	topKeys      = []string{"cluster", "secret-file", "accept-secret-files", "nodes", "resources", "timing", "alerts"}
	nodeKeys     = []string{"name", "address", "admin-socket", "data-dir", "fencing", "gossip", "authority", "metrics-listen", "metrics-tls"}
	resourceKeys = []string{"name", "size", "protocol", "compression", "bitmap-granularity", "al-extents",
		"resync", "split-brain", "on-no-quorum", "tls", "preferred-primary", "failback", "replicas", "vip"}
	resyncKeys  = []string{"max-rate", "app-share", "checksum"}
	tlsKeys     = []string{"cert", "key", "ca"}
	replicaKeys = []string{"device", "meta", "address", "nbd-listen", "vip-interface"}
)

// keyHome says where a key belongs, for the hint on a key put at the wrong level.
var keyHome = func() map[string]string {
	m := map[string]string{}
	for _, s := range []struct {
		where string
		keys  []string
	}{
		{"nodes[N].fencing[M]", fenceKeys}, // first: keys shared with other levels point there
		{"resources[N].replicas.NODE", replicaKeys},
		{"resources[N].tls", tlsKeys},
		{"resources[N].vip", vipKeys},
		{"resources[N].resync", resyncKeys},
		{"timing", timingKeys},
		{"alerts[N]", alertKeys},
		{"resources[N]", resourceKeys},
		{"nodes[N]", nodeKeys},
		{"the top level", topKeys},
	} {
		for _, k := range s.keys {
			m[k] = s.where
		}
	}
	return m
}()

// Values the enumerated keys accept.
var (
	protocols    = []string{string(ProtocolA), string(ProtocolB), string(ProtocolC)}
	compressions = []string{string(CompressionOff), string(CompressionS2), string(CompressionZstd)}
	splitBrains  = []string{string(SplitBrainDisconnect), string(SplitBrainDiscardZeroChanges), string(SplitBrainDiscardYoungerPrimary),
		string(SplitBrainDiscardOlderPrimary), string(SplitBrainDiscardLeastChanges), SplitBrainDiscardNodePrefix + "NODE"}
	noQuorums = []string{string(OnNoQuorumSuspendIO), string(OnNoQuorumIOError)}
	failbacks = []string{string(FailbackManual), string(FailbackAuto)}
)

// Bounds that replicate/md enforces on its layout: one activity-log
// transaction block holds at most md.MaxHotExtentsLimit extent numbers.
const (
	maxALExtents         = md.MaxHotExtentsLimit
	maxBitmapGranularity = 1 << 30
)

// label is a DNS label: what node, cluster and resource names must look like,
// because they end up in host names, file names, socket names and NBD export
// names.
var label = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

const labelFix = "use 1 to 63 lowercase letters, digits or '-', not starting or ending with '-'"

// Load reads and checks the configuration file at path. Every problem the
// file has on its own (syntax, unknown or missing keys, bad values, names
// used twice, resources sharing a device or a port) is reported at once, each
// naming path:line and the fix; the Config is nil then. Problems that depend
// on the machine (devices, the secret file) are Validate's.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: reading %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse is Load for a file already in memory; name is used in problems.
func Parse(name string, data []byte) (*Config, error) {
	d := &decoder{problems: problems{file: name}}
	cfg := d.document(data)
	if cfg == nil {
		return nil, d.err()
	}
	cfg.Path = name
	cfg.parsed = true
	cfg.check(&d.problems)
	if err := d.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

type decoder struct {
	problems
}

func (d *decoder) document(data []byte) *Config {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			d.add(0, "", "the file is empty", "start from the example in docs/configuration.md")
			return nil
		}
		d.syntax(err)
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		d.add(extra.Line, "", "a second YAML document (after ---)", "keep the whole configuration in one document")
		return nil
	} else if !errors.Is(err, io.EOF) {
		d.syntax(err)
		return nil
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			d.add(0, "", "the file is empty", "start from the example in docs/configuration.md")
			return nil
		}
		doc = doc.Content[0]
	}
	if doc.Kind == yaml.ScalarNode && doc.ShortTag() == "!!null" {
		d.add(0, "", "the file is empty", "start from the example in docs/configuration.md")
		return nil
	}
	return d.config(doc)
}

// yamlLine pulls the line out of yaml.v3's "yaml: line 7: ..." messages, so
// syntax errors read like every other problem.
var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

func (d *decoder) syntax(err error) {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for _, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		line := 0
		if sm := yamlLine.FindStringSubmatch(m); sm != nil {
			line, _ = strconv.Atoi(sm[1])
			m = sm[2]
		}
		// yaml.v3 reports the line where the enclosing block starts, not
		// always the line of the mistake: say so rather than mislead.
		d.add(line, "", "YAML syntax: "+m+" (on this line or in the lines below it)",
			"fix the indentation or quoting (tabs are not allowed for indentation)")
	}
}

func (d *decoder) config(doc *yaml.Node) *Config {
	cfg := &Config{lines: lines{}}
	f, ok := d.mapping(doc, "", topKeys, cfg.lines)
	if !ok {
		return nil
	}
	d.required(deref(doc).Line, "", f, map[string]string{
		"cluster":     "add cluster: NAME (the same on every node)",
		"secret-file": "add secret-file: /etc/tandem/secret (a file with the shared secret)",
		"nodes":       "add a nodes: list with every member (name and address)",
	})
	if e, ok := f["cluster"]; ok {
		cfg.Cluster = d.name(e, "cluster")
	}
	if e, ok := f["secret-file"]; ok {
		cfg.SecretFile = d.absPath(e, "secret-file")
	}
	if e, ok := f["accept-secret-files"]; ok {
		items, _ := d.sequence(e, "accept-secret-files")
		for i, n := range items {
			p := fmt.Sprintf("accept-secret-files[%d]", i)
			if s := d.absPath(entry{key: e.key, val: n}, p); s != "" {
				cfg.AcceptSecretFiles = append(cfg.AcceptSecretFiles, s)
			}
		}
	}
	if e, ok := f["nodes"]; ok {
		items, _ := d.sequence(e, "nodes")
		for i, n := range items {
			cfg.Nodes = append(cfg.Nodes, d.node(n, fmt.Sprintf("nodes[%d]", i)))
		}
		if len(items) == 0 && e.val.Kind == yaml.SequenceNode {
			d.add(e.key.Line, "nodes", "no nodes", "list every member of the cluster with its name and address")
		}
	}
	if e, ok := f["timing"]; ok {
		cfg.Timing = d.timing(e, "timing")
	}
	if e, ok := f["alerts"]; ok {
		cfg.Alerts = d.alerts(e, "alerts")
	}
	if e, ok := f["resources"]; ok {
		items, _ := d.sequence(e, "resources")
		for i, n := range items {
			cfg.Resources = append(cfg.Resources, d.resource(n, fmt.Sprintf("resources[%d]", i)))
		}
	}
	// A replica's NBD address defaults to its node's address, known only now.
	for ri := range cfg.Resources {
		for pi := range cfg.Resources[ri].Replicas {
			rp := &cfg.Resources[ri].Replicas[pi]
			if rp.NBDListen != "" {
				continue
			}
			for _, n := range cfg.Nodes {
				if n.Name == rp.Node && n.Address != "" {
					rp.NBDListen = defaultNBDListen(n.Address)
				}
			}
		}
	}
	return cfg
}

func (d *decoder) node(n *yaml.Node, path string) Node {
	nd := Node{lines: lines{}}
	f, ok := d.mapping(n, path, nodeKeys, nd.lines)
	if !ok {
		return nd
	}
	d.required(deref(n).Line, path, f, map[string]string{
		"name":    "add name: NAME (its host name, unless the daemon runs with --node)",
		"address": "add address: HOST (the node's host name or IP address)",
	})
	if e, ok := f["name"]; ok {
		nd.Name = d.name(e, path+".name")
	}
	if e, ok := f["address"]; ok {
		nd.Address = d.host(e, path+".address")
	}
	if e, ok := f["admin-socket"]; ok {
		nd.AdminSocket = d.absPath(e, path+".admin-socket")
	} else if nd.Name != "" {
		nd.AdminSocket = "/run/tandem/" + nd.Name + ".sock"
	}
	if e, ok := f["data-dir"]; ok {
		nd.DataDir = d.absPath(e, path+".data-dir")
	} else if nd.Name != "" {
		nd.DataDir = "/var/lib/tandem/" + nd.Name
	}
	if e, ok := f["fencing"]; ok {
		nd.Fencing = d.fencing(e, path+".fencing") // fencing.go
	}
	if e, ok := f["gossip"]; ok {
		nd.Gossip = d.hostPort(e, path+".gossip") // clusterlayer.go
	}
	if e, ok := f["authority"]; ok {
		nd.Authority = d.hostPort(e, path+".authority")
	}
	if e, ok := f["metrics-listen"]; ok {
		nd.MetricsListen = d.tcpListen(e, path+".metrics-listen")
	}
	if e, ok := f["metrics-tls"]; ok {
		nd.MetricsTLS = d.tlsBlock(e, path+".metrics-tls", map[string]string{
			"cert": "add cert: /path/to/metrics-cert.pem (the certificate the metrics listener presents, PEM)",
			"key":  "add key: /path/to/metrics-key.pem (its private key, PEM)",
		})
	}
	return nd
}

func (d *decoder) resource(n *yaml.Node, path string) Resource {
	r := Resource{
		Protocol:          DefaultProtocol,
		Compression:       DefaultCompression,
		BitmapGranularity: DefaultBitmapGranularity,
		ALExtents:         DefaultALExtents,
		Resync:            Resync{MaxRate: DefaultResyncMaxRate, AppShare: DefaultResyncAppShare},
		SplitBrain:        DefaultSplitBrain,
		OnNoQuorum:        DefaultOnNoQuorum,
		Failback:          DefaultFailback,
		lines:             lines{},
	}
	f, ok := d.mapping(n, path, resourceKeys, r.lines)
	if !ok {
		return r
	}
	d.required(deref(n).Line, path, f, map[string]string{
		"name":     "add name: NAME (also the NBD export name)",
		"size":     "add size: SIZE (e.g. 10G: the bytes the resource exports)",
		"replicas": "add replicas: with exactly two data nodes, each with device and address",
	})
	if e, ok := f["name"]; ok {
		r.Name = d.name(e, path+".name")
	}
	if e, ok := f["size"]; ok {
		p := path + ".size"
		if s, ok := d.scalar(e, p); ok {
			n, err := ParseSize(s)
			switch {
			case err != nil:
				d.add(e.val.Line, p, err.Error(), "write the bytes the resource exports, e.g. 10G or 1T")
			case n%4096 != 0:
				d.add(e.val.Line, p, fmt.Sprintf("%d bytes is not a multiple of 4 KiB", n),
					fmt.Sprintf("use %d (rounded down) or a size in K, M, G or T", n&^4095))
			default:
				r.Size = n
			}
		}
	}
	if e, ok := f["protocol"]; ok {
		if v, ok := d.enum(e, path+".protocol", protocols, "A acks after the local write, B after the peer received, C after the peer wrote"); ok {
			r.Protocol = Protocol(v)
		}
	}
	if e, ok := f["compression"]; ok {
		if v, ok := d.enum(e, path+".compression", compressions, ""); ok {
			r.Compression = Compression(v)
		}
	}
	if e, ok := f["bitmap-granularity"]; ok {
		p := path + ".bitmap-granularity"
		if s, ok := d.scalar(e, p); ok {
			n, err := ParseSize(s)
			switch {
			case err != nil:
				d.add(e.val.Line, p, err.Error(), "write a power of two from 4K to 1G, e.g. 4K or 64K")
			case n < 4096 || n > maxBitmapGranularity || bits.OnesCount64(uint64(n)) != 1:
				d.add(e.val.Line, p, fmt.Sprintf("%s is not a power of two from 4K to 1G", s), "use 4K, 8K, 16K, 32K, 64K, ...")
			default:
				r.BitmapGranularity = n
			}
		}
	}
	if e, ok := f["al-extents"]; ok {
		p := path + ".al-extents"
		if s, ok := d.scalar(e, p); ok {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > maxALExtents {
				d.add(e.val.Line, p, fmt.Sprintf("%q is not a whole number from 1 to %d", s, maxALExtents),
					fmt.Sprintf("use a number from 1 to %d (default %d: one activity-log block holds at most that many)", maxALExtents, DefaultALExtents))
			} else {
				r.ALExtents = n
			}
		}
	}
	if e, ok := f["resync"]; ok {
		d.resync(e, path+".resync", &r.Resync)
	}
	if e, ok := f["split-brain"]; ok {
		// discard-node-NAME is checked against the replicas by Validate.
		if v, ok := d.scalar(e, path+".split-brain"); ok && validSplitBrain(SplitBrain(v)) {
			r.SplitBrain = SplitBrain(v)
		} else if v, ok := d.enum(e, path+".split-brain", splitBrains, "NODE is one of the resource's replicas"); ok {
			r.SplitBrain = SplitBrain(v)
		}
	}
	if e, ok := f["on-no-quorum"]; ok {
		if v, ok := d.enum(e, path+".on-no-quorum", noQuorums, ""); ok {
			r.OnNoQuorum = OnNoQuorum(v)
		}
	}
	if e, ok := f["tls"]; ok {
		r.TLS = d.tls(e, path+".tls")
	}
	if e, ok := f["preferred-primary"]; ok {
		r.PreferredPrimary = d.name(e, path+".preferred-primary")
	}
	if e, ok := f["failback"]; ok {
		if v, ok := d.enum(e, path+".failback", failbacks, ""); ok {
			r.Failback = Failback(v)
		}
	}
	if e, ok := f["replicas"]; ok {
		r.Replicas = d.replicas(e, path+".replicas")
	}
	if e, ok := f["vip"]; ok {
		r.VIP = d.vip(e, path+".vip")
	}
	return r
}

func (d *decoder) resync(e entry, path string, rs *Resync) {
	f, ok := d.mapping(e.val, path, resyncKeys, nil)
	if !ok {
		return
	}
	if e, ok := f["max-rate"]; ok {
		p := path + ".max-rate"
		if s, ok := d.scalar(e, p); ok {
			n, err := ParseSize(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
			if err != nil {
				d.add(e.val.Line, p, err.Error(), `write bytes per second, e.g. "100M" or "1G/s"`)
			} else {
				rs.MaxRate = n
			}
		}
	}
	if e, ok := f["app-share"]; ok {
		p := path + ".app-share"
		if s, ok := d.scalar(e, p); ok {
			v, err := strconv.ParseFloat(s, 64)
			// Written as !(in range) so that NaN is refused too.
			if err != nil || !(v >= 0 && v <= 1) {
				d.add(e.val.Line, p, fmt.Sprintf("%q is not a number from 0 to 1", s),
					"write the share of the bandwidth applications keep during a resync, e.g. 0.5")
			} else {
				rs.AppShare = v
			}
		}
	}
	if e, ok := f["checksum"]; ok {
		p := path + ".checksum"
		if s, ok := d.scalar(e, p); ok {
			switch strings.ToLower(s) {
			case "true":
				rs.Checksum = true
			case "false":
				rs.Checksum = false
			default:
				d.add(e.val.Line, p, fmt.Sprintf("%q is not true or false", s), "write checksum: true or checksum: false")
			}
		}
	}
}

func (d *decoder) tls(e entry, path string) *TLS {
	return d.tlsBlock(e, path, map[string]string{
		"cert": "add cert: /path/to/node-cert.pem (this node's certificate, PEM)",
		"key":  "add key: /path/to/node-key.pem (its private key, PEM)",
		"ca":   "add ca: /path/to/ca.pem (the CA that signed both nodes' certificates)",
	})
}

// tlsBlock reads a cert/key/ca mapping; required names the keys that must
// be there, with the hint for each.
func (d *decoder) tlsBlock(e entry, path string, required map[string]string) *TLS {
	f, ok := d.mapping(e.val, path, tlsKeys, nil)
	if !ok {
		return nil
	}
	d.required(e.key.Line, path, f, required)
	t := &TLS{}
	if e, ok := f["cert"]; ok {
		t.Cert = d.absPath(e, path+".cert")
	}
	if e, ok := f["key"]; ok {
		t.Key = d.absPath(e, path+".key")
	}
	if e, ok := f["ca"]; ok {
		t.CA = d.absPath(e, path+".ca")
	}
	return t
}

func (d *decoder) replicas(e entry, path string) []Replica {
	n := deref(e.val)
	if n.Kind != yaml.MappingNode {
		d.add(n.Line, path, "want a mapping from node name to replica, found "+describe(n),
			"write it as NODE: {device: ..., address: ...}, one key per data node")
		return nil
	}
	out := []Replica{} // not nil: "replicas: {}" is a resource with no replicas
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		name := k.Value
		p := path + "." + name
		if first, dup := seen[name]; dup {
			d.add(k.Line, p, fmt.Sprintf("node %q given twice (first on line %d)", name, first), "a node holds at most one replica of a resource: remove one")
			continue
		}
		seen[name] = k.Line
		rp := Replica{Node: name, Meta: DefaultMeta, lines: lines{"": k.Line}}
		f, ok := d.mapping(v, p, replicaKeys, rp.lines)
		rp.lines[""] = k.Line
		if !ok {
			out = append(out, rp)
			continue
		}
		d.required(k.Line, p, f, map[string]string{
			"device":  "add device: /dev/... or a file path (the backing store on " + name + ")",
			"address": "add address: HOST:PORT (where " + name + " listens for the replication link)",
		})
		if e, ok := f["device"]; ok {
			rp.Device = d.absPath(e, p+".device")
		}
		if e, ok := f["meta"]; ok {
			if s, ok := d.scalar(e, p+".meta"); ok {
				if s == MetaInternal {
					rp.Meta = s
				} else {
					rp.Meta = d.absPath(e, p+".meta")
				}
			}
		}
		if e, ok := f["address"]; ok {
			rp.Address = d.hostPort(e, p+".address")
		}
		if e, ok := f["nbd-listen"]; ok {
			rp.NBDListen = d.listen(e, p+".nbd-listen")
		}
		if e, ok := f["vip-interface"]; ok {
			rp.VIPInterface = d.interfaceName(e, p+".vip-interface")
		}
		out = append(out, rp)
	}
	return out
}

// entry is one key of a mapping with its value.
type entry struct{ key, val *yaml.Node }

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

// mapping reads the keys of a mapping, reporting unknown and repeated ones,
// and records each key's line in ls (if not nil).
func (d *decoder) mapping(n *yaml.Node, path string, known []string, ls lines) (map[string]entry, bool) {
	n = deref(n)
	if ls != nil {
		ls[""] = n.Line
	}
	if n.Kind != yaml.MappingNode {
		where := path
		if where == "" {
			where = "the top level"
		}
		d.add(n.Line, path, "want a mapping of keys, found "+describe(n),
			fmt.Sprintf("write %s as indented key: value lines (keys: %s)", where, strings.Join(known, ", ")))
		return nil, false
	}
	out := map[string]entry{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		key := k.Value
		p := joinPath(path, key)
		if !slices.Contains(known, key) {
			d.unknownKey(k, p, key, known)
			continue
		}
		if prev, dup := out[key]; dup {
			d.add(k.Line, p, fmt.Sprintf("key %q given twice (first on line %d)", key, prev.key.Line), "remove one of them")
			continue
		}
		out[key] = entry{k, v}
		if ls != nil {
			ls[key] = k.Line
		}
	}
	return out, true
}

func (d *decoder) unknownKey(k *yaml.Node, path, key string, known []string) {
	msg := fmt.Sprintf("unknown key %q", key)
	switch s := suggest(key, known); {
	case s != "":
		d.add(k.Line, path, msg, fmt.Sprintf("did you mean %q?", s))
	case key == "<<":
		d.add(k.Line, path, "YAML merge keys (<<) are not supported", "write the keys out in full")
	case keyHome[key] != "":
		d.add(k.Line, path, msg+" here", fmt.Sprintf("%q belongs in %s: move it there", key, keyHome[key]))
	default:
		d.add(k.Line, path, msg, "remove it (keys here: "+strings.Join(known, ", ")+")")
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// required reports each missing key at line: where the mapping starts, or
// the key that holds it (a replica's node name), whichever an admin looks at.
func (d *decoder) required(line int, path string, f map[string]entry, fixes map[string]string) {
	keys := make([]string, 0, len(fixes))
	for k := range fixes {
		keys = append(keys, k)
	}
	for _, k := range sortedCopy(keys) {
		if _, ok := f[k]; !ok {
			where := path
			if where == "" {
				where = "top level"
			}
			d.add(line, where, fmt.Sprintf("missing key %q", k), fixes[k])
		}
	}
}

func (d *decoder) sequence(e entry, path string) ([]*yaml.Node, bool) {
	n := deref(e.val)
	if n.Kind != yaml.SequenceNode {
		d.add(n.Line, path, "want a list, found "+describe(n), "write each item on its own line starting with '- '")
		return nil, false
	}
	return n.Content, true
}

// scalar returns a plain value; lists, mappings and empty values are problems.
func (d *decoder) scalar(e entry, path string) (string, bool) {
	n := deref(e.val)
	if n.Kind != yaml.ScalarNode {
		d.add(n.Line, path, "want a single value, found "+describe(n), "write it on the same line as the key")
		return "", false
	}
	if n.ShortTag() == "!!null" {
		d.add(e.key.Line, path, "no value", "write a value after the colon, or remove the key to get its default")
		return "", false
	}
	return n.Value, true
}

func (d *decoder) name(e entry, path string) string {
	s, ok := d.scalar(e, path)
	if !ok {
		return ""
	}
	if !label.MatchString(s) {
		d.add(e.val.Line, path, fmt.Sprintf("%q is not a valid name", s), labelFix)
		return ""
	}
	return s
}

func (d *decoder) enum(e entry, path string, allowed []string, meaning string) (string, bool) {
	s, ok := d.scalar(e, path)
	if !ok {
		return "", false
	}
	if slices.Contains(allowed, s) {
		return s, true
	}
	fix := "use " + quoteList(allowed)
	if g := suggest(s, allowed); g != "" {
		fix = fmt.Sprintf("did you mean %q? (allowed: %s)", g, quoteList(allowed))
	}
	if meaning != "" {
		fix += "; " + meaning
	}
	d.add(e.val.Line, path, fmt.Sprintf("%q is not allowed", s), fix)
	return "", false
}

func (d *decoder) absPath(e entry, path string) string {
	s, ok := d.scalar(e, path)
	if !ok {
		return ""
	}
	// Relative paths would depend on the directory the daemon starts in, and
	// the file must mean the same thing on every node: refuse them.
	if !filepath.IsAbs(s) {
		d.add(e.val.Line, path, fmt.Sprintf("%q is not an absolute path", s), "write the full path, starting with /")
		return ""
	}
	return filepath.Clean(s)
}

// host accepts a host name or an IP address, without a port.
func (d *decoder) host(e entry, path string) string {
	s, ok := d.scalar(e, path)
	if !ok {
		return ""
	}
	if err := checkHost(s); err != nil {
		d.add(e.val.Line, path, fmt.Sprintf("%q: %v", s, err), "write a host name or IP address only: ports belong in each replica's address and nbd-listen")
		return ""
	}
	return s
}

var hostLabel = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

func checkHost(s string) error {
	if net.ParseIP(s) != nil {
		return nil
	}
	if strings.HasPrefix(s, "[") {
		return errors.New("IPv6 addresses go without brackets here")
	}
	if _, _, err := net.SplitHostPort(s); err == nil {
		return errors.New("has a port")
	}
	name := strings.TrimSuffix(s, ".")
	if name == "" || len(name) > 253 {
		return errors.New("not a host name or IP address")
	}
	for _, l := range strings.Split(name, ".") {
		if !hostLabel.MatchString(l) {
			return errors.New("not a host name or IP address")
		}
	}
	return nil
}

// hostPort accepts HOST:PORT that a peer can dial: a concrete host (no
// wildcard, since the other node connects to it) and a fixed port.
func (d *decoder) hostPort(e entry, path string) string {
	return d.hostPortOf(e, path, false, "write HOST:PORT that the peer can reach, e.g. 192.0.2.10:7789 or [2001:db8::10]:7789")
}

// tcpListen accepts [HOST]:PORT to listen on; an empty or wildcard host
// listens on every interface.
func (d *decoder) tcpListen(e entry, path string) string {
	return d.hostPortOf(e, path, true, "write HOST:PORT, e.g. 192.0.2.10:9110 (a management address), or :9110 for every interface")
}

func (d *decoder) hostPortOf(e entry, path string, wildcard bool, fix string) string {
	s, ok := d.scalar(e, path)
	if !ok {
		return ""
	}
	host, port, err := net.SplitHostPort(s)
	anywhere := host == "" || isWildcard(host)
	switch {
	case err != nil:
		d.add(e.val.Line, path, fmt.Sprintf("%q is not HOST:PORT", s), fix)
		return ""
	case anywhere && !wildcard:
		d.add(e.val.Line, path, fmt.Sprintf("%q listens everywhere, but the peer needs an address to dial", s), fix)
		return ""
	case !anywhere && checkHost(host) != nil:
		d.add(e.val.Line, path, fmt.Sprintf("%q: %q is not a host name or IP address", s, host), fix)
		return ""
	case !validPort(port):
		d.add(e.val.Line, path, fmt.Sprintf("%q: port %q is not a number from 1 to 65535", s, port), fix)
		return ""
	}
	return s
}

// listen accepts what nbd.Listen does: unix:/path, or HOST:PORT where HOST
// may be empty or a wildcard (clients find the server by the node address or
// the VIP).
func (d *decoder) listen(e entry, path string) string {
	s, ok := d.scalar(e, path)
	if !ok {
		return ""
	}
	const fix = "write HOST:PORT (e.g. 0.0.0.0:10809) or unix:/absolute/path.sock"
	if sock, ok := strings.CutPrefix(s, "unix:"); ok {
		if !filepath.IsAbs(sock) {
			d.add(e.val.Line, path, fmt.Sprintf("%q: the socket path is not absolute", s), fix)
			return ""
		}
		return "unix:" + filepath.Clean(sock)
	}
	host, port, err := net.SplitHostPort(s)
	switch {
	case err != nil:
		d.add(e.val.Line, path, fmt.Sprintf("%q is not HOST:PORT or unix:/path", s), fix)
		return ""
	case host != "" && checkHost(host) != nil:
		d.add(e.val.Line, path, fmt.Sprintf("%q: %q is not a host name or IP address", s, host), fix)
		return ""
	case !validPort(port):
		d.add(e.val.Line, path, fmt.Sprintf("%q: port %q is not a number from 1 to 65535", s, port), fix)
		return ""
	}
	return s
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}

func isWildcard(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}
