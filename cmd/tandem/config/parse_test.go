package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// base is a complete valid file: two data nodes, a witness, two resources
// (one with defaults only, one with every key). Line numbers matter to the
// tests below only through the markers they add.
const base = `cluster: lab
secret-file: /etc/tandem/secret
nodes:
  - name: alpha
    address: 192.0.2.11
  - name: beta
    address: 192.0.2.12
  - name: gamma
    address: 192.0.2.13
resources:
  - name: db
    size: 10G
    replicas:
      alpha:
        device: /dev/vg0/db
        address: 192.0.2.11:7789
      beta:
        device: /dev/vg0/db
        address: 192.0.2.12:7789
  - name: web
    size: 1T
    protocol: B
    compression: zstd
    bitmap-granularity: 64K
    al-extents: 257
    resync:
      max-rate: 1G/s
      app-share: 0.25
      checksum: true
    split-brain: discard-zero-changes
    on-no-quorum: io-error
    tls:
      cert: /etc/tandem/node.pem
      key: /etc/tandem/node-key.pem
      ca: /etc/tandem/ca.pem
    preferred-primary: beta
    replicas:
      alpha:
        device: /dev/vg0/web
        meta: /var/lib/tandem/web.md
        address: 192.0.2.11:7790
        nbd-listen: 192.0.2.11:10809
      beta:
        device: /dev/vg0/web
        address: 192.0.2.12:7790
        nbd-listen: unix:/run/tandem/beta-nbd.sock
`

func TestParseValid(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cluster != "lab" || cfg.SecretFile != "/etc/tandem/secret" || cfg.Path != "tandem.yaml" {
		t.Errorf("cluster %q secret %q path %q", cfg.Cluster, cfg.SecretFile, cfg.Path)
	}
	if len(cfg.Nodes) != 3 {
		t.Fatalf("nodes = %+v", cfg.Nodes)
	}
	a := cfg.Nodes[0]
	if a.Name != "alpha" || a.Address != "192.0.2.11" || a.AdminSocket != "/run/tandem/alpha.sock" || a.DataDir != "/var/lib/tandem/alpha" {
		t.Errorf("node alpha = %+v", a)
	}
	if got := fmt.Sprint(cfg.DataNodes(), cfg.Witnesses()); got != "[alpha beta] [gamma]" {
		t.Errorf("data nodes, witnesses = %s", got)
	}
	if !cfg.IsWitness("gamma") || cfg.IsWitness("alpha") {
		t.Error("IsWitness wrong")
	}

	db := cfg.Resource("db")
	if db == nil || len(db.Replicas) != 2 {
		t.Fatalf("db = %+v", db)
	}
	if db.Size != 10<<30 || db.Protocol != ProtocolC || db.Compression != CompressionOff ||
		db.BitmapGranularity != 4096 || db.ALExtents != 1018 || db.SplitBrain != SplitBrainDisconnect ||
		db.OnNoQuorum != OnNoQuorumSuspendIO || db.TLS != nil || db.PreferredPrimary != "" ||
		db.Resync != (Resync{MaxRate: 100 << 20, AppShare: 0.5}) {
		t.Errorf("db defaults = %+v", db)
	}
	ra := db.Replica("alpha")
	if ra == nil || ra.Node != "alpha" || ra.Device != "/dev/vg0/db" || ra.Meta != "internal" || ra.Address != "192.0.2.11:7789" ||
		ra.NBDListen != "192.0.2.11:10809" || !ra.InternalMeta() {
		t.Errorf("db alpha = %+v", ra)
	}
	if p := db.Peer("alpha"); p == nil || p.Node != "beta" {
		t.Errorf("db peer of alpha = %+v", p)
	}
	if db.Peer("gamma") != nil || db.Replica("gamma") != nil {
		t.Error("gamma has a replica of db")
	}

	web := cfg.Resource("web")
	if web.Size != 1<<40 || web.Protocol != ProtocolB || web.Compression != CompressionZstd ||
		web.BitmapGranularity != 64<<10 || web.ALExtents != 257 || web.SplitBrain != SplitBrainDiscardZeroChanges ||
		web.OnNoQuorum != OnNoQuorumIOError || web.PreferredPrimary != "beta" ||
		web.Resync != (Resync{MaxRate: 1 << 30, AppShare: 0.25, Checksum: true}) ||
		web.TLS == nil || *web.TLS != (TLS{"/etc/tandem/node.pem", "/etc/tandem/node-key.pem", "/etc/tandem/ca.pem"}) {
		t.Errorf("web = %+v", web)
	}
	if r := web.Replica("alpha"); r.Meta != "/var/lib/tandem/web.md" || r.InternalMeta() || r.NBDListen != "192.0.2.11:10809" {
		t.Errorf("web alpha = %+v", r)
	}
	if r := web.Replica("beta"); r.NBDListen != "unix:/run/tandem/beta-nbd.sock" {
		t.Errorf("web beta = %+v", r)
	}
	if err := cfg.Validate(""); err != nil {
		t.Errorf("Validate(\"\") = %v", err)
	}
}

