package fence

import (
	"testing"
	"time"

	"github.com/tandem-ha/tandem/fence/fencetest"
)

// The BMC of these tests is ipmi_sim, run by fencetest: its chassis hook's
// power-off kills a victim process, so a confirmed off can be checked.

const (
	simUser     = fencetest.User
	simPassword = fencetest.Password
)

type sim struct{ *fencetest.BMC }

func startSim(t *testing.T, lie bool) *sim { return &sim{fencetest.Start(t, lie)} }

// ipmi returns a method for this BMC with the simulator's credentials, adjusted.
func (s *sim) ipmi(t *testing.T, adjust func(*IPMIConfig)) *IPMI {
	t.Helper()
	cfg := IPMIConfig{
		Address: "127.0.0.1", Port: s.Port, Username: simUser, PasswordFile: s.PasswordFile(t),
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
