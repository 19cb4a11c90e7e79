package md

import (
	"fmt"

	"github.com/tandem-ha/tandem/replicate/disk"
)

// DumpInfo is what Dump found, for `tandem dump-md [--json]`. The JSON keys
// are stable.
type DumpInfo struct {
	Slots [2]SlotInfo `json:"slots"`
	// ActiveSlot is the slot Open would use, -1 if none.
	ActiveSlot  int         `json:"active_slot"`
	Superblock  *Superblock `json:"superblock,omitempty"`
	Layout      *Layout     `json:"layout,omitempty"`
	ActivityLog *ALInfo     `json:"activity_log,omitempty"`
	Bitmap      *BitmapInfo `json:"bitmap,omitempty"`
	// Problems lists what is wrong or unusual (a corrupt slot, a torn
	// transaction, a bad bitmap page), even when the metadata loads.
	Problems  []string `json:"problems"`
	DiskState string   `json:"disk_state,omitempty"`
}

// SlotInfo describes one superblock slot.
type SlotInfo struct {
	Valid bool   `json:"valid"`
	Empty bool   `json:"empty"` // all zeroes
	Seq   uint64 `json:"seq,omitempty"`
	Error string `json:"error,omitempty"`
}

// ALInfo describes the activity-log ring.
type ALInfo struct {
	Slots []ALSlotInfo `json:"slots"`
	// NewestSlot holds the newest valid transaction, -1 if none.
	NewestSlot int    `json:"newest_slot"`
	NewestSeq  uint64 `json:"newest_seq,omitempty"`
	// Hot are the extents the newest transaction names: what a crash now
	// would mark out of sync (unless the Clean flag is set).
	Hot []Range `json:"hot"`
}

// ALSlotInfo describes one transaction block.
type ALSlotInfo struct {
	Valid   bool   `json:"valid"`
	Empty   bool   `json:"empty"`
	Seq     uint64 `json:"seq,omitempty"`
	Extents int    `json:"extents"`
	Error   string `json:"error,omitempty"`
}

// BitmapInfo summarises the bitmap.
type BitmapInfo struct {
	Bits           int64   `json:"bits"`
	SetBits        uint64  `json:"set_bits"`
	OutOfSyncBytes int64   `json:"out_of_sync_bytes"`
	BadPages       []int64 `json:"bad_pages"`
	// FirstRanges are the first out-of-sync data ranges (at most
	// dumpRanges).
	FirstRanges []Range `json:"first_ranges"`
}

const dumpRanges = 16

// Dump reads the metadata on d without changing anything and describes it.
// It reports a corrupt or unreadable part instead of hiding it: the
// DumpInfo holds whatever could be read, and the error says why the
// metadata would not load (ErrNoMetadata, ErrCorrupt, ErrVersion), so a
// caller can print both.
func Dump(d disk.Disk) (DumpInfo, error) {
	info := DumpInfo{ActiveSlot: -1, Problems: []string{}}
	slots, err := readSlots(d)
	if err != nil {
		return info, err
	}
	for i, s := range slots {
		si := SlotInfo{Valid: s.err == nil, Empty: allZero(s.raw)}
		if s.err == nil || hasMagic(s.raw) {
			si.Seq = s.sb.Seq
		}
		if s.err != nil {
			si.Error = s.err.Error()
			if !si.Empty {
				info.Problems = append(info.Problems, fmt.Sprintf("superblock slot %d: %v", i, s.err))
			}
		}
		info.Slots[i] = si
	}
	cur, err := pickSlot(slots)
	if err != nil {
		return info, err
	}
	info.ActiveSlot = cur
	sb := slots[cur].sb
	info.Superblock = &sb
	info.DiskState = DiskState(sb.Flags)
	l, err := sb.Layout()
	if err != nil {
		return info, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	info.Layout = &l
	if sb.MetaSize > d.Size() {
		err := fmt.Errorf("%w: the superblock says the metadata takes %d bytes, the area has %d", ErrCorrupt, sb.MetaSize, d.Size())
		info.Problems = append(info.Problems, err.Error())
		return info, err
	}

	ring, newest, err := readAL(d, l)
	if err != nil {
		return info, err
	}
	al := &ALInfo{NewestSlot: newest, Hot: []Range{}}
	for i, s := range ring {
		ai := ALSlotInfo{Valid: s.err == nil, Empty: s.empty, Seq: s.seq, Extents: len(s.exts)}
		if s.err != nil && !s.empty {
			ai.Error = s.err.Error()
			// A torn block is normal after a crash; say so without
			// calling the metadata broken.
			info.Problems = append(info.Problems, fmt.Sprintf("activity-log slot %d is not a valid transaction: %v", i, s.err))
		}
		al.Slots = append(al.Slots, ai)
	}
	if newest >= 0 {
		al.NewestSeq = ring[newest].seq
		for _, e := range ring[newest].exts {
			off := int64(e) * l.ALExtentSize
			al.Hot = append(al.Hot, Range{Off: off, Len: min(l.ALExtentSize, l.DataSize-off)})
		}
	}
	info.ActivityLog = al

	bm := newBitmap(d, l)
	bad, err := bm.load()
	if err != nil {
		return info, err
	}
	bi := &BitmapInfo{Bits: bm.Bits(), SetBits: bm.Count(), OutOfSyncBytes: bm.OutOfSyncBytes(), BadPages: bad, FirstRanges: []Range{}}
	if bi.BadPages == nil {
		bi.BadPages = []int64{}
	}
	for _, p := range bad {
		info.Problems = append(info.Problems, fmt.Sprintf("bitmap page %d fails its checksum: all its bits count as set", p))
	}
	for pos := int64(0); len(bi.FirstRanges) < dumpRanges; {
		off, n, ok := bm.NextSet(pos)
		if !ok {
			break
		}
		bi.FirstRanges = append(bi.FirstRanges, Range{Off: off, Len: n})
		pos = off + n
	}
	info.Bitmap = bi
	return info, nil
}

// DiskState names the state the flags give the data: UpToDate, Outdated or
// Inconsistent.
func DiskState(f Flags) string {
	switch {
	case !f.Has(Consistent):
		return "Inconsistent"
	case f.Has(Outdated):
		return "Outdated"
	}
	return "UpToDate"
}
