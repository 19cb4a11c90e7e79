package manager

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"

	"github.com/tandem-ha/tandem/cluster"
	"github.com/tandem-ha/tandem/cluster/authority"
	"github.com/tandem-ha/tandem/fence"
	"github.com/tandem-ha/tandem/replicate"
)

func mapsKeys[V any](m map[string]V) iter.Seq[string] { return maps.Keys(m) }

// volumeState is what the machine needs of a volume's status.
func volumeState(st replicate.Status) cluster.VolumeState {
	vs := cluster.VolumeState{
		Disk:     cluster.DiskState(st.Disk),
		PeerDisk: cluster.DiskState(st.PeerDisk),
		Primary:  st.Role == replicate.Primary,
	}
	vs.PeerHeard, vs.Session = st.PeerHeard, st.Session
	switch st.Conn {
	case replicate.Connected, replicate.VerifySource, replicate.VerifyTarget:
		vs.Connected = true
	case replicate.SyncSource, replicate.SyncTarget:
		vs.Connected, vs.Syncing = true, true
	}
	if !vs.Connected {
		vs.PeerDisk = cluster.DiskUnknown
	}
	return vs
}

// execute carries out one Ready, in order.
func (m *Manager) execute(rd cluster.Ready) {
	for _, a := range rd.Actions {
		m.log.Debug("action", "action", a.String())
		m.cfg.Hooks.action(a)
		switch a := a.(type) {
		case cluster.Propose:
			m.propose(a.Cmd)
		case cluster.FenceNode:
			m.fence(a)
		case cluster.CancelFence:
			if cancel := m.fenceCancel[a.Node]; cancel != nil {
				m.log.Warn("failover: the node was seen alive again; canceling its fencing", "node", a.Node)
				cancel()
			}
		case cluster.Promote:
			m.promote(a)
		case cluster.Demote:
			m.demote(a.Resource)
		case cluster.SuspendIO:
			m.setIO(a.Resource, IOSuspend, "I/O suspended")
		case cluster.FailIO:
			m.setIO(a.Resource, IOFail, "I/O fails (on-no-quorum io-error)")
		case cluster.ResumeIO:
			m.setIO(a.Resource, IOServe, "I/O resumed")
		case cluster.AllowDegraded:
			m.answerDegraded(a.Resource, nil)
		case cluster.RefuseDegraded:
			m.answerDegraded(a.Resource, fmt.Errorf("manager: %s: write without the peer refused: %s", a.Resource, a.Reason))
		case cluster.ClaimVIP:
			m.claimVIP(a.Resource)
		case cluster.ReleaseVIP:
			m.releaseVIP(a.Resource)
		case cluster.StartResync:
			m.resync(a.Resource)
		case cluster.Alert:
			m.log.Error("ALERT", "resource", a.Resource, "alert", a.Text)
			if m.cfg.OnAlert != nil {
				m.cfg.OnAlert(a)
			}
		case cluster.AdminReply:
			m.mu.Lock()
			ch := m.admin[a.ID]
			m.mu.Unlock()
			if ch != nil {
				ch <- a // buffered, one reply per ID
			}
		default:
			m.log.Error("manager: unknown action, ignored", "action", a.String())
		}
	}
}

// goWork runs fn in a goroutine that Run waits for.
func (m *Manager) goWork(fn func(ctx context.Context)) {
	m.workers.Add(1)
	go func() {
		defer m.workers.Done()
		fn(m.workCtx)
	}()
}

func (m *Manager) propose(cmd cluster.Command) {
	m.noteProposal(cmd)
	timeout := m.cfg.Machine.ProposalTimeout
	if timeout <= 0 {
		timeout = cluster.DefaultProposalTimeout
	}
	m.goWork(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_, err := m.cfg.Log.Propose(ctx, cmd)
		// A refusal is in the log: the commit brings it, with the record.
		if err != nil && !errors.Is(err, authority.ErrRefused) {
			m.log.Warn("proposal failed", "cmd", cmd.String(), "err", err)
			m.in.push(cluster.ProposalFailed{At: m.clock.Now(), ID: cmd.ID, Err: err})
		}
	})
}

func (m *Manager) fence(a cluster.FenceNode) {
	since, ok := m.fenceFrom[a.Node]
	if !ok {
		since = m.clock.Now()
		m.fenceFrom[a.Node] = since
	}
	m.noteFenceStart(a)
	ctx, cancel := context.WithTimeout(m.workCtx, m.cfg.FenceTimeout)
	m.fenceCancel[a.Node] = cancel
	m.goWork(func(context.Context) {
		defer cancel()
		res := cluster.FenceResult{Node: a.Node, Epochs: a.Epochs}
		f, err := m.cfg.Fencer(a.Node)
		if err == nil {
			var r *fence.Result
			r, err = f.Off(ctx, fence.Request{Since: since})
			if r != nil {
				res.Method = r.Method
			}
		}
		if err != nil {
			res.Err = fmt.Errorf("manager: fencing %s: %w", a.Node, err)
		} else {
			m.peerFenced(ctx, a.Node)
		}
		res.At = m.clock.Now()
		m.in.push(res)
	})
}

