package config

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/replicate/md"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// local is a lab file: three nodes on one host (different ports), files in
// DIR. Node alpha's files are made by setupLocal; beta's do not exist.
const local = `cluster: lab
secret-file: DIR/secret
nodes:
  - name: alpha
    address: 127.0.0.1
  - name: beta
    address: 127.0.0.1
  - name: wit
    address: 127.0.0.1
resources:
  - name: r0
    size: 1M
    replicas:
      alpha:
        device: DIR/a0.img
        address: 127.0.0.1:7789
        nbd-listen: 127.0.0.1:10809
      beta:
        device: DIR/b0.img
        address: 127.0.0.1:7790
        nbd-listen: 127.0.0.1:10810
  - name: r1
    size: 1M
    replicas:
      alpha:
        device: DIR/a1.img
        meta: DIR/a1.md
        address: 127.0.0.1:7791
      beta:
        device: DIR/b1.img
        address: 127.0.0.1:7792
        nbd-listen: 127.0.0.1:10810
`

const mib = 1 << 20

// setupLocal writes the file (after edits) and alpha's files: the secret,
// r0's device with room for internal metadata, r1's device of exactly the
// data size (its metadata is external and not created yet).
func setupLocal(t *testing.T, edits ...string) (dir string, cfg *Config) {
	t.Helper()
	dir = t.TempDir()
	text := strings.ReplaceAll(local, "DIR", dir)
	for i := 0; i+1 < len(edits); i += 2 {
		old, new := strings.ReplaceAll(edits[i], "DIR", dir), strings.ReplaceAll(edits[i+1], "DIR", dir)
		if !strings.Contains(text, old) {
			t.Fatalf("edit %q is not in the file", old)
		}
		text = strings.Replace(text, old, new, 1)
	}
	path := filepath.Join(dir, "tandem.yaml")
	writeFile(t, path, text, 0o644)
	writeFile(t, filepath.Join(dir, "secret"), "s3cret\n", 0o600)
	makeFile(t, filepath.Join(dir, "a0.img"), mib+76<<10) // 1 MiB of data needs 76 KiB of metadata
	makeFile(t, filepath.Join(dir, "a1.img"), mib)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return dir, cfg
}

func writeFile(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // umask would have narrowed it
		t.Fatal(err)
	}
}

func makeFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

func TestValidateLocal(t *testing.T) {
	_, cfg := setupLocal(t)
	for _, node := range []string{"alpha", "wit", ""} {
		if err := cfg.Validate(node); err != nil {
			t.Errorf("Validate(%q): %v", node, err)
		}
	}
	// beta's devices live on another machine in real life: they are only
	// looked at when validating as beta.
	err := cfg.Validate("beta")
	ps := Problems(err)
	if len(ps) != 2 || !strings.Contains(ps[0].Error(), "b0.img does not exist") || !strings.Contains(ps[1].Error(), "b1.img does not exist") {
		t.Errorf("Validate(beta) = %v", err)
	}
}

