package authority

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Every connection to the authority port starts with a mutual HMAC-SHA256
// challenge over the cluster secret, then carries either raft's own RPCs or
// one forwarded proposal. The challenge proves both ends hold the secret, so
// nothing without it can vote, append entries or propose. By itself it does
// not encrypt or protect the integrity of what follows (as DRBD's
// cram-hmac): an attacker on the path between voters could tamper with an
// established connection. With Config.TLS the connection is TLS first and
// the challenge runs inside it.
const (
	handshakeMagic   = "TNDA"
	handshakeVersion = 1
	nonceSize        = 32
	// handshakeTimeout bounds a peer that connects and says nothing.
	handshakeTimeout = 5 * time.Second
)

// Purposes of a connection, sent by the dialer.
const (
	purposeRaft    byte = 'R'
	purposeForward byte = 'F'
)

// ErrAuth: the peer does not hold the cluster secret (or speaks something
// else).
var ErrAuth = errors.New("authority: peer failed authentication")

// anyMAC reports whether got is the MAC under one of the secrets: the
// first is this node's own, the others are accepted from peers while the
// cluster rotates its secret.
func anyMAC(got []byte, secrets [][]byte, label string, purpose byte, cn, sn []byte) bool {
	ok := false
	for _, k := range secrets {
		ok = hmac.Equal(got, mac(k, label, purpose, cn, sn)) || ok
	}
	return ok
}

func mac(secret []byte, label string, purpose byte, cn, sn []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write([]byte{purpose})
	m.Write(cn)
	m.Write(sn)
	return m.Sum(nil)
}

// clientHandshake authenticates an outgoing connection for purpose by
// deadline (the dialer's: a peer that accepts and stalls must not hold up
// raft's RPC longer than a dead one).
func clientHandshake(conn net.Conn, secrets [][]byte, purpose byte, deadline time.Time) error {
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	cn := make([]byte, nonceSize)
	if _, err := rand.Read(cn); err != nil {
		return err
	}
	hello := append([]byte(handshakeMagic), handshakeVersion, purpose)
	if _, err := conn.Write(append(hello, cn...)); err != nil {
		return fmt.Errorf("authority: handshake with %s: %w", conn.RemoteAddr(), err)
	}
	reply := make([]byte, nonceSize+sha256.Size)
	if _, err := io.ReadFull(conn, reply); err != nil {
		return fmt.Errorf("authority: handshake with %s: %w", conn.RemoteAddr(), err)
	}
	sn, smac := reply[:nonceSize], reply[nonceSize:]
	if bytes.Equal(sn, cn) || !anyMAC(smac, secrets, "tandem-authority server", purpose, cn, sn) {
		return fmt.Errorf("authority: %s: %w", conn.RemoteAddr(), ErrAuth)
	}
	if _, err := conn.Write(mac(secrets[0], "tandem-authority client", purpose, cn, sn)); err != nil {
		return fmt.Errorf("authority: handshake with %s: %w", conn.RemoteAddr(), err)
	}
	return conn.SetDeadline(time.Time{})
}

