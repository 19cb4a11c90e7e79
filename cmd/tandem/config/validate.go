package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tandem-ha/tandem/replicate/md"
)

// Validate checks everything Load checks and, if localNode is not empty, what
// only that node can see: the secret file, and for each of its replicas the
// device (exists, big enough for the data and internal metadata), the
// metadata file and the TLS files. Other nodes' files are not looked at, so
// the same file validates on every node. All problems are joined.
func (c *Config) Validate(localNode string) error {
	ps := &problems{file: c.Path}
	c.check(ps)
	if localNode != "" {
		if _, err := c.Node(localNode); err != nil {
			ps.add(0, "", fmt.Sprintf("node %q is not in the nodes list", localNode),
				"pass --node with one of: "+strings.Join(c.nodeNames(), ", "))
		} else {
			c.checkLocal(ps, localNode)
		}
	}
	return ps.err()
}

// check finds what is wrong across entries: names used twice, replicas of
// unknown nodes, resources sharing a device or a listening address.
func (c *Config) check(ps *problems) {
	if !c.parsed {
		c.checkFields(ps)
	}
	for i, f := range c.AcceptSecretFiles {
		if f == c.SecretFile {
			ps.add(c.lines.at("accept-secret-files"), fmt.Sprintf("accept-secret-files[%d]", i), fmt.Sprintf("%s is the secret-file itself", f), "list only the other secret of a rotation here")
		}
	}
	nodes := map[string]*Node{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.Name == "" {
			continue
		}
		if first, dup := nodes[n.Name]; dup {
			ps.add(n.lines.at("name"), fmt.Sprintf("nodes[%d].name", i),
				fmt.Sprintf("node %q is listed twice (first on line %d)", n.Name, first.lines.at("name")),
				"remove the second entry or give it its own name")
			continue
		}
		nodes[n.Name] = n
	}
	c.checkNodeHosts(ps)

	resources := map[string]*Resource{}
	for i := range c.Resources {
		r := &c.Resources[i]
		path := fmt.Sprintf("resources[%d]", i)
		if r.Name != "" {
			if first, dup := resources[r.Name]; dup {
				ps.add(r.lines.at("name"), path+".name",
					fmt.Sprintf("resource %q is listed twice (first on line %d)", r.Name, first.lines.at("name")),
					"remove the second entry or give it its own name")
			} else {
				resources[r.Name] = r
			}
		}
		for _, rp := range r.Replicas {
			// Without any valid node, the nodes list is the problem
			// (reported already), not each replica.
			if _, ok := nodes[rp.Node]; ok || len(nodes) == 0 {
				continue
			}
			fix := "add it to nodes, or use one of: " + strings.Join(c.nodeNames(), ", ")
			if s := suggest(rp.Node, c.nodeNames()); s != "" {
				fix = fmt.Sprintf("did you mean %q?", s)
			}
			ps.add(rp.lines.at(""), path+".replicas."+rp.Node, fmt.Sprintf("node %q is not in the nodes list", rp.Node), fix)
		}
		if r.PreferredPrimary != "" && r.Replica(r.PreferredPrimary) == nil {
			var names []string
			for _, rp := range r.Replicas {
				names = append(names, rp.Node)
			}
			ps.add(r.lines.at("preferred-primary"), path+".preferred-primary",
				fmt.Sprintf("node %q holds no replica of %s", r.PreferredPrimary, r.Name),
				"name one of its replicas' nodes ("+strings.Join(names, ", ")+") or remove the key")
		}
		if n, ok := r.SplitBrain.DiscardNode(); ok && r.Replicas != nil && r.Replica(n) == nil {
			var names []string
			for _, rp := range r.Replicas {
				names = append(names, SplitBrainDiscardNodePrefix+rp.Node)
			}
			ps.add(r.lines.at("split-brain"), path+".split-brain",
				fmt.Sprintf("node %q holds no replica of %s", n, r.Name),
				"use "+quoteList(names)+" (the node whose data a split brain discards)")
		}
		if r.Failback == FailbackAuto && r.PreferredPrimary == "" {
			ps.add(r.lines.at("failback"), path+".failback",
				fmt.Sprintf("failback: auto moves %s back to its preferred primary, and it has none", r.Name),
				"add preferred-primary: NODE (one of its replicas' nodes), or remove failback (manual)")
		}
		// Only count replicas that were read: a missing or malformed
		// replicas key is reported as such already.
		if (r.Replicas != nil || !c.parsed) && len(r.Replicas) != 2 {
			names := make([]string, len(r.Replicas))
			for j, rp := range r.Replicas {
				names[j] = rp.Node
			}
			what := "no replicas"
			switch len(names) {
			case 0:
			case 1:
				what = "1 replica (" + names[0] + ")"
			default:
				what = fmt.Sprintf("%d replicas (%s)", len(names), strings.Join(names, ", "))
			}
			ps.add(r.lines.at("replicas"), path+".replicas", "has "+what+", a resource needs exactly two",
				"list the two data nodes that hold it, each with its device and address")
		}
	}
	c.checkDevices(ps, nodes)
	c.checkListeners(ps, nodes)
	c.checkVIPs(ps)
	c.checkFencing(ps)
	c.checkClusterLayer(ps)
	c.checkTiming(ps)
	c.checkAlerts(ps)
}

