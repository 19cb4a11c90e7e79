package replicate

import "net"

// kill stops a volume the way kill -9 stops the daemon: no flush, no
// Disconnect, no clean metadata close. The disks stay as they are.
func (v *Volume) kill() {
	v.closed.Store(true)
	v.cancel()
	_ = v.ln.Load().Close()
	v.mu.Lock()
	v.standalone = true
	l := v.sess
	v.mu.Unlock()
	if l != nil {
		l.end("killed", false)
		<-l.done
	}
	v.wg.Wait()
}

// sessionConn is the network connection of the running session (nil
// without one).
func (v *Volume) sessionConn() net.Conn {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.sess == nil {
		return nil
	}
	return v.sess.c.NetConn()
}
