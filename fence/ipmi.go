package fence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
)

// IPMI defaults, the same as docs/configuration.md.
const (
	DefaultIPMIPort        = 623
	DefaultIPMICipherSuite = 3
	DefaultIPMITimeout     = 20 * time.Second
	DefaultIPMIRetries     = 2
	// packetTimeout is how long one UDP exchange waits for the BMC's answer
	// before go-ipmi sends it again (packetResends times): ipmitool's
	// lanplus value. A whole operation is bounded by Timeout anyway.
	packetTimeout = time.Second
	packetResends = 2
	// defaultPollInterval: how often the power state is read while waiting
	// for a power-off to be confirmed.
	defaultPollInterval = 250 * time.Millisecond
	firstPoll           = 20 * time.Millisecond
	// closeTimeout bounds the polite Close Session at the end of an
	// operation: the BMC frees its session slot, but an answer is not needed.
	closeTimeout = time.Second
)

// IPMI interfaces.
const (
	InterfaceLanplus = "lanplus" // IPMI v2.0, RMCP+: authenticated and encrypted
	InterfaceLan     = "lan"     // IPMI v1.5: for old BMCs only
)

// Privilege levels a fencing session may ask for; powering off needs at
// least operator.
const (
	PrivilegeAdministrator = "administrator"
	PrivilegeOperator      = "operator"
)

// CipherSuites are the RMCP+ cipher suites an IPMI method accepts: those
// go-ipmi implements without RC4 and with authentication. 3 (HMAC-SHA1,
// AES-128) is what the IPMI 2.0 specification requires every BMC to offer;
// 17 (HMAC-SHA256, AES-128) is the better one where the BMC has it.
var CipherSuites = []int{1, 2, 3, 8, 12, 15, 16, 17}

// IPMIConfig describes one BMC reached over the LAN.
type IPMIConfig struct {
	Address  string // host name or IP of the BMC
	Port     int    // UDP port; 0 means DefaultIPMIPort
	Username string
	// PasswordFile holds the password (one line; a trailing newline is not
	// part of it). It is read at each operation, so a changed password is
	// picked up without a restart. Password is used when PasswordFile is "".
	PasswordFile string
	Password     string
	CipherSuite  int    // lanplus only; 0 means DefaultIPMICipherSuite
	Privilege    string // PrivilegeAdministrator (default) or PrivilegeOperator
	Interface    string // InterfaceLanplus (default) or InterfaceLan
	// Timeout bounds each operation as a whole: opening the session,
	// the command and, for off, waiting until the BMC reports the node off.
	Timeout time.Duration
	// Retries is how many times a failed operation is tried again, each
	// time with a new session, within Timeout. Refused credentials are not
	// retried. Negative means none; 0 means DefaultIPMIRetries.
	Retries int
	// PollInterval is how often the state is read while confirming off
	// (the first reads come sooner: 20 ms, doubling up to it).
	PollInterval time.Duration
	Log          *slog.Logger
	Clock        Clock
}

// IPMI fences through a BMC with go-ipmi. Each operation opens a session of
// its own and closes it at the end: a BMC reset, a session the BMC timed out,
// or a socket left in a bad state can never make the next fencing hang.
type IPMI struct {
	cfg IPMIConfig
}

// NewIPMI checks cfg and fills in its defaults.
func NewIPMI(cfg IPMIConfig) (*IPMI, error) {
	if cfg.Port == 0 {
		cfg.Port = DefaultIPMIPort
	}
	if cfg.CipherSuite == 0 {
		cfg.CipherSuite = DefaultIPMICipherSuite
	}
	if cfg.Privilege == "" {
		cfg.Privilege = PrivilegeAdministrator
	}
	if cfg.Interface == "" {
		cfg.Interface = InterfaceLanplus
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultIPMITimeout
	}
	switch {
	case cfg.Retries == 0:
		cfg.Retries = DefaultIPMIRetries
	case cfg.Retries < 0:
		cfg.Retries = 0
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = defaultPollInterval
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = RealClock
	}
	var errs []error
	if cfg.Address == "" {
		errs = append(errs, errors.New("no address"))
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d is not from 1 to 65535", cfg.Port))
	}
	if cfg.Username == "" {
		errs = append(errs, errors.New("no username"))
	}
	if !validCipherSuite(cfg.CipherSuite) {
		errs = append(errs, fmt.Errorf("cipher suite %d is not one of %v", cfg.CipherSuite, CipherSuites))
	}
	if cfg.Privilege != PrivilegeAdministrator && cfg.Privilege != PrivilegeOperator {
		errs = append(errs, fmt.Errorf("privilege %q is not %s or %s", cfg.Privilege, PrivilegeAdministrator, PrivilegeOperator))
	}
	if cfg.Interface != InterfaceLanplus && cfg.Interface != InterfaceLan {
		errs = append(errs, fmt.Errorf("interface %q is not %s or %s", cfg.Interface, InterfaceLanplus, InterfaceLan))
	}
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout %v is negative", cfg.Timeout))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("fence: ipmi %s: %w", net.JoinHostPort(cfg.Address, strconv.Itoa(cfg.Port)), errors.Join(errs...))
	}
	return &IPMI{cfg: cfg}, nil
}

