package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Export is one named device offered by a Server.
type Export struct {
	Name        string // "" is the default export
	Description string
	Device      Device
	// TLSOnly refuses the export to clients that did not start TLS.
	TLSOnly bool
	// Available, when set, is asked at every NBD_OPT_GO and
	// NBD_OPT_EXPORT_NAME (not NBD_OPT_INFO, so that listing the exports
	// describes them all): an error refuses the client there (with its
	// text, as NBD_REP_ERR_UNKNOWN: "the export is not available"), so a
	// client learns at connect time, not at its first request, that this
	// server does not serve the export now (a replica that is not
	// primary). The export still shows in NBD_OPT_LIST; sessions already
	// open are not affected.
	Available func() error
}

// available is the Available hook's answer (nil without one).
func (e *Export) available() error {
	if e.Available == nil {
		return nil
	}
	if err := e.Available(); err != nil {
		return fmt.Errorf("export %q is not available here: %w", e.Name, err)
	}
	return nil
}

// Options configure a Server.
type Options struct {
	// Exports in the order NBD_OPT_LIST shows them. A client asking for
	// the empty name gets the export named "" if there is one, else the
	// first.
	Exports []Export
	// TLSConfig enables NBD_OPT_STARTTLS (TLS 1.3 at least).
	TLSConfig *tls.Config
	// RequireTLS refuses every option but STARTTLS and ABORT before TLS
	// (the spec's FORCEDTLS mode).
	RequireTLS bool
	// QueueDepth bounds requests in flight per connection (default 128).
	QueueDepth int
	// MaxInFlightBytes bounds write payloads and read buffers held per
	// connection (default 64 MiB); the reader blocks beyond it.
	MaxInFlightBytes int64
	// MaxPayload is the largest read or write accepted (default 32 MiB).
	MaxPayload uint32
	// HandshakeTimeout bounds option haggling (default 30 s).
	HandshakeTimeout time.Duration
	Logger           *slog.Logger
}

const (
	defaultQueueDepth       = 128
	defaultMaxInFlightBytes = 64 << 20
	defaultMaxPayload       = 32 << 20
	defaultHandshakeTimeout = 30 * time.Second
	defaultPreferredBlock   = 4096
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("nbd: server closed")

// Server speaks NBD on any number of listeners.
type Server struct {
	opts Options
	// exports is replaced, never changed in place, by AddExport and
	// RemoveExport (exports.go): a session keeps the *Export it found.
	exports   atomic.Pointer[[]Export]
	log       *slog.Logger
	tlsConfig *tls.Config
	pool      bufPool

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	connsWG   sync.WaitGroup
	nextID    uint64
}

// NewServer checks the options and returns a server.
func NewServer(opts Options) (*Server, error) {
	if len(opts.Exports) == 0 {
		return nil, errors.New("nbd: no exports configured")
	}
	seen := map[string]bool{}
	for i, e := range opts.Exports {
		if err := checkExport(i, e, opts.TLSConfig != nil, seen); err != nil {
			return nil, err
		}
		seen[e.Name] = true
	}
	if opts.RequireTLS && opts.TLSConfig == nil {
		return nil, errors.New("nbd: RequireTLS without a TLS configuration")
	}
	if opts.QueueDepth <= 0 {
		opts.QueueDepth = defaultQueueDepth
	}
	if opts.MaxPayload == 0 {
		opts.MaxPayload = defaultMaxPayload
	}
	if opts.MaxInFlightBytes <= 0 {
		opts.MaxInFlightBytes = defaultMaxInFlightBytes
	}
	if opts.MaxInFlightBytes < int64(opts.MaxPayload) {
		opts.MaxInFlightBytes = int64(opts.MaxPayload)
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = defaultHandshakeTimeout
	}
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*serverConn]struct{}{},
	}
	exports := slices.Clone(opts.Exports)
	s.exports.Store(&exports)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if opts.TLSConfig != nil {
		c := opts.TLSConfig.Clone()
		if c.MinVersion < tls.VersionTLS13 {
			c.MinVersion = tls.VersionTLS13
		}
		s.tlsConfig = c
	}
	return s, nil
}