func TestValidateLocalProblems(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edits []string
		setup func(t *testing.T, dir string)
		node  string
		want  []string // regexps, one per problem, in order
	}{
		{name: "secret missing", setup: func(t *testing.T, dir string) { rm(t, dir, "secret") },
			want: []string{`^DIR/tandem.yaml:2: secret-file: DIR/secret does not exist; create it .*chmod 600 DIR/secret$`}},
		{name: "secret empty", setup: func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "secret"), "", 0o600) },
			want: []string{`^DIR/tandem.yaml:2: secret-file: DIR/secret is empty; write the shared secret`}},
		{name: "secret world-readable", setup: func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "secret"), "x", 0o644) },
			want: []string{`^DIR/tandem.yaml:2: secret-file: DIR/secret is accessible to every user \(mode 0644\); chmod 600 DIR/secret$`}},
		{name: "secret is a directory", setup: func(t *testing.T, dir string) {
			rm(t, dir, "secret")
			if err := os.Mkdir(filepath.Join(dir, "secret"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, want: []string{`:2: secret-file: DIR/secret is not a regular file`}},
		{name: "secret is checked for a witness too", node: "wit", setup: func(t *testing.T, dir string) { rm(t, dir, "secret") },
			want: []string{`:2: secret-file: DIR/secret does not exist`}},
		{name: "device missing", setup: func(t *testing.T, dir string) { rm(t, dir, "a0.img") },
			want: []string{`^DIR/tandem.yaml:15: resources\[0\].replicas.alpha.device: DIR/a0.img does not exist; correct the path, or create a file for it: truncate -s 1126400 DIR/a0.img$`}},
		{name: "device missing under /dev", edits: []string{"device: DIR/a0.img", "device: /dev/tandem-test-none"},
			want: []string{`:15: resources\[0\].replicas.alpha.device: /dev/tandem-test-none does not exist; correct the path, or create the disk first \(it needs 1126400 bytes\)$`}},
		{name: "device too small for internal metadata", setup: func(t *testing.T, dir string) { makeFile(t, filepath.Join(dir, "a0.img"), mib) },
			want: []string{`^DIR/tandem.yaml:15: resources\[0\].replicas.alpha.device: DIR/a0.img has 1 MiB, too small for size 1 MiB plus 76 KiB of internal metadata; lower size, or grow it to at least 1126400 bytes \(truncate -s 1126400 DIR/a0.img\), or keep the metadata in a file`}},
		{name: "device too small, external metadata", setup: func(t *testing.T, dir string) { makeFile(t, filepath.Join(dir, "a1.img"), mib-4096) },
			want: []string{`:26: resources\[1\].replicas.alpha.device: DIR/a1.img has 1020 KiB, too small for size 1 MiB; lower size, or grow it to at least 1048576 bytes`}},
		{name: "device is a directory", setup: func(t *testing.T, dir string) {
			rm(t, dir, "a0.img")
			if err := os.Mkdir(filepath.Join(dir, "a0.img"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, want: []string{`:15: resources\[0\].replicas.alpha.device: DIR/a0.img is not a block device or a regular file`}},
		{name: "same device by another path", setup: func(t *testing.T, dir string) {
			rm(t, dir, "a1.img")
			if err := os.Symlink(filepath.Join(dir, "a0.img"), filepath.Join(dir, "a1.img")); err != nil {
				t.Fatal(err)
			}
		}, want: []string{`:26: resources\[1\].replicas.alpha.device: DIR/a1.img is the same file as the device of resource r0 \(line 15\), by another path; give each resource its own device`}},
		{name: "meta directory missing", edits: []string{"meta: DIR/a1.md", "meta: DIR/none/a1.md"},
			want: []string{`:27: resources\[1\].replicas.alpha.meta: the directory DIR/none does not exist; mkdir -p DIR/none`}},
		{name: "meta is a directory", setup: func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, "a1.md"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, want: []string{`:27: resources\[1\].replicas.alpha.meta: DIR/a1.md is not a regular file or a block device`}},
		{name: "meta file existing is fine", setup: func(t *testing.T, dir string) { makeFile(t, filepath.Join(dir, "a1.md"), 0) }},
		{name: "data-dir is a file", edits: []string{"  - name: alpha\n    address: 127.0.0.1\n", "  - name: alpha\n    address: 127.0.0.1\n    data-dir: DIR/secret\n"},
			want: []string{`:6: nodes\[0\].data-dir: DIR/secret exists and is not a directory`}},
		{name: "unknown node", node: "zeta",
			want: []string{`^DIR/tandem.yaml: node "zeta" is not in the nodes list; pass --node with one of: alpha, beta, wit$`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, cfg := setupLocal(t, tc.edits...)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			node := tc.node
			if node == "" {
				node = "alpha"
			}
			err := cfg.Validate(node)
			checkProblems(t, err, dir, tc.want)
		})
	}
}

func rm(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func checkProblems(t *testing.T, err error, dir string, want []string) {
	t.Helper()
	got := Problems(err)
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(got), len(want), err)
	}
	if err != nil && !errors.Is(err, ErrInvalid) {
		t.Errorf("%v does not wrap ErrInvalid", err)
	}
	for i, w := range want {
		re := regexp.MustCompile(strings.ReplaceAll(w, "DIR", regexp.QuoteMeta(dir)))
		if !re.MatchString(got[i].Error()) {
			t.Errorf("problem %d:\n  got  %s\n  want %s", i, got[i], re)
		}
	}
}

// writeCerts writes a certificate (cert.pem), its key (key.pem) and the
// CA that signed it (ca.pem) to dir.
func writeCerts(t *testing.T, dir string) {
	t.Helper()
	testenv.WriteCA(t, dir, "t", "alpha")
	for from, to := range map[string]string{"t-alpha.pem": "cert.pem", "t-alpha-key.pem": "key.pem", "t-ca.pem": "ca.pem"} {
		if err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestValidateTLS(t *testing.T) {
	tlsEdit := []string{"  - name: r0\n    size: 1M\n", "  - name: r0\n    size: 1M\n    tls:\n      cert: DIR/cert.pem\n      key: DIR/key.pem\n      ca: DIR/ca.pem\n"}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  []string
	}{
		{"valid", func(t *testing.T, dir string) {}, nil},
		{"bad cert", func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "cert.pem"), "junk", 0o644) },
			[]string{`:13: resources\[0\].tls: loading cert DIR/cert.pem and key DIR/key.pem: .*; point cert and key at`}},
		{"key readable by all", func(t *testing.T, dir string) { _ = os.Chmod(filepath.Join(dir, "key.pem"), 0o644) },
			[]string{`:13: resources\[0\].tls.key: DIR/key.pem is accessible to every user \(mode 0644\); chmod 600 DIR/key.pem`}},
		{"ca not PEM", func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "ca.pem"), "junk", 0o644) },
			[]string{`:13: resources\[0\].tls.ca: DIR/ca.pem holds no PEM certificate`}},
		{"ca missing", func(t *testing.T, dir string) { rm(t, dir, "ca.pem") },
			[]string{`:13: resources\[0\].tls.ca: open DIR/ca.pem: no such file`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, cfg := setupLocal(t, tlsEdit...)
			writeCerts(t, dir)
			tc.setup(t, dir)
			checkProblems(t, cfg.Validate("alpha"), dir, tc.want)
			// The witness holds no replica: the TLS files are not its business.
			if err := cfg.Validate("wit"); err != nil {
				t.Errorf("Validate(wit): %v", err)
			}
		})
	}
}

