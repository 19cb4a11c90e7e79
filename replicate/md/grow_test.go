package md

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/tandem-ha/tandem/replicate/disk"
)

const (
	growOld = 256 << 20 // 3 bitmap pages at 4 KiB per bit
	growNew = 1 << 30   // 9
)

// marked is the bits set at a few places, one in the old last page, for
// the grow tests to find again.
var marked = []Range{{Off: 0, Len: 4096}, {Off: 100 << 20, Len: 1 << 20}, {Off: growOld - 8192, Len: 8192}}

func markSome(t *testing.T, m *Meta) {
	t.Helper()
	for _, r := range marked {
		m.Bitmap().Set(r.Off, r.Len)
	}
	if err := m.Bitmap().FlushAll(); err != nil {
		t.Fatal(err)
	}
}

// checkGrown fails unless bm holds the marked bits, the new range is set
// (or clear with clean) and nothing else is.
func checkGrown(t *testing.T, bm *Bitmap, clean bool) {
	t.Helper()
	want := int64(0)
	for _, r := range marked {
		if !bm.IsSet(r.Off, r.Len) {
			t.Fatalf("bits of [%d, +%d) lost", r.Off, r.Len)
		}
		want += r.Len
	}
	if !clean {
		if !bm.IsSet(growOld, growNew-growOld) {
			t.Fatal("the new range is not all out of sync")
		}
		want += growNew - growOld
	}
	if got := bm.OutOfSyncBytes(); got != want {
		t.Fatalf("%d bytes out of sync, want %d", got, want)
	}
}

