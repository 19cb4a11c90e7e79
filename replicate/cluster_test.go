package replicate

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/nbd/backend"
	"github.com/tandem-ha/tandem/replicate/disk"
	"github.com/tandem-ha/tandem/replicate/md"
)

// A two-node test cluster in one process: both volumes on disk.Mem data
// and metadata, linked over 127.0.0.1 (in the spirit of hashicorp/raft's
// in-memory cluster helpers).

const testSecret = "0123456789abcdef-test-secret"

type pairOpts struct {
	size        int64
	protocol    string
	compression string
	resync      ResyncConfig
	splitBrain  string
	// blank: both sides created with the same generation (in sync).
	blank bool
	// files: the data areas are nbd/backend files in a temporary
	// directory instead of disk.Mem (benchmarks).
	files bool
	md    md.Options
	tls   *tls.Config
	// proxy: each side dials the other through a relay that freeze can
	// silence, as a powered-off node is: connections stay open, nothing
	// arrives and nothing is closed.
	proxy bool
	// pingTimeout overrides the test default of one second, ackTimeout
	// the volume's default.
	pingTimeout, ackTimeout time.Duration
	// betaDrops: wire features beta does not announce (an older build).
	betaDrops uint32
}

type testNode struct {
	t        testing.TB
	name     string
	peer     *testNode
	addr     string
	data     *disk.Mem
	dataDev  nbd.Device // set with pairOpts.files
	meta     *disk.Mem
	v        *Volume
	opts     pairOpts
	dialAddr string       // where it dials its peer: the peer's addr or a relay
	degraded atomic.Int32 // OnDegraded calls
	// onDegraded, when set, runs inside OnDegraded.
	onDegraded atomic.Pointer[func()]
	// grow, when set, is Config.Grow.
	grow atomic.Pointer[func(ctx context.Context, size int64) (GrowTarget, error)]
}

type pair struct {
	t      testing.TB
	a, b   *testNode
	relays []*relay
}

func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	// A restarted node listens on its old port; a port just closed can
	// take a moment to be free again.
	for range 100 {
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("listen %s: %v", addr, err)
	return nil
}

func newPair(t testing.TB, o pairOpts) *pair {
	t.Helper()
	if o.size == 0 {
		o.size = 8 << 20
	}
	if o.protocol == "" {
		o.protocol = "C"
	}
	p := &pair{t: t}
	p.a = &testNode{t: t, name: "alpha", opts: o}
	p.b = &testNode{t: t, name: "beta", opts: o}
	p.a.peer, p.b.peer = p.b, p.a
	gen := md.NewGeneration()
	for _, n := range []*testNode{p.a, p.b} {
		l, err := md.NewLayout(o.size, o.md)
		if err != nil {
			t.Fatal(err)
		}
		n.meta = disk.NewMem(l.MetaSize())
		if !o.files {
			n.data = disk.NewMem(o.size)
		} else {
			f, err := backend.OpenFile(filepath.Join(t.TempDir(), n.name+".img"), backend.FileOptions{Create: true, Size: o.size})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			n.dataDev = f
		}
		sb := md.Superblock{DataSize: o.size, Cluster: "testcluster", Resource: "r0", Node: n.name, Peer: n.peer.name,
			Granularity: l.Granularity, ALExtentSize: l.ALExtentSize, ALSlots: l.ALSlots, MaxHotExtents: l.MaxHotExtents}
		if o.blank {
			sb.Gen.Current = gen
		}
		if err := md.Create(n.meta, sb, md.CreateOptions{NewBlank: o.blank}); err != nil {
			t.Fatal(err)
		}
		ln := listen(t, "127.0.0.1:0")
		n.addr = ln.Addr().String()
		ln.Close()
	}
	p.a.dialAddr, p.b.dialAddr = p.b.addr, p.a.addr
	if o.proxy {
		for _, n := range []*testNode{p.a, p.b} {
			r := newRelay(t, n.peer.addr)
			p.relays = append(p.relays, r)
			n.dialAddr = r.addr
		}
	}
	p.a.open()
	p.b.open()
	t.Cleanup(func() {
		for _, n := range []*testNode{p.a, p.b} {
			if n.v != nil && !n.v.closed.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := n.v.Close(ctx); err != nil {
					t.Errorf("%s: close: %v", n.name, err)
				}
				cancel()
			}
		}
	})
	return p
}