// checkFields covers, for a Config built in code, the per-key rules that
// Parse enforces while reading a file.
func (c *Config) checkFields(ps *problems) {
	if !label.MatchString(c.Cluster) {
		ps.add(0, "cluster", fmt.Sprintf("%q is not a valid name", c.Cluster), labelFix)
	}
	if !filepath.IsAbs(c.SecretFile) {
		ps.add(0, "secret-file", fmt.Sprintf("%q is not an absolute path", c.SecretFile), "set it to the secret file's full path")
	}
	for i, f := range c.AcceptSecretFiles {
		if !filepath.IsAbs(f) {
			ps.add(0, fmt.Sprintf("accept-secret-files[%d]", i), fmt.Sprintf("%q is not an absolute path", f), "set it to the file's full path")
		}
	}
	for i, n := range c.Nodes {
		p := fmt.Sprintf("nodes[%d]", i)
		if !label.MatchString(n.Name) {
			ps.add(0, p+".name", fmt.Sprintf("%q is not a valid name", n.Name), labelFix)
		}
		if err := checkHost(n.Address); err != nil {
			ps.add(0, p+".address", fmt.Sprintf("%q: %v", n.Address, err), "set a host name or IP address")
		}
	}
	for i, r := range c.Resources {
		p := fmt.Sprintf("resources[%d]", i)
		if !label.MatchString(r.Name) {
			ps.add(0, p+".name", fmt.Sprintf("%q is not a valid name", r.Name), labelFix)
		}
		if r.Size <= 0 || r.Size%4096 != 0 {
			ps.add(0, p+".size", fmt.Sprintf("%d is not a positive multiple of 4 KiB", r.Size), "set the exported size in bytes")
		}
		if r.BitmapGranularity < 4096 || r.BitmapGranularity > maxBitmapGranularity || r.BitmapGranularity&(r.BitmapGranularity-1) != 0 {
			ps.add(0, p+".bitmap-granularity", fmt.Sprintf("%d is not a power of two from 4K to 1G", r.BitmapGranularity), "use DefaultBitmapGranularity")
		}
		if r.ALExtents < 1 || r.ALExtents > maxALExtents {
			ps.add(0, p+".al-extents", fmt.Sprintf("%d is not from 1 to %d", r.ALExtents, maxALExtents), "use DefaultALExtents")
		}
		for _, e := range []struct {
			key, val string
			allowed  []string
		}{
			{"protocol", string(r.Protocol), protocols},
			{"compression", string(r.Compression), compressions},
			{"on-no-quorum", string(r.OnNoQuorum), noQuorums},
		} {
			if !slices.Contains(e.allowed, e.val) {
				ps.add(0, p+"."+e.key, fmt.Sprintf("%q is not allowed", e.val), "use "+quoteList(e.allowed))
			}
		}
		if !validSplitBrain(r.SplitBrain) {
			ps.add(0, p+".split-brain", fmt.Sprintf("%q is not allowed", r.SplitBrain), "use "+quoteList(splitBrains))
		}
		for _, rp := range r.Replicas {
			rpp := p + ".replicas." + rp.Node
			if !filepath.IsAbs(rp.Device) {
				ps.add(0, rpp+".device", fmt.Sprintf("%q is not an absolute path", rp.Device), "set the backing device's full path")
			}
			if rp.Meta != MetaInternal && !filepath.IsAbs(rp.Meta) {
				ps.add(0, rpp+".meta", fmt.Sprintf("%q is neither internal nor an absolute path", rp.Meta), "use MetaInternal or a full path")
			}
			if _, _, err := net.SplitHostPort(rp.Address); err != nil {
				ps.add(0, rpp+".address", fmt.Sprintf("%q is not HOST:PORT", rp.Address), "set where the replication link listens")
			}
		}
	}
}

