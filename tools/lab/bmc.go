package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// A lab BMC is one OpenIPMI ipmi_sim per data node, in the bridge
// namespace on an address of its own. Its chassis control is a hook
// script that runs `tandem lab bmc-hook`, which keeps the node's power
// state in the lab directory: power off SIGKILLs the node's daemon (a
// power cut: no clean shutdown), power on starts it again.

// bmcEmulator is the emulator file: one BMC management controller.
const bmcEmulator = `mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
sel_enable 0x20 1000 0x0a
mc_enable 0x20
`

// bmcLanConf is ipmi_sim's configuration for node's BMC. Debian ships
// none that works; this one is the one verified on the test bed
// (testbed-facts.md), on the node's BMC address.
func bmcLanConf(l layout, node, password string) string {
	return fmt.Sprintf(`name "%[1]sbmc"
set_working_mc 0x20
  startlan 1
    addr %[2]s %[3]d
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid %[4]s
  endlan
  chassis_control "%[5]s %[1]s"
  user 2 true  "%[6]s" "%[7]s" admin 10 none md2 md5 straight
`, node, bmcAddr[node], bmcPort, bmcGUID(node), filepath.Join(l.bmcDir(node), "hook"), bmcUser, password)
}

func bmcGUID(node string) string {
	if node == Alpha {
		return "a123456789abcdefa123456789abcdef"
	}
	return "b123456789abcdefa123456789abcdef"
}

// bmcHook is the chassis control program ipmi_sim runs: it hands the
// request to the tandem binary that made the lab.
func bmcHook(tandem, dir string) string {
	return fmt.Sprintf("#!/bin/sh\n# ipmi_sim's chassis control for a tandem lab node: NODE get|set power [0|1]\n"+
		"# ipmi_sim waits for it; a -race build would otherwise linger 1 s at exit.\n"+
		"export GORACE=\"${GORACE:-} %s\"\nexec %s lab bmc-hook --dir %s -- \"$@\"\n",
		noRaceExitSleep, shellQuote(tandem), shellQuote(dir))
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// writeBMCFiles writes each data node's ipmi_sim files.
func writeBMCFiles(l layout, tandem, password string) error {
	for _, n := range dataNodes {
		d := l.bmcDir(n)
		if err := os.MkdirAll(filepath.Join(d, "state"), 0o700); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		for _, f := range []struct {
			name, content string
			mode          os.FileMode
		}{
			{"lan.conf", bmcLanConf(l, n, password), 0o600},
			{"bmc.emu", bmcEmulator, 0o644},
			{"hook", bmcHook(tandem, l.dir), 0o755},
		} {
			if err := os.WriteFile(filepath.Join(d, f.name), []byte(f.content), f.mode); err != nil {
				return fmt.Errorf("lab: %w", err)
			}
		}
	}
	return nil
}

// startBMC starts node's ipmi_sim in the bridge namespace.
func startBMC(l layout, n names, node string) error {
	d := l.bmcDir(node)
	_, err := startDetached(l.procRecord("bmc-"+node), l.log("bmc-"+node), inNetns(n.bridgeNS(),
		"ipmi_sim", "-c", filepath.Join(d, "lan.conf"), "-f", filepath.Join(d, "bmc.emu"),
		"-s", filepath.Join(d, "state"), "-n"))
	return err
}

// Power states, as the BMCs report them.
const (
	PowerOn  = "on"
	PowerOff = "off"
)

func readPower(l layout, node string) string {
	b, err := os.ReadFile(l.power(node))
	if err != nil {
		return PowerOff
	}
	if strings.TrimSpace(string(b)) == PowerOn {
		return PowerOn
	}
	return PowerOff
}

// lockNode serialises power changes of one node between the BMC hook and
// the lab commands (crash, restart). The lock goes with the process.
func lockNode(l layout, node string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(l.run(), node+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab: locking %s: %w", node, err)
	}
	return func() { f.Close() }, nil
}

// BMCHook answers ipmi_sim's chassis control for a lab node: args are
// what ipmi_sim passes after the program, "NODE get power" or "NODE set
// power 0|1" (also "reset", "boot", "identify"). It writes what ipmi_sim
// reads (power:0 / power:1) to out. It must be quick: ipmi_sim waits.
func BMCHook(ctx context.Context, dir string, args []string, out func(string)) error {
	lab, err := Open(dir)
	if err != nil {
		return err
	}
	if len(args) < 3 {
		return fmt.Errorf("lab: bmc-hook %q: want NODE get|set PARAM [VALUE]", args)
	}
	node, op, param := args[0], args[1], args[2]
	if _, ok := bmcAddr[node]; !ok {
		return fmt.Errorf("lab: bmc-hook: %q is not a data node of the lab", node)
	}
	switch {
	case op == "get" && param == "power":
		if readPower(lab.l, node) == PowerOn {
			out("power:1")
		} else {
			out("power:0")
		}
		return nil
	case op == "get":
		out(param + ":0") // boot device and the like: nothing to report
		return nil
	case op == "set" && param == "power" && len(args) >= 4:
		switch args[3] {
		case "0":
			return lab.powerOff(node)
		case "1":
			return lab.powerOn(ctx, node, false)
		}
	case op == "set" && param == "reset":
		if err := lab.powerOff(node); err != nil {
			return err
		}
		return lab.powerOn(ctx, node, false)
	case op == "set":
		return nil // boot device, identify: nothing to do
	}
	return fmt.Errorf("lab: bmc-hook: unsupported request %q", strings.Join(args, " "))
}

// bmcQuery asks node's BMC for its power state, over IPMI from the bridge
// namespace (where the BMCs are, so a fault in force on a host does not
// hide its BMC), through `tandem fence status` and the node's configured
// level: the same path fencing takes.
func (lab *Lab) bmcQuery(ctx context.Context, node string) (string, error) {
	st, err := lab.state()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, fenceTimeout+2*time.Second)
	defer cancel()
	out, err := run(ctx, "", inNetns(lab.n.bridgeNS(), st.Tandem, "--config", lab.l.config(),
		"fence", "status", node, "--node", Witness, "--json")...)
	var res struct {
		OK    bool   `json:"ok"`
		State string `json:"state"`
	}
	if jerr := jsonUnmarshal(out, &res); jerr != nil {
		return "", errors.Join(err, jerr)
	}
	if !res.OK && err != nil {
		return "", err
	}
	return res.State, nil
}
