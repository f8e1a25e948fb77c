package temporalclient

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/activation-engine/activations/internal/codec"
)

// mapEnv is an envconfig.EnvLookup over a map. It always names a config file that does not
// exist, so that the developer's own ~/.config/temporalio/temporal.toml never leaks in.
type mapEnv map[string]string

func (m mapEnv) LookupEnv(k string) (string, bool) {
	if k == "TEMPORAL_CONFIG_FILE" {
		if v, ok := m[k]; ok {
			return v, true
		}
		return "/nonexistent/temporal.toml", true
	}
	v, ok := m[k]
	return v, ok
}

func (m mapEnv) Environ() []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}

// pki is a throwaway CA with a server and a client certificate, written as PEM files.
type pki struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
	ca                                                   *x509.Certificate
	caKey                                                *ecdsa.PrivateKey
	dir                                                  string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	p := &pki{ca: ca, caKey: caKey, dir: dir, caFile: filepath.Join(dir, "ca.pem")}
	writePEM(t, p.caFile, "CERTIFICATE", caDER)
	p.serverCert, p.serverKey = p.issue(t, "server", x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = p.issue(t, "client", x509.ExtKeyUsageClientAuth)
	return p
}

// issue writes a certificate for name (valid for localhost and 127.0.0.1) and its key.
func (p *pki) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

func leafCN(t *testing.T, c *tls.Certificate) string {
	t.Helper()
	require.NotNil(t, c)
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	require.NoError(t, err)
	return leaf.Subject.CommonName
}

func codecKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, codec.KeySize)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(b)
}

