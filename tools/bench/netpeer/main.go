// Command netpeer is the far end of the benchmark's loopback link probes:
// a separate process, so that a probe crosses the kernel and a process
// wake-up the way the replication link between two tandem daemons does.
//
// Each connection starts with one mode byte:
//
//	'e' echo: a 2-byte big-endian message size follows; every message of
//	    that size is sent back as soon as it is complete (ping-pong).
//	's' sink: everything up to the client's half-close is read and thrown
//	    away, then the byte count goes back as 8 bytes big-endian.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("netpeer: listen", "err", err)
		os.Exit(1)
	}
	log.Info("netpeer: listening", "addr", l.Addr().String())
	for {
		c, err := l.Accept()
		if err != nil {
			log.Error("netpeer: accept", "err", err)
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			if err := serve(c); err != nil && !errors.Is(err, io.EOF) {
				log.Warn("netpeer: connection", "remote", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

func serve(c net.Conn) error {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return err
	}
	switch mode[0] {
	case 'e':
		var hdr [2]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		size := int(binary.BigEndian.Uint16(hdr[:]))
		if size == 0 {
			return errors.New("netpeer: echo message size 0")
		}
		buf := make([]byte, size)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return err
			}
			if _, err := c.Write(buf); err != nil {
				return err
			}
		}
	case 's':
		// Reads as large as the replication's resync chunks; io.Discard's
		// 8 KiB buffer would make the sink, not the link, the limit.
		buf := make([]byte, 256<<10)
		var n int64
		for {
			k, err := c.Read(buf)
			n += int64(k)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
		}
		var out [8]byte
		binary.BigEndian.PutUint64(out[:], uint64(n))
		_, err := c.Write(out[:])
		return err
	default:
		return fmt.Errorf("netpeer: unknown mode %q", mode[0])
	}
}
