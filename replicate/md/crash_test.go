package md

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tandem-ha/tandem/replicate/disk"
)

// The crash tests check THE safety property of the metadata: after a crash
// of the primary and Open, the replicas can differ only where bits are set.
// The test keeps a model of the peer (what a protocol C peer holds: every
// write acknowledged to the primary's client, and what a resync sent) and
// of the writes in flight; at random points, including in the middle of
// the metadata's own I/O, it takes what a power cut would leave. Then, for
// every 4 KiB block: if a write to it was in flight, or the crashed
// primary's data differs from the peer's, its bit must be set.

const (
	cBlock   = 4096
	cData    = 1 << 20 // 256 blocks
	cBlocks  = cData / cBlock
	cChunk   = 16 // blocks a worker owns together
	cWorkers = 4
)

var crashOpts = Options{ALExtentSize: 16 << 10, ALSlots: 4, MaxHotExtents: 6}

// blockOf returns a block filled with v (0: the initial zeroes).
func blockOf(v uint64) []byte {
	b := make([]byte, cBlock)
	if v != 0 {
		for i := 0; i < cBlock; i += 8 {
			binary.LittleEndian.PutUint64(b[i:], v)
		}
	}
	return b
}

// crashRig is one run: a volume's data and metadata on Mems, with the peer
// model.
type crashRig struct {
	t        *testing.T
	internal bool
	mems     []*disk.Mem // internal: [device]; external: [data, md]
	data     disk.Disk
	mdDisk   disk.Disk
	l        Layout // as Meta sees it (MetaOffset 0)
	metaOff  int64  // internal: where the metadata starts on the device
	m        *Meta

	mu       sync.Mutex // guards everything below and crash-taking
	crashR   *rand.Rand
	peer     [cBlocks]uint64 // what the peer holds
	prim     [cBlocks]uint64 // what the primary wrote last
	inflight [cBlocks]bool
	shots    []crashShot
	maxShots int
}

type crashShot struct {
	mems     []*disk.Mem
	peer     [cBlocks]uint64
	inflight [cBlocks]bool
	where    string
}

func newCrashRig(t *testing.T, seed uint64, internal, dataSync bool) *crashRig {
	g := &crashRig{t: t, internal: internal, crashR: rand.New(rand.NewPCG(seed, 99)), maxShots: 12}
	if internal {
		l, err := NewLayout(cData, crashOpts)
		if err != nil {
			t.Fatal(err)
		}
		g.metaOff = cData
		dev := disk.NewMem(cData + l.MetaSize())
		g.mems = []*disk.Mem{dev}
		g.data = disk.NewRegion(dev, 0, cData)
		g.mdDisk = disk.NewRegion(dev, g.metaOff, l.MetaSize())
	} else {
		l, err := NewLayout(cData, crashOpts)
		if err != nil {
			t.Fatal(err)
		}
		dm, mm := disk.NewMem(cData), disk.NewMem(l.MetaSize())
		g.mems = []*disk.Mem{dm, mm}
		g.data, g.mdDisk = dm, mm
	}
	if err := Create(g.mdDisk, testSB(cData, crashOpts), CreateOptions{NewBlank: true}); err != nil {
		t.Fatal(err)
	}
	g.m = mustOpen(t, g.mdDisk)
	g.l = g.m.Layout()
	if dataSync {
		g.m.SetDataSync(g.data.Sync)
	}
	// Crash points inside the metadata's (and, internal, the data's) I/O.
	hookR := rand.New(rand.NewPCG(seed, 7))
	var hookMu sync.Mutex
	hook := func(op string, off, n int64) error {
		hookMu.Lock()
		take := hookR.IntN(12) == 0
		hookMu.Unlock()
		if take {
			g.shoot(fmt.Sprintf("before %s of %d at %d", op, n, off))
		}
		return nil
	}
	g.mems[len(g.mems)-1].SetFault(hook)
	return g
}

// shoot takes a crash image now, if the budget allows.
func (g *crashRig) shoot(where string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.shots) >= g.maxShots {
		return
	}
	s := crashShot{mems: disk.CrashTogether(g.crashR, g.mems...), peer: g.peer, inflight: g.inflight, where: where}
	g.shots = append(g.shots, s)
}

