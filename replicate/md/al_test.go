package md

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/replicate/disk"
)

const testExtent = 64 << 10

// alMeta creates and opens metadata for 4 MiB of data in 64 KiB extents.
func alMeta(t *testing.T, maxHot int) (*disk.Mem, *Meta) {
	t.Helper()
	d, _ := createMem(t, 4<<20, Options{ALExtentSize: testExtent, ALSlots: 4, MaxHotExtents: maxHot}, CreateOptions{})
	return d, mustOpen(t, d)
}

// onDiskHot returns the extents of the newest transaction on disk.
func onDiskHot(t *testing.T, d disk.Disk, l Layout) []uint32 {
	t.Helper()
	ring, newest, err := readAL(d, l)
	if err != nil {
		t.Fatal(err)
	}
	if newest < 0 {
		return nil
	}
	return ring[newest].exts
}

func begin(t *testing.T, m *Meta, off, length int64) func() {
	t.Helper()
	rel, err := m.Begin(context.Background(), off, length)
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

func TestBeginWritesOnlyForColdExtents(t *testing.T) {
	d, m := alMeta(t, 8)
	l := m.Layout()
	rel := begin(t, m, testExtent-100, 200) // extents 0 and 1
	if d.Unsynced() != 0 {
		t.Fatal("Begin returned before its transaction was synced")
	}
	if got := onDiskHot(t, d, l); !slices.Equal(got, []uint32{0, 1}) {
		t.Fatalf("on disk %v, want [0 1]", got)
	}
	if m.ALStats().Transactions != 1 {
		t.Fatalf("transactions %d", m.ALStats().Transactions)
	}
	rel()
	rel() // release is idempotent
	// Hot already (released or not): no transaction.
	r2 := begin(t, m, 0, 4096)
	r3 := begin(t, m, testExtent, 4096)
	r2()
	r3()
	if st := m.ALStats(); st.Transactions != 1 || st.Hot != 2 {
		t.Fatalf("stats %+v", st)
	}
	// Empty ranges are free; bad ones refused.
	if rel, err := m.Begin(context.Background(), 100, 0); err != nil {
		t.Fatal(err)
	} else {
		rel()
	}
	for _, c := range [][2]int64{{-1, 10}, {4 << 20, 1}, {4<<20 - 10, 11}, {0, -5}} {
		if _, err := m.Begin(context.Background(), c[0], c[1]); !errors.Is(err, ErrRange) {
			t.Errorf("Begin(%d, %d): %v", c[0], c[1], err)
		}
	}
	if _, err := m.Begin(context.Background(), 0, 9*testExtent); !errors.Is(err, ErrTooManyExtents) {
		t.Errorf("Begin over 9 extents with 8 hot: %v", err)
	}
}

// TestBeginBatches: Begins for cold extents that arrive while a transaction
// is being written share the next one.
func TestBeginBatches(t *testing.T) {
	d, m := alMeta(t, 64)
	l := m.Layout()
	block := make(chan struct{})
	var once sync.Once
	d.SetFault(func(op string, off, _ int64) error {
		if op == "write" && off >= l.ALOffset() && off < l.BitmapOffset() {
			once.Do(func() { <-block })
		}
		return nil
	})
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	start := func(ext int64) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rel, err := m.Begin(context.Background(), ext*testExtent, 4096)
			if err != nil {
				errs <- err
				return
			}
			rel()
		}()
	}
	start(0)
	// Wait until the first Begin is writing its transaction.
	waitFor(t, func() bool { m.al.mu.Lock(); defer m.al.mu.Unlock(); return m.al.writing })
	for e := range int64(9) {
		start(e + 1)
	}
	waitFor(t, func() bool { m.al.mu.Lock(); defer m.al.mu.Unlock(); return m.al.waiters == 9 })
	close(block)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := m.ALStats().Transactions; n != 2 {
		t.Fatalf("%d transactions for 10 cold Begins, 9 of them concurrent: want 2", n)
	}
	if got := onDiskHot(t, d, l); len(got) != 10 {
		t.Fatalf("on disk %v", got)
	}
}

