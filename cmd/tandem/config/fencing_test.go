package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fenceBase: alpha is fenced by IPMI with every key, then an agent, then
// by hand; beta by IPMI with the defaults.
const fenceBase = `cluster: lab
secret-file: /etc/tandem/secret
nodes:
  - name: alpha
    address: 192.0.2.11
    fencing:
      - type: ipmi
        address: 192.0.2.21
        port: 6230
        username: admin
        password-file: /etc/tandem/alpha-bmc.password
        cipher-suite: 17
        privilege: operator
        interface: lanplus
        timeout: 15s
        retries: 3
      - type: agent
        agent: /usr/sbin/fence_virsh
        options:
          ip: 192.0.2.30
          username: root
          identity_file: /root/.ssh/id_ed25519
          ssl_insecure:
        plug: alpha-vm
        password-file: /etc/tandem/virsh.password
        timeout: 90s
      - type: manual
        timeout: 10m
  - name: beta
    address: 192.0.2.12
    fencing:
      - type: ipmi
        address: bmc-beta.example.com
        username: admin
        password-file: /etc/tandem/beta-bmc.password
  - name: gamma
    address: 192.0.2.13
resources:
  - name: db
    size: 10G
    replicas:
      alpha:
        device: /dev/vg0/db
        address: 192.0.2.11:7789
      beta:
        device: /dev/vg0/db
        address: 192.0.2.12:7789
`

