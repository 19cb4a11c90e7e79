package disk

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func pattern(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func mustWrite(t *testing.T, d Disk, p []byte, off int64) {
	t.Helper()
	if n, err := d.WriteAt(p, off); err != nil || n != len(p) {
		t.Fatalf("WriteAt(%d bytes, %d) = %d, %v", len(p), off, n, err)
	}
}

func mustRead(t *testing.T, d Disk, n int, off int64) []byte {
	t.Helper()
	p := make([]byte, n)
	if m, err := d.ReadAt(p, off); err != nil || m != n {
		t.Fatalf("ReadAt(%d bytes, %d) = %d, %v", n, off, m, err)
	}
	return p
}

func TestMemReadWriteBounds(t *testing.T) {
	m := NewMem(4096)
	if m.Size() != 4096 {
		t.Fatalf("size %d", m.Size())
	}
	mustWrite(t, m, []byte("hello"), 100)
	if got := mustRead(t, m, 5, 100); string(got) != "hello" {
		t.Fatalf("read %q", got)
	}
	for _, c := range []struct {
		off int64
		n   int
	}{{-1, 1}, {4096, 1}, {4000, 97}, {1 << 62, 8}, {9223372036854775807, 1}} {
		if _, err := m.WriteAt(make([]byte, c.n), c.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("write %d at %d: %v, want ErrOutOfRange", c.n, c.off, err)
		}
		if _, err := m.ReadAt(make([]byte, c.n), c.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("read %d at %d: %v, want ErrOutOfRange", c.n, c.off, err)
		}
	}
	if got := mustRead(t, m, 5, 100); string(got) != "hello" {
		t.Fatalf("a refused write changed data: %q", got)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := m.Sync(); !errors.Is(err, ErrClosed) {
		t.Fatalf("sync after close: %v", err)
	}
	if !bytes.Equal(m.Bytes()[100:105], []byte("hello")) {
		t.Fatal("Bytes after close")
	}
}

func TestMemCrashKeepsSyncedData(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 1))
		m := NewMem(64 << 10)
		want := make([]byte, m.Size())
		for i := range 20 {
			off := r.Int64N(m.Size() - 5000)
			p := pattern(1+r.IntN(5000), byte(i+1))
			mustWrite(t, m, p, off)
			copy(want[off:], p)
		}
		if err := m.Sync(); err != nil {
			t.Fatal(err)
		}
		c := m.Crash(r)
		if !bytes.Equal(c.Bytes(), want) {
			t.Fatalf("seed %d: synced data changed by a crash", seed)
		}
		if c.Unsynced() != 0 || m.Unsynced() != 0 {
			t.Fatalf("seed %d: unsynced after sync/crash: %d, %d", seed, m.Unsynced(), c.Unsynced())
		}
	}
}

// TestMemCrashOutcomes checks that unsynced writes may or may not survive,
// that multi-sector writes tear, that later writes can land without earlier
// ones, and that synced data never changes.
func TestMemCrashOutcomes(t *testing.T) {
	const size = 16 << 10
	var survived, lost, torn, reordered int
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 2))
		m := NewMem(size)
		base := pattern(size, 0xAA)
		mustWrite(t, m, base, 0)
		if err := m.Sync(); err != nil {
			t.Fatal(err)
		}
		// Unsynced: 4 sectors at 0 (tearable), then one sector at 8192.
		mustWrite(t, m, pattern(4*SectorSize, 1), 0)
		mustWrite(t, m, pattern(SectorSize, 2), 8192)
		if m.Unsynced() != 5 {
			t.Fatalf("unsynced sectors %d, want 5", m.Unsynced())
		}
		img := m.Crash(r).Bytes()
		// Outside the unsynced writes nothing may change.
		if !bytes.Equal(img[4*SectorSize:8192], base[4*SectorSize:8192]) || !bytes.Equal(img[8192+SectorSize:], base[8192+SectorSize:]) {
			t.Fatalf("seed %d: a crash changed bytes nobody wrote", seed)
		}
		newSectors := 0
		for s := range 4 {
			sec := img[s*SectorSize : (s+1)*SectorSize]
			switch {
			case bytes.Equal(sec, pattern(SectorSize, 1)):
				newSectors++
			case bytes.Equal(sec, pattern(SectorSize, 0xAA)):
			default:
				t.Fatalf("seed %d: sector %d is neither old nor new: a sector tore", seed, s)
			}
		}
		second := img[8192 : 8192+SectorSize]
		secondLanded := bytes.Equal(second, pattern(SectorSize, 2))
		if !secondLanded && !bytes.Equal(second, pattern(SectorSize, 0xAA)) {
			t.Fatalf("seed %d: second write neither old nor new", seed)
		}
		switch newSectors {
		case 4:
			survived++
		case 0:
			lost++
		default:
			torn++
		}
		if secondLanded && newSectors == 0 {
			reordered++
		}
		// Work goes on on the original: the crash did not sync it.
		if m.Unsynced() != 5 {
			t.Fatalf("Crash changed the original's unsynced writes")
		}
	}
	t.Logf("survived %d, lost %d, torn %d, reordered %d", survived, lost, torn, reordered)
	if survived == 0 || lost == 0 || torn == 0 || reordered == 0 {
		t.Fatalf("over 300 seeds some outcome never happened: survived %d, lost %d, torn %d, reordered %d", survived, lost, torn, reordered)
	}
}