// dialHost is the host as go-ipmi wants it: it joins host and port with
// "%s:%d", so an IPv6 literal needs its brackets here.
func dialHost(host string) string {
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		return "[" + host + "]"
	}
	return host
}

func validCipherSuite(n int) bool {
	for _, c := range CipherSuites {
		if c == n {
			return true
		}
	}
	return false
}

func (m *IPMI) addr() string { return net.JoinHostPort(m.cfg.Address, strconv.Itoa(m.cfg.Port)) }

func (m *IPMI) String() string { return "ipmi " + m.addr() }

// Status reads the chassis power state.
func (m *IPMI) Status(ctx context.Context) (State, error) {
	var st State
	err := m.operation(ctx, "status", func(ctx context.Context, c *client.Client) error {
		var err error
		st, err = m.power(ctx, c)
		return err
	})
	return st, err
}

// Off sends chassis power down (unless the BMC already reports off) and
// polls the power state until the BMC reports off. Only that is success.
func (m *IPMI) Off(ctx context.Context, _ Request) error {
	commanded := false
	err := m.operation(ctx, "off", func(ctx context.Context, c *client.Client) error {
		return m.offOnce(ctx, c, &commanded)
	})
	if err != nil && commanded && !errors.Is(err, ErrAuth) {
		// The BMC took the command: whatever went wrong afterwards, the
		// node was not seen off. Say that first.
		return fmt.Errorf("%w: %w", ErrNotConfirmed, err)
	}
	return err
}

func (m *IPMI) offOnce(ctx context.Context, c *client.Client, commanded *bool) error {
	st, err := m.power(ctx, c)
	if err != nil {
		return err
	}
	if st == StateOff {
		return nil
	}
	if _, err := c.ChassisControl(ctx, chassis.ChassisControlPowerDown); err != nil {
		return fmt.Errorf("chassis power down: %w", classify(err))
	}
	*commanded = true
	m.cfg.Log.Info("ipmi: power down sent, waiting for the BMC to report off", "bmc", m.addr())
	// Most BMCs switch within milliseconds: look again soon, then back off
	// to PollInterval, so a quick off is confirmed quickly without
	// hammering a slow BMC.
	wait := min(firstPoll, m.cfg.PollInterval)
	for {
		if err := sleep(ctx, m.cfg.Clock, wait); err != nil {
			return fmt.Errorf("the BMC still reports the node on: %w", ErrNotConfirmed)
		}
		st, err := m.power(ctx, c)
		if err != nil {
			return err
		}
		if st == StateOff {
			return nil
		}
		wait = min(2*wait, m.cfg.PollInterval)
	}
}

// On sends chassis power up unless the BMC already reports on. The BMC's
// acceptance is enough: a node that powers on is not a safety matter.
func (m *IPMI) On(ctx context.Context) error {
	return m.operation(ctx, "on", func(ctx context.Context, c *client.Client) error {
		st, err := m.power(ctx, c)
		if err != nil {
			return err
		}
		if st == StateOn {
			return nil
		}
		if _, err := c.ChassisControl(ctx, chassis.ChassisControlPowerUp); err != nil {
			return fmt.Errorf("chassis power up: %w", classify(err))
		}
		return nil
	})
}

// Reboot is a confirmed Off, then On, like fence_ipmilan's default method
// (rather than chassis power cycle, which gives no confirmation of off).
func (m *IPMI) Reboot(ctx context.Context, req Request) error {
	if err := m.Off(ctx, req); err != nil {
		return err
	}
	if err := m.On(ctx); err != nil {
		return &Warning{Err: fmt.Errorf("powering on again after the confirmed off: %w", err)}
	}
	return nil
}

func (m *IPMI) power(ctx context.Context, c *client.Client) (State, error) {
	st, err := c.GetChassisStatus(ctx)
	if err != nil {
		return StateUnknown, fmt.Errorf("get chassis status: %w", classify(err))
	}
	if st.PowerIsOn {
		return StateOn, nil
	}
	return StateOff, nil
}