func TestLoadOptions(t *testing.T) {
	p := newPKI(t)
	apiKeyFile := filepath.Join(t.TempDir(), "api-key")
	require.NoError(t, os.WriteFile(apiKeyFile, []byte("file-api-key\n"), 0o600))
	key := codecKey(t)

	tests := []struct {
		name  string
		env   mapEnv
		err   string
		check func(t *testing.T, o client.Options, logs string)
	}{
		{name: "defaults: local dev server, plaintext, no encryption", env: mapEnv{},
			check: func(t *testing.T, o client.Options, logs string) {
				require.Equal(t, "localhost:7233", o.HostPort)
				require.Equal(t, "default", o.Namespace)
				require.Nil(t, o.ConnectionOptions.TLS)
				require.Nil(t, o.Credentials)
				require.Nil(t, o.DataConverter)
				require.Nil(t, o.FailureConverter)
				require.Contains(t, logs, "payload encryption: off")
				require.Equal(t, converter.GetDefaultDataConverter(), DataConverter(o))
			}},
		{name: "API key implies TLS", env: mapEnv{"TEMPORAL_ADDRESS": "ns.acct.tmprl.cloud:7233", "TEMPORAL_NAMESPACE": "ns.acct", "TEMPORAL_API_KEY": "sekrit"},
			check: func(t *testing.T, o client.Options, logs string) {
				require.Equal(t, "ns.acct.tmprl.cloud:7233", o.HostPort)
				require.Equal(t, "ns.acct", o.Namespace)
				require.NotNil(t, o.Credentials)
				require.NotNil(t, o.ConnectionOptions.TLS, "Temporal Cloud speaks TLS only")
				require.False(t, o.ConnectionOptions.TLSDisabled)
				require.NotContains(t, logs, "sekrit")
			}},
		{name: "API key with TLS turned off warns", env: mapEnv{"TEMPORAL_API_KEY": "sekrit", "TEMPORAL_TLS": "false"},
			check: func(t *testing.T, o client.Options, logs string) {
				require.True(t, o.ConnectionOptions.TLSDisabled)
				require.Contains(t, logs, "API key is sent without TLS")
				require.NotContains(t, logs, "sekrit")
			}},
		{name: "API key from a file implies TLS", env: mapEnv{EnvAPIKeyFile: apiKeyFile},
			check: func(t *testing.T, o client.Options, logs string) {
				require.NotNil(t, o.Credentials)
				require.NotNil(t, o.ConnectionOptions.TLS)
				require.NotContains(t, logs, "file-api-key")
			}},
		{name: "API key file and API key", env: mapEnv{EnvAPIKeyFile: apiKeyFile, "TEMPORAL_API_KEY": "sekrit"},
			err: "both an API key (TEMPORAL_API_KEY or the config profile) and TEMPORAL_API_KEY_FILE are set"},
		{name: "API key file missing", env: mapEnv{EnvAPIKeyFile: filepath.Join(p.dir, "nope")},
			err: "temporal API key (TEMPORAL_API_KEY_FILE)"},
		{name: "mTLS with a private CA", env: mapEnv{
			"TEMPORAL_TLS_CLIENT_CERT_PATH": p.clientCert, "TEMPORAL_TLS_CLIENT_KEY_PATH": p.clientKey,
			"TEMPORAL_TLS_SERVER_CA_CERT_PATH": p.caFile, "TEMPORAL_TLS_SERVER_NAME": "temporal.internal"},
			check: func(t *testing.T, o client.Options, _ string) {
				conf := o.ConnectionOptions.TLS
				require.NotNil(t, conf)
				require.Nil(t, o.Credentials)
				require.Equal(t, "temporal.internal", conf.ServerName)
				require.NotNil(t, conf.RootCAs)
				want := x509.NewCertPool()
				want.AddCert(p.ca)
				require.True(t, want.Equal(conf.RootCAs), "the server is verified against the CA file")
				require.NotNil(t, conf.GetClientCertificate)
				cert, err := conf.GetClientCertificate(&tls.CertificateRequestInfo{})
				require.NoError(t, err)
				require.Equal(t, "client", leafCN(t, cert))
			}},
		{name: "client certificate as PEM data", env: mapEnv{
			"TEMPORAL_TLS_CLIENT_CERT_DATA": readFile(t, p.clientCert), "TEMPORAL_TLS_CLIENT_KEY_DATA": readFile(t, p.clientKey)},
			check: func(t *testing.T, o client.Options, _ string) {
				require.Len(t, o.ConnectionOptions.TLS.Certificates, 1)
				require.Equal(t, "client", leafCN(t, &o.ConnectionOptions.TLS.Certificates[0]))
			}},
		{name: "server CA only (TLS without a client certificate)", env: mapEnv{"TEMPORAL_TLS_SERVER_CA_CERT_PATH": p.caFile},
			check: func(t *testing.T, o client.Options, _ string) {
				require.NotNil(t, o.ConnectionOptions.TLS.RootCAs)
				require.Empty(t, o.ConnectionOptions.TLS.Certificates)
				require.Nil(t, o.ConnectionOptions.TLS.GetClientCertificate)
			}},
		{name: "client certificate without its key", env: mapEnv{"TEMPORAL_TLS_CLIENT_CERT_PATH": p.clientCert},
			err: "if either client cert or key path is present, other must be present too"},
		{name: "mismatched certificate and key", env: mapEnv{"TEMPORAL_TLS_CLIENT_CERT_PATH": p.clientCert, "TEMPORAL_TLS_CLIENT_KEY_PATH": p.serverKey},
			err: "failed loading client cert/key path"},
		{name: "payload encryption on", env: mapEnv{codec.EnvKeys: "k2:" + key + ",k1:" + codecKey(t)},
			check: func(t *testing.T, o client.Options, logs string) {
				require.NotNil(t, o.DataConverter)
				require.NotNil(t, o.FailureConverter)
				require.Same(t, o.DataConverter, DataConverter(o))
				require.Contains(t, logs, "payload encryption: on")
				require.Contains(t, logs, "active_key_id=k2")
				require.Contains(t, logs, "key_ids=k2,k1")
				require.NotContains(t, logs, key)
				pl, err := o.DataConverter.ToPayload("alice@example.com")
				require.NoError(t, err)
				require.Equal(t, codec.MetadataEncodingEncrypted, string(pl.Metadata["encoding"]))
				f := o.FailureConverter.ErrorToFailure(os.ErrNotExist)
				require.NotContains(t, f.GetMessage(), "file does not exist", "failure messages are encrypted too")
			}},
		{name: "malformed codec keys", env: mapEnv{codec.EnvKeys: key},
			err: "payload encryption: codec keys in ACTIVATIONS_CODEC_KEYS: key entry 1: want keyid:base64key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			o, err := LoadOptions(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), tc.env)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				require.NotContains(t, err.Error(), key)
				require.NotContains(t, err.Error(), "sekrit")
				return
			}
			require.NoError(t, err)
			require.NotNil(t, o.Logger)
			tc.check(t, o, logs.String())
		})
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

// seen is what the fake Temporal frontend saw of each call.
type seen struct {
	mu    sync.Mutex
	auth  []string
	peers []string
}

func (s *seen) record(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	md, _ := metadata.FromIncomingContext(ctx)
	s.auth = append(s.auth, strings.Join(md.Get("authorization"), ","))
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			s.peers = append(s.peers, ti.State.PeerCertificates[0].Subject.CommonName)
		}
	}
}

func (s *seen) snapshot() (auth, peers []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.auth...), append([]string(nil), s.peers...)
}

