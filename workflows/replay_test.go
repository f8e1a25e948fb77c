package workflows_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/proto"

	"github.com/activation-engine/activations/activities"
	"github.com/activation-engine/activations/workflows"
)

// Replay tests: histories written by an older worker (testdata/histories, recorded from real runs
// on the dev server by TestRecordHistories in integration_record_test.go) must replay on the
// current workflow code. A run paused for a week meets the next deploy with its history open: a
// change to the workflow code that alters the commands it emits for an existing history fails
// this test, and so the build (see the README, "Upgrades and replay").

const (
	replayHistoriesDir = "testdata/histories"
	replayIndexFile    = "index.json"
	// replayMaxFileBytes keeps the saved histories small (tiny models: 30 users, 10 per chunk).
	replayMaxFileBytes = 256 << 10
)

// The scenarios a complete set of saved histories covers.
const (
	scenarioCompleted      = "completed"        // a run from start to Completed
	scenarioPausedResumed  = "paused-resumed"   // paused at the rejection threshold, resumed by the update, Completed
	scenarioQueued         = "queued"           // a run that waited Queued behind the activation's lock
	scenarioLock           = "lock"             // the activation's LockWorkflow that queued it
	scenarioContinuedAsNew = "continued-as-new" // every execution of a run that continued as new
	scenarioList           = "list"             // list activation runs
	scenarioPausedOpen     = "paused-open"      // a run still Paused (open) when saved, as a deploy meets it
)

var replayScenarios = []string{scenarioCompleted, scenarioPausedResumed, scenarioQueued, scenarioLock,
	scenarioContinuedAsNew, scenarioList, scenarioPausedOpen}

// replayIndex is testdata/histories/index.json: what each saved history is.
type replayIndex struct {
	About      string        `json:"about"`
	RecordedBy string        `json:"recordedBy"`
	Histories  []replayEntry `json:"histories"`
}

type replayEntry struct {
	File         string `json:"file"`
	Scenario     string `json:"scenario"`
	About        string `json:"about"`
	WorkflowType string `json:"workflowType"`
	WorkflowID   string `json:"workflowId"`
	RunID        string `json:"runId"`
	// Closed is how the execution closed (Completed, ContinuedAsNew), "" while it is open.
	Closed string `json:"closed"`
	Events int    `json:"events"`

	dir string // the folder of its index.json
}

// name is the entry's file relative to testdata/histories.
func (e replayEntry) name() string {
	rel, err := filepath.Rel(replayHistoriesDir, filepath.Join(e.dir, e.File))
	if err != nil {
		return e.File
	}
	return rel
}

// replayNeedles are strings the saved histories must never contain: the recorder's model rows
// (emails person00001@example.com, invalid-address-N, names "Name N") and its API keys.
var replayNeedles = []string{"@example.com", "invalid-address-", "Name 1", "key-TestRecordHistories"}

// closedAs names how a history's last event closes the execution, "" when it is open.
func closedAs(h *historypb.History) string {
	evs := h.GetEvents()
	if len(evs) == 0 {
		return ""
	}
	switch evs[len(evs)-1].GetEventType() {
	case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
		return "Completed"
	case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
		return "ContinuedAsNew"
	case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
		return "Failed"
	case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
		return "Terminated"
	case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED:
		return "Canceled"
	case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT:
		return "TimedOut"
	}
	return ""
}

// replayRegistry lets workflows.Register register on a replayer: the workflows with exactly the
// names and options the worker uses; activities do not run in a replay.
type replayRegistry struct{ worker.WorkflowReplayer }

func (replayRegistry) RegisterActivity(any) {}

func replayLogger(t *testing.T) log.Logger {
	return log.NewStructuredLogger(slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})))
}

// replaySet is a folder with an index.json: testdata/histories itself (recorded from the current
// code) and any subfolder keeping an earlier release's set while its runs may still be open.
type replaySet struct {
	dir string
	idx replayIndex
}