func (g *crashRig) worker(w int, seed uint64, ops int, ids *atomic.Uint64) error {
	r := rand.New(rand.NewPCG(seed, uint64(w)))
	ctx := context.Background()
	bm := g.m.Bitmap()
	for range ops {
		chunk := int64(r.IntN(cBlocks/cChunk/cWorkers)*cWorkers + w)
		first := chunk*cChunk + r.Int64N(cChunk)
		n := 1 + r.Int64N(min(8, chunk*cChunk+cChunk-first))
		off, length := first*cBlock, n*cBlock
		switch k := r.IntN(20); {
		case k < 14: // a write, degraded (peer away) a third of the time
			degraded := r.IntN(3) == 0
			rel, err := g.m.Begin(ctx, off, length)
			if err != nil {
				return err
			}
			id := ids.Add(1)
			buf := make([]byte, 0, length)
			g.mu.Lock()
			for b := first; b < first+n; b++ {
				g.inflight[b] = true
				g.prim[b] = id<<16 | uint64(b)
				buf = append(buf, blockOf(g.prim[b])...)
			}
			g.mu.Unlock()
			if _, err := g.data.WriteAt(buf, off); err != nil {
				return err
			}
			if degraded {
				bm.Set(off, length)
			}
			g.mu.Lock()
			for b := first; b < first+n; b++ {
				g.inflight[b] = false
				if !degraded {
					g.peer[b] = g.prim[b] // acknowledged by the peer
				}
			}
			g.mu.Unlock()
			rel()
		case k < 16: // a resync of the range: the peer gets the primary's data
			g.mu.Lock()
			for b := first; b < first+n; b++ {
				g.peer[b] = g.prim[b]
			}
			g.mu.Unlock()
			bm.Clear(off, length)
		case k < 18: // the periodic bitmap writer
			if err := bm.FlushAll(); err != nil {
				return err
			}
		case k < 19:
			if err := g.data.Sync(); err != nil {
				return err
			}
		default:
			if r.IntN(4) == 0 {
				g.shoot("between operations")
			}
		}
	}
	return nil
}

// check opens each crash image and tests the property.
func (g *crashRig) check(seed uint64) (needed, covered int) {
	t := g.t
	for i, s := range g.shots {
		var data []byte
		var mdImg disk.Disk
		if g.internal {
			data = s.mems[0].Bytes()[:cData]
			mdImg = disk.NewRegion(s.mems[0], g.metaOff, g.l.MetaSize())
		} else {
			data = s.mems[0].Bytes()
			mdImg = s.mems[1]
		}
		m, err := Open(mdImg)
		if err != nil {
			t.Fatalf("seed %d, crash %d (%s): the metadata does not load: %v", seed, i, s.where, err)
		}
		bm := m.Bitmap()
		for b := range int64(cBlocks) {
			differs := !bytes.Equal(data[b*cBlock:(b+1)*cBlock], blockOf(s.peer[b]))
			if !s.inflight[b] && !differs {
				continue
			}
			needed++
			if !bm.IsSet(b*cBlock, cBlock) {
				t.Fatalf("seed %d, crash %d (%s): block %d (in flight %v, differs from the peer %v) is not marked out of sync; recovered %v",
					seed, i, s.where, b, s.inflight[b], differs, m.RecoveredExtents())
			}
			covered++
		}
	}
	return needed, covered
}

