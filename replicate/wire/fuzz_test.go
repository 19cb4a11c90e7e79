package wire

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
)

// fuzzMax keeps each fuzz input's possible allocation small, so the
// fuzzer can run many iterations; the bound is the property checked.
const fuzzMax = 64 << 10

// FuzzReader feeds arbitrary bytes to a Reader: it must never panic,
// never return a payload above the limit, and stop at the first error.
// The first byte picks the codec the link negotiated.
func FuzzReader(f *testing.F) {
	seed := func(codec Codec, frames ...Frame) []byte {
		return append([]byte{byte(codec)}, encode(f, Options{Codec: codec}, frames...)...)
	}
	f.Add(seed(CodecOff, Frame{Type: Write, Seq: 1, Payload: []byte("hello")}, Frame{Type: Flush, Seq: 2}))
	f.Add(seed(CodecS2, Frame{Type: Write, Payload: compressible(4096)}))
	f.Add(seed(CodecZstd, Frame{Type: ResyncData, Payload: compressible(4096)}))
	f.Add(append([]byte{byte(CodecS2)}, rawFrame(header{typ: Write, flags: FlagCompressedS2}, s2.Encode(nil, make([]byte, 1<<20)))...))
	f.Add([]byte{0, 'T', 'A', 'N', 'D'})
	f.Add([]byte("\x00GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		codec := Codec(data[0] % 3)
		r := NewReader(bytes.NewReader(data[1:]), Options{MaxPayload: fuzzMax, Codec: codec})
		for range 1000 {
			fr, err := r.Read()
			if err != nil {
				if _, again := r.Read(); again == nil {
					t.Fatalf("Read succeeded after %v", err)
				}
				return
			}
			if len(fr.Payload) > fuzzMax {
				t.Fatalf("%s payload of %d bytes, limit %d", fr.Type, len(fr.Payload), fuzzMax)
			}
			if !fr.Type.valid() || fr.Flags&^FlagFUA != 0 {
				t.Fatalf("frame type %d flags %#x passed the checks", fr.Type, fr.Flags)
			}
			// What was read re-encodes to a frame that reads back the same.
			back, err := NewReader(bytes.NewReader(encode(t, Options{Codec: codec, MaxPayload: fuzzMax}, fr)),
				Options{Codec: codec, MaxPayload: fuzzMax}).Read()
			if err != nil || back.Type != fr.Type || back.Seq != fr.Seq || !bytes.Equal(back.Payload, fr.Payload) {
				t.Fatalf("re-encoding a %s frame: %v", fr.Type, err)
			}
		}
	})
}

// FuzzHandshake plays an arbitrary peer against a real Handshake: the
// fuzz input is everything the peer sends. Without the secret (and with a
// fresh challenge every time) no input may ever produce a link. The first
// byte picks the role of the node under test.
func FuzzHandshake(f *testing.F) {
	_, hello := rawHello("alpha", Version)
	_, helloB := rawHello("beta", Version)
	frames := func(fs ...Frame) []byte { return encode(f, Options{}, fs...) }
	f.Add(append([]byte{0}, frames(Frame{Type: Hello, Payload: hello})...))
	f.Add(append([]byte{0}, frames(Frame{Type: Hello, Payload: hello}, Frame{Type: Auth, Payload: make([]byte, 32)}, Frame{Type: Ready})...))
	f.Add(append([]byte{0}, frames(Frame{Type: Hello, Payload: hello}, Frame{Type: Ready}, Frame{Type: Write, Payload: []byte("x")})...))
	f.Add(append([]byte{0}, frames(Frame{Type: Hello, Payload: []byte{0, 0, 0, 0}})...))
	f.Add(append([]byte{1}, frames(Frame{Type: Hello, Payload: helloB}, Frame{Type: Auth, Payload: make([]byte, 32)})...))
	f.Add(append([]byte{1}, frames(Frame{Type: Refuse, Payload: []byte("\x05authentication failed")})...))
	f.Add([]byte{0, 0x16, 0x03, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		cfg := testConfig("beta", "alpha", false)
		if data[0]&1 == 1 {
			cfg = testConfig("alpha", "beta", true)
		}
		cfg.Timeout = 5 * time.Second
		mine, theirs := net.Pipe()
		defer theirs.Close()
		// One goroutine sends the input, another drains what the node
		// says, so a synchronous pipe never blocks the handshake.
		go func() {
			theirs.Write(data[1:])
			theirs.Close()
		}()
		go io.Copy(io.Discard, theirs)
		c, err := Handshake(context.Background(), mine, cfg)
		if err == nil {
			c.Close()
			t.Fatal("handshake succeeded with a peer that does not know the secret")
		}
		if errors.Is(err, ErrConfig) {
			t.Fatalf("config error: %v", err)
		}
	})
}

// FuzzRoundTrip: any frame the Writer accepts reads back identical.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(Write), uint8(FlagFUA), uint64(1), uint64(2), uint64(3), uint32(4), []byte("payload"), uint8(0))
	f.Add(uint8(ResyncData), uint8(0), uint64(0), uint64(0), uint64(0), uint32(0), compressible(2048), uint8(1))
	f.Add(uint8(State), uint8(0), uint64(0), uint64(0), uint64(0), uint32(0), compressible(2048), uint8(2))
	f.Fuzz(func(t *testing.T, typ, flags uint8, seq, epoch, off uint64, length uint32, payload []byte, codec uint8) {
		opts := Options{Codec: Codec(codec % 3), MaxPayload: fuzzMax}
		in := Frame{Type: MsgType(typ), Flags: flags, Seq: seq, Epoch: epoch, Offset: off, Length: length, Payload: payload}
		var buf bytes.Buffer
		if err := NewWriter(&buf, opts).Write(in); err != nil {
			if in.Type.valid() && flags&^FlagFUA == 0 && len(payload) <= fuzzMax {
				t.Fatalf("Write refused a valid frame: %v", err)
			}
			return
		}
		out, err := NewReader(&buf, opts).Read()
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if len(in.Payload) == 0 {
			in.Payload = nil
		}
		sameFrame(t, out, in)
	})
}
