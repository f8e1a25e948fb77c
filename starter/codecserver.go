package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"go.temporal.io/sdk/converter"

	"github.com/activation-engine/activations/internal/codec"
)

// Where the codec server's bearer token comes from: the environment or a file, never a flag.
const (
	envCodecServerToken     = "ACTIVATIONS_CODEC_SERVER_TOKEN"
	envCodecServerTokenFile = "ACTIVATIONS_CODEC_SERVER_TOKEN_FILE"
)

// codecServerMinToken keeps guessable tokens out: the server may face a network.
const codecServerMinToken = 16

// codecServerMaxBody bounds a request: one decode call carries a page of history payloads, each
// at most 2 MiB on the Temporal side.
const codecServerMaxBody = 32 << 20

// codecServerUsage is the help text of `starter codec-server -h`.
const codecServerUsage = `usage: starter codec-server [--addr HOST:PORT] [--allowed-origin URL]... [--insecure-no-auth]
                           [--tls-cert FILE --tls-key FILE]

Serves the Temporal codec server protocol (POST /encode, POST /decode) with the payload keys of
` + codec.EnvKeys + ` or ` + codec.EnvKeysFile + `, so that the Temporal UI and CLI show
decrypted payloads. Requests need "Authorization: Bearer TOKEN", the token being read from
` + envCodecServerToken + ` or the file ` + envCodecServerTokenFile + `.

flags:
`

// originList is a repeatable flag also accepting comma-separated values.
type originList struct {
	values []string
	set    bool
}

func (o *originList) String() string { return strings.Join(o.values, ",") }

func (o *originList) Set(v string) error {
	if !o.set {
		// The first explicit value replaces the default.
		o.values, o.set = nil, true
	}
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimRight(strings.TrimSpace(part), "/")
		if part == "" {
			continue
		}
		u, err := url.Parse(part)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" {
			return fmt.Errorf("allowed origin %q: want scheme://host[:port], e.g. http://localhost:8233", part)
		}
		o.values = append(o.values, part)
	}
	return nil
}

func cmdCodecServer(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	fs := newFlags("codec-server")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), codecServerUsage)
		fs.PrintDefaults()
	}
	addr := fs.String("addr", "127.0.0.1:8081", "listen address")
	origins := &originList{values: []string{"http://localhost:8233"}}
	fs.Var(origins, "allowed-origin", "origin of a Temporal UI allowed to call the server (repeatable or comma list; default http://localhost:8233, the dev server's UI)")
	noAuth := fs.Bool("insecure-no-auth", false, "serve without a token (refused unless --addr is a loopback address)")
	tlsCert := fs.String("tls-cert", "", "serve HTTPS with this certificate file (with --tls-key)")
	tlsKey := fs.String("tls-key", "", "private key file of --tls-cert")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("codec-server takes no arguments (got %q)", pos)
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	c, err := codec.FromEnv(os.LookupEnv)
	if err != nil {
		return err
	}
	if c == nil {
		return fmt.Errorf("no payload keys: set %s or %s (the same keys as the worker's)", codec.EnvKeys, codec.EnvKeysFile)
	}
	token, err := codecServerToken(os.LookupEnv)
	if err != nil {
		return err
	}
	if err := checkCodecServerAuth(*addr, token, *noAuth); err != nil {
		return err
	}
	h := newCodecServerHandler(c, origins.values, token, logger)
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("codec server: %w", err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	scheme := "http"
	if *tlsCert != "" {
		scheme = "https"
	} else if !isLoopback(*addr) {
		logger.Warn("codec server without TLS on a non-loopback address: the token and decrypted payloads cross the network in clear; use --tls-cert or a TLS proxy")
	}
	endpoint := fmt.Sprintf("%s://%s", scheme, lis.Addr())
	logger.Info("codec server started", "endpoint", endpoint, "allowed_origins", strings.Join(origins.values, ","),
		"auth", token != nil, "active_key_id", c.ActiveKeyID(), "key_ids", strings.Join(c.KeyIDs(), ","))
	fmt.Fprintf(out, "codec server on %s (Temporal UI: Settings > Codec Server > %s; CLI: --codec-endpoint %s)\n", endpoint, endpoint, endpoint)

	errc := make(chan error, 1)
	go func() {
		if *tlsCert != "" {
			errc <- srv.ServeTLS(lis, *tlsCert, *tlsKey)
			return
		}
		errc <- srv.Serve(lis)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("codec server: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("codec server shutdown: %w", err)
	}
	return nil
}

// codecServerToken reads the bearer token; nil when none is configured.
func codecServerToken(lookup func(string) (string, bool)) ([]byte, error) {
	inline, hasInline := lookup(envCodecServerToken)
	file, hasFile := lookup(envCodecServerTokenFile)
	var tok string
	switch {
	case hasInline && hasFile:
		return nil, fmt.Errorf("both %s and %s are set: use one", envCodecServerToken, envCodecServerTokenFile)
	case hasFile:
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("codec server token (%s): %w", envCodecServerTokenFile, err)
		}
		tok = strings.TrimSpace(string(b))
		if tok == "" {
			return nil, fmt.Errorf("codec server token (%s): %s is empty", envCodecServerTokenFile, file)
		}
	case hasInline:
		tok = strings.TrimSpace(inline)
		if tok == "" {
			return nil, fmt.Errorf("%s is set but empty", envCodecServerToken)
		}
	default:
		return nil, nil
	}
	if len(tok) < codecServerMinToken {
		return nil, fmt.Errorf("codec server token is shorter than %d characters: generate one with `openssl rand -base64 32`", codecServerMinToken)
	}
	return []byte(tok), nil
}

