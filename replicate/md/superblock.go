package md

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
)

// Version is the metadata format this package reads and writes.
const Version = 1

const (
	superMagic = "TANDEMMD"
	// MaxNameLen bounds the cluster, resource, node and peer names (a
	// length byte and 63 bytes on disk).
	MaxNameLen = 63
)

// Superblock field offsets (see docs/architecture.md).
const (
	sbMagic      = 0
	sbVersion    = 8
	sbFlags      = 12
	sbSeq        = 16
	sbMetaSize   = 24
	sbDataSize   = 32
	sbGran       = 40
	sbALExtent   = 44
	sbALSlots    = 48
	sbMaxHot     = 52
	sbUUID       = 56
	sbCurrent    = 72
	sbBitmap     = 80
	sbHistory    = 88
	sbEpoch      = 120
	sbPromotedAt = 128
	sbNames      = 136 // cluster, resource, node, peer: 64 bytes each
	sbNameSize   = 64
	sbReserved   = sbNames + 4*sbNameSize // 392: zero up to the CRC
	sbCRC        = BlockSize - 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	// ErrNoMetadata: the metadata area holds no superblock at all (both
	// slots all zeroes): run create-md.
	ErrNoMetadata = errors.New("md: no metadata (run tandem create-md)")
	// ErrCorrupt: there is metadata but no slot is valid, or its parts do
	// not fit together. Never reinitialised implicitly.
	ErrCorrupt = errors.New("md: metadata corrupt")
	// ErrVersion: the metadata was written in a format this tandem does
	// not know.
	ErrVersion = errors.New("md: unsupported metadata format version")
	// ErrExists: Create found metadata and was not forced.
	ErrExists = errors.New("md: metadata exists")
	// ErrClosed: the metadata was closed.
	ErrClosed = errors.New("md: metadata closed")
	// ErrRange: a range lies outside the data area.
	ErrRange = errors.New("md: range outside the data area")
)

// Generations identify data histories; see package replicate, whose
// Generations has the same fields (md cannot import it: replicate imports
// md).
type Generations struct {
	Current uint64    `json:"current"`
	Bitmap  uint64    `json:"bitmap"`
	History [4]uint64 `json:"history"`
}

// Flags are the superblock's state bits.
type Flags uint32

const (
	// Consistent: the data is a complete image of some generation.
	Consistent Flags = 1 << iota
	// Outdated: consistent but known to be older than the peer's.
	Outdated
	// WasPrimary: the node was primary when the flags were last written.
	WasPrimary
	// PeerOutdated: this node recorded the peer as Outdated (it wrote
	// without it).
	PeerOutdated
	// CrashedPrimary: the node was primary and did not shut down cleanly.
	CrashedPrimary
	// FullSyncNeeded: no bitmap covers the differences; a full sync is
	// needed (a new device without --new-blank).
	FullSyncNeeded
	// Clean: the last shutdown was clean; the activity log is empty and
	// the bitmap on disk is complete. Managed by Open and Close.
	Clean

	knownFlags = Consistent | Outdated | WasPrimary | PeerOutdated | CrashedPrimary | FullSyncNeeded | Clean
)

var flagNames = []string{"Consistent", "Outdated", "WasPrimary", "PeerOutdated", "CrashedPrimary", "FullSyncNeeded", "Clean"}

// Has reports whether every flag of g is set.
func (f Flags) Has(g Flags) bool { return f&g == g }

// Names lists the set flags.
func (f Flags) Names() []string {
	names := []string{}
	for i, n := range flagNames {
		if f&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	if u := f &^ knownFlags; u != 0 {
		names = append(names, fmt.Sprintf("0x%x", uint32(u)))
	}
	return names
}

func (f Flags) String() string { return strings.Join(f.Names(), "|") }

// MarshalJSON writes the flags as a list of names.
func (f Flags) MarshalJSON() ([]byte, error) { return json.Marshal(f.Names()) }

// UnmarshalJSON reads a list of flag names.
func (f *Flags) UnmarshalJSON(b []byte) error {
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return err
	}
	var v Flags
next:
	for _, n := range names {
		for i, k := range flagNames {
			if n == k {
				v |= 1 << i
				continue next
			}
		}
		return fmt.Errorf("md: unknown flag %q", n)
	}
	*f = v
	return nil
}

// UUID identifies a device's metadata (random, made by Create).
type UUID [16]byte

