package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/admin"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

const (
	oauthCompany = "5a1c0000-0000-4000-8000-000000000001"
	keyCompany   = "5a1c0000-0000-4000-8000-000000000002"
	accessToken  = "access-token-secret-1"
	refreshToken = "refresh-token-secret-1"
	apiKey       = "api-key-secret-2"
	adminToken   = "admin-token-secret"
)

type fixedStatus struct{ list []credentials.Credential }

func (f fixedStatus) List(context.Context) ([]credentials.Credential, error) { return f.list, nil }
func (f fixedStatus) StatusOf(c credentials.Credential) credentials.Status {
	if c.State == credentials.StateReauthorizationRequired {
		return credentials.StatusReauthorizationRequired
	}
	return credentials.StatusActive
}

func newServer(t *testing.T, token credentials.Secret, checks ...admin.Check) *httptest.Server {
	t.Helper()
	reg := metrics.NewRegistry()
	metrics.New(reg)
	h := admin.New(admin.Options{
		Gatherer: reg,
		Checks:   checks,
		Credentials: fixedStatus{[]credentials.Credential{
			{CompanyID: oauthCompany, TenantID: "t1", Type: credentials.OAuth2, AccessToken: accessToken, RefreshToken: refreshToken,
				ExpiresAt: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC), State: credentials.StateReauthorizationRequired, LastError: "invalid_grant"},
			{CompanyID: keyCompany, Type: credentials.StandaloneAPIKey, APIKey: apiKey, ExpiresAt: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		}},
		AdminToken: token,
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url, auth string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestCredentialsEndpoint(t *testing.T) {
	off := newServer(t, "")
	if code, _ := get(t, off.URL+"/credentials", "Bearer anything"); code != 404 {
		t.Fatalf("endpoint without ADMIN_TOKEN: %d, want 404", code)
	}
	on := newServer(t, adminToken)
	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"no token", "", 401},
		{"wrong token", "Bearer nope", 401},
		{"token as basic", "Basic " + adminToken, 401},
		{"prefix of the token", "Bearer admin-token", 401},
		{"right token", "Bearer " + adminToken, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(t, on.URL+"/credentials", tc.auth)
			if code != tc.want {
				t.Fatalf("status %d, want %d", code, tc.want)
			}
			for _, s := range []string{accessToken, refreshToken, apiKey} {
				if strings.Contains(body, s) {
					t.Fatalf("secret in body: %s", body)
				}
			}
			if code != 200 {
				return
			}
			var doc struct {
				Credentials []map[string]any `json:"credentials"`
			}
			if err := json.Unmarshal([]byte(body), &doc); err != nil {
				t.Fatal(err)
			}
			if len(doc.Credentials) != 2 {
				t.Fatalf("credentials: %v", doc.Credentials)
			}
			first := doc.Credentials[0]
			if first["company_id"] != oauthCompany || first["tenant_id"] != "t1" || first["type"] != "oauth2" ||
				first["state"] != "reauthorization_required" || first["access_token_expires_at"] != "2026-11-28T12:00:00Z" || first["last_error"] != "invalid_grant" {
				t.Fatalf("first credential: %v", first)
			}
		})
	}
	code, body := get(t, on.URL+"/credentials?state=reauthorization_required", "Bearer "+adminToken)
	if code != 200 || !strings.Contains(body, oauthCompany) || strings.Contains(body, keyCompany) {
		t.Fatalf("state filter: %d %s", code, body)
	}
}

func TestReadiness(t *testing.T) {
	healthy := true
	srv := newServer(t, "", admin.Check{Name: "store", Check: func(context.Context) error {
		if healthy {
			return nil
		}
		return errors.New("file unreadable")
	}})
	if code, _ := get(t, srv.URL+"/readyz", ""); code != 200 {
		t.Fatalf("ready: %d", code)
	}
	healthy = false
	code, body := get(t, srv.URL+"/readyz", "")
	if code != 503 || !strings.Contains(body, "store: file unreadable") {
		t.Fatalf("not ready: %d %s", code, body)
	}
	if code, _ := get(t, srv.URL+"/healthz", ""); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
	if code, body := get(t, srv.URL+"/metrics", ""); code != 200 || !strings.Contains(body, "pleo_proxy_requests_total") && !strings.Contains(body, "go_goroutines") {
		t.Fatalf("metrics: %d", code)
	}
	if code, _ := get(t, srv.URL+"/debug/pprof/", ""); code != 404 {
		t.Fatalf("pprof served without ENABLE_PPROF: %d", code)
	}
}

func TestShuttingDownIsNotReady(t *testing.T) {
	h := admin.New(admin.Options{Gatherer: prometheus.NewRegistry()})
	h.SetShuttingDown()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "shutting down") {
		t.Fatalf("%d %s", rec.Code, rec.Body.String())
	}
}
