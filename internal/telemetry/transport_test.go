package telemetry

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/activation-engine/activations/internal/iterable"
)

func TestRedactURL(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"https://api.iterable.com/api/users/getByEmail?email=jane%40example.com", "https://api.iterable.com/api/users/getByEmail?email=REDACTED"},
		{"https://api.iterable.com/api/users/byUserId/user-42", "https://api.iterable.com/api/users/byUserId/%7BuserId%7D"},
		{"https://api.iterable.com/api/users/bulkUpdate", "https://api.iterable.com/api/users/bulkUpdate"},
		{"https://api.iterable.com/api/export/data.json?dataTypeName=user&onlyFields=email&range=All",
			"https://api.iterable.com/api/export/data.json?dataTypeName=REDACTED&onlyFields=REDACTED&range=REDACTED"},
		{"http://user:pass@proxy:8080/iterable/api/users/getFields#frag", "http://proxy:8080/iterable/api/users/getFields"},
		{"https://api.iterable.com/api/users/jane@example.com", "https://api.iterable.com/%7Bother%7D"},
	}
	for _, tc := range tests {
		u, err := url.Parse(tc.in)
		require.NoError(t, err)
		require.Equal(t, tc.want, RedactURL(u, iterable.Route).String(), tc.in)
	}
}

// TestIterableSpansHoldNoIdentifiers sends getByEmail, byUserId, getFields and bulkUpdate
// through the Iterable client with HTTPTransport: Iterable receives the identifiers, the spans
// (name, attributes, events, status) do not, and no trace header leaves the process.
func TestIterableSpansHoldNoIdentifiers(t *testing.T) {
	const (
		email  = "jane.doe+vip@example.com"
		userID = "user-4242 secret"
		apiKey = "key-very-secret"
	)
	var (
		mu   sync.Mutex
		seen []*http.Request
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Clone(context.Background()))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/api/users/getByEmail":
			_ = json.NewEncoder(w).Encode(map[string]any{"user": map[string]any{"email": r.URL.Query().Get("email")}})
		case "/api/users/getFields":
			_, _ = w.Write([]byte(`{"fields":{"email":"string"}}`))
		case "/api/users/bulkUpdate":
			_, _ = w.Write([]byte(`{"successCount":1,"failCount":0,"failedUpdates":{}}`))
		default:
			_, _ = w.Write([]byte(`{}`))
		}
	}))
	defer srv.Close()

	tests := []struct {
		name     string
		call     func(context.Context, *iterable.Client) error
		wantSpan string
		wantURL  string
		wantSent func(t *testing.T, r *http.Request)
	}{
		{name: "getByEmail",
			call: func(ctx context.Context, c *iterable.Client) error {
				_, found, err := c.GetUserByEmail(ctx, email)
				require.True(t, found)
				return err
			},
			wantSpan: "GET /api/users/getByEmail", wantURL: srv.URL + "/api/users/getByEmail?email=REDACTED",
			wantSent: func(t *testing.T, r *http.Request) { require.Equal(t, email, r.URL.Query().Get("email")) }},
		{name: "byUserId",
			call: func(ctx context.Context, c *iterable.Client) error {
				_, _, err := c.GetUserByUserID(ctx, userID)
				return err
			},
			wantSpan: "GET /api/users/byUserId/{userId}", wantURL: srv.URL + "/api/users/byUserId/%7BuserId%7D",
			wantSent: func(t *testing.T, r *http.Request) { require.Equal(t, "/api/users/byUserId/"+userID, r.URL.Path) }},
		{name: "getFields",
			call: func(ctx context.Context, c *iterable.Client) error {
				_, err := c.GetFields(ctx)
				return err
			},
			wantSpan: "GET /api/users/getFields", wantURL: srv.URL + "/api/users/getFields"},
		{name: "bulkUpdate",
			call: func(ctx context.Context, c *iterable.Client) error {
				_, err := c.SendBatch(ctx, iterable.Batch{Records: []iterable.Record{{User: iterable.User{Email: email,
					DataFields: map[string]any{"name": "Jane"}}}}})
				return err
			},
			wantSpan: "POST /api/users/bulkUpdate", wantURL: srv.URL + "/api/users/bulkUpdate",
			wantSent: func(t *testing.T, r *http.Request) { require.Equal(t, http.MethodPost, r.Method) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			seen = nil
			mu.Unlock()
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			defer func() { _ = tp.Shutdown(context.Background()) }()
			hc := &http.Client{Timeout: 5 * time.Second, Transport: HTTPTransport(nil, tp, nil, iterable.Route)}
			c, err := iterable.New(iterable.Config{BaseURL: srv.URL, APIKey: apiKey, HTTPClient: hc, RequestsPerSecond: -1})
			require.NoError(t, err)

			ctx, parent := tp.Tracer("test").Start(context.Background(), "parent")
			require.NoError(t, tc.call(ctx, c))
			parent.End()

			mu.Lock()
			require.Len(t, seen, 1)
			sent := seen[0]
			mu.Unlock()
			if tc.wantSent != nil {
				tc.wantSent(t, sent)
			}
			require.Empty(t, sent.Header.Get("Traceparent"), "no trace context is sent to Iterable")
			require.Equal(t, apiKey, sent.Header.Get("Api-Key"))

			var httpSpan sdktrace.ReadOnlySpan
			for _, s := range rec.Ended() {
				if s.Name() != "parent" {
					httpSpan = s
				}
			}
			require.NotNil(t, httpSpan)
			require.Equal(t, tc.wantSpan, httpSpan.Name())
			require.Equal(t, trace.SpanKindClient, httpSpan.SpanKind())
			require.Equal(t, parent.SpanContext().SpanID(), httpSpan.Parent().SpanID(), "a child of the caller's span")
			attrs := map[string]string{}
			for _, a := range httpSpan.Attributes() {
				attrs[string(a.Key)] = a.Value.Emit()
			}
			require.Equal(t, tc.wantURL, attrs["url.full"])
			require.Equal(t, "200", attrs["http.response.status_code"])
			everything := httpSpan.Name() + " " + httpSpan.Status().Description
			for k, v := range attrs {
				everything += " " + k + "=" + v
			}
			for _, e := range httpSpan.Events() {
				everything += " " + e.Name
				for _, a := range e.Attributes {
					everything += " " + a.Value.Emit()
				}
			}
			for _, secret := range []string{email, url.QueryEscape(email), "jane", userID, "4242", apiKey} {
				require.NotContains(t, everything, secret)
			}
		})
	}
}