// TestDeviceSizeMatchesMD: the size a device needs for internal metadata is
// exactly what replicate/md needs to lay out size bytes of data on it, so a
// device that validates is one create-md accepts, and one block less is not.
func TestDeviceSizeMatchesMD(t *testing.T) {
	for _, tc := range []struct{ size, gran int64 }{
		{mib, 4096}, {1 << 30, 4096}, {1 << 40, 4096}, {1 << 40, 64 << 10}, {10<<30 + 4096, 4096}, {3 << 20, 1 << 30},
	} {
		r := &Resource{Size: tc.size, BitmapGranularity: tc.gran, ALExtents: DefaultALExtents}
		need := tc.size + internalMeta(r, &Replica{Meta: MetaInternal})
		if need <= tc.size {
			t.Fatalf("size %d: no room for metadata", tc.size)
		}
		l, err := md.InternalLayout(need, md.Options{Granularity: tc.gran})
		if err != nil || l.DataSize < tc.size {
			t.Errorf("size %d, granularity %d: a device of %d bytes holds %d bytes of data (%v)", tc.size, tc.gran, need, l.DataSize, err)
		}
		l, err = md.InternalLayout(need-4096, md.Options{Granularity: tc.gran})
		if err == nil && l.DataSize >= tc.size {
			t.Errorf("size %d, granularity %d: %d bytes would do, the check asks for %d", tc.size, tc.gran, need-4096, need)
		}
		if internalMeta(r, &Replica{Meta: "/var/lib/tandem/r.md"}) != 0 {
			t.Error("external metadata counted on the device")
		}
	}
}

