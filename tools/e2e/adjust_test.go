package e2e_test

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/daemon"
)

// A full sync crawling at 1 MiB/s speeds up once the file says 1G and
// the daemons are told: tandem adjust on the source, SIGHUP on the
// target, both real daemons. 64 MiB at the old rate would take a minute.
func TestAdjustSpeedsUpARunningSync(t *testing.T) {
	p := newPair(t, pairOptions{maxRate: "1M"})
	p.createMD()
	p.start("alpha")
	p.start("beta")
	p.tandem("alpha", "promote", "r0", "--force")
	p.tandem("alpha", "connect", "r0")
	p.tandem("beta", "connect", "r0")
	st := p.waitStatus("alpha", "the slow full sync", func(st daemon.ResourceStatus) bool { return st.Resync != nil })
	time.Sleep(time.Second)
	if st = p.status("alpha"); st.Resync == nil || st.Resync.LeftBytes < 32<<20 {
		t.Fatalf("at 1 MiB/s most of 64 MiB should be left after a second: %+v", st.Resync)
	}
	if out := p.tandem("alpha", "adjust", "--dry-run"); !strings.Contains(out, "nothing to change") {
		t.Fatalf("adjust --dry-run before the edit: %s", out)
	}
	b, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.path, strings.Replace(string(b), "max-rate: 1M", "max-rate: 1G", 1), 0o644)
	if out := p.tandem("alpha", "adjust"); !strings.Contains(out, "changed Resources[r0].Resync.MaxRate") {
		t.Fatalf("adjust: %s", out)
	}
	p.nodes["beta"].proc.Signal(t, syscall.SIGHUP)
	for _, n := range []string{"alpha", "beta"} {
		p.tandem(n, "wait", "r0", "--for", "in-sync", "--timeout", "30s")
	}
	p.sameData()
	p.nodes["beta"].proc.WaitFor(t, "beta's SIGHUP adjust in its log", func() bool {
		return strings.Contains(p.nodes["beta"].proc.Stderr(), "configuration adjusted")
	})
	if a, b := p.status("alpha"), p.status("beta"); !inSync(a) || !inSync(b) {
		t.Fatalf("after the sync: %+v / %+v", a, b)
	}
}