func runCrashWorkload(t *testing.T, seed uint64, internal, dataSync bool) (shots, needed int) {
	g := newCrashRig(t, seed, internal, dataSync)
	var ids atomic.Uint64
	var wg sync.WaitGroup
	errs := make(chan error, cWorkers)
	for w := range cWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.worker(w, seed, 80, &ids); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("seed %d: %v", seed, err)
	}
	g.mems[len(g.mems)-1].SetFault(nil)
	needed, _ = g.check(seed)

	// A clean shutdown keeps every bit of the degraded writes that no
	// resync covered, with nothing left in the activity log.
	if err := g.m.Close(true); err != nil {
		t.Fatal(err)
	}
	m := mustOpen(t, g.mdDisk)
	if !m.Recovery().WasClean || len(m.RecoveredExtents()) != 0 {
		t.Fatalf("seed %d: after a clean close: %+v", seed, m.Recovery())
	}
	for b := range int64(cBlocks) {
		if g.peer[b] != g.prim[b] && !m.Bitmap().IsSet(b*cBlock, cBlock) {
			t.Fatalf("seed %d: after a clean close block %d differs from the peer but its bit is clear", seed, b)
		}
	}
	return len(g.shots), needed
}

// TestCrashWorkload is the activity log's and bitmap's safety property
// under random concurrent workloads, with crashes at random points (between
// operations and inside every kind of metadata I/O), for internal and
// external metadata.
func TestCrashWorkload(t *testing.T) {
	seeds := uint64(40)
	if testing.Short() || raceOn {
		seeds = 8
	}
	for _, internal := range []bool{true, false} {
		name := map[bool]string{true: "internal", false: "external"}[internal]
		t.Run(name, func(t *testing.T) {
			var shots, needed int
			for seed := range seeds {
				s, n := runCrashWorkload(t, seed, internal, true)
				shots += s
				needed += n
			}
			t.Logf("%d crash images, %d blocks that had to be (and were) marked", shots, needed)
			if shots < int(seeds) || needed == 0 {
				t.Fatalf("the workload did not exercise crashes: %d images, %d blocks needing bits", shots, needed)
			}
		})
	}
}

// TestEvictionSyncsData: an extent written while connected (no bits) and
// then evicted must have its data durable before the transaction that
// forgets it, or a crash leaves the primary older than the peer with
// nothing marking it. With SetDataSync it always holds; without it (on
// external metadata, whose syncs do not reach the data) some crash shows
// the loss: the test would see a missing sync.
func TestEvictionSyncsData(t *testing.T) {
	run := func(seed uint64, withSync bool) (lost bool) {
		r := rand.New(rand.NewPCG(seed, 5))
		l, err := NewLayout(cData, crashOpts)
		if err != nil {
			t.Fatal(err)
		}
		data, mdm := disk.NewMem(cData), disk.NewMem(l.MetaSize())
		if err := Create(mdm, testSB(cData, crashOpts), CreateOptions{NewBlank: true}); err != nil {
			t.Fatal(err)
		}
		m := mustOpen(t, mdm)
		if withSync {
			m.SetDataSync(data.Sync)
		}
		rel := begin(t, m, 0, cBlock)
		if _, err := data.WriteAt(blockOf(42), 0); err != nil {
			t.Fatal(err)
		}
		rel() // acknowledged by the peer: no bit
		for e := range int64(crashOpts.MaxHotExtents - 1) {
			begin(t, m, (e+1)*l.ALExtentSize, 1)() // fills the hot set
		}
		var shot []*disk.Mem
		mdm.SetFault(func(op string, off, _ int64) error {
			if op == "sync" && shot == nil {
				// Right before the evicting transaction's sync: it may
				// be on disk in the crash image, or not.
				shot = disk.CrashTogether(r, data, mdm)
			}
			return nil
		})
		begin(t, m, int64(crashOpts.MaxHotExtents)*l.ALExtentSize, 1)() // evicts extent 0
		if shot == nil {
			t.Fatal("no crash image")
		}
		m2 := mustOpen(t, shot[1])
		img := shot[0].Bytes()
		return !bytes.Equal(img[:cBlock], blockOf(42)) && !m2.Bitmap().IsSet(0, cBlock)
	}
	lostWithout := 0
	for seed := range uint64(40) {
		if run(seed, true) {
			t.Fatalf("seed %d: data of an evicted extent lost with nothing marking it, despite SetDataSync", seed)
		}
		if run(seed, false) {
			lostWithout++
		}
	}
	if lostWithout == 0 {
		t.Fatal("without a data sync no crash ever lost the evicted extent's data: the test cannot tell")
	}
}
