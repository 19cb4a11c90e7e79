package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/fence/fencetest"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// fenceConfig: beta is fenced by its BMC (BMCPORT), then fence_ipmilan
// against AGENTPORT, then by hand; alpha (this node) keeps the
// confirmations in DIR/alpha. gamma has no fencing.
const fenceConfig = `cluster: lab
secret-file: DIR/secret
nodes:
  - name: alpha
    address: 127.0.0.1
    data-dir: DIR/alpha
  - name: beta
    address: 127.0.0.1
    data-dir: DIR/beta
    fencing:
      - type: ipmi
        address: 127.0.0.1
        port: BMCPORT
        username: admin
        password-file: DIR/bmc.password
        timeout: 2s
      - type: agent
        agent: FENCE_IPMILAN
        options:
          ip: 127.0.0.1
          ipport: AGENTPORT
          username: admin
          lanplus: 1
          cipher: 3
          power_wait: 0
        password-file: DIR/bmc.password
        timeout: 30s
      - type: manual
  - name: gamma
    address: 127.0.0.1
    data-dir: DIR/gamma
`

// writeFenceConfig writes the file; agent "" means fence_ipmilan.
func writeFenceConfig(t *testing.T, bmcPort, agentPort int, agent string) (path, dir string) {
	t.Helper()
	dir = t.TempDir()
	if agent == "" {
		agent = "/usr/sbin/fence_ipmilan"
		if p, err := exec.LookPath("fence_ipmilan"); err == nil {
			agent = p
		}
	}
	text := strings.NewReplacer("DIR", dir, "BMCPORT", strconv.Itoa(bmcPort), "AGENTPORT", strconv.Itoa(agentPort),
		"FENCE_IPMILAN", agent).Replace(fenceConfig)
	path = filepath.Join(dir, "tandem.yaml")
	fencetest.WriteFile(t, path, text, 0o644)
	fencetest.WriteFile(t, filepath.Join(dir, "bmc.password"), fencetest.Password+"\n", 0o600)
	return path, dir
}

// executeIn is execute with stdin.
func executeIn(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRootCmd(&app{stdout: &out, stderr: &errb})
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errb)
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func TestFenceCLIThroughBMC(t *testing.T) {
	testenv.RequireTool(t, "fence_ipmilan")
	bmc := fencetest.Start(t, false)
	path, _ := writeFenceConfig(t, bmc.Port, bmc.Port, "")
	base := []string{"--config", path, "fence"}

	out, errOut, err := execute(t, append(base, "test", "beta", "--node", "alpha")...)
	if err != nil {
		t.Fatalf("fence test: %v\n%s\n%s", err, out, errOut)
	}
	okLine := regexp.MustCompile(`(?m)^1 +ipmi 127.0.0.1:` + strconv.Itoa(bmc.Port) + ` +ok +on `)
	if !strings.Contains(out, "beta: every level answers; power on") || !okLine.MatchString(out) ||
		!regexp.MustCompile(`(?m)^2 +agent \S+fence_ipmilan +ok +on `).MatchString(out) || !strings.Contains(out, "nothing to test") {
		t.Fatalf("fence test output:\n%s\nstderr:\n%s", out, errOut)
	}
	if !bmc.Victim.Running() || bmc.Power(t) != "1" {
		t.Fatal("fence test switched something")
	}

	out, errOut, err = execute(t, append(base, "status", "beta", "--node", "alpha", "--json")...)
	if err != nil {
		t.Fatalf("fence status: %v\n%s", err, errOut)
	}
	var res struct {
		Node, Action, State string
		OK                  bool
		Level               int
		Attempts            []struct{ Method, Error string }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("fence status --json: %v\n%s", err, out)
	}
	if res.Node != "beta" || res.Action != "status" || res.State != "on" || !res.OK || res.Level != 1 {
		t.Fatalf("fence status --json: %+v", res)
	}

	out, errOut, err = execute(t, append(base, "off", "beta", "--node", "alpha")...)
	if err != nil {
		t.Fatalf("fence off: %v\n%s\n%s", err, out, errOut)
	}
	if !strings.Contains(out, "beta: off done, off confirmed by level 1 (ipmi 127.0.0.1:") {
		t.Fatalf("fence off output:\n%s", out)
	}
	if !bmc.VictimDead() {
		t.Fatal("fence off succeeded, victim alive")
	}
	if got := bmc.IpmitoolStatus(t); got != "off" {
		t.Fatalf("ipmitool says %s after fence off", got)
	}
	// As fence-agents: status exits 2 for a node that is off.
	var sout, serr bytes.Buffer
	if code := run(append(base, "status", "beta", "--node", "alpha"), strings.NewReader(""), &sout, &serr); code != 2 || !strings.Contains(sout.String(), "power off") || strings.Contains(serr.String(), "tandem:") {
		t.Fatalf("fence status of a node that is off: exit %d, want 2\nstdout:\n%s\nstderr:\n%s", code, sout.String(), serr.String())
	}
	if _, errOut, err := execute(t, append(base, "on", "beta", "--node", "alpha")...); err != nil {
		t.Fatalf("fence on: %v\n%s", err, errOut)
	}
	if bmc.Power(t) != "1" {
		t.Fatal("fence on did not power on")
	}
}

