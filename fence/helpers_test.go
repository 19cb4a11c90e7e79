package fence

import (
	"bytes"
	"log/slog"
	"os/exec"
	"sync"
	"testing"
)

// testLogger logs through t.Log, so a failing test shows what was logged.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// logBuffer keeps what was logged, for tests that check it.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }

func newTextLogger(w *logBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
