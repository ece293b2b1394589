// Package admin serves the sidecar's admin listener: Prometheus metrics, liveness, readiness
// with reasons, and the credential status endpoint. It serves nothing secret.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// Check is one readiness condition; a non-nil error makes /readyz answer 503 with its text.
type Check struct {
	Name  string
	Check func(ctx context.Context) error
}

// CredentialStatus lists credentials and derives their reported state (a *credentials.Broker
// over the store does both).
type CredentialStatus interface {
	List(ctx context.Context) ([]credentials.Credential, error)
	StatusOf(c credentials.Credential) credentials.Status
}

// CredentialRemover removes credentials for DELETE /credentials/{company_id}.
type CredentialRemover interface {
	// Delete removes the credential from the store only; an unknown company is
	// credentials.ErrNotFound.
	Delete(ctx context.Context, companyID string) error
	// Disconnect revokes the installation at Pleo, then removes the credential. Without force,
	// an unconfirmed revocation keeps the credential and returns an error; with force it is
	// removed anyway and revoked is false. revokeErr says why a revocation was not confirmed.
	Disconnect(ctx context.Context, companyID string, force bool) (revoked bool, revokeErr, err error)
}

// Options configures the admin handler.
type Options struct {
	// Gatherer is served on /metrics.
	Gatherer prometheus.Gatherer
	// Checks decide readiness.
	Checks []Check
	// Credentials backs GET /credentials.
	Credentials CredentialStatus
	// Remover backs DELETE /credentials/{company_id} (nil: that endpoint is off).
	Remover CredentialRemover
	// AdminToken guards GET /credentials, DELETE /credentials/{company_id} and POST
	// /connect-links; empty turns them off (404).
	AdminToken credentials.Secret
	// ConnectLink mints a signed connect link for a tenant, valid for a lifetime, and returns
	// it with its expiry; it backs POST /connect-links. Nil turns the endpoint off (404).
	ConnectLink func(tenant string, ttl time.Duration) (string, time.Time, error)
	// EnablePprof serves /debug/pprof/.
	EnablePprof bool
	// Logger receives handler errors (default discard).
	Logger *slog.Logger
}

// Handler is the admin listener's http.Handler.
type Handler struct {
	mux          *http.ServeMux
	checks       []Check
	creds        CredentialStatus
	remover      CredentialRemover
	tokenHash    atomic.Pointer[[32]byte] // the admin token's SHA-256; nil: the endpoint is off
	connectLink  func(tenant string, ttl time.Duration) (string, time.Time, error)
	shuttingDown atomic.Bool
	log          *slog.Logger
}

// New builds the admin handler.
func New(opts Options) *Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{mux: http.NewServeMux(), checks: opts.Checks, creds: opts.Credentials, remover: opts.Remover, log: opts.Logger,
		connectLink: opts.ConnectLink}
	h.SetAdminToken(opts.AdminToken)
	if opts.Gatherer != nil {
		h.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{
			ErrorLog: slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
		}))
	}
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	h.mux.HandleFunc("GET /readyz", h.readyz)
	h.mux.HandleFunc("GET /credentials", h.credentials)
	h.mux.HandleFunc("POST /connect-links", h.connectLinks)
	h.mux.HandleFunc("DELETE /credentials/{company_id}", h.removeCredential)
	if opts.EnablePprof {
		h.mux.HandleFunc("/debug/pprof/", pprof.Index)
		h.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		h.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		h.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		h.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// SetShuttingDown turns readiness to 503, the first step of a graceful shutdown.
func (h *Handler) SetShuttingDown() { h.shuttingDown.Store(true) }

func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var reasons []string
	if h.shuttingDown.Load() {
		reasons = append(reasons, "shutting down")
	}
	for _, c := range h.checks {
		if err := c.Check(ctx); err != nil {
			reasons = append(reasons, c.Name+": "+err.Error())
		}
	}
	if len(reasons) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "reasons": reasons})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready"})
}

// credentialView is what GET /credentials shows of one credential: metadata, never a secret.
type credentialView struct {
	CompanyID            string     `json:"company_id"`
	TenantID             string     `json:"tenant_id,omitempty"`
	Type                 string     `json:"type"`
	State                string     `json:"state"`
	AccessTokenExpiresAt *time.Time `json:"access_token_expires_at,omitempty"`
	KeyExpiresAt         *time.Time `json:"key_expires_at,omitempty"`
	LastRefreshedAt      *time.Time `json:"last_refreshed_at,omitempty"`
	LastError            string     `json:"last_error,omitempty"`
}

