package wire

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// compressible returns n bytes that s2 and zstd shrink (text-like runs).
func compressible(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "block %08d of a replicated volume, mostly repetitive text\n", i%97)
	}
	return b.Bytes()[:n]
}

func random(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// rawFrame builds a frame by hand, bypassing the Writer's checks, so tests
// can send what a broken or hostile peer would.
func rawFrame(h header, payload []byte) []byte {
	h.payloadLen = uint32(len(payload))
	h.payloadCRC = crc32.Checksum(payload, castagnoli)
	var hb [HeaderSize]byte
	putHeader(&hb, h)
	return append(hb[:], payload...)
}

func encode(t testing.TB, opts Options, frames ...Frame) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf, opts)
	for _, f := range frames {
		if err := w.Write(f); err != nil {
			t.Fatalf("Write(%s): %v", f.Type, err)
		}
	}
	return buf.Bytes()
}

func sameFrame(t *testing.T, got, want Frame) {
	t.Helper()
	if got.Type != want.Type || got.Flags != want.Flags || got.Seq != want.Seq || got.Epoch != want.Epoch ||
		got.Offset != want.Offset || got.Length != want.Length || !bytes.Equal(got.Payload, want.Payload) {
		t.Fatalf("frame differs:\n got %s flags %#x seq %d epoch %d off %d len %d payload %d bytes\nwant %s flags %#x seq %d epoch %d off %d len %d payload %d bytes",
			got.Type, got.Flags, got.Seq, got.Epoch, got.Offset, got.Length, len(got.Payload),
			want.Type, want.Flags, want.Seq, want.Epoch, want.Offset, want.Length, len(want.Payload))
	}
}