func loadReplaySets(t *testing.T) []replaySet {
	t.Helper()
	dirs := []string{replayHistoriesDir}
	older, err := filepath.Glob(filepath.Join(replayHistoriesDir, "*", replayIndexFile))
	require.NoError(t, err)
	for _, f := range older {
		dirs = append(dirs, filepath.Dir(f))
	}
	var sets []replaySet
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, replayIndexFile))
		require.NoError(t, err, "the saved histories: record them with RECORD_HISTORIES=1 go test -tags integration "+
			"-count=1 -run TestRecordHistories ./workflows/ (README, Upgrades and replay)")
		var idx replayIndex
		require.NoError(t, json.Unmarshal(b, &idx), dir)
		require.NotEmpty(t, idx.Histories, dir)
		for i := range idx.Histories {
			idx.Histories[i].dir = dir
		}
		sets = append(sets, replaySet{dir: dir, idx: idx})
	}
	return sets
}

// allReplayEntries lists the histories of every set.
func allReplayEntries(t *testing.T) []replayEntry {
	var all []replayEntry
	for _, set := range loadReplaySets(t) {
		all = append(all, set.idx.Histories...)
	}
	return all
}

func loadReplayHistory(t *testing.T, e replayEntry) *historypb.History {
	t.Helper()
	f, err := os.Open(filepath.Join(e.dir, e.File))
	require.NoError(t, err)
	defer func() { _ = f.Close() }()
	h, err := client.HistoryFromJSON(f, client.HistoryJSONOptions{})
	require.NoError(t, err)
	return h
}

func replayEntryOptions(e replayEntry) worker.ReplayWorkflowHistoryOptions {
	return worker.ReplayWorkflowHistoryOptions{OriginalExecution: workflow.Execution{ID: e.WorkflowID, RunID: e.RunID}}
}

// TestSavedHistoriesAreCompleteAndHoldNoData checks the sets themselves: the current one covers
// every scenario (a continue-as-new chain with every execution, a paused run still open), each
// index and its folder agree, and no file holds row data or a key, or grows large.
func TestSavedHistoriesAreCompleteAndHoldNoData(t *testing.T) {
	sets := loadReplaySets(t)
	byScenario := map[string][]replayEntry{}
	for _, e := range sets[0].idx.Histories {
		byScenario[e.Scenario] = append(byScenario[e.Scenario], e)
	}
	for _, s := range replayScenarios {
		require.NotEmpty(t, byScenario[s], "no saved history of scenario %q", s)
	}
	chain := byScenario[scenarioContinuedAsNew]
	require.GreaterOrEqual(t, len(chain), 2, "a continue-as-new chain has at least two executions")
	for i, e := range chain {
		want := "ContinuedAsNew"
		if i == len(chain)-1 {
			want = "Completed"
		}
		require.Equal(t, want, e.Closed, "execution %d of the chain", i+1)
		require.Equal(t, chain[0].WorkflowID, e.WorkflowID, "one chain")
	}
	for _, e := range byScenario[scenarioPausedOpen] {
		require.Empty(t, e.Closed, "the paused run was saved open")
	}

	for _, set := range sets {
		indexed := map[string]bool{}
		for _, e := range set.idx.Histories {
			require.False(t, indexed[e.File], "%s is listed twice", e.name())
			indexed[e.File] = true
		}
		files, err := filepath.Glob(filepath.Join(set.dir, "*.json"))
		require.NoError(t, err)
		for _, f := range files {
			if name := filepath.Base(f); name != replayIndexFile {
				require.True(t, indexed[name], "%s is not in %s", f, filepath.Join(set.dir, replayIndexFile))
			}
		}
		for _, e := range set.idx.Histories {
			raw, err := os.ReadFile(filepath.Join(e.dir, e.File))
			require.NoError(t, err, "%s is listed in its index", e.name())
			require.Less(t, len(raw), replayMaxFileBytes, "%s is too large", e.name())
			h := loadReplayHistory(t, e)
			require.Len(t, h.GetEvents(), e.Events, e.name())
			require.Equal(t, e.Closed, closedAs(h), e.name())
			require.Equal(t, e.WorkflowType, h.GetEvents()[0].GetWorkflowExecutionStartedEventAttributes().GetWorkflowType().GetName(), e.name())
			// Payloads are base64 in the files: scan them decoded too.
			bin, err := proto.Marshal(h)
			require.NoError(t, err)
			require.Contains(t, string(bin), "it-", "control: the scan sees payloads (%s)", e.name())
			for _, needle := range replayNeedles {
				require.NotContains(t, string(raw), needle, e.name())
				require.False(t, bytes.Contains(bin, []byte(needle)), "%s holds %q", e.name(), needle)
			}
		}
	}
}