// operation runs fn with a fresh session, retrying with a new session on
// failure (but not on refused credentials) until Retries or Timeout.
func (m *IPMI) operation(ctx context.Context, what string, fn func(context.Context, *client.Client) error) error {
	ctx, cancel := context.WithTimeoutCause(ctx, m.cfg.Timeout, fmt.Errorf("%w: no result within the timeout of %v", ErrUnreachable, m.cfg.Timeout))
	defer cancel()
	var last error
	for try := 0; try <= m.cfg.Retries; try++ {
		if try > 0 {
			m.cfg.Log.Warn("ipmi: retrying with a new session", "bmc", m.addr(), "action", what, "try", try+1, "error", last)
			// A short pause, so a BMC that dropped a session can recover.
			if sleep(ctx, m.cfg.Clock, time.Duration(try)*200*time.Millisecond) != nil {
				break
			}
		}
		err := m.session(ctx, fn)
		if err == nil {
			return nil
		}
		last = err
		if errors.Is(err, ErrAuth) || ctx.Err() != nil {
			break
		}
	}
	if ctx.Err() != nil && !errors.Is(last, ErrAuth) && !errors.Is(last, ErrNotConfirmed) {
		last = fmt.Errorf("%w (last error: %v)", context.Cause(ctx), last)
	}
	return fmt.Errorf("fence: %s %s: %w", m, what, last)
}

// session opens a session, runs fn, and always closes the session.
func (m *IPMI) session(ctx context.Context, fn func(context.Context, *client.Client) error) error {
	password := m.cfg.Password
	if m.cfg.PasswordFile != "" {
		b, err := os.ReadFile(m.cfg.PasswordFile)
		if err != nil {
			return fmt.Errorf("reading the password file: %w: %w", ErrAuth, err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	c, err := client.NewClient(dialHost(m.cfg.Address), m.cfg.Port, m.cfg.Username, password)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrAuth, err)
	}
	c.WithTimeout(packetTimeout).WithRetry(packetResends)
	if m.cfg.Privilege == PrivilegeOperator {
		c.WithMaxPrivilegeLevel(types.PrivilegeLevelOperator)
	} else {
		c.WithMaxPrivilegeLevel(types.PrivilegeLevelAdministrator)
	}
	if m.cfg.Interface == InterfaceLan {
		c.WithInterface(client.InterfaceLan)
	} else {
		c.WithInterface(client.InterfaceLanplus)
		c.WithCipherSuiteID(types.CipherSuiteID(m.cfg.CipherSuite))
	}
	connectErr := c.Connect(ctx)
	// Close in every case: it stops go-ipmi's keep-alive goroutine and
	// closes the socket. After a failed connect there is no session to
	// close politely, so it gets no time for that.
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	if connectErr != nil {
		cancel()
	}
	defer func() {
		defer cancel()
		if err := c.Close(closeCtx); err != nil && connectErr == nil {
			m.cfg.Log.Debug("ipmi: closing the session", "bmc", m.addr(), "error", err)
		}
	}()
	if connectErr != nil {
		return fmt.Errorf("opening a session as %q: %w", m.cfg.Username, classify(connectErr))
	}
	return fn(ctx, c)
}

// classify wraps a go-ipmi error with the sentinel it means. go-ipmi flattens
// the errors of session setup into text, so the text is what there is.
func classify(err error) error {
	if err == nil {
		return nil
	}
	err = flat{err}
	var netErr net.Error
	s := strings.ToLower(err.Error())
	has := func(subs ...string) bool {
		for _, sub := range subs {
			if strings.Contains(s, sub) {
				return true
			}
		}
		return false
	}
	switch {
	case errors.Is(err, client.ErrRAKPAuthentication),
		has("rakp2 authentication code mismatch", "rakp4", "unauthorized name", "invalid role",
			"unauthorized role", "invalid user name", "invalid name length", "insufficient privilege",
			"activatesession failed", "setsessionprivilegelevel"):
		return fmt.Errorf("%w (wrong user name or password, or the user may not use this privilege): %w", ErrAuth, err)
	case has("open session failed with cipher suite"):
		return fmt.Errorf("%w: the BMC refused the RMCP+ session; does it offer this cipher suite? (check with ipmitool -I lanplus -C N ... chassis power status): %w", ErrAuth, err)
	case errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout(),
		has("timed out", "deadline exceeded", "no matching ipmi response", "no datagram matched", "connection refused"):
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return err
}

// flat is an error whose message fits on one line: go-ipmi puts newlines in
// its messages, which would break log lines and the CLI's output.
type flat struct{ err error }

func (f flat) Error() string { return strings.Join(strings.Fields(f.err.Error()), " ") }
func (f flat) Unwrap() error { return f.err }
