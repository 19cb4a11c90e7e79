package replicate

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tandem-ha/tandem/replicate/md"
)

// State frames carry one of these kinds in their Offset field.
const (
	// stateHello opens a session: what each side brings to the decision.
	stateHello uint64 = 1
	// stateDecision: the outcome as the sender computed it (one byte),
	// so that two nodes whose configurations disagree notice instead of
	// both acting.
	stateDecision uint64 = 2
	// stateUpdate: the sender's role, disk state or epoch changed.
	stateUpdate uint64 = 3
	// stateResyncBegin: the sender starts a resync as source (after a
	// verify with repair); the receiver becomes SyncTarget.
	stateResyncBegin uint64 = 4
	// stateResyncDone: every out-of-sync block was sent; the payload
	// holds the source's generations, which the target takes.
	stateResyncDone uint64 = 5
	// stateVerifyBegin / stateVerifyEnd frame an online verify.
	stateVerifyBegin uint64 = 6
	stateVerifyEnd   uint64 = 7
	// stateVerifyAsk: the secondary asks the primary to verify (payload:
	// 1 to repair); stateVerifyCancel: its caller gave up;
	// stateVerifyAnswer: the primary's report or error (verify_remote.go).
	stateVerifyAsk    uint64 = 8
	stateVerifyCancel uint64 = 9
	stateVerifyAnswer uint64 = 10
	// stateSyncPause: the sender paused (payload 1) or resumed (0)
	// resyncs to it with pause-sync on its side; the receiver, as source,
	// holds its resync meanwhile. Sent only to a peer that announced
	// wire.FeatureTargetPause.
	stateSyncPause uint64 = 11
	// stateAttach: a diskless primary attached a new disk; the receiver
	// syncs it while serving the primary's I/O (replicate/attach.go).
	// Its Seq orders it after every write sent before it.
	// stateAttachReady: the source went through the whole disk once;
	// the primary then stops its writes and answers stateAttachFinal,
	// after which the source sends what they changed meanwhile and ends
	// with stateResyncDone. Sent only to a peer announcing
	// wire.FeatureAttach.
	stateAttach      uint64 = 12
	stateAttachReady uint64 = 13
	stateAttachFinal uint64 = 14
	// stateResize: the primary grows the volume (payload: the new size,
	// 8 bytes, and 1 to assume the new range clean); its Seq orders it
	// after every write sent before. stateResized: the answer, same Seq
	// (payload: 0, or 1 and why not). Sent only to a peer announcing
	// wire.FeatureResize (replicate/resize.go).
	stateResize  uint64 = 15
	stateResized uint64 = 16
)

// Wishes an admin expressed on this side for the next session.
const (
	wantNone uint8 = iota
	// wantTargetBitmap: become target of a resync of the union of both
	// bitmaps (Resync without full).
	wantTargetBitmap
	// wantTargetFull: become target of a full sync (Resync full).
	wantTargetFull
	// wantDiscard: the victim of a split brain (Resolve discard-my-data).
	wantDiscard
)

const stateVersion = 1

// stateLen is the encoded size of peerState.
const stateLen = 1 + 1 + 1 + 1 + 4 + 8 + 8 + 4 + 8*6 + 8 + 8 + 1

// peerState is what a side announces in State frames.
type peerState struct {
	Role       Role
	Disk       DiskState
	Want       uint8
	Flags      md.Flags
	Epoch      uint64
	Size       int64
	Gran       int64
	Gen        Generations
	DirtyBits  uint64
	PromotedAt int64
	// Proto is the sender's replication protocol ('A', 'B', 'C'): the
	// receiver of writes sends the acknowledgements it asks for.
	Proto byte
}

var roleCodes = []Role{Secondary, Primary}
var diskCodes = []DiskState{UpToDate, Outdated, Inconsistent, Diskless, Failed}

func code[T comparable](list []T, v T) uint8 {
	for i, x := range list {
		if x == v {
			return uint8(i)
		}
	}
	return 255
}