// TestDialPresentsClientCertificateAndAPIKey dials a fake frontend that requires a client
// certificate from the test CA: the SDK's client built from Options must verify the server
// with the CA file, present the client certificate, and send the API key (read from its file,
// again after the file changed) on every call.
func TestDialPresentsClientCertificateAndAPIKey(t *testing.T) {
	p := newPKI(t)
	serverCert, err := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	roots.AddCert(p.ca)
	var s seen
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: roots, ClientAuth: tls.RequireAndVerifyClientCert})),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			s.record(ctx)
			return h(ctx, req)
		}),
		// Every WorkflowService call (GetSystemInfo first) lands here: the SDK accepts
		// Unimplemented from an old server.
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			s.record(stream.Context())
			return status.Error(codes.Unimplemented, "unknown method (fake frontend)")
		}),
	)
	hs := health.NewServer()
	hs.SetServingStatus("temporal.api.workflowservice.v1.WorkflowService", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	keyFile := filepath.Join(t.TempDir(), "api-key")
	require.NoError(t, os.WriteFile(keyFile, []byte("first-key\n"), 0o600))
	env := mapEnv{
		"TEMPORAL_ADDRESS":                 lis.Addr().String(),
		"TEMPORAL_TLS_CLIENT_CERT_PATH":    p.clientCert,
		"TEMPORAL_TLS_CLIENT_KEY_PATH":     p.clientKey,
		"TEMPORAL_TLS_SERVER_CA_CERT_PATH": p.caFile,
		EnvAPIKeyFile:                      keyFile,
	}
	opts, err := LoadOptions(nil, env)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, opts)
	require.NoError(t, err)
	defer c.Close()

	// The key file is rotated: the next call carries the new key, without a restart.
	require.NoError(t, os.WriteFile(keyFile, []byte("second-key-longer\n"), 0o600))
	_, err = c.CheckHealth(ctx, &client.CheckHealthRequest{})
	require.NoError(t, err)

	auth, peers := s.snapshot()
	require.NotEmpty(t, auth)
	require.Equal(t, "Bearer first-key", auth[0])
	require.Equal(t, "Bearer second-key-longer", auth[len(auth)-1])
	for _, a := range auth {
		require.True(t, strings.HasPrefix(a, "Bearer "), "every call carries the API key: %q", auth)
	}
	require.NotEmpty(t, peers)
	for _, cn := range peers {
		require.Equal(t, "client", cn, "every call came over mTLS with the client certificate")
	}

	// Without the client certificate the server refuses the connection.
	delete(env, "TEMPORAL_TLS_CLIENT_CERT_PATH")
	delete(env, "TEMPORAL_TLS_CLIENT_KEY_PATH")
	opts, err = LoadOptions(nil, env)
	require.NoError(t, err)
	short, cancelShort := context.WithTimeout(ctx, 5*time.Second)
	defer cancelShort()
	_, err = Connect(short, opts)
	require.Error(t, err)
}

func TestClientCertificateIsReloadedWhenRenewed(t *testing.T) {
	p := newPKI(t)
	conf := &tls.Config{}
	cert, err := tls.LoadX509KeyPair(p.clientCert, p.clientKey)
	require.NoError(t, err)
	conf.Certificates = []tls.Certificate{cert}
	var logs bytes.Buffer
	reloadClientCertificate(conf, p.clientCert, p.clientKey, slog.New(slog.NewTextHandler(&logs, nil)))
	require.Empty(t, conf.Certificates)

	got, err := conf.GetClientCertificate(nil)
	require.NoError(t, err)
	require.Equal(t, "client", leafCN(t, got))

	// Renewal: a new pair replaces the files (a later mtime, as a real renewal has).
	renewedCert, renewedKey := p.issue(t, "client-renewed", x509.ExtKeyUsageClientAuth)
	require.NoError(t, os.Rename(renewedCert, p.clientCert))
	require.NoError(t, os.Rename(renewedKey, p.clientKey))
	later := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(p.clientCert, later, later))
	require.NoError(t, os.Chtimes(p.clientKey, later, later))
	got, err = conf.GetClientCertificate(nil)
	require.NoError(t, err)
	require.Equal(t, "client-renewed", leafCN(t, got))

	// A half-written renewal keeps the previous pair.
	require.NoError(t, os.WriteFile(p.clientKey, []byte("garbage"), 0o600))
	got, err = conf.GetClientCertificate(nil)
	require.NoError(t, err)
	require.Equal(t, "client-renewed", leafCN(t, got))
	require.Contains(t, logs.String(), "keeping the previous one")
}

func TestFileSecretRereadsOnChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	require.NoError(t, os.WriteFile(path, []byte("  one\n"), 0o600))
	f := &fileSecret{path: path}
	v, err := f.get()
	require.NoError(t, err)
	require.Equal(t, "one", v)
	require.NoError(t, os.WriteFile(path, []byte("two-two\n"), 0o600))
	v, err = f.get()
	require.NoError(t, err)
	require.Equal(t, "two-two", v)
	require.NoError(t, os.WriteFile(path, []byte("\n"), 0o600))
	_, err = f.get()
	require.ErrorContains(t, err, "is empty")
}
