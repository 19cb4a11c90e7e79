package wire

import (
	"fmt"
	"net"
	"testing"
)

// BenchmarkLink measures frames written and read over loopback TCP, one
// sender calling Write (a flush per frame, the worst case for small
// frames) and one receiver. MB/s is payload bytes per second: what a
// resync could carry. "text" compresses about 10x, "random" not at all
// (the Writer then sends it raw after trying).
func BenchmarkLink(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		for _, codec := range []Codec{CodecOff, CodecS2, CodecZstd} {
			for _, data := range []string{"text", "random"} {
				if codec == CodecOff && data == "random" {
					continue // same as text without compression
				}
				name := fmt.Sprintf("%dKiB/%s/%s", size>>10, codec, data)
				b.Run(name, func(b *testing.B) {
					payload := compressible(size)
					if data == "random" {
						payload = random(b, size)
					}
					benchLink(b, Options{Codec: codec}, payload, 1)
				})
			}
		}
	}
	// Replicated writes at queue depth 32 come from many goroutines: their
	// frames share flushes (see Writer).
	b.Run("4KiB/off/text/32-senders", func(b *testing.B) {
		benchLink(b, Options{}, compressible(4<<10), 32)
	})
}

func benchLink(b *testing.B, opts Options, payload []byte, senders int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	out, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	in, ok := <-accepted
	if !ok {
		b.Fatal("accept failed")
	}
	defer in.Close()

	w, r := NewWriter(out, opts), NewReader(in, opts)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	errc := make(chan error, senders)
	for s := range senders {
		go func() {
			for i := s; i < b.N; i += senders {
				if err := w.Write(Frame{Type: Write, Seq: uint64(i), Length: uint32(len(payload)), Payload: payload}); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for i := range b.N {
		f, err := r.Read()
		if err != nil {
			b.Fatalf("Read %d: %v", i, err)
		}
		if len(f.Payload) != len(payload) {
			b.Fatalf("frame %d: %d bytes", i, len(f.Payload))
		}
	}
	for range senders {
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
}