func TestParseFencing(t *testing.T) {
	cfg, err := Parse("tandem.yaml", []byte(fenceBase))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := cfg.Node("alpha")
	if len(a.Fencing) != 3 {
		t.Fatalf("alpha has %d levels", len(a.Fencing))
	}
	ipmi := a.Fencing[0]
	if ipmi.Type != FenceIPMI || ipmi.Address != "192.0.2.21" || ipmi.Port != 6230 || ipmi.Username != "admin" ||
		ipmi.PasswordFile != "/etc/tandem/alpha-bmc.password" || ipmi.CipherSuite != 17 || ipmi.Privilege != "operator" ||
		ipmi.Interface != "lanplus" || ipmi.Timeout != 15*time.Second || ipmi.Retries != 3 {
		t.Errorf("ipmi level %+v", ipmi)
	}
	ag := a.Fencing[1]
	if ag.Type != FenceAgent || ag.Agent != "/usr/sbin/fence_virsh" || ag.Plug != "alpha-vm" || ag.Timeout != 90*time.Second ||
		ag.PasswordFile != "/etc/tandem/virsh.password" || len(ag.Options) != 4 || ag.Options["ip"] != "192.0.2.30" || ag.Options["ssl_insecure"] != "" {
		t.Errorf("agent level %+v", ag)
	}
	if m := a.Fencing[2]; m.Type != FenceManual || m.Timeout != 10*time.Minute {
		t.Errorf("manual level %+v", m)
	}
	b, _ := cfg.Node("beta")
	if d := b.Fencing[0]; d.Port != 623 || d.CipherSuite != 3 || d.Privilege != "administrator" || d.Interface != "lanplus" ||
		d.Timeout != 20*time.Second || d.Retries != 2 {
		t.Errorf("ipmi defaults %+v", d)
	}
	g, _ := cfg.Node("gamma")
	if g.Fencing != nil {
		t.Errorf("gamma has fencing %+v", g.Fencing)
	}

	// Fencing is part of the configuration's meaning; a file without it
	// keeps its hash.
	other, err := Parse("tandem.yaml", []byte(strings.Replace(fenceBase, "retries: 3", "retries: 4", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if other.Hash() == cfg.Hash() {
		t.Error("changing retries did not change the hash")
	}
	spelled, err := Parse("tandem.yaml", []byte(strings.Replace(fenceBase,
		"        password-file: /etc/tandem/beta-bmc.password\n",
		"        password-file: /etc/tandem/beta-bmc.password\n        port: 623\n        cipher-suite: 3\n        timeout: 20s\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if spelled.Hash() != cfg.Hash() {
		t.Error("spelling out the defaults changed the hash")
	}
}

func TestParseFencingProblems(t *testing.T) {
	beta := "        address: bmc-beta.example.com\n"
	runProblemCases(t, fenceBase, []problemCase{
		{"typo", []string{"        retries: 3\n", "        retrys: 3 #A\n"},
			[]want{{"#A", "nodes[0].fencing[0].retrys", `did you mean "retries"?`}}},
		{"fencing key at the node level", []string{"    address: 192.0.2.13\n", "    address: 192.0.2.13\n    cipher-suite: 3 #A\n"},
			[]want{{"#A", "nodes[2].cipher-suite", `"cipher-suite" belongs in nodes[N].fencing[M]`}}},
		{"missing type", []string{"      - type: manual\n        timeout: 10m\n", "      - timeout: 1m #A\n"},
			[]want{{"#A", "nodes[0].fencing[2]", `missing key "type"`}}},
		{"unknown type", []string{"      - type: manual\n", "      - type: manul #A\n"},
			[]want{{"#A", "nodes[0].fencing[2].type", `did you mean "manual"?`}}},
		{"missing ipmi keys", []string{beta, "", "        username: admin\n        password-file: /etc/tandem/beta-bmc.password\n", "        privilege: operator\n"},
			[]want{{"      - type: ipmi\n        privilege: operator", "nodes[1].fencing[0]", `missing key "address"`},
				{"      - type: ipmi\n        privilege: operator", "nodes[1].fencing[0]", `missing key "password-file"`},
				{"      - type: ipmi\n        privilege: operator", "nodes[1].fencing[0]", `missing key "username"`}}},
		{"missing agent", []string{"        agent: /usr/sbin/fence_virsh\n", ""},
			[]want{{"      - type: agent", "nodes[0].fencing[1]", `missing key "agent"; add agent: /usr/sbin/fence_`}}},
		{"key of another type", []string{"        plug: alpha-vm\n", "        plug: alpha-vm\n        cipher-suite: 3 #A\n"},
			[]want{{"#A", "nodes[0].fencing[1].cipher-suite", `"cipher-suite" does not apply to a agent level; remove it: it is a key of type ipmi levels`}}},
		{"password file on manual", []string{"        timeout: 10m\n", "        timeout: 10m\n        password-file: /x #A\n"},
			[]want{{"#A", "nodes[0].fencing[2].password-file", "does not apply to a manual level"}}},
		{"cipher suite 0", []string{"cipher-suite: 17", "cipher-suite: 0 #A"},
			[]want{{"#A", "nodes[0].fencing[0].cipher-suite", "cipher suite 0 has no authentication"}}},
		{"RC4 cipher suite", []string{"cipher-suite: 17", "cipher-suite: 4 #A"},
			[]want{{"#A", "nodes[0].fencing[0].cipher-suite", "RC4"}}},
		{"unknown cipher suite", []string{"cipher-suite: 17", "cipher-suite: 42 #A"},
			[]want{{"#A", "nodes[0].fencing[0].cipher-suite", "cipher suite 42 is not supported; use 3"}}},
		{"cipher suite with lan", []string{"interface: lanplus", "interface: lan", "cipher-suite: 17", "cipher-suite: 17 #A"},
			[]want{{"#A", "nodes[0].fencing[0].cipher-suite", "applies to interface lanplus only"}}},
		{"privilege user", []string{"privilege: operator", "privilege: user #A"},
			[]want{{"#A", "nodes[0].fencing[0].privilege", `"user" is not allowed; use "administrator" or "operator"; powering a node off needs at least operator`}}},
		{"interface open", []string{"interface: lanplus", "interface: open #A"},
			[]want{{"#A", "nodes[0].fencing[0].interface", `"open" is not allowed`}}},
		{"bad port", []string{"port: 6230", "port: 0 #A"},
			[]want{{"#A", "nodes[0].fencing[0].port", `"0" is not a whole number from 1 to 65535`}}},
		{"bad BMC address", []string{"address: 192.0.2.21", "address: 192.0.2.21:623 #A"},
			[]want{{"#A", "nodes[0].fencing[0].address", "has a port"}}},
		{"timeout without unit", []string{"timeout: 15s", "timeout: 15 #A"},
			[]want{{"#A", "nodes[0].fencing[0].timeout", `"15" is not a duration`}}},
		{"timeout too long", []string{"timeout: 90s", "timeout: 1h #A"},
			[]want{{"#A", "nodes[0].fencing[1].timeout", "1h is not from 1s to 10m0s"}}},
		{"manual wait too long", []string{"timeout: 10m", "timeout: 48h #A"},
			[]want{{"#A", "nodes[0].fencing[2].timeout", "48h is not from 0s to 24h0m0s"}}},
		{"retries", []string{"retries: 3", "retries: 11 #A"},
			[]want{{"#A", "nodes[0].fencing[0].retries", `"11" is not a whole number from 0 to 10`}}},
		{"relative agent", []string{"agent: /usr/sbin/fence_virsh", "agent: fence_virsh #A"},
			[]want{{"#A", "nodes[0].fencing[1].agent", `"fence_virsh" is not an absolute path`}}},
		{"relative password file", []string{"password-file: /etc/tandem/beta-bmc.password", "password-file: beta.pw #A"},
			[]want{{"#A", "nodes[1].fencing[0].password-file", "is not an absolute path"}}},
		{"action in options", []string{"          ip: 192.0.2.30\n", "          ip: 192.0.2.30\n          action: reboot #A\n"},
			[]want{{"#A", "nodes[0].fencing[1].options.action", "set by tandem itself; remove it"}}},
		{"password in options", []string{"          ip: 192.0.2.30\n", "          ip: 192.0.2.30\n          password: hunter2 #A\n"},
			[]want{{"#A", "nodes[0].fencing[1].options.password", "a password in the configuration file; put it in a file of its own"}}},
		{"option twice", []string{"          ip: 192.0.2.30\n", "          ip: 192.0.2.30\n          ip: 192.0.2.31 #A\n"},
			[]want{{"#A", "nodes[0].fencing[1].options.ip", "given twice"}}},
		{"options not a mapping", []string{"          ip: 192.0.2.30\n          username: root\n          identity_file: /root/.ssh/id_ed25519\n          ssl_insecure:\n", "          - ip=192.0.2.30 #A\n"},
			[]want{{"#A", "nodes[0].fencing[1].options", "want a mapping of option: value, found a list"}}},
		{"two manual levels", []string{"        timeout: 10m\n", "        timeout: 10m\n      - type: manual #A\n"},
			[]want{{"#A", "nodes[0].fencing[3].type", "a second manual level"}}},
		{"empty list", []string{"    fencing:\n      - type: ipmi\n        address: bmc-beta.example.com\n        username: admin\n        password-file: /etc/tandem/beta-bmc.password\n", "    fencing: [] #A\n"},
			[]want{{"#A", "nodes[1].fencing", "no levels"}}},
		{"fencing not a list", []string{"    fencing:\n      - type: ipmi\n        address: bmc-beta.example.com\n        username: admin\n        password-file: /etc/tandem/beta-bmc.password\n", "    fencing: ipmi #A\n"},
			[]want{{"#A", "nodes[1].fencing", "want a list"}}},
		{"two nodes, one BMC", []string{"address: bmc-beta.example.com", "address: 192.0.2.21\n        port: 6230"},
			[]want{{"      - type: ipmi\n        address: 192.0.2.21\n        port: 6230\n        username: admin\n        password-file: /etc/tandem/beta", "nodes[1].fencing[0]", "the BMC 192.0.2.21 port 6230 also fences node alpha (line 7): fencing beta would switch alpha off"}}},
		{"two nodes, one plug", []string{"      - type: ipmi\n        address: bmc-beta.example.com\n", "      - type: agent\n        agent: /usr/sbin/fence_virsh\n        options:\n          ip: 192.0.2.30\n          username: root\n          identity_file: /root/.ssh/id_ed25519\n          ssl_insecure:\n        plug: alpha-vm\n        password-file: /etc/tandem/virsh.password\n      - type: ipmi\n        address: bmc-beta.example.com\n"},
			[]want{{"      - type: agent\n        agent: /usr/sbin/fence_virsh\n        options:\n          ip: 192.0.2.30\n          username: root\n          identity_file: /root/.ssh/id_ed25519\n          ssl_insecure:\n        plug: alpha-vm\n        password-file: /etc/tandem/virsh.password\n      - type: ipmi\n        address: bmc-beta", "nodes[1].fencing[0]", "also fences node alpha"}}},
		{"long user name", []string{"username: admin\n        password-file: /etc/tandem/beta", "username: a-very-long-user-name #A\n        password-file: /etc/tandem/beta"},
			[]want{{"#A", "nodes[1].fencing[0].username", "at most 16 characters"}}},
	})
}

// Validating as a node checks the files it needs to fence the others, and
// never its own levels' files (they live on the nodes that fence it).
func TestValidateLocalFencing(t *testing.T) {
	edit := []string{"  - name: beta\n    address: 127.0.0.1\n", `  - name: beta
    address: 127.0.0.1
    fencing:
      - type: ipmi
        address: 127.0.0.1
        port: 9623
        username: admin
        password-file: DIR/beta-bmc.password
      - type: agent
        agent: DIR/fence_site
        password-file: DIR/beta-agent.password
      - type: manual
`}
	dir, cfg := setupLocal(t, edit...)
	checkProblems(t, cfg.Validate("alpha"), dir, []string{
		`:\d+: nodes\[1\].fencing\[0\].password-file: DIR/beta-bmc.password does not exist \(this node needs it to fence beta\); write the BMC`,
		`:\d+: nodes\[1\].fencing\[1\].agent: DIR/fence_site does not exist on this host`,
		`:\d+: nodes\[1\].fencing\[1\].password-file: DIR/beta-agent.password does not exist`,
	})
	// beta's own files are not beta's business.
	if err := cfg.Validate("beta"); err != nil && strings.Contains(err.Error(), "fencing") {
		t.Fatalf("beta checked its own fencing files: %v", err)
	}

	writeFile(t, filepath.Join(dir, "beta-bmc.password"), "s3cret\n", 0o644)
	writeFile(t, filepath.Join(dir, "beta-agent.password"), "", 0o600)
	writeFile(t, filepath.Join(dir, "fence_site"), "#!/bin/sh\nexit 0\n", 0o644)
	checkProblems(t, cfg.Validate("alpha"), dir, []string{
		`nodes\[1\].fencing\[0\].password-file: DIR/beta-bmc.password is readable by others than its owner \(mode 0644\); chmod 600 DIR/beta-bmc.password`,
		`nodes\[1\].fencing\[1\].agent: DIR/fence_site is not executable \(mode 0644\); chmod 755`,
		`nodes\[1\].fencing\[1\].password-file: DIR/beta-agent.password is empty`,
	})

	writeFile(t, filepath.Join(dir, "beta-bmc.password"), "s3cret\n", 0o600)
	writeFile(t, filepath.Join(dir, "beta-agent.password"), "pw\n", 0o600)
	if err := os.Chmod(filepath.Join(dir, "fence_site"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate("alpha"); err != nil {
		t.Fatalf("with every file in place: %v", err)
	}
}
