// Command tandem is the one binary of the tandem HA block-storage appliance:
// the daemon of data nodes and witnesses, the admin CLI, the one-node NBD
// server, fencing by hand and the lab (see README.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Set at build time: go build -ldflags "-X main.version=v1.2.3 -X main.commit=abc123".
var (
	version = "dev"
	commit  = ""
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command line and returns the process exit status. Every
// long-running command stops cleanly on SIGINT or SIGTERM through ctx.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd(&app{stdout: stdout, stderr: stderr})
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		var es *exitStatus
		if errors.As(err, &es) {
			if es.Msg != "" {
				fmt.Fprintf(stderr, "tandem: %s\n", es.Msg)
			}
			return es.Code
		}
		fmt.Fprintf(stderr, "tandem: %v\n", err)
		return 1
	}
	return 0
}
