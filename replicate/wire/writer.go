package wire

import (
	"bufio"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// writeBufferSize holds many small frames (acks, pings, trims) per write
// system call; large payloads go around it.
const writeBufferSize = 64 << 10

// Writer encodes frames onto a stream. It is safe for concurrent use.
//
// Flushing: Write flushes unless another Write is already waiting for the
// lock, in which case that one flushes after adding its own frame. Under
// load frames from concurrent senders share system calls (group commit);
// a lone frame goes out at once, because a replicated write waits for its
// ack and a frame held back in a buffer is pure latency. A sender that
// knows more frames follow uses Queue and then Flush.
type Writer struct {
	mu      sync.Mutex
	bw      *bufio.Writer
	waiting atomic.Int32
	max     int
	codec   Codec

	zencOnce sync.Once
	zenc     *zstd.Encoder
	zencErr  error

	scratch sync.Pool // *[]byte compression buffers
}

// NewWriter writes frames to w.
func NewWriter(w io.Writer, opts Options) *Writer {
	return &Writer{bw: bufio.NewWriterSize(w, writeBufferSize), max: opts.maxPayload(), codec: opts.Codec}
}

// setOptions is called by the handshake before the Writer is shared.
func (w *Writer) setOptions(opts Options) {
	w.max, w.codec = opts.maxPayload(), opts.Codec
}

// Write sends f and flushes it, unless a concurrent Write will (see
// Writer). f.Flags must not carry compression flags: the Writer decides.
func (w *Writer) Write(f Frame) error {
	return w.write(f, true)
}

// Queue buffers f without flushing; it goes out with the next Write or
// Flush, or when the buffer fills.
func (w *Writer) Queue(f Frame) error {
	return w.write(f, false)
}

// Flush sends whatever is buffered.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.bw.Flush(); err != nil {
		return fmt.Errorf("wire: flushing frames: %w", err)
	}
	return nil
}

func (w *Writer) write(f Frame, flush bool) error {
	if !f.Type.valid() {
		return fmt.Errorf("wire: writing frame: %w: %d", ErrUnknownType, uint8(f.Type))
	}
	if f.Flags&^flagsKnown != 0 || f.Flags&flagsCompressed != 0 {
		return fmt.Errorf("wire: writing %s frame: %w: caller set %#02x (compression flags belong to the Writer)", f.Type, ErrBadFlags, f.Flags)
	}
	if len(f.Payload) > w.max || len(f.Payload) > math.MaxUint32 {
		return fmt.Errorf("wire: writing %s frame: %w: %d bytes, limit %d", f.Type, ErrTooLarge, len(f.Payload), w.max)
	}
	// Compression runs before the lock so concurrent senders compress in
	// parallel; only the copy into the stream is serialised.
	payload, flags, buf, err := w.compress(f.Payload)
	if err != nil {
		return fmt.Errorf("wire: writing %s frame: %w", f.Type, err)
	}
	if buf != nil {
		defer w.scratch.Put(buf)
	}
	var hb [HeaderSize]byte
	putHeader(&hb, header{
		typ:        f.Type,
		flags:      f.Flags | flags,
		seq:        f.Seq,
		epoch:      f.Epoch,
		offset:     f.Offset,
		length:     f.Length,
		payloadLen: uint32(len(payload)),
		payloadCRC: crc32.Checksum(payload, castagnoli),
	})

	w.waiting.Add(1)
	w.mu.Lock()
	w.waiting.Add(-1)
	defer w.mu.Unlock()
	if _, err := w.bw.Write(hb[:]); err != nil {
		return fmt.Errorf("wire: writing %s frame header: %w", f.Type, err)
	}
	if _, err := w.bw.Write(payload); err != nil {
		return fmt.Errorf("wire: writing %s payload: %w", f.Type, err)
	}
	// A waiting writer will flush after its own frame, so this one can
	// leave the bytes in the buffer and the two share a system call.
	if flush && w.waiting.Load() == 0 {
		if err := w.bw.Flush(); err != nil {
			return fmt.Errorf("wire: flushing %s frame: %w", f.Type, err)
		}
	}
	return nil
}

// compress returns the payload to send and its compression flag. It keeps
// the raw payload when it is small or does not shrink: compressed data
// then never exceeds the raw size, which the Reader's bound relies on. buf
// is a scratch buffer to give back to the pool once the bytes are written.
func (w *Writer) compress(p []byte) (out []byte, flag uint8, buf *[]byte, err error) {
	if w.codec == CodecOff || len(p) < minCompress {
		return p, 0, nil, nil
	}
	buf, _ = w.scratch.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	switch w.codec {
	case CodecS2:
		if need := s2.MaxEncodedLen(len(p)); cap(*buf) < need {
			*buf = make([]byte, need)
		}
		*buf = s2.Encode((*buf)[:cap(*buf)], p)
	case CodecZstd:
		w.zencOnce.Do(func() { w.zenc, w.zencErr = newZstdEncoder() })
		if w.zencErr != nil {
			w.scratch.Put(buf)
			return nil, 0, nil, fmt.Errorf("creating zstd encoder: %w", w.zencErr)
		}
		*buf = w.zenc.EncodeAll(p, (*buf)[:0])
	default:
		w.scratch.Put(buf)
		return nil, 0, nil, fmt.Errorf("unknown codec %s", w.codec)
	}
	if len(*buf) >= len(p) {
		w.scratch.Put(buf)
		return p, 0, nil, nil
	}
	return *buf, w.codec.flag(), buf, nil
}

// close releases the zstd encoder's memory.
func (w *Writer) close() {
	w.zencOnce.Do(func() {})
	if w.zenc != nil {
		w.zenc.Close()
	}
}
