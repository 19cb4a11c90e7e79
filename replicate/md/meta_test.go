package md

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/replicate/disk"
)

// testSB is a superblock to create: data size and layout options, names.
func testSB(dataSize int64, o Options) Superblock {
	return Superblock{
		DataSize: dataSize, Granularity: o.Granularity, ALExtentSize: o.ALExtentSize, ALSlots: o.ALSlots, MaxHotExtents: o.MaxHotExtents,
		Cluster: "c", Resource: "r0", Node: "alpha", Peer: "beta",
	}
}

// createMem makes external metadata for dataSize bytes on a new Mem.
func createMem(t *testing.T, dataSize int64, o Options, opts CreateOptions) (*disk.Mem, Layout) {
	t.Helper()
	l, err := NewLayout(dataSize, o)
	if err != nil {
		t.Fatal(err)
	}
	m := disk.NewMem(l.MetaSize())
	if err := Create(m, testSB(dataSize, o), opts); err != nil {
		t.Fatal(err)
	}
	return m, l
}

func mustOpen(t *testing.T, d disk.Disk) *Meta {
	t.Helper()
	m, err := Open(d)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCreateOpen(t *testing.T) {
	for _, blank := range []bool{false, true} {
		d, l := createMem(t, 64<<20, Options{}, CreateOptions{NewBlank: blank})
		if d.Unsynced() != 0 {
			t.Fatal("Create left writes unsynced")
		}
		m := mustOpen(t, d)
		sb := m.Superblock()
		if sb.Version != 1 || sb.DataSize != 64<<20 || sb.MetaSize != l.MetaSize() || sb.Granularity != 4096 ||
			sb.ALExtentSize != 4<<20 || sb.ALSlots != 16 || sb.MaxHotExtents != 1018 {
			t.Fatalf("layout fields %+v", sb)
		}
		if sb.UUID == (UUID{}) || sb.Gen.Current == 0 || sb.Resource != "r0" || sb.Node != "alpha" || sb.Peer != "beta" || sb.Cluster != "c" {
			t.Fatalf("identity %+v", sb)
		}
		// Open clears Clean (a crash from now on must be recognised) and
		// reports a clean start.
		if sb.Flags.Has(Clean) || !m.Recovery().WasClean || len(m.RecoveredExtents()) != 0 {
			t.Fatalf("flags %v, recovery %+v", sb.Flags, m.Recovery())
		}
		if blank {
			if !sb.Flags.Has(Consistent) || sb.Flags.Has(FullSyncNeeded) || DiskState(sb.Flags) != "UpToDate" {
				t.Fatalf("new-blank flags %v", sb.Flags)
			}
		} else if sb.Flags.Has(Consistent) || !sb.Flags.Has(FullSyncNeeded) || DiskState(sb.Flags) != "Inconsistent" {
			t.Fatalf("flags %v", sb.Flags)
		}
		if m.Bitmap().Count() != 0 || m.Layout() != l {
			t.Fatal("bitmap or layout")
		}
		if err := m.Close(true); err != nil {
			t.Fatal(err)
		}
		if err := m.Close(true); !errors.Is(err, ErrClosed) {
			t.Fatalf("second close: %v", err)
		}
		if err := m.Update(func(*Superblock) {}); !errors.Is(err, ErrClosed) {
			t.Fatalf("update after close: %v", err)
		}
		m2 := mustOpen(t, d)
		if !m2.Recovery().WasClean || m2.Superblock().UUID != sb.UUID {
			t.Fatal("reopen after a clean close")
		}
	}
}

func TestCreateKeepsCallerFields(t *testing.T) {
	sb := testSB(1<<20, Options{})
	sb.UUID = UUID{9}
	sb.Gen = Generations{Current: 77, History: [4]uint64{1}}
	sb.Flags = WasPrimary | FullSyncNeeded
	sb.Epoch = 5
	d := disk.NewMem(1 << 20)
	if err := Create(d, sb, CreateOptions{NewBlank: true}); err != nil {
		t.Fatal(err)
	}
	got := mustOpen(t, d).Superblock()
	if got.UUID != sb.UUID || got.Gen != sb.Gen || got.Epoch != 5 || got.Flags != WasPrimary|Consistent {
		t.Fatalf("got %+v", got)
	}
}

func TestCreateRefuses(t *testing.T) {
	d, _ := createMem(t, 1<<20, Options{}, CreateOptions{})
	before := d.Bytes()
	if err := Create(d, testSB(1<<20, Options{}), CreateOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("create over valid metadata: %v", err)
	}
	if !bytes.Equal(d.Bytes(), before) {
		t.Fatal("a refused Create wrote")
	}
	// Corrupt but recognisably ours: still refused.
	if _, err := d.WriteAt([]byte{0xff}, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte{0xff}, BlockSize+100); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(d); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open: %v", err)
	}
	if err := Create(d, testSB(1<<20, Options{}), CreateOptions{}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "does not load") {
		t.Fatalf("create over corrupt metadata: %v", err)
	}
	// Forced: it works.
	if err := Create(d, testSB(1<<20, Options{}), CreateOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, d)
	// Not ours at all (an old filesystem): allowed.
	junk := disk.NewMem(1 << 20)
	if _, err := junk.WriteAt(bytes.Repeat([]byte("ext4"), 4096), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(junk); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open over junk: %v", err)
	}
	if err := Create(junk, testSB(1<<20, Options{}), CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Too small.
	if err := Create(disk.NewMem(64<<10), testSB(1<<20, Options{}), CreateOptions{}); !errors.Is(err, ErrTooSmall) {
		t.Fatalf("too small: %v", err)
	}
	if err := Create(disk.NewMem(1<<20), testSB(1<<20, Options{Granularity: 1000}), CreateOptions{}); !errors.Is(err, ErrLayout) {
		t.Fatalf("bad layout: %v", err)
	}
	sb := testSB(1<<20, Options{})
	sb.Node = strings.Repeat("x", 64)
	if err := Create(disk.NewMem(1<<20), sb, CreateOptions{}); err == nil {
		t.Fatal("long name accepted")
	}
}

// TestCreateForceClearsOldState: stale activity-log transactions and bitmap
// bits of the metadata replaced must not come back.
func TestCreateForceClearsOldState(t *testing.T) {
	d, _ := createMem(t, 64<<20, Options{ALExtentSize: 1 << 20}, CreateOptions{})
	m := mustOpen(t, d)
	rel, err := m.Begin(t.Context(), 5<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	rel()
	m.Bitmap().Set(0, 1<<20)
	if err := m.Bitmap().FlushAll(); err != nil {
		t.Fatal(err)
	}
	// Crash-like: no Close. Recreate with force.
	if err := Create(d, testSB(64<<20, Options{ALExtentSize: 1 << 20}), CreateOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	m2 := mustOpen(t, d)
	if m2.Bitmap().Count() != 0 || len(m2.RecoveredExtents()) != 0 {
		t.Fatalf("old state survived create --force: %d bits, recovered %v", m2.Bitmap().Count(), m2.RecoveredExtents())
	}
}

func TestOpenEmptyAndJunk(t *testing.T) {
	if _, err := Open(disk.NewMem(1 << 20)); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("zeroes: %v", err)
	}
	if _, err := Open(disk.NewMem(100)); !errors.Is(err, ErrTooSmall) {
		t.Fatalf("tiny: %v", err)
	}
	// The superblock says more metadata than the area holds (a wrong
	// device, or changed options).
	d, l := createMem(t, 64<<20, Options{}, CreateOptions{})
	short := disk.NewRegion(d, 0, l.MetaSize()-BlockSize)
	if _, err := Open(short); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short area: %v", err)
	}
}

func TestUpdate(t *testing.T) {
	d, _ := createMem(t, 1<<20, Options{}, CreateOptions{})
	m := mustOpen(t, d)
	seq := m.Superblock().Seq
	slot := m.cur
	for i := range 5 {
		err := m.Update(func(sb *Superblock) {
			sb.Epoch = uint64(100 + i)
			sb.Gen.Current = uint64(i + 1)
			sb.Flags |= Outdated | Clean // Clean is not Update's to set
		})
		if err != nil {
			t.Fatal(err)
		}
		if d.Unsynced() != 0 {
			t.Fatal("Update left writes unsynced")
		}
		sb := m.Superblock()
		if sb.Seq != seq+uint64(i)+1 || sb.Epoch != uint64(100+i) || sb.Flags.Has(Clean) || !sb.Flags.Has(Outdated) {
			t.Fatalf("after update %d: %+v", i, sb)
		}
		if m.cur == slot {
			t.Fatal("Update wrote the slot holding the current copy")
		}
		slot = m.cur
		// Both slots stay valid: the other holds the previous copy.
		slots, err := readSlots(d)
		if err != nil || slots[0].err != nil || slots[1].err != nil {
			t.Fatalf("slots after update: %v %v %v", err, slots[0].err, slots[1].err)
		}
		if slots[1-m.cur].sb.Seq != sb.Seq-1 {
			t.Fatal("the other slot does not hold the previous copy")
		}
	}
	for name, fn := range map[string]func(*Superblock){
		"seq":  func(sb *Superblock) { sb.Seq = 1000 },
		"size": func(sb *Superblock) { sb.DataSize = 2 << 20 },
		"uuid": func(sb *Superblock) { sb.UUID = UUID{} },
		"gran": func(sb *Superblock) { sb.Granularity = 8192 },
	} {
		if err := m.Update(fn); err == nil {
			t.Errorf("Update changed %s", name)
		}
	}
	if err := m.Update(func(sb *Superblock) { sb.Node = strings.Repeat("n", 100) }); err == nil {
		t.Error("Update with a long name")
	}
	// The failed updates changed nothing.
	m2 := mustOpen(t, d)
	if got := m2.Superblock(); got.Epoch != 104 || got.Node != "alpha" {
		t.Fatalf("reopened %+v", got)
	}
}

// corruptSlot flips a byte in slot i.
func corruptSlot(t *testing.T, d disk.Disk, i int) {
	t.Helper()
	b := make([]byte, 1)
	if _, err := d.ReadAt(b, int64(i)*BlockSize+200); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := d.WriteAt(b, int64(i)*BlockSize+200); err != nil {
		t.Fatal(err)
	}
}

func TestSlotFallback(t *testing.T) {
	d, _ := createMem(t, 1<<20, Options{}, CreateOptions{})
	m := mustOpen(t, d)
	if err := m.Update(func(sb *Superblock) { sb.Epoch = 1 }); err != nil {
		t.Fatal(err)
	}
	if err := m.Update(func(sb *Superblock) { sb.Epoch = 2 }); err != nil {
		t.Fatal(err)
	}
	newest := m.cur
	corruptSlot(t, d, newest)
	m2 := mustOpen(t, d)
	if got := m2.Superblock(); got.Epoch != 1 {
		t.Fatalf("fell back to epoch %d, want the older copy (1)", got.Epoch)
	}
	if m2.Recovery().SlotErrors[newest] == "" || m2.Recovery().SlotErrors[1-newest] != "" {
		t.Fatalf("slot errors %q", m2.Recovery().SlotErrors)
	}
	// Opening rewrote the bad slot with the next sequence.
	slots, _ := readSlots(d)
	if slots[0].err != nil || slots[1].err != nil {
		t.Fatal("the corrupt slot was not rewritten")
	}

	// Both corrupt: reported, and nothing is written.
	corruptSlot(t, d, 0)
	corruptSlot(t, d, 1)
	before := d.Bytes()
	_, err := Open(d)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "slot 0") || !strings.Contains(err.Error(), "slot 1") {
		t.Fatalf("both slots corrupt: %v", err)
	}
	if !bytes.Equal(d.Bytes(), before) {
		t.Fatal("Open wrote to corrupt metadata")
	}
	info, err := Dump(d)
	if !errors.Is(err, ErrCorrupt) || info.ActiveSlot != -1 || info.Slots[0].Valid || info.Slots[1].Valid || info.Slots[0].Error == "" || len(info.Problems) != 2 {
		t.Fatalf("dump of corrupt metadata: %+v, %v", info, err)
	}
}

