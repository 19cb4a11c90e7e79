// Package wire owns the replication link between the two data nodes of a
// resource: the frame format (a 48-byte checksummed header and a payload,
// optionally compressed) and the handshake that authenticates the peer
// before a single data frame is read. What the messages mean (writes, acks,
// resync, epochs) belongs to the replicate package; here a payload is bytes.
//
// Every error from a Reader means the stream can no longer be trusted: the
// caller drops the connection and reconnects, it never resynchronises
// within a stream.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Magic opens every frame: "TAND".
const Magic uint32 = 0x54414e44

// HeaderSize is the fixed size of a frame header.
const HeaderSize = 48

// DefaultMaxPayload bounds a payload, before and after decompression: the
// largest write the NBD server accepts (32 MiB) plus room for a message
// header inside the payload.
const DefaultMaxPayload = 32<<20 + 64<<10

// MsgType says what a frame carries. The values are on the wire: never
// renumber them, only add.
type MsgType uint8

// Message types.
const (
	// Hello opens the handshake: version, names, challenge, codecs.
	Hello MsgType = 1
	// Auth proves the shared secret (HMAC over both challenges).
	Auth MsgType = 2
	// Refuse ends a handshake: a code and a human-readable reason.
	Refuse MsgType = 3
	// Ready: the dialer accepted the acceptor's proof; data may follow.
	Ready MsgType = 4
	// Write carries data to write at Offset.
	Write MsgType = 5
	// Received acknowledges that a Write arrived (protocol B).
	Received MsgType = 6
	// Written acknowledges that a Write is on the peer's disk (protocol C).
	Written MsgType = 7
	// Trim discards Length bytes at Offset.
	Trim MsgType = 8
	// Zero writes Length zero bytes at Offset.
	Zero MsgType = 9
	// Flush asks for everything written before it to be made durable.
	Flush MsgType = 10
	// Flushed acknowledges a Flush.
	Flushed MsgType = 11
	// Ping and Pong detect a dead link.
	Ping MsgType = 12
	Pong MsgType = 13
	// State exchanges generations, flags and roles; the payload is opaque
	// here.
	State MsgType = 14
	// BitmapChunk carries part of an out-of-sync bitmap.
	BitmapChunk MsgType = 15
	// ResyncRequest asks the sync source for a range.
	ResyncRequest MsgType = 16
	// ResyncData answers a ResyncRequest.
	ResyncData MsgType = 17
	// VerifyRequest asks for the digests of a range.
	VerifyRequest MsgType = 18
	// VerifyDigest answers a VerifyRequest.
	VerifyDigest MsgType = 19
	// Disconnect announces an orderly close.
	Disconnect MsgType = 20
	// ReadRequest asks the peer for Length bytes at Offset: a primary
	// whose disk failed reads from its secondary (version 3).
	ReadRequest MsgType = 21
	// ReadData answers a ReadRequest with the bytes.
	ReadData MsgType = 22

	lastType = ReadData
)

var typeNames = [...]string{
	Hello: "Hello", Auth: "Auth", Refuse: "Refuse", Ready: "Ready",
	Write: "Write", Received: "Received", Written: "Written", Trim: "Trim",
	Zero: "Zero", Flush: "Flush", Flushed: "Flushed", Ping: "Ping",
	Pong: "Pong", State: "State", BitmapChunk: "BitmapChunk",
	ResyncRequest: "ResyncRequest", ResyncData: "ResyncData",
	VerifyRequest: "VerifyRequest", VerifyDigest: "VerifyDigest",
	Disconnect: "Disconnect", ReadRequest: "ReadRequest", ReadData: "ReadData",
}

