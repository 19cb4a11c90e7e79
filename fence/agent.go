package fence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// DefaultAgentTimeout bounds one run of an external agent: Pacemaker's
// default stonith timeout.
const DefaultAgentTimeout = 60 * time.Second

// Exit statuses of the fence-agents protocol, as Pacemaker reads them.
const (
	agentExitOK        = 0 // success; for status: the node is on
	agentExitStatusOff = 2 // for status: the node is off
)

// agentOutputLimit bounds what is kept (and logged) of an agent's stdout and
// stderr each: enough for any error message, not a runaway agent's output.
const agentOutputLimit = 16 << 10

// agentReserved are the keys tandem itself writes on an agent's stdin.
var agentReserved = []string{"action", "plug", "port"}

// secretKeys are option keys whose values never appear in logs or results.
var secretKeys = []string{"password", "passwd"}

// AgentConfig describes an external fence agent.
type AgentConfig struct {
	// Path is the agent's absolute path: /usr/sbin/fence_ipmilan, a site
	// script. It is run with no arguments and reads its options on stdin.
	Path string
	// Options are the device's key=value lines (ip, username, lanplus,
	// ...), written on stdin after action= and before plug=.
	Options map[string]string
	// PasswordFile, if set, is read at each run and passed as password=.
	PasswordFile string
	// Plug names the node to the agent (plug=), for agents that fence
	// several nodes (a hypervisor's VMs, a PDU's outlets). Empty: none.
	Plug string
	// Timeout bounds one run; the agent's whole process group is killed
	// when it passes. 0 means DefaultAgentTimeout.
	Timeout time.Duration
	Log     *slog.Logger
}

// Agent runs a fence-agents compatible program, the way Pacemaker does:
// no arguments, "key=value" lines on stdin, the exit status as the answer
// (status: 0 on, 2 off, anything else an error; other actions: 0 success).
// So fence_ipmilan, fence_virsh, fence_aws, fence_apc and a site's own
// script all work unchanged.
type Agent struct {
	cfg AgentConfig
}

