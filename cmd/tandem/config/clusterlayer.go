package config

import (
	"fmt"
	"strings"
)

// ClusterLayer reports whether the configuration enables the cluster layer
// (membership, the authority log and the node manager): some node has a
// gossip or authority address. Without it roles are manual, as before.
func (c *Config) ClusterLayer() bool {
	for _, n := range c.Nodes {
		if n.Gossip != "" || n.Authority != "" {
			return true
		}
	}
	return false
}

// checkClusterLayer: once enabled, every node is a voter and needs both
// addresses; quorum needs an odd number of voters, at least three (two data
// nodes and a witness); no address is used twice.
func (c *Config) checkClusterLayer(ps *problems) {
	if !c.ClusterLayer() {
		return
	}
	used := map[string]string{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		path := fmt.Sprintf("nodes[%d]", i)
		for _, k := range []struct{ key, val string }{{"gossip", n.Gossip}, {"authority", n.Authority}} {
			if k.val == "" {
				ps.add(n.lines.at(""), path+"."+k.key,
					fmt.Sprintf("node %s has no %s address, but the cluster layer is enabled (another node has one)", n.Name, k.key),
					fmt.Sprintf("add %s: HOST:PORT to every node (e.g. %s), or remove gossip and authority from all nodes for manual roles", k.key, exampleAddr(n, k.key)))
				continue
			}
			if other, dup := used[k.val]; dup {
				ps.add(n.lines.at(k.key), path+"."+k.key, fmt.Sprintf("%s is also %s", k.val, other), "give each node its own gossip and authority address")
				continue
			}
			used[k.val] = fmt.Sprintf("node %s's %s address", n.Name, k.key)
		}
	}
	if v := len(c.Nodes); v < 3 || v%2 == 0 {
		ps.add(c.lines.at("nodes"), "nodes",
			fmt.Sprintf("%d nodes (%s): the cluster layer's quorum needs an odd number of voters, at least three", v, strings.Join(c.nodeNames(), ", ")),
			"add a witness node (a node that holds no replica) so that two data nodes and a witness vote")
	}
}

func exampleAddr(n *Node, key string) string {
	port := "7946"
	if key == "authority" {
		port = "7947"
	}
	host := n.Address
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if host == "" {
		host = "192.0.2.10"
	}
	return host + ":" + port
}
