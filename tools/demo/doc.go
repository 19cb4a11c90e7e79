// Package demo holds the demo, demo.sh (run by `make demo`): one node
// serving a file over NBD, then two replicated `tandem daemon`s with a
// secondary killed and resynced; and a test that runs it so that the demo
// cannot silently rot.
package demo
