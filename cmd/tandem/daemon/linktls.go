package daemon

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
	"github.com/tandem-ha/tandem/replicate"
)

// linkFor is the replication link's settings of a resource's
// configuration, its TLS files read now. sum is a digest of those files'
// bytes (zero without TLS), so that adjust notices a certificate renewed
// in place, under the same paths.
func (d *Daemon) linkFor(rc *config.Resource, peer string) (replicate.LinkSettings, [32]byte, error) {
	d.cfgMu.RLock()
	ls := replicate.LinkSettings{Protocol: string(rc.Protocol), Compression: string(rc.Compression)}
	ls.Listen, ls.PeerAddress = linkAddresses(rc, d.node.Name)
	t := rc.TLS
	d.cfgMu.RUnlock()
	if t == nil {
		return ls, [32]byte{}, nil
	}
	tc, sum, err := linkTLS(t, peer)
	if err != nil {
		return ls, sum, fmt.Errorf("resource %s: tls: %w", rc.Name, err)
	}
	ls.TLS = tc
	return ls, sum, nil
}

// linkAddresses are where node's replica of rc listens for the link and
// where it dials the peer's.
func linkAddresses(rc *config.Resource, node string) (listen, peer string) {
	if rp := rc.Replica(node); rp != nil {
		listen = rp.Address
	}
	if pr := rc.Peer(node); pr != nil {
		peer = pr.Address
	}
	return listen, peer
}

// linkTLS is mutual TLS 1.3 between the two replicas: both certificates
// are checked against the resource's CA, and the peer's must name the peer
// node (a DNS name in its subject alternative names), so a certificate of
// another node of the same CA does not pass for the peer.
func linkTLS(t *config.TLS, peer string) (*tls.Config, [32]byte, error) {
	var files [3][]byte
	h := sha256.New()
	for i, path := range []string{t.Cert, t.Key, t.CA} {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, [32]byte{}, err
		}
		files[i] = b
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	cert, err := tls.X509KeyPair(files[0], files[1])
	if err != nil {
		return nil, sum, fmt.Errorf("%s and %s: %w", t.Cert, t.Key, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(files[2]) {
		return nil, sum, fmt.Errorf("%s holds no PEM certificate", t.CA)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ServerName:   peer, // the dialing side checks the listener's name
		MinVersion:   tls.VersionTLS13,
		// The listening side checks the dialer's name too (the chain was
		// verified against the CA before this runs).
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: the peer sent no certificate")
			}
			if err := cs.PeerCertificates[0].VerifyHostname(peer); err != nil {
				return fmt.Errorf("tls: the peer's certificate does not name node %s: %w", peer, err)
			}
			return nil
		},
	}, sum, nil
}
