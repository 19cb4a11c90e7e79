// Package authority keeps the cluster's authority record durable: every
// cluster.Command is appended to a replicated log (hashicorp/raft among the
// fixed set of voters, the two data nodes and the witness), applied with the
// pure cluster.Apply once a majority of voters has it on disk, and only then
// takes effect. Quorum means a majority of voters, as it does everywhere
// else in tandem.
//
// Any voter may propose: a follower forwards the command to the leader over
// the same authenticated port the raft traffic uses, so the surviving data
// node can propose while the leader was the primary that just died. The
// outcome (the record after the command, or the refusal cluster.Apply gave)
// comes back to the proposer, and every node sees every entry, in log order,
// through Config.OnCommit as cluster.Committed.
//
// See docs/architecture.md, "The authority store (cluster/authority)".
package authority
