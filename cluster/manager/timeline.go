package manager

import (
	"maps"
	"slices"
	"time"

	"github.com/tandem-ha/tandem/cluster"
)

// Failover is one promotion of this node, step by step: from the moment
// the old primary was declared dead (or the promotion was proposed, for a
// first start, a switchover or an admin's promote) until the resource
// served at its VIP.
type Failover struct {
	Resource string    `json:"resource"`
	From     string    `json:"from,omitempty"` // the primary that was lost ("" when none was)
	Epoch    uint64    `json:"epoch,omitempty"`
	Started  time.Time `json:"started"`
	Steps    []Step    `json:"steps"`
	// Seconds is the whole, start to serve.
	Seconds float64 `json:"seconds"`
}

// Step is one step of a failover: detect, fence, commit, promote, vip,
// serve.
type Step struct {
	Name string    `json:"name"`
	At   time.Time `json:"at"`
	// Seconds is how long the step itself took; Elapsed is the time from
	// the start of the failover to its end.
	Seconds float64 `json:"seconds"`
	Elapsed float64 `json:"elapsed_seconds"`
	Detail  string  `json:"detail,omitempty"`
}

// timeline is a failover in progress.
type timeline struct {
	f          Failover
	fenceStart time.Time
	commitID   string
	commitAt   time.Time
	promoted   bool
	hooks      Hooks
}

func (t *timeline) add(name string, at time.Time, took time.Duration, detail string) {
	s := Step{Name: name, At: at, Seconds: took.Seconds(), Elapsed: at.Sub(t.f.Started).Seconds(), Detail: detail}
	t.f.Steps = append(t.f.Steps, s)
	t.hooks.step(t.f, s)
}

// observe updates what the manager knows before the machine steps: the
// latest record, and the failover timelines.
func (m *Manager) observe(ev cluster.Event) {
	me := m.cfg.Machine.Node
	switch e := ev.(type) {
	case cluster.Committed:
		if e.Record != nil && e.Record.Index >= m.record.Index {
			m.record = e.Record
		}
		if e.Cmd.Op == cluster.OpFenced && e.Err == nil {
			delete(m.fenceFrom, e.Cmd.Node) // confirmed (by any level, or an admin)
		}
		if e.Cmd.Op != cluster.OpPromote {
			return
		}
		t := m.tl[e.Cmd.Resource]
		if t == nil || t.commitID != e.Cmd.ID {
			return
		}
		took := e.At.Sub(t.commitAt)
		if e.Err != nil {
			m.log.Warn("failover: promotion refused by the log", "resource", e.Cmd.Resource, "err", e.Err, "took", took)
			t.commitID = ""
			return
		}
		t.f.Epoch = e.Cmd.Epoch
		t.add("commit", e.At, took, "")
		m.log.Info("failover: promotion committed", "resource", e.Cmd.Resource, "epoch", e.Cmd.Epoch, "took", took, "elapsed", e.At.Sub(t.f.Started))
	case cluster.MemberChange:
		switch e.State {
		case cluster.MemberDead:
			m.deadAt[e.Node] = e.At
			for _, name := range slices.Sorted(maps.Keys(m.locals())) {
				res := m.record.Resource(name)
				if res == nil || res.Primary != e.Node || e.Node == me || m.tl[name] != nil {
					continue
				}
				t := &timeline{f: Failover{Resource: name, From: e.Node, Started: e.At}, hooks: m.cfg.Hooks}
				t.add("detect", e.At, 0, "declared dead by the failure detector")
				m.tl[name] = t
				m.log.Warn("failover: primary declared dead", "resource", name, "primary", e.Node, "epoch", res.Epoch)
			}
		case cluster.MemberAlive:
			// Back: a later failure is a new need to fence, and only a
			// confirmation given after it counts.
			delete(m.fenceFrom, e.Node)
			for name, t := range m.tl {
				if t.f.From == e.Node && t.commitID == "" && !t.promoted {
					m.log.Info("failover: primary came back before a promotion was proposed", "resource", name, "primary", e.Node)
					delete(m.tl, name)
				}
			}
		}
	case cluster.FenceResult:
		for name := range e.Epochs {
			t := m.tl[name]
			if t == nil || t.fenceStart.IsZero() {
				continue
			}
			took := e.At.Sub(t.fenceStart)
			t.fenceStart = time.Time{}
			if e.Err != nil {
				t.add("fence-failed", e.At, took, e.Err.Error())
				m.log.Error("failover: fencing failed", "resource", name, "node", e.Node, "err", e.Err, "took", took)
				continue
			}
			t.add("fence", e.At, took, e.Method)
			m.log.Info("failover: old primary fenced", "resource", name, "node", e.Node, "method", e.Method, "took", took, "elapsed", e.At.Sub(t.f.Started))
		}
		if e.Err == nil {
			delete(m.fenceFrom, e.Node)
		}
	}
}

