package authority

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// hclogAdapter routes hashicorp/raft's logging (hclog) to the node's slog
// logger, so raft's elections and errors land in the same log, with the same
// handler, as everything else.
type hclogAdapter struct {
	base    *slog.Logger // without name and implied arguments
	l       *slog.Logger
	name    string
	implied []any
}

func newHclog(l *slog.Logger, name string) hclog.Logger {
	return named(l, name, nil)
}

func named(base *slog.Logger, name string, implied []any) *hclogAdapter {
	return &hclogAdapter{base: base, l: base.With("component", name).With(implied...), name: name, implied: implied}
}

func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		return slog.LevelInfo
	case hclog.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (h *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off {
		return
	}
	h.l.Log(context.Background(), slogLevel(level), msg, fixArgs(args)...)
}

// fixArgs keeps slog from logging "!BADKEY" for hclog's odd trailing
// argument and renders values hclog would format itself.
func fixArgs(args []any) []any {
	args = append([]any(nil), args...)
	if len(args)%2 == 1 {
		args = append(args[:len(args)-1], "extra", args[len(args)-1])
	}
	for i := 0; i+1 < len(args); i += 2 {
		if _, ok := args[i].(string); !ok {
			args[i] = fmt.Sprint(args[i])
		}
		if f, ok := args[i+1].(hclog.Format); ok {
			args[i+1] = fmt.Sprintf(f[0].(string), f[1:]...)
		}
	}
	return args
}

func (h *hclogAdapter) enabled(level hclog.Level) bool {
	return h.l.Enabled(context.Background(), slogLevel(level))
}

func (h *hclogAdapter) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogAdapter) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogAdapter) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogAdapter) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogAdapter) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }
func (h *hclogAdapter) IsTrace() bool                 { return h.enabled(hclog.Trace) }
func (h *hclogAdapter) IsDebug() bool                 { return h.enabled(hclog.Debug) }
func (h *hclogAdapter) IsInfo() bool                  { return h.enabled(hclog.Info) }
func (h *hclogAdapter) IsWarn() bool                  { return h.enabled(hclog.Warn) }
func (h *hclogAdapter) IsError() bool                 { return h.enabled(hclog.Error) }
func (h *hclogAdapter) ImpliedArgs() []any            { return h.implied }
func (h *hclogAdapter) Name() string                  { return h.name }

func (h *hclogAdapter) With(args ...any) hclog.Logger {
	return named(h.base, h.name, append(h.implied[:len(h.implied):len(h.implied)], fixArgs(args)...))
}

func (h *hclogAdapter) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return named(h.base, name, h.implied)
}

func (h *hclogAdapter) ResetNamed(name string) hclog.Logger {
	return named(h.base, name, h.implied)
}

// SetLevel is ignored: the slog handler decides what is logged.
func (h *hclogAdapter) SetLevel(hclog.Level) {}

func (h *hclogAdapter) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn} {
		if h.enabled(l) {
			return l
		}
	}
	return hclog.Error
}

func (h *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		h.Info(strings.TrimRight(string(p), "\n"))
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
