// Package fencetest runs a real BMC for tests: OpenIPMI's ipmi_sim, the
// simulator the IPMI world tests against, on a free loopback UDP port, with a
// chassis-control hook whose power-off kills a victim process (started by
// the test, killed by its saved PID), so "the node is off" is something a
// test can see. Tests of fence, of the CLI and of the cluster share it. Like
// testenv, it skips the test, or fails it under CI=true, when ipmi_sim is
// not installed.
package fencetest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/types"

	"github.com/tandem-ha/tandem/tools/testenv"
)

// The simulator's one user, an administrator.
const (
	User     = "admin"
	Password = "s3cret"
)

// hookScript answers ipmi_sim's chassis hook calls:
//
//	HOOK NAME get power        -> prints power:0 or power:1
//	HOOK NAME set power 0|1    -> switches (the victim dies on 0)
//
// In "lie" mode it accepts set power and changes nothing, like a BMC whose
// command reaches nothing. ipmi_sim blocks while the hook runs, so it only
// reads and renames small files.
const hookScript = `#!/bin/sh
d=%q
case "$2" in
get)
	shift 2
	out=""
	for k in "$@"; do
		case "$k" in
		power) out="$out power:$(cat "$d/power")" ;;
		*) out="$out $k:0" ;;
		esac
	done
	echo $out
	;;
set)
	echo "$3 $4" >> "$d/set.log"
	if [ "$3" = power ] && [ "$(cat "$d/mode")" != lie ]; then
		if [ "$4" = 0 ] && [ -s "$d/victim.pid" ]; then
			kill -9 "$(cat "$d/victim.pid")" 2>/dev/null
		fi
		echo "$4" > "$d/power.tmp" && mv "$d/power.tmp" "$d/power"
	fi
	;;
esac
exit 0
`

// lanConf is the lan.conf Debian does not ship (docs: testbed facts).
const lanConf = `name "testbmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "%s node"
  user 2 true  "%s" "%s" admin 10 none md2 md5 straight
`

const emulator = `mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
sel_enable 0x20 1000 0x0a
mc_enable 0x20
`

// BMC is a running ipmi_sim with its victim.
type BMC struct {
	Dir    string // its files: hook, lan.conf, power, set.log
	Port   int    // UDP, on 127.0.0.1
	Proc   *testenv.Proc
	Victim *testenv.Proc // the process that stands for the node's OS
}

// Start runs ipmi_sim powered on, with a running victim; lie makes the hook
// ignore power changes (a BMC that accepts commands and does nothing). It
// returns once the BMC answers an IPMI session. Everything is stopped at the
// end of the test.
func Start(t testing.TB, lie bool) *BMC {
	t.Helper()
	testenv.RequireTool(t, "ipmi_sim")
	dir := t.TempDir()
	b := &BMC{Dir: dir, Port: FreeUDPPort(t)}
	mode := "normal"
	if lie {
		mode = "lie"
	}
	WriteFile(t, filepath.Join(dir, "mode"), mode, 0o644)
	WriteFile(t, filepath.Join(dir, "power"), "1\n", 0o644)
	hook := filepath.Join(dir, "hook")
	WriteFile(t, hook, fmt.Sprintf(hookScript, dir), 0o755)
	conf := filepath.Join(dir, "lan.conf")
	WriteFile(t, conf, fmt.Sprintf(lanConf, b.Port, hook, User, Password), 0o644)
	emu := filepath.Join(dir, "bmc.emu")
	WriteFile(t, emu, emulator, 0o644)
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	b.StartVictim(t)
	b.start(t)
	return b
}

func (b *BMC) start(t testing.TB) {
	t.Helper()
	b.Proc = testenv.Start(t, "ipmi_sim", "-c", filepath.Join(b.Dir, "lan.conf"), "-f", filepath.Join(b.Dir, "bmc.emu"),
		"-s", filepath.Join(b.Dir, "state"), "-n")
	b.Proc.WaitFor(t, "an IPMI session", b.answers)
}

// Restart kills ipmi_sim (by its PID) and starts it again on the same port,
// as a BMC that reset: every session it had is gone. The power state and
// the victim are kept.
func (b *BMC) Restart(t testing.TB) {
	t.Helper()
	b.Proc.Kill(t)
	b.start(t)
}

// answers opens and closes one session (cipher suite 3), bounded.
func (b *BMC) answers() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := client.NewClient("127.0.0.1", b.Port, User, Password)
	if err != nil {
		return false
	}
	c.WithTimeout(200 * time.Millisecond).WithRetry(0).WithCipherSuiteID(types.CipherSuiteID3)
	err = c.Connect(ctx)
	_ = c.Close(ctx)
	return err == nil
}

// StartVictim starts a new victim (after a power-on, say) and records its
// PID for the hook.
func (b *BMC) StartVictim(t testing.TB) {
	t.Helper()
	b.Victim = testenv.Start(t, "sleep", "600")
	WriteFile(t, filepath.Join(b.Dir, "victim.pid"), strconv.Itoa(b.Victim.Pid())+"\n", 0o644)
}

// PasswordFile writes the password to a new 0600 file and returns its path.
func (b *BMC) PasswordFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bmc-password")
	WriteFile(t, p, Password+"\n", 0o600)
	return p
}

// Power is what the hook last set: "0" or "1".
func (b *BMC) Power(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(b.Dir, "power"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// SetPower changes the state behind the BMC's back ("0" or "1").
func (b *BMC) SetPower(t testing.TB, v string) {
	t.Helper()
	WriteFile(t, filepath.Join(b.Dir, "power.tmp"), v+"\n", 0o644)
	if err := os.Rename(filepath.Join(b.Dir, "power.tmp"), filepath.Join(b.Dir, "power")); err != nil {
		t.Fatal(err)
	}
}

// SetLog is every "set" the hook received, e.g. ["power_0", "power_1"].
func (b *BMC) SetLog(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(b.Dir, "set.log"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(data)), " ", "_"))
}

// VictimDead reports whether the victim has exited, waiting up to 5 s: the
// hook's kill and the reaping run on their own.
func (b *BMC) VictimDead() bool {
	select {
	case <-b.Victim.Exited():
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

// IpmitoolStatus asks ipmitool, the reference client, for the power state
// ("on" or "off"), as a cross-check of what go-ipmi reads.
func (b *BMC) IpmitoolStatus(t testing.TB) string {
	t.Helper()
	testenv.RequireTool(t, "ipmitool")
	out := testenv.Run(t, "ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", strconv.Itoa(b.Port),
		"-U", User, "-P", Password, "chassis", "power", "status")
	switch {
	case strings.Contains(out, "Chassis Power is on"):
		return "on"
	case strings.Contains(out, "Chassis Power is off"):
		return "off"
	}
	t.Fatalf("ipmitool chassis power status: unexpected output %q", out)
	return ""
}

// FreeUDPPort returns a loopback UDP port that was free a moment ago.
func FreeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free UDP port: %v", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// BlackHole returns the port of a UDP socket that reads every packet and
// never answers: a BMC whose network path is up but which does not respond.
func BlackHole(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().(*net.UDPAddr).Port
}

// WriteFile writes content with exactly mode (the umask does not narrow it).
func WriteFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
