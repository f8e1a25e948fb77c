package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/converter"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/activation-engine/activations/internal/codec"
)

const testCodecToken = "codec-token-0123456789abcdef"

func testCodec(t *testing.T) (*codec.Codec, string) {
	t.Helper()
	b := make([]byte, codec.KeySize)
	_, err := rand.Read(b)
	require.NoError(t, err)
	keys := "k1:" + base64.StdEncoding.EncodeToString(b)
	ks, err := codec.ParseKeys(keys)
	require.NoError(t, err)
	c, err := codec.New(ks)
	require.NoError(t, err)
	return c, keys
}

type codecRequest struct {
	method, path, origin, auth string
	body                       []byte
	privateNetwork             bool
}

func (r codecRequest) do(t *testing.T, h http.Handler) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(r.method, r.path, bytes.NewReader(r.body))
	req.Header.Set("Content-Type", "application/json")
	if r.origin != "" {
		req.Header.Set("Origin", r.origin)
	}
	if r.auth != "" {
		req.Header.Set("Authorization", r.auth)
	}
	if r.method == http.MethodOptions {
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "content-type,authorization,x-namespace")
		if r.privateNetwork {
			req.Header.Set("Access-Control-Request-Private-Network", "true")
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// payloadsBody is what the Temporal UI posts: protobuf JSON of Payloads.
func payloadsBody(t *testing.T, ps ...*commonpb.Payload) []byte {
	t.Helper()
	b, err := protojson.Marshal(&commonpb.Payloads{Payloads: ps})
	require.NoError(t, err)
	return b
}

func decodeAnswer(t *testing.T, body []byte) []*commonpb.Payload {
	t.Helper()
	var out commonpb.Payloads
	require.NoError(t, protojson.Unmarshal(body, &out), string(body))
	return out.Payloads
}

func TestCodecServerHandler(t *testing.T) {
	c, _ := testCodec(t)
	h := newCodecServerHandler(c, []string{"http://localhost:8233", "https://ui.example.com"}, []byte(testCodecToken), slog.New(slog.DiscardHandler))
	type report struct {
		State string `json:"state"`
		Sent  int    `json:"sent"`
	}
	enc, err := codec.NewDataConverter(c).ToPayload(report{State: "Completed", Sent: 42})
	require.NoError(t, err)
	require.Equal(t, codec.MetadataEncodingEncrypted, string(enc.Metadata["encoding"]))
	decodeBody := payloadsBody(t, enc)
	bearer := "Bearer " + testCodecToken

	tests := []struct {
		name       string
		req        codecRequest
		wantStatus int
		wantACAO   string // expected Access-Control-Allow-Origin ("" none)
		check      func(t *testing.T, rec *httptest.ResponseRecorder)
	}{
		{name: "preflight from the dev server UI",
			req:        codecRequest{method: http.MethodOptions, path: "/decode", origin: "http://localhost:8233"},
			wantStatus: http.StatusNoContent, wantACAO: "http://localhost:8233",
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				for _, hdr := range []string{"Content-Type", "Authorization", "X-Namespace"} {
					require.Contains(t, rec.Header().Get("Access-Control-Allow-Headers"), hdr)
				}
				require.Contains(t, rec.Header().Get("Access-Control-Allow-Methods"), "POST")
			}},
		{name: "preflight from another allowed origin, a public UI calling a private network",
			req:        codecRequest{method: http.MethodOptions, path: "/encode", origin: "https://ui.example.com", privateNetwork: true},
			wantStatus: http.StatusNoContent, wantACAO: "https://ui.example.com",
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				require.Equal(t, "true", rec.Header().Get("Access-Control-Allow-Private-Network"))
			}},
		{name: "preflight from a disallowed origin",
			req:        codecRequest{method: http.MethodOptions, path: "/decode", origin: "https://evil.example"},
			wantStatus: http.StatusForbidden},
		{name: "decode from a disallowed origin, even with the token",
			req:        codecRequest{method: http.MethodPost, path: "/decode", origin: "https://evil.example", auth: bearer, body: decodeBody},
			wantStatus: http.StatusForbidden,
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				require.NotContains(t, rec.Body.String(), "Completed")
			}},
		{name: "missing token",
			req:        codecRequest{method: http.MethodPost, path: "/decode", origin: "http://localhost:8233", body: decodeBody},
			wantStatus: http.StatusUnauthorized, wantACAO: "http://localhost:8233",
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				require.Contains(t, rec.Header().Get("WWW-Authenticate"), "Bearer")
				require.NotContains(t, rec.Body.String(), "Completed")
			}},
		{name: "wrong token",
			req:        codecRequest{method: http.MethodPost, path: "/decode", auth: "Bearer " + strings.Repeat("x", len(testCodecToken)), body: decodeBody},
			wantStatus: http.StatusUnauthorized},
		{name: "token as a prefix of the right one",
			req:        codecRequest{method: http.MethodPost, path: "/decode", auth: "Bearer " + testCodecToken[:10], body: decodeBody},
			wantStatus: http.StatusUnauthorized},
		{name: "right token in another scheme",
			req:        codecRequest{method: http.MethodPost, path: "/decode", auth: "Basic " + testCodecToken, body: decodeBody},
			wantStatus: http.StatusUnauthorized},
		{name: "decode of an encrypted payload",
			req:        codecRequest{method: http.MethodPost, path: "/decode", origin: "http://localhost:8233", auth: bearer, body: decodeBody},
			wantStatus: http.StatusOK, wantACAO: "http://localhost:8233",
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				got := decodeAnswer(t, rec.Body.Bytes())
				require.Len(t, got, 1)
				require.Equal(t, "json/plain", string(got[0].Metadata["encoding"]))
				var r report
				require.NoError(t, json.Unmarshal(got[0].Data, &r))
				require.Equal(t, report{State: "Completed", Sent: 42}, r)
			}},
		{name: "decode under a namespace path, scheme case-insensitive (CLI, SDK remote codec)",
			req:        codecRequest{method: http.MethodPost, path: "/default/decode", auth: "bearer " + testCodecToken, body: decodeBody},
			wantStatus: http.StatusOK},
		{name: "encode (the UI's start-workflow and signal forms)",
			req: codecRequest{method: http.MethodPost, path: "/encode", auth: bearer,
				body: payloadsBody(t, &commonpb.Payload{Metadata: map[string][]byte{"encoding": []byte("json/plain")}, Data: []byte(`{"reason":"ops"}`)})},
			wantStatus: http.StatusOK,
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				got := decodeAnswer(t, rec.Body.Bytes())
				require.Len(t, got, 1)
				require.True(t, codec.IsEncrypted(got[0]))
				back, err := c.Decode(got)
				require.NoError(t, err)
				require.Equal(t, `{"reason":"ops"}`, string(back[0].Data))
			}},
		{name: "payload of an unknown key",
			req: codecRequest{method: http.MethodPost, path: "/decode", auth: bearer,
				body: payloadsBody(t, &commonpb.Payload{Metadata: map[string][]byte{"encoding": []byte(codec.MetadataEncodingEncrypted), codec.MetadataKeyID: []byte("retired")}, Data: make([]byte, 64)})},
			wantStatus: http.StatusBadRequest,
			check: func(t *testing.T, rec *httptest.ResponseRecorder) {
				require.Contains(t, rec.Body.String(), `key id "retired"`)
			}},
		{name: "GET", req: codecRequest{method: http.MethodGet, path: "/decode", auth: bearer}, wantStatus: http.StatusMethodNotAllowed},
		{name: "unknown path", req: codecRequest{method: http.MethodPost, path: "/admin", auth: bearer}, wantStatus: http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := tc.req.do(t, h)
			require.Equal(t, tc.wantStatus, rec.Code, rec.Body.String())
			require.Equal(t, tc.wantACAO, rec.Header().Get("Access-Control-Allow-Origin"))
			require.Contains(t, rec.Header().Values("Vary"), "Origin")
			require.NotContains(t, rec.Body.String(), testCodecToken)
			if tc.check != nil {
				tc.check(t, rec)
			}
		})
	}

	t.Run("without a token (loopback only)", func(t *testing.T) {
		open := newCodecServerHandler(c, []string{"http://localhost:8233"}, nil, slog.New(slog.DiscardHandler))
		rec := codecRequest{method: http.MethodPost, path: "/decode", origin: "http://localhost:8233", body: decodeBody}.do(t, open)
		require.Equal(t, http.StatusOK, rec.Code)
		rec = codecRequest{method: http.MethodPost, path: "/decode", origin: "http://127.0.0.1:9999", body: decodeBody}.do(t, open)
		require.Equal(t, http.StatusForbidden, rec.Code, "origins are checked without auth too")
	})
}