func TestGrowInPlace(t *testing.T) {
	for _, clean := range []bool{false, true} {
		nl, _ := NewLayout(growNew, Options{})
		d := disk.NewMem(nl.MetaSize()) // the external file, already grown
		if err := Create(d, testSB(growOld, Options{}), CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		m := mustOpen(t, d)
		markSome(t, m)
		if err := m.Update(func(sb *Superblock) { sb.Epoch = 7 }); err != nil {
			t.Fatal(err)
		}
		n, err := m.Grow(d, growNew, GrowOptions{InPlace: true, AssumeClean: clean})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Update(func(sb *Superblock) {}); !errors.Is(err, ErrClosed) {
			t.Fatalf("the old metadata after Grow: %v, want closed", err)
		}
		if sb := n.Superblock(); sb.DataSize != growNew || sb.MetaSize != nl.MetaSize() || sb.Epoch != 7 || sb.Node != "alpha" {
			t.Fatalf("grown superblock: %+v", sb)
		}
		checkGrown(t, n.Bitmap(), clean)
		// The grown metadata works: a write's Begin, then a clean close
		// and an Open that finds it all.
		release, err := n.Begin(context.Background(), growNew-4096, 4096)
		if err != nil {
			t.Fatal(err)
		}
		release()
		if err := n.Close(true); err != nil {
			t.Fatal(err)
		}
		r := mustOpen(t, d)
		if r.Layout().DataSize != growNew || !r.Recovery().WasClean {
			t.Fatalf("reopened: %+v %+v", r.Layout(), r.Recovery())
		}
		checkGrown(t, r.Bitmap(), clean)
	}
}

// Internal metadata moves behind the grown data; the old copy is gone.
func TestGrowMoves(t *testing.T) {
	ol, _ := NewLayout(growOld, Options{})
	nl, _ := NewLayout(growNew, Options{})
	dev := disk.NewMem(growNew + nl.MetaSize())
	oldArea := disk.NewRegion(dev, growOld, ol.MetaSize())
	newArea := disk.NewRegion(dev, growNew, nl.MetaSize())
	if err := Create(oldArea, testSB(growOld, Options{}), CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m := mustOpen(t, oldArea)
	markSome(t, m)
	n, err := m.Grow(newArea, growNew, GrowOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkGrown(t, n.Bitmap(), false)
	if err := n.Close(false); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(oldArea); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("the old copy after the move: %v, want no metadata", err)
	}
	r := mustOpen(t, newArea)
	if r.Layout().DataSize != growNew || r.Superblock().Node != "alpha" {
		t.Fatalf("moved: %+v", r.Superblock())
	}
	checkGrown(t, r.Bitmap(), false)
}

// Refused growths change nothing, and the metadata goes on working.
func TestGrowRefused(t *testing.T) {
	nl, _ := NewLayout(growNew, Options{})
	d := disk.NewMem(nl.MetaSize())
	if err := Create(d, testSB(growOld, Options{}), CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m := mustOpen(t, d)
	markSome(t, m)
	before := append([]byte(nil), d.Bytes()...)
	small := disk.NewRegion(d, 0, nl.MetaSize()-BlockSize)
	release, err := m.Begin(context.Background(), 0, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		dst  disk.Disk
		size int64
		want error
	}{
		{"smaller", d, growOld - 1<<20, ErrShrink},
		{"the same", d, growOld, ErrShrink},
		{"not 4 KiB aligned", d, growNew - 512, ErrLayout},
		{"an area too small", small, growNew, ErrTooSmall},
		{"a write in flight", d, growNew, nil},
	} {
		if _, err := m.Grow(c.dst, c.size, GrowOptions{InPlace: true}); err == nil || c.want != nil && !errors.Is(err, c.want) {
			t.Fatalf("grow %s: %v, want %v", c.what, err, c.want)
		}
	}
	release()
	after := d.Bytes()
	if string(before[:BlockSize*2]) != string(after[:BlockSize*2]) {
		t.Fatal("a refused grow changed the superblocks")
	}
	if err := m.Update(func(sb *Superblock) { sb.Epoch = 3 }); err != nil {
		t.Fatalf("the metadata after refused grows: %v", err)
	}
	if _, err := m.Grow(d, growNew, GrowOptions{InPlace: true}); err != nil {
		t.Fatalf("grow once the write is done: %v", err)
	}
}

// A power cut at any sync of a Grow leaves metadata that opens, at the old
// size or the new one, and marks at least what it marked before (the new
// range too, at the new size): never less out of sync than is true.
func TestGrowCrash(t *testing.T) {
	for _, inPlace := range []bool{true, false} {
		ol, _ := NewLayout(growOld, Options{})
		nl, _ := NewLayout(growNew, Options{})
		sawOld, sawNew := 0, 0
		for try := 1; ; try++ {
			cut := 1 + (try-1)/8 // eight seeds per sync
			r := rand.New(rand.NewPCG(uint64(try), 3))
			// Moved: the old and the new place as two disks that crash
			// together (one device; no data area needed).
			var devs []*disk.Mem
			var oldArea, newArea func([]*disk.Mem) disk.Disk
			if inPlace {
				devs = []*disk.Mem{disk.NewMem(nl.MetaSize())}
				oldArea = func(m []*disk.Mem) disk.Disk { return m[0] }
				newArea = oldArea
			} else {
				devs = []*disk.Mem{disk.NewMem(ol.MetaSize()), disk.NewMem(nl.MetaSize())}
				oldArea = func(m []*disk.Mem) disk.Disk { return m[0] }
				newArea = func(m []*disk.Mem) disk.Disk { return m[1] }
			}
			if err := Create(oldArea(devs), testSB(growOld, Options{}), CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			m := mustOpen(t, oldArea(devs))
			markSome(t, m)
			syncs := 0
			var crashed []*disk.Mem
			for _, d := range devs {
				d.SetFault(func(op string, _, _ int64) error {
					if op == "sync" {
						if syncs++; syncs == cut {
							crashed = disk.CrashTogether(r, devs...)
						}
					}
					return nil
				})
			}
			if _, err := m.Grow(newArea(devs), growNew, GrowOptions{InPlace: inPlace}); err != nil {
				t.Fatal(err)
			}
			for _, d := range devs {
				d.SetFault(nil)
			}
			if crashed == nil {
				break // past the last sync
			}
			// What the configuration's size reads first: the new place.
			// Moved, a cut in the new superblocks' write can leave them
			// torn (corrupt) or absent; the old copy is whole then, and
			// the size set back opens it.
			got, err := Open(newArea(crashed))
			if !inPlace && (errors.Is(err, ErrNoMetadata) || errors.Is(err, ErrCorrupt)) {
				got, err = Open(oldArea(crashed))
			}
			if err != nil {
				t.Fatalf("in place %v, cut at sync %d: %v", inPlace, cut, err)
			}
			for _, rg := range marked {
				if !got.Bitmap().IsSet(rg.Off, rg.Len) {
					t.Fatalf("in place %v, cut at sync %d: bits of [%d, +%d) lost", inPlace, cut, rg.Off, rg.Len)
				}
			}
			switch got.Layout().DataSize {
			case growOld:
				sawOld++
			case growNew:
				sawNew++
				if !got.Bitmap().IsSet(growOld, growNew-growOld) {
					t.Fatalf("in place %v, cut at sync %d: the new size without its new range out of sync", inPlace, cut)
				}
			}
		}
		if sawOld == 0 || sawNew == 0 {
			t.Fatalf("in place %v: %d cuts at the old size, %d at the new: both should happen", inPlace, sawOld, sawNew)
		}
	}
}
