package daemon

import (
	"context"
	"sync"

	"github.com/tandem-ha/tandem/nbd/backend"
	"github.com/tandem-ha/tandem/replicate"
)

// fakeVolume stands in for replicate.Volume: a memory device with a role,
// and scripted refusals. It records what the daemon asked of it.
type fakeVolume struct {
	*backend.Memory
	cfg replicate.Config

	mu      sync.Mutex
	role    replicate.Role
	conn    replicate.ConnState
	calls   []string
	closed  bool
	refuse  map[string]error // op -> error to return
	report  replicate.VerifyReport
	promote replicate.PromoteResult
}

func newFakeVolume(cfg replicate.Config) *fakeVolume {
	return &fakeVolume{Memory: backend.NewMemory(cfg.Data.Size()), cfg: cfg,
		role: replicate.Secondary, conn: replicate.Connecting, refuse: map[string]error{}}
}

func (f *fakeVolume) call(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, op)
	if f.closed {
		return replicate.ErrClosed
	}
	return f.refuse[op]
}

func (f *fakeVolume) Status() replicate.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return replicate.Status{Resource: f.cfg.Resource, Node: f.cfg.Node, Peer: f.cfg.Peer, Role: f.role,
		Disk: replicate.UpToDate, Conn: f.conn, PeerRole: replicate.RoleUnknown, PeerDisk: replicate.DiskUnknown,
		Protocol: f.cfg.Protocol, Epoch: 7, Size: f.Size(), Generations: replicate.Generations{Current: 0xabc}}
}

func (f *fakeVolume) Promote(ctx context.Context, force bool) (replicate.PromoteResult, error) {
	op := "promote"
	if force {
		op = "promote-force"
	}
	if err := f.call(op); err != nil {
		return replicate.PromoteResult{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.role = replicate.Primary
	return f.promote, nil
}

func (f *fakeVolume) Demote(ctx context.Context) error {
	if err := f.call("demote"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.role = replicate.Secondary
	return nil
}

func (f *fakeVolume) Connect(ctx context.Context) error    { return f.call("connect") }
func (f *fakeVolume) Disconnect(ctx context.Context) error { return f.call("disconnect") }
func (f *fakeVolume) Resync(ctx context.Context, full bool) error {
	if full {
		return f.call("resync-full")
	}
	return f.call("resync")
}

func (f *fakeVolume) Verify(ctx context.Context, repair bool) (replicate.VerifyReport, error) {
	op := "verify"
	if repair {
		op = "verify-repair"
	}
	if err := f.call(op); err != nil {
		return replicate.VerifyReport{}, err
	}
	return f.report, nil
}

func (f *fakeVolume) Resolve(ctx context.Context, discard bool) error { return f.call("resolve") }

func (f *fakeVolume) Close(ctx context.Context) error {
	if err := f.call("close"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeVolume) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// fakes opens fake volumes and keeps them by resource.
type fakes struct {
	mu   sync.Mutex
	vols map[string]*fakeVolume
	err  error
}

func (fs *fakes) open(ctx context.Context, cfg replicate.Config) (Volume, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.err != nil {
		return nil, fs.err
	}
	if fs.vols == nil {
		fs.vols = map[string]*fakeVolume{}
	}
	v := newFakeVolume(cfg)
	fs.vols[cfg.Resource] = v
	return v, nil
}

func (fs *fakes) get(name string) *fakeVolume {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.vols[name]
}

func (f *fakeVolume) setRefuse(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.refuse, op)
		return
	}
	f.refuse[op] = err
}

func (f *fakeVolume) set(fn func(f *fakeVolume)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}
