package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/connect"
)

// maxConnectLinkBody bounds a POST /connect-links body.
const maxConnectLinkBody = 8 << 10

// connectLinkRequest is the body of POST /connect-links.
type connectLinkRequest struct {
	TenantID string `json:"tenant_id"`
	// TTL is a Go duration ("30m", "1h", "72h"); empty: connect.DefaultLinkTTL.
	TTL string `json:"ttl"`
}

// connectLinkResponse is its answer.
type connectLinkResponse struct {
	URL       string    `json:"url"`
	ExpiresAt time.Time `json:"expires_at"`
}

// connectLinks answers POST /connect-links: a signed consent link for a tenant, for the
// integration to hand to its logged-in user. Bearer ADMIN_TOKEN, like /credentials.
func (h *Handler) connectLinks(w http.ResponseWriter, r *http.Request) {
	if !h.admit(w, r, h.connectLink != nil) {
		return
	}
	// The body is read as JSON whatever its Content-Type (curl -d sends a form type).
	var req connectLinkRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxConnectLinkBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeBadRequest(w, http.StatusBadRequest, "Invalid request body", "the body must be a JSON object "+
			`{"tenant_id": "...", "ttl": "1h"}: `+jsonProblem(err))
		return
	}
	if dec.More() {
		writeBadRequest(w, http.StatusBadRequest, "Invalid request body", "the body must hold one JSON object")
		return
	}
	if err := connect.CheckTenant(req.TenantID); err != nil {
		writeBadRequest(w, http.StatusBadRequest, "Invalid tenant_id", err.Error())
		return
	}
	ttl := connect.DefaultLinkTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			writeBadRequest(w, http.StatusBadRequest, "Invalid ttl", fmt.Sprintf("%s is not a duration such as 30m or 1h", strconv.Quote(clip(req.TTL))))
			return
		}
		if err := connect.CheckLinkTTL(d); err != nil {
			writeBadRequest(w, http.StatusBadRequest, "Invalid ttl", err.Error())
			return
		}
		ttl = d
	}
	u, expires, err := h.connectLink(req.TenantID, ttl)
	if err != nil {
		h.log.ErrorContext(r.Context(), "minting a connect link failed", "error", err)
		writeBadRequest(w, http.StatusInternalServerError, "Internal error", "the link could not be made")
		return
	}
	h.log.InfoContext(r.Context(), "connect link issued", "tenant_id", req.TenantID, "expires_at", expires)
	writeJSON(w, http.StatusOK, connectLinkResponse{URL: u, ExpiresAt: expires.UTC()})
}

// jsonProblem says what is wrong with a body, without echoing it at length.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return "the body is empty"
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("%s must be a string", typ.Field)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return clip(err.Error())
	}
	return "malformed JSON"
}

// clip bounds a value echoed into an answer.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// writeBadRequest answers an RFC 9457 problem (application/problem+json).
func writeBadRequest(w http.ResponseWriter, status int, title, detail string) {
	body, _ := json.Marshal(map[string]any{
		"type":   "about:blank",
		"title":  title,
		"status": status,
		"detail": detail,
	})
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
