package wire

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Version is the link protocol this build speaks. The frame header and the
// first four bytes of Hello (the version) never change, so that any two
// versions can at least tell each other they differ. 2: a secondary may
// ask the primary to verify (State kinds 8-10). 3: a primary whose disk
// failed reads from its secondary (ReadRequest, ReadData).
const Version uint32 = 3

// DefaultTimeout bounds a whole handshake when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// MinSecretLen is the shortest shared secret accepted. The MACs of one
// handshake let an eavesdropper test guesses offline, so a short secret
// would fall to brute force.
const MinSecretLen = 16

// maxName bounds cluster, resource and node names (one length byte).
const maxName = 255

// handshakeMaxPayload bounds every frame before the peer is authenticated:
// an unknown peer cannot make this node allocate more than this.
const handshakeMaxPayload = 4096

// macLabel separates these MACs from any other use of the secret.
const macLabel = "tandem-link-v1"

// tlsExporterLabel derives the TLS channel binding (RFC 9266 style).
const tlsExporterLabel = "EXPORTER-tandem-link-v1"

// Handshake errors. The side that detects a mismatch returns the specific
// error; the other side receives a Refuse and returns ErrRefused joined
// with the same specific error, so both can branch on it.
var (
	ErrVersion  = errors.New("wire: protocol version mismatch")
	ErrCluster  = errors.New("wire: peer is in another cluster")
	ErrResource = errors.New("wire: peer is on another resource")
	ErrPeer     = errors.New("wire: peer is not the configured node")
	ErrAuth     = errors.New("wire: peer authentication failed")
	ErrRefused  = errors.New("wire: refused by peer")
	// ErrProtocol: a malformed Hello or a frame out of order.
	ErrProtocol = errors.New("wire: handshake protocol violation")
	// ErrConfig: the local Config cannot be used.
	ErrConfig = errors.New("wire: invalid link configuration")
	// ErrTLS: the TLS handshake failed on the certificates or on the
	// other side speaking no TLS (a configuration mismatch, not the
	// network).
	ErrTLS = errors.New("wire: TLS refused")
)

// Refuse codes, first byte of a Refuse payload (then the reason text); 0
// and unknown codes mean "other".
const (
	refuseVersion  = 1
	refuseCluster  = 2
	refuseResource = 3
	refusePeer     = 4
	refuseAuth     = 5
	refuseProtocol = 6
)

// maxReason bounds a Refuse reason we send or display.
const maxReason = 512

// Config describes one end of a link. Both nodes of a resource build it
// from the same configuration file.
type Config struct {
	// ProtocolVersion to announce; 0 means Version. Only tests set it.
	ProtocolVersion uint32
	// DropFeatures are feature bits not to announce, as a build that
	// predates them would not. Only tests set it.
	DropFeatures uint32
	Cluster      string
	Resource     string
	LocalNode    string
	PeerNode     string
	// Secret is the cluster's shared secret, at least MinSecretLen bytes.
	Secret []byte
	// AcceptSecrets are further secrets the peer may prove instead, while
	// the cluster rotates its secret; this side proves Secret only.
	AcceptSecrets [][]byte
	// TLS, when set, wraps the connection before Hello, TLS 1.3 minimum.
	// The handshake MACs are bound to the TLS session, so a peer that
	// proves the secret is the one at the other end of this TLS session
	// even when certificates are not verified.
	TLS *tls.Config
	// Dialer: this side opened the connection. It is the TLS client and
	// speaks first; the accepting side reveals nothing (not even its
	// Hello) to a peer that has not named the right cluster, resource and
	// node, and sends no MAC before it has checked the dialer's.
	Dialer bool
	// Compression: "off" (or empty), "s2" or "zstd".
	Compression string
	// Timeout bounds the whole handshake (TLS included); 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// MaxPayload bounds data frames after the handshake; 0 means
	// DefaultMaxPayload.
	MaxPayload int
	// Logger receives the warnings the caller cannot see in an error (a
	// compression mismatch); nil discards them.
	Logger *slog.Logger
}

