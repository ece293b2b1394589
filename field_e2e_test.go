package main

// Field behaviour through the built binary against the real token server of
// internal/oauthtest: a 401 that a fresh token does not cure, and the token endpoint's rate
// limit.

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

const fieldAdminToken = "field-admin-token-0123456789"

// fieldSidecar writes creds to a new file store and starts the binary on it against srv.
func fieldSidecar(t *testing.T, srv *oauthtest.Server, creds ...credentials.Credential) *sidecar {
	t.Helper()
	path := filepath.Join(t.TempDir(), "credentials.json")
	data, err := credentials.Marshal(creds)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return startSidecar(t, oauthSidecarEnv(srv, "file://"+path, "PLEO_PROXY_ADMIN_TOKEN="+fieldAdminToken))
}

// fieldGet sends GET path for company through the sidecar.
func fieldGet(t *testing.T, s *sidecar, company, path string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.data+path, nil)
	req.Header.Set("X-Pleo-Company-Id", company)
	resp, err := faultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// fieldState is the company's state as GET /credentials reports it, and its last_error.
func fieldState(t *testing.T, s *sidecar, company string) (string, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.admin+"/credentials", nil)
	req.Header.Set("Authorization", "Bearer "+fieldAdminToken)
	resp, err := faultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Credentials []struct {
			CompanyID string `json:"company_id"`
			State     string `json:"state"`
			LastError string `json:"last_error"`
		} `json:"credentials"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	for _, c := range doc.Credentials {
		if c.CompanyID == company {
			return c.State, c.LastError
		}
	}
	t.Fatalf("company %s not in /credentials", company)
	return "", ""
}

// 1,000 requests to a path the upstream always answers 401 cost at most a couple of token
// calls: after the token a 401-triggered refresh obtained is rejected too, 401s are passed
// back unchanged without a refresh, the credential reports unauthorized, and the skipped
// refreshes are counted. A healthy path for the same company still works, and ends the state.
func TestFieldE2EUnauthorizedCooldown(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	company := "5a1c0000-0000-4000-8000-0000000001f1"
	s := fieldSidecar(t, srv, grantedCredential(t, srv, company, time.Now().Add(10*time.Minute)))

	before := srv.Stats()
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[string]int{}
	sem := make(chan struct{}, 8) // a few callers at once, as an app's workers would be
	for range 1000 {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			resp, body := fieldGet(t, s, company, oauthtest.UnauthorizedPath+"/accounts")
			key := strconv.Itoa(resp.StatusCode)
			if resp.Header.Get("Proxy-Status") != "" || !strings.Contains(string(body), "invalid_token") {
				key += " (not the upstream's)"
			}
			mu.Lock()
			statuses[key]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if statuses["401"] != 1000 {
		t.Fatalf("answers %v, want the upstream's 401 to all 1000\nsidecar log:\n%s", statuses, s.logs.String())
	}
	calls := srv.Stats().TokenCalls - before.TokenCalls
	t.Logf("1000 requests to an always-401 path: %d token calls", calls)
	if calls > 3 {
		t.Fatalf("%d token calls for 1000 requests to an always-401 path, want at most 3", calls)
	}
	if st, lastErr := fieldState(t, s, company); st != "unauthorized" || !strings.Contains(lastErr, "401") {
		t.Fatalf("/credentials: state %q, last_error %q; want unauthorized", st, lastErr)
	}
	// All but the requests in flight (8 at a time) before the cool-down started.
	if v := metricValue(t, s, `pleo_proxy_token_refreshes_skipped_total{reason="unauthorized_cooldown"}`); v < 950 {
		t.Fatalf("pleo_proxy_token_refreshes_skipped_total{reason=unauthorized_cooldown} = %v, want at least 950", v)
	}
	// The gauge is published by the background sweep (every 10 s with the defaults).
	testenv.WaitFor(t, `pleo_proxy_credentials{state="unauthorized",type="oauth2"} to become 1`, 20*time.Second, func() bool {
		return metricValue(t, s, `pleo_proxy_credentials{state="unauthorized",type="oauth2"}`) == 1
	})

	resp, body := fieldGet(t, s, company, "/v1/export-jobs")
	var echo oauthtest.Echo
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &echo) != nil || echo.CompanyID != company {
		t.Fatalf("healthy path: %d %s", resp.StatusCode, body)
	}
	if st, lastErr := fieldState(t, s, company); st != "active" || lastErr != "" {
		t.Fatalf("after a 200: state %q, last_error %q; want active", st, lastErr)
	}
	if calls := srv.Stats().TokenCalls - before.TokenCalls; calls > 3 {
		t.Fatalf("%d token calls in all", calls)
	}
}

// A 429 from the token endpoint is honoured: no token call for that company before its
// Retry-After, and the sidecar's 502 token_endpoint_error says Retry-After too; a 502 after
// another failure carries the back-off.
func TestFieldE2ETokenEndpointRetryAfter(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	limited, failing := "5a1c0000-0000-4000-8000-0000000001f2", "5a1c0000-0000-4000-8000-0000000001f3"
	expired := time.Now().Add(-time.Minute)
	s := fieldSidecar(t, srv, grantedCredential(t, srv, limited, expired), grantedCredential(t, srv, failing, expired))

	// A 503 without Retry-After: the 502 carries the broker's back-off (a second or two after
	// the first failure).
	srv.SetTokenFailure(http.StatusServiceUnavailable)
	resp, body := fieldGet(t, s, failing, "/v1/export-jobs")
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode != http.StatusBadGateway ||
		!strings.Contains(string(body), "token_endpoint_error") || err != nil || ra < 1 || ra > 2 {
		t.Fatalf("503 at the token endpoint: %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}

	srv.SetTokenFailure(http.StatusTooManyRequests)
	srv.SetTokenRetryAfter("120")
	before := srv.Stats()
	for i := range 20 {
		resp, body := fieldGet(t, s, limited, "/v1/export-jobs")
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "token_endpoint_error") || err != nil || ra < 100 || ra > 120 {
			t.Fatalf("request %d: %d, Retry-After %q: %s", i, resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
		if i == 0 {
			srv.SetTokenFailure(0) // answered or not, no token call may come before 120 s
		}
	}
	if calls := srv.Stats().TokenCalls - before.TokenCalls; calls != 1 {
		t.Fatalf("%d token calls during a 120 s Retry-After, want 1", calls)
	}
	if v := metricValue(t, s, `pleo_proxy_token_refreshes_skipped_total{reason="backoff"}`); v < 19 {
		t.Fatalf(`pleo_proxy_token_refreshes_skipped_total{reason="backoff"} = %v, want at least 19`, v)
	}
}
