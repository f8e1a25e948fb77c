//go:build integration

package workflows_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/api/enums/v1"
	failurepb "go.temporal.io/api/failure/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/worker"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/internal/codec"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
	"github.com/activation-engine/activations/internal/temporalclient"
	"github.com/activation-engine/activations/workflows"
)

// secLogs collects a worker's log output (SDK and activities) for the leak checks.
type secLogs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *secLogs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *secLogs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// secEncrypted is one test's encrypted world: the keys, a client dialled the way the worker
// and the starter dial (temporalclient.Options from the environment), and its converters.
type secEncrypted struct {
	c    client.Client
	opts client.Options
	keys string
	logs *secLogs
}

// secDialEncrypted configures payload keys in the environment and dials the dev server through
// temporalclient, as the worker and the starter do.
func secDialEncrypted(t *testing.T) *secEncrypted {
	t.Helper()
	raw := make([]byte, codec.KeySize)
	_, err := rand.Read(raw)
	require.NoError(t, err)
	keys := "it-key-1:" + base64.StdEncoding.EncodeToString(raw)
	t.Setenv(codec.EnvKeys, keys)
	t.Setenv("TEMPORAL_ADDRESS", dev.HostPort)
	t.Setenv("TEMPORAL_NAMESPACE", "default")
	t.Setenv("TEMPORAL_CONFIG_FILE", filepath.Join(t.TempDir(), "no-temporal.toml"))
	logs := &secLogs{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts, err := temporalclient.Options(logger)
	require.NoError(t, err)
	require.NotNil(t, opts.DataConverter)
	require.Contains(t, logs.String(), "payload encryption: on")
	require.Contains(t, logs.String(), "active_key_id=it-key-1")
	require.NotContains(t, logs.String(), keys[len("it-key-1:"):], "the key itself is never logged")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := temporalclient.Connect(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return &secEncrypted{c: c, opts: opts, keys: keys, logs: logs}
}

// startWorker runs a worker on the encrypted client, logging to e.logs.
func (e *secEncrypted) startWorker(t *testing.T, queue string) {
	t.Helper()
	acts := activities.New(slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	acts.Temporal = e.c
	w := worker.New(e.c, queue, worker.Options{})
	workflows.Register(w, acts)
	require.NoError(t, w.Start())
	t.Cleanup(func() {
		w.Stop()
		_ = acts.Close()
	})
}

// secHistory is a run's history as the Temporal service stores it (read without any codec).
type secHistory struct {
	events []*historypb.HistoryEvent
	raw    bytes.Buffer
}

func secFetchHistory(t *testing.T, c client.Client, workflowID, runID string) *secHistory {
	t.Helper()
	h := &secHistory{}
	it := c.GetWorkflowHistory(context.Background(), workflowID, runID, false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		require.NoError(t, err)
		h.events = append(h.events, ev)
		b, err := proto.Marshal(ev)
		require.NoError(t, err)
		h.raw.Write(b)
	}
	require.NotEmpty(t, h.events)
	return h
}

// secWalk calls onPayload for every Payload (saying whether it is a search attribute's) and
// onFailure for every Failure in m, at any depth.
func secWalk(m protoreflect.Message, inSearchAttributes bool, onPayload func(*commonpb.Payload, bool), onFailure func(*failurepb.Failure)) {
	switch m.Descriptor().FullName() {
	case "temporal.api.common.v1.Payload":
		onPayload(m.Interface().(*commonpb.Payload), inSearchAttributes)
		return
	case "temporal.api.common.v1.SearchAttributes":
		inSearchAttributes = true
	case "temporal.api.failure.v1.Failure":
		onFailure(m.Interface().(*failurepb.Failure))
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				secWalk(v.List().Get(i).Message(), inSearchAttributes, onPayload, onFailure)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				secWalk(mv.Message(), inSearchAttributes, onPayload, onFailure)
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			secWalk(v.Message(), inSearchAttributes, onPayload, onFailure)
		}
		return true
	})
}

// requireAllEncrypted checks that every payload but search attributes (which Temporal indexes,
// and which hold only ids and states) is encrypted, and every failure message is hidden; it
// returns the payloads and the failures.
func (h *secHistory) requireAllEncrypted(t *testing.T) ([]*commonpb.Payload, []*failurepb.Failure) {
	t.Helper()
	var payloads []*commonpb.Payload
	var failures []*failurepb.Failure
	for _, ev := range h.events {
		secWalk(ev.ProtoReflect(), false, func(p *commonpb.Payload, inSA bool) {
			if inSA {
				return
			}
			require.Equal(t, codec.MetadataEncodingEncrypted, string(p.GetMetadata()[converter.MetadataEncoding]),
				"event %d (%s) holds a payload that is not encrypted", ev.GetEventId(), ev.GetEventType())
			require.Equal(t, "it-key-1", string(p.GetMetadata()[codec.MetadataKeyID]))
			payloads = append(payloads, p)
		}, func(f *failurepb.Failure) {
			// The server writes some workflow task failures itself (e.g. UnhandledCommand: a
			// signal arrived while the task completed); they name the cause and hold no data.
			if a := ev.GetWorkflowTaskFailedEventAttributes(); a != nil &&
				a.GetCause() != enums.WORKFLOW_TASK_FAILED_CAUSE_WORKFLOW_WORKER_UNHANDLED_FAILURE {
				return
			}
			require.Equal(t, "Encoded failure", f.GetMessage(), "event %d (%s): failure messages are encrypted", ev.GetEventId(), ev.GetEventType())
			require.Empty(t, f.GetStackTrace())
			failures = append(failures, f)
		})
	}
	return payloads, failures
}

// TestEncryptedHistoryHoldsNoDataAndDecodesWithTheCodec: with payload keys on the client and the
// worker, what Temporal stores of a run (and of the activation's lock workflow) is encrypted; a
// client without the keys cannot read the result; with the codec it decodes to the report.
func TestEncryptedHistoryHoldsNoDataAndDecodesWithTheCodec(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	enc := secDialEncrypted(t)
	plain := h.c // the dev server's client: no codec, as anyone reading the service's database
	h.c = enc.c  // runs start through the encrypted client
	enc.startWorker(t, h.queue)
	us := users(300)
	h.writeModel(us)
	act := h.spec()

	run := h.start(act)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var rep workflows.RunReport
	require.NoError(t, run.Get(ctx, &rep))
	require.Equal(t, workflows.StateCompleted, rep.State)
	require.Equal(t, int64(300), rep.Succeeded.Added)
	h.requireIterableEqualsModel(us)

	hist := secFetchHistory(t, plain, run.GetID(), run.GetRunID())
	payloads, _ := hist.requireAllEncrypted(t)
	require.NotEmpty(t, payloads)
	t.Logf("history: %d events, %d encrypted payloads", len(hist.events), len(payloads))
	// Unencrypted, the spec (query, file names) is in the input: encrypted, nothing is readable.
	for _, needle := range []string{"@example.com", "Name 1", h.key, apiKeyEnv, "read_csv", "users.csv", "state.duckdb", `"succeeded"`} {
		require.NotContains(t, hist.raw.String(), needle)
	}

	// The activation's lock workflow, started by the worker's activities, is encrypted too.
	lock := secFetchHistory(t, plain, activities.LockWorkflowID(act.ID), "")
	lockPayloads, _ := lock.requireAllEncrypted(t)
	require.NotEmpty(t, lockPayloads)
	require.NotContains(t, lock.raw.String(), "read_csv")

	// Without the keys the result is unreadable; with the codec it is the report.
	var unreadable workflows.RunReport
	require.Error(t, plain.GetWorkflow(ctx, run.GetID(), run.GetRunID()).Get(ctx, &unreadable))
	var completed *historypb.WorkflowExecutionCompletedEventAttributes
	for _, ev := range hist.events {
		if a := ev.GetWorkflowExecutionCompletedEventAttributes(); a != nil {
			completed = a
		}
	}
	require.NotNil(t, completed)
	var decoded workflows.RunReport
	require.Error(t, converter.GetDefaultDataConverter().FromPayloads(completed.GetResult(), &decoded))
	require.NoError(t, enc.opts.DataConverter.FromPayloads(completed.GetResult(), &decoded))
	require.Equal(t, rep, decoded)

	// And the codec server's codec (the same keys) decodes every payload of the history.
	c, err := codec.FromEnv(nil)
	require.NoError(t, err)
	decodedPayloads, err := c.Decode(payloads)
	require.NoError(t, err)
	var all bytes.Buffer
	for _, p := range decodedPayloads {
		all.Write(p.GetData())
	}
	require.Contains(t, all.String(), "read_csv", "control: the decoded history holds the spec")
	require.NotContains(t, all.String(), "@example.com", "rows never travel through history, encrypted or not")
}

// TestRefusedIterableKeyLeaksNowhere: Iterable answers 401 to the spec's key; the run pauses
// (fatal) and is aborted. The key (a sentinel) is nowhere: not in the history (raw or decoded,
// error messages included), not in the worker's logs, not in the progress or the report.
func TestRefusedIterableKeyLeaksNowhere(t *testing.T) {
	h := newHarness(t, iterabletest.Options{})
	sentinel := "SENTINEL-ITERABLE-KEY-" + secRandomHex(t)
	t.Setenv(apiKeyEnv, sentinel) // the spec's key reference now resolves to a key of no project
	enc := secDialEncrypted(t)
	plain := h.c
	h.c = enc.c
	enc.startWorker(t, h.queue)
	h.writeModel(users(50))
	act := h.spec()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	run := h.start(act)
	var p workflows.Progress
	require.Eventually(t, func() bool {
		v, err := enc.c.QueryWorkflow(ctx, run.GetID(), run.GetRunID(), workflows.QueryProgress)
		if err != nil {
			return false
		}
		p = workflows.Progress{}
		return v.Get(&p) == nil && p.State == workflows.StatePaused
	}, 2*time.Minute, 200*time.Millisecond, "the run pauses on the refused key")
	require.NotNil(t, p.Pause)
	require.Equal(t, workflows.CauseFatal, p.Pause.Cause)
	require.Contains(t, p.Pause.Reason, "401", "control: the reason says what Iterable answered")
	require.Positive(t, h.emu.Unauthorized(), "control: the sentinel key was sent to Iterable and refused")

	upd, err := enc.c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: run.GetID(), RunID: run.GetRunID(),
		UpdateName: workflows.UpdateAbort, Args: []any{workflows.AbortInput{Reason: "wrong key, ticket SEC-1"}},
		WaitForStage: client.WorkflowUpdateStageCompleted})
	require.NoError(t, err)
	require.NoError(t, upd.Get(ctx, nil))
	var rep workflows.RunReport
	require.NoError(t, run.Get(ctx, &rep))
	require.Equal(t, workflows.StateAborted, rep.State)

	progressJSON, err := json.Marshal(p)
	require.NoError(t, err)
	reportJSON, err := json.Marshal(rep)
	require.NoError(t, err)
	require.Contains(t, string(reportJSON), "401", "control: the report records the fatal pause")

	hist := secFetchHistory(t, plain, run.GetID(), run.GetRunID())
	payloads, failures := hist.requireAllEncrypted(t)
	require.NotEmpty(t, failures, "the refused activity left failures in the history")
	t.Logf("history: %d events, %d encrypted payloads, %d encoded failures; worker logs: %d bytes", len(hist.events), len(payloads), len(failures), len(enc.logs.String()))

	// Decoded as an operator with the keys sees it (the UI through the codec server).
	c, err := codec.FromEnv(nil)
	require.NoError(t, err)
	decodedPayloads, err := c.Decode(payloads)
	require.NoError(t, err)
	var decoded bytes.Buffer
	for _, pl := range decodedPayloads {
		decoded.Write(pl.GetData())
	}
	for _, f := range failures {
		decoded.WriteString(enc.opts.FailureConverter.FailureToError(f).Error())
	}
	require.Contains(t, decoded.String(), "BadApiKey", "control: the decoded failures say why")
	require.Contains(t, decoded.String(), "wrong key, ticket SEC-1", "control: the decoded history holds the abort")

	logs := enc.logs.String()
	require.Contains(t, logs, "HTTP 401", "control: the worker logged the refusal")
	for what, text := range map[string]string{
		"raw history": hist.raw.String(), "decoded history": decoded.String(), "worker logs": logs,
		"progress": string(progressJSON), "report": string(reportJSON),
	} {
		require.NotContains(t, text, sentinel, "the Iterable API key is in the %s", what)
		require.NotContains(t, text, sentinel[len("SENTINEL-ITERABLE-KEY-"):], "part of the Iterable API key is in the %s", what)
	}
}

func secRandomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 12)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}
