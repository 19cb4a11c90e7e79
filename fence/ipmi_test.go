package fence

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/fence/fencetest"
)

func TestIPMIOffConfirmed(t *testing.T) {
	s := startSim(t, false)
	m := s.ipmi(t, nil)
	ctx := context.Background()
	if st, err := m.Status(ctx); err != nil || st != StateOn {
		t.Fatalf("Status before off = %v, %v; want on", st, err)
	}
	if got := s.IpmitoolStatus(t); got != "on" {
		t.Fatalf("ipmitool says %s before off, go-ipmi says on", got)
	}
	if err := m.Off(ctx, Request{}); err != nil {
		t.Fatalf("Off: %v", err)
	}
	if !s.VictimDead() {
		t.Fatal("Off returned success but the victim process still runs")
	}
	if p := s.Power(t); p != "0" {
		t.Fatalf("hook power state %q after Off, want 0", p)
	}
	if st, err := m.Status(ctx); err != nil || st != StateOff {
		t.Fatalf("Status after off = %v, %v; want off", st, err)
	}
	if got := s.IpmitoolStatus(t); got != "off" {
		t.Fatalf("ipmitool says %s after Off, go-ipmi says off", got)
	}
}

func TestIPMIOffAlreadyOff(t *testing.T) {
	s := startSim(t, false)
	s.SetPower(t, "0")
	m := s.ipmi(t, nil)
	if err := m.Off(context.Background(), Request{}); err != nil {
		t.Fatalf("Off of a node already off: %v", err)
	}
	if log := s.SetLog(t); len(log) != 0 {
		t.Fatalf("Off of a node already off sent %v to the chassis; want nothing", log)
	}
}

func TestIPMIOnAndReboot(t *testing.T) {
	s := startSim(t, false)
	m := s.ipmi(t, nil)
	ctx := context.Background()
	s.SetPower(t, "0")
	if err := m.On(ctx); err != nil {
		t.Fatalf("On: %v", err)
	}
	if p := s.Power(t); p != "1" {
		t.Fatalf("hook power %q after On, want 1", p)
	}
	if st, err := m.Status(ctx); err != nil || st != StateOn {
		t.Fatalf("Status after On = %v, %v", st, err)
	}
	if got := s.IpmitoolStatus(t); got != "on" {
		t.Fatalf("ipmitool says %s after On", got)
	}
	// On of a node already on sends nothing.
	before := len(s.SetLog(t))
	if err := m.On(ctx); err != nil {
		t.Fatalf("second On: %v", err)
	}
	if after := len(s.SetLog(t)); after != before {
		t.Fatalf("On of a node already on sent a command: %v", s.SetLog(t))
	}

	if err := m.Reboot(ctx, Request{}); err != nil {
		t.Fatalf("Reboot: %v", err)
	}
	if !s.VictimDead() {
		t.Fatal("Reboot did not take the victim down")
	}
	log := s.SetLog(t)
	if want := []string{"power_1", "power_0", "power_1"}; !slices.Equal(log, want) {
		t.Fatalf("chassis saw %v, want %v (on, then reboot as a confirmed off and an on)", log, want)
	}
	if st, err := m.Status(ctx); err != nil || st != StateOn {
		t.Fatalf("Status after Reboot = %v, %v; want on", st, err)
	}
}

// Nothing is kept between operations: after the BMC resets (all its
// sessions gone), the same method works at once.
func TestIPMIBMCReset(t *testing.T) {
	s := startSim(t, false)
	m := s.ipmi(t, func(c *IPMIConfig) { c.Retries = -1 })
	ctx := context.Background()
	if st, err := m.Status(ctx); err != nil || st != StateOn {
		t.Fatalf("Status = %v, %v", st, err)
	}
	s.Restart(t)
	if err := m.Off(ctx, Request{}); err != nil {
		t.Fatalf("Off after a BMC reset, without retries: %v", err)
	}
	if !s.VictimDead() {
		t.Fatal("victim alive")
	}
}

func TestIPMIWrongPassword(t *testing.T) {
	s := startSim(t, false)
	m := s.ipmi(t, func(c *IPMIConfig) { c.PasswordFile = ""; c.Password = "not-the-password" })
	start := time.Now()
	err := m.Off(context.Background(), Request{})
	took := time.Since(start)
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("Off with a wrong password: %v; want ErrAuth", err)
	}
	if errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("a refused login is not an unconfirmed off: %v", err)
	}
	// Not retried: a refused login fails at once, not after the timeout.
	// (A bound far from the 10 s timeout, only to tell the two apart.)
	if took > 5*time.Second {
		t.Fatalf("wrong password took %v: it must fail without waiting for the timeout", took)
	}
	if !strings.Contains(err.Error(), "password") {
		t.Fatalf("error does not say what to check: %v", err)
	}
	if s.VictimDead() == true {
		t.Fatal("victim died after a refused login")
	}
	if p := s.Power(t); p != "1" {
		t.Fatalf("power %q after a refused login", p)
	}

	bad := s.ipmi(t, func(c *IPMIConfig) { c.Username = "nobody" })
	if _, err := bad.Status(context.Background()); !errors.Is(err, ErrAuth) {
		t.Fatalf("Status with an unknown user: %v; want ErrAuth", err)
	}
}

