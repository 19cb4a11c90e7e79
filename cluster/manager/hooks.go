package manager

import (
	"slices"

	"github.com/tandem-ha/tandem/cluster"
)

// Hooks let the daemon watch what the manager sees and does (for its event
// stream and audit log) without the manager knowing about either. Every
// hook runs on the manager's loop goroutine, so it must return at once:
// copy what it needs and hand it on, never wait.
type Hooks struct {
	// Event: every input, before the machine steps on it.
	Event func(cluster.Event)
	// Action: every action the machine asked for, before it is carried
	// out.
	Action func(cluster.Action)
	// Status: the machine's status after each step (quorum, members).
	Status func(cluster.Status)
	// FailoverStep: a step of a failover of this node was recorded; f is
	// the failover so far (a copy), s the step (the last of f.Steps).
	FailoverStep func(f Failover, s Step)
}

func (h Hooks) event(ev cluster.Event) {
	if h.Event != nil {
		h.Event(ev)
	}
}

func (h Hooks) action(a cluster.Action) {
	if h.Action != nil {
		h.Action(a)
	}
}

func (h Hooks) status(st cluster.Status) {
	if h.Status != nil {
		h.Status(st)
	}
}

// step is called by timeline.add.
func (h Hooks) step(f Failover, s Step) {
	if h.FailoverStep != nil {
		f.Steps = slices.Clone(f.Steps)
		h.FailoverStep(f, s)
	}
}
