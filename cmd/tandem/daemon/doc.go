// Package daemon is where `tandem daemon` puts a node together, in one
// place: the configuration gives each local replica its data area and
// metadata area (storage.go), a replicated volume is opened on them
// (volume.go), the node's NBD servers export the volumes of the resources
// this node is Primary for (exports.go), and the admin API on a Unix socket
// lets `tandem status`, `promote` and friends drive them (admin.go,
// client.go). Roles are manual: only an admin command changes them.
//
// The volume is an interface here so the wiring is tested with a fake; the
// binary plugs in replicate.Open.
package daemon
