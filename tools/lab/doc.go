// Package lab builds a whole tandem cluster on one machine: data nodes
// alpha and bravo, a witness and a client, each in a network namespace of
// its own, joined by a bridge that lives in yet another namespace, with an
// OpenIPMI ipmi_sim BMC per data node whose power-off kills that node's
// daemon and whose power-on starts it again.
//
// Every address is in 198.51.100.0/24 (TEST-NET-2), exists only inside the
// lab's namespaces, and no namespace has a default route: lab traffic
// starts and ends inside the lab, and nothing can leave the machine.
//
// The lab keeps all its state in one directory (configuration, secret,
// disks, BMC files, PID records, logs). Namespace names are derived from
// that directory, so two labs in two directories coexist, and Down can
// remove everything a lab made from the directory alone, also after a
// partial Up or a crashed run. Processes are tracked by the PID they were
// started with, checked against their start time before any signal, so a
// reused PID is never killed.
package lab
