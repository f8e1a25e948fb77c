package iterable

import (
	"testing"
	"time"
)

// formatDate writes what Format(DateLayout) writes, for every year it takes the fast path for
// and those it does not.
func TestFormatDateMatchesFormat(t *testing.T) {
	east := time.FixedZone("east", 5*3600+30*60)
	west := time.FixedZone("west", -8*3600)
	times := []time.Time{
		{},
		time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 2, 29, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 0, east),
		time.Date(2000, 1, 1, 0, 30, 0, 0, east),
		time.Date(1970, 1, 1, 0, 0, 0, 1, west),
		time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 6, 15, 12, 0, 0, 0, time.UTC),
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(123, 4, 5, 6, 7, 8, 0, west),
		time.Unix(1<<40, 0),
		time.Unix(-1<<40, 0),
	}
	for sec := int64(-3e9); sec < 3e10; sec += 7_777_777 {
		times = append(times, time.Unix(sec, 0).In(east))
	}
	for _, tm := range times {
		if got, want := formatDate(tm), tm.UTC().Format(DateLayout); got != want {
			t.Errorf("formatDate(%v) = %q, want %q", tm, got, want)
		}
	}
}

func BenchmarkValueTime(b *testing.B) {
	tm := time.Date(2024, 2, 29, 23, 59, 59, 0, time.UTC)
	for range b.N {
		if _, err := Value(tm); err != nil {
			b.Fatal(err)
		}
	}
}
