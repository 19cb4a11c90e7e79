package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/tandem-ha/tandem/cmd/tandem/config"
)

// metricsTLS is the metrics listener's TLS (nodes[].metrics-tls). The
// files are read again when one of them changes on disk, so a renewed
// certificate is served from the next handshake without a restart; files
// that do not load keep the last good ones in use (and say so in the log).
type metricsTLS struct {
	files config.TLS
	log   *slog.Logger

	mu   sync.Mutex
	mods [3]time.Time
	cfg  *tls.Config // nil until the first good load
}

func newMetricsTLS(t *config.TLS, log *slog.Logger) (*metricsTLS, error) {
	m := &metricsTLS{files: *t, log: log}
	if _, err := m.current(); err != nil {
		return nil, fmt.Errorf("metrics-tls: %w", err)
	}
	return m, nil
}

// config is the listener's tls.Config: each handshake takes the current one.
func (m *metricsTLS) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return m.current()
		},
	}
}

// current returns the tls.Config of the files as they are now.
func (m *metricsTLS) current() (*tls.Config, error) {
	var mods [3]time.Time
	for i, p := range []string{m.files.Cert, m.files.Key, m.files.CA} {
		if p == "" {
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return m.keep(err)
		}
		mods[i] = st.ModTime()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg != nil && mods == m.mods {
		return m.cfg, nil
	}
	cfg, err := m.load()
	if err != nil {
		if m.cfg != nil {
			m.log.Warn("metrics-tls: the changed files do not load; serving the previous certificate", "err", err)
			return m.cfg, nil
		}
		return nil, err
	}
	if m.cfg != nil {
		m.log.Info("metrics-tls: certificate files changed; serving the new ones")
	}
	m.cfg, m.mods = cfg, mods
	return cfg, nil
}

// keep answers a stat error: the last good config if there is one.
func (m *metricsTLS) keep(err error) (*tls.Config, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg != nil {
		return m.cfg, nil
	}
	return nil, err
}

func (m *metricsTLS) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(m.files.Cert, m.files.Key)
	if err != nil {
		return nil, fmt.Errorf("loading %s and %s: %w", m.files.Cert, m.files.Key, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if m.files.CA != "" {
		pem, err := os.ReadFile(m.files.CA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", m.files.CA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
