package main

import "fmt"

// exitStatus is an error that sets the process's exit status to Code. A
// command returns it when its status means something beyond failure:
// `fence status` exits 2 for a node that is off, as fence-agents do, and
// `lab exec` passes on the status of the command it ran. Msg, when set, is
// printed like any other error; an empty Msg prints nothing (the command
// has already said what it found).
type exitStatus struct {
	Code int
	Msg  string
}

func (e *exitStatus) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Msg
}
