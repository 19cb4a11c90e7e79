// Command gonbd serves one file over NBD with github.com/pojntfx/go-nbd, so
// the benchmark can compare tandem with another Go NBD server. It uses the
// library as shipped (FileBackend, server.Handle): no tuning, since the point
// is to measure the library a user would pick up.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/pojntfx/go-nbd/pkg/backend"
	"github.com/pojntfx/go-nbd/pkg/server"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:10809", "TCP address to listen on")
	file := flag.String("file", "", "file to serve (required)")
	name := flag.String("export", "bench", "export name")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*listen, *file, *name, log); err != nil {
		log.Error("gonbd failed", "err", err)
		os.Exit(1)
	}
}

func run(addr, path, name string, log *slog.Logger) error {
	if path == "" {
		return errors.New("gonbd: -file is required")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("gonbd: opening export file: %w", err)
	}
	defer f.Close()

	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("gonbd: listening: %w", err)
	}
	// No signal handling: SIGTERM's default action ends the process, and
	// writes already reached the page cache, which is all the benchmark
	// needs (go-nbd has no flush anyway).
	exports := []*server.Export{{Name: name, Backend: backend.NewFileBackend(f)}}
	opts := &server.Options{SupportsMultiConn: true}
	for {
		conn, err := l.Accept()
		if err != nil {
			return fmt.Errorf("gonbd: accepting: %w", err)
		}
		go func() {
			defer conn.Close()
			if err := server.Handle(conn, exports, opts); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Debug("connection ended", "remote", conn.RemoteAddr(), "err", err)
			}
		}()
	}
}
