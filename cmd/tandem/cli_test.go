package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestServeFlagValidation(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "exists.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.img")
	sock := "unix:" + filepath.Join(dir, "s")

	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no listen", []string{"--export", "d=" + img}, "no --listen"},
		{"no export", []string{"--listen", sock}, "no --export"},
		{"export without =", []string{"--listen", sock, "--export", img}, "bad --export"},
		{"export without path", []string{"--listen", sock, "--export", "disk="}, "bad --export"},
		{"duplicate export", []string{"--listen", sock, "--export", "d=" + img, "--export", "d=" + img}, "given twice"},
		{"listen without port", []string{"--listen", "127.0.0.1", "--export", "d=" + img}, "bad --listen"},
		{"listen bad port", []string{"--listen", "127.0.0.1:http", "--export", "d=" + img}, "bad --listen"},
		{"listen big port", []string{"--listen", "127.0.0.1:70000", "--export", "d=" + img}, "bad --listen"},
		{"listen empty unix", []string{"--listen", "unix:", "--export", "d=" + img}, "empty socket path"},
		{"unknown size suffix", []string{"--listen", sock, "--export", "d=" + img, "--size", "10X"}, "unknown unit"},
		{"zero size", []string{"--listen", sock, "--export", "d=" + img, "--size", "0"}, "greater than zero"},
		{"cert without key", []string{"--listen", sock, "--export", "d=" + img, "--tls-cert", "c.pem"}, "go together"},
		{"tls-only without cert", []string{"--listen", sock, "--export", "d=" + img, "--tls-only"}, "--tls-only needs"},
		{"negative queue depth", []string{"--listen", sock, "--export", "d=" + img, "--queue-depth", "-1"}, "--queue-depth"},
		{"missing file without size", []string{"--listen", sock, "--export", "d=" + missing}, "pass --size"},
		{"missing file read-only", []string{"--listen", sock, "--export", "d=" + missing, "--size", "1M", "--read-only"}, "--read-only cannot create"},
		{"positional argument", []string{"--listen", sock, "--export", "d=" + img, "extra"}, "unknown command"},
		{"bad log format", []string{"--log-format", "xml", "--listen", sock, "--export", "d=" + img}, "--log-format"},
		{"bad log level", []string{"--log-level", "loud", "--listen", sock, "--export", "d=" + img}, "--log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := execute(t, append([]string{"serve"}, tc.args...)...)
			if err == nil {
				t.Fatalf("serve %q succeeded, want an error containing %q", tc.args, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("serve %q: error %q, want it to contain %q", tc.args, err, tc.wantErr)
			}
		})
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("a refused command line created %s (stat: %v)", missing, err)
	}
}

func TestServeConfigAcceptsValid(t *testing.T) {
	f := serveFlags{
		listen:          []string{"127.0.0.1:0", "[::1]:10809", "unix:/tmp/x.sock"},
		exports:         []string{"=a.img", "b=b.img", "c=dir/with=sign.img"},
		size:            "64M",
		shutdownTimeout: 1,
	}
	cfg, err := f.config()
	if err != nil {
		t.Fatal(err)
	}
	want := []exportSpec{{"", "a.img"}, {"b", "b.img"}, {"c", "dir/with=sign.img"}}
	if len(cfg.specs) != len(want) {
		t.Fatalf("exports = %v, want %v", cfg.specs, want)
	}
	for i := range want {
		if cfg.specs[i] != want[i] {
			t.Errorf("export %d = %v, want %v", i, cfg.specs[i], want[i])
		}
	}
	if cfg.sizeBytes != 64<<20 {
		t.Errorf("size = %d", cfg.sizeBytes)
	}
}

func TestRunExitStatus(t *testing.T) {
	var out, errb strings.Builder
	if code := run([]string{"serve"}, strings.NewReader(""), &out, &errb); code != 1 {
		t.Fatalf("run(serve) = %d, want 1", code)
	}
	if !strings.HasPrefix(errb.String(), "tandem: serve: no --listen") {
		t.Fatalf("stderr %q", errb.String())
	}
	if code := run([]string{"version"}, strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("run(version) = %d, want 0", code)
	}
}

func TestVersion(t *testing.T) {
	out, _, err := execute(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "tandem "+version+" ") || !strings.Contains(out, runtime.Version()) {
		t.Fatalf("version printed %q", out)
	}

	out, _, err = execute(t, "version", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var v versionInfo
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("version --json printed %q: %v", out, err)
	}
	if v.Version != version || v.Go != runtime.Version() || v.OS != runtime.GOOS {
		t.Fatalf("version --json = %+v", v)
	}
}

func TestHelpNamesCommands(t *testing.T) {
	out, _, err := execute(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"serve", "attach", "detach", "version", "completion", "NBD"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help does not mention %q", want)
		}
	}
}

func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{
		"bash": "bash completion",
		"zsh":  "#compdef tandem",
		"fish": "complete -c tandem",
	} {
		out, _, err := execute(t, "completion", shell)
		if err != nil {
			t.Fatalf("completion %s: %v", shell, err)
		}
		if !strings.Contains(out, want) {
			t.Errorf("completion %s output lacks %q", shell, want)
		}
	}
}

func TestAttachWithoutModule(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "nbd0")
	_, _, err := execute(t, "attach", "nbd://127.0.0.1:1/disk", dev)
	if err == nil || !strings.Contains(err.Error(), "modprobe nbd") {
		t.Fatalf("attach to a missing device: %v, want the modprobe hint", err)
	}
	_, _, err = execute(t, "detach", dev)
	if err == nil || !strings.Contains(err.Error(), "modprobe nbd") {
		t.Fatalf("detach of a missing device: %v, want the modprobe hint", err)
	}
}

func TestAttachBadURI(t *testing.T) {
	for _, uri := range []string{"nbd://127.0.0.1:10809/", "http://x/disk", "nbds://h/disk", "nbd+unix:///disk"} {
		_, _, err := execute(t, "attach", uri, "/dev/nbd0")
		if err == nil {
			t.Errorf("attach %q accepted", uri)
		}
	}
}