func TestMemPartialSectorAndOverwrites(t *testing.T) {
	var sawFirstOnly, sawSecond bool
	for seed := range uint64(100) {
		r := rand.New(rand.NewPCG(seed, 3))
		m := NewMem(2 * SectorSize)
		mustWrite(t, m, pattern(2*SectorSize, 0xAA), 0)
		if err := m.Sync(); err != nil {
			t.Fatal(err)
		}
		// Two unsynced partial writes into sector 0: the drive writes the
		// whole sector as it was after each.
		mustWrite(t, m, []byte{1}, 10)
		mustWrite(t, m, []byte{2}, 20)
		img := m.Crash(r).Bytes()
		a, b := img[10], img[20]
		switch {
		case a == 0xAA && b == 0xAA:
		case a == 1 && b == 0xAA:
			sawFirstOnly = true
		case a == 1 && b == 2:
			sawSecond = true
		default:
			// The second sector write carries the first byte along, so
			// "second without first" cannot show up.
			t.Fatalf("seed %d: bytes %x %x: not a state the sector writes can produce", seed, a, b)
		}
		if !bytes.Equal(img[SectorSize:], pattern(SectorSize, 0xAA)) {
			t.Fatalf("seed %d: sector 1 changed", seed)
		}
	}
	if !sawFirstOnly || !sawSecond {
		t.Fatalf("outcomes: first only %v, second %v", sawFirstOnly, sawSecond)
	}
}

func TestMemFault(t *testing.T) {
	m := NewMem(8192)
	boom := errors.New("boom")
	var seen []string
	var snapshot *Mem
	m.SetFault(func(op string, off, n int64) error {
		seen = append(seen, op)
		if op == "sync" {
			// The hook runs without the Mem's lock: capturing a crash
			// image right here must not deadlock.
			snapshot = m.Crash(rand.New(rand.NewPCG(1, 1)))
		}
		if op == "write" && off >= 4096 {
			return boom
		}
		return nil
	})
	mustWrite(t, m, []byte("ok"), 0)
	if _, err := m.WriteAt([]byte("no"), 4096); !errors.Is(err, boom) {
		t.Fatalf("faulted write: %v", err)
	}
	if !bytes.Equal(m.Bytes()[4096:4098], []byte{0, 0}) {
		t.Fatal("a failed write changed data")
	}
	if err := m.Sync(); err != nil {
		t.Fatal(err)
	}
	if snapshot == nil || snapshot.Unsynced() != 0 {
		t.Fatal("no snapshot from inside the hook")
	}
	mustRead(t, m, 2, 0)
	want := []string{"write", "write", "sync", "read"}
	if len(seen) != len(want) {
		t.Fatalf("hook saw %v, want %v", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("hook saw %v, want %v", seen, want)
		}
	}
	m.SetFault(func(op string, _, _ int64) error {
		if op == "sync" {
			return boom
		}
		return nil
	})
	mustWrite(t, m, []byte("x"), 0)
	if err := m.Sync(); !errors.Is(err, boom) {
		t.Fatalf("faulted sync: %v", err)
	}
	if m.Unsynced() != 1 {
		t.Fatal("a failed sync synced")
	}
	m.SetFault(nil)
	if err := m.Sync(); err != nil || m.Unsynced() != 0 {
		t.Fatalf("sync after removing the hook: %v, %d unsynced", err, m.Unsynced())
	}
}

func TestMemWritebackLimit(t *testing.T) {
	m := NewMem(64 << 10)
	m.SetWritebackLimit(8 << 10)
	for i := range 16 {
		mustWrite(t, m, pattern(4096, byte(i+1)), int64(i)*4096)
	}
	if n := m.Unsynced(); n > 16 {
		t.Fatalf("%d sectors unsynced with an 8 KiB cache", n)
	}
	// The oldest writes were written back: they survive every crash.
	for seed := range uint64(20) {
		img := m.Crash(rand.New(rand.NewPCG(seed, 4))).Bytes()
		if !bytes.Equal(img[:4096], pattern(4096, 1)) {
			t.Fatalf("seed %d: a written-back write was lost", seed)
		}
	}
}

func TestCrashTogether(t *testing.T) {
	a, b := NewMem(4096), NewMem(4096)
	mustWrite(t, a, pattern(512, 1), 0)
	mustWrite(t, b, pattern(512, 2), 0)
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	out := CrashTogether(rand.New(rand.NewPCG(5, 5)), a, b)
	if len(out) != 2 || !bytes.Equal(out[0].Bytes()[:512], pattern(512, 1)) {
		t.Fatal("CrashTogether lost synced data")
	}
	if out[1].Size() != 4096 || out[1].Unsynced() != 0 {
		t.Fatal("CrashTogether: second image")
	}
}

// TestPowerCut: the images keep what was synced, and the cut disks fail
// every later write and sync, so nothing done after the cut can be
// mistaken for durable.
func TestPowerCut(t *testing.T) {
	a, b := NewMem(4096), NewMem(4096)
	mustWrite(t, a, pattern(512, 1), 0)
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, b, pattern(512, 2), 0)
	out := PowerCut(rand.New(rand.NewPCG(6, 6)), a, b)
	if len(out) != 2 || !bytes.Equal(out[0].Bytes()[:512], pattern(512, 1)) {
		t.Fatal("PowerCut lost synced data")
	}
	for _, m := range []*Mem{a, b} {
		if _, err := m.WriteAt(pattern(512, 3), 512); !errors.Is(err, ErrClosed) {
			t.Fatalf("write after the cut: %v, want ErrClosed", err)
		}
		if err := m.Sync(); !errors.Is(err, ErrClosed) {
			t.Fatalf("sync after the cut: %v, want ErrClosed", err)
		}
	}
	// The images are new disks that work.
	if _, err := out[1].WriteAt(pattern(512, 4), 0); err != nil {
		t.Fatal(err)
	}
	if err := out[1].Sync(); err != nil {
		t.Fatal(err)
	}
}