func TestHeaderLayout(t *testing.T) {
	// The layout is the contract in docs/architecture.md; pin it byte by byte.
	b := rawFrame(header{typ: Write, flags: FlagFUA, seq: 0x0102030405060708, epoch: 0x1112131415161718,
		offset: 0x2122232425262728, length: 0x31323334}, []byte("xyz"))
	want := []byte{
		'T', 'A', 'N', 'D', 5, 1, 0, 0,
		1, 2, 3, 4, 5, 6, 7, 8,
		0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
		0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,
		0x31, 0x32, 0x33, 0x34, 0, 0, 0, 3,
	}
	if !bytes.Equal(b[:40], want) {
		t.Fatalf("header bytes 0-39:\n got % x\nwant % x", b[:40], want)
	}
	if got, wantCRC := b[40:44], crc32.Checksum([]byte("xyz"), castagnoli); got[0] != byte(wantCRC>>24) || got[3] != byte(wantCRC) {
		t.Fatalf("payload CRC bytes % x, want %#08x", got, wantCRC)
	}
	hc := crc32.Checksum(b[:44], castagnoli)
	if got := b[44:48]; got[0] != byte(hc>>24) || got[3] != byte(hc) {
		t.Fatalf("header CRC bytes % x, want %#08x", got, hc)
	}
	if len(b) != HeaderSize+3 {
		t.Fatalf("frame is %d bytes, want %d", len(b), HeaderSize+3)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, codec := range []Codec{CodecOff, CodecS2, CodecZstd} {
		t.Run(codec.String(), func(t *testing.T) {
			opts := Options{Codec: codec}
			var frames []Frame
			for typ := Hello; typ <= lastType; typ++ {
				frames = append(frames, Frame{Type: typ, Seq: uint64(typ) * 3, Epoch: 7, Offset: 1 << 40, Length: uint32(typ)})
			}
			frames = append(frames,
				Frame{Type: Write, Flags: FlagFUA, Seq: 100, Epoch: 9, Offset: 4096, Length: 4096, Payload: compressible(4096)},
				Frame{Type: Write, Seq: 101, Offset: 1 << 20, Length: 1 << 20, Payload: compressible(1 << 20)},
				Frame{Type: ResyncData, Seq: 102, Payload: random(t, 64<<10)},
				Frame{Type: State, Seq: 103, Payload: []byte(`{"current":1}`)},
				Frame{Type: Write, Seq: 104, Payload: make([]byte, DefaultMaxPayload)}, // the limit itself passes
			)
			r := NewReader(bytes.NewReader(encode(t, opts, frames...)), opts)
			for _, want := range frames {
				got, err := r.Read()
				if err != nil {
					t.Fatalf("Read (want %s seq %d): %v", want.Type, want.Seq, err)
				}
				sameFrame(t, got, want)
			}
			if _, err := r.Read(); err != io.EOF {
				t.Fatalf("Read at the end: %v, want io.EOF", err)
			}
		})
	}
}

func TestWriterCompressesOnlyWhenItPays(t *testing.T) {
	for _, codec := range []Codec{CodecS2, CodecZstd} {
		t.Run(codec.String(), func(t *testing.T) {
			cases := []struct {
				name    string
				payload []byte
				want    uint8 // compression flag expected on the wire
			}{
				{"compressible", compressible(64 << 10), codec.flag()},
				{"random", random(t, 64<<10), 0},
				{"small", compressible(minCompress - 1), 0},
				{"empty", nil, 0},
			}
			for _, c := range cases {
				b := encode(t, Options{Codec: codec}, Frame{Type: Write, Flags: FlagFUA, Payload: c.payload})
				if got := b[5] & flagsCompressed; got != c.want {
					t.Errorf("%s: compression flags on the wire %#x, want %#x", c.name, got, c.want)
				}
				if b[5]&FlagFUA == 0 {
					t.Errorf("%s: FUA flag lost", c.name)
				}
				if wire := len(b) - HeaderSize; wire > len(c.payload) {
					t.Errorf("%s: %d bytes on the wire for a %d-byte payload", c.name, wire, len(c.payload))
				}
				f, err := NewReader(bytes.NewReader(b), Options{Codec: codec}).Read()
				if err != nil {
					t.Fatalf("%s: Read: %v", c.name, err)
				}
				if !bytes.Equal(f.Payload, c.payload) || f.Flags != FlagFUA {
					t.Errorf("%s: payload or flags (%#x) changed in transit", c.name, f.Flags)
				}
			}
		})
	}
	// With compression off, nothing is ever compressed.
	b := encode(t, Options{}, Frame{Type: Write, Payload: compressible(64 << 10)})
	if b[5] != 0 || len(b) != HeaderSize+64<<10 {
		t.Fatalf("codec off: flags %#x, %d bytes", b[5], len(b))
	}
}

func TestWriterRefuses(t *testing.T) {
	w := NewWriter(io.Discard, Options{MaxPayload: 1024})
	for _, c := range []struct {
		f    Frame
		want error
	}{
		{Frame{Type: 0}, ErrUnknownType},
		{Frame{Type: lastType + 1}, ErrUnknownType},
		{Frame{Type: Write, Flags: FlagCompressedS2}, ErrBadFlags},
		{Frame{Type: Write, Flags: 0x80}, ErrBadFlags},
		{Frame{Type: Write, Payload: make([]byte, 1025)}, ErrTooLarge},
	} {
		if err := w.Write(c.f); !errors.Is(err, c.want) {
			t.Errorf("Write(type %d flags %#x, %d bytes) = %v, want %v", c.f.Type, c.f.Flags, len(c.f.Payload), err, c.want)
		}
	}
}

func TestCorruptHeaderByte(t *testing.T) {
	good := encode(t, Options{}, Frame{Type: Write, Seq: 5, Epoch: 2, Offset: 8192, Length: 100, Payload: random(t, 100)})
	for i := range HeaderSize {
		b := bytes.Clone(good)
		b[i] ^= 0x10
		_, err := NewReader(bytes.NewReader(b), Options{}).Read()
		want := ErrHeaderChecksum
		if i < 4 {
			want = ErrBadMagic
		}
		if !errors.Is(err, want) {
			t.Errorf("byte %d flipped: %v, want %v", i, err, want)
		}
	}
}

func TestCorruptPayloadByte(t *testing.T) {
	for _, codec := range []Codec{CodecOff, CodecS2, CodecZstd} {
		good := encode(t, Options{Codec: codec}, Frame{Type: Write, Payload: compressible(8192)})
		for _, i := range []int{HeaderSize, HeaderSize + 1, (len(good) + HeaderSize) / 2, len(good) - 1} {
			b := bytes.Clone(good)
			b[i] ^= 0x01
			_, err := NewReader(bytes.NewReader(b), Options{Codec: codec}).Read()
			if !errors.Is(err, ErrPayloadChecksum) {
				t.Errorf("%s: payload byte %d flipped: %v, want ErrPayloadChecksum", codec, i-HeaderSize, err)
			}
		}
	}
}

func TestTruncatedFrames(t *testing.T) {
	full := encode(t, Options{}, Frame{Type: Write, Payload: random(t, 300)})
	for n := range len(full) {
		_, err := NewReader(bytes.NewReader(full[:n]), Options{}).Read()
		switch {
		case n == 0:
			if err != io.EOF {
				t.Errorf("empty stream: %v, want io.EOF", err)
			}
		case !errors.Is(err, io.ErrUnexpectedEOF):
			t.Errorf("stream cut after %d of %d bytes: %v, want io.ErrUnexpectedEOF", n, len(full), err)
		}
	}
}

func TestReaderRefusesHeaders(t *testing.T) {
	opts := Options{MaxPayload: 1024, Codec: CodecS2}
	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"type 0", rawFrame(header{typ: 0}, nil), ErrUnknownType},
		{"type past the last", rawFrame(header{typ: lastType + 1}, nil), ErrUnknownType},
		{"type 255", rawFrame(header{typ: 255}, nil), ErrUnknownType},
		{"unknown flag", rawFrame(header{typ: Write, flags: 0x08}, nil), ErrBadFlags},
		{"reserved set", rawFrame(header{typ: Write, reserved: 1}, nil), ErrBadFlags},
		{"two codecs", rawFrame(header{typ: Write, flags: flagsCompressed}, nil), ErrBadFlags},
		{"codec not negotiated", rawFrame(header{typ: Write, flags: FlagCompressedZstd}, nil), ErrBadFlags},
		{"payload over the limit", rawFrame(header{typ: Write}, make([]byte, 1025)), ErrTooLarge},
	} {
		_, err := NewReader(bytes.NewReader(c.b), opts).Read()
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// readMem is the total of bytes allocated so far by the process.
func readMem() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// TestReaderRefusesBeforeAllocating: a header announcing 4 GiB is refused
// from the header alone, without allocating for the payload.
func TestReaderRefusesBeforeAllocating(t *testing.T) {
	var hb [HeaderSize]byte
	putHeader(&hb, header{typ: Write, payloadLen: 0xffffffff})
	before := readMem()
	for range 20 {
		r := NewReader(bytes.NewReader(hb[:]), Options{})
		if _, err := r.Read(); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Read: %v, want ErrTooLarge", err)
		}
	}
	// 20 Readers with their 64 KiB buffers: about 1.3 MiB. One payload
	// allocated for the announced size would be 4 GiB, or 32 MiB if the
	// limit were applied after allocating.
	if grew := readMem() - before; grew > 4<<20 {
		t.Fatalf("refusing 20 oversized headers allocated %d bytes", grew)
	}
}

