package temporalclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
)

// EnvAPIKeyFile names a file holding the Temporal API key (e.g. a mounted secret). It is our
// addition to the standard variables: other Temporal tools read only TEMPORAL_API_KEY. The file
// is re-read when it changes, so a rotated key is used without a restart.
const EnvAPIKeyFile = "TEMPORAL_API_KEY_FILE"

// apiKeyFileOf returns the API key file to use, refusing two sources of the key.
func apiKeyFileOf(env envconfig.EnvLookup, apiKey string) (string, error) {
	path, ok := env.LookupEnv(EnvAPIKeyFile)
	if !ok || path == "" {
		return "", nil
	}
	if apiKey != "" {
		return "", fmt.Errorf("both an API key (TEMPORAL_API_KEY or the config profile) and %s are set: use one", EnvAPIKeyFile)
	}
	return path, nil
}

// apiKeyFromFile checks the file now and returns credentials that read it again when it changes.
func apiKeyFromFile(path string) (client.Credentials, error) {
	f := &fileSecret{path: path}
	if _, err := f.get(); err != nil {
		return nil, err
	}
	return client.NewAPIKeyDynamicCredentials(func(context.Context) (string, error) { return f.get() }), nil
}

// fileSecret caches a secret file's trimmed content, re-reading it when its size or modification
// time changes (a stat per call: cheap beside a gRPC request).
type fileSecret struct {
	path string

	mu    sync.Mutex
	mod   time.Time
	size  int64
	value string
}

func (f *fileSecret) get() (string, error) {
	st, err := os.Stat(f.path)
	if err != nil {
		return "", fmt.Errorf("temporal API key (%s): %w", EnvAPIKeyFile, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.value != "" && st.ModTime().Equal(f.mod) && st.Size() == f.size {
		return f.value, nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return "", fmt.Errorf("temporal API key (%s): %w", EnvAPIKeyFile, err)
	}
	v := string(bytes.TrimSpace(b))
	if v == "" {
		return "", fmt.Errorf("temporal API key (%s): %s is empty", EnvAPIKeyFile, f.path)
	}
	f.value, f.mod, f.size = v, st.ModTime(), st.Size()
	return v, nil
}

// defaultTLS is what envconfig uses when an API key implies TLS: system roots, Go's defaults.
func defaultTLS() *tls.Config { return &tls.Config{} }

// reloadClientCertificate makes conf present the pair at certPath/keyPath as it is at each
// handshake: renewed certificates are picked up on reconnection. A pair that fails to load (a
// renewal half written) keeps the previous one, with a warning.
func reloadClientCertificate(conf *tls.Config, certPath, keyPath string, logger *slog.Logger) {
	r := &certReloader{certPath: certPath, keyPath: keyPath, logger: logger}
	if len(conf.Certificates) > 0 {
		r.cert = &conf.Certificates[0]
		r.certMod, r.keyMod = modTime(certPath), modTime(keyPath)
	}
	conf.Certificates = nil
	conf.GetClientCertificate = r.get
}

type certReloader struct {
	certPath, keyPath string
	logger            *slog.Logger

	mu              sync.Mutex
	cert            *tls.Certificate
	certMod, keyMod time.Time
}

func (r *certReloader) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	certMod, keyMod := modTime(r.certPath), modTime(r.keyPath)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert != nil && certMod.Equal(r.certMod) && keyMod.Equal(r.keyMod) {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certPath, r.keyPath)
	if err != nil {
		if r.cert != nil {
			r.logger.Warn("reload Temporal client certificate; keeping the previous one", "cert", r.certPath, "error", err)
			return r.cert, nil
		}
		return nil, fmt.Errorf("load Temporal client certificate %s: %w", r.certPath, err)
	}
	r.cert, r.certMod, r.keyMod = &cert, certMod, keyMod
	return r.cert, nil
}

func modTime(path string) time.Time {
	st, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}