func TestNodeLookup(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := cfg.Node("beta"); err != nil || n.Address != "192.0.2.12" {
		t.Errorf("Node(beta) = %+v, %v", n, err)
	}
	if n, err := cfg.LocalNode("gamma"); err != nil || n.Name != "gamma" {
		t.Errorf("LocalNode(gamma) = %+v, %v", n, err)
	}
	_, err = cfg.Node("zeta")
	if !errors.Is(err, ErrUnknownNode) || !strings.Contains(err.Error(), "alpha, beta, gamma") {
		t.Errorf("Node(zeta) = %v", err)
	}
	if _, err := cfg.LocalNode("zeta"); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("LocalNode(zeta) = %v", err)
	}

	host, err := os.Hostname()
	if err != nil {
		t.Skip("no host name:", err)
	}
	short, _, _ := strings.Cut(strings.ToLower(host), ".")
	if !label.MatchString(short) || short == "alpha" || short == "beta" || short == "gamma" {
		t.Skipf("host name %q cannot be a node name here", host)
	}
	if _, err := cfg.LocalNode(""); !errors.Is(err, ErrUnknownNode) || !strings.Contains(err.Error(), "pass --node") {
		t.Errorf("LocalNode(\"\") on host %s = %v", host, err)
	}
	cfg, err = Parse("tandem.yaml", []byte(strings.Replace(base, "name: gamma", "name: "+short, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := cfg.LocalNode(""); err != nil || n.Name != short {
		t.Errorf("LocalNode(\"\") on host %s = %+v, %v", host, n, err)
	}
}

func TestHash(t *testing.T) {
	cfg, err := Parse("a.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	h := cfg.Hash()
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(h) {
		t.Fatalf("Hash() = %q", h)
	}
	same := map[string][]string{
		"comments and spacing": {"cluster: lab\n", "# the lab\ncluster:   lab   # name\n\n"},
		"explicit defaults": {"    size: 10G\n", "    size: 10240M\n    protocol: C\n    compression: off\n    bitmap-granularity: 4096\n    al-extents: 1018\n    resync: {max-rate: 100M, app-share: 0.5, checksum: false}\n    split-brain: disconnect\n    on-no-quorum: suspend-io\n    failback: manual\n",
			"  - name: alpha\n    address: 192.0.2.11\n", "  - name: alpha\n    address: 192.0.2.11\n    admin-socket: /run/tandem/alpha.sock\n    data-dir: /var/lib/tandem/alpha/\n"},
		"key order":  {"  - name: alpha\n    address: 192.0.2.11\n", "  - address: 192.0.2.11\n    name: alpha\n"},
		"node order": {"  - name: alpha\n    address: 192.0.2.11\n  - name: beta\n    address: 192.0.2.12\n", "  - name: beta\n    address: 192.0.2.12\n  - name: alpha\n    address: 192.0.2.11\n"},
		"replica order": {"      alpha:\n        device: /dev/vg0/db\n        address: 192.0.2.11:7789\n      beta:\n        device: /dev/vg0/db\n        address: 192.0.2.12:7789\n",
			"      beta:\n        device: /dev/vg0/db\n        address: 192.0.2.12:7789\n      alpha:\n        device: /dev/vg0/db\n        address: 192.0.2.11:7789\n"},
	}
	different := map[string][]string{
		"protocol":   {"    protocol: B\n", "    protocol: A\n"},
		"size":       {"    size: 10G\n", "    size: 11G\n"},
		"checksum":   {"      checksum: true\n", "      checksum: false\n"},
		"app-share":  {"      app-share: 0.25\n", "      app-share: 0.26\n"},
		"tls":        {"      ca: /etc/tandem/ca.pem\n", "      ca: /etc/tandem/ca2.pem\n"},
		"preferred":  {"    preferred-primary: beta\n", "    preferred-primary: alpha\n"},
		"failback":   {"    preferred-primary: beta\n", "    preferred-primary: beta\n    failback: auto\n"},
		"nbd-listen": {"        nbd-listen: 192.0.2.11:10809\n", "        nbd-listen: 192.0.2.11:10811\n"},
	}
	check := func(name string, edits []string, wantSame bool) {
		text := base
		for i := 0; i+1 < len(edits); i += 2 {
			if !strings.Contains(text, edits[i]) {
				t.Fatalf("%s: %q not in base", name, edits[i])
			}
			text = strings.Replace(text, edits[i], edits[i+1], 1)
		}
		c2, err := Parse("b.yaml", []byte(text))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := c2.Hash() == h; got != wantSame {
			t.Errorf("%s: same hash = %v, want %v", name, got, wantSame)
		}
	}
	for name, e := range same {
		check(name, e, true)
	}
	for name, e := range different {
		check(name, e, false)
	}
}

// A Config built in code (tests of other packages, tools) gets the checks
// Parse does while reading.
func TestValidateBuiltInCode(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	cfg.parsed = false
	if err := cfg.Validate(""); err != nil {
		t.Errorf("valid config built in code: %v", err)
	}
	cfg.Resources[0].Protocol = "D"
	cfg.Resources[0].Replicas[0].Device = "rel.img"
	cfg.Resources[1].Replicas = cfg.Resources[1].Replicas[:1]
	checkProblems(t, cfg.Validate(""), "", []string{
		`^tandem.yaml: resources\[0\]\.protocol: "D" is not allowed`,
		`^tandem.yaml: resources\[0\]\.replicas\.alpha\.device: "rel.img" is not an absolute path`,
		`^tandem.yaml:36: resources\[1\]\.preferred-primary: node "beta" holds no replica of web`,
		`^tandem.yaml:37: resources\[1\]\.replicas: has 1 replica \(alpha\)`,
	})

	var zero Config
	ps := Problems(zero.Validate(""))
	if len(ps) != 2 || ps[0].Path != "cluster" || ps[1].Path != "secret-file" {
		t.Errorf("zero Config: %v", ps)
	}
}

// TestValidateBlockDevice: production replicas sit on block devices, whose
// size comes from seeking to their end, not from stat.
func TestValidateBlockDevice(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "losetup")
	backing := filepath.Join(t.TempDir(), "loop.img")
	makeFile(t, backing, mib)
	loop := strings.TrimSpace(testenv.Run(t, "losetup", "-f", "--show", backing))
	t.Cleanup(func() {
		if _, stderr, err := testenv.RunErr("losetup", "-d", loop); err != nil {
			t.Errorf("losetup -d %s: %v: %s", loop, err, stderr)
		}
	})

	// 1 MiB of device: enough for size 1M with the metadata in a file...
	dir, cfg := setupLocal(t, "device: DIR/a0.img", "device: "+loop, "        address: 127.0.0.1:7789\n", "        meta: DIR/a0.md\n        address: 127.0.0.1:7789\n")
	checkProblems(t, cfg.Validate("alpha"), dir, nil)

	// ... not with internal metadata; no truncate hint for a block device.
	dir, cfg = setupLocal(t, "device: DIR/a0.img", "device: "+loop)
	checkProblems(t, cfg.Validate("alpha"), dir, []string{
		`:15: resources\[0\].replicas.alpha.device: ` + regexp.QuoteMeta(loop) + ` has 1 MiB, too small for size 1 MiB plus 76 KiB of internal metadata; lower size, or grow it to at least 1126400 bytes, or keep the metadata in a file`,
	})

	// A metadata block device too small for the metadata.
	dir, cfg = setupLocal(t, "  - name: r1\n    size: 1M\n", "  - name: r1\n    size: 100G\n", "meta: DIR/a1.md", "meta: "+loop, "device: DIR/a1.img", "device: DIR/big.img")
	makeFile(t, filepath.Join(dir, "big.img"), 100<<30)
	checkProblems(t, cfg.Validate("alpha"), dir, []string{
		`:27: resources\[1\].replicas.alpha.meta: ` + regexp.QuoteMeta(loop) + ` has 1 MiB, the metadata needs [0-9]+ bytes \(3.2 MiB\); use a bigger device or a file for the metadata$`,
	})
}

func TestValidateMetricsTLS(t *testing.T) {
	withTLS := func(tlsBlock string) []string {
		return []string{"  - name: alpha\n    address: 127.0.0.1\n", "  - name: alpha\n    address: 127.0.0.1\n    metrics-listen: 127.0.0.1:9110\n    metrics-tls:\n" + tlsBlock}
	}
	both := "      cert: DIR/cert.pem\n      key: DIR/key.pem\n"
	for _, tc := range []struct {
		name  string
		edits []string
		setup func(t *testing.T, dir string)
		want  []string
	}{
		{"valid, any client", withTLS(both), nil, nil},
		{"valid, client certificates", withTLS(both + "      ca: DIR/ca.pem\n"), nil, nil},
		{"key readable by all", withTLS(both), func(t *testing.T, dir string) { _ = os.Chmod(filepath.Join(dir, "key.pem"), 0o644) },
			[]string{`:7: nodes\[0\].metrics-tls.key: DIR/key.pem is accessible to every user \(mode 0644\); chmod 600 DIR/key.pem`}},
		{"ca missing", withTLS(both + "      ca: DIR/nope.pem\n"), nil,
			[]string{`:7: nodes\[0\].metrics-tls.ca: open DIR/nope.pem: no such file.*the CA whose client certificates may scrape`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, cfg := setupLocal(t, tc.edits...)
			writeCerts(t, dir)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			checkProblems(t, cfg.Validate("alpha"), dir, tc.want)
		})
	}
	// Without cert, or without metrics-listen, the file does not load,
	// and says what to add.
	for block, want := range map[string]string{
		"    metrics-listen: 127.0.0.1:9110\n    metrics-tls:\n      key: DIR/key.pem\n": "add cert: /path/to/metrics-cert.pem",
		"    metrics-tls:\n" + both: ":6: nodes[0].metrics-tls: metrics-tls without metrics-listen; add metrics-listen: HOST:PORT",
	} {
		dir := t.TempDir()
		text := strings.ReplaceAll(strings.Replace(local, "  - name: alpha\n    address: 127.0.0.1\n", "  - name: alpha\n    address: 127.0.0.1\n"+block, 1), "DIR", dir)
		writeFile(t, filepath.Join(dir, "tandem.yaml"), text, 0o644)
		if _, err := Load(filepath.Join(dir, "tandem.yaml")); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", block, err, want)
		}
	}
}
