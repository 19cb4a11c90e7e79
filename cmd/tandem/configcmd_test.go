package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon/daemontest"
)

// labConfig: two data nodes and a witness on one host, as in the lab.
const labConfig = `cluster: lab
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

// writeLab writes the file and node alpha's secret and devices; it returns
// the directory and the file's path.
func writeLab(t *testing.T, text string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "tandem.yaml")
	// 1 MiB of data needs 76 KiB of internal metadata (replicate/md's layout).
	for name, size := range map[string]int64{"a0.img": 1<<20 + 76<<10, "a1.img": 1 << 20} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, name), size); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(text, "DIR", dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

func TestConfigValidateOK(t *testing.T) {
	_, path := writeLab(t, labConfig)
	out, errOut, err := execute(t, "--config", path, "config", "validate", "--node", "alpha")
	if err != nil {
		t.Fatalf("err %v, stderr %q", err, errOut)
	}
	want := "ok: cluster lab, 3 nodes (alpha, beta data; wit witness), 2 resources\nchecked the local files of node alpha\n"
	if out != want {
		t.Errorf("stdout %q, want %q", out, want)
	}

	// Alerts are counted, and their programs looked for on this host.
	dir, withAlert := writeLab(t, strings.Replace(labConfig, "cluster: lab\n", "cluster: lab\nalerts:\n  - path: DIR/alert\n", 1))
	if _, errOut, err := execute(t, "--config", withAlert, "config", "validate", "--node", "alpha"); err == nil || !strings.Contains(errOut, "alert does not exist on this host") {
		t.Errorf("missing alert program: err %v, stderr %q", err, errOut)
	}
	if err := os.WriteFile(filepath.Join(dir, "alert"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, errOut, err := execute(t, "--config", withAlert, "config", "validate", "--node", "alpha"); err != nil ||
		!strings.HasPrefix(out, "ok: cluster lab, 3 nodes (alpha, beta data; wit witness), 2 resources, 1 alert\n") {
		t.Errorf("with an alert: %q, %q, %v", out, errOut, err)
	}

	// Without --node on a host that is not a node, the node's files are not
	// looked at (beta's devices do not exist here, and that is fine).
	host, _ := os.Hostname()
	if h, _, _ := strings.Cut(strings.ToLower(host), "."); h == "alpha" || h == "beta" || h == "wit" {
		t.Skipf("this host is called %s", host)
	}
	out, _, err = execute(t, "config", "validate", "--config", path)
	if err != nil || !strings.HasPrefix(out, "ok: cluster lab, 3 nodes") || !strings.Contains(out, "local files not checked") {
		t.Errorf("without --node: %q, %v", out, err)
	}
}

func TestConfigValidateProblems(t *testing.T) {
	text := strings.Replace(labConfig, "    size: 1M\n", "    size: 1M\n    protocl: C\n", 1)
	text = strings.Replace(text, "  - name: wit\n", "  - name: beta\n", 1)
	_, path := writeLab(t, text)
	out, errOut, err := execute(t, "--config", path, "config", "validate", "--node", "alpha")
	if err == nil || err.Error() != "config validate: 2 problems in "+path {
		t.Fatalf("err = %v", err)
	}
	if out != "" {
		t.Errorf("stdout %q", out)
	}
	want := path + `:8: nodes[2].name: node "beta" is listed twice (first on line 6); remove the second entry or give it its own name
` + path + `:13: resources[0].protocl: unknown key "protocl"; did you mean "protocol"?
`
	if errOut != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, want)
	}

	// The local checks run for the node asked for: beta's devices are missing.
	_, path = writeLab(t, labConfig)
	_, errOut, err = execute(t, "--config", path, "config", "validate", "--node", "beta")
	if err == nil || !strings.Contains(err.Error(), "2 problems") ||
		!strings.Contains(errOut, ":18: resources[0].replicas.beta.device: ") || !strings.Contains(errOut, "b1.img does not exist") {
		t.Errorf("--node beta: %v\n%s", err, errOut)
	}

	_, errOut, err = execute(t, "--config", path, "config", "validate", "--node", "zeta")
	if err == nil || !strings.Contains(errOut, `node "zeta" is not in the nodes list; pass --node with one of: alpha, beta, wit`) {
		t.Errorf("--node zeta: %v\n%s", err, errOut)
	}
}

func TestConfigValidateMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.yaml")
	_, _, err := execute(t, "--config", path, "config", "validate")
	if err == nil || !strings.Contains(err.Error(), "no such file") || !strings.Contains(err.Error(), "pass --config PATH") {
		t.Fatalf("err = %v", err)
	}
	var out, errb strings.Builder
	if code := run([]string{"--config", path, "config", "validate"}, strings.NewReader(""), &out, &errb); code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
}

func TestConfigFlagIsGlobal(t *testing.T) {
	root := newRootCmd(&app{})
	f := root.PersistentFlags().Lookup("config")
	if f == nil || f.DefValue != "/etc/tandem/tandem.yaml" {
		t.Fatalf("--config flag: %+v", f)
	}
	// Subcommands see it.
	cmd, _, err := root.Find([]string{"config", "validate"})
	if err != nil || configPath(cmd) != "/etc/tandem/tandem.yaml" {
		t.Errorf("config validate sees %q (%v)", configPath(cmd), err)
	}
}

func TestConfigDiff(t *testing.T) {
	lab := daemontest.NewLab(t)
	b, err := os.ReadFile(lab.Path)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(lab.Dir, "new.yaml")
	daemontest.Write(t, other, string(b), 0o644)
	if out := mustRun(t, "--config", lab.Path, "config", "diff", other); !strings.Contains(out, "no difference") {
		t.Errorf("same files: %q", out)
	}
	changed := strings.Replace(string(b), "    size: 1M\n", "    size: 1M\n    al-extents: 7\n    resync:\n      max-rate: 5M\n", 1)
	daemontest.Write(t, other, changed, 0o644)
	out, _, err := execute(t, "--config", lab.Path, "config", "diff", other)
	var es *exitStatus
	if !errors.As(err, &es) || es.Code != 1 {
		t.Fatalf("differing files: %v", err)
	}
	for _, w := range []string{"Resources[r0].ALExtents\tneeds a daemon restart\n", "Resources[r0].Resync.MaxRate\ttandem adjust applies it\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("diff lacks %q:\n%s", w, out)
		}
	}
	daemontest.Write(t, other, "cluster: [\n", 0o644)
	mustFail(t, "new.yaml", "--config", lab.Path, "config", "diff", other)
}
