package spec

import (
	"fmt"
	"time"
)

// Thresholds decide when a run pauses instead of going on (the `thresholds:` key of an
// activation). Every field is optional; unset fields take the defaults below. A pause keeps the
// run resumable: an operator resumes or aborts it, or, when the cause was transient, the run
// resumes by itself once Iterable answers again.
type Thresholds struct {
	// MaxRejectedPercent pauses the run when more than this share of the rows attempted since
	// the run started (or was last resumed) were rejected, by Iterable or by local checks.
	// Evaluated each time a chunk finishes, once MinAttempted rows were attempted. 0 pauses on
	// the first rejection; 100 never pauses. Default 10.
	MaxRejectedPercent *float64 `yaml:"maxRejectedPercent,omitempty" json:"maxRejectedPercent,omitempty"`
	// MinAttempted is how many rows must have been attempted before MaxRejectedPercent is
	// evaluated (default 500; 1 evaluates from the first chunk).
	MinAttempted int64 `yaml:"minAttempted,omitempty" json:"minAttempted,omitempty"`
	// MaxConsecutiveFailedRequests stops a chunk after this many consecutive failed HTTP
	// requests to Iterable (timeouts, dropped connections, 408, 429, 5xx); the run then pauses
	// as "Iterable unavailable" and resumes by itself when Iterable answers again. Default 20.
	MaxConsecutiveFailedRequests int `yaml:"maxConsecutiveFailedRequests,omitempty" json:"maxConsecutiveFailedRequests,omitempty"`
	// MaxChangedPercent is a volume guard on the plan, checked before anything is sent: the run
	// pauses when the rows to add or change exceed this share of the model's rows. Only when
	// the state is not empty (a first run adds everything) and not on a full resync. Rows held
	// back by earlier runs (rejected, or skipped as not in Iterable) are planned as added again
	// and count. Default 50.
	MaxChangedPercent *float64 `yaml:"maxChangedPercent,omitempty" json:"maxChangedPercent,omitempty"`
	// MaxRemovedPercent is the volume guard of removals: the run pauses when the rows to remove
	// exceed this share of the rows previously synced (unchanged + changed + removed). Default 20.
	MaxRemovedPercent *float64 `yaml:"maxRemovedPercent,omitempty" json:"maxRemovedPercent,omitempty"`
	// PauseTimeout is how long a paused run waits for an operator (or for Iterable to come
	// back) before it fails. Default 168h (a week).
	PauseTimeout Duration `yaml:"pauseTimeout,omitempty" json:"pauseTimeout,omitempty"`
}

// Defaults of Thresholds.
const (
	DefaultMaxRejectedPercent           = 10.0
	DefaultMinAttempted                 = 500
	DefaultMaxConsecutiveFailedRequests = 20
	DefaultMaxChangedPercent            = 50.0
	DefaultMaxRemovedPercent            = 20.0
	DefaultPauseTimeout                 = 168 * time.Hour
)

// Limits are the effective thresholds of a run: Thresholds with every default applied.
type Limits struct {
	MaxRejectedPercent           float64       `json:"maxRejectedPercent"`
	MinAttempted                 int64         `json:"minAttempted"`
	MaxConsecutiveFailedRequests int           `json:"maxConsecutiveFailedRequests"`
	MaxChangedPercent            float64       `json:"maxChangedPercent"`
	MaxRemovedPercent            float64       `json:"maxRemovedPercent"`
	PauseTimeout                 time.Duration `json:"pauseTimeout"`
}

// WithDefaults returns the effective limits; a nil Thresholds gives every default.
func (t *Thresholds) WithDefaults() Limits {
	l := Limits{
		MaxRejectedPercent:           DefaultMaxRejectedPercent,
		MinAttempted:                 DefaultMinAttempted,
		MaxConsecutiveFailedRequests: DefaultMaxConsecutiveFailedRequests,
		MaxChangedPercent:            DefaultMaxChangedPercent,
		MaxRemovedPercent:            DefaultMaxRemovedPercent,
		PauseTimeout:                 DefaultPauseTimeout,
	}
	if t == nil {
		return l
	}
	if t.MaxRejectedPercent != nil {
		l.MaxRejectedPercent = *t.MaxRejectedPercent
	}
	if t.MinAttempted > 0 {
		l.MinAttempted = t.MinAttempted
	}
	if t.MaxConsecutiveFailedRequests > 0 {
		l.MaxConsecutiveFailedRequests = t.MaxConsecutiveFailedRequests
	}
	if t.MaxChangedPercent != nil {
		l.MaxChangedPercent = *t.MaxChangedPercent
	}
	if t.MaxRemovedPercent != nil {
		l.MaxRemovedPercent = *t.MaxRemovedPercent
	}
	if t.PauseTimeout > 0 {
		l.PauseTimeout = time.Duration(t.PauseTimeout)
	}
	return l
}

// Limits returns the activation's effective thresholds.
func (a Activation) Limits() Limits { return a.Thresholds.WithDefaults() }

// MaxConsecutiveFailedRequestsLimit bounds maxConsecutiveFailedRequests: beyond it a chunk would
// retry for hours before the run pauses.
const MaxConsecutiveFailedRequestsLimit = 1000

// problems checks the thresholds; key paths start with "thresholds.".
func (t *Thresholds) problems() Problems {
	if t == nil {
		return nil
	}
	var ps Problems
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Path: "thresholds." + path, Msg: fmt.Sprintf(format, args...)})
	}
	percent := func(path string, v *float64) {
		if v != nil && (*v < 0 || *v > 100) {
			add(path, "%g must be a percentage between 0 and 100", *v)
		}
	}
	percent("maxRejectedPercent", t.MaxRejectedPercent)
	percent("maxChangedPercent", t.MaxChangedPercent)
	percent("maxRemovedPercent", t.MaxRemovedPercent)
	if t.MinAttempted < 0 {
		add("minAttempted", "%d must be at least 1 (or left out for %d)", t.MinAttempted, DefaultMinAttempted)
	}
	if n := t.MaxConsecutiveFailedRequests; n < 0 || n > MaxConsecutiveFailedRequestsLimit {
		add("maxConsecutiveFailedRequests", "%d must be between 1 and %d", n, MaxConsecutiveFailedRequestsLimit)
	}
	if d := time.Duration(t.PauseTimeout); d < 0 || (d > 0 && d < time.Minute) {
		add("pauseTimeout", "%s is too short (at least 1m, e.g. 168h)", d)
	}
	return ps
}