// hostOf groups nodes by machine: nodes with the same address share one
// (several nodes on one host, as in tests), and so share its disks and ports.
func hostOf(n *Node) string {
	if n == nil {
		return ""
	}
	if ip := net.ParseIP(n.Address); ip != nil {
		return ip.String()
	}
	return strings.ToLower(strings.TrimSuffix(n.Address, "."))
}

// checkNodeHosts: nodes on one host must not share the daemon's socket or
// state directory (the defaults, named after the node, never do).
func (c *Config) checkNodeHosts(ps *problems) {
	type use struct {
		node string
		line int
	}
	seen := map[string]use{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.Name == "" || n.Address == "" {
			continue
		}
		for _, f := range []struct{ key, path string }{{"admin-socket", n.AdminSocket}, {"data-dir", n.DataDir}} {
			if f.path == "" {
				continue
			}
			k := hostOf(n) + "\x00" + f.path
			if first, dup := seen[k]; dup && first.node != n.Name {
				ps.add(n.lines.at(f.key), fmt.Sprintf("nodes[%d].%s", i, f.key),
					fmt.Sprintf("%s is also used by node %s (line %d) on the same host %s", f.path, first.node, first.line, n.Address),
					"give each node on one host its own "+f.key+" (the default is named after the node)")
				continue
			}
			seen[k] = use{n.Name, n.lines.at(f.key)}
		}
	}
}

// checkDevices: on one host, a path may back only one thing: one resource's
// device, or one resource's metadata file. Two users of one disk would
// overwrite each other's data.
func (c *Config) checkDevices(ps *problems, nodes map[string]*Node) {
	type use struct {
		key, resource, node string // key: "device" or "meta"
		line                int
	}
	seen := map[string]use{}
	for i := range c.Resources {
		r := &c.Resources[i]
		for _, rp := range r.Replicas {
			n, ok := nodes[rp.Node]
			if !ok {
				continue
			}
			path := fmt.Sprintf("resources[%d].replicas.%s", i, rp.Node)
			for _, f := range []struct{ key, file string }{{"device", rp.Device}, {"meta", rp.Meta}} {
				if f.file == "" || f.file == MetaInternal {
					continue
				}
				k := hostOf(n) + "\x00" + f.file
				first, dup := seen[k]
				if !dup {
					seen[k] = use{f.key, r.Name, rp.Node, rp.lines.at(f.key)}
					continue
				}
				fix := "give each resource its own device and metadata file"
				if f.key == "meta" && first.key == "device" && first.resource == r.Name && first.node == rp.Node {
					fix = "use meta: internal to keep the metadata at the end of the device, or a separate file"
				}
				ps.add(rp.lines.at(f.key), path+"."+f.key,
					fmt.Sprintf("%s is also the %s of resource %s on %s (line %d)", f.file, first.key, first.resource, first.node, first.line), fix)
			}
		}
	}
}

// endpoint is one listening address of a node.
type endpoint struct {
	node, host string // host: hostOf(node), for wildcard and unix sockets
	addr       string
	nbd        bool
	what       string
	line       int
	path       string
	metrics    bool
}

// checkListeners: no two listeners may take one address. Replication
// addresses are dialed by the peer, so each is unique in the cluster; NBD
// listeners of one node are one server (each resource is an export of it), so
// those may repeat, but not across nodes that share a host.
func (c *Config) checkListeners(ps *problems, nodes map[string]*Node) {
	var eps []endpoint
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.MetricsListen != "" {
			eps = append(eps, endpoint{n.Name, hostOf(n), n.MetricsListen, false, "the metrics listener of " + n.Name,
				n.lines.at("metrics-listen"), fmt.Sprintf("nodes[%d].metrics-listen", i), true})
		} else if n.MetricsTLS != nil {
			ps.add(n.lines.at("metrics-tls"), fmt.Sprintf("nodes[%d].metrics-tls", i), "metrics-tls without metrics-listen",
				"add metrics-listen: HOST:PORT, or remove metrics-tls")
		}
	}
	for i := range c.Resources {
		r := &c.Resources[i]
		for _, rp := range r.Replicas {
			n, ok := nodes[rp.Node]
			if !ok {
				continue
			}
			path := fmt.Sprintf("resources[%d].replicas.%s", i, rp.Node)
			if rp.Address != "" {
				eps = append(eps, endpoint{rp.Node, hostOf(n), rp.Address, false,
					fmt.Sprintf("the replication address of resource %s on %s", r.Name, rp.Node), rp.lines.at("address"), path + ".address", false})
			}
			if rp.NBDListen != "" {
				what := "the NBD listener of " + rp.Node
				if _, given := rp.lines["nbd-listen"]; !given {
					what += " (by default)"
				}
				eps = append(eps, endpoint{rp.Node, hostOf(n), rp.NBDListen, true, what, rp.lines.at("nbd-listen"), path + ".nbd-listen", false})
			}
		}
	}
