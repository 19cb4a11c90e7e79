// Package md owns a replica's on-disk metadata: the superblock in two
// alternating checksummed slots, the activity log (write-intent ring of hot
// extents) and the out-of-sync bitmap. The format is specified in
// docs/architecture.md ("On-disk metadata"); all integers are big-endian
// and every block is 4 KiB with a CRC32C (Castagnoli) in its last 4 bytes.
//
// md never reinitialises anything on its own: metadata it cannot read is
// reported as corrupt, and only Create (tandem create-md) writes a new one.
package md

import (
	"errors"
	"fmt"
)

// BlockSize is the unit of every metadata structure.
const BlockSize = 4096

const (
	// DefaultGranularity is the data covered by one bitmap bit.
	DefaultGranularity = 4096
	// DefaultALExtentSize is the data covered by one activity-log extent.
	DefaultALExtentSize = 4 << 20
	// DefaultALSlots is the number of transaction blocks in the AL ring.
	DefaultALSlots = 16
	// MaxHotExtentsLimit is what one AL transaction block can hold: 4096
	// bytes less magic (8), sequence (8), count (4) and CRC (4), at 4
	// bytes per extent number.
	MaxHotExtentsLimit = (BlockSize - 24) / 4
	// DefaultMaxHotExtents fills the transaction block.
	DefaultMaxHotExtents = MaxHotExtentsLimit

	maxGranularity  = 1 << 30
	maxALExtentSize = 1 << 30
	maxALSlots      = 1024
	// pageBytes are the bitmap bytes in one 4 KiB block (the rest is its
	// CRC); pageBits the bits.
	pageBytes = BlockSize - 4
	pageBits  = pageBytes * 8
)

var (
	// ErrLayout: the options or sizes do not make a valid layout.
	ErrLayout = errors.New("md: invalid layout")
	// ErrTooSmall: the device cannot hold the metadata (and some data).
	ErrTooSmall = errors.New("md: device too small")
)

// Options tune the layout; zero values take the defaults.
type Options struct {
	// Granularity is the data bytes per bitmap bit: a power of two, at
	// least 4096 (default 4 KiB).
	Granularity int64
	// ALExtentSize is the data bytes per activity-log extent: a power of
	// two, at least 4096 (default 4 MiB).
	ALExtentSize int64
	// ALSlots is the number of blocks in the activity-log ring, at least 2
	// so that a torn transaction never destroys the newest valid one
	// (default 16).
	ALSlots int
	// MaxHotExtents bounds the hot set, at most MaxHotExtentsLimit
	// (default). More hot extents mean fewer AL writes and more to resync
	// after a crash of the primary.
	MaxHotExtents int
}

// Layout places the metadata of a data area of DataSize bytes.
type Layout struct {
	DataSize      int64 `json:"data_size"`
	Granularity   int64 `json:"granularity"`
	ALExtentSize  int64 `json:"al_extent_size"`
	ALSlots       int   `json:"al_slots"`
	MaxHotExtents int   `json:"max_hot_extents"`
	// MetaOffset is where the metadata starts on the device that holds
	// it: DataSize for internal metadata (right after the data, so that
	// every block stays 4 KiB aligned), 0 in an external file.
	MetaOffset int64 `json:"meta_offset"`
}

func (o Options) withDefaults() Options {
	if o.Granularity == 0 {
		o.Granularity = DefaultGranularity
	}
	if o.ALExtentSize == 0 {
		o.ALExtentSize = DefaultALExtentSize
	}
	if o.ALSlots == 0 {
		o.ALSlots = DefaultALSlots
	}
	if o.MaxHotExtents == 0 {
		o.MaxHotExtents = DefaultMaxHotExtents
	}
	return o
}

func powerOfTwo(v int64) bool { return v > 0 && v&(v-1) == 0 }

// NewLayout returns the layout of external metadata for dataSize bytes of
// data.
func NewLayout(dataSize int64, opts Options) (Layout, error) {
	o := opts.withDefaults()
	l := Layout{DataSize: dataSize, Granularity: o.Granularity, ALExtentSize: o.ALExtentSize, ALSlots: o.ALSlots, MaxHotExtents: o.MaxHotExtents}
	if err := l.validate(); err != nil {
		return Layout{}, err
	}
	return l, nil
}

