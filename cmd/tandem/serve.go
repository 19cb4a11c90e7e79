package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/nbd/backend"
)

const serveLong = `Serve files or block devices as NBD exports until SIGINT or SIGTERM.

Each --export NAME=PATH offers PATH under the export name NAME (an empty
NAME, as in "=disk.img", is the default export). A missing PATH is created
as a sparse file of --size bytes; an existing one keeps its size.

Listen addresses are host:port (TCP; port 10809 is the NBD standard) or
unix:/path/to/socket, and --listen may be repeated.

On SIGINT or SIGTERM the server stops accepting, finishes the requests in
flight, flushes every export and exits 0.

Scripts can wait for --ready-file: it appears, holding one listen address
per line (with the real port when you asked for port 0), once every listener
accepts connections, and it is removed on exit.`

const serveExample = `  # a new 10 GiB sparse file, on TCP and a unix socket
  tandem serve --listen 127.0.0.1:10809 --listen unix:/run/tandem.sock \
      --export disk=/var/lib/tandem/disk.img --size 10G

  # then, from any NBD client
  nbdinfo nbd://127.0.0.1:10809/disk
  qemu-img info 'nbd+unix:///disk?socket=/run/tandem.sock'`

// serveFlags is the command line as typed; config checks it before anything
// is opened.
type serveFlags struct {
	listen          []string
	exports         []string
	size            string
	readOnly        bool
	direct          bool
	tlsCert         string
	tlsKey          string
	tlsOnly         bool
	queueDepth      int
	description     string
	pidFile         string
	readyFile       string
	shutdownTimeout time.Duration
}

// serveConfig is a checked command line, with --export and --size parsed.
type serveConfig struct {
	serveFlags
	specs     []exportSpec
	sizeBytes int64 // 0: do not create missing files
}

type exportSpec struct {
	name, path string
}

func newServeCmd(a *app) *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:     "serve --listen ADDR --export NAME=PATH [flags]",
		Short:   "Serve files or block devices over NBD",
		Long:    serveLong,
		Example: serveExample,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			return serve(cmd.Context(), a.log, cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.listen, "listen", nil, "address to listen on: host:port or unix:/path (repeatable)")
	fl.StringArrayVar(&f.exports, "export", nil, "export NAME=PATH (repeatable)")
	fl.StringVar(&f.size, "size", "", "create missing export files sparse at this size (512, 64K, 100M, 10G, 1T, 2GiB)")
	fl.BoolVar(&f.readOnly, "read-only", false, "refuse writes")
	fl.BoolVar(&f.direct, "direct", false, "open exports with O_DIRECT (bypass the page cache)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "TLS certificate (PEM); enables NBD STARTTLS")
	fl.StringVar(&f.tlsKey, "tls-key", "", "TLS private key (PEM)")
	fl.BoolVar(&f.tlsOnly, "tls-only", false, "refuse clients that do not start TLS")
	fl.IntVar(&f.queueDepth, "queue-depth", 0, "requests in flight per connection (0: server default, 128)")
	fl.StringVar(&f.description, "description", "", "export description shown to clients")
	fl.StringVar(&f.pidFile, "pid-file", "", "write the process id to this file")
	fl.StringVar(&f.readyFile, "ready-file", "", "write the listen addresses to this file once listening")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long to drain and flush on SIGTERM before closing hard")
	_ = cmd.MarkFlagFilename("tls-cert", "pem", "crt")
	_ = cmd.MarkFlagFilename("tls-key", "pem", "key")
	return cmd
}

