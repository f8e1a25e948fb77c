package zetasqltest

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseType(t *testing.T) {
	for in, want := range map[string]string{
		"int64":                                "INT64",
		"FLOAT":                                "FLOAT64",
		"RANGE<DATE>":                          "RANGE<DATE>",
		"ARRAY<STRUCT<a INT64, `b c` STRING>>": "ARRAY<STRUCT<`a` INT64, `b c` STRING>>",
		" STRUCT< x ARRAY<BYTES> , y JSON > ":  "STRUCT<`x` ARRAY<BYTES>, `y` JSON>",
		"STRUCT<n BIGNUMERIC, g GEOGRAPHY, i INTERVAL>": "STRUCT<`n` BIGNUMERIC, `g` GEOGRAPHY, `i` INTERVAL>",
	} {
		typ, err := ParseType(in)
		require.NoError(t, err, in)
		require.Equal(t, want, typ.String(), in)
	}
	for _, bad := range []string{"", "INT32", "ARRAY<INT64", "STRUCT<a>", "INT64 x"} {
		_, err := ParseType(bad)
		require.Error(t, err, bad)
	}
}
