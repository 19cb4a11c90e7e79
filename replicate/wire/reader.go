package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"net"
	"sync"

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
	// bufs recycles payload buffers given back with Release, one pool per
	// power-of-two size from minPooled up: without it every 1 MiB write
	// from the peer is a fresh 1 MiB allocation (and its zeroing and
	// garbage collection).
	bufs [poolClasses]sync.Pool // *[]byte
}

const (
	minPooledShift = 12 // 4 KiB: smaller payloads are cheap to allocate
	poolClasses    = 15 // up to 4 KiB << 14 = 64 MiB, above DefaultMaxPayload
)

// poolClass is the pool for a payload of n bytes, or -1 if none.
func poolClass(n int) int {
	if n < 1<<minPooledShift {
		return -1
	}
	c := bits.Len(uint(n-1)) - minPooledShift
	if c >= poolClasses {
		return -1
	}
	return c
}

// alloc returns an n-byte buffer, recycled when one of its size class was
// released.
func (r *Reader) alloc(n int) []byte {
	c := poolClass(n)
	if c < 0 {
		return make([]byte, n)
	}
	if b, _ := r.bufs[c].Get().(*[]byte); b != nil {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(c+minPooledShift))
}

// Release gives back a payload returned by Read once nothing refers to it
// any more, so a later frame can reuse its memory. It is optional, safe
// from any goroutine, and ignores buffers that are not of a pooled size.
func (r *Reader) Release(p []byte) {
	c := poolClass(cap(p))
	if c < 0 || cap(p) != 1<<(c+minPooledShift) {
		return
	}
	p = p[:cap(p)]
	r.bufs[c].Put(&p)
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
// caller (who may hand it back with Release). io.EOF means the peer closed cleanly between frames. Any other
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
	payload := r.alloc(int(h.payloadLen))
	if _, err := io.ReadFull(r.br, payload); err != nil {
		return Frame{}, true, fmt.Errorf("wire: reading %s payload (%d bytes): %w", h.typ, h.payloadLen, unexpected(err))
	}
	if got := crc32.Checksum(payload, castagnoli); got != h.payloadCRC {
		return Frame{}, true, fmt.Errorf("%w: %s frame seq %d: computed %#08x, header says %#08x",
			ErrPayloadChecksum, h.typ, h.seq, got, h.payloadCRC)
	}
	switch h.flags & flagsCompressed {
	case FlagCompressedS2:
		raw := payload
		payload, err = decompressS2(raw, r.max)
		r.Release(raw) // the decompressed bytes are a copy
		if err != nil {
			return Frame{}, true, fmt.Errorf("wire: %s frame seq %d: %w", h.typ, h.seq, err)
		}
	case FlagCompressedZstd:
		if r.zdec == nil {
			if r.zdec, err = newZstdDecoder(r.max); err != nil {
				return Frame{}, true, fmt.Errorf("wire: creating zstd decoder: %w", err)
			}
		}
		raw := payload
		payload, err = decompressZstd(r.zdec, raw, r.max)
		r.Release(raw)
		if err != nil {
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