func (f serveFlags) config() (serveConfig, error) {
	cfg := serveConfig{serveFlags: f}
	if len(f.listen) == 0 {
		return cfg, errors.New("serve: no --listen address (want host:port or unix:/path, e.g. --listen 127.0.0.1:10809)")
	}
	for _, l := range f.listen {
		if err := checkListenAddr(l); err != nil {
			return cfg, err
		}
	}
	if len(f.exports) == 0 {
		return cfg, errors.New("serve: no --export (want NAME=PATH, e.g. --export disk=disk.img)")
	}
	seen := map[string]bool{}
	for _, e := range f.exports {
		name, path, ok := strings.Cut(e, "=")
		if !ok || path == "" {
			return cfg, fmt.Errorf("serve: bad --export %q: want NAME=PATH (an empty NAME is the default export)", e)
		}
		if len(name) > 4096 {
			return cfg, fmt.Errorf("serve: bad --export %q: name longer than 4096 bytes", e)
		}
		if seen[name] {
			return cfg, fmt.Errorf("serve: export name %q given twice", name)
		}
		seen[name] = true
		cfg.specs = append(cfg.specs, exportSpec{name: name, path: path})
	}
	if f.size != "" {
		n, err := config.ParseSize(f.size)
		if err != nil {
			return cfg, fmt.Errorf("serve: --size: %w", err)
		}
		cfg.sizeBytes = n
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return cfg, errors.New("serve: --tls-cert and --tls-key go together")
	}
	if f.tlsOnly && f.tlsCert == "" {
		return cfg, errors.New("serve: --tls-only needs --tls-cert and --tls-key")
	}
	if f.queueDepth < 0 {
		return cfg, fmt.Errorf("serve: --queue-depth %d: must not be negative", f.queueDepth)
	}
	if f.shutdownTimeout <= 0 {
		return cfg, fmt.Errorf("serve: --shutdown-timeout %v: must be positive", f.shutdownTimeout)
	}
	return cfg, nil
}

func checkListenAddr(addr string) error {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return fmt.Errorf("serve: bad --listen %q: empty socket path", addr)
		}
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("serve: bad --listen %q: want host:port or unix:/path: %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("serve: bad --listen %q: port %q is not a number from 0 to 65535", addr, port)
	}
	return nil
}

// openExport opens (or creates) one export's backing store.
func openExport(spec exportSpec, cfg serveConfig) (*backend.File, error) {
	_, err := os.Stat(spec.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if cfg.sizeBytes == 0 {
			return nil, fmt.Errorf("serve: export %q: %s does not exist; pass --size to create it", spec.name, spec.path)
		}
		if cfg.readOnly {
			return nil, fmt.Errorf("serve: export %q: %s does not exist and --read-only cannot create it", spec.name, spec.path)
		}
		f, err := backend.OpenFile(spec.path, backend.FileOptions{Size: cfg.sizeBytes, Direct: cfg.direct, Create: true})
		if err != nil {
			return nil, fmt.Errorf("serve: export %q: creating %s: %w", spec.name, spec.path, err)
		}
		return f, nil
	case err != nil:
		return nil, fmt.Errorf("serve: export %q: %w", spec.name, err)
	}
	f, err := backend.OpenFile(spec.path, backend.FileOptions{ReadOnly: cfg.readOnly, Direct: cfg.direct})
	if err != nil {
		return nil, fmt.Errorf("serve: export %q: %w", spec.name, err)
	}
	if cfg.sizeBytes != 0 && f.Size() != cfg.sizeBytes {
		have := f.Size()
		f.Close()
		return nil, fmt.Errorf("serve: export %q: %s is %d bytes but --size asks for %d; resize it (truncate -s) or drop --size", spec.name, spec.path, have, cfg.sizeBytes)
	}
	return f, nil
}

