package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"time"
)

// The link probes measure what the loopback "network" between the two
// daemons gives, in the same run as the replicated rows: the round trip of
// a small message (the QD1 latency budget) and the throughput of one TCP
// stream (what a resync could reach at best). Their far end is netpeer, a
// separate process.

const (
	// pingSize is small like a replication acknowledgement.
	pingSize = 64
	// streamChunk matches the replication's resync chunk (256 KiB).
	streamChunk = 256 << 10
	// pingWarmup round trips are not counted (connection set-up, page
	// faults, the scheduler learning the pattern).
	pingWarmup = 200
)

// rttSample is one ping-pong run: percentiles of the round trip in µs.
type rttSample struct {
	N        int
	P50, P99 float64
}

// pingPong sends pingSize-byte messages one at a time and waits for each
// echo, for at most maxN round trips or dur, whichever ends first.
func pingPong(ctx context.Context, addr string, maxN int, dur time.Duration) (rttSample, error) {
	c, err := dialPeer(ctx, addr, 'e')
	if err != nil {
		return rttSample{}, err
	}
	defer c.Close()
	var hdr [2]byte
	binary.BigEndian.PutUint16(hdr[:], pingSize)
	if _, err := c.Write(hdr[:]); err != nil {
		return rttSample{}, fmt.Errorf("bench: ping-pong: %w", err)
	}
	if err := c.SetDeadline(time.Now().Add(dur + 30*time.Second)); err != nil {
		return rttSample{}, fmt.Errorf("bench: ping-pong: %w", err)
	}
	msg := make([]byte, pingSize)
	back := make([]byte, pingSize)
	rtts := make([]float64, 0, maxN)
	var end time.Time
	for i := 0; len(rtts) < maxN; i++ {
		if i == pingWarmup {
			end = time.Now().Add(dur)
		}
		if i > pingWarmup && time.Now().After(end) {
			break
		}
		if i%1024 == 0 && ctx.Err() != nil {
			return rttSample{}, ctx.Err()
		}
		msg[0] = byte(i)
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return rttSample{}, fmt.Errorf("bench: ping-pong: %w", err)
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return rttSample{}, fmt.Errorf("bench: ping-pong: %w", err)
		}
		d := time.Since(start)
		if back[0] != msg[0] {
			return rttSample{}, errors.New("bench: ping-pong: the echo is not the message sent")
		}
		if i >= pingWarmup {
			rtts = append(rtts, float64(d.Nanoseconds())/1e3)
		}
	}
	return summarizeRTT(rtts)
}

func summarizeRTT(us []float64) (rttSample, error) {
	if len(us) == 0 {
		return rttSample{}, errors.New("bench: ping-pong: no round trip measured")
	}
	s := slices.Clone(us)
	slices.Sort(s)
	return rttSample{N: len(s), P50: nearestRank(s, 50), P99: nearestRank(s, 99)}, nil
}

// nearestRank is the p-th percentile of sorted s by the nearest-rank
// method (the smallest value with at least p% of the values at or below it).
func nearestRank(sorted []float64, p float64) float64 {
	rank := int(float64(len(sorted))*p/100+0.999999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// stream writes streamChunk-sized buffers for dur, half-closes and waits
// for the peer's count of bytes received: bytes per second that arrived,
// over the time from the first write to the peer's answer.
func stream(ctx context.Context, addr string, dur time.Duration) (float64, error) {
	c, err := dialPeer(ctx, addr, 's')
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(dur + 30*time.Second)); err != nil {
		return 0, fmt.Errorf("bench: stream: %w", err)
	}
	buf := make([]byte, streamChunk)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	start := time.Now()
	end := start.Add(dur)
	var sent int64
	for i := 0; time.Now().Before(end); i++ {
		if i%64 == 0 && ctx.Err() != nil {
			return 0, ctx.Err()
		}
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			return 0, fmt.Errorf("bench: stream: %w", err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, fmt.Errorf("bench: stream: %w", err)
	}
	var cnt [8]byte
	if _, err := io.ReadFull(c, cnt[:]); err != nil {
		return 0, fmt.Errorf("bench: stream: reading the peer's count: %w", err)
	}
	el := time.Since(start)
	got := int64(binary.BigEndian.Uint64(cnt[:]))
	if got != sent {
		return 0, fmt.Errorf("bench: stream: the peer received %d bytes, %d were sent", got, sent)
	}
	return float64(got) / el.Seconds(), nil
}

func dialPeer(ctx context.Context, addr string, mode byte) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("bench: dialing netpeer %s: %w", addr, err)
	}
	if _, err := c.Write([]byte{mode}); err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: netpeer %s: %w", addr, err)
	}
	return c, nil
}

// waitListening dials addr until it accepts, bounded by ctx.
func waitListening(ctx context.Context, addr string, p *process, logPath string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		select {
		case <-p.done:
			return fmt.Errorf("bench: netpeer exited during start-up (%v); log: %s", p.err, tail(logPath))
		case <-ctx.Done():
			return fmt.Errorf("bench: netpeer not listening on %s: %v; log: %s", addr, err, tail(logPath))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

const (
	// pingMax and pingDuration bound one round-trip measurement.
	pingMax      = 50000
	pingDuration = 2 * time.Second
)

// netPeer is the running netpeer process.
type netPeer struct {
	argv []string
	addr string
	proc *process
}

func startNetPeer(ctx context.Context, bin, work string) (*netPeer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := &netPeer{argv: []string{bin, "-listen", addr}, addr: addr}
	logPath := filepath.Join(work, "netpeer.log")
	if p.proc, err = startProcess(p.argv, logPath); err != nil {
		return nil, fmt.Errorf("bench: starting netpeer: %w", err)
	}
	if err := waitListening(ctx, addr, p.proc, logPath); err != nil {
		p.proc.stopDefault()
		return nil, err
	}
	return p, nil
}
