package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tandem-ha/tandem/replicate/wire"
)

// A verify asked for on the secondary runs on the primary: only the side
// that orders the writes can hash both replicas at the same point of the
// stream while applications go on writing, and a repair resyncs from the
// primary's data whichever node asked. The secondary sends stateVerifyAsk
// (payload: 1 to repair), may send stateVerifyCancel when its caller gives
// up, and gets stateVerifyAnswer back.

// Answer codes: the first byte of a stateVerifyAnswer payload. The rest is
// the report as JSON (answerOK) or the primary's error text.
const (
	answerOK uint8 = iota
	answerBusy
	answerNotConnected
	answerPeerLost
	answerCancelled
	answerFailed
)

// maxAnswerRanges bounds the ranges one answer lists, well inside a
// frame's payload (a JSON range is under 64 bytes); the rest are counted
// in OmittedRanges.
const maxAnswerRanges = 256 << 10

var answerSentinels = []struct {
	code uint8
	err  error
}{
	{answerBusy, ErrBusy}, {answerNotConnected, ErrNotConnected}, {answerPeerLost, ErrPeerLost}, {answerCancelled, context.Canceled},
}

func encodeAnswer(rep VerifyReport, err error) []byte {
	if err == nil {
		if n := len(rep.Differing); n > maxAnswerRanges {
			rep.OmittedRanges += int64(n - maxAnswerRanges)
			rep.Differing = rep.Differing[:maxAnswerRanges]
		}
		b, jerr := json.Marshal(rep)
		if jerr == nil {
			return append([]byte{answerOK}, b...)
		}
		err = jerr
	}
	code := answerFailed
	for _, s := range answerSentinels {
		if errors.Is(err, s.err) {
			code = s.code
			break
		}
	}
	return append([]byte{code}, err.Error()...)
}

// errRemote is the primary's error as the secondary reports it: its text,
// and the sentinel its code names so that callers can still branch.
type errRemote struct {
	msg  string
	kind error
}

func (e *errRemote) Error() string { return e.msg }
func (e *errRemote) Unwrap() error { return e.kind }

// decodeAnswer parses an answer; the error is for a malformed one.
func decodeAnswer(p []byte) (verifyAnswer, error) {
	if len(p) == 0 {
		return verifyAnswer{}, fmt.Errorf("%w: an empty verify answer", errProtocol)
	}
	if p[0] == answerOK {
		var a verifyAnswer
		if err := json.Unmarshal(p[1:], &a.rep); err != nil {
			return verifyAnswer{}, fmt.Errorf("%w: verify answer: %v", errProtocol, err)
		}
		return a, nil
	}
	if p[0] > answerFailed {
		return verifyAnswer{}, fmt.Errorf("%w: verify answer code %d", errProtocol, p[0])
	}
	e := &errRemote{msg: string(p[1:])}
	for _, s := range answerSentinels {
		if s.code == p[0] {
			e.kind = s.err
		}
	}
	return verifyAnswer{err: e}, nil
}

type verifyAnswer struct {
	rep VerifyReport
	err error
}

// verifyOnPeer asks the primary to verify, and waits for its report.
func (l *link) verifyOnPeer(ctx context.Context, repair bool) (VerifyReport, error) {
	v := l.v
	ch := make(chan verifyAnswer, 1)
	l.pendMu.Lock()
	switch {
	case l.dead:
		l.pendMu.Unlock()
		return VerifyReport{}, fmt.Errorf("replicate: %s: verify: %w", v.cfg.Resource, ErrNotConnected)
	case l.asked != nil:
		l.pendMu.Unlock()
		return VerifyReport{}, fmt.Errorf("replicate: %s: verify: this node already waits for one on the primary: %w", v.cfg.Resource, ErrBusy)
	}
	l.asked = ch
	l.pendMu.Unlock()
	defer func() {
		l.pendMu.Lock()
		if l.asked == ch {
			l.asked = nil
		}
		l.pendMu.Unlock()
	}()
	var flag byte
	if repair {
		flag = 1
	}
	if err := l.c.Write(wire.Frame{Type: wire.State, Offset: stateVerifyAsk, Epoch: v.epoch.Load(), Payload: []byte{flag}}); err != nil {
		return VerifyReport{}, fmt.Errorf("replicate: %s: verify: asking the primary: %v: %w", v.cfg.Resource, err, ErrPeerLost)
	}
	v.log.Info("replicate: verify asked of the primary", "peer", v.cfg.Peer, "repair", repair)
	select {
	case a := <-ch:
		if a.err != nil {
			return VerifyReport{}, fmt.Errorf("replicate: %s: verify on the primary %s: %w", v.cfg.Resource, v.cfg.Peer, a.err)
		}
		v.log.Info("replicate: verify finished on the primary", "compared", a.rep.ComparedBytes, "differing", len(a.rep.Differing), "repaired", a.rep.Repaired)
		return a.rep, nil
	case <-ctx.Done():
		_ = l.c.Write(wire.Frame{Type: wire.State, Offset: stateVerifyCancel, Epoch: v.epoch.Load()})
		return VerifyReport{}, ctx.Err()
	case <-l.stop:
		return VerifyReport{}, fmt.Errorf("replicate: %s: verify on the primary %s: %w", v.cfg.Resource, v.cfg.Peer, ErrPeerLost)
	}
}

// verifyForPeer runs the verify the peer asked for and answers it. It
// is called by the receive loop, so the teardown waits for it.
func (l *link) verifyForPeer(repair bool) {
	v := l.v
	if v.resizing.Load() {
		l.answer(VerifyReport{}, fmt.Errorf("a resize runs: %w", ErrBusy))
		return
	}
	ctx, cancel := context.WithCancel(v.ctx)
	l.pendMu.Lock()
	if l.askCancel != nil {
		l.pendMu.Unlock()
		cancel()
		l.answer(VerifyReport{}, fmt.Errorf("the peer's previous verify still runs: %w", ErrBusy))
		return
	}
	l.askCancel = cancel
	l.pendMu.Unlock()
	l.background.Add(1)
	go func() {
		defer l.background.Done()
		defer cancel()
		go func() {
			select {
			case <-l.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		v.log.Info("replicate: verify asked by the peer", "peer", v.cfg.Peer, "repair", repair)
		rep, err := v.Verify(ctx, repair)
		l.pendMu.Lock()
		l.askCancel = nil
		l.pendMu.Unlock()
		if err != nil {
			v.log.Warn("replicate: the verify the peer asked for failed", "err", err)
		}
		l.answer(rep, err)
	}()
}

func (l *link) answer(rep VerifyReport, err error) {
	_ = l.c.Write(wire.Frame{Type: wire.State, Offset: stateVerifyAnswer, Epoch: l.v.epoch.Load(), Payload: encodeAnswer(rep, err)})
}

// onVerifyAnswer hands the primary's answer to the waiting caller, if it
// still waits.
func (l *link) onVerifyAnswer(p []byte) error {
	a, err := decodeAnswer(p)
	if err != nil {
		return err
	}
	l.pendMu.Lock()
	ch := l.asked
	l.asked = nil
	l.pendMu.Unlock()
	if ch != nil {
		ch <- a
	}
	return nil
}

// cancelForPeer stops the verify the peer asked for.
func (l *link) cancelForPeer() {
	l.pendMu.Lock()
	if l.askCancel != nil {
		l.askCancel()
	}
	l.pendMu.Unlock()
}