// NewUUID returns a random (version 4) UUID.
func NewUUID() UUID {
	var u UUID
	_, _ = rand.Read(u[:]) // crypto/rand.Read never fails
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

func (u UUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// MarshalText writes the usual 8-4-4-4-12 form.
func (u UUID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText reads the 8-4-4-4-12 form.
func (u *UUID) UnmarshalText(b []byte) error {
	s := strings.ReplaceAll(string(b), "-", "")
	if len(s) != 32 || len(b) != 36 {
		return fmt.Errorf("md: malformed UUID %q", b)
	}
	var v UUID
	if _, err := hex.Decode(v[:], []byte(s)); err != nil {
		return fmt.Errorf("md: malformed UUID %q: %w", b, err)
	}
	*u = v
	return nil
}

// Superblock is the metadata's header: what the replica is, and the state
// that decides the next sync.
type Superblock struct {
	Version uint32 `json:"version"`
	// Seq grows by one with every write of a slot; loading picks the
	// valid slot with the higher one.
	Seq           uint64 `json:"seq"`
	MetaSize      int64  `json:"meta_size"`
	DataSize      int64  `json:"data_size"`
	Granularity   int64  `json:"granularity"`
	ALExtentSize  int64  `json:"al_extent_size"`
	ALSlots       int    `json:"al_slots"`
	MaxHotExtents int    `json:"max_hot_extents"`
	// UUID names this device's metadata; Create makes it.
	UUID     UUID        `json:"uuid"`
	Cluster  string      `json:"cluster"`
	Resource string      `json:"resource"`
	Node     string      `json:"node"`
	Peer     string      `json:"peer"`
	Gen      Generations `json:"generations"`
	Flags    Flags       `json:"flags"`
	// Epoch is the last epoch this replica knew of.
	Epoch uint64 `json:"epoch"`
	// PromotedAt is when this node last became primary (Unix
	// nanoseconds, 0 never): the discard-younger-primary policy compares
	// it between split-brain sides.
	PromotedAt int64 `json:"promoted_at"`
}

// Layout returns the layout the superblock describes (MetaOffset is not
// recorded: it depends on where the caller found the metadata).
func (sb Superblock) Layout() (Layout, error) {
	return NewLayout(sb.DataSize, Options{Granularity: sb.Granularity, ALExtentSize: sb.ALExtentSize, ALSlots: sb.ALSlots, MaxHotExtents: sb.MaxHotExtents})
}

// setLayout copies l's parameters into the superblock.
func (sb *Superblock) setLayout(l Layout) {
	sb.DataSize, sb.Granularity, sb.ALExtentSize = l.DataSize, l.Granularity, l.ALExtentSize
	sb.ALSlots, sb.MaxHotExtents, sb.MetaSize = l.ALSlots, l.MaxHotExtents, l.MetaSize()
}

func checkName(what, s string) error {
	if len(s) > MaxNameLen {
		return fmt.Errorf("md: %s name %q is %d bytes, at most %d fit", what, s, len(s), MaxNameLen)
	}
	return nil
}

// encode returns the superblock's 4 KiB block.
func (sb *Superblock) encode() ([]byte, error) {
	l, err := sb.Layout()
	if err != nil {
		return nil, fmt.Errorf("md: encoding superblock: %w", err)
	}
	if sb.MetaSize != l.MetaSize() {
		return nil, fmt.Errorf("md: encoding superblock: metadata size %d, the layout needs %d", sb.MetaSize, l.MetaSize())
	}
	if sb.Flags&^knownFlags != 0 {
		return nil, fmt.Errorf("md: encoding superblock: unknown flags 0x%x", uint32(sb.Flags&^knownFlags))
	}
	names := [4]string{sb.Cluster, sb.Resource, sb.Node, sb.Peer}
	for i, what := range []string{"cluster", "resource", "node", "peer"} {
		if err := checkName(what, names[i]); err != nil {
			return nil, err
		}
	}
	b := make([]byte, BlockSize)
	be := binary.BigEndian
	copy(b[sbMagic:], superMagic)
	be.PutUint32(b[sbVersion:], sb.Version)
	be.PutUint32(b[sbFlags:], uint32(sb.Flags))
	be.PutUint64(b[sbSeq:], sb.Seq)
	be.PutUint64(b[sbMetaSize:], uint64(sb.MetaSize))
	be.PutUint64(b[sbDataSize:], uint64(sb.DataSize))
	be.PutUint32(b[sbGran:], uint32(sb.Granularity))
	be.PutUint32(b[sbALExtent:], uint32(sb.ALExtentSize))
	be.PutUint32(b[sbALSlots:], uint32(sb.ALSlots))
	be.PutUint32(b[sbMaxHot:], uint32(sb.MaxHotExtents))
	copy(b[sbUUID:], sb.UUID[:])
	be.PutUint64(b[sbCurrent:], sb.Gen.Current)
	be.PutUint64(b[sbBitmap:], sb.Gen.Bitmap)
	for i, h := range sb.Gen.History {
		be.PutUint64(b[sbHistory+8*i:], h)
	}
	be.PutUint64(b[sbEpoch:], sb.Epoch)
	be.PutUint64(b[sbPromotedAt:], uint64(sb.PromotedAt))
	for i, n := range names {
		at := sbNames + i*sbNameSize
		b[at] = byte(len(n))
		copy(b[at+1:], n)
	}
	be.PutUint32(b[sbCRC:], crc32.Checksum(b[:sbCRC], castagnoli))
	return b, nil
}

// errBadMagic marks a block that is not a superblock at all.
var errBadMagic = errors.New("no superblock magic")

// decodeSuperblock parses and strictly validates a slot. A wrong version is
// ErrVersion (checked before the CRC, so that a newer format is reported
// as such even if it moved the CRC); any other problem makes the slot
// invalid, with the reason.
func decodeSuperblock(b []byte) (Superblock, error) {
	var sb Superblock
	if len(b) != BlockSize {
		return sb, fmt.Errorf("superblock is %d bytes, not %d", len(b), BlockSize)
	}
	if string(b[sbMagic:sbMagic+8]) != superMagic {
		return sb, errBadMagic
	}
	be := binary.BigEndian
	sb.Version = be.Uint32(b[sbVersion:])
	if sb.Version != Version {
		return sb, fmt.Errorf("%w: the metadata is format version %d, this tandem reads version %d: use a tandem release that knows version %d, or recreate the metadata with create-md --force (which discards it)", ErrVersion, sb.Version, Version, sb.Version)
	}
	if got, want := be.Uint32(b[sbCRC:]), crc32.Checksum(b[:sbCRC], castagnoli); got != want {
		return sb, fmt.Errorf("superblock checksum 0x%08x, want 0x%08x (torn or corrupt)", got, want)
	}
	sb.Flags = Flags(be.Uint32(b[sbFlags:]))
	if u := sb.Flags &^ knownFlags; u != 0 {
		return sb, fmt.Errorf("unknown flags 0x%x", uint32(u))
	}
	sb.Seq = be.Uint64(b[sbSeq:])
	sb.MetaSize = int64(be.Uint64(b[sbMetaSize:]))
	sb.DataSize = int64(be.Uint64(b[sbDataSize:]))
	sb.Granularity = int64(be.Uint32(b[sbGran:]))
	sb.ALExtentSize = int64(be.Uint32(b[sbALExtent:]))
	sb.ALSlots = int(be.Uint32(b[sbALSlots:]))
	sb.MaxHotExtents = int(be.Uint32(b[sbMaxHot:]))
	copy(sb.UUID[:], b[sbUUID:])
	sb.Gen.Current = be.Uint64(b[sbCurrent:])
	sb.Gen.Bitmap = be.Uint64(b[sbBitmap:])
	for i := range sb.Gen.History {
		sb.Gen.History[i] = be.Uint64(b[sbHistory+8*i:])
	}
	sb.Epoch = be.Uint64(b[sbEpoch:])
	sb.PromotedAt = int64(be.Uint64(b[sbPromotedAt:]))
	var names [4]string
	for i := range names {
		field := b[sbNames+i*sbNameSize : sbNames+(i+1)*sbNameSize]
		n := int(field[0])
		if n > MaxNameLen {
			return sb, fmt.Errorf("name %d is %d bytes long, at most %d fit", i, n, MaxNameLen)
		}
		if !allZero(field[1+n:]) {
			return sb, fmt.Errorf("name %d: non-zero bytes after its end", i)
		}
		names[i] = string(field[1 : 1+n])
	}
	sb.Cluster, sb.Resource, sb.Node, sb.Peer = names[0], names[1], names[2], names[3]
	if !allZero(b[sbReserved:sbCRC]) {
		return sb, fmt.Errorf("reserved bytes are not zero")
	}
	l, err := sb.Layout()
	if err != nil {
		return sb, err
	}
	if l.MetaSize() != sb.MetaSize {
		return sb, fmt.Errorf("metadata size %d does not match its layout (%d)", sb.MetaSize, l.MetaSize())
	}
	return sb, nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// hasMagic reports whether a block starts with the superblock magic, valid
// or not: such a slot is tandem's, and Create does not overwrite it
// without Force.
func hasMagic(b []byte) bool { return bytes.HasPrefix(b, []byte(superMagic)) }