func (cfg *Config) check() (Codec, error) {
	for _, f := range []struct{ name, v string }{
		{"cluster", cfg.Cluster}, {"resource", cfg.Resource},
		{"local node", cfg.LocalNode}, {"peer node", cfg.PeerNode},
	} {
		if f.v == "" || len(f.v) > maxName || !utf8.ValidString(f.v) {
			return 0, fmt.Errorf("%w: %s name %q must be 1 to %d bytes of UTF-8", ErrConfig, f.name, f.v, maxName)
		}
	}
	if cfg.LocalNode == cfg.PeerNode {
		return 0, fmt.Errorf("%w: local and peer node are both %q", ErrConfig, cfg.LocalNode)
	}
	if len(cfg.Secret) < MinSecretLen {
		return 0, fmt.Errorf("%w: shared secret is %d bytes, need at least %d", ErrConfig, len(cfg.Secret), MinSecretLen)
	}
	codec, err := ParseCodec(cfg.Compression)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return codec, nil
}

// HelloInfo is what a Hello announces.
type HelloInfo struct {
	Version  uint32
	Cluster  string
	Resource string
	Node     string
	// Codecs is the set of codecs the sender can decode (bit 1<<Codec);
	// its upper half carries feature flags (Feature*).
	Codecs uint32
	// Compression is the codec the sender's configuration asks for.
	Compression Codec
	Challenge   [32]byte
}

// Hello payload, big-endian: version u32 | codecs u32 | wanted codec u8 |
// challenge [32] | cluster, resource, node as u8 length + bytes. The
// version comes first in every version.
func (h *HelloInfo) marshal() []byte {
	b := make([]byte, 0, 41+3+len(h.Cluster)+len(h.Resource)+len(h.Node))
	b = binary.BigEndian.AppendUint32(b, h.Version)
	b = binary.BigEndian.AppendUint32(b, h.Codecs)
	b = append(b, uint8(h.Compression))
	b = append(b, h.Challenge[:]...)
	for _, s := range []string{h.Cluster, h.Resource, h.Node} {
		b = append(b, uint8(len(s)))
		b = append(b, s...)
	}
	return b
}

// parseHello decodes p; when the version differs from want it stops after
// the version, since the rest may be laid out differently.
func parseHello(p []byte, want uint32) (HelloInfo, error) {
	var h HelloInfo
	if len(p) < 4 {
		return h, fmt.Errorf("%w: Hello of %d bytes", ErrProtocol, len(p))
	}
	h.Version = binary.BigEndian.Uint32(p)
	if h.Version != want {
		return h, nil
	}
	p = p[4:]
	if len(p) < 4+1+32 {
		return h, fmt.Errorf("%w: Hello truncated", ErrProtocol)
	}
	h.Codecs = binary.BigEndian.Uint32(p)
	h.Compression = Codec(p[4])
	copy(h.Challenge[:], p[5:37])
	p = p[37:]
	for _, s := range []*string{&h.Cluster, &h.Resource, &h.Node} {
		if len(p) < 1 || len(p) < 1+int(p[0]) {
			return h, fmt.Errorf("%w: Hello truncated", ErrProtocol)
		}
		*s, p = string(p[1:1+int(p[0])]), p[1+int(p[0]):]
	}
	if len(p) != 0 {
		return h, fmt.Errorf("%w: %d trailing bytes after Hello", ErrProtocol, len(p))
	}
	return h, nil
}

// Conn is an authenticated link. Read from one goroutine; Write, Queue and
// Flush from any.
type Conn struct {
	conn net.Conn
	// raw is the TCP connection under TLS (conn itself without TLS).
	raw   net.Conn
	r     *Reader
	w     *Writer
	codec Codec
	peer  HelloInfo
}

// Read returns the next frame (see Reader.Read).
func (c *Conn) Read() (Frame, error) { return c.r.Read() }

// Write sends a frame (see Writer.Write).
func (c *Conn) Write(f Frame) error { return c.w.Write(f) }