// waitFor polls cond; bounded, and not a timing assertion: it fails only
// if the state never comes (a deadlock).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition never came true")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestEvictionLRU(t *testing.T) {
	d, m := alMeta(t, 3)
	l := m.Layout()
	for _, e := range []int64{0, 1, 2} {
		begin(t, m, e*testExtent, 1)()
	}
	begin(t, m, 0, 1)() // 0 is now the most recently used; 1 the least
	// Bits set in extent 1 while it was hot (a degraded write).
	m.Bitmap().Set(testExtent+8192, 4096)
	var order []string
	d.SetFault(func(op string, off, _ int64) error {
		switch {
		case op == "write" && off >= l.BitmapOffset():
			order = append(order, "bitmap")
		case op == "write" && off >= l.ALOffset():
			order = append(order, "al")
		}
		return nil
	})
	begin(t, m, 3*testExtent, 1)()
	if got := m.al.hotExtents(); !slices.Equal(got, []uint32{0, 2, 3}) {
		t.Fatalf("hot %v, want extent 1 evicted", got)
	}
	if got := onDiskHot(t, d, l); !slices.Equal(got, []uint32{0, 2, 3}) {
		t.Fatalf("on disk %v", got)
	}
	if !slices.Equal(order, []string{"bitmap", "al"}) {
		t.Fatalf("writes %v: the bitmap pages must go first", order)
	}
	// The evicted extent's bits are on disk.
	bm, _ := reload(t, d, l)
	if !bm.IsSet(testExtent+8192, 4096) {
		t.Fatal("evicted extent's bits not on disk")
	}
}

// TestEvictionCrash crashes at every metadata I/O of an eviction, with
// many seeds: the bits of the evicted extent survive every one.
func TestEvictionCrash(t *testing.T) {
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 21))
		d, m := alMeta(t, 2)
		begin(t, m, 0, 1)()
		rel := begin(t, m, testExtent, 1)
		m.Bitmap().Set(100, 5000) // extent 0, set while it was hot
		var crashes []*disk.Mem
		d.SetFault(func(op string, _, _ int64) error {
			crashes = append(crashes, d.Crash(r))
			return nil
		})
		begin(t, m, 2*testExtent, 1)() // evicts 0
		rel()
		d.SetFault(nil)
		crashes = append(crashes, d.Crash(r))
		if len(crashes) < 5 {
			t.Fatalf("only %d I/Os in an eviction?", len(crashes))
		}
		for i, c := range crashes {
			m2, err := Open(c)
			if err != nil {
				t.Fatalf("seed %d, crash %d: %v", seed, i, err)
			}
			if !m2.Bitmap().IsSet(100, 5000) {
				t.Fatalf("seed %d, crash at I/O %d: the bits of the evicted extent were lost", seed, i)
			}
		}
	}
}

