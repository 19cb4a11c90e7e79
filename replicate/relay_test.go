package replicate

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// relay forwards TCP connections to a target until frozen. Frozen, it
// stands for a node whose power was cut: its connections stay open on the
// other side, nothing more arrives on them, and no FIN or RST is passed
// on, so only a timeout (or being told of the fence) ends the session.
type relay struct {
	t      testing.TB
	addr   string
	target string
	ln     net.Listener
	frozen atomic.Bool
	done   chan struct{}
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newRelay(t testing.TB, target string) *relay {
	t.Helper()
	r := &relay{t: t, target: target, ln: listen(t, "127.0.0.1:0"), done: make(chan struct{})}
	r.addr = r.ln.Addr().String()
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.close)
	return r
}

func (r *relay) freeze() { r.frozen.Store(true) }

func (r *relay) track(c net.Conn) {
	r.mu.Lock()
	r.conns = append(r.conns, c)
	r.mu.Unlock()
}

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.track(c)
		if r.frozen.Load() {
			continue // held open, never answered
		}
		up, err := net.Dial("tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		r.track(up)
		r.wg.Add(2)
		go r.pipe(up, c)
		go r.pipe(c, up)
	}
}

// pipe copies src to dst; frozen, it drops what it reads and passes no
// close on.
func (r *relay) pipe(dst, src net.Conn) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if r.frozen.Load() {
			if err != nil {
				<-r.done
				return
			}
			continue
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			if !r.frozen.Load() {
				dst.Close()
			}
			return
		}
	}
}

func (r *relay) close() {
	select {
	case <-r.done:
		return
	default:
	}
	close(r.done)
	r.ln.Close()
	r.mu.Lock()
	for _, c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