// serverHandshake authenticates an incoming connection and returns its
// purpose.
func serverHandshake(conn net.Conn, secrets [][]byte) (byte, error) {
	if err := conn.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
		return 0, err
	}
	hello := make([]byte, len(handshakeMagic)+2+nonceSize)
	if _, err := io.ReadFull(conn, hello); err != nil {
		return 0, fmt.Errorf("authority: handshake from %s: %w", conn.RemoteAddr(), err)
	}
	if string(hello[:len(handshakeMagic)]) != handshakeMagic || hello[len(handshakeMagic)] != handshakeVersion {
		return 0, fmt.Errorf("authority: %s: not a tandem authority handshake (version %d): %w", conn.RemoteAddr(), hello[len(handshakeMagic)], ErrAuth)
	}
	purpose := hello[len(handshakeMagic)+1]
	if purpose != purposeRaft && purpose != purposeForward {
		return 0, fmt.Errorf("authority: %s: unknown purpose %q: %w", conn.RemoteAddr(), purpose, ErrAuth)
	}
	cn := hello[len(handshakeMagic)+2:]
	sn := make([]byte, nonceSize)
	if _, err := rand.Read(sn); err != nil {
		return 0, err
	}
	if _, err := conn.Write(append(sn, mac(secrets[0], "tandem-authority server", purpose, cn, sn)...)); err != nil {
		return 0, fmt.Errorf("authority: handshake from %s: %w", conn.RemoteAddr(), err)
	}
	cmac := make([]byte, sha256.Size)
	if _, err := io.ReadFull(conn, cmac); err != nil {
		return 0, fmt.Errorf("authority: handshake from %s: %w", conn.RemoteAddr(), err)
	}
	if !anyMAC(cmac, secrets, "tandem-authority client", purpose, cn, sn) {
		return 0, fmt.Errorf("authority: %s: %w", conn.RemoteAddr(), ErrAuth)
	}
	return purpose, conn.SetDeadline(time.Time{})
}

// streamLayer is raft's StreamLayer over the authenticated port: Accept
// yields only authenticated raft connections; forwarded proposals go to
// forward.
type streamLayer struct {
	ln      net.Listener
	addr    net.Addr
	secrets [][]byte    // this node's own first, then the accepted ones
	tls     *tls.Config // nil: plain TCP
	log     *slog.Logger
	forward func(net.Conn)
	// dialer, if set, replaces net.DialTimeout (Config.dial).
	dialer func(address string, timeout time.Duration) (net.Conn, error)

	raftConns chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

func newStreamLayer(ln net.Listener, advertise net.Addr, secrets [][]byte, tlsc *tls.Config, log *slog.Logger, forward func(net.Conn)) *streamLayer {
	s := &streamLayer{ln: ln, addr: advertise, secrets: secrets, tls: tlsc, log: log, forward: forward,
		raftConns: make(chan net.Conn), done: make(chan struct{})}
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

func (s *streamLayer) acceptLoop() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.log.Error("authority: accept failed; raft port closed", "err", err)
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(conn)
		}()
	}
}

func (s *streamLayer) serve(conn net.Conn) {
	if s.tls != nil {
		tc := tls.Server(conn, s.tls)
		ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.log.Warn("authority: refused a connection: TLS", "remote", conn.RemoteAddr().String(), "err", err)
			conn.Close()
			return
		}
		conn = tc
	}
	purpose, err := serverHandshake(conn, s.secrets)
	if err != nil {
		s.log.Warn("authority: refused a connection", "remote", conn.RemoteAddr().String(), "err", err)
		conn.Close()
		return
	}
	if purpose == purposeForward {
		s.forward(conn)
		return
	}
	select {
	case s.raftConns <- conn:
	case <-s.done:
		conn.Close()
	}
}

// Accept implements net.Listener for raft's transport.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.raftConns:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; raft's transport calls it on shutdown.
func (s *streamLayer) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.done)
		err = s.ln.Close()
	})
	return err
}

// wait returns once every accepted connection's handler has returned.
func (s *streamLayer) wait() { s.wg.Wait() }

func (s *streamLayer) Addr() net.Addr { return s.addr }

// Dial implements raft.StreamLayer.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return s.dial(string(address), timeout, purposeRaft)
}

func (s *streamLayer) dial(address string, timeout time.Duration, purpose byte) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	dial := s.dialer
	if dial == nil {
		dial = func(address string, timeout time.Duration) (net.Conn, error) {
			return net.DialTimeout("tcp", address, timeout)
		}
	}
	conn, err := dial(address, timeout)
	if err != nil {
		return nil, err
	}
	if s.tls != nil {
		cfg := s.tls.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(address)
		}
		tc := tls.Client(conn, cfg)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("authority: TLS with %s: %w", address, err)
		}
		conn = tc
	}
	if err := clientHandshake(conn, s.secrets, purpose, deadline); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}
