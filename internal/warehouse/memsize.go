package warehouse

import (
	"math"
	"strconv"
	"strings"
)

// ParseMemorySize reads a DuckDB memory_limit as DuckDB takes and shows it: "128MB" (powers of
// 1,000), "1GiB" or "91.5 MiB" (powers of 1,024), a bare number of bytes. The DuckDB planner
// reads the current limit with it; the deploy tests check the manifests' limits.
func ParseMemorySize(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return 0, false
	}
	mult := map[string]float64{"": 1, "b": 1, "bytes": 1,
		"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}[unit]
	if mult == 0 {
		return 0, false
	}
	return int64(math.Round(v * mult)), true
}
