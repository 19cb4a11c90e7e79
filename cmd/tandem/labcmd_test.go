package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLabCmdRefusals: bad input is refused with a clear message and
// changes nothing (no lab directory appears). The lab itself is tested
// end to end in tools/lab.
func TestLabCmdRefusals(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lab")
	root := os.Geteuid() == 0
	for _, c := range []struct {
		args []string
		want string // as root; without root every command says it needs root
	}{
		{[]string{"lab", "status"}, "no lab is up in this directory"},
		{[]string{"lab", "crash", "delta"}, `unknown node "delta"`},
		{[]string{"lab", "crash", "client"}, `unknown node "client"`},
		{[]string{"lab", "cut", "alpha", "alpha"}, "name two different nodes"},
		{[]string{"lab", "isolate", "alpha"}, "no lab is up in this directory"},
		{[]string{"lab", "exec", "alpha", "true"}, "want NODE -- CMD"},
		{[]string{"lab", "exec", "nosuch", "--", "true"}, `unknown node "nosuch"`},
		{[]string{"lab", "up", "--size", "1KB"}, "--size"},
		{[]string{"lab", "up", "--size", "1000"}, "multiple of 4 KiB"},
		{[]string{"lab", "up", "--resources", "0"}, "want 1 to 100"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append(c.args, "--dir", dir), strings.NewReader(""), &stdout, &stderr)
		want := c.want
		if !root && c.args[1] != "exec" || !root && strings.Contains(strings.Join(c.args, " "), "nosuch") {
			want = "needs root"
		}
		if code == 0 || !strings.Contains(stderr.String(), want) {
			t.Errorf("tandem %s: exit %d, stderr %q, want failure mentioning %q", strings.Join(c.args, " "), code, stderr.String(), want)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Fatalf("tandem %s created %s", strings.Join(c.args, " "), dir)
		}
	}
}