next:
	for j := range eps {
		for i := 0; i < j; i++ {
			a, b := eps[i], eps[j]
			if a.nbd && b.nbd && a.node == b.node && a.addr == b.addr {
				// One NBD server per node and address serves every resource
				// that names it; checked once, as its first mention.
				continue next
			}
		}
		for i := 0; i < j; i++ {
			a, b := eps[i], eps[j]
			if !overlap(a, b) {
				continue
			}
			fix := "use another port for one of them"
			switch {
			case a.metrics || b.metrics:
				fix = "give metrics-listen a port of its own"
			case !a.nbd && !b.nbd:
				fix = "give each resource its own replication port"
			case a.node != b.node:
				fix = "nodes on one host need their own ports and sockets: set nbd-listen (or address) of one of them to a free one"
			}
			ps.add(b.line, b.path, fmt.Sprintf("%s is %s and also %s (line %d)", b.addr, b.what, a.what, a.line), fix)
			break
		}
	}
}

// overlap reports whether two listeners would fight over one socket.
func overlap(a, b endpoint) bool {
	ua, aUnix := strings.CutPrefix(a.addr, "unix:")
	ub, bUnix := strings.CutPrefix(b.addr, "unix:")
	if aUnix || bUnix {
		return aUnix && bUnix && ua == ub && a.host == b.host
	}
	ha, pa, err1 := net.SplitHostPort(a.addr)
	hb, pb, err2 := net.SplitHostPort(b.addr)
	if err1 != nil || err2 != nil || pa != pb {
		return false
	}
	if isWildcard(ha) || isWildcard(hb) {
		return a.host == b.host
	}
	return normHost(ha) == normHost(hb)
}