func (n *testNode) config() Config {
	o := n.opts
	lvl := slog.LevelWarn
	if os.Getenv("REPLICATE_DEBUG") != "" {
		lvl = slog.LevelDebug
	}
	drops := uint32(0)
	if n.name == "beta" {
		drops = o.betaDrops
	}
	return Config{
		Cluster: "testcluster", Resource: "r0", Node: n.name, Peer: n.peer.name, Secret: []byte(testSecret),
		Protocol: o.protocol, Compression: o.compression, PeerAddress: n.dialAddr, TLS: o.tls,
		Data: n.device(), Meta: n.meta,
		Resync: o.resync, SplitBrain: o.splitBrain,
		OnDegraded: func(ctx context.Context) error {
			n.degraded.Add(1)
			if f := n.onDegraded.Load(); f != nil {
				(*f)()
			}
			return nil
		},
		Grow: func(ctx context.Context, size int64) (GrowTarget, error) {
			if f := n.grow.Load(); f != nil {
				return (*f)(ctx, size)
			}
			return GrowTarget{}, errors.New("test: no grow hook")
		},
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("node", n.name),
		PingInterval: 50 * time.Millisecond, PingTimeout: cmp.Or(o.pingTimeout, time.Second), AckTimeout: o.ackTimeout, ConnectTimeout: 5 * time.Second, RetryMax: 200 * time.Millisecond,
		dropFeatures: drops,
	}
}

func (n *testNode) device() nbd.Device {
	if n.dataDev != nil {
		return n.dataDev
	}
	return disk.Device(n.data, disk.DeviceOptions{})
}

func (n *testNode) open() {
	n.t.Helper()
	cfg := n.config()
	cfg.Listener = listen(n.t, n.addr)
	v, err := Open(context.Background(), cfg)
	if err != nil {
		n.t.Fatalf("%s: open: %v", n.name, err)
	}
	n.v = v
}

// kill stops the node like a kill -9: no flush, no clean metadata. With
// crash, its disks are replaced by what a power cut would have left, and
// the cut stops the old disks at the same instant (disk.PowerCut): the
// node, still running until kill returns, can no longer write or sync,
// so it cannot acknowledge anything the images do not hold.
func (n *testNode) kill(crash bool, seed uint64) {
	n.t.Helper()
	if crash {
		imgs := disk.PowerCut(rand.New(rand.NewPCG(seed, seed+1)), n.data, n.meta)
		n.v.kill()
		n.data, n.meta = imgs[0], imgs[1]
		return
	}
	n.v.kill()
}

// restart opens the node again on its (possibly crashed) disks.
func (n *testNode) restart() { n.open() }

// waitFor polls cond until it holds, failing after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *pair) waitConnected(timeout time.Duration) {
	p.t.Helper()
	waitFor(p.t, timeout, "both sides Connected and in sync", func() bool {
		sa, sb := p.a.v.Status(), p.b.v.Status()
		return sa.Conn == Connected && sb.Conn == Connected && sa.OutOfSync == 0 && sb.OutOfSync == 0 &&
			sa.Disk == UpToDate && sb.Disk == UpToDate && sa.PeerDisk == UpToDate && sb.PeerDisk == UpToDate
	})
}

// identical compares both data areas byte for byte.
func (p *pair) identical() {
	p.t.Helper()
	da, db := p.a.data.Bytes(), p.b.data.Bytes()
	if bytes.Equal(da, db) {
		return
	}
	for i := range da {
		if da[i] != db[i] {
			p.t.Fatalf("replicas differ, first at byte %d (block %d): %s=%#x %s=%#x", i, i/4096, p.a.name, da[i], p.b.name, db[i])
		}
	}
}

func mustPromote(t *testing.T, n *testNode, force bool) PromoteResult {
	t.Helper()
	r, err := n.v.Promote(context.Background(), force)
	if err != nil {
		t.Fatalf("%s: promote: %v", n.name, err)
	}
	return r
}

// block returns a 4 KiB block whose content names its writer and version.
func block(tag byte, off int64, ver uint32) []byte {
	b := make([]byte, 4096)
	for i := 0; i < len(b); i += 16 {
		b[i] = tag
		b[i+1] = byte(off >> 12)
		b[i+2] = byte(off >> 20)
		b[i+3] = byte(ver)
		b[i+4] = byte(ver >> 8)
		b[i+5] = byte(i)
	}
	return b
}