func (l Layout) validate() error {
	switch {
	case l.DataSize <= 0:
		return fmt.Errorf("%w: data size %d is not positive", ErrLayout, l.DataSize)
	case !powerOfTwo(l.Granularity) || l.Granularity < 4096 || l.Granularity > maxGranularity:
		return fmt.Errorf("%w: bitmap granularity %d is not a power of two from 4 KiB to 1 GiB", ErrLayout, l.Granularity)
	case !powerOfTwo(l.ALExtentSize) || l.ALExtentSize < 4096 || l.ALExtentSize > maxALExtentSize:
		return fmt.Errorf("%w: activity-log extent size %d is not a power of two from 4 KiB to 1 GiB", ErrLayout, l.ALExtentSize)
	case l.ALSlots < 2 || l.ALSlots > maxALSlots:
		return fmt.Errorf("%w: %d activity-log slots, want 2 to %d", ErrLayout, l.ALSlots, maxALSlots)
	case l.MaxHotExtents < 1 || l.MaxHotExtents > MaxHotExtentsLimit:
		return fmt.Errorf("%w: %d hot extents, want 1 to %d", ErrLayout, l.MaxHotExtents, MaxHotExtentsLimit)
	case l.MetaOffset < 0:
		return fmt.Errorf("%w: negative metadata offset %d", ErrLayout, l.MetaOffset)
	}
	// Extent numbers are 32 bits on disk; the metadata size must fit an
	// int64 (it does for any data size whose extents fit, but say so).
	if n := ceilDiv(l.DataSize, l.ALExtentSize); n > 1<<32 {
		return fmt.Errorf("%w: %d activity-log extents of %d bytes exceed 2^32; use larger extents", ErrLayout, n, l.ALExtentSize)
	}
	return nil
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// Bits is the number of bitmap bits: one per Granularity bytes of data, the
// last one possibly covering less.
func (l Layout) Bits() int64 { return ceilDiv(l.DataSize, l.Granularity) }

// BitmapPages is the number of 4 KiB bitmap blocks (4092 bytes of bits and
// a CRC each).
func (l Layout) BitmapPages() int64 { return ceilDiv(l.Bits(), pageBits) }

// Extents is the number of activity-log extents the data spans.
func (l Layout) Extents() int64 { return ceilDiv(l.DataSize, l.ALExtentSize) }

// ALOffset is where the activity-log ring starts in the metadata area.
func (l Layout) ALOffset() int64 { return 2 * BlockSize }

// BitmapOffset is where the bitmap starts in the metadata area.
func (l Layout) BitmapOffset() int64 { return l.ALOffset() + int64(l.ALSlots)*BlockSize }

// MetaSize is the size of the metadata area: two superblock slots, the AL
// ring and the bitmap.
func (l Layout) MetaSize() int64 { return l.BitmapOffset() + l.BitmapPages()*BlockSize }

// Options returns the options the layout was made with.
func (l Layout) Options() Options {
	return Options{Granularity: l.Granularity, ALExtentSize: l.ALExtentSize, ALSlots: l.ALSlots, MaxHotExtents: l.MaxHotExtents}
}

// InternalLayout places metadata inside a device of deviceSize bytes: the
// data area is the largest multiple of 4 KiB that leaves room for its own
// metadata behind it; the metadata follows the data (MetaOffset), and what
// is left at the very end (less than a few KiB) is unused.
func InternalLayout(deviceSize int64, opts Options) (Layout, error) {
	o := opts.withDefaults()
	meta := func(data int64) (int64, error) {
		l, err := NewLayout(data, o)
		if err != nil {
			return 0, err
		}
		return l.MetaSize(), nil
	}
	if deviceSize <= 0 {
		return Layout{}, fmt.Errorf("%w: device size %d", ErrTooSmall, deviceSize)
	}
	m, err := meta(deviceSize)
	if err != nil {
		return Layout{}, err
	}
	data := (deviceSize - m) / BlockSize * BlockSize
	if data <= 0 {
		return Layout{}, fmt.Errorf("%w: %d bytes cannot hold %d bytes of metadata and data", ErrTooSmall, deviceSize, m)
	}
	// The metadata shrank with the data, which may leave room for a few
	// more data blocks; the metadata grows by at most a page per 128 MiB
	// of data (at 4 KiB granularity), so this takes a handful of steps.
	for range 64 {
		next := data + BlockSize
		m, err := meta(next)
		if err != nil || next+m > deviceSize {
			break
		}
		data = next
	}
	l, err := NewLayout(data, o)
	if err != nil {
		return Layout{}, err
	}
	l.MetaOffset = data
	return l, nil
}
