package wire

import (
	"errors"
	"fmt"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Codec is a payload compression negotiated for a link.
type Codec uint8

// Codecs. The values appear in Hello (as the wanted codec and as bits of
// the supported set): never renumber them.
const (
	CodecOff  Codec = 0
	CodecS2   Codec = 1
	CodecZstd Codec = 2
)

// supportedCodecs is the set this build can decode, as Hello announces it.
const supportedCodecs = 1<<CodecS2 | 1<<CodecZstd

// Feature flags ride in the upper half of Hello's codec word: a build
// that predates one ignores its bit (negotiation only looks at the
// codec's own bit), so a message the flag announces is sent only to a
// peer that has it, and two binaries of one protocol version still
// connect during a rolling upgrade.
const (
	// FeatureTargetPause: the peer, as sync source, pauses its resync
	// when the target asks (State kind 11).
	FeatureTargetPause uint32 = 1 << 16
	// FeatureAttach: the peer, as secondary, syncs a new disk attached
	// under a diskless primary while it serves that primary's I/O
	// (attach-disk; replicate/attach.go).
	FeatureAttach uint32 = 1 << 17
	// FeatureResize: the peer, as secondary, grows its disk when the
	// primary resizes the volume (State kinds 15 and 16;
	// replicate/resize.go).
	FeatureResize uint32 = 1 << 18
)

// features is what this build announces.
const features = FeatureTargetPause | FeatureAttach | FeatureResize

// ParseCodec reads the configuration spelling: "off" (or empty), "s2",
// "zstd".
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "", "off":
		return CodecOff, nil
	case "s2":
		return CodecS2, nil
	case "zstd":
		return CodecZstd, nil
	}
	return CodecOff, fmt.Errorf("wire: unknown compression %q (want off, s2 or zstd)", s)
}

func (c Codec) String() string {
	switch c {
	case CodecOff:
		return "off"
	case CodecS2:
		return "s2"
	case CodecZstd:
		return "zstd"
	}
	return fmt.Sprintf("Codec(%d)", uint8(c))
}

// flag is the frame flag that marks a payload compressed with c.
func (c Codec) flag() uint8 {
	switch c {
	case CodecS2:
		return FlagCompressedS2
	case CodecZstd:
		return FlagCompressedZstd
	}
	return 0
}

// minCompress: below this, compression saves too little to pay for the
// work on both sides (and acks, pings, states are all smaller).
const minCompress = 512

// newZstdEncoder favours speed: the link is usually faster than zstd's
// better levels, and s2 is the choice when it is not.
func newZstdEncoder() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(2),
		zstd.WithEncoderCRC(false)) // the frame has its own CRC32C
}

// newZstdDecoder bounds what a single payload may inflate to, so a small
// hostile frame cannot make this node allocate more than max bytes.
func newZstdDecoder(max int) (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderMaxMemory(uint64(max)),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true))
}

// decompressS2 checks the announced size against max before allocating.
func decompressS2(p []byte, max int) ([]byte, error) {
	n, err := s2.DecodedLen(p)
	if err != nil {
		return nil, fmt.Errorf("%w: s2: %v", ErrCorruptPayload, err)
	}
	if n > max {
		return nil, fmt.Errorf("%w: s2 payload inflates to %d bytes, limit %d", ErrTooLarge, n, max)
	}
	out, err := s2.Decode(make([]byte, n), p)
	if err != nil {
		return nil, fmt.Errorf("%w: s2: %v", ErrCorruptPayload, err)
	}
	return out, nil
}

// decompressZstd relies on the decoder's memory limit (newZstdDecoder).
func decompressZstd(d *zstd.Decoder, p []byte, max int) ([]byte, error) {
	out, err := d.DecodeAll(p, nil)
	switch {
	case errors.Is(err, zstd.ErrDecoderSizeExceeded), errors.Is(err, zstd.ErrWindowSizeExceeded):
		return nil, fmt.Errorf("%w: zstd payload inflates beyond %d bytes", ErrTooLarge, max)
	case err != nil:
		return nil, fmt.Errorf("%w: zstd: %v", ErrCorruptPayload, err)
	case len(out) > max: // belt and braces: the limit is the contract here
		return nil, fmt.Errorf("%w: zstd payload inflates to %d bytes, limit %d", ErrTooLarge, len(out), max)
	}
	return out, nil
}
