package spec_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/activation-engine/activations/internal/spec"
)

func TestThresholdDefaults(t *testing.T) {
	acts, err := spec.Load(write(t, t.TempDir(), "a.yaml", valid))
	require.NoError(t, err)
	require.Nil(t, acts[0].Thresholds, "an activation without thresholds carries none (its schedule hash is unchanged)")
	require.Equal(t, spec.Limits{MaxRejectedPercent: 10, MinAttempted: 500, MaxConsecutiveFailedRequests: 20,
		MaxChangedPercent: 50, MaxRemovedPercent: 20, PauseTimeout: 168 * time.Hour}, acts[0].Limits())
}

func TestThresholdsLoad(t *testing.T) {
	body := valid + `thresholds:
  maxRejectedPercent: 0
  minAttempted: 50
  maxConsecutiveFailedRequests: 5
  maxChangedPercent: 100
  pauseTimeout: 24h
`
	acts, err := spec.Load(write(t, t.TempDir(), "a.yaml", body))
	require.NoError(t, err)
	require.Equal(t, spec.Limits{MaxRejectedPercent: 0, MinAttempted: 50, MaxConsecutiveFailedRequests: 5,
		MaxChangedPercent: 100, MaxRemovedPercent: 20, PauseTimeout: 24 * time.Hour}, acts[0].Limits(),
		"0 is a real percentage; unset keys keep their defaults")
}

func TestThresholdProblems(t *testing.T) {
	tests := []struct{ key, value, want string }{
		{"maxRejectedPercent", "110", "a.yaml:20: thresholds.maxRejectedPercent: 110 must be a percentage between 0 and 100"},
		{"maxChangedPercent", "-1", "thresholds.maxChangedPercent: -1 must be a percentage"},
		{"maxRemovedPercent", "101", "thresholds.maxRemovedPercent"},
		{"minAttempted", "-5", "thresholds.minAttempted: -5 must be at least 1"},
		{"maxConsecutiveFailedRequests", "5000", "thresholds.maxConsecutiveFailedRequests: 5000 must be between 1 and 1000"},
		{"pauseTimeout", "10s", "thresholds.pauseTimeout: 10s is too short"},
		{"maxRejectedPct", "5", `thresholds.maxRejectedPct: unknown key "maxRejectedPct"`},
	}
	for _, tc := range tests {
		t.Run(tc.key, func(t *testing.T) {
			body := valid + "thresholds:\n  " + tc.key + ": " + tc.value + "\n"
			_, err := spec.Load(write(t, t.TempDir(), "a.yaml", body))
			require.ErrorContains(t, err, tc.want)
		})
	}
}
