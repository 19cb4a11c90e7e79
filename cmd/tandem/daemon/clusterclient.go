package daemon

import (
	"context"
	"net/http"
)

// Cluster runs an operation of the cluster layer (switchover, standby,
// unstandby, fence-confirm) through this node's daemon.
func (c *Client) Cluster(ctx context.Context, op string, req ClusterRequest) (ClusterReply, error) {
	var out ClusterReply
	err := c.do(ctx, http.MethodPost, "/v1/cluster/"+op, req, &out)
	return out, err
}