// Queue buffers a frame (see Writer.Queue).
func (c *Conn) Queue(f Frame) error { return c.w.Queue(f) }

// Flush sends buffered frames.
func (c *Conn) Flush() error { return c.w.Flush() }

// Reader and Writer give direct access, e.g. to hand them to separate
// receive and send loops.
func (c *Conn) Reader() *Reader { return c.r }
func (c *Conn) Writer() *Writer { return c.w }

// Codec is the negotiated payload compression.
func (c *Conn) Codec() Codec { return c.codec }

// Peer is what the peer announced in its Hello.
func (c *Conn) Peer() HelloInfo { return c.peer }

// PeerHas reports whether the peer announced feature f (Feature*).
func (c *Conn) PeerHas(f uint32) bool { return c.peer.Codecs&f == f }

// NetConn is the underlying connection (a *tls.Conn with TLS), for
// deadlines and addresses.
func (c *Conn) NetConn() net.Conn { return c.conn }

// Close closes the connection; a blocked Read or Write returns. With TLS
// it closes the TCP connection under it without a close_notify: that alert
// can block for seconds on a peer that does not read, and the link's own
// framing (Disconnect) already tells an orderly close from a cut.
func (c *Conn) Close() error {
	err := c.raw.Close()
	c.w.close()
	return err
}

// Dial connects to addr over TCP and runs the handshake as the dialer.
func Dial(ctx context.Context, addr string, cfg Config) (*Conn, error) {
	cfg.Dialer = true
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	d := net.Dialer{Timeout: timeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("wire: dialing %s: %w", addr, err)
	}
	return Handshake(ctx, nc, cfg)
}

// Handshake authenticates the peer on conn and returns the link. On any
// error conn is closed, having sent at most a Refuse: no data frame is
// ever read from a peer that failed. The whole handshake, TLS included,
// must finish within cfg.Timeout and before ctx ends.
//
// Order (the dialer D speaks first; A accepts):
//
//	D -> A  Hello(D)        A checks version, cluster, resource, name
//	A -> D  Hello(A)        D checks the same
//	D -> A  Auth(D)         A checks the MAC
//	A -> D  Auth(A)         D checks the MAC
//	D -> A  Ready           A knows D accepted it
//
// Any check that fails sends Refuse(code, reason) and closes.
func Handshake(ctx context.Context, conn net.Conn, cfg Config) (_ *Conn, err error) {
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	want, err := cfg.check()
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("wire: handshake: setting deadline: %w", err)
	}
	// Cancelling ctx unblocks whatever read or write is in progress.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	sniff := &firstBytes{Conn: conn}
	h := &handshake{cfg: &cfg, want: want, conn: sniff, raw: conn}
	c, err := h.run(ctx)
	switch {
	case err == nil, errors.Is(err, ErrTLS):
	case cfg.TLS != nil && tlsRefusal(err):
		// TLS 1.3 ends the client's handshake before the server checked
		// its certificate: the server's alert comes with the first read.
		err = fmt.Errorf("%w: %w", ErrTLS, err)
	case cfg.TLS == nil && sniff.tlsRecord():
		err = fmt.Errorf("%w: the peer speaks TLS and this node has no tls configured for the link: %w", ErrTLS, err)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("wire: handshake with %s %s: %w (%w)", cfg.PeerNode, remote(conn), context.Cause(ctx), err)
		}
		return nil, fmt.Errorf("wire: handshake with %s %s: %w", cfg.PeerNode, remote(conn), err)
	}
	if !stop() {
		// ctx ended just now and its deadline may already be set.
		c.Close()
		return nil, fmt.Errorf("wire: handshake with %s %s: %w", cfg.PeerNode, remote(conn), context.Cause(ctx))
	}
	if err := c.conn.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, fmt.Errorf("wire: handshake: clearing deadline: %w", err)
	}
	return c, nil
}

func remote(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil {
		return "(" + a.String() + ")"
	}
	return ""
}