// NewAgent checks cfg and fills in its defaults.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultAgentTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if !filepath.IsAbs(cfg.Path) {
		errs = append(errs, fmt.Errorf("agent path %q is not absolute", cfg.Path))
	}
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout %v is negative", cfg.Timeout))
	}
	for k, v := range cfg.Options {
		if err := CheckAgentOption(k, v); err != nil {
			errs = append(errs, err)
		}
	}
	if strings.ContainsAny(cfg.Plug, "\n\r") {
		errs = append(errs, errors.New("plug contains a line break"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("fence: agent %s: %w", cfg.Path, errors.Join(errs...))
	}
	return &Agent{cfg: cfg}, nil
}

// CheckAgentOption refuses an option that would not survive the stdin
// protocol, or would override what tandem writes itself (action, plug).
func CheckAgentOption(k, v string) error {
	switch {
	case k == "" || strings.ContainsAny(k, "=\n\r \t"):
		return fmt.Errorf("option key %q: want a word without '=', spaces or line breaks", k)
	case strings.ContainsAny(v, "\n\r"):
		return fmt.Errorf("option %s: the value contains a line break", k)
	case slices.Contains(agentReserved, k):
		return fmt.Errorf("option %s is set by tandem itself", k)
	}
	return nil
}

func (a *Agent) String() string { return "agent " + a.cfg.Path }

// Status runs action=status: exit 0 means on, 2 off.
func (a *Agent) Status(ctx context.Context) (State, error) {
	r, err := a.run(ctx, ActionStatus)
	if err != nil {
		return StateUnknown, err
	}
	switch r.code {
	case agentExitOK:
		return StateOn, nil
	case agentExitStatusOff:
		return StateOff, nil
	}
	return StateUnknown, a.exitError(ActionStatus, r)
}

// Off runs action=off. A fence agent exits 0 only after it saw the node off
// (fence-agents poll the status after the command), so that is the
// confirmation.
func (a *Agent) Off(ctx context.Context, _ Request) error { return a.simple(ctx, ActionOff) }

// On runs action=on.
func (a *Agent) On(ctx context.Context) error { return a.simple(ctx, ActionOn) }

// Reboot runs action=reboot. fence-agents report success once the node was
// off, whether or not it came back, which is what Reboot promises.
func (a *Agent) Reboot(ctx context.Context, _ Request) error { return a.simple(ctx, ActionReboot) }

func (a *Agent) simple(ctx context.Context, action Action) error {
	r, err := a.run(ctx, action)
	if err != nil {
		return err
	}
	if r.code != agentExitOK {
		return a.exitError(action, r)
	}
	return nil
}

func (a *Agent) exitError(action Action, r agentRun) error {
	what := lastLine(r.stderr)
	if what == "" {
		what = lastLine(r.stdout)
	}
	return fmt.Errorf("fence: %s %s: %w: exit status %d%s", a, action, ErrAgent, r.code, what)
}

// agentRun is how one run of an agent ended.
type agentRun struct {
	code           int
	stdout, stderr string // redacted
}

// run starts the agent in a process group of its own, feeds it the options
// and waits for its exit status. On timeout (or ctx's end) the whole group is
// killed, so a hung agent and anything it started cannot outlive the call.
func (a *Agent) run(ctx context.Context, action Action) (agentRun, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, a.cfg.Timeout, fmt.Errorf("%w: no exit within the timeout of %v", ErrUnreachable, a.cfg.Timeout))
	defer cancel()
	input, secrets, err := a.input(action)
	if err != nil {
		return agentRun{code: -1}, fmt.Errorf("fence: %s %s: %w", a, action, err)
	}
	pr, err := RunProgram(ctx, a.cfg.Path, nil, input)
	took := pr.Took
	out, errOut := redact(pr.Stdout, secrets), redact(pr.Stderr, secrets)
	code := pr.Code
	r := agentRun{code: code, stdout: out, stderr: errOut}
	attrs := []any{"agent", a.cfg.Path, "action", action, "plug", a.cfg.Plug, "exit", code, "duration", took,
		"stdout", out, "stderr", errOut}
	if ctx.Err() != nil {
		a.cfg.Log.Warn("fence agent killed", append(attrs, "reason", context.Cause(ctx))...)
		return r, fmt.Errorf("fence: %s %s: killed its process group: %w%s", a, action, context.Cause(ctx), lastLine(errOut))
	}
	if err != nil {
		a.cfg.Log.Warn("fence agent did not run", append(attrs, "error", err)...)
		return r, fmt.Errorf("fence: %s %s: %w: %w", a, action, ErrAgent, err)
	}
	if code < 0 {
		// Killed by a signal it did not get from us.
		a.cfg.Log.Warn("fence agent died", append(attrs, "error", pr.Exit)...)
		return r, fmt.Errorf("fence: %s %s: %w: %s%s", a, action, ErrAgent, pr.Exit, lastLine(errOut))
	}
	lvl := slog.LevelInfo
	if code != agentExitOK && !(action == ActionStatus && code == agentExitStatusOff) {
		lvl = slog.LevelWarn
	}
	a.cfg.Log.Log(context.Background(), lvl, "fence agent exited", attrs...)
	return r, nil
}

// input is what goes on the agent's stdin, and the secret values in it.
func (a *Agent) input(action Action) (string, []string, error) {
	var b strings.Builder
	var secrets []string
	fmt.Fprintf(&b, "action=%s\n", action)
	keys := make([]string, 0, len(a.cfg.Options))
	for k := range a.cfg.Options {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := a.cfg.Options[k]
		fmt.Fprintf(&b, "%s=%s\n", k, v)
		if slices.Contains(secretKeys, strings.ToLower(k)) && v != "" {
			secrets = append(secrets, v)
		}
	}
	if a.cfg.PasswordFile != "" {
		raw, err := os.ReadFile(a.cfg.PasswordFile)
		if err != nil {
			return "", nil, fmt.Errorf("reading the password file: %w", err)
		}
		pw := strings.TrimRight(string(raw), "\r\n")
		if strings.ContainsAny(pw, "\n\r") {
			return "", nil, fmt.Errorf("the password file %s has more than one line", a.cfg.PasswordFile)
		}
		fmt.Fprintf(&b, "password=%s\n", pw)
		if pw != "" {
			secrets = append(secrets, pw)
		}
	}
	if a.cfg.Plug != "" {
		fmt.Fprintf(&b, "plug=%s\n", a.cfg.Plug)
	}
	return b.String(), secrets, nil
}

// redact hides secrets an agent may echo (fence agents print their command
// line, password included, with verbose=1).
func redact(s string, secrets []string) string {
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, "***")
	}
	return strings.TrimSpace(s)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return " (agent said: " + s + ")"
}