func normHost(h string) string {
	if ip := net.ParseIP(h); ip != nil {
		return ip.String()
	}
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

// checkLocal looks at the files of node name on this machine.
func (c *Config) checkLocal(ps *problems, name string) {
	if c.SecretFile != "" {
		checkSecret(ps, "secret-file", c.SecretFile, c.lines.at("secret-file"))
	}
	for i, f := range c.AcceptSecretFiles {
		checkSecret(ps, fmt.Sprintf("accept-secret-files[%d]", i), f, c.lines.at("accept-secret-files"))
	}
	for i, n := range c.Nodes {
		if n.Name != name || n.DataDir == "" {
			continue
		}
		if st, err := os.Stat(n.DataDir); err == nil && !st.IsDir() {
			ps.add(n.lines.at("data-dir"), fmt.Sprintf("nodes[%d].data-dir", i), fmt.Sprintf("%s exists and is not a directory", n.DataDir), "remove it or choose another data-dir")
		}
		if n.MetricsTLS != nil {
			checkTLSFiles(ps, n.MetricsTLS, n.lines.at("metrics-tls"), fmt.Sprintf("nodes[%d].metrics-tls", i), "the CA whose client certificates may scrape the metrics")
		}
	}
	type ident struct {
		what string
		st   fs.FileInfo
	}
	var seen []ident
	for i := range c.Resources {
		r := &c.Resources[i]
		rp := r.Replica(name)
		if rp == nil {
			continue
		}
		path := fmt.Sprintf("resources[%d].replicas.%s", i, name)
		if st := checkDevice(ps, r, rp, path); st != nil {
			seen = append(seen, ident{fmt.Sprintf("the device of resource %s (line %d)", r.Name, rp.lines.at("device")), st})
			for _, s := range seen[:len(seen)-1] {
				if os.SameFile(s.st, st) {
					ps.add(rp.lines.at("device"), path+".device", fmt.Sprintf("%s is the same file as %s, by another path", rp.Device, s.what),
						"give each resource its own device")
				}
			}
		}
		if !rp.InternalMeta() && rp.Meta != "" {
			checkMetaFile(ps, r, rp, path)
			if st, err := os.Stat(rp.Meta); err == nil {
				for _, s := range seen {
					if os.SameFile(s.st, st) {
						ps.add(rp.lines.at("meta"), path+".meta", fmt.Sprintf("%s is the same file as %s, by another path", rp.Meta, s.what),
							"use meta: internal, or a file of its own")
					}
				}
				seen = append(seen, ident{fmt.Sprintf("the metadata of resource %s (line %d)", r.Name, rp.lines.at("meta")), st})
			}
		}
		if r.TLS != nil {
			checkTLS(ps, r, fmt.Sprintf("resources[%d].tls", i))
		}
	}
	c.checkLocalVIPs(ps, name)
	c.checkLocalFencing(ps, name)
	c.checkLocalAlerts(ps)
}

func checkSecret(ps *problems, key, file string, line int) {
	st, err := os.Stat(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		ps.add(line, key, fmt.Sprintf("%s does not exist", file),
			fmt.Sprintf("create it with the same content on every node: head -c 32 /dev/urandom | base64 > %s && chmod 600 %s", file, file))
		return
	case err != nil:
		ps.add(line, key, err.Error(), "make it readable by the daemon (root)")
		return
	case !st.Mode().IsRegular():
		ps.add(line, key, fmt.Sprintf("%s is not a regular file", file), "point secret-file at a file holding the shared secret")
		return
	case st.Size() == 0:
		ps.add(line, key, fmt.Sprintf("%s is empty", file),
			fmt.Sprintf("write the shared secret into it, the same on every node: head -c 32 /dev/urandom | base64 > %s", file))
	}
	if perm := st.Mode().Perm(); perm&0o007 != 0 {
		ps.add(line, key, fmt.Sprintf("%s is accessible to every user (mode %04o)", file, perm),
			fmt.Sprintf("chmod 600 %s", file))
	}
}

// checkDevice checks a local replica's backing store and returns its
// FileInfo, or nil if there is a problem with it.
func checkDevice(ps *problems, r *Resource, rp *Replica, path string) fs.FileInfo {
	line := rp.lines.at("device")
	p := path + ".device"
	st, err := os.Stat(rp.Device)
	if errors.Is(err, fs.ErrNotExist) {
		fix := fmt.Sprintf("correct the path, or create a file for it: truncate -s %d %s", r.Size+internalMeta(r, rp), rp.Device)
		if strings.HasPrefix(rp.Device, "/dev/") {
			fix = fmt.Sprintf("correct the path, or create the disk first (it needs %d bytes)", r.Size+internalMeta(r, rp))
		}
		ps.add(line, p, fmt.Sprintf("%s does not exist", rp.Device), fix)
		return nil
	}
	if err != nil {
		ps.add(line, p, err.Error(), "make it accessible to the daemon (root)")
		return nil
	}
	if !st.Mode().IsRegular() && st.Mode()&fs.ModeDevice == 0 {
		ps.add(line, p, fmt.Sprintf("%s is not a block device or a regular file", rp.Device), "point device at the backing disk or file")
		return nil
	}
	size, err := fileSize(rp.Device)
	if err != nil {
		ps.add(line, p, err.Error(), "make it readable by the daemon (root)")
		return nil
	}
	need := r.Size + internalMeta(r, rp)
	if size < need {
		msg := fmt.Sprintf("%s has %s, too small for size %s", rp.Device, formatBytes(size), formatBytes(r.Size))
		if rp.InternalMeta() {
			msg += fmt.Sprintf(" plus %s of internal metadata", formatBytes(internalMeta(r, rp)))
		}
		fix := fmt.Sprintf("lower size, or grow it to at least %d bytes", need)
		if st.Mode().IsRegular() {
			fix += fmt.Sprintf(" (truncate -s %d %s)", need, rp.Device)
		}
		if rp.InternalMeta() {
			fix += ", or keep the metadata in a file (meta: /path)"
		}
		ps.add(line, p, msg, fix)
	}
	return st
}

func checkMetaFile(ps *problems, r *Resource, rp *Replica, path string) {
	line := rp.lines.at("meta")
	p := path + ".meta"
	need := metaSize(r)
	st, err := os.Stat(rp.Meta)
	if errors.Is(err, fs.ErrNotExist) {
		// tandem create-md makes the file; its directory must be there.
		dir := filepath.Dir(rp.Meta)
		if dst, err := os.Stat(dir); err != nil || !dst.IsDir() {
			ps.add(line, p, fmt.Sprintf("the directory %s does not exist", dir), fmt.Sprintf("mkdir -p %s, or correct the path", dir))
		}
		return
	}
	if err != nil {
		ps.add(line, p, err.Error(), "make it accessible to the daemon (root)")
		return
	}
	switch {
	case st.Mode().IsRegular():
		// create-md extends a regular file to the size it needs.
	case st.Mode()&fs.ModeDevice != 0:
		if size, err := fileSize(rp.Meta); err != nil {
			ps.add(line, p, err.Error(), "make it readable by the daemon (root)")
		} else if size < need {
			ps.add(line, p, fmt.Sprintf("%s has %s, the metadata needs %s", rp.Meta, formatBytes(size), formatBytes(need)),
				"use a bigger device or a file for the metadata")
		}
	default:
		ps.add(line, p, fmt.Sprintf("%s is not a regular file or a block device", rp.Meta), "point meta at a file (created by tandem create-md) or use meta: internal")
	}
}

func checkTLS(ps *problems, r *Resource, path string) {
	checkTLSFiles(ps, r.TLS, r.lines.at("tls"), path, "the CA that signed both nodes' certificates")
}

// checkTLSFiles loads t's files as the daemon will; caWhat says what the
// CA is for, in the hint.
func checkTLSFiles(ps *problems, t *TLS, line int, path, caWhat string) {
	if t.Cert != "" && t.Key != "" {
		if _, err := tls.LoadX509KeyPair(t.Cert, t.Key); err != nil {
			ps.add(line, path, fmt.Sprintf("loading cert %s and key %s: %v", t.Cert, t.Key, err),
				"point cert and key at this node's PEM certificate and its private key")
		}
		if st, err := os.Stat(t.Key); err == nil && st.Mode().Perm()&0o007 != 0 {
			ps.add(line, path+".key", fmt.Sprintf("%s is accessible to every user (mode %04o)", t.Key, st.Mode().Perm()),
				fmt.Sprintf("chmod 600 %s", t.Key))
		}
	}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		switch {
		case err != nil:
			ps.add(line, path+".ca", err.Error(), "point ca at the PEM file of "+caWhat)
		case !x509.NewCertPool().AppendCertsFromPEM(pem):
			ps.add(line, path+".ca", fmt.Sprintf("%s holds no PEM certificate", t.CA), "point ca at the PEM file of "+caWhat)
		}
	}
}

