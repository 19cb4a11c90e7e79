package replicate

import (
	"math/rand/v2"
	"testing"
)

func side(cur, bm uint64, hist ...uint64) Side {
	s := Side{Gen: Generations{Current: cur, Bitmap: bm}, Consistent: true}
	copy(s.Gen.History[:], hist)
	return s
}

func (s Side) dirty() Side          { s.Dirty = true; return s }
func (s Side) inconsistent() Side   { s.Consistent = false; return s }
func (s Side) crashedPrimary() Side { s.CrashedPrimary = true; return s }

func TestDecide(t *testing.T) {
	const c1, c2, c3, c4 = 0x11, 0x22, 0x33, 0x44
	cases := []struct {
		name        string
		local, peer Side
		want        Sync
	}{
		{"same generation, clean", side(c1, 0), side(c1, 0), InSync},
		{"secondary came back after a degraded period", side(c2, c1, c1).dirty(), side(c1, 0), SourceBitmap},
		{"mirror of the above", side(c1, 0), side(c2, c1, c1).dirty(), TargetBitmap},
		{"peer crashed while connected: its hot extents", side(c1, 0), side(c1, 0).dirty(), TargetBitmap},
		{"old primary crashed, new primary took over", side(c2, c1, c1).dirty(), side(c1, 0).dirty().crashedPrimary(), SourceBitmap},
		{"both crashed, same generation, one was primary", side(c1, 0).dirty().crashedPrimary(), side(c1, 0).dirty(), TargetBitmap},
		{"both crashed as primary with the same generation", side(c1, 0).dirty().crashedPrimary(), side(c1, 0).dirty().crashedPrimary(), NeedAdmin},
		{"both promoted during a cut link", side(c2, c1, c1).dirty(), side(c3, c1, c1).dirty(), SplitBrain},
		{"bitmap gone (resync finished elsewhere), peer is in my history", side(c3, 0, c2, c1), side(c1, 0), SourceFull},
		{"I am in the peer's history", side(c1, 0), side(c3, 0, c2, c1), TargetFull},
		{"no common past", side(c1, 0), side(c2, 0), Unrelated},
		{"split after my bitmap's base was left behind by the peer", side(c3, c1, c1).dirty(), side(c4, 0, c2, c1), SplitBrain},
		{"interrupted resync resumes", side(c2, c1, c1).dirty(), side(c1, 0).inconsistent(), SourceBitmap},
		{"inconsistent would be source: consistent side sends all", side(c2, c1, c1).dirty().inconsistent(), side(c1, 0), TargetFull},
		{"new device against a consistent one", side(c4, 0).inconsistent(), side(c1, 0), TargetFull},
		{"same generation but peer inconsistent", side(c1, 0), side(c1, 0).inconsistent(), SourceFull},
		{"both inconsistent", side(c1, 0).inconsistent(), side(c2, 0).inconsistent(), NeedAdmin},
	}
	for _, tc := range cases {
		if got := Decide(tc.local, tc.peer); got != tc.want {
			t.Errorf("%s: Decide = %v, want %v", tc.name, got, tc.want)
		}
		if got := Decide(tc.peer, tc.local); got != tc.want.mirror() {
			t.Errorf("%s (from the peer): Decide = %v, want %v", tc.name, got, tc.want.mirror())
		}
	}
}

// TestDecideProperties checks, over random pairs drawn from a small pool
// of generations (so that relations actually occur), that both nodes
// always agree and that an Inconsistent image is never a source.
func TestDecideProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	pick := func() uint64 { return []uint64{0, 1, 2, 3, 4}[r.IntN(5)] }
	randSide := func() Side {
		s := Side{Gen: Generations{Current: 1 + uint64(r.IntN(4)), Bitmap: pick()}}
		for i := range s.Gen.History {
			s.Gen.History[i] = pick()
		}
		s.Consistent = r.IntN(4) != 0
		s.Dirty = r.IntN(2) == 0
		s.CrashedPrimary = r.IntN(3) == 0
		return s
	}
	for i := 0; i < 200000; i++ {
		a, b := randSide(), randSide()
		d := Decide(a, b)
		if m := Decide(b, a); m != d.mirror() {
			t.Fatalf("asymmetric: Decide(a,b)=%v, Decide(b,a)=%v\na=%+v\nb=%+v", d, m, a, b)
		}
		if d.IsSource() && !a.Consistent || d.IsTarget() && !b.Consistent {
			t.Fatalf("inconsistent source: %v\na=%+v\nb=%+v", d, a, b)
		}
		if d == InSync && (a.Dirty || b.Dirty || a.Gen.Current != b.Gen.Current) {
			t.Fatalf("InSync with differences: a=%+v b=%+v", a, b)
		}
	}
}
