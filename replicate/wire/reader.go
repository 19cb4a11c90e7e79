package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"

	"github.com/klauspost/compress/zstd"
)

// Options configure a Reader or a Writer. Both ends of a link use the same
// values (the handshake negotiates the codec).
type Options struct {
	// MaxPayload bounds a payload on the wire and after decompression;
	// 0 means DefaultMaxPayload.
	MaxPayload int
	// Codec: the Writer compresses with it; the Reader accepts payloads
	// compressed with it and refuses any other codec.
	Codec Codec
}

func (o Options) maxPayload() int {
	if o.MaxPayload <= 0 {
		return DefaultMaxPayload
	}
	return o.MaxPayload
}

// readBufferSize: large enough to take many small frames (acks) per read
// system call; large payloads bypass the buffer.
const readBufferSize = 64 << 10

// Reader decodes frames from a stream. It is not safe for concurrent use:
// one goroutine receives.
type Reader struct {
	br    *bufio.Reader
	max   int
	codec Codec
	zdec  *zstd.Decoder
	// err is sticky: after a broken frame the stream position is unknown.
	err error
}

// NewReader reads frames from r.
func NewReader(r io.Reader, opts Options) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, readBufferSize), max: opts.maxPayload(), codec: opts.Codec}
}

// setOptions changes the limits in place, keeping whatever the buffer
// already holds: the handshake reads with tight limits, and the peer's
// first data frames may already be buffered when it ends.
func (r *Reader) setOptions(opts Options) {
	r.max, r.codec = opts.maxPayload(), opts.Codec
	r.closeDecoder()
}

func (r *Reader) closeDecoder() {
	if r.zdec != nil {
		r.zdec.Close()
		r.zdec = nil
	}
}

// Buffered is the number of bytes already read from the stream and not
// yet returned as frames: 0 means the next Read blocks on the network, so
// a receiver can handle the frame it has inline instead of handing it to
// another goroutine.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// Read returns the next frame, its payload decompressed and owned by the
// caller. io.EOF means the peer closed cleanly between frames. Any other
// error is final, except a timeout that struck before the first byte of a
// frame (a read deadline used as an idle timer).
func (r *Reader) Read() (Frame, error) {
	if r.err != nil {
		return Frame{}, r.err
	}
	f, sticky, err := r.read()
	if err != nil && sticky {
		r.err = err
	}
	return f, err
}

func (r *Reader) read() (f Frame, sticky bool, err error) {
	var hb [HeaderSize]byte
	// The magic is checked on its own first, so a stranger (an HTTP probe,
	// a TLS client on a plaintext port) is turned away after four bytes
	// instead of waiting for a full header that may never come.
	n, err := io.ReadFull(r.br, hb[:4])
	if err != nil {
		switch {
		case n == 0 && errors.Is(err, io.EOF):
			return Frame{}, true, io.EOF
		case n == 0 && isTimeout(err):
			return Frame{}, false, fmt.Errorf("wire: waiting for a frame: %w", err)
		}
		return Frame{}, true, fmt.Errorf("wire: reading frame header: %w", err)
	}
	if m := binary.BigEndian.Uint32(hb[:4]); m != Magic {
		return Frame{}, true, fmt.Errorf("%w: got %#08x", ErrBadMagic, m)
	}
	if _, err := io.ReadFull(r.br, hb[4:]); err != nil {
		return Frame{}, true, fmt.Errorf("wire: reading frame header: %w", unexpected(err))
	}
	h, err := parseHeader(&hb)
	if err != nil {
		return Frame{}, true, err
	}
	if err := r.check(h); err != nil {
		return Frame{}, true, err
	}
	// Allocation happens only now, bounded by r.max, from a header whose
	// checksum, type and flags are valid.
	payload := make([]byte, h.payloadLen)
	if _, err := io.ReadFull(r.br, payload); err != nil {
		return Frame{}, true, fmt.Errorf("wire: reading %s payload (%d bytes): %w", h.typ, h.payloadLen, unexpected(err))
	}
	if got := crc32.Checksum(payload, castagnoli); got != h.payloadCRC {
		return Frame{}, true, fmt.Errorf("%w: %s frame seq %d: computed %#08x, header says %#08x",
			ErrPayloadChecksum, h.typ, h.seq, got, h.payloadCRC)
	}
	switch h.flags & flagsCompressed {
	case FlagCompressedS2:
		if payload, err = decompressS2(payload, r.max); err != nil {
			return Frame{}, true, fmt.Errorf("wire: %s frame seq %d: %w", h.typ, h.seq, err)
		}
	case FlagCompressedZstd:
		if r.zdec == nil {
			if r.zdec, err = newZstdDecoder(r.max); err != nil {
				return Frame{}, true, fmt.Errorf("wire: creating zstd decoder: %w", err)
			}
		}
		if payload, err = decompressZstd(r.zdec, payload, r.max); err != nil {
			return Frame{}, true, fmt.Errorf("wire: %s frame seq %d: %w", h.typ, h.seq, err)
		}
	}
	if len(payload) == 0 {
		payload = nil
	}
	return Frame{
		Type:    h.typ,
		Flags:   h.flags &^ flagsCompressed,
		Seq:     h.seq,
		Epoch:   h.epoch,
		Offset:  h.offset,
		Length:  h.length,
		Payload: payload,
	}, false, nil
}

// check validates a header before anything is allocated for it.
func (r *Reader) check(h header) error {
	if !h.typ.valid() {
		return fmt.Errorf("%w: %d", ErrUnknownType, uint8(h.typ))
	}
	if h.reserved != 0 || h.flags&^flagsKnown != 0 {
		return fmt.Errorf("%w: flags %#02x, reserved %#04x", ErrBadFlags, h.flags, h.reserved)
	}
	if c := h.flags & flagsCompressed; c != 0 && c != r.codec.flag() {
		return fmt.Errorf("%w: %s frame compressed (flags %#02x) but the link uses %s", ErrBadFlags, h.typ, h.flags, r.codec)
	}
	// Compressing never grows a payload (the Writer sends it raw then),
	// so the wire length has the same bound as the decompressed one.
	if int64(h.payloadLen) > int64(r.max) {
		return fmt.Errorf("%w: %s frame announces %d bytes, limit %d", ErrTooLarge, h.typ, h.payloadLen, r.max)
	}
	return nil
}

// unexpected turns a clean EOF inside a frame into the truncation it is.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
