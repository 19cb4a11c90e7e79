package replicate

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/tandem-ha/tandem/replicate/wire"
)

// LinkSettings are the replication link's settings an admin may change
// while a volume runs (tandem adjust). Both sides fix them in the
// handshake and the session setup (the codec is negotiated, the
// secondary acknowledges as the primary's protocol asks), so a change
// takes effect with the next session: SetLink ends the current one and
// the volume reconnects at once.
type LinkSettings struct {
	Protocol    string      // "A", "B" or "C"
	Compression string      // "off", "s2" or "zstd"
	TLS         *tls.Config // nil: plain TCP
	// Listen and PeerAddress are where this side accepts the link and
	// where it dials the peer (Config's); empty in SetLink: unchanged.
	// A new Listen is bound before anything else changes.
	Listen      string
	PeerAddress string
}

// ErrLinkInUse: the link cannot be restarted now (a diskless primary
// serves every request through it: each would fail until it reconnects,
// and for good if the peer does not accept the new settings yet).
var ErrLinkInUse = errors.New("replicate: the link cannot be restarted")

// check lists what is wrong with s, and fills in the defaults.
func (s *LinkSettings) check() []string {
	var errs []string
	switch s.Protocol {
	case "":
		s.Protocol = "C"
	case "A", "B", "C":
	default:
		errs = append(errs, fmt.Sprintf("protocol %q is not A, B or C", s.Protocol))
	}
	if c, err := wire.ParseCodec(s.Compression); err != nil {
		errs = append(errs, err.Error())
	} else {
		s.Compression = c.String()
	}
	return errs
}

// SetLink changes the link's settings. When they differ from the current
// ones and a session runs, it is ended (an orderly Disconnect, as
// tandem disconnect sends, without staying StandAlone) and both sides
// reconnect with what they now have: the writes of the short gap are
// marked out of sync and resynced, as after any reconnect. changed says
// whether anything differed. Invalid settings change nothing, and so
// does a diskless primary (ErrLinkInUse): its only copy of the data is
// behind the link.
func (v *Volume) SetLink(ctx context.Context, s LinkSettings) (changed bool, err error) {
	if errs := s.check(); len(errs) > 0 {
		return false, fmt.Errorf("replicate: %s: link settings: %s", v.cfg.Resource, strings.Join(errs, "; "))
	}
	if v.closed.Load() {
		return false, ErrClosed
	}
	v.lsMu.Lock() // one SetLink at a time: each may bind a listener
	defer v.lsMu.Unlock()
	old := v.linkset.Load()
	s.Listen, s.PeerAddress = cmp.Or(s.Listen, old.Listen), cmp.Or(s.PeerAddress, old.PeerAddress)
	if *old == s {
		return false, nil
	}
	var ln net.Listener
	if s.Listen != old.Listen && !v.diskless.Load() {
		var lc net.ListenConfig
		var err error
		if ln, err = lc.Listen(ctx, "tcp", s.Listen); err != nil {
			return false, fmt.Errorf("replicate: %s: link settings: listening on %s: %w; nothing was changed", v.cfg.Resource, s.Listen, err)
		}
	}
	v.mu.Lock()
	if v.diskless.Load() || v.closed.Load() {
		v.mu.Unlock()
		if ln != nil {
			ln.Close()
		}
		if v.closed.Load() {
			return false, ErrClosed
		}
		return false, fmt.Errorf("%w: %s: this primary is diskless and serves through the peer; fail over first", ErrLinkInUse, v.cfg.Resource)
	}
	// Under mu, with the session read: a connection whose handshake used
	// the old settings is either this session, ended below, or not yet
	// adopted, and then adopt refuses it.
	v.linkset.Store(&s)
	l := v.sess
	var oldLn *listener
	if ln != nil {
		oldLn = v.ln.Swap(&listener{ln})
	}
	v.mu.Unlock()
	if oldLn != nil {
		oldLn.Close() // its accept loop turns to the new one
	}
	what := linkChange(*old, s)
	v.log.Info("replicate: link settings changed; reconnecting", "changes", what)
	if l == nil {
		return true, nil
	}
	l.end("link settings changed ("+what+"); reconnecting", true)
	select {
	case <-l.done:
	case <-ctx.Done():
		return true, fmt.Errorf("replicate: %s: waiting for the old session to end: %w", v.cfg.Resource, ctx.Err())
	}
	v.wake()
	return true, nil
}

// linkChange says what differs between a and b, for logs and reasons.
func linkChange(a, b LinkSettings) string {
	var out []string
	if a.Protocol != b.Protocol {
		out = append(out, "protocol "+a.Protocol+" to "+b.Protocol)
	}
	if a.Compression != b.Compression {
		out = append(out, "compression "+a.Compression+" to "+b.Compression)
	}
	switch {
	case a.TLS == nil && b.TLS != nil:
		out = append(out, "TLS on")
	case a.TLS != nil && b.TLS == nil:
		out = append(out, "TLS off")
	case a.TLS != b.TLS:
		out = append(out, "new TLS certificates")
	}
	if a.Listen != b.Listen {
		out = append(out, "listen "+a.Listen+" to "+b.Listen)
	}
	if a.PeerAddress != b.PeerAddress {
		out = append(out, "peer address "+a.PeerAddress+" to "+b.PeerAddress)
	}
	return strings.Join(out, ", ")
}

// need is the answer a write waits for in this session: the protocol
// fixed at its setup, which the peer acknowledges by (FUA always waits
// for the disk).
func (l *link) need(fua bool) wire.MsgType {
	switch {
	case fua || l.proto == 'C':
		return wire.Written
	case l.proto == 'B':
		return wire.Received
	}
	return 0
}
