package nbd

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
)

// maxOptionLen bounds the data of one option. The longest legitimate
// option is a meta-context query list; 64 KiB is far above that and keeps
// a hostile client from making the server allocate at will.
const maxOptionLen = 64 << 10

// Sentinel outcomes of the handshake that are not failures of the server.
var (
	errClientAbort = errors.New("nbd: client aborted negotiation")
	errProtocol    = errors.New("nbd: protocol violation")
)

// session is what the handshake agreed on.
type session struct {
	export     *Export
	structured bool
	baseAlloc  bool // base:allocation selected for this export
	tls        bool
}

// negotiator runs the fixed-newstyle option haggling on one connection.
type negotiator struct {
	srv *Server
	nc  net.Conn // replaced by the TLS connection after STARTTLS

	noZeroes   bool
	structured bool
	tls        bool
	// meta contexts as selected by the last SET_META_CONTEXT; they apply
	// only if the export chosen by GO has the same name.
	metaExport string
	metaSet    bool
	baseAlloc  bool
}

func (s *Server) negotiate(ctx context.Context, nc net.Conn) (net.Conn, *session, error) {
	n := &negotiator{srv: s, nc: nc}
	sess, err := n.run(ctx)
	return n.nc, sess, err
}

func (n *negotiator) run(ctx context.Context) (*session, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := n.nc.Write(hello[:]); err != nil {
		return nil, fmt.Errorf("nbd: sending greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(n.nc, cf[:]); err != nil {
		return nil, fmt.Errorf("nbd: reading client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return nil, fmt.Errorf("%w: unknown client flags %#x", errProtocol, clientFlags)
	}
	n.noZeroes = clientFlags&flagCNoZeroes != 0

	for {
		var hdr [optHeaderSize]byte
		if _, err := io.ReadFull(n.nc, hdr[:]); err != nil {
			return nil, fmt.Errorf("nbd: reading option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != magicIHaveOpt {
			return nil, fmt.Errorf("%w: bad option magic %#x", errProtocol, m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		length := binary.BigEndian.Uint32(hdr[12:])
		if length > maxOptionLen {
			return nil, fmt.Errorf("%w: option %d with %d bytes of data", errProtocol, opt, length)
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(n.nc, data); err != nil {
			return nil, fmt.Errorf("nbd: reading option %d data: %w", opt, err)
		}
		if n.srv.shuttingDown() && opt != optAbort {
			if opt == optExportName {
				return nil, ErrServerClosed
			}
			if err := n.reply(opt, repErrShutdown, []byte("server is shutting down")); err != nil {
				return nil, err
			}
			continue
		}
		if n.srv.opts.RequireTLS && !n.tls && opt != optStartTLS && opt != optAbort {
			if opt == optExportName {
				return nil, fmt.Errorf("%w: NBD_OPT_EXPORT_NAME before TLS on a TLS-only server", errProtocol)
			}
			if err := n.reply(opt, repErrTLSReqd, []byte("this server requires TLS: send NBD_OPT_STARTTLS first")); err != nil {
				return nil, err
			}
			continue
		}
		sess, err := n.option(ctx, opt, data)
		if err != nil || sess != nil {
			return sess, err
		}
	}
}

// option handles one option. It returns a session when the client enters
// transmission, or an error that ends the connection.
func (n *negotiator) option(ctx context.Context, opt uint32, data []byte) (*session, error) {
	switch opt {
	case optExportName:
		return n.exportName(string(data))
	case optAbort:
		_ = n.reply(opt, repAck, nil) // the client may already be gone
		return nil, errClientAbort
	case optList:
		if len(data) != 0 {
			return nil, n.reply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		exports := n.srv.exportsNow()
		for i := range exports {
			e := &exports[i]
			if e.TLSOnly && !n.tls {
				continue
			}
			p := make([]byte, 4, 4+len(e.Name)+len(e.Description))
			binary.BigEndian.PutUint32(p, uint32(len(e.Name)))
			p = append(p, e.Name...)
			p = append(p, e.Description...)
			if err := n.reply(opt, repServer, p); err != nil {
				return nil, err
			}
		}
		return nil, n.reply(opt, repAck, nil)
	case optStartTLS:
		return nil, n.startTLS(ctx, data)
	case optInfo, optGo:
		return n.infoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return nil, n.reply(opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		n.structured = true
		return nil, n.reply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return nil, n.metaContext(opt, data)
	default:
		// Includes NBD_OPT_EXTENDED_HEADERS: 32-bit headers cover every
		// request length this server accepts.
		return nil, n.reply(opt, repErrUnsup, []byte(fmt.Sprintf("option %d is not supported", opt)))
	}
}

func (n *negotiator) reply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	copy(b[20:], data)
	if _, err := n.nc.Write(b); err != nil {
		return fmt.Errorf("nbd: replying to option %d: %w", opt, err)
	}
	return nil
}

func (n *negotiator) exportName(name string) (*session, error) {
	e := n.srv.lookup(name)
	if e == nil {
		return nil, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME: unknown export %q", name)
	}
	if e.TLSOnly && !n.tls {
		return nil, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME: export %q requires TLS", name)
	}
	if err := e.available(); err != nil {
		// The old-style negotiation has no error reply: close.
		return nil, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME: %w", err)
	}
	sess := n.session(e)
	b := make([]byte, 10, 10+124)
	binary.BigEndian.PutUint64(b[0:], uint64(e.Device.Size()))
	binary.BigEndian.PutUint16(b[8:], n.srv.transmissionFlags(e, sess))
	if !n.noZeroes {
		b = b[:10+124]
	}
	if _, err := n.nc.Write(b); err != nil {
		return nil, fmt.Errorf("nbd: sending export info: %w", err)
	}
	return sess, nil
}

func (n *negotiator) session(e *Export) *session {
	return &session{
		export:     e,
		structured: n.structured,
		baseAlloc:  n.structured && n.metaSet && n.metaExport == e.Name && n.baseAlloc,
		tls:        n.tls,
	}
}

func (n *negotiator) startTLS(ctx context.Context, data []byte) error {
	const opt = optStartTLS
	switch {
	case len(data) != 0:
		return n.reply(opt, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
	case n.tls:
		return n.reply(opt, repErrInvalid, []byte("TLS is already active"))
	case n.srv.tlsConfig == nil:
		return n.reply(opt, repErrPolicy, []byte("TLS is not configured on this server"))
	}
	if err := n.reply(opt, repAck, nil); err != nil {
		return err
	}
	tc := tls.Server(n.nc, n.srv.tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	n.nc = tc
	n.tls = true
	// State negotiated in clear text could have been forged by a man in
	// the middle: the client negotiates it again over TLS.
	n.structured, n.metaSet, n.baseAlloc, n.metaExport = false, false, false, ""
	return nil
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO.
func (n *negotiator) infoGo(opt uint32, data []byte) (*session, error) {
	name, rest, ok := cutString(data)
	if !ok || len(rest) < 2 {
		return nil, n.reply(opt, repErrInvalid, []byte("malformed NBD_OPT_INFO/GO data"))
	}
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return nil, n.reply(opt, repErrInvalid, []byte("information request count does not match the option length"))
	}
	wantName, wantDesc := false, false
	for i := 0; i < nreq; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	e := n.srv.lookup(name)
	if e == nil {
		return nil, n.reply(opt, repErrUnknown, []byte(fmt.Sprintf("no export named %q", name)))
	}
	if e.TLSOnly && !n.tls {
		return nil, n.reply(opt, repErrTLSReqd, []byte(fmt.Sprintf("export %q requires TLS", name)))
	}
	// NBD_OPT_INFO still answers: `nbdinfo --list` describes every export
	// of the server, served here or not.
	if err := e.available(); err != nil && opt == optGo {
		return nil, n.reply(opt, repErrUnknown, []byte(err.Error()))
	}
	sess := n.session(e)

	info := make([]byte, 12)
	binary.BigEndian.PutUint16(info[0:], infoExport)
	binary.BigEndian.PutUint64(info[2:], uint64(e.Device.Size()))
	binary.BigEndian.PutUint16(info[10:], n.srv.transmissionFlags(e, sess))
	if err := n.reply(opt, repInfo, info); err != nil {
		return nil, err
	}
	// Block sizes are always sent: a client that did not ask may ignore
	// them, and the minimum of 1 promises that any alignment is accepted.
	minB, prefB, maxB := n.srv.blockSizes(e)
	bs := make([]byte, 14)
	binary.BigEndian.PutUint16(bs[0:], infoBlockSize)
	binary.BigEndian.PutUint32(bs[2:], minB)
	binary.BigEndian.PutUint32(bs[6:], prefB)
	binary.BigEndian.PutUint32(bs[10:], maxB)
	if err := n.reply(opt, repInfo, bs); err != nil {
		return nil, err
	}
	if wantName {
		if err := n.reply(opt, repInfo, append([]byte{0, byte(infoName)}, e.Name...)); err != nil {
			return nil, err
		}
	}
	if wantDesc && e.Description != "" {
		if err := n.reply(opt, repInfo, append([]byte{0, byte(infoDescription)}, e.Description...)); err != nil {
			return nil, err
		}
	}
	if err := n.reply(opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt == optGo {
		return sess, nil
	}
	return nil, nil
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
// The only context is base:allocation, offered where the device knows
// its holes.
func (n *negotiator) metaContext(opt uint32, data []byte) error {
	if !n.structured {
		return n.reply(opt, repErrInvalid, []byte("negotiate NBD_OPT_STRUCTURED_REPLY first"))
	}
	name, rest, ok := cutString(data)
	if !ok || len(rest) < 4 {
		return n.reply(opt, repErrInvalid, []byte("malformed meta context request"))
	}
	nq := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	queries := make([]string, 0, min(nq, 16))
	for i := uint32(0); i < nq; i++ {
		var q string
		q, rest, ok = cutString(rest)
		if !ok {
			return n.reply(opt, repErrInvalid, []byte("malformed meta context query"))
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return n.reply(opt, repErrInvalid, []byte("trailing bytes after meta context queries"))
	}
	e := n.srv.lookup(name)
	if e == nil {
		return n.reply(opt, repErrUnknown, []byte(fmt.Sprintf("no export named %q", name)))
	}
	if e.TLSOnly && !n.tls {
		return n.reply(opt, repErrTLSReqd, []byte(fmt.Sprintf("export %q requires TLS", name)))
	}
	_, hasExtents := e.Device.(Extenter)
	offer := hasExtents && e.Device.Features().Extents

	match := false
	for _, q := range queries {
		if q == metaContextBaseAllocation || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == optListMetaContext && len(queries) == 0 {
		match = true
	}
	match = match && offer

	if opt == optSetMetaContext {
		n.metaSet, n.metaExport, n.baseAlloc = true, name, match
	}
	if match {
		id := uint32(0) // LIST: the id is reserved
		if opt == optSetMetaContext {
			id = baseAllocationID
		}
		p := make([]byte, 4, 4+len(metaContextBaseAllocation))
		binary.BigEndian.PutUint32(p, id)
		p = append(p, metaContextBaseAllocation...)
		if err := n.reply(opt, repMetaContext, p); err != nil {
			return err
		}
	}
	return n.reply(opt, repAck, nil)
}

// baseAllocationID is the context id handed out for base:allocation.
const baseAllocationID = 1

// cutString splits a 32-bit length-prefixed string off b.
func cutString(b []byte) (s string, rest []byte, ok bool) {
	if len(b) < 4 {
		return "", nil, false
	}
	l := binary.BigEndian.Uint32(b)
	if l > maxStringLen || uint64(l) > uint64(len(b)-4) {
		return "", nil, false
	}
	s = string(b[4 : 4+l])
	if strings.IndexByte(s, 0) >= 0 {
		return "", nil, false
	}
	return s, b[4+l:], true
}
