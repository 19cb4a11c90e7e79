package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
)

// alertScript writes a program into dir that appends one line per run to
// dir/runs: the variables it got and the JSON it read; before it, body.
func alertScript(t *testing.T, dir, body string) string {
	t.Helper()
	path := filepath.Join(dir, "alert.sh")
	write(t, path, `#!/bin/sh
`+body+`
in=$(cat)
printf '%s|%s|%s|%s|%s|%s|%s\n' "$TANDEM_ALERT_SEQ" "$TANDEM_ALERT_KIND" "$TANDEM_ALERT_RESOURCE" "$TANDEM_ALERT_RECIPIENT" "$TANDEM_ALERT_TEXT" "$(env | cut -d= -f1 | sort | tr '\n' ' ')" "$in" >> `+filepath.Join(dir, "runs")+`
`, 0o755)
	return path
}

type alertRun struct {
	seq                             uint64
	kind, resource, recipient, text string
	env                             []string
	input                           Event
}

func readRuns(t *testing.T, dir string) []alertRun {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "runs"))
	if err != nil {
		t.Fatal(err)
	}
	var out []alertRun
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		f := strings.SplitN(line, "|", 7)
		if len(f) != 7 {
			t.Fatalf("run line %q", line)
		}
		seq, _ := strconv.ParseUint(f[0], 10, 64)
		r := alertRun{seq: seq, kind: f[1], resource: f[2], recipient: f[3], text: f[4], env: strings.Fields(f[5])}
		if err := json.Unmarshal([]byte(f[6]), &r.input); err != nil {
			t.Fatalf("stdin of run %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// The program runs for the kinds it wants, in event order, with the event
// in its variables and on stdin, and nothing of the daemon's environment;
// the events up to the daemon's stop are passed on before it exits.
func TestAlertsRunForTheirKindsInOrder(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	dir := t.TempDir()
	l.cfg.Alerts = []config.Alert{{Path: alertScript(t, dir, ""), Kinds: []string{"daemon", "admin"}, Recipient: "oncall@example.com", Timeout: 10 * time.Second}}
	t.Setenv("TANDEM_SECRET_OF_THE_DAEMON", "x")
	d, _, _ := l.start(t, "alpha")
	if _, err := l.client("alpha").Promote(t.Context(), "r0", false); err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	runs := readRuns(t, dir)
	var kinds []string
	for i, r := range runs {
		kinds = append(kinds, r.kind+":"+r.text)
		if i > 0 && r.seq <= runs[i-1].seq {
			t.Errorf("run %d has seq %d after %d", i, r.seq, runs[i-1].seq)
		}
		if r.recipient != "oncall@example.com" || r.input.Seq != r.seq || r.input.Kind != r.kind || r.input.Node != "alpha" || r.input.Text != r.text {
			t.Errorf("run %d: %+v", i, r)
		}
		want := "LC_ALL PATH PWD TANDEM_ALERT_CLUSTER TANDEM_ALERT_KIND TANDEM_ALERT_NODE TANDEM_ALERT_RECIPIENT TANDEM_ALERT_RESOURCE TANDEM_ALERT_SEQ TANDEM_ALERT_TARGET TANDEM_ALERT_TEXT TANDEM_ALERT_TIME TANDEM_ALERT_VERSION"
		if got := strings.Join(r.env, " "); got != want {
			t.Errorf("run %d environment:\n got  %s\n want %s", i, got, want)
		}
	}
	if len(runs) != 3 || !strings.HasPrefix(kinds[0], "daemon:daemon running") || !strings.HasPrefix(kinds[1], "admin:promote done") ||
		runs[1].resource != "r0" || kinds[2] != "daemon:daemon stopping" {
		t.Fatalf("runs: %q", kinds)
	}
}

// A program that overruns its timeout is killed with everything it
// started, and the next event still gets its run.
func TestAlertTimeoutKillsTheGroupAndGoesOn(t *testing.T) {
	l := newLab(t)
	dir := t.TempDir()
	// The first run starts a child that would outlive it, then hangs.
	body := `if [ "$TANDEM_ALERT_KIND" = daemon ]; then sleep 300 & echo $! > ` + filepath.Join(dir, "child") + `; sleep 300; fi`
	l.cfg.Alerts = []config.Alert{{Path: alertScript(t, dir, body), Kinds: []string{"daemon", "alert"}, Timeout: time.Second}}
	d, _, logs := l.start(t, "alpha")
	d.events.publish(Event{Kind: KindAlert, Text: "after the hung run"})
	waitUntil(t, "the second event's run", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "runs"))
		return strings.Contains(string(b), "after the hung run")
	})
	if runs := readRuns(t, dir); len(runs) != 1 || runs[0].kind != "alert" {
		t.Fatalf("runs %+v, want only the alert's (the hung one was killed before it wrote)", runs)
	}
	b, err := os.ReadFile(filepath.Join(dir, "child"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the child of the hung run to be gone", func() bool { return syscall.Kill(pid, 0) != nil })
	contains(t, "log", logs.String(), "alert: killed its process group after the timeout")
	waitUntil(t, "both runs counted", func() bool { return d.Status().Alerts[0].Runs == 2 })
	st := d.Status().Alerts[0]
	if f := st.LastFailure; st.Failures != 1 || f == nil || f.Kind != KindDaemon || f.Seq != 1 || f.Error != "killed after the timeout (1s)" {
		t.Errorf("status of the alert: %+v, last failure %+v", st, f)
	}
}

// resources[] narrows an alert to its resources' events (and those about
// no resource); a program that exits non-zero is counted, and its last
// failure is in the status.
func TestAlertResourcesAndFailuresInStatus(t *testing.T) {
	l := newLab(t)
	dir := t.TempDir()
	body := `if [ "$TANDEM_ALERT_TEXT" = fail ]; then echo broken >&2; exit 3; fi`
	l.cfg.Alerts = []config.Alert{{Path: alertScript(t, dir, body), Kinds: []string{"volume"}, Resources: []string{"r0"}, Recipient: "db-team", Timeout: 10 * time.Second}}
	d, _, logs := l.start(t, "alpha")
	if st := d.Status().Alerts; len(st) != 1 || st[0].Path != l.cfg.Alerts[0].Path || st[0].Recipient != "db-team" || st[0].Runs != 0 {
		t.Fatalf("status before any run: %+v", st)
	}
	for _, e := range []Event{
		{Kind: KindVolume, Resource: "r0", Text: "about r0"},
		{Kind: KindVolume, Resource: "other", Text: "about another resource"},
		{Kind: KindVolume, Text: "about the node"},
		{Kind: KindAdmin, Resource: "r0", Text: "another kind"},
		{Kind: KindVolume, Resource: "r0", Text: "fail"},
		{Kind: KindVolume, Resource: "r0", Text: "the last"},
	} {
		d.events.publish(e)
	}
	waitUntil(t, "the last event's run counted", func() bool { return d.Status().Alerts[0].Runs == 4 })
	var texts []string
	for _, r := range readRuns(t, dir) {
		texts = append(texts, r.text)
	}
	if got := strings.Join(texts, ", "); got != "about r0, about the node, the last" {
		t.Errorf("runs for %s", got)
	}
	st := d.Status().Alerts[0]
	if f := st.LastFailure; st.Failures != 1 || f == nil || f.Kind != KindVolume || f.Error != "exit status 3" {
		t.Errorf("status of the alert: %+v, last failure %+v", st, f)
	}
	contains(t, "log", logs.String(), "alert: the program failed")
	contains(t, "log", logs.String(), "broken")
}

// A program slower than the events does not hold the daemon up; once it
// catches up it is told how many events it missed, and gets the rest in
// order, none twice.
func TestAlertThatFallsBehindGetsAGap(t *testing.T) {
	l := newLab(t)
	dir := t.TempDir()
	release := filepath.Join(dir, "release")
	started := filepath.Join(dir, "started")
	body := `if [ "$TANDEM_ALERT_KIND" = daemon ]; then : > ` + started + `; n=0; while [ ! -e ` + release + ` ] && [ $n -lt 2000 ]; do sleep 0.01; n=$((n+1)); done; fi`
	l.cfg.Alerts = []config.Alert{{Path: alertScript(t, dir, body), Kinds: []string{"daemon", "alert"}, Timeout: time.Minute}}
	d, _, _ := l.start(t, "alpha")
	// The runner subscribes on its own goroutine: until its first run
	// holds it, it could still take everything below from the ring.
	waitUntil(t, "the first run to start", func() bool { _, err := os.Stat(started); return err == nil })
	// While the first run waits: more events than the ring and the
	// runner's buffer hold, all but the last of a kind it does not want.
	const n = eventRing + subscriberBuffer + 100
	start := time.Now()
	for i := range n {
		d.events.publish(Event{Kind: KindVIP, Text: fmt.Sprint("filler ", i)})
	}
	last := d.events.publish(Event{Kind: KindAlert, Text: "the last"})
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("publishing took %v: the alert held the daemon up", took)
	}
	write(t, release, "", 0o644)
	waitUntil(t, "the last event's run", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "runs"))
		return strings.Contains(string(b), "the last")
	})
	runs := readRuns(t, dir)
	if len(runs) != 3 || runs[0].kind != "daemon" || runs[1].kind != "gap" || runs[2].seq != last.Seq {
		t.Fatalf("runs %+v", runs)
	}
	// What the ring no longer held after the last event the runner had
	// passed on is lost; the ring keeps the last eventRing.
	data, _ := runs[1].input.Data.(map[string]any)
	after, _ := data["after"].(float64)
	lost := last.Seq - eventRing - uint64(after)
	if after < float64(runs[0].seq) || !strings.HasPrefix(runs[1].text, fmt.Sprintf("%d events were not passed to this alert", lost)) {
		t.Errorf("gap: %q after seq %v, want %d lost", runs[1].text, after, lost)
	}
	waitUntil(t, "the runs counted", func() bool { return d.Status().Alerts[0].Runs == 3 })
	if st := d.Status().Alerts[0]; st.LostEvents != lost || st.Failures != 0 {
		t.Errorf("status of the alert: %+v, want %d events lost and no failure", st, lost)
	}
}
