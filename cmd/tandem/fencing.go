package main

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/tandem-ha/tandem/cluster/manager"
	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/fence"
)

// confirmStore is where the operators' confirmations live on this host: the
// fence directory in the local node's data-dir.
func confirmStore(local *config.Node) *fence.Store {
	return fence.NewStore(filepath.Join(local.DataDir, fence.ConfirmDir), nil)
}

// fencerFor turns node target's configured levels into a Fencer. store holds
// the confirmations a manual level reads; it may be nil only when the node
// has no manual level.
func fencerFor(cfg *config.Config, target string, store *fence.Store, log *slog.Logger) (*fence.Fencer, error) {
	n, err := cfg.Node(target)
	if err != nil {
		return nil, err
	}
	if len(n.Fencing) == 0 {
		return nil, fmt.Errorf("node %s: %w: add a fencing list to its entry in %s (docs/configuration.md, nodes[].fencing)",
			target, fence.ErrNoLevels, cfg.Path)
	}
	levels := make([]fence.Method, 0, len(n.Fencing))
	var errs []error
	for i, l := range n.Fencing {
		m, err := fenceMethod(l, target, store, log)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: level %d: %w", target, i+1, err))
			continue
		}
		levels = append(levels, m)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return fence.New(target, levels, fence.Options{Log: log}), nil
}

func fenceMethod(l config.FenceLevel, target string, store *fence.Store, log *slog.Logger) (fence.Method, error) {
	switch l.Type {
	case config.FenceIPMI:
		retries := l.Retries
		if retries == 0 {
			retries = -1 // fence.IPMIConfig: 0 is the default, negative none
		}
		return fence.NewIPMI(fence.IPMIConfig{
			Address: l.Address, Port: l.Port, Username: l.Username, PasswordFile: l.PasswordFile,
			CipherSuite: l.CipherSuite, Privilege: l.Privilege, Interface: l.Interface,
			Timeout: l.Timeout, Retries: retries, Log: log,
		})
	case config.FenceAgent:
		return fence.NewAgent(fence.AgentConfig{
			Path: l.Agent, Options: l.Options, PasswordFile: l.PasswordFile, Plug: l.Plug,
			Timeout: l.Timeout, Log: log,
		})
	case config.FenceManual:
		if store == nil {
			return nil, errors.New("a manual level reads the confirmations in the local node's data-dir: pass --node NAME (this host is not a node)")
		}
		return fence.NewManual(target, store, l.Timeout, nil), nil
	}
	return nil, fmt.Errorf("unknown fencing type %q", l.Type)
}

// clusterFencer gives the cluster layer of node local the fencer of any
// other node, built from its configured levels at each use (a password
// file changed since is read again).
func clusterFencer(cfg *config.Config, local string, log *slog.Logger) func(string) (manager.Fencer, error) {
	return func(target string) (manager.Fencer, error) {
		n, err := cfg.Node(local)
		if err != nil {
			return nil, err
		}
		f, err := fencerFor(cfg, target, confirmStore(n), log)
		if err != nil {
			return nil, err
		}
		return f, nil
	}
}
