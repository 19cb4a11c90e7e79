package cluster

import (
	"fmt"
	"slices"
	"time"
)

// Resources come and go while the machine runs (a resource added to or
// removed from the configuration file, applied by tandem adjust). An
// added one starts as a resource does at boot: nothing known of its
// volume, whatever the record holds of it (nothing, for a new one). A
// removed one is forgotten; a proposal of it still in flight completes
// without effect.

// AddResource: the machine drives one more local replica. Refused (an
// Alert, nothing changes) if the resource runs already, this node holds no
// replica of it, or its policies are invalid.
type AddResource struct {
	At       time.Time
	Resource ResourceConfig
}

// RemoveResource: the machine stops driving a local replica. Refused while
// it holds the replica as primary (the daemon removes only a resource that
// is down here).
type RemoveResource struct {
	At       time.Time
	Resource string
}

func (e AddResource) when() time.Time    { return e.At }
func (e RemoveResource) when() time.Time { return e.At }

func (m *Machine) addResource(rc ResourceConfig) {
	refuse := func(why string) {
		m.emit(Alert{Resource: rc.Name, Text: "resource not added: " + why})
	}
	switch {
	case m.resource(rc.Name) != nil:
		refuse("it runs already")
		return
	case !slices.Contains(rc.Replicas[:], m.cfg.Node) || rc.Replicas[0] == rc.Replicas[1]:
		refuse(fmt.Sprintf("replicas %v: this node must hold one of two", rc.Replicas))
		return
	}
	if err := rc.policies(); err != nil {
		refuse(err.Error())
		return
	}
	peer := rc.Replicas[0]
	if peer == m.cfg.Node {
		peer = rc.Replicas[1]
	}
	m.res = append(m.res, &resState{cfg: rc, peer: peer})
}

func (m *Machine) removeResource(name string) {
	i := slices.IndexFunc(m.res, func(r *resState) bool { return r.cfg.Name == name })
	switch {
	case i < 0:
		m.emit(Alert{Resource: name, Text: "resource not removed: this machine does not run it"})
	case m.res[i].primary:
		m.emit(Alert{Resource: name, Text: "resource not removed: this node holds it as primary"})
	default:
		m.res = slices.Delete(m.res, i, i+1)
	}
}