func TestCheckCodecServerAuth(t *testing.T) {
	tests := []struct {
		name   string
		addr   string
		token  []byte
		noAuth bool
		err    string
	}{
		{"token", "0.0.0.0:8081", []byte(testCodecToken), false, ""},
		{"no token", "127.0.0.1:8081", nil, false, "no token: set ACTIVATIONS_CODEC_SERVER_TOKEN or ACTIVATIONS_CODEC_SERVER_TOKEN_FILE"},
		{"no auth on 127.0.0.1", "127.0.0.1:8081", nil, true, ""},
		{"no auth on ::1", "[::1]:8081", nil, true, ""},
		{"no auth on localhost", "localhost:8081", nil, true, ""},
		{"no auth on every interface", ":8081", nil, true, "only allowed on a loopback address"},
		{"no auth on 0.0.0.0", "0.0.0.0:8081", nil, true, "only allowed on a loopback address"},
		{"no auth on a LAN address", "10.1.2.3:8081", nil, true, "only allowed on a loopback address"},
		{"token and no auth", "127.0.0.1:8081", []byte(testCodecToken), true, "--insecure-no-auth given but a token is configured"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkCodecServerAuth(tc.addr, tc.token, tc.noAuth)
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.err)
		})
	}
}

func TestCodecServerToken(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(file, []byte(testCodecToken+"\n"), 0o600))
	tests := []struct {
		name string
		env  map[string]string
		want string
		err  string
	}{
		{"none", map[string]string{}, "", ""},
		{"env", map[string]string{envCodecServerToken: testCodecToken}, testCodecToken, ""},
		{"file", map[string]string{envCodecServerTokenFile: file}, testCodecToken, ""},
		{"both", map[string]string{envCodecServerToken: testCodecToken, envCodecServerTokenFile: file}, "", "both"},
		{"empty", map[string]string{envCodecServerToken: " "}, "", "is set but empty"},
		{"short", map[string]string{envCodecServerToken: "hunter2"}, "", "shorter than 16 characters"},
		{"missing file", map[string]string{envCodecServerTokenFile: filepath.Join(dir, "nope")}, "", "codec server token (ACTIVATIONS_CODEC_SERVER_TOKEN_FILE)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := codecServerToken(func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				require.NotContains(t, err.Error(), "hunter2")
				require.NotContains(t, err.Error(), testCodecToken)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, string(tok))
		})
	}
}

