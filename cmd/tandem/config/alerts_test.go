package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const alertsBase = base + `alerts:
  - path: /usr/local/sbin/tandem-mail
    recipient: storage-oncall@example.com
    kinds: [volume, fence, failover]
    resources: [db]
    timeout: 45s
  - path: /usr/local/sbin/tandem-log
`

func TestParseAlerts(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(alertsBase))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Alerts) != 2 {
		t.Fatalf("%d alerts", len(cfg.Alerts))
	}
	m, l := cfg.Alerts[0], cfg.Alerts[1]
	if m.Path != "/usr/local/sbin/tandem-mail" || m.Recipient != "storage-oncall@example.com" || m.Timeout != 45*time.Second ||
		!slices.Equal(m.Kinds, []string{"volume", "fence", "failover"}) || !slices.Equal(m.Resources, []string{"db"}) {
		t.Errorf("first alert %+v", m)
	}
	for _, c := range []struct {
		kind, resource string
		want           bool
	}{
		{"fence", "db", true}, {"admin", "db", false}, {"volume", "web", false},
		{"fence", "", true}, // about the node: every resource's concern
	} {
		if got := m.Wants(c.kind, c.resource); got != c.want {
			t.Errorf("first alert wants %s about %q: %v, want %v", c.kind, c.resource, got, c.want)
		}
	}
	if l.Kinds != nil || l.Resources != nil || l.Timeout != DefaultAlertTimeout || l.Recipient != "" || !l.Wants("admin", "web") {
		t.Errorf("second alert's defaults %+v", l)
	}

	// Alerts are part of the meaning; a file without them keeps its hash,
	// and the order of kinds does not matter.
	plain, err := Parse("tandem.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if plain.Hash() == cfg.Hash() {
		t.Error("adding alerts did not change the hash")
	}
	reordered, err := Parse("tandem.yaml", []byte(strings.Replace(alertsBase, "[volume, fence, failover]", "[failover, volume, fence]", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if reordered.Hash() != cfg.Hash() {
		t.Error("reordering kinds changed the hash")
	}
	narrower, err := Parse("tandem.yaml", []byte(strings.Replace(alertsBase, "resources: [db]", "resources: [db, web]", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if narrower.Hash() == cfg.Hash() {
		t.Error("changing an alert's resources kept the hash")
	}
	spelled, err := Parse("tandem.yaml", []byte(alertsBase+"    timeout: 30s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if spelled.Hash() != cfg.Hash() {
		t.Error("spelling out the default timeout changed the hash")
	}
}

func TestParseAlertProblems(t *testing.T) {
	runProblemCases(t, alertsBase, []problemCase{
		{"typo", []string{"    recipient:", "    recipeint: #A\n    x:"},
			[]want{{"#A", "alerts[0].recipeint", `did you mean "recipient"?`}, {"    x:", "alerts[0].x", `unknown key "x"`}}},
		{"missing path", []string{"  - path: /usr/local/sbin/tandem-log\n", "  - timeout: 5s #A\n"},
			[]want{{"#A", "alerts[1]", `missing key "path"`}}},
		{"relative path", []string{"path: /usr/local/sbin/tandem-log", "path: tandem-log #A"},
			[]want{{"#A", "alerts[1].path", "not an absolute path"}}},
		{"unknown kind", []string{"[volume, fence, failover]", "[volume, fense, failover] #A"},
			[]want{{"#A", "alerts[0].kinds[1]", `did you mean "fence"?`}}},
		{"kind twice", []string{"[volume, fence, failover]", "[volume, fence, volume] #A"},
			[]want{{"#A", "alerts[0].kinds[2]", `kind "volume" listed twice`}}},
		{"unknown resource", []string{"resources: [db]", "resources: [db, wep] #A"},
			[]want{{"#A", "alerts[0].resources[1]", `no resource "wep" in this file; did you mean "web"? (resources: "db" or "web")`}}},
		{"resource twice", []string{"resources: [db]", "resources: [db, web, db] #A"},
			[]want{{"#A", "alerts[0].resources[2]", `resource "db" listed twice`}}},
		{"no resources", []string{"resources: [db]", "resources: [] #A"},
			[]want{{"#A", "alerts[0].resources", "no resources"}}},
		{"bad resource name", []string{"resources: [db]", "resources: [Db!] #A"},
			[]want{{"#A", "alerts[0].resources[0]", "is not a valid name"}}},
		{"no kinds", []string{"[volume, fence, failover]", "[] #A"},
			[]want{{"#A", "alerts[0].kinds", "no kinds"}}},
		{"timeout too long", []string{"timeout: 45s", "timeout: 1h #A"},
			[]want{{"#A", "alerts[0].timeout", "is not from 1s to 10m0s"}}},
		{"same program twice", []string{"  - path: /usr/local/sbin/tandem-log\n", "  - path: /usr/local/sbin/tandem-mail #A\n    recipient: storage-oncall@example.com\n"},
			[]want{{"#A", "alerts[1]", "listed twice (first at alerts[0])"}}},
		{"not a list", []string{alertsBase[len(base):], "alerts: /usr/local/sbin/tandem-mail #A\n"},
			[]want{{"#A", "alerts", "want a list"}}},
		{"at the resource level", []string{"    on-no-quorum: io-error\n", "    on-no-quorum: io-error\n    recipient: me #A\n"},
			[]want{{"#A", "resources[1].recipient", `"recipient" belongs in alerts[N]`}}},
	})
}

// Validating as a node checks that the alert programs exist and run there:
// every daemon runs them for its own events.
func TestValidateLocalAlerts(t *testing.T) {
	dir, cfg := setupLocal(t, "cluster: lab\n", "cluster: lab\nalerts:\n  - path: DIR/tandem-alert\n")
	checkProblems(t, cfg.Validate("wit"), dir, []string{
		`:\d+: alerts\[0\].path: DIR/tandem-alert does not exist on this host; install it on every node`,
	})
	writeFile(t, filepath.Join(dir, "tandem-alert"), "#!/bin/sh\nexit 0\n", 0o644)
	checkProblems(t, cfg.Validate("wit"), dir, []string{
		`:\d+: alerts\[0\].path: DIR/tandem-alert is not executable \(mode 0644\); chmod 755`,
	})
	if err := os.Chmod(filepath.Join(dir, "tandem-alert"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate("wit"); err != nil {
		t.Fatalf("with the program in place: %v", err)
	}
}

func TestCheckAlertsBuiltInCode(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	c := *cfg
	c.parsed = false
	c.Alerts = []Alert{{Path: "alert", Timeout: time.Millisecond, Kinds: []string{"nope"}}}
	ps := &problems{file: "code"}
	c.checkAlerts(ps)
	if got := len(ps.list); got != 3 {
		t.Fatalf("%d problems, want 3: %v", got, ps.err())
	}
}