func TestOpenRefusesNewerVersion(t *testing.T) {
	d, _ := createMem(t, 1<<20, Options{}, CreateOptions{})
	m := mustOpen(t, d)
	if err := m.Update(func(sb *Superblock) {}); err != nil {
		t.Fatal(err)
	}
	// A newer tandem rewrote one slot; the other is still a valid v1.
	b := make([]byte, BlockSize)
	if _, err := d.ReadAt(b, int64(m.cur)*BlockSize); err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint32(b[sbVersion:], 2)
	resum(b)
	if _, err := d.WriteAt(b, int64(m.cur)*BlockSize); err != nil {
		t.Fatal(err)
	}
	before := d.Bytes()
	_, err := Open(d)
	if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("open: %v", err)
	}
	if !bytes.Equal(d.Bytes(), before) {
		t.Fatal("Open wrote over metadata of a newer version")
	}
	if err := Create(d, testSB(1<<20, Options{}), CreateOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("create over a newer version: %v", err)
	}
}

// TestTornUpdate crashes in the middle of Update (its write done, its sync
// not yet) with many seeds: the metadata always loads, and is either the
// old or the new superblock, never a mixture; both outcomes happen.
func TestTornUpdate(t *testing.T) {
	var sawOld, sawNew int
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 11))
		d, _ := createMem(t, 1<<20, Options{}, CreateOptions{})
		m := mustOpen(t, d)
		for i := range int(seed % 3) { // vary which slot is written
			if err := m.Update(func(sb *Superblock) { sb.Epoch = uint64(i) }); err != nil {
				t.Fatal(err)
			}
		}
		old := m.Superblock()
		var crashed *disk.Mem
		d.SetFault(func(op string, _, _ int64) error {
			if op == "sync" && crashed == nil {
				crashed = d.Crash(r)
			}
			return nil
		})
		err := m.Update(func(sb *Superblock) {
			sb.Epoch = 999
			sb.Gen = Generations{Current: 0xabcdef, Bitmap: 1, History: [4]uint64{2, 3, 4, 5}}
			sb.Resource = strings.Repeat("z", MaxNameLen)
		})
		if err != nil {
			t.Fatal(err)
		}
		d.SetFault(nil)
		want := m.Superblock()
		got := mustOpen(t, crashed).Superblock()
		// Open itself writes the next sequence; compare the rest.
		got.Seq, got.Flags = 0, got.Flags&^Clean
		old.Seq, want.Seq = 0, 0
		switch got {
		case old:
			sawOld++
		case want:
			sawNew++
		default:
			t.Fatalf("seed %d: loaded a superblock that is neither old nor new: %+v", seed, got)
		}
	}
	t.Logf("old %d, new %d", sawOld, sawNew)
	if sawOld == 0 || sawNew == 0 {
		t.Fatalf("over 200 seeds: old %d, new %d; both should happen", sawOld, sawNew)
	}
}

