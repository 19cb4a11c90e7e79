package replicate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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
	v.mu.Lock()
	old := v.linkset.Load()
	if *old == s {
		v.mu.Unlock()
		return false, nil
	}
	if v.diskless.Load() {
		v.mu.Unlock()
		return false, fmt.Errorf("%w: %s: this primary is diskless and serves through the peer; fail over first", ErrLinkInUse, v.cfg.Resource)
	}
	// Under mu, with the session read: a connection whose handshake used
	// the old settings is either this session, ended below, or not yet
	// adopted, and then adopt refuses it.
	v.linkset.Store(&s)
	l := v.sess
	v.mu.Unlock()
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
