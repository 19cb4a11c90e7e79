package fence

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

	"github.com/tandem-ha/tandem/tools/testenv"
)

// The BMC of these tests is OpenIPMI's ipmi_sim, the simulator the IPMI
// world tests against, configured as docs/testbed describes: one LAN channel
// on a free loopback UDP port, one admin user, and a chassis-control hook
// whose power-off kills a victim process (started by the test, killed by its
// saved PID), so "the node is off" is something the test can see.

const (
	simUser     = "admin"
	simPassword = "s3cret"
)

// hookScript answers ipmi_sim's chassis hook calls:
//
//	HOOK NAME get power        -> prints power:0 or power:1
//	HOOK NAME set power 0|1    -> switches (the victim dies on 0)
//
// In "lie" mode it accepts set power and changes nothing, like a BMC whose
// command reaches nothing. ipmi_sim blocks while the hook runs: it only
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

const simLanConf = `name "testbmc"
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

const simEmu = `mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
sel_enable 0x20 1000 0x0a
mc_enable 0x20
`

// sim is a running ipmi_sim with its victim.
type sim struct {
	dir    string
	port   int
	proc   *testenv.Proc
	victim *testenv.Proc
}

// startSim starts ipmi_sim powered on, with a running victim; lie makes the
// hook ignore power changes.
func startSim(t *testing.T, lie bool) *sim {
	t.Helper()
	testenv.RequireTool(t, "ipmi_sim")
	dir := t.TempDir()
	s := &sim{dir: dir, port: freeUDPPort(t)}
	mode := "normal"
	if lie {
		mode = "lie"
	}
	write(t, filepath.Join(dir, "mode"), mode, 0o644)
	write(t, filepath.Join(dir, "power"), "1\n", 0o644)
	hook := filepath.Join(dir, "hook")
	write(t, hook, fmt.Sprintf(hookScript, dir), 0o755)
	conf := filepath.Join(dir, "lan.conf")
	write(t, conf, fmt.Sprintf(simLanConf, s.port, hook, simUser, simPassword), 0o644)
	emu := filepath.Join(dir, "bmc.emu")
	write(t, emu, simEmu, 0o644)
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	s.startVictim(t)
	s.proc = testenv.Start(t, "ipmi_sim", "-c", conf, "-f", emu, "-s", state, "-n")
	// Ready when a status request gets an answer.
	m := s.ipmi(t, func(c *IPMIConfig) { c.Timeout = time.Second; c.Retries = -1 })
	s.proc.WaitFor(t, "an answer to chassis status", func() bool {
		_, err := m.Status(context.Background())
		return err == nil
	})
	return s
}

// startVictim starts the process that stands for the node's OS.
func (s *sim) startVictim(t *testing.T) {
	t.Helper()
	s.victim = testenv.Start(t, "sleep", "600")
	write(t, filepath.Join(s.dir, "victim.pid"), strconv.Itoa(s.victim.Pid())+"\n", 0o644)
}

// ipmi returns a method for this BMC with the test's credentials, adjusted.
func (s *sim) ipmi(t *testing.T, adjust func(*IPMIConfig)) *IPMI {
	t.Helper()
	pw := filepath.Join(t.TempDir(), "bmc-password")
	write(t, pw, simPassword+"\n", 0o600)
	cfg := IPMIConfig{
		Address: "127.0.0.1", Port: s.port, Username: simUser, PasswordFile: pw,
		CipherSuite: 3, Timeout: 10 * time.Second, PollInterval: 50 * time.Millisecond,
		Log: testLogger(t),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	m, err := NewIPMI(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// power is what the hook last set: "0" or "1".
func (s *sim) power(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "power"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func (s *sim) setPower(t *testing.T, v string) {
	t.Helper()
	write(t, filepath.Join(s.dir, "power.tmp"), v+"\n", 0o644)
	if err := os.Rename(filepath.Join(s.dir, "power.tmp"), filepath.Join(s.dir, "power")); err != nil {
		t.Fatal(err)
	}
}

// setLog is every "set" the hook received, e.g. ["power 0", "power 1"].
func (s *sim) setLog(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "set.log"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), " ", "_"))
}

// victimDead reports whether the victim has exited, waiting a little: the
// hook's kill and the reaping goroutine run on their own.
func (s *sim) victimDead(t *testing.T) bool {
	t.Helper()
	select {
	case <-s.victim.Exited():
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free UDP port: %v", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// blackHole is a UDP socket that reads and never answers: a BMC whose
// network path is up but which does not respond.
func blackHole(t *testing.T) int {
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

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