func TestCompressionBomb(t *testing.T) {
	const max = 64 << 10
	big := make([]byte, 16<<20) // zeros: shrinks to almost nothing
	zenc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zenc.Close()
	// A streamed zstd frame carries no content size, so only the decoder's
	// running limit can stop it.
	var streamed bytes.Buffer
	zw, err := zstd.NewWriter(&streamed)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(big)
	zw.Close()
	for _, c := range []struct {
		name  string
		codec Codec
		p     []byte
	}{
		{"s2", CodecS2, s2.Encode(nil, big)},
		{"zstd with content size", CodecZstd, zenc.EncodeAll(big, nil)},
		{"zstd streamed", CodecZstd, streamed.Bytes()},
		{"s2 just over", CodecS2, s2.Encode(nil, big[:max+1])},
		{"zstd just over", CodecZstd, zenc.EncodeAll(big[:max+1], nil)},
	} {
		if len(c.p) > max {
			t.Fatalf("%s: bomb is %d bytes, does not fit the limit", c.name, len(c.p))
		}
		b := rawFrame(header{typ: Write, flags: c.codec.flag()}, c.p)
		before := readMem()
		_, err := NewReader(bytes.NewReader(b), Options{MaxPayload: max, Codec: c.codec}).Read()
		grew := readMem() - before
		if !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v, want ErrTooLarge", c.name, err)
		}
		if grew > 8<<20 {
			t.Errorf("%s: decoding a %d-byte bomb allocated %d bytes", c.name, len(c.p), grew)
		}
	}
	// Exactly at the limit still works.
	b := rawFrame(header{typ: Write, flags: FlagCompressedS2}, s2.Encode(nil, big[:max]))
	if f, err := NewReader(bytes.NewReader(b), Options{MaxPayload: max, Codec: CodecS2}).Read(); err != nil || len(f.Payload) != max {
		t.Fatalf("payload at the limit: %d bytes, %v", len(f.Payload), err)
	}
}

