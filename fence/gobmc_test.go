package fence

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bougou/go-ipmi/pkg/bmc"
	"github.com/bougou/go-ipmi/pkg/hal/mock"
	"github.com/bougou/go-ipmi/pkg/handlers"
	"github.com/bougou/go-ipmi/pkg/server"
	"github.com/bougou/go-ipmi/pkg/transport/udp"
	"github.com/bougou/go-ipmi/pkg/types"

	"github.com/tandem-ha/tandem/fence/fencetest"
)

// goBMC starts go-ipmi's in-process BMC on a loopback port: it needs no
// Debian package, so these tests run everywhere, and unlike ipmi_sim it
// offers cipher suite 17. lie makes its chassis accept power changes and
// ignore them.
func goBMC(t *testing.T, on, lie bool) (port int, chassis *mock.Chassis) {
	t.Helper()
	return goBMCOn(t, "127.0.0.1:0", on, lie)
}

func goBMCOn(t *testing.T, listen string, on, lie bool, opts ...server.ServerOption) (port int, chassis *mock.Chassis) {
	t.Helper()
	h := mock.New()
	chassis = h.Chassis().(*mock.Chassis)
	chassis.On = on
	if lie {
		chassis.SetPowerHook = func(bool) error { return nil }
	}
	b := bmc.New(bmc.DeviceInfo{DeviceID: 32, IPMIVersion: 0x20, ManufacturerID: 0x000157, ProductID: 1}, [16]byte{1, 2, 3}, h)
	u, err := b.Users.Add(2, simUser)
	if err != nil {
		t.Fatal(err)
	}
	u.SetPassword([]byte(simPassword))
	u.Enabled = true
	u.ChannelAccess[1] = bmc.UserChannelAccess{MaxPrivilege: bmc.PrivilegeLevelAdministrator, Enabled: true}
	conn, err := udp.Listen(listen)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.NewServer(b, conn, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		_ = srv.Close()
		_ = conn.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("go-ipmi server did not stop")
		}
	})
	return conn.LocalAddr().(*net.UDPAddr).Port, chassis
}