// The BMC is dead; fence_ipmilan reaches the node through another port (a
// second BMC, standing for a PDU or a hypervisor).
func TestFenceCLIFallsBackToAgent(t *testing.T) {
	testenv.RequireTool(t, "fence_ipmilan")
	bmc := fencetest.Start(t, false)
	path, _ := writeFenceConfig(t, fencetest.BlackHole(t), bmc.Port, "")
	out, errOut, err := execute(t, "--config", path, "fence", "off", "beta", "--node", "alpha")
	if err != nil {
		t.Fatalf("fence off: %v\n%s\n%s", err, out, errOut)
	}
	if !strings.Contains(out, "off confirmed by level 2 (agent ") || !strings.Contains(out, "failed") {
		t.Fatalf("output does not show level 1 failing and level 2 confirming:\n%s", out)
	}
	if !bmc.VictimDead() {
		t.Fatal("victim alive after a fence off through the agent")
	}
}

// Every device is dead: only an operator's confirmation, given after the
// request, fences.
func TestFenceCLIManualConfirmation(t *testing.T) {
	// The agent fails at once, as a site script whose device is down.
	failing := filepath.Join(t.TempDir(), "fence_down")
	fencetest.WriteFile(t, failing, "#!/bin/sh\ncat >/dev/null\necho 'device unreachable' >&2\nexit 1\n", 0o755)
	path, dir := writeFenceConfig(t, fencetest.BlackHole(t), 1, failing)
	base := []string{"--config", path, "fence"}
	out, _, err := execute(t, append(base, "off", "beta", "--node", "alpha")...)
	if err == nil || !strings.Contains(out, "beta: off FAILED") || !strings.Contains(out, "tandem fence confirm beta") {
		t.Fatalf("fence off with every device dead: %v\n%s", err, out)
	}

	// Not confirmed without an answer, or with the wrong one.
	for _, in := range []string{"", "gamma\n", "yes\n"} {
		_, errOut, err := executeIn(t, in, append(base, "confirm", "beta", "--node", "alpha")...)
		if err == nil || !strings.Contains(err.Error(), "not confirmed") || !strings.Contains(errOut, "WARNING") {
			t.Fatalf("confirm with stdin %q: %v\n%s", in, err, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "alpha", "fence", "beta.confirmed")); !os.IsNotExist(err) {
		t.Fatalf("a refused confirmation left a record: %v", err)
	}
	// Not for the node it runs on, nor for a node that is not in the file.
	if _, _, err := execute(t, append(base, "confirm", "alpha", "--node", "alpha", "--yes")...); err == nil || !strings.Contains(err.Error(), "runs on") {
		t.Fatalf("confirming the local node: %v", err)
	}
	if _, _, err := execute(t, append(base, "confirm", "delta", "--node", "alpha", "--yes")...); err == nil || !strings.Contains(err.Error(), "unknown node") {
		t.Fatalf("confirming an unknown node: %v", err)
	}

	out, errOut, err := executeIn(t, "beta\n", append(base, "confirm", "beta", "--node", "alpha")...)
	if err != nil || !strings.Contains(out, "confirmed: beta is off") || !strings.Contains(errOut, "split brain") {
		t.Fatalf("confirm: %v\n%s\n%s", err, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "alpha", "fence", "beta.confirmed")); err != nil {
		t.Fatalf("no record in alpha's data-dir: %v", err)
	}
	// A fencing requested now does not count the earlier confirmation...
	if out, _, err := execute(t, append(base, "off", "beta", "--node", "alpha")...); err == nil || !strings.Contains(out, "older than the fencing request") {
		t.Fatalf("fence off after an earlier confirmation: %v\n%s", err, out)
	}
	// ...one requested before it does.
	out, errOut, err = execute(t, append(base, "off", "beta", "--node", "alpha", "--since", "10m", "--json")...)
	if err != nil {
		t.Fatalf("fence off --since 10m: %v\n%s\n%s", err, out, errOut)
	}
	var res struct {
		OK     bool
		Level  int
		Method string
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.OK || res.Level != 3 || res.Method != "manual confirmation" {
		t.Fatalf("fence off --since: %v %+v\n%s", err, res, out)
	}
}

func TestFenceCLIErrors(t *testing.T) {
	path, _ := writeFenceConfig(t, 1, 2, "/bin/false")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"fence", "off", "gamma", "--node", "alpha"}, "no fencing levels configured"},
		{[]string{"fence", "status", "delta", "--node", "alpha"}, "unknown node"},
		{[]string{"fence", "off", "--node", "alpha"}, "want one NODE"},
		{[]string{"fence", "off", "beta", "--node", "alpha", "--since", "yesterday"}, "neither a duration"},
		{[]string{"fence", "off", "beta", "--node", "omega"}, "unknown node"},
	} {
		_, _, err := execute(t, append([]string{"--config", path}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v; want an error with %q", c.args, err, c.want)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 1, 19, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"15m":                  now.Add(-15 * time.Minute),
		"0s":                   now,
		"2026-12-01T18:00:00Z": now.Add(-time.Hour),
	} {
		if got, err := parseSince(in, now); err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"-5m", "2026-12-01T20:00:00Z", "yesterday", ""} {
		if _, err := parseSince(in, now); err == nil {
			t.Errorf("parseSince(%q) accepted", in)
		}
	}
}

func TestFenceConfirmJSON(t *testing.T) {
	path, dir := writeFenceConfig(t, 1, 2, "/bin/false")
	out, _, err := execute(t, "--config", path, "fence", "confirm", "beta", "--node", "alpha", "--yes", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Node, By, Host string
		At             time.Time
	}
	if err := json.Unmarshal([]byte(out), &c); err != nil || c.Node != "beta" || c.At.IsZero() {
		t.Fatalf("confirm --json: %v %+v\n%s", err, c, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "alpha", "fence", "beta.confirmed"))
	if err != nil || !strings.Contains(string(data), `"node": "beta"`) {
		t.Fatalf("record: %v\n%s", err, data)
	}
}

// TestFenceConfirmWithoutManualLevel: with manual roles, a confirmation
// for a node without a manual level is recorded, and the command says
// that nothing acts on it; with a manual level it says nothing of the kind.
func TestFenceConfirmWithoutManualLevel(t *testing.T) {
	path, dir := writeFenceConfig(t, 1, 2, "/bin/false")
	out, errOut, err := execute(t, "--config", path, "fence", "confirm", "gamma", "--node", "alpha", "--yes")
	if err != nil || !strings.Contains(out, "confirmed: gamma is off") {
		t.Fatalf("confirm gamma: %v\n%s", err, out)
	}
	if !strings.Contains(errOut, "gamma has no manual fencing level") || !strings.Contains(errOut, "nothing acts on this record") {
		t.Errorf("confirm of a node without a manual level does not say that nothing reads it:\n%s", errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "alpha", "fence", "gamma.confirmed")); err != nil {
		t.Errorf("not recorded: %v", err)
	}
	_, errOut, err = execute(t, "--config", path, "fence", "confirm", "beta", "--node", "alpha", "--yes")
	if err != nil || strings.Contains(errOut, "no manual fencing level") {
		t.Errorf("confirm beta (which has a manual level): %v\n%s", err, errOut)
	}
}