type handshake struct {
	cfg  *Config
	want Codec
	conn net.Conn
	raw  net.Conn
	r    *Reader
	w    *Writer
	// binding is the TLS exporter value, empty without TLS.
	binding []byte
	// mine and theirs are the Hello payloads as sent, covered by the MACs.
	mine, theirs []byte
	me, peer     HelloInfo
}

func (h *handshake) run(ctx context.Context) (*Conn, error) {
	if h.cfg.TLS != nil {
		if err := h.startTLS(ctx); err != nil {
			return nil, err
		}
	}
	// Before the peer is authenticated every frame is small and none may
	// be compressed.
	h.r = NewReader(h.conn, Options{MaxPayload: handshakeMaxPayload})
	h.w = NewWriter(h.conn, Options{MaxPayload: handshakeMaxPayload})

	h.me = HelloInfo{
		Version:     h.cfg.ProtocolVersion,
		Cluster:     h.cfg.Cluster,
		Resource:    h.cfg.Resource,
		Node:        h.cfg.LocalNode,
		Codecs:      supportedCodecs | features&^h.cfg.DropFeatures,
		Compression: h.want,
	}
	if h.me.Version == 0 {
		h.me.Version = Version
	}
	rand.Read(h.me.Challenge[:]) // never fails (crypto/rand since Go 1.24)
	h.mine = h.me.marshal()

	var err error
	if h.cfg.Dialer {
		err = h.dialer()
	} else {
		err = h.acceptor()
	}
	if err != nil {
		return nil, err
	}
	codec := h.negotiate()
	opts := Options{MaxPayload: h.cfg.MaxPayload, Codec: codec}
	h.r.setOptions(opts)
	h.w.setOptions(opts)
	return &Conn{conn: h.conn, raw: h.raw, r: h.r, w: h.w, codec: codec, peer: h.peer}, nil
}

// firstBytes keeps the first bytes read from a connection, so that a
// handshake that failed on them can tell a TLS ClientHello from garbage.
type firstBytes struct {
	net.Conn
	head []byte
}

func (f *firstBytes) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	if len(f.head) < 3 {
		f.head = append(f.head, p[:min(n, 3-len(f.head))]...)
	}
	return n, err
}

// tlsRecord: the peer's first bytes are a TLS handshake record header.
func (f *firstBytes) tlsRecord() bool {
	return len(f.head) == 3 && f.head[0] == 0x16 && f.head[1] == 0x03 && f.head[2] <= 0x04
}

// tlsRefusal tells a TLS handshake that failed on what the two sides
// present (a certificate this side does not trust, an alert from the peer
// that does not trust this side's, a peer without TLS) from one the
// network broke.
func tlsRefusal(err error) bool {
	var (
		alert  tls.AlertError
		op     *net.OpError // crypto/tls reports a received alert as a "remote error"
		verify *tls.CertificateVerificationError
		record tls.RecordHeaderError
	)
	return errors.As(err, &alert) || errors.As(err, &verify) || errors.As(err, &record) ||
		errors.As(err, &op) && op.Op == "remote error"
}

func (h *handshake) startTLS(ctx context.Context) error {
	tc := h.cfg.TLS.Clone()
	if tc.MinVersion < tls.VersionTLS13 {
		tc.MinVersion = tls.VersionTLS13
	}
	var t *tls.Conn
	if h.cfg.Dialer {
		t = tls.Client(h.conn, tc)
	} else {
		t = tls.Server(h.conn, tc)
	}
	if err := t.HandshakeContext(ctx); err != nil {
		if tlsRefusal(err) {
			return fmt.Errorf("%w: %w", ErrTLS, err)
		}
		return fmt.Errorf("TLS handshake: %w", err)
	}
	st := t.ConnectionState()
	b, err := st.ExportKeyingMaterial(tlsExporterLabel, nil, 32)
	if err != nil {
		return fmt.Errorf("TLS channel binding: %w", err)
	}
	h.conn, h.binding = t, b
	return nil
}

