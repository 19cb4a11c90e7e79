package replicate

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestVerifyAnswerCodec(t *testing.T) {
	rep := VerifyReport{ComparedBytes: 1 << 30, Differing: []Range{{Offset: 4096, Length: 8192}}, Repaired: true}
	a, err := decodeAnswer(encodeAnswer(rep, nil))
	if err != nil || a.err != nil || a.rep.ComparedBytes != rep.ComparedBytes || len(a.rep.Differing) != 1 || a.rep.Differing[0] != rep.Differing[0] || !a.rep.Repaired {
		t.Fatalf("report round trip: %+v, %v", a, err)
	}
	for _, sentinel := range []error{ErrBusy, ErrNotConnected, ErrPeerLost, context.Canceled} {
		a, err := decodeAnswer(encodeAnswer(VerifyReport{}, fmt.Errorf("replicate: r0: verify: %w", sentinel)))
		if err != nil || !errors.Is(a.err, sentinel) || a.err.Error() != "replicate: r0: verify: "+sentinel.Error() {
			t.Fatalf("%v: decoded %v, %v", sentinel, a.err, err)
		}
	}
	a, err = decodeAnswer(encodeAnswer(VerifyReport{}, errors.New("disk on fire")))
	if err != nil || a.err == nil || a.err.Error() != "disk on fire" || errors.Is(a.err, ErrBusy) {
		t.Fatalf("plain error: %v, %v", a.err, err)
	}
	many := VerifyReport{Differing: make([]Range, maxAnswerRanges+5)}
	a, err = decodeAnswer(encodeAnswer(many, nil))
	if err != nil || len(a.rep.Differing) != maxAnswerRanges || a.rep.OmittedRanges != 5 {
		t.Fatalf("long report: %d ranges, %d omitted, %v", len(a.rep.Differing), a.rep.OmittedRanges, err)
	}
	for _, bad := range [][]byte{nil, {answerOK, '{'}, {answerFailed + 1, 'x'}} {
		if _, err := decodeAnswer(bad); !errors.Is(err, errProtocol) {
			t.Fatalf("answer %q: %v, want a protocol error", bad, err)
		}
	}
}
