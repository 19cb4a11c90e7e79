package fence

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/fence/fencetest"
)

// fakeMethod answers from fields, and counts calls.
type fakeMethod struct {
	name  string
	state State
	err   error // returned by every call
	onErr error // returned by On (and so by Reboot's power-on)
	calls []Action
}

func (f *fakeMethod) String() string { return f.name }
func (f *fakeMethod) Status(context.Context) (State, error) {
	f.calls = append(f.calls, ActionStatus)
	return f.state, f.err
}
func (f *fakeMethod) Off(context.Context, Request) error {
	f.calls = append(f.calls, ActionOff)
	return f.err
}
func (f *fakeMethod) On(context.Context) error {
	f.calls = append(f.calls, ActionOn)
	if f.err != nil {
		return f.err
	}
	return f.onErr
}
func (f *fakeMethod) Reboot(context.Context, Request) error {
	f.calls = append(f.calls, ActionReboot)
	if f.err != nil {
		return f.err
	}
	if f.onErr != nil {
		return &Warning{Err: f.onErr}
	}
	return nil
}

func TestFencerLevelsInOrder(t *testing.T) {
	dead := &fakeMethod{name: "ipmi dead", err: ErrUnreachable}
	good := &fakeMethod{name: "agent good", state: StateOn}
	never := &fakeMethod{name: "manual"}
	f := New("beta", []Method{dead, good, never}, Options{Log: testLogger(t)})
	res, err := f.Off(context.Background(), Request{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK || res.State != StateOff || res.Level != 2 || res.Method != "agent good" || len(res.Attempts) != 2 {
		t.Fatalf("result %+v", res)
	}
	if a := res.Attempts[0]; a.OK || !errors.Is(a.Err(), ErrUnreachable) || a.Error == "" || a.Level != 1 {
		t.Fatalf("first attempt %+v", a)
	}
	if len(never.calls) != 0 {
		t.Fatalf("the level after the one that confirmed was tried: %v", never.calls)
	}
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"action":"off"`, `"state":"off"`, `"level":2`, `"ok":false`, `"error":`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON %s lacks %s", b, want)
		}
	}
}

func TestFencerAllFail(t *testing.T) {
	a := &fakeMethod{name: "a", err: ErrNotConfirmed}
	b := &fakeMethod{name: "b", err: ErrAuth}
	f := New("beta", []Method{a, b}, Options{})
	res, err := f.Off(context.Background(), Request{})
	if res.OK || !errors.Is(err, ErrAllFailed) || !errors.Is(err, ErrNotConfirmed) || !errors.Is(err, ErrAuth) {
		t.Fatalf("Off with every level failing: %+v, %v", res, err)
	}
	if len(res.Attempts) != 2 || res.State != StateUnknown {
		t.Fatalf("attempts %+v", res.Attempts)
	}
	if _, err := New("beta", nil, Options{}).Off(context.Background(), Request{}); !errors.Is(err, ErrNoLevels) {
		t.Fatalf("Off with no levels: %v", err)
	}
	// A cancelled context stops before the next level.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := &fakeMethod{name: "c"}
	if _, err := New("beta", []Method{c}, Options{}).Off(ctx, Request{}); err == nil || len(c.calls) != 0 {
		t.Fatalf("Off with a cancelled context: %v, calls %v", err, c.calls)
	}
}

func TestFencerRebootWarning(t *testing.T) {
	m := &fakeMethod{name: "ipmi", onErr: errors.New("BMC busy")}
	res, err := New("beta", []Method{m}, Options{}).Reboot(context.Background(), Request{})
	if err != nil || !res.OK || res.State != StateOff || !strings.Contains(res.Attempts[0].Note, "BMC busy") {
		t.Fatalf("a reboot that fenced but did not power on: %+v, %v", res, err)
	}
}

func TestFencerStatusAndTest(t *testing.T) {
	dead := &fakeMethod{name: "dead", err: ErrUnreachable}
	on := &fakeMethod{name: "on", state: StateOn}
	manual := NewManual("beta", NewStore(t.TempDir(), nil), 0, nil)
	f := New("beta", []Method{dead, on, manual}, Options{})
	res, err := f.Status(context.Background())
	if err != nil || res.State != StateOn || res.Level != 2 {
		t.Fatalf("Status = %+v, %v", res, err)
	}
	// Test asks every level and fails if any device does not answer.
	res, err = f.Test(context.Background())
	if err == nil || res.OK || len(res.Attempts) != 3 {
		t.Fatalf("Test with a dead level = %+v, %v", res, err)
	}
	if !res.Attempts[2].OK || res.Attempts[2].Note == "" {
		t.Fatalf("manual level in Test: %+v", res.Attempts[2])
	}
	res, err = New("beta", []Method{on, manual}, Options{}).Test(context.Background())
	if err != nil || !res.OK || res.State != StateOn {
		t.Fatalf("Test of healthy levels = %+v, %v", res, err)
	}
	for _, a := range res.Attempts {
		if a.Action != ActionStatus {
			t.Fatalf("Test did something else than status: %+v", a)
		}
	}
	for _, c := range on.calls {
		if c != ActionStatus {
			t.Fatalf("Test switched power: %v", on.calls)
		}
	}
}

// The real thing: the first level is an IPMI BMC that does not answer, the
// second fence_ipmilan against a working ipmi_sim, the third manual.
func TestFencerFallbackToAgent(t *testing.T) {
	s := startSim(t, false)
	deadBMC, err := NewIPMI(IPMIConfig{Address: "127.0.0.1", Port: fencetest.BlackHole(t), Username: simUser, Password: simPassword,
		Timeout: time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	agent := fenceIPMILan(t, s)
	manual := NewManual("beta", NewStore(t.TempDir(), nil), 0, nil)
	var logs logBuffer
	f := New("beta", []Method{deadBMC, agent, manual}, Options{Log: newTextLogger(&logs)})
	res, err := f.Off(context.Background(), Request{})
	if err != nil {
		t.Fatalf("Off: %v", err)
	}
	if res.Level != 2 || len(res.Attempts) != 2 || res.Attempts[0].OK || !errors.Is(res.Attempts[0].Err(), ErrUnreachable) {
		t.Fatalf("result %+v", res)
	}
	if !s.VictimDead() {
		t.Fatal("fenced through the agent, but the victim is alive")
	}
	if d := res.Attempts[0].Duration; d < time.Second {
		t.Fatalf("the dead BMC's level ended after %v, before its timeout", d)
	}
	l := logs.String()
	if !strings.Contains(l, "fence attempt failed") || !strings.Contains(l, "fencing done") || !strings.Contains(l, "level=2") {
		t.Fatalf("attempts not logged:\n%s", l)
	}
}
