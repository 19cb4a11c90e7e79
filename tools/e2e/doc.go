// Package e2e holds end-to-end tests of the tandem binary: they build it
// (testenv.BuildTandem), run it as a separate process the way an operator
// would, drive it with real NBD clients (qemu-io, fio, nbdcopy) and observe
// it from outside (strace, signals, the backing files).
//
// The package has no code of its own; everything is in its tests.
package e2e