// fileSize works for regular files and block devices alike: seeking to the
// end of a block device gives its size without an ioctl.
func fileSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("finding the size of %s: %w", path, err)
	}
	return n, nil
}

// internalMeta is the room a replica's metadata takes on its device: none
// when it lives in a file of its own.
func internalMeta(r *Resource, rp *Replica) int64 {
	if !rp.InternalMeta() {
		return 0
	}
	return metaSize(r)
}

// metaSize is the size of the resource's metadata area, as replicate/md lays
// it out. The resource's values were checked, so md cannot refuse them; if a
// Config built in code slips through, 0 keeps the checks going.
func metaSize(r *Resource) int64 {
	l, err := md.NewLayout(r.Size, md.Options{Granularity: r.BitmapGranularity, MaxHotExtents: r.ALExtents})
	if err != nil {
		return 0
	}
	return l.MetaSize()
}

// formatBytes prints a size the way it is written in the file when exact
// (10 GiB), with the byte count otherwise.
func formatBytes(n int64) string {
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	if n < 1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	v, u := float64(n)/1024, 0
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d %s", int64(v), units[u])
	}
	return fmt.Sprintf("%d bytes (%.1f %s)", n, v, units[u])
}

// validSplitBrain: one of the fixed policies, or discard-node- and a
// well-formed name (whether it names a replica is checked with the rest).
func validSplitBrain(s SplitBrain) bool {
	if n, ok := s.DiscardNode(); ok {
		return label.MatchString(n)
	}
	return slices.Contains(splitBrains, string(s)) && !strings.HasPrefix(string(s), SplitBrainDiscardNodePrefix)
}