// TestReplaySavedHistories replays every saved history on the current workflow code, registered
// by workflows.Register as the worker registers it. It fails when a change to the workflow code
// alters the commands an existing history recorded (non-determinism).
func TestReplaySavedHistories(t *testing.T) {
	for _, e := range allReplayEntries(t) {
		t.Run(strings.TrimSuffix(e.name(), ".json"), func(t *testing.T) {
			rp := worker.NewWorkflowReplayer()
			workflows.Register(replayRegistry{rp}, nil)
			require.NoError(t, rp.ReplayWorkflowHistoryWithOptions(replayLogger(t), loadReplayHistory(t, e), replayEntryOptions(e)),
				"%s (%s) no longer replays: the workflow code changed the commands of a run in flight; "+
					"put the change behind workflow.GetVersion (README, Upgrades and replay)", e.name(), e.About)
			// The file as it stands, through the SDK's own entry point (what a debugger session uses).
			rp = worker.NewWorkflowReplayer()
			workflows.Register(replayRegistry{rp}, nil)
			require.NoError(t, rp.ReplayWorkflowHistoryFromJSONFile(replayLogger(t), filepath.Join(e.dir, e.File)))
		})
	}
}

// replayControlWorkflows registers, under the production names, the workflows with one change
// that adds a command (a timer) before anything else: with versioned, the change is behind
// workflow.GetVersion, as the README asks.
func replayControlWorkflows(r worker.WorkflowReplayer, versioned bool) {
	change := func(ctx workflow.Context) error {
		if versioned && workflow.GetVersion(ctx, "replay-control-timer", workflow.DefaultVersion, 1) == workflow.DefaultVersion {
			return nil // runs that started before the change keep the old commands
		}
		return workflow.Sleep(ctx, time.Second)
	}
	r.RegisterWorkflowWithOptions(func(ctx workflow.Context, in workflows.RunInput) (workflows.RunReport, error) {
		if err := change(ctx); err != nil {
			return workflows.RunReport{}, err
		}
		return workflows.ActivationWorkflow(ctx, in)
	}, workflow.RegisterOptions{Name: workflows.WorkflowName})
	r.RegisterWorkflowWithOptions(func(ctx workflow.Context, in activities.LockInput) error {
		if err := change(ctx); err != nil {
			return err
		}
		return workflows.LockWorkflow(ctx, in)
	}, workflow.RegisterOptions{Name: workflows.LockWorkflowName})
}

// TestReplayDetectsACommandChange is the control of TestReplaySavedHistories: the same workflows
// with one more command fail to replay every saved history with a non-determinism error, and
// replay them all once that change is behind workflow.GetVersion.
func TestReplayDetectsACommandChange(t *testing.T) {
	entries := allReplayEntries(t)
	for _, e := range entries {
		t.Run(strings.TrimSuffix(e.name(), ".json"), func(t *testing.T) {
			h := loadReplayHistory(t, e)
			changed := worker.NewWorkflowReplayer()
			replayControlWorkflows(changed, false)
			// The SDK logs the expected panic: keep it out of the test's output.
			quiet := log.NewStructuredLogger(slog.New(slog.DiscardHandler))
			err := changed.ReplayWorkflowHistoryWithOptions(quiet, h, replayEntryOptions(e))
			require.Error(t, err, "a new command must not replay %s", e.name())
			// TMPRL1100 is the SDK's code for a non-determinism error (the history's commands differ).
			require.Contains(t, err.Error(), "[TMPRL1100]")
			t.Logf("the changed code fails as it should: %.160s", err)

			versioned := worker.NewWorkflowReplayer()
			replayControlWorkflows(versioned, true)
			require.NoError(t, versioned.ReplayWorkflowHistoryWithOptions(replayLogger(t), h, replayEntryOptions(e)),
				"the change behind GetVersion replays %s", e.name())
		})
	}
	require.True(t, slices.ContainsFunc(entries, func(e replayEntry) bool { return e.Scenario == scenarioPausedOpen }),
		"the control covers an open paused history")
}
