// Package manager is the node manager: the executor of the cluster's pure
// role state machine (cluster.Machine). One goroutine owns the machine, in
// the manner of etcd-io/raft's node loop: it takes one event (a membership
// change, a committed log entry, a tick of the injected clock, the result of
// an earlier action, an admin command, a volume's OnDegraded call), steps
// the machine, carries out the Ready actions in order against small
// interfaces (the local volumes, their I/O gates, the fencers, the VIP set,
// the authority log), and turns their outcomes back into events.
//
// Actions on a resource's volume, gate and VIP run in the loop, in the
// order the machine gave (Promote before ClaimVIP, Demote before
// ReleaseVIP), each bounded by ActionTimeout. Fencing and proposals take
// seconds and run in their own goroutines; their results come back through
// the loop's inbox, which never blocks the sender (raft's FSM callback must
// not stall).
//
// Every step of a failover is logged with its duration (detect, fence,
// commit, promote, VIP claim, serve) and kept for `tandem status`.
package manager
