package iterable_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/activation-engine/activations/internal/iterable"
	"github.com/activation-engine/activations/internal/iterable/iterabletest"
)

// benchRecords makes n users shaped like a typical activation: an email and six attributes.
func benchRecords(n int) []iterable.Record {
	recs := make([]iterable.Record, n)
	signup := time.Date(2023, 2, 5, 20, 42, 10, 0, time.UTC)
	for i := range recs {
		date, _ := iterable.Value(signup.Add(time.Duration(i) * time.Minute))
		recs[i] = iterable.Record{Index: i, User: iterable.User{
			Email: fmt.Sprintf("user%08d@example.com", i),
			DataFields: map[string]any{
				"firstName":   "Firstname",
				"plan":        []string{"free", "pro", "enterprise"}[i%3],
				"orders":      int64(i % 97),
				"ltv":         float64(i%1000) * 1.25,
				"newsletter":  i%2 == 0,
				"signupDate":  date,
				"countryCode": "FR",
			},
		}}
	}
	return recs
}

// BenchmarkPack packs b.N users (run with -benchtime=1000000x for a million).
func BenchmarkPack(b *testing.B) {
	c := mustClient(b, iterable.Config{})
	recs := benchRecords(b.N)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	batches, _, err := c.Pack(recs, true)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "users/s")
	b.ReportMetric(float64(len(batches)), "batches")
}

// BenchmarkPackAndSend packs b.N users and sends them to the emulator with rate limiting
// disabled on both sides (run with -benchtime=1000000x for a million).
func BenchmarkPackAndSend(b *testing.B) {
	for _, senders := range []int{1, 4} {
		b.Run(fmt.Sprintf("senders=%d", senders), func(b *testing.B) {
			emu := iterabletest.NewServer(iterabletest.Options{Unlimited: true})
			defer emu.Close()
			emu.AddProject("bench", iterabletest.ProjectEmail)
			c := mustClient(b, iterable.Config{BaseURL: emu.URL(), APIKey: "bench", RequestsPerSecond: -1})
			recs := benchRecords(b.N)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()

			batches, _, err := c.Pack(recs, true)
			if err != nil {
				b.Fatal(err)
			}
			work := make(chan iterable.Batch)
			var (
				wg       sync.WaitGroup
				mu       sync.Mutex
				accepted int
				firstErr error
			)
			for range senders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for batch := range work {
						res, err := c.SendBatch(context.Background(), batch)
						mu.Lock()
						accepted += len(res.Accepted)
						if err != nil && firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
					}
				}()
			}
			for _, batch := range batches {
				work <- batch
			}
			close(work)
			wg.Wait()
			b.StopTimer()
			if firstErr != nil {
				b.Fatal(firstErr)
			}
			if accepted != b.N {
				b.Fatalf("accepted %d of %d users", accepted, b.N)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "users/s")
		})
	}
}