func (m *Manager) noteFenceStart(a cluster.FenceNode) {
	now := m.clock.Now()
	for name := range a.Epochs {
		t := m.tl[name]
		if res := m.record.Resource(name); t == nil && res != nil && res.Primary == a.Node {
			// The node was declared dead before this node's copy of the
			// record named it primary (this node had just started and
			// was still catching up the log): the failover begins now
			// that the machine fences it for the resource.
			at, ok := m.deadAt[a.Node]
			if !ok || at.After(now) {
				at = now
			}
			t = &timeline{f: Failover{Resource: name, From: a.Node, Started: at}, hooks: m.cfg.Hooks}
			t.add("detect", at, 0, "declared dead by the failure detector")
			m.tl[name] = t
			m.log.Warn("failover: primary declared dead", "resource", name, "primary", a.Node, "epoch", a.Epochs[name])
		}
		if t != nil {
			t.fenceStart = now
		}
	}
	m.log.Warn("fencing", "node", a.Node, "resources", slices.Sorted(maps.Keys(a.Epochs)))
}

func (m *Manager) noteProposal(cmd cluster.Command) {
	if cmd.Op != cluster.OpPromote || cmd.Node != m.cfg.Machine.Node {
		return
	}
	now := m.clock.Now()
	t := m.tl[cmd.Resource]
	if t == nil {
		t = &timeline{f: Failover{Resource: cmd.Resource, Started: now}, hooks: m.cfg.Hooks}
		m.tl[cmd.Resource] = t
	}
	t.commitID, t.commitAt = cmd.ID, now
	m.log.Info("failover: proposing promotion", "resource", cmd.Resource, "epoch", cmd.Epoch, "manual", cmd.Manual, "force", cmd.Force)
}

func (m *Manager) noteStep(resource, name string, start time.Time, took time.Duration, args ...any) {
	t := m.tl[resource]
	if t == nil {
		return
	}
	if name == "promote" {
		t.promoted = true
	}
	end := start.Add(took)
	t.add(name, end, took, "")
	m.log.Info("failover: "+name, append([]any{"resource", resource, "took", took, "elapsed", end.Sub(t.f.Started)}, args...)...)
}

// noteServe ends a timeline once the promoted resource's address is held.
func (m *Manager) noteServe(resource string) {
	t := m.tl[resource]
	if t == nil || !t.promoted {
		return
	}
	now := m.clock.Now()
	t.add("serve", now, 0, "")
	t.f.Seconds = now.Sub(t.f.Started).Seconds()
	delete(m.tl, resource)
	args := []any{"resource", resource, "from", t.f.From, "epoch", t.f.Epoch, "total", now.Sub(t.f.Started)}
	for _, s := range t.f.Steps {
		args = append(args, s.Name, time.Duration(s.Seconds*float64(time.Second)))
	}
	m.log.Info("failover: serving", args...)
	m.mu.Lock()
	m.last[resource] = &t.f
	m.mu.Unlock()
}
