package connect

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// A code exchange whose answer carries no refresh token (the scopes granted no offline
// access) fails as no_refresh_token, with a hint about the scopes, stores nothing, and
// revokes what was issued (DELETE /v1/installations/me with the new access token).
func TestCallbackWithoutRefreshToken(t *testing.T) {
	var (
		mu      sync.Mutex
		dropped struct{ access, refresh string }
	)
	var e *env
	direct := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second} // no proxy from the environment
	t.Cleanup(direct.CloseIdleConnections)
	// In front of the real token endpoint: passes its answer on without the refresh token.
	strip := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, e.as.TokenURL(), bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := direct.Transport.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		var tok map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		mu.Lock()
		dropped.access, _ = tok["access_token"].(string)
		dropped.refresh, _ = tok["refresh_token"].(string)
		mu.Unlock()
		delete(tok, "refresh_token")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(resp.StatusCode)
		_ = json.NewEncoder(w).Encode(tok)
	}))
	t.Cleanup(strip.Close)
	e = newEnv(t, func(o *Options) { o.TokenURL = mustURL(t, strip.URL) })

	r := get(t, newBrowser(t), e.connectURL("t-1"))
	if r.status != http.StatusBadGateway || !strings.Contains(r.body, "without a refresh token") || !strings.Contains(r.body, "offline") ||
		!strings.Contains(r.body, "no_refresh_token") || !strings.Contains(r.body, "was revoked") {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if len(e.stored()) != 0 || e.failures("no_refresh_token") != 1 || e.failures("exchange_failed") != 0 {
		t.Fatalf("stored %d, no_refresh_token %v, exchange_failed %v", len(e.stored()), e.failures("no_refresh_token"), e.failures("exchange_failed"))
	}
	if !strings.Contains(e.log(), "PLEO_PROXY_OAUTH_SCOPES") {
		t.Fatalf("the log names no hint:\n%s", e.log())
	}

	// What was issued no longer works: the access token at the API, the refresh token at the
	// token endpoint.
	mu.Lock()
	access, refresh := dropped.access, dropped.refresh
	mu.Unlock()
	if access == "" || refresh == "" {
		t.Fatal("the token endpoint issued no tokens to drop")
	}
	req, _ := http.NewRequest(http.MethodGet, e.as.URL()+"/v1/export-jobs", nil)
	req.Header.Set("Authorization", "Bearer "+access)
	resp, err := direct.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the issued access token still works: %d", resp.StatusCode)
	}
	if _, err := e.as.OAuth2Config().TokenSource(t.Context(), &oauth2.Token{RefreshToken: refresh}).Token(); err == nil {
		t.Fatal("the issued refresh token still works")
	}
}
