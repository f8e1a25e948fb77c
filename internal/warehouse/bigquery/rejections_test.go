package bigquery_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/activation-engine/activations/internal/warehouse"
	"github.com/activation-engine/activations/internal/warehouse/bigquery"
	"github.com/activation-engine/activations/internal/warehouse/bigquery/bqfake"
)

const rejectionsStream = "projects/" + project + "/datasets/" + dataset + "/tables/rejections/streams/_default"

// rejections makes n rejections with distinct keys; the even ones name their field, class and
// row hash, the odd ones leave them unknown (NULL).
func rejections(n int) []warehouse.Rejection {
	rs := make([]warehouse.Rejection, n)
	for i := range rs {
		rs[i] = warehouse.Rejection{Key: fmt.Sprint(i), Op: warehouse.OpAdd, Outcome: warehouse.OutcomeRejected, Reason: "invalid email"}
		if i%2 == 0 {
			rs[i].Field, rs[i].Class, rs[i].RowHash = "email", warehouse.ClassIdentifier, "0af3"
		}
	}
	return rs
}

func appendedKeys(fake *bqfake.Server) []string {
	var keys []string
	for _, row := range fake.Appended(dataset + "." + "rejections") {
		keys = append(keys, row["key"].(string))
	}
	return keys
}

func keys(rs []warehouse.Rejection) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Key
	}
	return out
}