// peerFenced ends the replication sessions to a node confirmed off before
// the machine hears of it: the promotion that follows then finds the peer
// gone instead of waiting out the volume's ping timeout while the dead
// peer still counts as Primary.
func (m *Manager) peerFenced(ctx context.Context, node string) {
	for _, rc := range m.machineResources() {
		if rc.Replicas[0] != node && rc.Replicas[1] != node {
			continue
		}
		r, ok := m.locals()[rc.Name]
		if !ok {
			continue
		}
		if err := r.Volume.PeerFenced(ctx); err != nil {
			m.log.Warn("failover: ending the session to the fenced peer", "resource", rc.Name, "peer", node, "err", err)
		}
	}
}

func (m *Manager) actionCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(m.workCtx, m.cfg.ActionTimeout)
}

func (m *Manager) promote(a cluster.Promote) {
	r, ok := m.locals()[a.Resource]
	if !ok {
		return
	}
	start := m.clock.Now()
	ctx, cancel := m.actionCtx()
	defer cancel()
	res, err := r.Volume.Promote(ctx, a.Force)
	took := m.clock.Now().Sub(start)
	if err != nil && errors.Is(err, replicate.ErrPeerPrimary) {
		// The record made this node primary after the peer was fenced or
		// demoted, but the volume has not yet noticed that the link is
		// dead (its ping timeout) and still sees the peer Primary: retry
		// at every tick while the machine still wants it, instead of
		// forcing a split brain on the volume.
		if _, again := m.retry[a.Resource]; !again {
			m.log.Warn("failover: the volume still sees the peer Primary; retrying the promotion at every tick", "resource", a.Resource, "err", err)
		}
		m.retry[a.Resource] = a
		return
	}
	delete(m.retry, a.Resource)
	if err != nil {
		// The record names this node primary but the volume refused: the
		// gate stays shut (nothing is served that the volume cannot
		// replicate), and the admin hears of it. The machine sees the
		// volume still secondary and hands the epoch back.
		m.alert(a.Resource, fmt.Sprintf("the authority record made this node primary at epoch %d but the volume refused to promote: %v", a.Epoch, err))
		return
	}
	r.Gate.SetIO(IOServe)
	if res.Discarded != "" {
		m.log.Warn("forced promotion discarded data", "resource", a.Resource, "discarded", res.Discarded)
	}
	m.noteStep(a.Resource, "promote", start, took, "epoch", a.Epoch, "volume_epoch", res.Epoch)
}

func (m *Manager) demote(resource string) {
	r, ok := m.locals()[resource]
	if !ok {
		return
	}
	delete(m.retry, resource)
	// Shut the gate first: no new request reaches a volume that is about to
	// refuse it; held ones fail with "not primary" and clients reconnect.
	r.Gate.SetIO(IORefuse)
	ctx, cancel := m.actionCtx()
	defer cancel()
	start := m.clock.Now()
	if err := r.Volume.Demote(ctx); err != nil {
		m.alert(resource, fmt.Sprintf("demoting the local volume failed: %v (the export refuses I/O)", err))
		return
	}
	m.log.Info("demoted", "resource", resource, "took", m.clock.Now().Sub(start))
}

func (m *Manager) setIO(resource string, mode IOMode, what string) {
	r, ok := m.locals()[resource]
	if !ok {
		return
	}
	r.Gate.SetIO(mode)
	m.log.Warn(what, "resource", resource, "io", mode.String())
}

func (m *Manager) answerDegraded(resource string, err error) {
	m.mu.Lock()
	ws := m.degraded[resource]
	delete(m.degraded, resource)
	m.mu.Unlock()
	for _, ch := range ws {
		ch <- err // buffered, one answer each
	}
	if err == nil {
		m.log.Warn("peer marked Outdated in the authority record: writes go on without it", "resource", resource)
	} else {
		m.log.Warn("degraded write refused", "resource", resource, "err", err)
	}
}

func (m *Manager) claimVIP(resource string) {
	if m.cfg.VIPs == nil {
		m.noteServe(resource)
		return
	}
	ctx, cancel := m.actionCtx()
	defer cancel()
	start := m.clock.Now()
	err := m.cfg.VIPs.Claim(ctx, resource)
	took := m.clock.Now().Sub(start)
	if err != nil {
		m.log.Error("claiming the VIP failed", "resource", resource, "err", err, "took", took)
		m.in.push(cluster.VIPResult{At: m.clock.Now(), Resource: resource, Err: err})
		return
	}
	m.noteStep(resource, "vip", start, took)
	m.in.push(cluster.VIPResult{At: m.clock.Now(), Resource: resource})
	m.noteServe(resource)
}

func (m *Manager) releaseVIP(resource string) {
	if m.cfg.VIPs == nil {
		return
	}
	ctx, cancel := m.actionCtx()
	defer cancel()
	if err := m.cfg.VIPs.Release(ctx, resource); err != nil {
		m.alert(resource, fmt.Sprintf("releasing the service address failed: %v", err))
		return
	}
	m.log.Info("VIP released", "resource", resource)
}

func (m *Manager) resync(resource string) {
	r, ok := m.locals()[resource]
	if !ok {
		return
	}
	ctx, cancel := m.actionCtx()
	defer cancel()
	if err := r.Volume.Resync(ctx, false); err != nil && !errors.Is(err, replicate.ErrBusy) {
		m.log.Warn("starting a resync failed", "resource", resource, "err", err)
		return
	}
	m.log.Info("resync from the primary requested", "resource", resource)
}

// alert is an alert of the manager's own (an action that failed).
func (m *Manager) alert(resource, text string) {
	m.execute(cluster.Ready{Actions: []cluster.Action{cluster.Alert{Resource: resource, Text: text}}})
}
