// Package demo holds the demo, demo.sh (run by `make demo`): one node
// serving a file over NBD; two replicated `tandem daemon`s with a
// secondary killed and resynced; and, as the main story, the lab with the
// cluster layer: ext4 mounted through the VIP, the primary crashed, the
// time until I/O resumed, every file checked, the old primary resynced and
// the replicas compared. The test runs it so that the demo cannot silently
// rot.
package demo