// checkCodecServerAuth refuses to serve decrypted payloads without a token, except on loopback
// when asked explicitly (the dev server's UI on a workstation cannot send a static token).
func checkCodecServerAuth(addr string, token []byte, noAuth bool) error {
	switch {
	case token != nil && noAuth:
		return fmt.Errorf("--insecure-no-auth given but a token is configured (%s or %s): drop one", envCodecServerToken, envCodecServerTokenFile)
	case token != nil:
		return nil
	case !noAuth:
		return fmt.Errorf("no token: set %s or %s (clients send it as \"Authorization: Bearer TOKEN\"), or run on a loopback address with --insecure-no-auth",
			envCodecServerToken, envCodecServerTokenFile)
	case !isLoopback(addr):
		return fmt.Errorf("--insecure-no-auth is only allowed on a loopback address (127.0.0.1, ::1, localhost), not %q", addr)
	}
	return nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// codecServerHandler adds CORS, bearer auth and limits around the SDK's codec HTTP handler.
type codecServerHandler struct {
	codec     http.Handler
	origins   map[string]bool
	tokenHash []byte // sha256 of the token; nil: no auth
	logger    *slog.Logger
}

func newCodecServerHandler(c converter.PayloadCodec, origins []string, token []byte, logger *slog.Logger) *codecServerHandler {
	h := &codecServerHandler{codec: converter.NewPayloadCodecHTTPHandler(c), origins: map[string]bool{}, logger: logger}
	for _, o := range origins {
		h.origins[o] = true
	}
	if token != nil {
		sum := sha256.Sum256(token)
		h.tokenHash = sum[:]
	}
	return h
}

func (h *codecServerHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	if origin != "" {
		if !h.origins[origin] {
			// Browsers always send Origin on cross-origin calls: a page of another site (or a
			// DNS-rebinding one) gets nothing, not even a decode attempt.
			h.logger.Warn("codec server: origin not allowed", "origin", origin, "remote", r.RemoteAddr)
			http.Error(w, "origin not allowed", http.StatusForbidden)
			return
		}
		w.Header().Set("Access-Control-Allow-Origin", origin)
		w.Header().Set("Access-Control-Allow-Credentials", "true")
	}
	if r.Method == http.MethodOptions {
		// Preflight: no Authorization header comes with it.
		w.Header().Set("Access-Control-Allow-Methods", "POST, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Content-Type, Authorization, X-Namespace")
		w.Header().Set("Access-Control-Max-Age", "600")
		if r.Header.Get("Access-Control-Request-Private-Network") == "true" {
			// Chrome's Private Network Access: a UI served from the internet (Temporal Cloud)
			// calling a codec server on this machine or network.
			w.Header().Set("Access-Control-Allow-Private-Network", "true")
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST, OPTIONS")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !strings.HasSuffix(r.URL.Path, "/encode") && !strings.HasSuffix(r.URL.Path, "/decode") {
		http.NotFound(w, r)
		return
	}
	if !h.authorized(r) {
		h.logger.Warn("codec server: unauthorized request", "path", r.URL.Path, "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="activations codec server"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, codecServerMaxBody)
	h.logger.Debug("codec server", "path", r.URL.Path, "namespace", r.Header.Get("X-Namespace"))
	h.codec.ServeHTTP(w, r)
}

// authorized compares hashes in constant time, so that neither the token's bytes nor its
// length leak through timing.
func (h *codecServerHandler) authorized(r *http.Request) bool {
	if h.tokenHash == nil {
		return true
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(sum[:], h.tokenHash) == 1
}