func (s peerState) marshal() []byte {
	b := make([]byte, 0, stateLen)
	b = append(b, stateVersion, code(roleCodes, s.Role), code(diskCodes, s.Disk), s.Want)
	b = binary.BigEndian.AppendUint32(b, uint32(s.Flags))
	b = binary.BigEndian.AppendUint64(b, s.Epoch)
	b = binary.BigEndian.AppendUint64(b, uint64(s.Size))
	b = binary.BigEndian.AppendUint32(b, uint32(s.Gran))
	b = binary.BigEndian.AppendUint64(b, s.Gen.Current)
	b = binary.BigEndian.AppendUint64(b, s.Gen.Bitmap)
	for _, h := range s.Gen.History {
		b = binary.BigEndian.AppendUint64(b, h)
	}
	b = binary.BigEndian.AppendUint64(b, s.DirtyBits)
	b = binary.BigEndian.AppendUint64(b, uint64(s.PromotedAt))
	return append(b, s.Proto)
}

var errBadState = errors.New("replicate: malformed State message")

func parseState(p []byte) (peerState, error) {
	var s peerState
	if len(p) != stateLen {
		return s, fmt.Errorf("%w: %d bytes, want %d", errBadState, len(p), stateLen)
	}
	if p[0] != stateVersion {
		return s, fmt.Errorf("%w: version %d", errBadState, p[0])
	}
	if int(p[1]) >= len(roleCodes) || int(p[2]) >= len(diskCodes) || p[3] > wantDiscard {
		return s, fmt.Errorf("%w: role %d, disk %d, want %d", errBadState, p[1], p[2], p[3])
	}
	s.Role, s.Disk, s.Want = roleCodes[p[1]], diskCodes[p[2]], p[3]
	p = p[4:]
	s.Flags = md.Flags(binary.BigEndian.Uint32(p))
	s.Epoch = binary.BigEndian.Uint64(p[4:])
	s.Size = int64(binary.BigEndian.Uint64(p[12:]))
	s.Gran = int64(binary.BigEndian.Uint32(p[20:]))
	p = p[24:]
	s.Gen.Current = binary.BigEndian.Uint64(p)
	s.Gen.Bitmap = binary.BigEndian.Uint64(p[8:])
	for i := range s.Gen.History {
		s.Gen.History[i] = binary.BigEndian.Uint64(p[16+8*i:])
	}
	p = p[48:]
	s.DirtyBits = binary.BigEndian.Uint64(p)
	s.PromotedAt = int64(binary.BigEndian.Uint64(p[8:]))
	s.Proto = p[16]
	if s.Proto != 'A' && s.Proto != 'B' && s.Proto != 'C' {
		return s, fmt.Errorf("%w: protocol %q", errBadState, s.Proto)
	}
	return s, nil
}

// disklessPrimary: the sender is a primary whose disk failed and that
// serves through its peer.
func (s peerState) disklessPrimary() bool { return s.Role == Primary && s.Disk == Diskless }

// side is what the state brings to Decide.
func (s peerState) side() Side {
	return Side{
		Gen:            s.Gen,
		Consistent:     s.Flags.Has(md.Consistent) && !s.Flags.Has(md.FullSyncNeeded),
		Dirty:          s.DirtyBits > 0,
		CrashedPrimary: s.Flags.Has(md.CrashedPrimary),
	}
}

func genFromMD(g md.Generations) Generations {
	return Generations{Current: g.Current, Bitmap: g.Bitmap, History: g.History}
}

func genToMD(g Generations) md.Generations {
	return md.Generations{Current: g.Current, Bitmap: g.Bitmap, History: g.History}
}

// pushHistory puts g in front of the history, dropping the oldest.
func (gs *Generations) pushHistory(g uint64) {
	if g == 0 || gs.History[0] == g {
		return
	}
	copy(gs.History[1:], gs.History[:len(gs.History)-1])
	gs.History[0] = g
}

// decideSession is Decide plus what the admin and the split-brain policy
// add, seen from the local side. It stays symmetric: both nodes compute
// it from the same two states and must arrive at mirrored outcomes.
func decideSession(local, peer peerState, policy string) (Sync, string) {
	d, why := decideWishes(local, peer, policy)
	// Whatever wishes and policies say, an incomplete image never sends.
	if d.IsSource() && !local.side().Consistent || d.IsTarget() && !peer.side().Consistent {
		return NeedAdmin, fmt.Sprintf("the requested resync (%s) would copy from an Inconsistent image; resync the other way or promote --force the complete side", d)
	}
	return d, why
}