func (h *handshake) dialer() error {
	if err := h.send(Hello, h.mine); err != nil {
		return err
	}
	if err := h.readHello(); err != nil {
		return err
	}
	if err := h.send(Auth, h.mac(h.cfg.LocalNode, h.cfg.PeerNode, h.peer.Challenge, h.me.Challenge, h.mine, h.theirs)); err != nil {
		return err
	}
	if err := h.readAuth(); err != nil {
		return err
	}
	return h.send(Ready, nil)
}

func (h *handshake) acceptor() error {
	if err := h.readHello(); err != nil {
		return err
	}
	if err := h.send(Hello, h.mine); err != nil {
		return err
	}
	if err := h.readAuth(); err != nil {
		return err
	}
	if err := h.send(Auth, h.mac(h.cfg.LocalNode, h.cfg.PeerNode, h.peer.Challenge, h.me.Challenge, h.mine, h.theirs)); err != nil {
		return err
	}
	f, err := h.expect(Ready)
	if err != nil {
		return err
	}
	if len(f.Payload) != 0 {
		return h.refuse(refuseProtocol, "Ready with a payload", fmt.Errorf("%w: Ready with a payload", ErrProtocol))
	}
	return nil
}

func (h *handshake) send(t MsgType, p []byte) error {
	if err := h.w.Write(Frame{Type: t, Payload: p}); err != nil {
		return fmt.Errorf("sending %s: %w", t, err)
	}
	return nil
}

// expect reads the next frame, which must be of type t or a Refuse.
func (h *handshake) expect(t MsgType) (Frame, error) {
	f, err := h.r.Read()
	if err != nil {
		// Nothing is sent back: a peer that cannot frame is not one to
		// talk to.
		return f, fmt.Errorf("waiting for %s: %w", t, err)
	}
	switch f.Type {
	case t:
		return f, nil
	case Refuse:
		return f, refused(f.Payload)
	}
	msg := fmt.Sprintf("got %s, want %s", f.Type, t)
	return f, h.refuse(refuseProtocol, msg, fmt.Errorf("%w: %s", ErrProtocol, msg))
}

func (h *handshake) readHello() error {
	f, err := h.expect(Hello)
	if err != nil {
		return err
	}
	want := h.me.Version
	peer, err := parseHello(f.Payload, want)
	if err != nil {
		return h.refuse(refuseProtocol, "malformed Hello", err)
	}
	h.peer, h.theirs = peer, f.Payload
	switch {
	case peer.Version != want:
		msg := fmt.Sprintf("protocol version %d, this node speaks %d", peer.Version, want)
		return h.refuse(refuseVersion, msg, fmt.Errorf("%w: %s", ErrVersion, msg))
	case peer.Cluster != h.cfg.Cluster:
		return h.refuse(refuseCluster, fmt.Sprintf("cluster %q is not served here", peer.Cluster),
			fmt.Errorf("%w: peer says cluster %q, this node is in %q", ErrCluster, peer.Cluster, h.cfg.Cluster))
	case peer.Resource != h.cfg.Resource:
		return h.refuse(refuseResource, fmt.Sprintf("resource %q is not served here", peer.Resource),
			fmt.Errorf("%w: peer says resource %q, this link is for %q", ErrResource, peer.Resource, h.cfg.Resource))
	case peer.Node != h.cfg.PeerNode:
		return h.refuse(refusePeer, fmt.Sprintf("node %q is not this resource's peer here", peer.Node),
			fmt.Errorf("%w: peer says it is %q, expected %q", ErrPeer, peer.Node, h.cfg.PeerNode))
	}
	return nil
}

func (h *handshake) readAuth() error {
	f, err := h.expect(Auth)
	if err != nil {
		return err
	}
	ok := false
	for _, k := range append([][]byte{h.cfg.Secret}, h.cfg.AcceptSecrets...) {
		want := h.macWith(k, h.cfg.PeerNode, h.cfg.LocalNode, h.me.Challenge, h.peer.Challenge, h.theirs, h.mine)
		ok = hmac.Equal(f.Payload, want) || ok
	}
	if !ok {
		return h.refuse(refuseAuth, "authentication failed",
			fmt.Errorf("%w: %s did not prove the shared secret", ErrAuth, h.cfg.PeerNode))
	}
	return nil
}

