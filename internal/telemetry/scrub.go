package telemetry

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Error texts of spans made by libraries (the BigQuery client, otelgrpc, otelhttp) are dropped
// before export: a BigQuery error may quote a value of the model ("Bad int64 value: …"). The
// engine's own spans and the Temporal SDK's carry only errors that also go to Temporal history,
// which hold no row data, so they are exported as they are. The status code stays.

// scrubForeignErrors wraps next so that spans of other instrumentation scopes than the engine's
// and the Temporal SDK's lose their status description and their exception messages.
func scrubForeignErrors(next sdktrace.SpanProcessor) sdktrace.SpanProcessor {
	return scrubProcessor{next}
}

type scrubProcessor struct{ sdktrace.SpanProcessor }

func (p scrubProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	switch s.InstrumentationScope().Name {
	case InstrumentationName, TemporalMeterName:
		p.SpanProcessor.OnEnd(s)
	default:
		p.SpanProcessor.OnEnd(scrubbedSpan{s})
	}
}

// scrubbedSpan is a span without error texts.
type scrubbedSpan struct{ sdktrace.ReadOnlySpan }

func (s scrubbedSpan) Status() sdktrace.Status {
	st := s.ReadOnlySpan.Status()
	if st.Code == codes.Error && st.Description != "" {
		st.Description = Redacted
	}
	return st
}

func (s scrubbedSpan) Events() []sdktrace.Event {
	events := s.ReadOnlySpan.Events()
	out := make([]sdktrace.Event, len(events))
	for i, e := range events {
		out[i] = e
		if e.Name != "exception" {
			continue
		}
		attrs := make([]attribute.KeyValue, len(e.Attributes))
		for j, a := range e.Attributes {
			attrs[j] = a
			if a.Key == "exception.message" {
				attrs[j] = attribute.String(string(a.Key), Redacted)
			}
		}
		out[i].Attributes = attrs
	}
	return out
}
