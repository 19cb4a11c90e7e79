package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TandemServe is a running `tandem serve`, started by StartTandemServe.
type TandemServe struct {
	*Proc
	// Addrs are the lines of its --ready-file: one per --listen, in
	// --listen syntax, with the real port where port 0 was asked for.
	Addrs []string
}

// StartTandemServe runs `tandem serve --ready-file F args...` with the
// binary BuildTandem builds, and returns once F lists the listen addresses.
// Like every Proc, a server still running at the end of the test is killed.
func StartTandemServe(t testing.TB, args ...string) *TandemServe {
	t.Helper()
	bin := BuildTandem(t)
	ready := filepath.Join(t.TempDir(), "tandem.ready")
	s := &TandemServe{Proc: Start(t, bin, append([]string{"serve", "--ready-file", ready}, args...)...)}
	s.WaitFor(t, "the ready file", func() bool {
		// serve renames a complete file into place: never half written.
		b, err := os.ReadFile(ready)
		if err != nil || len(b) == 0 {
			return false
		}
		s.Addrs = strings.Fields(string(b))
		return true
	})
	return s
}