func TestCorruptCompressedPayload(t *testing.T) {
	// Garbage with a valid CRC: the checksum cannot catch it, the decoder
	// must, and without panicking.
	for _, codec := range []Codec{CodecS2, CodecZstd} {
		garbage := bytes.Repeat([]byte{0xff, 0x00, 0x7f}, 200)
		b := rawFrame(header{typ: Write, flags: codec.flag()}, garbage)
		_, err := NewReader(bytes.NewReader(b), Options{Codec: codec}).Read()
		if !errors.Is(err, ErrCorruptPayload) && !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v, want ErrCorruptPayload", codec, err)
		}
	}
}

func TestReaderErrorIsSticky(t *testing.T) {
	good := encode(t, Options{}, Frame{Type: Ping})
	bad := bytes.Clone(good)
	bad[10] ^= 1
	r := NewReader(bytes.NewReader(append(bad, good...)), Options{})
	_, err1 := r.Read()
	_, err2 := r.Read()
	if !errors.Is(err1, ErrHeaderChecksum) || !errors.Is(err2, ErrHeaderChecksum) {
		t.Fatalf("after a bad header: %v then %v; the good frame behind it must not be read", err1, err2)
	}
}

// TestReaderIdleTimeout: a read deadline that strikes between frames is not
// fatal (callers use it as an idle timer); one inside a frame is.
func TestReaderIdleTimeout(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	r := NewReader(a, Options{})
	a.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := r.Read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle Read: %v, want a deadline error", err)
	}
	a.SetReadDeadline(time.Time{})
	frame := encode(t, Options{}, Frame{Type: Pong, Seq: 3})
	go func() { b.Write(frame) }()
	f, err := r.Read()
	if err != nil || f.Type != Pong || f.Seq != 3 {
		t.Fatalf("Read after an idle timeout: %v %v", f.Type, err)
	}

	// Half a header, then the deadline: the stream is broken for good.
	go func() { b.Write(frame[:10]) }()
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := r.Read(); err == nil {
		t.Fatal("Read of half a header succeeded")
	}
	a.SetReadDeadline(time.Time{})
	go func() { b.Write(frame) }()
	if _, err := r.Read(); err == nil {
		t.Fatal("Read after a timeout inside a frame succeeded; the stream position is unknown")
	}
}

