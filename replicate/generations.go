package replicate

import "slices"

// Generations identify a replica's data history. A generation is a random
// 64-bit identifier; 0 means none.
type Generations struct {
	// Current names the data as it is now.
	Current uint64 `json:"current"`
	// Bitmap is the generation the peer had when this side's out-of-sync
	// bitmap started recording; 0 when the bitmap is not in use.
	Bitmap uint64 `json:"bitmap"`
	// History holds earlier generations, newest first.
	History [4]uint64 `json:"history"`
}

// inHistory reports whether g is one of the earlier generations.
func (gs Generations) inHistory(g uint64) bool {
	return g != 0 && slices.Contains(gs.History[:], g)
}

// Side is what one replica brings to the sync decision.
type Side struct {
	Gen Generations
	// Consistent: the data is a complete image of some generation (false
	// on a new device or a sync target in the middle of a resync).
	Consistent bool
	// Dirty: the out-of-sync bitmap has set bits (writes without the peer,
	// or extents hot at a crash).
	Dirty bool
	// CrashedPrimary: the node was primary when it went down uncleanly.
	CrashedPrimary bool
}

// Sync is the outcome of comparing both sides on connect, seen from the
// local side.
type Sync int

const (
	// InSync: nothing to do.
	InSync Sync = iota
	// SourceBitmap: the local side sends what the union of both bitmaps
	// marks.
	SourceBitmap
	// TargetBitmap: the local side receives what the union marks.
	TargetBitmap
	// SourceFull: the local side sends everything (no bitmap covers the
	// peer's generation any more).
	SourceFull
	// TargetFull: the local side receives everything.
	TargetFull
	// SplitBrain: both sides wrote since their last common generation.
	// Never resolved silently: a policy or an admin picks the victim, and
	// a bitmap resync (the union) then suffices.
	SplitBrain
	// Unrelated: no common history at all; only an admin's full sync can
	// join them.
	Unrelated
	// NeedAdmin: neither side can be a source (both Inconsistent, or both
	// crashed as primary with the same generation).
	NeedAdmin
	// ServeDiskless: one side is a primary whose disk failed, the other
	// the UpToDate secondary that held its data then; the session carries
	// the primary's I/O again, with no resync (link.setupDiskless).
	ServeDiskless
)

var syncNames = [...]string{"InSync", "SourceBitmap", "TargetBitmap", "SourceFull", "TargetFull", "SplitBrain", "Unrelated", "NeedAdmin", "ServeDiskless"}

func (s Sync) String() string {
	if int(s) < len(syncNames) {
		return syncNames[s]
	}
	return "Sync(?)"
}

// mirror is the same outcome seen from the other side.
func (s Sync) mirror() Sync {
	switch s {
	case SourceBitmap:
		return TargetBitmap
	case TargetBitmap:
		return SourceBitmap
	case SourceFull:
		return TargetFull
	case TargetFull:
		return SourceFull
	}
	return s
}

// IsSource reports whether the local side sends data.
func (s Sync) IsSource() bool { return s == SourceBitmap || s == SourceFull }

// IsTarget reports whether the local side receives data.
func (s Sync) IsTarget() bool { return s == TargetBitmap || s == TargetFull }

// Decide compares both sides' generations on connect. It is a pure
// function and symmetric: Decide(b, a) is always Decide(a, b).mirror(), so
// the two nodes, each deciding alone, agree on who sends.
func Decide(local, peer Side) Sync {
	d := decideGenerations(local, peer)
	// An Inconsistent image can never be a source: if the generations
	// point at it, the consistent side sends everything instead.
	switch {
	case !local.Consistent && !peer.Consistent:
		return NeedAdmin
	case d.IsSource() && !local.Consistent:
		return TargetFull
	case d.IsTarget() && !peer.Consistent:
		return SourceFull
	case (d == InSync || d == Unrelated) && local.Consistent != peer.Consistent:
		// A new or half-synced device against a complete one: the
		// complete one sends everything.
		if local.Consistent {
			return SourceFull
		}
		return TargetFull
	}
	return d
}

func decideGenerations(l, p Side) Sync {
	lg, pg := l.Gen, p.Gen
	switch {
	case lg.Current == pg.Current:
		switch {
		case !l.Dirty && !p.Dirty:
			return InSync
		case l.Dirty && !p.Dirty:
			return SourceBitmap
		case !l.Dirty && p.Dirty:
			return TargetBitmap
		}
		// Both recorded changes under the same generation: only crash
		// recovery does that (hot extents on both). The crashed primary's
		// unacknowledged writes are what must be rolled back, so the other
		// side is the source.
		switch {
		case l.CrashedPrimary && !p.CrashedPrimary:
			return TargetBitmap
		case p.CrashedPrimary && !l.CrashedPrimary:
			return SourceBitmap
		}
		return NeedAdmin
	case lg.Bitmap != 0 && lg.Bitmap == pg.Bitmap:
		return SplitBrain
	}
	// Each rule is asked in both directions, so that two nodes deciding
	// alone can never both claim to be the source.
	lSrc := lg.Bitmap != 0 && lg.Bitmap == pg.Current
	pSrc := pg.Bitmap != 0 && pg.Bitmap == lg.Current
	switch {
	case lSrc && pSrc:
		return Unrelated // each bitmap starts at the other's present: corrupt histories
	case lSrc:
		return SourceBitmap
	case pSrc:
		return TargetBitmap
	case lg.inHistory(pg.Current) && pg.inHistory(lg.Current):
		return Unrelated // each claims the other is its past: corrupt histories
	case lg.inHistory(pg.Current):
		return SourceFull
	case pg.inHistory(lg.Current):
		return TargetFull
	case lg.Bitmap != 0 && pg.inHistory(lg.Bitmap), pg.Bitmap != 0 && lg.inHistory(pg.Bitmap):
		// One side's bitmap started at a generation the other has since
		// left behind: both moved on from a common past.
		return SplitBrain
	}
	return Unrelated
}
