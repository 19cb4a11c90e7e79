// Package cluster decides who runs each resource. It owns the durable
// authority record (who is primary at which epoch, which replicas are
// UpToDate, every fencing confirmation), the commands that change it, and
// the per-node decision state machine that turns membership, the local
// volumes' state, fencing results, committed records and admin commands into
// actions.
//
// Both are pure, in the manner of etcd-io/raft: Apply(record, command) is a
// deterministic function that a replicated log (hashicorp/raft among the
// voters) applies in one order on every voter; Machine.Step consumes one
// event and returns the actions to carry out. Nothing here does I/O or reads
// a clock: time arrives in events, so tests drive whole clusters through
// scripted and randomized histories and check the safety rules after every
// step (see docs/architecture.md, "The cluster package").
package cluster