type want struct {
	mark, path, substr string
}

// TestParseProblems: each case edits base, marks the lines where problems
// must be reported with comments (#A, #B), and expects exactly those
// problems: the file name, the line of the marker, the key path, and a
// message containing substr.
func TestParseProblems(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edits []string // old, new, old, new ...
		want  []want
	}{
		{"unknown top-level key", []string{"cluster: lab\n", "cluster: lab\nclustr: x #A\n"},
			[]want{{"#A", "clustr", `unknown key "clustr"; did you mean "cluster"?`}}},
		{"unknown replica key", []string{"        device: /dev/vg0/db\n        address: 192.0.2.11:7789\n",
			"        device: /dev/vg0/db\n        mta: internal #A\n        address: 192.0.2.11:7789\n"},
			[]want{{"#A", "resources[0].replicas.alpha.mta", `did you mean "meta"?`}}},
		{"snake case key", []string{"    al-extents: 257\n", "    al_extents: 257 #A\n"},
			[]want{{"#A", "resources[1].al_extents", `did you mean "al-extents"?`}}},
		{"key at the wrong level", []string{"    size: 10G\n", "    size: 10G\n    device: /dev/sdb #A\n"},
			[]want{{"#A", "resources[0].device", `"device" belongs in resources[N].replicas.NODE`}}},
		{"unknown key without suggestion", []string{"    address: 192.0.2.13\n", "    address: 192.0.2.13\n    colour: blue #A\n"},
			[]want{{"#A", "nodes[2].colour", "remove it (keys here: name, address, admin-socket, data-dir, fencing, gossip, authority, metrics-listen, metrics-tls)"}}},
		{"metrics on the replication port", []string{"    address: 192.0.2.11\n", "    address: 192.0.2.11\n    metrics-listen: 192.0.2.11:7789\n",
			"        address: 192.0.2.11:7789\n", "        address: 192.0.2.11:7789 #A\n"},
			[]want{{"#A", "resources[0].replicas.alpha.address", "is the replication address of resource db on alpha and also the metrics listener of alpha (line 6); give metrics-listen a port of its own"}}},
		{"metrics everywhere on the replication port", []string{"    address: 192.0.2.11\n", "    address: 192.0.2.11\n    metrics-listen: :7789\n",
			"        address: 192.0.2.11:7789\n", "        address: 192.0.2.11:7789 #A\n"},
			[]want{{"#A", "resources[0].replicas.alpha.address", "also the metrics listener of alpha"}}},
		{"metrics port", []string{"    address: 192.0.2.11\n", "    address: 192.0.2.11\n    metrics-listen: 192.0.2.11:http #A\n"},
			[]want{{"#A", "nodes[0].metrics-listen", `port "http" is not a number from 1 to 65535`}}},
		{"key twice", []string{"    size: 10G\n", "    size: 10G\n    size: 20G #A\n"},
			[]want{{"#A", "resources[0].size", `key "size" given twice (first on line 12)`}}},
		{"merge key", []string{"    size: 10G\n", "    size: 10G\n    <<: {protocol: A} #A\n"},
			[]want{{"#A", "resources[0].<<", "merge keys"}}},
		{"missing cluster", []string{"cluster: lab\nsecret-file: /etc/tandem/secret\n", "secret-file: /etc/tandem/secret #A\n"},
			[]want{{"#A", "top level", `missing key "cluster"; add cluster: NAME`}}},
		{"missing secret-file", []string{"secret-file: /etc/tandem/secret\n", ""},
			[]want{{"cluster: lab", "top level", `missing key "secret-file"`}}},
		{"missing nodes", []string{"nodes:\n  - name: alpha\n    address: 192.0.2.11\n  - name: beta\n    address: 192.0.2.12\n  - name: gamma\n    address: 192.0.2.13\n", ""},
			[]want{{"cluster: lab", "top level", `missing key "nodes"`}}},
		{"empty nodes", []string{"nodes:\n  - name: alpha\n    address: 192.0.2.11\n  - name: beta\n    address: 192.0.2.12\n  - name: gamma\n    address: 192.0.2.13\n", "nodes: [] #A\n"},
			[]want{{"#A", "nodes", "no nodes"}}},
		{"missing node address", []string{"  - name: gamma\n    address: 192.0.2.13\n", "  - name: gamma #A\n"},
			[]want{{"#A", "nodes[2]", `missing key "address"; add address: HOST`}}},
		{"missing node name", []string{"  - name: gamma\n    address: 192.0.2.13\n", "  - address: 192.0.2.13 #A\n"},
			[]want{{"#A", "nodes[2]", `missing key "name"`}}},
		{"missing resource size", []string{"    size: 10G\n", ""},
			[]want{{"  - name: db", "resources[0]", `missing key "size"; add size: SIZE`}}},
		{"missing replicas", []string{"    size: 10G\n    replicas:\n      alpha:\n        device: /dev/vg0/db\n        address: 192.0.2.11:7789\n      beta:\n        device: /dev/vg0/db\n        address: 192.0.2.12:7789\n", "    size: 10G\n"},
			[]want{{"  - name: db", "resources[0]", `missing key "replicas"`}}},
		{"missing replica device", []string{"      beta:\n        device: /dev/vg0/db\n", "      beta: #A\n"},
			[]want{{"#A", "resources[0].replicas.beta", `missing key "device"`}}},
		{"missing replica address", []string{"        address: 192.0.2.12:7790\n", ""},
			[]want{{"      beta:\n        device: /dev/vg0/web", "resources[1].replicas.beta", `missing key "address"`}}},
		{"missing tls ca", []string{"      ca: /etc/tandem/ca.pem\n", ""},
			[]want{{"    tls:", "resources[1].tls", `missing key "ca"`}}},
		{"duplicate node", []string{"  - name: gamma\n", "  - name: beta #A\n"},
			[]want{{"#A", "nodes[2].name", `node "beta" is listed twice (first on line 6)`}}},
		{"duplicate resource", []string{"  - name: web\n", "  - name: db #A\n"},
			[]want{{"#A", "resources[1].name", `resource "db" is listed twice (first on line 11)`}}},
		{"replica of an unknown node", []string{"      beta:\n        device: /dev/vg0/db\n", "      betta: #A\n        device: /dev/vg0/db\n"},
			[]want{{"#A", "resources[0].replicas.betta", `node "betta" is not in the nodes list; did you mean "beta"?`}}},
		{"replica of a node twice", []string{"      beta:\n        device: /dev/vg0/db\n        address: 192.0.2.12:7789\n",
			"      beta:\n        device: /dev/vg0/db\n        address: 192.0.2.12:7789\n      beta: #A\n        device: /dev/vg0/db2\n        address: 192.0.2.12:7799\n"},
			[]want{{"#A", "resources[0].replicas.beta", `node "beta" given twice`}}},
		{"one replica", []string{"    size: 10G\n    replicas:\n", "    size: 10G\n    replicas: #A\n",
			"      beta:\n        device: /dev/vg0/db\n        address: 192.0.2.12:7789\n", ""},
			[]want{{"#A", "resources[0].replicas", "has 1 replica (alpha), a resource needs exactly two"}}},
		{"three replicas", []string{"    size: 10G\n    replicas:\n", "    size: 10G\n    replicas: #A\n",
			"        address: 192.0.2.12:7789\n", "        address: 192.0.2.12:7789\n      gamma:\n        device: /dev/sdb\n        address: 192.0.2.13:7789\n"},
			[]want{{"#A", "resources[0].replicas", "has 3 replicas (alpha, beta, gamma)"}}},
		{"replicas as a list", []string{"    size: 10G\n    replicas:\n      alpha:\n        device: /dev/vg0/db\n        address: 192.0.2.11:7789\n      beta:\n        device: /dev/vg0/db\n        address: 192.0.2.12:7789\n",
			"    size: 10G\n    replicas:\n      - alpha #A\n"},
			[]want{{"#A", "resources[0].replicas", "want a mapping from node name to replica"}}},
		{"replicas empty", []string{"    size: 10G\n    replicas:\n      alpha:\n        device: /dev/vg0/db\n        address: 192.0.2.11:7789\n      beta:\n        device: /dev/vg0/db\n        address: 192.0.2.12:7789\n",
			"    size: 10G\n    replicas: {} #A\n"},
			[]want{{"#A", "resources[0].replicas", "has no replicas, a resource needs exactly two"}}},
		{"two resources on one device", []string{"        device: /dev/vg0/web\n        meta", "        device: /dev/vg0/db #A\n        meta"},
			[]want{{"#A", "resources[1].replicas.alpha.device", "/dev/vg0/db is also the device of resource db on alpha (line 15); give each resource its own"}}},
		{"two resources on one meta file", []string{"        device: /dev/vg0/db\n        address: 192.0.2.11:7789\n",
			"        device: /dev/vg0/db\n        meta: /var/lib/tandem/web.md\n        address: 192.0.2.11:7789\n",
			"        meta: /var/lib/tandem/web.md\n        address: 192.0.2.11:7790\n", "        meta: /var/lib/tandem/web.md #A\n        address: 192.0.2.11:7790\n"},
			[]want{{"#A", "resources[1].replicas.alpha.meta", "/var/lib/tandem/web.md is also the meta of resource db on alpha (line 16)"}}},
		{"meta file is the device", []string{"        meta: /var/lib/tandem/web.md\n", "        meta: /dev/vg0/web #A\n"},
			[]want{{"#A", "resources[1].replicas.alpha.meta", "is also the device of resource web on alpha (line 39); use meta: internal"}}},
		{"meta is another resource's device", []string{"        meta: /var/lib/tandem/web.md\n", "        meta: /dev/vg0/db #A\n"},
			[]want{{"#A", "resources[1].replicas.alpha.meta", "is also the device of resource db on alpha (line 15)"}}},
		{"same device path on different hosts is fine", nil, nil},
		{"two nodes on one host share devices", []string{"    address: 192.0.2.12\n", "    address: 192.0.2.11\n",
			"      beta:\n        device: /dev/vg0/db\n", "      beta:\n        device: /dev/vg0/db #A\n        nbd-listen: 192.0.2.11:10810\n"},
			[]want{{"#A", "resources[0].replicas.beta.device", "/dev/vg0/db is also the device of resource db on alpha (line 15)"},
				{"        device: /dev/vg0/web\n        address: 192.0.2.12:7790", "resources[1].replicas.beta.device", "/dev/vg0/web is also the device of resource web on alpha"}}},
		{"two nodes on one host, default NBD port", []string{"  - name: gamma\n    address: 192.0.2.13\n", "  - name: gamma\n    address: 192.0.2.11\n",
			"        address: 192.0.2.12:7789\n", "        address: 192.0.2.12:7789\n  - name: logs\n    size: 1G\n    replicas:\n      gamma: #A\n        device: /dev/vg0/logs\n        address: 192.0.2.11:7791\n      beta:\n        device: /dev/vg0/logs\n        address: 192.0.2.12:7791\n"},
			[]want{{"#A", "resources[1].replicas.gamma.nbd-listen", "192.0.2.11:10809 is the NBD listener of gamma (by default) and also the NBD listener of alpha (by default) (line 14); nodes on one host need their own ports and sockets"}}},
		{"replication address used twice", []string{"        address: 192.0.2.11:7790\n", "        address: 192.0.2.11:7789 #A\n"},
			[]want{{"#A", "resources[1].replicas.alpha.address", "192.0.2.11:7789 is the replication address of resource web on alpha and also the replication address of resource db on alpha (line 16); give each resource its own replication port"}}},
		{"NBD listener on a replication port", []string{"        nbd-listen: 192.0.2.11:10809\n", "        nbd-listen: 0.0.0.0:7789 #A\n"},
			[]want{{"#A", "resources[1].replicas.alpha.nbd-listen", "0.0.0.0:7789 is the NBD listener of alpha and also the replication address of resource db on alpha (line 16)"}}},
		{"wildcard NBD listener on another host's port is fine", []string{"        nbd-listen: 192.0.2.11:10809\n", "        nbd-listen: 0.0.0.0:7789\n",
			"        device: /dev/vg0/db\n        address: 192.0.2.11:7789\n", "        device: /dev/vg0/db\n        address: 192.0.2.11:7788\n"}, nil},
		{"NBD unix socket used by two nodes on one host", []string{"    address: 192.0.2.12\n", "    address: 192.0.2.11\n",
			"        device: /dev/vg0/db\n        address: 192.0.2.12:7789\n", "        device: /dev/vg0/db2\n        address: 192.0.2.12:7789\n        nbd-listen: 192.0.2.11:10810\n",
			"        device: /dev/vg0/web\n        address: 192.0.2.12:7790\n", "        device: /dev/vg0/web2\n        address: 192.0.2.12:7790\n",
			"        nbd-listen: unix:/run/tandem/beta-nbd.sock\n", "        nbd-listen: unix:/run/tandem/beta-nbd.sock #A\n",
			"        nbd-listen: 192.0.2.11:10809\n", "        nbd-listen: unix:/run/tandem/beta-nbd.sock\n"},
			[]want{{"#A", "resources[1].replicas.beta.nbd-listen", "unix:/run/tandem/beta-nbd.sock is the NBD listener of beta and also the NBD listener of alpha (line 43); nodes on one host need their own ports and sockets"}}},
		{"nodes on one host share a data-dir", []string{"    address: 192.0.2.12\n", "    address: 192.0.2.12\n    data-dir: /srv/tandem\n",
			"    address: 192.0.2.13\n", "    address: 192.0.2.12\n    data-dir: /srv/tandem #A\n"},
			[]want{{"#A", "nodes[2].data-dir", "/srv/tandem is also used by node beta"}}},
		{"protocol", []string{"    protocol: B\n", "    protocol: D #A\n"},
			[]want{{"#A", "resources[1].protocol", `"D" is not allowed; use "A", "B" or "C"`}}},
		{"protocol lowercase", []string{"    protocol: B\n", "    protocol: b #A\n"},
			[]want{{"#A", "resources[1].protocol", `did you mean "B"?`}}},
		{"compression", []string{"    compression: zstd\n", "    compression: lz4 #A\n"},
			[]want{{"#A", "resources[1].compression", `"lz4" is not allowed; use "off", "s2" or "zstd"`}}},
		{"split-brain", []string{"    split-brain: discard-zero-changes\n", "    split-brain: discard-youngest-primary #A\n"},
			[]want{{"#A", "resources[1].split-brain", `did you mean "discard-younger-primary"?`}}},
		{"split-brain node without a replica", []string{"    split-brain: discard-zero-changes\n", "    split-brain: discard-node-gamma #A\n"},
			[]want{{"#A", "resources[1].split-brain", `node "gamma" holds no replica of web; use "discard-node-alpha" or "discard-node-beta"`}}},
		{"split-brain node name", []string{"    split-brain: discard-zero-changes\n", "    split-brain: discard-node-Beta! #A\n"},
			[]want{{"#A", "resources[1].split-brain", `"discard-node-Beta!" is not allowed`}}},
		{"on-no-quorum", []string{"    on-no-quorum: io-error\n", "    on-no-quorum: freeze #A\n"},
			[]want{{"#A", "resources[1].on-no-quorum", `use "suspend-io" or "io-error"`}}},
		{"size unit", []string{"    size: 10G\n", "    size: 10GB #A\n"},
			[]want{{"#A", "resources[0].size", "unknown unit"}}},
		{"size zero", []string{"    size: 10G\n", "    size: 0 #A\n"},
			[]want{{"#A", "resources[0].size", "greater than zero"}}},
		{"size not 4K aligned", []string{"    size: 10G\n", "    size: 1000 #A\n"},
			[]want{{"#A", "resources[0].size", "not a multiple of 4 KiB; use 0"}}},
		{"size empty", []string{"    size: 10G\n", "    size: #A\n"},
			[]want{{"#A", "resources[0].size", "no value"}}},
		{"size list", []string{"    size: 10G\n", "    size: [10G] #A\n"},
			[]want{{"#A", "resources[0].size", "want a single value, found a list"}}},
		{"bitmap granularity too small", []string{"    bitmap-granularity: 64K\n", "    bitmap-granularity: 2K #A\n"},
			[]want{{"#A", "resources[1].bitmap-granularity", "not a power of two from 4K to 1G"}}},
		{"bitmap granularity too large", []string{"    bitmap-granularity: 64K\n", "    bitmap-granularity: 2G #A\n"},
			[]want{{"#A", "resources[1].bitmap-granularity", "not a power of two from 4K to 1G"}}},
		{"bitmap granularity not a power of two", []string{"    bitmap-granularity: 64K\n", "    bitmap-granularity: 12K #A\n"},
			[]want{{"#A", "resources[1].bitmap-granularity", "not a power of two"}}},
		{"al-extents", []string{"    al-extents: 257\n", "    al-extents: 5000 #A\n"},
			[]want{{"#A", "resources[1].al-extents", "not a whole number from 1 to 1018"}}},
		{"max-rate", []string{"      max-rate: 1G/s\n", "      max-rate: fast #A\n"},
			[]want{{"#A", "resources[1].resync.max-rate", "want a whole number"}}},
		{"app-share", []string{"      app-share: 0.25\n", "      app-share: 1.5 #A\n"},
			[]want{{"#A", "resources[1].resync.app-share", "not a number from 0 to 1"}}},
		{"app-share NaN", []string{"      app-share: 0.25\n", "      app-share: .nan #A\n"},
			[]want{{"#A", "resources[1].resync.app-share", "not a number from 0 to 1"}}},
		{"checksum", []string{"      checksum: true\n", "      checksum: yes #A\n"},
			[]want{{"#A", "resources[1].resync.checksum", "not true or false"}}},
		{"resync not a mapping", []string{"    resync:\n      max-rate: 1G/s\n      app-share: 0.25\n      checksum: true\n", "    resync: fast #A\n"},
			[]want{{"#A", "resources[1].resync", "want a mapping of keys"}}},
		{"bad cluster name", []string{"cluster: lab\n", "cluster: My_Lab #A\n"},
			[]want{{"#A", "cluster", `"My_Lab" is not a valid name; use 1 to 63 lowercase`}}},
		{"bad node name", []string{"  - name: gamma\n", "  - name: -gamma #A\n"},
			[]want{{"#A", "nodes[2].name", "not a valid name"}}},
		{"node address with port", []string{"    address: 192.0.2.13\n", "    address: 192.0.2.13:22 #A\n"},
			[]want{{"#A", "nodes[2].address", "has a port; write a host name or IP address only"}}},
		{"node address with brackets", []string{"    address: 192.0.2.13\n", "    address: '[2001:db8::1]' #A\n"},
			[]want{{"#A", "nodes[2].address", "without brackets"}}},
		{"node address garbage", []string{"    address: 192.0.2.13\n", "    address: not a host #A\n"},
			[]want{{"#A", "nodes[2].address", "not a host name or IP address"}}},
		{"replication address without port", []string{"        address: 192.0.2.11:7789\n", "        address: 192.0.2.11 #A\n"},
			[]want{{"#A", "resources[0].replicas.alpha.address", "is not HOST:PORT"}}},
		{"replication address wildcard", []string{"        address: 192.0.2.11:7789\n", "        address: 0.0.0.0:7789 #A\n"},
			[]want{{"#A", "resources[0].replicas.alpha.address", "the peer needs an address to dial"}}},
		{"replication port out of range", []string{"        address: 192.0.2.11:7789\n", "        address: 192.0.2.11:77890 #A\n"},
			[]want{{"#A", "resources[0].replicas.alpha.address", "not a number from 1 to 65535"}}},
		{"nbd-listen relative socket", []string{"        nbd-listen: 192.0.2.11:10809\n", "        nbd-listen: unix:nbd.sock #A\n"},
			[]want{{"#A", "resources[1].replicas.alpha.nbd-listen", "not absolute"}}},
		{"nbd-listen port 0", []string{"        nbd-listen: 192.0.2.11:10809\n", "        nbd-listen: 0.0.0.0:0 #A\n"},
			[]want{{"#A", "resources[1].replicas.alpha.nbd-listen", "not a number from 1 to 65535"}}},
		{"relative device", []string{"        device: /dev/vg0/web\n        meta", "        device: web.img #A\n        meta"},
			[]want{{"#A", "resources[1].replicas.alpha.device", `"web.img" is not an absolute path`}}},
		{"relative secret", []string{"secret-file: /etc/tandem/secret\n", "secret-file: secret #A\n"},
			[]want{{"#A", "secret-file", "not an absolute path"}}},
		{"relative accepted secret", []string{"secret-file: /etc/tandem/secret\n", "secret-file: /etc/tandem/secret\naccept-secret-files:\n  - secret.new #A\n"},
			[]want{{"#A", "accept-secret-files[0]", "not an absolute path"}}},
		{"accepted secrets not a list", []string{"secret-file: /etc/tandem/secret\n", "secret-file: /etc/tandem/secret\naccept-secret-files: /etc/tandem/secret.new #A\n"},
			[]want{{"#A", "accept-secret-files", "want a list"}}},
		{"preferred primary without a replica", []string{"    preferred-primary: beta\n", "    preferred-primary: gamma #A\n"},
			[]want{{"#A", "resources[1].preferred-primary", `node "gamma" holds no replica of web; name one of its replicas' nodes (alpha, beta)`}}},
		{"failback", []string{"    preferred-primary: beta\n", "    preferred-primary: beta\n    failback: always #A\n"},
			[]want{{"#A", "resources[1].failback", `"always" is not allowed; use "manual" or "auto"`}}},
		{"failback auto without a preferred primary", []string{"    size: 10G\n", "    size: 10G\n    failback: auto #A\n"},
			[]want{{"#A", "resources[0].failback", "failback: auto moves db back to its preferred primary, and it has none; add preferred-primary"}}},
		{"nodes not a list", []string{"nodes:\n  - name: alpha\n    address: 192.0.2.11\n  - name: beta\n    address: 192.0.2.12\n  - name: gamma\n    address: 192.0.2.13\n", "nodes: alpha #A\n"},
			[]want{{"#A", "nodes", "want a list"}}},
		// yaml.v3 names the line where the enclosing block starts.
		{"syntax error", []string{"    size: 10G\n", "    size: [10G\n"},
			[]want{{"  - name: db", "", "YAML syntax: did not find expected ',' or ']' (on this line or in the lines below it)"}}},
		{"tab indentation", []string{"    size: 10G\n", "\tsize: 10G\n"},
			[]want{{"  - name: db", "", "YAML syntax: found a tab character"}}},
		{"second document", []string{"cluster: lab\n", "cluster: lab\n", "        nbd-listen: unix:/run/tandem/beta-nbd.sock\n", "        nbd-listen: unix:/run/tandem/beta-nbd.sock\n--- #A\ncluster: other\n"},
			[]want{{"#A", "", "a second YAML document"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := base
			for i := 0; i+1 < len(tc.edits); i += 2 {
				if !strings.Contains(text, tc.edits[i]) {
					t.Fatalf("edit %d: %q is not in the file", i/2, tc.edits[i])
				}
				text = strings.Replace(text, tc.edits[i], tc.edits[i+1], 1)
			}
			cfg, err := Parse("tandem.yaml", []byte(text))
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected problems:\n%v", err)
				}
				return
			}
			if err == nil || cfg != nil {
				t.Fatalf("Parse succeeded (cfg %v), want %d problems", cfg != nil, len(tc.want))
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			got := Problems(err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(got), len(tc.want), err)
			}
			for i, w := range tc.want {
				line := lineOf(t, text, w.mark)
				prefix := fmt.Sprintf("tandem.yaml:%d: ", line)
				if w.path != "" {
					prefix += w.path + ": "
				}
				msg := got[i].Error()
				if !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, w.substr) {
					t.Errorf("problem %d:\n  got  %s\n  want %s...%s", i, msg, prefix, w.substr)
				}
				if got[i].Fix == "" {
					t.Errorf("problem %d has no fix: %s", i, msg)
				}
			}
		})
	}
}

