package iterabletest

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"time"
)

// exportBurst is the burst of the export rate limit (Iterable: 4 requests/minute per project).
const exportBurst = 4

// parseExportDate reads "yyyy-MM-dd HH:mm:ss" with an optional zone "ZZ" (UTC when absent).
func parseExportDate(s string) (time.Time, bool) {
	for _, l := range []string{"2006-01-02 15:04:05 -07:00", "2006-01-02 15:04:05 -0700", "2006-01-02 15:04:05"} {
		if t, err := time.Parse(l, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// exportData serves GET /api/export/data.json for dataTypeName=user: one JSON object per line
// (application/x-json-stream).
func (s *Server) exportData(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	p := s.authorize(w, r)
	if p == nil {
		s.mu.Unlock()
		return
	}
	p.stats.ExportRequests++
	if s.faults.Export429 > 0 || !p.exportRL.allow(time.Now()) {
		if s.faults.Export429 > 0 {
			s.faults.Export429--
		}
		p.stats.RateLimited++
		s.rateLimited(w)
		s.mu.Unlock()
		return
	}
	q := r.URL.Query()
	from, to, code, msg := exportWindow(q.Get("range"), q.Get("startDateTime"), q.Get("endDateTime"), time.Now())
	if q.Get("dataTypeName") != "user" {
		code, msg = "BadParams", "dataTypeName must be user (the emulator exports users only)"
	}
	if code != "" {
		p.stats.BadRequests++
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, code, msg)
		return
	}
	var only map[string]bool
	for _, v := range q["onlyFields"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				if only == nil {
					only = map[string]bool{}
				}
				only[f] = true
			}
		}
	}
	keep := func(f string) bool { return only == nil || only[f] }
	users := make([]*user, 0, len(p.all))
	for u := range p.all {
		if !u.updated.Before(from) && u.updated.Before(to) {
			users = append(users, u)
		}
	}
	sort.Slice(users, func(i, j int) bool {
		a, b := users[i], users[j]
		if x, y := strings.ToLower(a.email), strings.ToLower(b.email); x != y {
			return x < y
		}
		return a.userID < b.userID
	})
	lines := make([]map[string]any, 0, len(users))
	for _, u := range users {
		line := make(map[string]any, len(u.data)+3)
		for k, v := range u.data {
			if keep(k) {
				line[k] = deepCopy(v)
			}
		}
		if u.email != "" && keep("email") {
			line["email"] = u.email
		}
		if u.userID != "" && keep("userId") {
			line["userId"] = u.userID
		}
		if keep("profileUpdatedAt") {
			line["profileUpdatedAt"] = u.updated.UTC().Format("2006-01-02 15:04:05 -07:00")
		}
		lines = append(lines, line)
	}
	cut := s.faults.CutExportAfter
	p.stats.ExportedUsers += len(lines)
	if cut > 0 && cut < len(lines) {
		p.stats.ExportedUsers -= len(lines) - cut
	}
	s.mu.Unlock()

	w.Header().Set("Content-Type", "application/x-json-stream")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w) // one object and a newline per Encode
	enc.SetEscapeHTML(false)
	for i, line := range lines {
		if cut > 0 && i == cut {
			if flusher != nil {
				flusher.Flush()
			}
			// Abort: the server closes the connection without ending the chunked body.
			panic(http.ErrAbortHandler)
		}
		if err := enc.Encode(line); err != nil {
			return // the client went away
		}
		if flusher != nil && i%1000 == 999 {
			flusher.Flush()
		}
	}
}

// exportWindow turns range or startDateTime/endDateTime into [from, to), or says why not.
func exportWindow(rng, start, end string, now time.Time) (from, to time.Time, code, msg string) {
	today := now.UTC().Truncate(24 * time.Hour)
	far := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	switch {
	case start != "":
		f, ok := parseExportDate(start)
		if !ok {
			return from, to, "BadParams", "startDateTime must be yyyy-MM-dd HH:mm:ss [ZZ]"
		}
		t := far
		if end != "" {
			if t, ok = parseExportDate(end); !ok {
				return from, to, "BadParams", "endDateTime must be yyyy-MM-dd HH:mm:ss [ZZ]"
			}
		}
		return f, t, "", ""
	case rng == "":
		return from, to, "BadParams", "Either range or startDateTime is required"
	case rng == "All":
		return time.Time{}, far, "", ""
	case rng == "Today":
		return today, far, "", ""
	case rng == "Yesterday":
		return today.Add(-24 * time.Hour), today, "", ""
	case rng == "BeforeToday":
		return time.Time{}, today, "", ""
	}
	return from, to, "BadParams", "range must be Today, Yesterday, BeforeToday or All"
}
