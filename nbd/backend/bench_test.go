//go:build linux

package backend

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/tandem-ha/tandem/nbd"
)

const benchSize = 64 << 20

func benchFile(b *testing.B, direct bool) *File {
	b.Helper()
	f, err := OpenFile(filepath.Join(b.TempDir(), "disk"), FileOptions{Size: benchSize, Create: true, Direct: direct})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	// Allocate everything first so that the loop measures I/O, not block
	// allocation.
	if err := f.WriteAt(context.Background(), alignedBuf(benchSize), 0, false); err != nil {
		b.Fatal(err)
	}
	return f
}

// benchIO does 4 KiB requests at random offsets from parallel goroutines,
// the way a queue of NBD requests reaches the device. shift misaligns
// the offset and the buffer.
func benchIO(b *testing.B, dev nbd.Device, write bool, shift int) {
	ctx := context.Background()
	b.SetBytes(4096)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
		buf := alignedBuf(4096 + 8)[shift : shift+4096]
		for pb.Next() {
			off := rng.Int64N(benchSize/4096-1)*4096 + int64(shift)
			var err error
			if write {
				err = dev.WriteAt(ctx, buf, off, false)
			} else {
				err = dev.ReadAt(ctx, buf, off)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkFileWrite4K(b *testing.B)       { benchIO(b, benchFile(b, false), true, 0) }
func BenchmarkFileRead4K(b *testing.B)        { benchIO(b, benchFile(b, false), false, 0) }
func BenchmarkFileWrite4KDirect(b *testing.B) { benchIO(b, benchFile(b, true), true, 0) }
func BenchmarkFileRead4KDirect(b *testing.B)  { benchIO(b, benchFile(b, true), false, 0) }
func BenchmarkFileWrite4KUnalignedDirect(b *testing.B) {
	benchIO(b, benchFile(b, true), true, 1) // bounce + read-modify-write
}
func BenchmarkMemoryWrite4K(b *testing.B) { benchIO(b, NewMemory(benchSize), true, 0) }
func BenchmarkMemoryRead4K(b *testing.B)  { benchIO(b, NewMemory(benchSize), false, 0) }
