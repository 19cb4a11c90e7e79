package manager

import (
	"fmt"
	"maps"
	"slices"

	"github.com/tandem-ha/tandem/cluster"
)

// Resources are added and removed while the manager runs (tandem adjust).
// The manager's view of them is replaced, never changed in place, by its
// loop, as it steps the machine's AddResource or RemoveResource: the
// machine learns of a volume in the same step that first reports it.

// locals is the local replicas now, by name (callers must not change it).
func (m *Manager) locals() map[string]Resource { return *m.res.Load() }

// machineResources is the resources' machine configurations now.
func (m *Manager) machineResources() []cluster.ResourceConfig { return *m.mres.Load() }

// AddResource makes the manager drive one more local replica: its
// machine takes it over at its next step. The machine refuses (an alert)
// a resource it runs already or that has no replica on this node.
func (m *Manager) AddResource(rc cluster.ResourceConfig, r Resource) error {
	if r.Volume == nil || r.Gate == nil {
		return fmt.Errorf("%w: resource %s: no volume and gate", ErrConfig, rc.Name)
	}
	if !slices.Contains(rc.Replicas[:], m.cfg.Machine.Node) {
		return fmt.Errorf("%w: resource %s has no replica on %s", ErrConfig, rc.Name, m.cfg.Machine.Node)
	}
	if _, ok := m.locals()[rc.Name]; ok {
		return fmt.Errorf("%w: resource %s runs already", ErrConfig, rc.Name)
	}
	m.mu.Lock()
	m.adding[rc.Name] = r
	m.mu.Unlock()
	m.in.push(cluster.AddResource{At: m.clock.Now(), Resource: rc})
	return nil
}

// RemoveResource makes the manager stop driving a local replica, which
// must not be primary here (the machine refuses that with an alert).
func (m *Manager) RemoveResource(name string) {
	m.in.push(cluster.RemoveResource{At: m.clock.Now(), Resource: name})
}

// changeResources is the loop's half of AddResource and RemoveResource,
// around the machine's step of ev.
func (m *Manager) changeResources(ev cluster.Event, stepped bool) {
	switch e := ev.(type) {
	case cluster.AddResource:
		if stepped {
			return
		}
		m.mu.Lock()
		r, ok := m.adding[e.Resource.Name]
		delete(m.adding, e.Resource.Name)
		m.mu.Unlock()
		if _, runs := m.locals()[e.Resource.Name]; !ok || runs {
			return
		}
		res := maps.Clone(m.locals())
		res[e.Resource.Name] = r
		m.res.Store(&res)
		mres := append(slices.Clone(m.machineResources()), e.Resource)
		m.mres.Store(&mres)
	case cluster.RemoveResource:
		if !stepped {
			return
		}
		if slices.ContainsFunc(m.machine.Status().Resources, func(rs cluster.ResourceStatus) bool { return rs.Resource == e.Resource }) {
			return // refused: still primary here
		}
		res := maps.Clone(m.locals())
		delete(res, e.Resource)
		m.res.Store(&res)
		mres := slices.DeleteFunc(slices.Clone(m.machineResources()), func(rc cluster.ResourceConfig) bool { return rc.Name == e.Resource })
		m.mres.Store(&mres)
		delete(m.vols, e.Resource)
		delete(m.volKnown, e.Resource)
		delete(m.retry, e.Resource)
		delete(m.tl, e.Resource)
	}
}