func (t MsgType) String() string {
	if t.valid() {
		return typeNames[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

func (t MsgType) valid() bool { return t >= Hello && t <= lastType }

// Frame flags.
const (
	// FlagFUA: the write must be durable on the peer before it is acked.
	FlagFUA uint8 = 1 << 0
	// FlagCompressedS2 and FlagCompressedZstd say how the payload on the
	// wire is compressed. The Writer sets them and the Reader clears them;
	// callers never see or set them.
	FlagCompressedS2   uint8 = 1 << 1
	FlagCompressedZstd uint8 = 1 << 2

	flagsCompressed = FlagCompressedS2 | FlagCompressedZstd
	flagsKnown      = FlagFUA | flagsCompressed
)

// Frame is one message on the link.
type Frame struct {
	Type  MsgType
	Flags uint8
	Seq   uint64
	// Epoch is the sender's epoch; the receiver refuses writes from an
	// older one (decided above this package).
	Epoch  uint64
	Offset uint64
	// Length is the number of bytes the message is about (a Trim has a
	// Length and no payload); it is not the payload length.
	Length uint32
	// Payload is uncompressed. A Reader allocates a fresh slice per
	// frame, so the caller owns it.
	Payload []byte
}

// Errors from a Reader. Each one means the peer sent something this node
// cannot trust: drop the connection.
var (
	ErrBadMagic        = errors.New("wire: bad magic (not a tandem replication peer)")
	ErrHeaderChecksum  = errors.New("wire: header checksum mismatch")
	ErrPayloadChecksum = errors.New("wire: payload checksum mismatch")
	ErrTooLarge        = errors.New("wire: payload too large")
	ErrUnknownType     = errors.New("wire: unknown message type")
	// ErrBadFlags: unknown flag bits, a non-zero reserved field, two
	// codecs at once, or a codec the link did not negotiate.
	ErrBadFlags = errors.New("wire: bad frame flags")
	// ErrCorruptPayload: the payload passed its checksum but does not
	// decompress, so the sender is broken or hostile.
	ErrCorruptPayload = errors.New("wire: compressed payload is corrupt")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// header is the decoded fixed part of a frame.
type header struct {
	typ        MsgType
	flags      uint8
	reserved   uint16
	seq        uint64
	epoch      uint64
	offset     uint64
	length     uint32
	payloadLen uint32
	payloadCRC uint32
}

// putHeader encodes h into b and seals it with the header checksum.
func putHeader(b *[HeaderSize]byte, h header) {
	binary.BigEndian.PutUint32(b[0:], Magic)
	b[4] = uint8(h.typ)
	b[5] = h.flags
	binary.BigEndian.PutUint16(b[6:], h.reserved)
	binary.BigEndian.PutUint64(b[8:], h.seq)
	binary.BigEndian.PutUint64(b[16:], h.epoch)
	binary.BigEndian.PutUint64(b[24:], h.offset)
	binary.BigEndian.PutUint32(b[32:], h.length)
	binary.BigEndian.PutUint32(b[36:], h.payloadLen)
	binary.BigEndian.PutUint32(b[40:], h.payloadCRC)
	binary.BigEndian.PutUint32(b[44:], crc32.Checksum(b[:44], castagnoli))
}

// parseHeader checks the header checksum and decodes b; the magic has been
// checked already. Nothing in it is trusted until the checksum matches.
func parseHeader(b *[HeaderSize]byte) (header, error) {
	want := binary.BigEndian.Uint32(b[44:])
	if got := crc32.Checksum(b[:44], castagnoli); got != want {
		return header{}, fmt.Errorf("%w: computed %#08x, header says %#08x", ErrHeaderChecksum, got, want)
	}
	return header{
		typ:        MsgType(b[4]),
		flags:      b[5],
		reserved:   binary.BigEndian.Uint16(b[6:]),
		seq:        binary.BigEndian.Uint64(b[8:]),
		epoch:      binary.BigEndian.Uint64(b[16:]),
		offset:     binary.BigEndian.Uint64(b[24:]),
		length:     binary.BigEndian.Uint32(b[32:]),
		payloadLen: binary.BigEndian.Uint32(b[36:]),
		payloadCRC: binary.BigEndian.Uint32(b[40:]),
	}, nil
}