// lineOf returns the 1-based line on which mark starts.
func lineOf(t *testing.T, text, mark string) int {
	t.Helper()
	i := strings.Index(text, mark)
	if i < 0 {
		t.Fatalf("marker %q not in the file", mark)
	}
	return strings.Count(text[:i], "\n") + 1
}

func TestParseEmpty(t *testing.T) {
	for _, text := range []string{"", "# only a comment\n", "---\n"} {
		_, err := Parse("tandem.yaml", []byte(text))
		if err == nil || !strings.Contains(err.Error(), "the file is empty; start from the example") {
			t.Errorf("Parse(%q) = %v", text, err)
		}
	}
	_, err := Parse("tandem.yaml", []byte("- a\n- b\n"))
	if err == nil || !strings.Contains(err.Error(), "tandem.yaml:1: want a mapping of keys, found a list") {
		t.Errorf("Parse(list) = %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(t.TempDir() + "/none.yaml")
	if err == nil || errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "config: reading") {
		t.Fatalf("Load(missing) = %v", err)
	}
}

func TestAliasesAreFollowed(t *testing.T) {
	text := strings.Replace(base, "    address: 192.0.2.11\n", "    address: &alpha 192.0.2.11\n", 1)
	text = strings.Replace(text, "  - name: beta\n    address: 192.0.2.12\n", "  - name: beta\n    address: 192.0.2.12\n    admin-socket: &sock /run/t/b.sock\n", 1)
	text = strings.Replace(text, "  - name: gamma\n    address: 192.0.2.13\n", "  - name: gamma\n    address: 192.0.2.13\n    data-dir: *sock\n", 1)
	cfg, err := Parse("tandem.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Nodes[2].DataDir != "/run/t/b.sock" {
		t.Errorf("alias not followed: %+v", cfg.Nodes[2])
	}
}

func TestProblemFormat(t *testing.T) {
	p := &Problem{File: "t.yaml", Line: 3, Path: "nodes[0].name", Msg: "bad", Fix: "fix it"}
	if got := p.Error(); got != "t.yaml:3: nodes[0].name: bad; fix it" {
		t.Errorf("got %q", got)
	}
	p = &Problem{Path: "cluster", Msg: "bad", Fix: "fix it"}
	if got := p.Error(); got != "cluster: bad; fix it" {
		t.Errorf("got %q", got)
	}
	p = &Problem{File: "t.yaml", Msg: "empty", Fix: "fill it"}
	if got := p.Error(); got != "t.yaml: empty; fill it" {
		t.Errorf("got %q", got)
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"name", "address", "admin-socket", "data-dir", "ca", "key"}
	for in, want := range map[string]string{
		"adress":       "address",
		"Address":      "address",
		"admin_socket": "admin-socket",
		"datadir":      "data-dir",
		"nam":          "name",
		"colour":       "",
		"cb":           "",
		"k":            "",
		"xyz":          "",
	} {
		if got := suggest(in, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestDocExamples keeps docs/configuration.md honest: every yaml block in it
// is a valid file, and its key tables name exactly the keys Parse knows.
func TestDocExamples(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	if len(blocks) < 2 {
		t.Fatalf("found %d yaml examples, want at least 2", len(blocks))
	}
	for i, b := range blocks {
		cfg, err := Parse(fmt.Sprintf("example %d", i+1), []byte(b[1]))
		if err != nil {
			t.Errorf("example %d:\n%v", i+1, err)
			continue
		}
		if err := cfg.Validate(""); err != nil {
			t.Errorf("example %d: %v", i+1, err)
		}
		if len(cfg.DataNodes()) != 2 || len(cfg.Witnesses()) != 1 || len(cfg.Resources) != 2 {
			t.Errorf("example %d: data nodes %v, witnesses %v, %d resources", i+1, cfg.DataNodes(), cfg.Witnesses(), len(cfg.Resources))
		}
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z-]+)` \\|").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}
	known := map[string]bool{}
	for _, keys := range [][]string{topKeys, nodeKeys, resourceKeys, resyncKeys, tlsKeys, replicaKeys, vipKeys, fenceKeys, timingKeys, alertKeys} {
		for _, k := range keys {
			known[k] = true
			if !documented[k] {
				t.Errorf("key %q has no row in docs/configuration.md", k)
			}
		}
	}
	for k := range documented {
		if !known[k] {
			t.Errorf("docs/configuration.md documents %q, which Parse does not know", k)
		}
	}
}

// TestParseFailback: failback is manual unless the file says auto.
func TestParseFailback(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(strings.Replace(base, "    preferred-primary: beta\n", "    preferred-primary: beta\n    failback: auto\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if db, web := cfg.Resource("db"), cfg.Resource("web"); db.Failback != FailbackManual || web.Failback != FailbackAuto {
		t.Errorf("failback of db %q, web %q; want manual (the default), auto", db.Failback, web.Failback)
	}
	if err := cfg.Validate(""); err != nil {
		t.Errorf("Validate(\"\") = %v", err)
	}
}

func TestParseAcceptSecretFiles(t *testing.T) {
	text := strings.Replace(base, "secret-file: /etc/tandem/secret\n", "secret-file: /etc/tandem/secret\naccept-secret-files:\n  - /etc/tandem/secret.new\n", 1)
	cfg, err := Parse("tandem.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.AcceptSecretFiles, []string{"/etc/tandem/secret.new"}) {
		t.Fatalf("accept-secret-files: %v", cfg.AcceptSecretFiles)
	}
	plain, err := Parse("tandem.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Hash() == plain.Hash() {
		t.Error("accepting another secret does not change the configuration hash")
	}
	same := strings.Replace(base, "secret-file: /etc/tandem/secret\n", "secret-file: /etc/tandem/secret\naccept-secret-files: [/etc/tandem/secret]\n", 1)
	cfg, err = Parse("tandem.yaml", []byte(same))
	if err == nil {
		err = cfg.Validate("")
	}
	if err == nil || !strings.Contains(err.Error(), "is the secret-file itself") {
		t.Fatalf("accepting the secret-file itself: %v", err)
	}
}

func TestParseSplitBrainPolicies(t *testing.T) {
	for _, p := range []string{"discard-older-primary", "discard-least-changes", "discard-node-beta"} {
		cfg, err := Parse("tandem.yaml", []byte(strings.Replace(base, "split-brain: discard-zero-changes", "split-brain: "+p, 1)))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if got := cfg.Resource("web").SplitBrain; string(got) != p {
			t.Errorf("%s parsed as %q", p, got)
		}
	}
	if n, ok := SplitBrain("discard-node-beta").DiscardNode(); !ok || n != "beta" {
		t.Errorf("DiscardNode: %q %v", n, ok)
	}
}

func TestParseMetricsListen(t *testing.T) {
	for _, addr := range []string{"192.0.2.11:9110", ":9110", "0.0.0.0:9110", "[::]:9110"} {
		cfg, err := Parse("tandem.yaml", []byte(strings.Replace(base, "    address: 192.0.2.11\n", "    address: 192.0.2.11\n    metrics-listen: \""+addr+"\"\n", 1)))
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		if n, _ := cfg.Node("alpha"); n.MetricsListen != addr {
			t.Errorf("%s parsed as %q", addr, n.MetricsListen)
		}
	}
}