func (h *Handler) credentials(w http.ResponseWriter, r *http.Request) {
	if !h.admit(w, r, h.creds != nil) {
		return
	}
	list, err := h.creds.List(r.Context())
	if err != nil {
		h.log.WarnContext(r.Context(), "listing credentials failed", "error", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the credential store could not be read"})
		return
	}
	filter := r.URL.Query().Get("state")
	out := make([]credentialView, 0, len(list))
	for _, c := range list {
		v := credentialView{
			CompanyID: c.CompanyID,
			TenantID:  c.TenantID,
			Type:      string(c.Type),
			State:     string(h.creds.StatusOf(c)),
			LastError: c.LastError,
		}
		if !c.ExpiresAt.IsZero() {
			t := c.ExpiresAt
			if c.Type == credentials.OAuth2 {
				v.AccessTokenExpiresAt = &t
			} else {
				v.KeyExpiresAt = &t
			}
		}
		if !c.LastRefreshedAt.IsZero() {
			t := c.LastRefreshedAt
			v.LastRefreshedAt = &t
		}
		if filter != "" && v.State != filter {
			continue
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, map[string]any{"credentials": out})
}

// removeCredential serves DELETE /credentials/{company_id}: with ?revoke=true it revokes the
// installation at Pleo first (and keeps the credential when Pleo does not confirm, unless
// &force=true); without it, it removes the credential from the store only.
func (h *Handler) removeCredential(w http.ResponseWriter, r *http.Request) {
	if !h.admit(w, r, h.remover != nil) {
		return
	}
	id := r.PathValue("company_id")
	if !credentials.ValidCompanyID(id) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "the company id must be a UUID"})
		return
	}
	id = credentials.CanonicalCompanyID(id)
	q := r.URL.Query()
	revoke, force := q.Get("revoke") == "true", q.Get("force") == "true"
	out := map[string]any{"company_id": id, "removed": true}
	var err error
	if revoke {
		var revoked bool
		var revokeErr error
		revoked, revokeErr, err = h.remover.Disconnect(r.Context(), id, force)
		out["revoked"] = revoked
		if revokeErr != nil {
			out["revoke_error"] = revokeErr.Error()
		}
		if err != nil && revokeErr != nil && !errors.Is(err, credentials.ErrNotFound) {
			h.log.WarnContext(r.Context(), "disconnect: Pleo did not confirm the revocation; credential kept", "company_id", id, "error", revokeErr)
			writeJSON(w, http.StatusBadGateway, map[string]any{"company_id": id, "removed": false, "revoked": false,
				"error": "Pleo did not confirm the revocation; the credential was kept (add force=true to remove it anyway)", "revoke_error": revokeErr.Error()})
			return
		}
	} else {
		err = h.remover.Delete(r.Context(), id)
	}
	switch {
	case errors.Is(err, credentials.ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no credential for that company"})
	case err != nil:
		h.log.WarnContext(r.Context(), "removing a credential failed", "company_id", id, "error", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the credential store could not be written"})
	default:
		h.log.InfoContext(r.Context(), "credential removed through the admin listener", "company_id", id, "revoke", revoke, "revoked", out["revoked"])
		writeJSON(w, http.StatusOK, out)
	}
}

// admit lets an admin request through: 404 when the endpoint is off (no admin token, or
// enabled false), 401 without the admin bearer token.
func (h *Handler) admit(w http.ResponseWriter, r *http.Request, enabled bool) bool {
	if h.tokenHash.Load() == nil || !enabled {
		http.NotFound(w, r)
		return false
	}
	if !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pleo-auth-proxy-admin"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "a valid admin bearer token is required"})
		return false
	}
	return true
}

func (h *Handler) authorized(r *http.Request) bool {
	v := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(v) <= len(prefix) || !strings.EqualFold(v[:len(prefix)], prefix) {
		return false
	}
	want := h.tokenHash.Load()
	if want == nil {
		return false
	}
	got := sha256.Sum256([]byte(v[len(prefix):]))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// SetAdminToken replaces the admin token (a reloaded PLEO_PROXY_ADMIN_TOKEN_FILE): requests
// after it returns need the new one. An empty token turns GET /credentials off.
func (h *Handler) SetAdminToken(token credentials.Secret) {
	if token.IsZero() {
		h.tokenHash.Store(nil)
		return
	}
	sum := sha256.Sum256([]byte(token.Reveal()))
	h.tokenHash.Store(&sum)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
