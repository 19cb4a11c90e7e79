package authority

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHclogGoesToSlog(t *testing.T) {
	var buf bytes.Buffer
	l := newHclog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), "raft")
	l.Debug("hidden")
	l.Named("net").With("peer", "b").Warn("dial failed", "error", "refused", "odd")
	l.Error("formatted", "n", hclog.Fmt("%03d", 7))
	l.StandardLogger(nil).Printf("from the standard logger")
	out := buf.String()
	for _, want := range []string{
		`level=WARN msg="dial failed" component=raft.net peer=b error=refused extra=odd`,
		`level=ERROR msg=formatted component=raft n=007`,
		`level=INFO msg="from the standard logger"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hidden") || l.IsDebug() || !l.IsWarn() || l.GetLevel() != hclog.Info {
		t.Errorf("levels not taken from the slog handler:\n%s", out)
	}
}