// TestConcurrentWriters: frames from many goroutines arrive whole (the
// header and payload of one frame are never interleaved with another's),
// and every frame is flushed without an explicit Flush.
func TestConcurrentWriters(t *testing.T) {
	for _, codec := range []Codec{CodecOff, CodecS2} {
		t.Run(codec.String(), func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			opts := Options{Codec: codec}
			w := NewWriter(a, opts)
			const writers, each = 8, 50
			var wg sync.WaitGroup
			for g := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						p := compressible(512 + 97*i)
						p[0] = byte(g)
						if err := w.Write(Frame{Type: Write, Epoch: uint64(g), Seq: uint64(i), Payload: p}); err != nil {
							t.Errorf("writer %d: %v", g, err)
							return
						}
					}
				}()
			}
			r := NewReader(b, opts)
			next := make([]uint64, writers)
			for range writers * each {
				b.SetReadDeadline(time.Now().Add(30 * time.Second)) // a lost flush fails instead of hanging
				f, err := r.Read()
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				g := f.Epoch
				if g >= writers || f.Seq != next[g] || f.Payload[0] != byte(g) || len(f.Payload) != 512+97*int(f.Seq) {
					t.Fatalf("frame from writer %d seq %d (want seq %d), %d bytes: mixed up", g, f.Seq, next[g%writers], len(f.Payload))
				}
				next[g]++
			}
			wg.Wait()
		})
	}
}

func TestQueueWaitsForFlush(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, Options{})
	if err := w.Queue(Frame{Type: Ping}); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 0 {
		t.Fatalf("Queue wrote %d bytes at once", buf.Len())
	}
	if err := w.Flush(); err != nil || buf.Len() != HeaderSize {
		t.Fatalf("after Flush: %d bytes, %v", buf.Len(), err)
	}
}

func TestMsgTypeNames(t *testing.T) {
	for typ := Hello; typ <= lastType; typ++ {
		if s := typ.String(); s == "" || strings.HasPrefix(s, "MsgType(") {
			t.Errorf("type %d has no name", typ)
		}
	}
	if s := MsgType(99).String(); s != "MsgType(99)" {
		t.Errorf("unknown type prints %q", s)
	}
}

func TestReaderBuffered(t *testing.T) {
	frames := []Frame{{Type: Ping, Seq: 1}, {Type: Pong, Seq: 2}}
	r := NewReader(bytes.NewReader(encode(t, Options{}, frames...)), Options{})
	if n := r.Buffered(); n != 0 {
		t.Fatalf("Buffered before the first read: %d", n)
	}
	if _, err := r.Read(); err != nil {
		t.Fatal(err)
	}
	if n := r.Buffered(); n != HeaderSize {
		t.Fatalf("Buffered with one frame left: %d, want %d", n, HeaderSize)
	}
	if _, err := r.Read(); err != nil {
		t.Fatal(err)
	}
	if n := r.Buffered(); n != 0 {
		t.Fatalf("Buffered after the last frame: %d", n)
	}
}

// TestReaderRelease: a released payload buffer is reused for a later
// frame of its size class, the later frame still reads its own bytes, and
// buffers of other sizes are ignored.
func TestReaderRelease(t *testing.T) {
	var stream bytes.Buffer
	w := NewWriter(&stream, Options{})
	a, b := bytes.Repeat([]byte{1}, 1<<20), bytes.Repeat([]byte{2}, 1<<20-4096)
	for _, p := range [][]byte{a, b} {
		if err := w.Write(Frame{Type: Write, Seq: 1, Length: uint32(len(p)), Payload: p}); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(&stream, Options{})
	r.Release(make([]byte, 5000)) // not a pooled size: dropped
	f1, err := r.Read()
	if err != nil || !bytes.Equal(f1.Payload, a) {
		t.Fatalf("first frame: %v", err)
	}
	if cap(f1.Payload) != 1<<20 {
		t.Fatalf("payload cap %d, want the 1 MiB class", cap(f1.Payload))
	}
	r.Release(f1.Payload)
	f2, err := r.Read()
	if err != nil || !bytes.Equal(f2.Payload, b) {
		t.Fatalf("second frame: %v", err)
	}
	if cap(f2.Payload) != 1<<20 {
		t.Fatalf("second payload cap %d, want the 1 MiB class", cap(f2.Payload))
	}
}