// mac is the proof a sender gives a receiver: HMAC-SHA256 over the label,
// both names, the receiver's challenge (freshness: the receiver chose it),
// the sender's challenge, both Hellos as sent (nothing in them can be
// altered on the way) and the TLS channel binding. Every variable part is
// length-prefixed so no two inputs concatenate alike; the order of names
// and challenges differs by direction so a proof cannot be reflected.
func (h *handshake) mac(sender, receiver string, receiverChal, senderChal [32]byte, senderHello, receiverHello []byte) []byte {
	return h.macWith(h.cfg.Secret, sender, receiver, receiverChal, senderChal, senderHello, receiverHello)
}

func (h *handshake) macWith(secret []byte, sender, receiver string, receiverChal, senderChal [32]byte, senderHello, receiverHello []byte) []byte {
	m := hmac.New(sha256.New, secret)
	field := func(b []byte) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(b)))
		m.Write(n[:])
		m.Write(b)
	}
	field([]byte(macLabel))
	field([]byte(sender))
	field([]byte(receiver))
	field(receiverChal[:])
	field(senderChal[:])
	field(senderHello)
	field(receiverHello)
	field(h.binding)
	return m.Sum(nil)
}

// refuse tells the peer why (best effort: it may be gone) and returns err.
// reason is what the peer sees: it names what the peer sent, never this
// node's own cluster, resource or node names, since the peer is not
// authenticated yet.
func (h *handshake) refuse(code uint8, reason string, err error) error {
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	h.w.Write(Frame{Type: Refuse, Payload: append([]byte{code}, reason...)})
	return err
}

// refusedError is a peer's Refuse: it matches ErrRefused and, when the
// code names one, the specific error (ErrVersion, ErrAuth, ...).
type refusedError struct {
	reason   string
	specific error
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("%v: %s", ErrRefused, e.reason)
}

func (e *refusedError) Unwrap() []error {
	if e.specific == nil {
		return []error{ErrRefused}
	}
	return []error{ErrRefused, e.specific}
}

func refused(p []byte) error {
	if len(p) == 0 {
		return &refusedError{reason: "(no reason given)"}
	}
	code, reason := p[0], p[1:]
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	// The reason comes from an unauthenticated peer and goes to logs:
	// nothing unprintable (no forged log lines, no terminal escapes).
	e := &refusedError{reason: strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, strings.ToValidUTF8(string(reason), "?"))}
	switch code {
	case refuseVersion:
		e.specific = ErrVersion
	case refuseCluster:
		e.specific = ErrCluster
	case refuseResource:
		e.specific = ErrResource
	case refusePeer:
		e.specific = ErrPeer
	case refuseAuth:
		e.specific = ErrAuth
	case refuseProtocol:
		e.specific = ErrProtocol
	}
	return e
}

// negotiate picks the codec: the configured one when both sides ask for
// the same and both can decode it, otherwise none. Both sides compute the
// same answer from the same two Hellos.
func (h *handshake) negotiate() Codec {
	mine, theirs := h.me.Compression, h.peer.Compression
	if mine != theirs {
		h.logger().Warn("replication link: compression differs between the nodes' configurations; sending uncompressed",
			"resource", h.cfg.Resource, "peer", h.cfg.PeerNode, "local", mine.String(), "peer_wants", theirs.String())
		return CodecOff
	}
	if mine == CodecOff {
		return CodecOff
	}
	if h.peer.Codecs&(1<<mine) == 0 || supportedCodecs&(1<<mine) == 0 {
		h.logger().Warn("replication link: the peer cannot decode the configured compression; sending uncompressed",
			"resource", h.cfg.Resource, "peer", h.cfg.PeerNode, "compression", mine.String())
		return CodecOff
	}
	return mine
}

func (h *handshake) logger() *slog.Logger {
	if h.cfg.Logger != nil {
		return h.cfg.Logger
	}
	return slog.New(slog.DiscardHandler)
}