func TestDump(t *testing.T) {
	d, l := createMem(t, 64<<20, Options{ALExtentSize: 1 << 20}, CreateOptions{})
	m := mustOpen(t, d)
	rel, err := m.Begin(t.Context(), 3<<20, 8192)
	if err != nil {
		t.Fatal(err)
	}
	m.Bitmap().Set(3<<20, 8192)
	m.Bitmap().Set(10<<20, 4096)
	rel()
	if err := m.Bitmap().FlushAll(); err != nil {
		t.Fatal(err)
	}
	before := d.Bytes()
	info, err := Dump(d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.Bytes(), before) {
		t.Fatal("Dump wrote")
	}
	if info.ActiveSlot != m.cur || info.Superblock == nil || info.Superblock.Resource != "r0" || *info.Layout != l {
		t.Fatalf("dump: %+v", info)
	}
	if info.DiskState != "Inconsistent" || len(info.Problems) != 0 {
		t.Fatalf("state %q, problems %v", info.DiskState, info.Problems)
	}
	al := info.ActivityLog
	if al.NewestSlot < 0 || len(al.Hot) != 1 || al.Hot[0] != (Range{Off: 3 << 20, Len: 1 << 20}) || len(al.Slots) != 16 {
		t.Fatalf("activity log %+v", al)
	}
	bi := info.Bitmap
	if bi.SetBits != 3 || bi.OutOfSyncBytes != 3*4096 || len(bi.FirstRanges) != 2 || bi.FirstRanges[1] != (Range{Off: 10 << 20, Len: 4096}) {
		t.Fatalf("bitmap %+v", bi)
	}
	j, err := json.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"active_slot"`, `"superblock"`, `"flags":["FullSyncNeeded"]`, `"hot":[{"off":3145728,"len":1048576}]`, `"set_bits":3`, `"uuid":"`} {
		if !strings.Contains(string(j), key) {
			t.Errorf("JSON lacks %s:\n%s", key, j)
		}
	}

	// One corrupt slot: it loads, and the dump says what is wrong.
	corruptSlot(t, d, 1-m.cur)
	info, err = Dump(d)
	if err != nil || info.ActiveSlot != m.cur || info.Slots[1-m.cur].Valid || len(info.Problems) != 1 || !strings.Contains(info.Problems[0], "checksum") {
		t.Fatalf("dump with a corrupt slot: %+v, %v", info, err)
	}
	if _, err := Dump(disk.NewMem(1 << 20)); !errors.Is(err, ErrNoMetadata) {
		t.Fatalf("dump of zeroes: %v", err)
	}
}
