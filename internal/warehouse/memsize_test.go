package warehouse

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseMemorySize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"128MB", 128_000_000, true},
		{"96MB", 96_000_000, true},
		{"1GiB", 1 << 30, true},
		{"91.5 MiB", 95_944_704, true},
		{"953.6 MiB", 999_922_074, true},
		{"2gb", 2_000_000_000, true},
		{"4096", 4096, true},
		{"512 KiB", 512 << 10, true},
		{"default", 0, false},
		{"12 parsecs", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := ParseMemorySize(tt.in)
		require.Equal(t, tt.ok, ok, tt.in)
		require.Equal(t, tt.want, got, tt.in)
	}
}