func decideWishes(local, peer peerState, policy string) (Sync, string) {
	d := Decide(local.side(), peer.side())
	switch {
	case local.Want == wantTargetFull && peer.Want == wantNone && peer.side().Consistent:
		return TargetFull, ""
	case peer.Want == wantTargetFull && local.Want == wantNone && local.side().Consistent:
		return SourceFull, ""
	case local.Want == wantTargetBitmap && peer.Want == wantNone && peer.side().Consistent:
		// The union of both bitmaps covers the differences only when
		// the bitmaps reach back to a common generation.
		return pick(TargetBitmap, d == SourceFull || d == TargetFull || d == Unrelated), ""
	case peer.Want == wantTargetBitmap && local.Want == wantNone && local.side().Consistent:
		return pick(SourceBitmap, d == SourceFull || d == TargetFull || d == Unrelated), ""
	}
	switch d {
	case SplitBrain, Unrelated:
		full := d == Unrelated
		switch {
		case local.Want == wantDiscard && peer.Want != wantDiscard:
			return pick(TargetBitmap, full), ""
		case peer.Want == wantDiscard && local.Want != wantDiscard:
			return pick(SourceBitmap, full), ""
		case local.Want == wantDiscard:
			return d, "both sides asked to discard their data"
		}
		if d == Unrelated {
			return d, "the replicas share no data history (unrelated data); resolve with discard-my-data on the side to overwrite"
		}
		switch policy {
		case "discard-zero-changes":
			switch {
			case local.DirtyBits == 0 && peer.DirtyBits != 0:
				return TargetBitmap, ""
			case peer.DirtyBits == 0 && local.DirtyBits != 0:
				return SourceBitmap, ""
			}
			return d, "split brain: both sides changed data (discard-zero-changes does not apply); resolve by hand"
		case "discard-younger-primary", "discard-older-primary":
			// The younger primary is the one promoted last.
			younger := cmp.Compare(local.PromotedAt, peer.PromotedAt)
			if policy == "discard-older-primary" {
				younger = -younger
			}
			if d, ok := discardIf(younger); ok {
				return d, ""
			}
			return d, "split brain: both primaries were promoted at the same instant (" + policy + " does not apply); resolve by hand"
		case "discard-least-changes":
			if d, ok := discardIf(-cmp.Compare(local.DirtyBits, peer.DirtyBits)); ok {
				return d, ""
			}
			return d, "split brain: both sides changed as many blocks (discard-least-changes does not apply); resolve by hand"
		case policyDiscardLocal:
			return TargetBitmap, ""
		case policyDiscardPeer:
			return SourceBitmap, ""
		}
		return d, "split brain: both sides wrote since their last common generation; resolve with discard-my-data on the victim"
	case NeedAdmin:
		return d, "neither side can be sync source (both Inconsistent, or both crashed as primary); promote --force one side or resync the other"
	}
	return d, ""
}

// The discard-node-NAME policy as decideSession sees it: whether NAME is
// this side (sessionPolicy), so that both sides' decisions mirror.
const (
	policyDiscardLocal = "discard-local"
	policyDiscardPeer  = "discard-peer"
)

// sessionPolicy is the configured split-brain policy for decideSession.
func (v *Volume) sessionPolicy() string {
	sb := v.tunables().SplitBrain
	switch sb {
	case "discard-node-" + v.cfg.Node:
		return policyDiscardLocal
	case "discard-node-" + v.cfg.Peer:
		return policyDiscardPeer
	}
	return sb
}

// discardIf: c > 0 discards the local side (it becomes the target), c <
// 0 the peer's, 0 neither (ok false).
func discardIf(c int) (Sync, bool) {
	switch {
	case c > 0:
		return TargetBitmap, true
	case c < 0:
		return SourceBitmap, true
	}
	return SplitBrain, false
}

func pick(s Sync, full bool) Sync {
	if !full {
		return s
	}
	if s == TargetBitmap {
		return TargetFull
	}
	return SourceFull
}