// transmissionFlags advertises exactly what the device does.
func (s *Server) transmissionFlags(e *Export, sess *session) uint16 {
	f := e.Device.Features()
	fl := flagHasFlags
	set := func(cond bool, bit uint16) {
		if cond {
			fl |= bit
		}
	}
	set(f.ReadOnly, flagReadOnly)
	set(f.Flush, flagSendFlush)
	set(f.FUA && !f.ReadOnly, flagSendFUA)
	set(f.Rotational, flagRotational)
	set(f.Trim && !f.ReadOnly, flagSendTrim)
	set(f.Zero && !f.ReadOnly, flagSendWriteZeroes)
	set(f.Zero && f.FastZero && !f.ReadOnly, flagSendFastZero)
	set(sess.structured, flagSendDF)
	set(f.MultiConn, flagCanMultiConn)
	_, cacher := e.Device.(Cacher)
	set(f.Cache && cacher, flagSendCache)
	return fl
}

func (s *Server) blockSizes(e *Export) (minB, prefB, maxB uint32) {
	f := e.Device.Features()
	minB, prefB, maxB = f.MinBlock, f.PreferredBlock, f.MaxBlock
	if minB == 0 {
		minB = 1
	}
	if prefB == 0 {
		prefB = defaultPreferredBlock
	}
	if prefB < minB {
		prefB = minB
	}
	if maxB == 0 || maxB > s.opts.MaxPayload {
		maxB = s.opts.MaxPayload
	}
	return minB, prefB, maxB
}

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Serve accepts connections on l until Shutdown or Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.shuttingDown() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if isTemporaryAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed, retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		if err := s.ServeConn(nc); err != nil && !errors.Is(err, ErrServerClosed) {
			s.log.Debug("nbd: connection not served", "err", err)
		}
	}
}

// isTemporaryAccept reports resource exhaustion (EMFILE, ENFILE, ...)
// that goes away by itself.
func isTemporaryAccept(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

// ServeConn serves one already accepted connection in the background. It
// takes ownership of nc.
func (s *Server) ServeConn(nc net.Conn) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		nc.Close()
		return ErrServerClosed
	}
	s.nextID++
	c := newServerConn(s, nc, s.nextID)
	s.conns[c] = struct{}{}
	s.connsWG.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.connsWG.Done()
		c.serve()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	return nil
}

// Shutdown stops accepting, lets every connection finish the requests it
// has in flight (new requests are no longer read), flushes every device
// and closes the connections. If ctx ends first, it closes hard.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.beginShutdown()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.connsWG.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.Close()
		<-done
		return fmt.Errorf("nbd: shutdown: %w", ctx.Err())
	}
	var errs []error
	exports := s.exportsNow()
	for i := range exports {
		e := &exports[i]
		if f := e.Device.Features(); f.Flush && !f.ReadOnly {
			if err := e.Device.Flush(ctx); err != nil {
				errs = append(errs, fmt.Errorf("nbd: shutdown: flushing export %q: %w", e.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Close closes every listener and connection at once; requests in flight
// see their context cancelled and their replies are dropped.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.abort()
	}
	s.mu.Unlock()
	s.connsWG.Wait()
	return nil
}

// Listen opens "unix:/path" or "host:port". A stale Unix socket file is
// replaced.
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return nil, fmt.Errorf("nbd: listen %q: empty socket path", addr)
		}
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			// Only a socket nobody answers on is stale.
			if c, err := net.Dial("unix", path); err == nil {
				c.Close()
				return nil, fmt.Errorf("nbd: listen %q: a server is already listening there", addr)
			}
			os.Remove(path)
		}
		l, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("nbd: listen %q: %w", addr, err)
		}
		return l, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen %q: %w", addr, err)
	}
	return l, nil
}