func goBMCMethod(t *testing.T, port, suite int, timeout time.Duration) *IPMI {
	t.Helper()
	m, err := NewIPMI(IPMIConfig{Address: "127.0.0.1", Port: port, Username: simUser, Password: simPassword,
		CipherSuite: suite, Timeout: timeout, PollInterval: 20 * time.Millisecond, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func chassisOn(c *mock.Chassis) bool {
	on, _ := c.PowerState(context.Background())
	return on
}

func TestGoBMCCipherSuites(t *testing.T) {
	for _, suite := range []int{3, 17} {
		port, chassis := goBMC(t, true, false)
		m := goBMCMethod(t, port, suite, 10*time.Second)
		ctx := context.Background()
		if st, err := m.Status(ctx); err != nil || st != StateOn {
			t.Fatalf("suite %d: Status = %v, %v", suite, st, err)
		}
		if err := m.Off(ctx, Request{}); err != nil {
			t.Fatalf("suite %d: Off: %v", suite, err)
		}
		if chassisOn(chassis) {
			t.Fatalf("suite %d: Off succeeded, chassis still on", suite)
		}
		if err := m.On(ctx); err != nil || !chassisOn(chassis) {
			t.Fatalf("suite %d: On: %v (chassis on: %v)", suite, err, chassisOn(chassis))
		}
	}
}

func TestGoBMCLyingChassis(t *testing.T) {
	port, _ := goBMC(t, true, true)
	m := goBMCMethod(t, port, 17, time.Second)
	if err := m.Off(context.Background(), Request{}); !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("Off through a chassis that ignores it: %v; want ErrNotConfirmed", err)
	}
}

func TestGoBMCWrongPassword(t *testing.T) {
	port, chassis := goBMC(t, true, false)
	m, err := NewIPMI(IPMIConfig{Address: "127.0.0.1", Port: port, Username: simUser, Password: "wrong",
		CipherSuite: 17, Timeout: 10 * time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Off(context.Background(), Request{}); !errors.Is(err, ErrAuth) {
		t.Fatalf("Off with a wrong password: %v; want ErrAuth", err)
	}
	if !chassisOn(chassis) {
		t.Fatal("a refused login switched the chassis off")
	}
}

func TestGoBMCIPv6(t *testing.T) {
	if c, err := net.ListenPacket("udp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		c.Close()
	}
	port, chassis := goBMCOn(t, "[::1]:0", true, false)
	m, err := NewIPMI(IPMIConfig{Address: "::1", Port: port, Username: simUser, Password: simPassword,
		Timeout: 5 * time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if m.String() != "ipmi [::1]:"+strconv.Itoa(port) {
		t.Errorf("String() = %q", m.String())
	}
	if err := m.Off(context.Background(), Request{}); err != nil || chassisOn(chassis) {
		t.Fatalf("Off over IPv6: %v (chassis on: %v)", err, chassisOn(chassis))
	}
}

// A session per operation leaves nothing running behind it: go-ipmi's
// keep-alive goroutine and socket go with each Close.
func TestIPMILeavesNoGoroutines(t *testing.T) {
	port, chassis := goBMC(t, true, false)
	m := goBMCMethod(t, port, 3, 5*time.Second)
	dead, err := NewIPMI(IPMIConfig{Address: "127.0.0.1", Port: fencetest.BlackHole(t), Username: "u", Password: "p",
		Timeout: 300 * time.Millisecond, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The baseline once the server runs (its goroutines start with its
	// first packet): the lowest count over a moment, so a request handler
	// still finishing is not counted in.
	if _, err := m.Status(ctx); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	for range 10 {
		time.Sleep(20 * time.Millisecond)
		before = min(before, runtime.NumGoroutine())
	}
	for range 5 {
		if _, err := m.Status(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m.Off(ctx, Request{}); err != nil {
			t.Fatal(err)
		}
		if err := m.On(ctx); err != nil || !chassisOn(chassis) {
			t.Fatal(err)
		}
		_, _ = dead.Status(ctx)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A BMC that answers "node busy" to the first status reads: the operation is
// tried again, each time with a new session, and succeeds within the
// timeout; with no retries it fails.
func TestIPMIRetriesWithNewSession(t *testing.T) {
	var busy atomic.Int32
	reg := handlers.NewRegistry()
	reg.Use(func(next handlers.Handler) handlers.Handler {
		return handlers.HandlerFunc(func(ctx context.Context, hctx *handlers.HandlerContext, data []byte) ([]byte, types.CompletionCode, error) {
			if hctx != nil && hctx.Command.ID == types.CommandGetChassisStatus.ID && hctx.Command.NetFn == types.CommandGetChassisStatus.NetFn &&
				busy.Add(-1) >= 0 {
				return nil, types.CodeNodeBusy, nil
			}
			return next.Handle(ctx, hctx, data)
		})
	})
	handlers.RegisterAllHandlers(reg)
	port, chassis := goBMCOn(t, "127.0.0.1:0", true, false, server.WithHandlerRegistry(reg))

	busy.Store(2)
	m := goBMCMethod(t, port, 17, 10*time.Second) // Retries 0: the default, 2
	if err := m.Off(context.Background(), Request{}); err != nil {
		t.Fatalf("Off through two busy answers with 2 retries: %v", err)
	}
	if chassisOn(chassis) {
		t.Fatal("chassis still on")
	}

	busy.Store(1)
	once, err := NewIPMI(IPMIConfig{Address: "127.0.0.1", Port: port, Username: simUser, Password: simPassword,
		CipherSuite: 17, Retries: -1, Timeout: 10 * time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := once.Status(context.Background()); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("Status through a busy answer without retries: %v", err)
	}
}
