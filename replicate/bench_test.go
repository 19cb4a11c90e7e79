package replicate

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/nbd"
)

// BenchmarkWrite4k compares 4 KiB random writes on the bare data file
// with the same writes through a replicated volume (protocol C, peer over
// loopback), at queue depth 1 and 32:
//
//	go test -run X -bench Write4k -benchtime 20000x ./replicate/
func BenchmarkWrite4k(b *testing.B) {
	const size = 256 << 20
	for _, qd := range []int{1, 32} {
		b.Run("local/qd"+itoa(qd), func(b *testing.B) {
			p := newPair(b, pairOpts{blank: true, size: size, files: true})
			benchWrites(b, p.a.dataDev, qd)
		})
		b.Run("replicated/qd"+itoa(qd), func(b *testing.B) {
			p := newPair(b, pairOpts{blank: true, size: size, files: true})
			p.waitConnected(10 * time.Second)
			if _, err := p.a.v.Promote(context.Background(), false); err != nil {
				b.Fatal(err)
			}
			benchWrites(b, p.a.v, qd)
			b.StopTimer()
			if s := p.a.v.Status(); s.Conn != Connected || s.OutOfSync != 0 {
				b.Fatalf("not replicated: %+v", s)
			}
		})
	}
}

// BenchmarkRead4k: 4 KiB random reads on the bare data file and on the
// primary of a connected pair (local reads, which first check for
// overlapping writes in flight), at queue depth 1 and 32:
//
//	go test -run X -bench Read4k -benchtime 200000x ./replicate/
func BenchmarkRead4k(b *testing.B) {
	const size = 256 << 20
	for _, qd := range []int{1, 32} {
		b.Run("local/qd"+itoa(qd), func(b *testing.B) {
			p := newPair(b, pairOpts{blank: true, size: size, files: true})
			benchIO(b, p.a.dataDev, qd, true)
		})
		b.Run("primary/qd"+itoa(qd), func(b *testing.B) {
			p := newPair(b, pairOpts{blank: true, size: size, files: true})
			p.waitConnected(10 * time.Second)
			if _, err := p.a.v.Promote(context.Background(), false); err != nil {
				b.Fatal(err)
			}
			benchIO(b, p.a.v, qd, true)
		})
	}
}

// BenchmarkWrite1M: 1 MiB sequential writes at queue depth 8, bare file
// against the replicated volume:
//
//	go test -run X -bench Write1M -benchtime 2000x ./replicate/
func BenchmarkWrite1M(b *testing.B) {
	const size = 512 << 20
	b.Run("local/qd8", func(b *testing.B) {
		p := newPair(b, pairOpts{blank: true, size: size, files: true})
		benchSeq(b, p.a.dataDev, 8, 1<<20)
	})
	b.Run("replicated/qd8", func(b *testing.B) {
		p := newPair(b, pairOpts{blank: true, size: size, files: true})
		p.waitConnected(10 * time.Second)
		if _, err := p.a.v.Promote(context.Background(), false); err != nil {
			b.Fatal(err)
		}
		benchSeq(b, p.a.v, 8, 1<<20)
		b.StopTimer()
		if s := p.a.v.Status(); s.Conn != Connected || s.OutOfSync != 0 {
			b.Fatalf("not replicated: %+v", s)
		}
	})
}

// benchSeq writes bs-byte blocks in order (wrapping at the end of d) from
// qd goroutines.
func benchSeq(b *testing.B, d nbd.Device, qd, bs int) {
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	blocks := d.Size() / int64(bs)
	b.SetBytes(int64(bs))
	b.ResetTimer()
	for range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, bs)
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if err := d.WriteAt(ctx, buf, (i%blocks)*int64(bs), false); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

func benchWrites(b *testing.B, d nbd.Device, qd int) { benchIO(b, d, qd, false) }

// benchIO does b.N random 4 KiB writes (or reads) on d from qd
// goroutines.
func benchIO(b *testing.B, d nbd.Device, qd int, read bool) {
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(4096)
	b.ResetTimer()
	for w := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			buf := make([]byte, 4096)
			for next.Add(1) <= int64(b.N) {
				off := r.Int64N(d.Size()/4096) * 4096
				var err error
				if read {
					err = d.ReadAt(ctx, buf, off)
				} else {
					err = d.WriteAt(ctx, buf, off, false)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