func serve(ctx context.Context, log *slog.Logger, cfg serveConfig) (err error) {
	var files []*backend.File
	defer func() {
		// Shutdown already flushed, unless it timed out; a last flush makes
		// every acknowledged write durable before the process ends either
		// way, and a failure there is a failure of the run.
		for _, f := range files {
			if ferr := f.Flush(context.Background()); ferr != nil && err == nil {
				err = fmt.Errorf("serve: flushing %s: %w", f.Path(), ferr)
			}
			if cerr := f.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("serve: %w", cerr)
			}
		}
	}()

	opts := nbd.Options{
		QueueDepth: cfg.queueDepth,
		RequireTLS: cfg.tlsOnly,
		Logger:     log,
	}
	if cfg.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.tlsCert, cfg.tlsKey)
		if err != nil {
			return fmt.Errorf("serve: loading TLS key pair: %w", err)
		}
		opts.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	}
	for _, spec := range cfg.specs {
		f, err := openExport(spec, cfg)
		if err != nil {
			return err
		}
		files = append(files, f)
		opts.Exports = append(opts.Exports, nbd.Export{
			Name:        spec.name,
			Description: cfg.description,
			Device:      f,
			TLSOnly:     cfg.tlsOnly,
		})
		log.Info("export", "name", spec.name, "path", spec.path, "size", f.Size(), "read_only", cfg.readOnly, "direct", cfg.direct)
	}

	srv, err := nbd.NewServer(opts)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}

	var listeners []net.Listener
	for _, addr := range cfg.listen {
		l, err := nbd.Listen(addr)
		if err == nil && l == nil {
			err = errors.New("no listener")
		}
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("serve: listening on %s: %w", addr, err)
		}
		listeners = append(listeners, l)
	}

	pending := len(listeners) // Serve calls not yet returned
	serveErr := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { serveErr <- srv.Serve(l) }()
	}

	addrs := make([]string, len(listeners))
	for i, l := range listeners {
		addrs[i] = listenString(l)
		log.Info("listening", "addr", addrs[i])
	}
	if err := writeRunFiles(cfg, addrs); err != nil {
		srv.Close()
		waitServe(log, serveErr, pending, time.Second)
		return err
	}
	defer removeRunFiles(log, cfg)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("signal received, shutting down", "timeout", cfg.shutdownTimeout)
	case err := <-serveErr:
		// Serve returns only after Shutdown or Close, which have not been
		// called: this listener broke.
		runErr = fmt.Errorf("serve: listener stopped: %w", err)
		log.Error("listener stopped, shutting down", "err", err)
		pending--
	}

	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("graceful shutdown incomplete, closing", "err", err)
		if cerr := srv.Close(); cerr != nil {
			log.Warn("close", "err", cerr)
		}
		if runErr == nil {
			runErr = fmt.Errorf("serve: shutdown: %w", err)
		}
	}
	waitServe(log, serveErr, pending, cfg.shutdownTimeout)
	if runErr == nil {
		log.Info("stopped")
	}
	return runErr
}

// waitServe collects the Serve results after Shutdown or Close, bounded in
// time so a stuck listener cannot hang the exit.
func waitServe(log *slog.Logger, serveErr <-chan error, n int, limit time.Duration) {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for range n {
		select {
		case err := <-serveErr:
			if err != nil && !errors.Is(err, nbd.ErrServerClosed) {
				log.Warn("serve returned", "err", err)
			}
		case <-timer.C:
			log.Warn("listeners did not stop in time")
			return
		}
	}
}

// listenString prints a listener in --listen syntax, with the real port.
func listenString(l net.Listener) string {
	if l.Addr().Network() == "unix" {
		return "unix:" + l.Addr().String()
	}
	return l.Addr().String()
}

func writeRunFiles(cfg serveConfig, addrs []string) error {
	if cfg.pidFile != "" {
		if err := writeFileAtomic(cfg.pidFile, strconv.Itoa(os.Getpid())+"\n"); err != nil {
			return fmt.Errorf("serve: writing --pid-file: %w", err)
		}
	}
	// The ready file goes last: its presence promises everything else.
	if cfg.readyFile != "" {
		if err := writeFileAtomic(cfg.readyFile, strings.Join(addrs, "\n")+"\n"); err != nil {
			return fmt.Errorf("serve: writing --ready-file: %w", err)
		}
	}
	return nil
}

func removeRunFiles(log *slog.Logger, cfg serveConfig) {
	for _, p := range []string{cfg.readyFile, cfg.pidFile} {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn("removing run file", "path", p, "err", err)
		}
	}
}

// writeFileAtomic renames a complete temporary file into place, so a reader
// polling for path never sees it half written.
func writeFileAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}