func TestOriginList(t *testing.T) {
	o := &originList{values: []string{"http://localhost:8233"}}
	require.NoError(t, o.Set("https://a.example, http://localhost:8080/"))
	require.NoError(t, o.Set("https://b.example"))
	require.Equal(t, []string{"https://a.example", "http://localhost:8080", "https://b.example"}, o.values, "an explicit value replaces the default")
	for _, bad := range []string{"localhost:8233", "ftp://x", "https://x/path", "*"} {
		require.Error(t, (&originList{}).Set(bad), bad)
	}
}

// syncBuffer is a bytes.Buffer safe for the server goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestCmdCodecServer(t *testing.T) {
	c, keys := testCodec(t)
	logger := slog.New(slog.DiscardHandler)

	t.Run("refuses without keys", func(t *testing.T) {
		t.Setenv(envCodecServerToken, testCodecToken)
		err := cmdCodecServer(context.Background(), []string{"--addr", "127.0.0.1:0"}, io.Discard, logger)
		require.ErrorContains(t, err, "no payload keys: set ACTIVATIONS_CODEC_KEYS or ACTIVATIONS_CODEC_KEYS_FILE")
	})
	t.Run("refuses without a token", func(t *testing.T) {
		t.Setenv(codec.EnvKeys, keys)
		err := cmdCodecServer(context.Background(), []string{"--addr", "127.0.0.1:0"}, io.Discard, logger)
		require.ErrorContains(t, err, "no token")
		err = cmdCodecServer(context.Background(), []string{"--addr", "0.0.0.0:0", "--insecure-no-auth"}, io.Discard, logger)
		require.ErrorContains(t, err, "only allowed on a loopback address")
	})
	t.Run("serves until cancelled", func(t *testing.T) {
		t.Setenv(codec.EnvKeys, keys)
		t.Setenv(envCodecServerToken, testCodecToken)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out syncBuffer
		done := make(chan error, 1)
		go func() {
			done <- cmdCodecServer(ctx, []string{"--addr", "127.0.0.1:0", "--allowed-origin", "http://localhost:8233,http://localhost:8080"}, &out, logger)
		}()
		endpoint := regexp.MustCompile(`http://127\.0\.0\.1:\d+`)
		require.Eventually(t, func() bool { return endpoint.MatchString(out.String()) }, 10*time.Second, 10*time.Millisecond)
		url := endpoint.FindString(out.String())

		enc, err := codec.NewDataConverter(c).ToPayload("hello")
		require.NoError(t, err)
		req, err := http.NewRequest(http.MethodPost, url+"/decode", bytes.NewReader(payloadsBody(t, enc)))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+testCodecToken)
		req.Header.Set("Origin", "http://localhost:8080")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.Equal(t, "http://localhost:8080", resp.Header.Get("Access-Control-Allow-Origin"))
		var s string
		require.NoError(t, converter.GetDefaultDataConverter().FromPayload(decodeAnswer(t, body)[0], &s))
		require.Equal(t, "hello", s)

		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not stop")
		}
	})
}
