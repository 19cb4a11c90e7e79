package config

import (
	"reflect"
	"testing"
	"time"
)

const timed = layered + `timing:
  lease: 1s
  margin: 500ms
  fence-retry: 2s
  failback-after: 30s
  probe-interval: 100ms
  probe-timeout: 50ms
  suspicion-mult: 2
  ping-interval: 200ms
  ping-timeout: 3s
  ack-timeout: 20s
`

func TestTimingKeys(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(timed))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(""); err != nil {
		t.Fatal(err)
	}
	got := cfg.Timing
	got.lines = nil
	want := Timing{Lease: time.Second, Margin: 500 * time.Millisecond, FenceRetry: 2 * time.Second, FailbackAfter: 30 * time.Second,
		ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond, SuspicionMult: 2,
		PingInterval: 200 * time.Millisecond, PingTimeout: 3 * time.Second, AckTimeout: 20 * time.Second}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("timing %+v, want %+v", got, want)
	}
	if d := want.DetectionBound(); d != 350*time.Millisecond {
		t.Errorf("detection bound %v with the defaults' probes", d)
	}
	// Without the key: zero values, the machine's defaults apply.
	cfg, err = Parse("tandem.yaml", []byte(layered))
	if err != nil || cfg.Timing.Lease != 0 || cfg.Timing.DetectionBound()+100*time.Millisecond > 1*time.Second {
		t.Fatalf("defaults: %+v %v", cfg.Timing, err)
	}
}

func TestTimingProblems(t *testing.T) {
	runProblemCases(t, timed, []problemCase{
		{"not a duration", []string{"lease: 1s", "lease: soon #A"}, []want{{"#A", "timing.lease", "not a duration"}}},
		{"lease out of bounds", []string{"lease: 1s", "lease: 10ms #A"}, []want{{"#A", "timing.lease", "not from 200ms to 1m0s"}}},
		{"unknown key", []string{"fence-retry: 2s", "fence-retry: 2s\n  leese: 2s #A"}, []want{{"#A", "timing.leese", "lease"}}},
		{"margin below the detection bound", []string{"margin: 500ms", "margin: 300ms #A"},
			[]want{{"#A", "timing.margin", "shorter than the failure detector's bound plus a tick (450ms)"}}},
		{"slower probes need a larger margin", []string{"probe-interval: 100ms", "probe-interval: 400ms #A"},
			[]want{{"lease: 1s", "timing.lease", "shorter than the failure detector's bound (1.25s)"}, {"margin: 500ms", "timing.margin", "(1.35s)"}}},
		{"probe timeout not below the interval", []string{"probe-timeout: 50ms", "probe-timeout: 100ms #A"},
			[]want{{"#A", "timing.probe-timeout", "not shorter than probe-interval"}}},
		{"ping timeout under three pings", []string{"ping-timeout: 3s", "ping-timeout: 500ms #A"},
			[]want{{"#A", "timing.ping-timeout", "shorter than three ping intervals (600ms)"}}},
		{"ack timeout not beyond the ping timeout", []string{"ack-timeout: 20s", "ack-timeout: 2s #A"},
			[]want{{"#A", "timing.ack-timeout", "not longer than ping-timeout 3s"}}},
		{"ping interval out of bounds", []string{"ping-interval: 200ms", "ping-interval: 10ms #A"},
			[]want{{"#A", "timing.ping-interval", "not from 50ms to 10s"}}},
		{"suspicion-mult out of range", []string{"suspicion-mult: 2", "suspicion-mult: 0 #A"},
			[]want{{"#A", "timing.suspicion-mult", "from 1 to 10"}}},
	})
}
