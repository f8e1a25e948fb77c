package telemetry

import (
	"context"
	"net/http"
	"net/url"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Redacted replaces every query value in the URLs that spans record.
const Redacted = "REDACTED"

// HTTPTransport wraps base (nil: http.DefaultTransport) with an OpenTelemetry client span per
// request (otelhttp), for a third-party API whose URLs may hold user identifiers, such as
// Iterable's getByEmail?email=… and byUserId/{userId}:
//
//   - the span sees a redacted copy of the request: its path is route(path) (e.g.
//     "/api/users/byUserId/{userId}"), every query value is "REDACTED", user info and fragment
//     are dropped. So the span name ("GET /api/users/getByEmail") and url.full hold no
//     identifier. The request sent is the original one;
//   - no trace context is injected into the request's headers: the third party gets no
//     traceparent;
//   - otelhttp's standard HTTP client metrics (http.client.request.duration, …; method, status,
//     server address, no URL) go to mp; nil means none.
//
// route must never return an identifier; nil keeps only the path's first segment.
func HTTPTransport(base http.RoundTripper, tp trace.TracerProvider, mp metric.MeterProvider, route func(path string) string) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	if mp == nil {
		mp = metricnoop.NewMeterProvider()
	}
	if route == nil {
		route = func(string) string { return "/{path}" }
	}
	traced := otelhttp.NewTransport(restoreURL{base},
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithMeterProvider(mp),
		otelhttp.WithPropagators(propagation.NewCompositeTextMapPropagator()),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path }),
	)
	return &redactURL{traced: traced, base: base, route: route}
}

// RedactURL returns a copy of u without user info, fragment or query values, and with the path
// replaced by route(path).
func RedactURL(u *url.URL, route func(path string) string) *url.URL {
	r := *u
	r.User = nil
	r.Opaque = ""
	r.Path, r.RawPath = route(u.Path), ""
	r.Fragment, r.RawFragment = "", ""
	r.ForceQuery = false
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			r.RawQuery = Redacted
		} else {
			for k := range q {
				q[k] = []string{Redacted}
			}
			r.RawQuery = q.Encode()
		}
	}
	return &r
}

// originalURL travels in the context from redactURL, through otelhttp, to restoreURL.
type originalURL struct {
	redacted string
	url      *url.URL
}

type originalURLKey struct{}

// redactURL hands otelhttp a redacted copy of the request, keeping the original in the context.
type redactURL struct {
	traced http.RoundTripper
	base   http.RoundTripper
	route  func(string) string
}

func (t *redactURL) RoundTrip(r *http.Request) (*http.Response, error) {
	red := RedactURL(r.URL, t.route)
	ctx := context.WithValue(r.Context(), originalURLKey{}, originalURL{redacted: red.String(), url: r.URL})
	rr := r.Clone(ctx)
	rr.URL = red
	return t.traced.RoundTrip(rr)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the base transport.
func (t *redactURL) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// restoreURL sends the original URL of a request that redactURL redacted.
type restoreURL struct{ base http.RoundTripper }

func (t restoreURL) RoundTrip(r *http.Request) (*http.Response, error) {
	if o, ok := r.Context().Value(originalURLKey{}).(originalURL); ok && r.URL != nil && r.URL.String() == o.redacted {
		r = r.WithContext(r.Context()) // a shallow copy: a RoundTripper must not modify its request
		r.URL = o.url
	}
	return t.base.RoundTrip(r)
}