func TestBeginWaitsWhenAllBusy(t *testing.T) {
	_, m := alMeta(t, 2)
	r0 := begin(t, m, 0, 1)
	r1 := begin(t, m, testExtent, 1)
	// Full and busy: Begin waits, and a cancelled wait returns.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := m.Begin(ctx, 5*testExtent, 1)
		done <- err
	}()
	waitFor(t, func() bool { m.al.mu.Lock(); defer m.al.mu.Unlock(); return m.al.waiters == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Begin: %v", err)
	}
	// A release lets a waiting Begin in.
	got := make(chan func(), 1)
	go func() {
		rel, err := m.Begin(context.Background(), 6*testExtent, 1)
		if err != nil {
			t.Error(err)
			rel = func() {}
		}
		got <- rel
	}()
	waitFor(t, func() bool { m.al.mu.Lock(); defer m.al.mu.Unlock(); return m.al.waiters == 1 })
	select {
	case <-got:
		t.Fatal("Begin went ahead with every hot extent busy")
	default:
	}
	r1()
	rel := <-got
	if h := m.al.hotExtents(); !slices.Equal(h, []uint32{0, 6}) {
		t.Fatalf("hot %v", h)
	}
	// Close refuses while writes are in flight.
	if err := m.Close(true); err == nil {
		t.Fatal("Close with writes in flight")
	}
	rel()
	r0()
	if err := m.Close(true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Begin(context.Background(), 0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Begin after Close: %v", err)
	}
}

func TestBeginIOErrorIsSticky(t *testing.T) {
	d, m := alMeta(t, 4)
	boom := errors.New("boom")
	d.SetFault(func(op string, _, _ int64) error {
		if op == "sync" {
			return boom
		}
		return nil
	})
	if _, err := m.Begin(context.Background(), 0, 1); !errors.Is(err, boom) {
		t.Fatalf("Begin with failing sync: %v", err)
	}
	d.SetFault(nil)
	if _, err := m.Begin(context.Background(), testExtent, 1); !errors.Is(err, boom) {
		t.Fatalf("Begin after a failed transaction: %v (the activity log cannot be trusted any more)", err)
	}
	if err := m.Close(true); !errors.Is(err, boom) {
		t.Fatalf("Close after a failure: %v", err)
	}
	// Not marked clean: the next Open recovers.
	if mustOpen(t, d).Recovery().WasClean {
		t.Fatal("failed metadata was closed clean")
	}
}

// TestCrashRecoversHotExtents: a crash with writes in flight marks their
// extents out of sync on the next Open, and reports them.
func TestCrashRecoversHotExtents(t *testing.T) {
	d, m := alMeta(t, 8)
	rel := begin(t, m, 3*testExtent+10, 2*testExtent) // extents 3, 4, 5
	begin(t, m, 7*testExtent, 1)()
	crashed := d.Crash(rand.New(rand.NewPCG(1, 1)))
	rel()
	m2 := mustOpen(t, crashed)
	want := []Range{{3 * testExtent, testExtent}, {4 * testExtent, testExtent}, {5 * testExtent, testExtent}, {7 * testExtent, testExtent}}
	if got := m2.RecoveredExtents(); !slices.Equal(got, want) || m2.Recovery().WasClean {
		t.Fatalf("recovered %v, want %v", got, want)
	}
	if m2.Bitmap().Count() != 4*testExtent/4096 {
		t.Fatalf("%d bits set", m2.Bitmap().Count())
	}
	// Persisted before Open returned: a second crash right away keeps them.
	again := crashed.Crash(rand.New(rand.NewPCG(2, 2)))
	m3 := mustOpen(t, again)
	if m3.Bitmap().Count() != 4*testExtent/4096 {
		t.Fatal("recovered bits were not on disk when Open returned")
	}
	// The bits stay until a resync clears them; a clean close and reopen
	// recovers nothing new.
	m3.Bitmap().Clear(0, 4<<20)
	if err := m3.Close(true); err != nil {
		t.Fatal(err)
	}
	m4 := mustOpen(t, again)
	if m4.Bitmap().Count() != 0 || len(m4.RecoveredExtents()) != 0 || !m4.Recovery().WasClean {
		t.Fatalf("after clean close: %d bits, recovered %v", m4.Bitmap().Count(), m4.RecoveredExtents())
	}
	// An unclean Close leaves an empty log: nothing to recover either.
	begin(t, m4, 0, 1)()
	if err := m4.Close(false); err != nil {
		t.Fatal(err)
	}
	m5 := mustOpen(t, again)
	if m5.Recovery().WasClean || len(m5.RecoveredExtents()) != 0 {
		t.Fatalf("after unclean close: %+v", m5.Recovery())
	}
}

// FuzzDecodeAL: decoding a transaction block never panics, and what
// decodes re-encodes to the same bytes.
func FuzzDecodeAL(f *testing.F) {
	l, err := NewLayout(1<<30, Options{ALExtentSize: 1 << 20, MaxHotExtents: 50})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(encodeAL(7, []uint32{1, 5, 1023}))
	f.Add(encodeAL(1, nil))
	f.Add([]byte("TANDEMAL"))
	f.Fuzz(func(t *testing.T, in []byte) {
		b := make([]byte, BlockSize)
		copy(b, in)
		if len(in) > 0 && in[0]&1 == 0 {
			copy(b, alMagic)
			resum(b)
		}
		s := decodeAL(b, l)
		if s.err != nil {
			return
		}
		if !bytes.Equal(encodeAL(s.seq, s.exts), b) {
			t.Fatal("decoded transaction re-encodes differently")
		}
	})
}