func TestIPMIUnreachable(t *testing.T) {
	// A socket that swallows every packet: the timeout is what ends it.
	port := fencetest.BlackHole(t)
	m, err := NewIPMI(IPMIConfig{Address: "127.0.0.1", Port: port, Username: "u", Password: "p",
		Timeout: 1500 * time.Millisecond, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = m.Off(context.Background(), Request{})
	took := time.Since(start)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Off of a silent BMC: %v; want ErrUnreachable", err)
	}
	if errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("nothing reached the BMC, so no command was sent: %v", err)
	}
	if took < 1500*time.Millisecond || took > 10*time.Second {
		t.Fatalf("Off of a silent BMC returned after %v; want the 1.5 s timeout honoured", took)
	}

	// The caller's deadline, when shorter, wins.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := m.Status(ctx); err == nil {
		t.Fatal("Status of a silent BMC succeeded")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Status ignored the caller's 300 ms deadline: %v", took)
	}

	// Nothing listening: the kernel answers "port unreachable".
	m2, err := NewIPMI(IPMIConfig{Address: "127.0.0.1", Port: fencetest.FreeUDPPort(t), Username: "u", Password: "p",
		Timeout: 5 * time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Status(context.Background()); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Status with nothing listening: %v; want ErrUnreachable", err)
	}
}

func TestIPMILyingBMC(t *testing.T) {
	// The BMC accepts power down and keeps reporting on (the hook ignores
	// the command): Off must fail, never report success.
	s := startSim(t, true)
	m := s.ipmi(t, func(c *IPMIConfig) { c.Timeout = 2 * time.Second })
	start := time.Now()
	err := m.Off(context.Background(), Request{})
	if err == nil {
		t.Fatal("Off succeeded although the BMC never reported off")
	}
	if !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("Off: %v; want ErrNotConfirmed", err)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("Off gave up after %v, before its 2 s timeout", took)
	}
	if log := s.SetLog(t); len(log) == 0 || log[0] != "power_0" {
		t.Fatalf("the BMC never got the power-off command: %v", log)
	}
	if !s.Victim.Running() {
		t.Fatal("victim died although the hook ignores power off")
	}
	if got := s.IpmitoolStatus(t); got != "on" {
		t.Fatalf("ipmitool says %s, the lying BMC should say on", got)
	}
	if err := m.Reboot(context.Background(), Request{}); !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("Reboot through a lying BMC: %v; want ErrNotConfirmed", err)
	}
}

func TestIPMILanInterface(t *testing.T) {
	s := startSim(t, false)
	m := s.ipmi(t, func(c *IPMIConfig) { c.Interface = InterfaceLan; c.Privilege = PrivilegeOperator })
	if st, err := m.Status(context.Background()); err != nil || st != StateOn {
		t.Fatalf("Status over IPMI 1.5 = %v, %v", st, err)
	}
	if err := m.Off(context.Background(), Request{}); err != nil {
		t.Fatalf("Off over IPMI 1.5 as operator: %v", err)
	}
	if !s.VictimDead() {
		t.Fatal("victim alive after Off over IPMI 1.5")
	}
}

func TestIPMICipherSuiteRefused(t *testing.T) {
	// ipmi_sim has no cipher suite 17: the error says so, at once.
	s := startSim(t, false)
	m := s.ipmi(t, func(c *IPMIConfig) { c.CipherSuite = 17 })
	start := time.Now()
	_, err := m.Status(context.Background())
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "cipher suite") {
		t.Fatalf("Status with a suite the BMC lacks: %v; want a refused session naming the cipher suite", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("a refused cipher suite took %v, not retried until the timeout", took)
	}
}

func TestNewIPMIRefusesBadConfig(t *testing.T) {
	for _, c := range []IPMIConfig{
		{Port: 623, Username: "u"},                          // no address
		{Address: "h", Username: "u", CipherSuite: 0x0 + 4}, // RC4
		{Address: "h", Username: "u", Privilege: "user"},    // cannot power off
		{Address: "h", Username: "u", Interface: "open"},    // not a LAN interface
		{Address: "h", Port: 70000, Username: "u"},          // port
		{Address: "h"}, // no user
		{Address: "h", Username: "u", Timeout: -time.Second}, // negative
	} {
		if _, err := NewIPMI(c); err == nil {
			t.Errorf("NewIPMI(%+v) accepted", c)
		}
	}
}
