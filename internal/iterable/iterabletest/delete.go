package iterabletest

import (
	"net/http"
	"time"
)

// deleteByEmail serves DELETE /api/users/{email}.
func (s *Server) deleteByEmail(w http.ResponseWriter, r *http.Request) {
	s.deleteUser(w, r, r.PathValue("email"), true)
}

// deleteByUserID serves DELETE /api/users/byUserId/{userId}.
func (s *Server) deleteByUserID(w http.ResponseWriter, r *http.Request) {
	s.deleteUser(w, r, r.PathValue("userId"), false)
}

// deleteUser removes the user named by id at once (Iterable deletes asynchronously; tests want
// the outcome without waiting). Iterable's spec documents 200, 400 and 401 only; an absent user
// is answered 400 BadParams "User does not exist. Email: … UserId: …" as Iterable does, and a
// deletion by email in a userID-based project, which Iterable does not support, 400 BadParams.
func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request, id string, byEmail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.authorize(w, r)
	if p == nil {
		return
	}
	p.stats.DeleteRequests++
	rl := p.deleteByUserIDRL
	if byEmail {
		rl = p.deleteByEmailRL
	}
	if !rl.allow(time.Now()) {
		p.stats.RateLimited++
		s.rateLimited(w)
		return
	}
	var u *user
	email, userID := "", id
	switch {
	case byEmail && p.typ == ProjectUserID:
		p.stats.BadRequests++
		writeError(w, http.StatusBadRequest, "BadParams", "Deleting users by email is not supported in userID-based projects")
		return
	case byEmail:
		email, userID = id, ""
		if id != "" {
			u = p.find(id, "")
		}
	case id != "":
		u = p.byUserID[id]
	}
	if u == nil {
		p.stats.BadRequests++
		writeError(w, http.StatusBadRequest, "BadParams", "User does not exist. Email: "+email+" UserId: "+userID)
		return
	}
	p.remove(u)
	p.stats.UsersDeleted++
	writeJSON(w, http.StatusOK, map[string]any{"code": "Success",
		"msg": "All users associated with " + id + " were successfully deleted", "params": nil})
}