func TestRecordRejectionsStorageWrite(t *testing.T) {
	ctx := context.Background()
	t.Run("one append per call, no job", func(t *testing.T) {
		fake := bqfake.New(t)
		p := open(t, fake, writeOptions(fake.StartStorage(t)))
		rs := rejections(4500)
		before := time.Now()
		require.NoError(t, p.RecordRejections(ctx, "crm-users", "run-1", rs))
		require.NoError(t, p.RecordRejections(ctx, "crm-users", "run-1", nil))
		require.Empty(t, jobsAfterOpen(fake), "no DML job")

		appends := fake.Appends()
		require.Len(t, appends, 3, "requests of at most 2000 rows")
		for i, a := range appends {
			require.Equal(t, []int{2000, 2000, 500}[i], a.Rows)
			require.Equal(t, rejectionsStream, a.Stream, "the default stream")
			require.Equal(t, "write_stream="+url.QueryEscape(rejectionsStream), a.RoutingHeader)
			require.False(t, a.Failed)
		}
		rows := fake.Appended(dataset + ".rejections")
		require.Len(t, rows, 4500)
		at := rows[0]["at"].(int64)
		require.WithinDuration(t, before, time.UnixMicro(at), time.Minute)
		require.Equal(t, map[string]any{"activation_id": "crm-users", "run_id": "run-1", "key": "0", "op": "add",
			"outcome": "rejected", "field": "email", "reason": "invalid email", "at": at, "class": "identifier",
			"row_hash": "0af3"}, rows[0])
		require.Equal(t, map[string]any{"activation_id": "crm-users", "run_id": "run-1", "key": "1", "op": "add",
			"outcome": "rejected", "reason": "invalid email", "at": at}, rows[1],
			"field, class and row_hash are NULL when unknown, as with DML")
		require.Equal(t, at, rows[4499]["at"], "one time per call: a repeated append repeats equal rows")
		require.Equal(t, keys(rs), appendedKeys(fake))
	})

	t.Run("a failed append is retried from the first request not acknowledged", func(t *testing.T) {
		fake := bqfake.New(t)
		p := open(t, fake, writeOptions(fake.StartStorage(t)))
		fake.FailAppendsAfter(1, codes.Unavailable, 1)
		rs := rejections(4500)
		require.NoError(t, p.RecordRejections(ctx, "crm-users", "run-1", rs))
		require.Empty(t, jobsAfterOpen(fake))
		var sizes []int
		for _, a := range fake.Appends() {
			sizes = append(sizes, a.Rows)
		}
		require.Equal(t, []int{2000, 2000, 2000, 500}, sizes, "the second request failed and was sent again")
		require.Equal(t, keys(rs), appendedKeys(fake), "every row once")
	})

	t.Run("rows an append cannot write go by DML", func(t *testing.T) {
		fake := bqfake.New(t)
		p := open(t, fake, writeOptions(fake.StartStorage(t)))
		fake.RefuseAppendedRows(1)
		rs := rejections(3)
		require.NoError(t, p.RecordRejections(ctx, "crm-users", "run-1", rs))
		require.Empty(t, appendedKeys(fake))
		jobs := jobsAfterOpen(fake)
		require.Len(t, jobs, 1, "one DML insert")
		require.Contains(t, jobs[0].SQL, "INSERT INTO `test-proj`.`activations`.`rejections`")
		param, ok := jobs[0].Param("rows")
		require.True(t, ok)
		for _, r := range rs {
			require.Contains(t, param, `"key":{"value":"`+r.Key+`"}`)
		}
	})

	t.Run("permanent failures fall back to DML at once, transient ones after the retries", func(t *testing.T) {
		for _, code := range []codes.Code{codes.NotFound, codes.PermissionDenied, codes.InvalidArgument, codes.Unavailable} {
			fake := bqfake.New(t)
			p := open(t, fake, writeOptions(fake.StartStorage(t)))
			fake.FailAppends(code, 100)
			require.NoError(t, p.RecordRejections(ctx, "crm-users", "run-1", rejections(3)), code)
			require.Len(t, jobsAfterOpen(fake), 1, code)
			attempts := map[bool]int{false: 1, true: 4}[code == codes.Unavailable] // FastRetries: 3 retries
			require.Len(t, fake.Appends(), attempts, code)
		}
	})

	t.Run("Plan's classes go by DML: its DELETE of a retried plan never meets streamed rows", func(t *testing.T) {
		fake := bqfake.New(t)
		p := open(t, fake, writeOptions(fake.StartStorage(t)))
		rs := rejections(2)
		rs = append(rs, warehouse.Rejection{Key: "dup", Op: warehouse.OpAdd, Outcome: warehouse.OutcomeSkipped,
			Class: warehouse.ClassDuplicateKey, Reason: "duplicate"},
			warehouse.Rejection{Key: "shared", Op: warehouse.OpAdd, Outcome: warehouse.OutcomeSkipped,
				Class: warehouse.ClassSharedIdentifier, Reason: "shared"})
		require.NoError(t, p.RecordRejections(ctx, "crm-users", "run-1", rs))
		require.Equal(t, []string{"0", "1"}, appendedKeys(fake))
		jobs := jobsAfterOpen(fake)
		require.Len(t, jobs, 1)
		param, _ := jobs[0].Param("rows")
		require.Contains(t, param, `"key":{"value":"dup"}`)
		require.Contains(t, param, `"key":{"value":"shared"}`)
		require.NotContains(t, param, `"key":{"value":"0"}`)
	})

	t.Run("a cancelled call fails without writing by DML", func(t *testing.T) {
		fake := bqfake.New(t)
		p := open(t, fake, writeOptions(fake.StartStorage(t)))
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		require.ErrorIs(t, p.RecordRejections(cctx, "crm-users", "run-1", rejections(3)), context.Canceled)
		require.Empty(t, jobsAfterOpen(fake))
	})
}

// TestPlanSparesStreamedRejections: with the Storage Write API, Plan's retention DELETE keeps
// the rejections of the last hour whatever the retention, so it never touches rows appended in
// BigQuery's streaming window; with DML rejections the retention is taken as it is.
func TestPlanSparesStreamedRejections(t *testing.T) {
	for _, streamed := range []bool{true, false} {
		t.Run(fmt.Sprintf("storage write %v", streamed), func(t *testing.T) {
			fake := bqfake.New(t)
			mods := []func(*bigquery.Options){}
			if streamed {
				mods = append(mods, writeOptions(fake.StartStorage(t)))
			}
			p := open(t, fake, mods...)
			handlePlan(fake)
			for _, retention := range []time.Duration{time.Nanosecond, 48 * time.Hour} {
				req := planRequest()
				req.RejectionsRetention = retention
				_, err := p.Plan(context.Background(), req)
				require.NoError(t, err)
				jobs := jobsAfterOpen(fake)
				want := retention
				if streamed {
					want = max(retention, time.Hour)
				}
				require.WithinDuration(t, time.Now().Add(-want), cutoff(t, jobs[len(jobs)-1]), time.Minute, retention)
			}
		})
	}
}
