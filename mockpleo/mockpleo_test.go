package mockpleo

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

const (
	testClientID = "client-1"
	testSecret   = "s3cret/+&="
	companyA     = "5a1c0a4e-6f1b-4c52-9a39-0d1f6d2b8e01"
	companyB     = "9d2e7c1a-3b4f-4e6a-8c2d-1f0e9a8b7c6d"
	redirectURI  = "http://127.0.0.1:7382/callback"
	goodVerifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-long-enough"
)

// clock is a fake, concurrency-safe clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type env struct {
	m     *Server
	ts    *httptest.Server
	clock *clock
	hc    *http.Client // does not follow redirects
}

func newEnv(t *testing.T) *env {
	t.Helper()
	c := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	m := New(Options{ClientID: testClientID, ClientSecret: testSecret, Now: c.Now})
	ts := httptest.NewServer(m.Handler())
	t.Cleanup(ts.Close)
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &env{m: m, ts: ts, clock: c, hc: hc}
}

// basic is what x/oauth2 sends for client_secret_basic.
func basic(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

// token posts form to /oauth/token with the given Authorization (none if empty).
func (e *env) token(t *testing.T, auth string, form url.Values) (int, map[string]any) {
	t.Helper()
	return e.post(t, "/oauth/token", auth, form)
}

func (e *env) post(t *testing.T, path, auth string, form url.Values) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.ts.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("decoding %s answer (%d): %v", path, resp.StatusCode, err)
	}
	return resp.StatusCode, body
}

func (e *env) refresh(t *testing.T, rt string) (int, map[string]any) {
	t.Helper()
	return e.token(t, basic(testClientID, testSecret), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}})
}

// api sends method path with Authorization auth and returns status and body.
func (e *env) api(t *testing.T, method, path, auth string, body io.Reader, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.ts.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func (e *env) status(t *testing.T, path, auth string) int {
	t.Helper()
	resp, _ := e.api(t, http.MethodGet, path, auth, nil, nil)
	return resp.StatusCode
}

func bearer(tok string) string { return "Bearer " + tok }

func apiKeyAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func wantOAuthError(t *testing.T, status int, body map[string]any, wantStatus int, wantErr string) {
	t.Helper()
	if status != wantStatus || body["error"] != wantErr {
		t.Fatalf("got %d %v, want %d error=%s", status, body, wantStatus, wantErr)
	}
}

func TestRefreshRotation(t *testing.T) {
	e := newEnv(t)
	at1, rt1, exp := e.m.AddOAuthCompany(companyA, "export-jobs:read", "accounts:read")
	if want := e.clock.Now().Add(DefaultAccessTTL); !exp.Equal(want) {
		t.Fatalf("expiresAt = %v, want %v", exp, want)
	}
	if e.status(t, "/v1/anything", bearer(at1)) != 200 {
		t.Fatal("first access token refused")
	}

	status, body := e.refresh(t, rt1)
	if status != 200 {
		t.Fatalf("refresh: %d %v", status, body)
	}
	at2, _ := body["access_token"].(string)
	rt2, _ := body["refresh_token"].(string)
	if at2 == "" || rt2 == "" || at2 == at1 || rt2 == rt1 {
		t.Fatalf("tokens not rotated: %v", body)
	}
	if body["token_type"] != "Bearer" || body["expires_in"] != float64(900) || body["scope"] != "export-jobs:read accounts:read" {
		t.Fatalf("token response = %v", body)
	}

	if got := e.status(t, "/v1/anything", bearer(at1)); got != 401 {
		t.Errorf("old access token after refresh: %d, want 401", got)
	}
	if got := e.status(t, "/v1/anything", bearer(at2)); got != 200 {
		t.Errorf("new access token: %d, want 200", got)
	}
	status, body = e.refresh(t, rt1)
	wantOAuthError(t, status, body, 400, "invalid_grant")
}

func TestRefreshReuseRevokesFamily(t *testing.T) {
	e := newEnv(t)
	_, rt1, _ := e.m.AddOAuthCompany(companyA)
	otherAT, otherRT, _ := e.m.AddOAuthCompany(companyA) // another authorisation, same company

	_, body := e.refresh(t, rt1)
	at2, rt2 := body["access_token"].(string), body["refresh_token"].(string)

	status, body := e.refresh(t, rt1) // reuse
	wantOAuthError(t, status, body, 400, "invalid_grant")
	if st := e.m.Stats(); st.ReuseDetections != 1 || st.InvalidGrants != 1 {
		t.Fatalf("stats after reuse = %+v", st)
	}
	// The whole family is gone: the newest refresh and access tokens too.
	status, body = e.refresh(t, rt2)
	wantOAuthError(t, status, body, 400, "invalid_grant")
	if got := e.status(t, "/v1/x", bearer(at2)); got != 401 {
		t.Errorf("newest access token after reuse: %d, want 401", got)
	}
	// The other authorisation is untouched.
	if got := e.status(t, "/v1/x", bearer(otherAT)); got != 200 {
		t.Errorf("other family's access token: %d, want 200", got)
	}
	if status, body := e.refresh(t, otherRT); status != 200 {
		t.Errorf("other family's refresh: %d %v", status, body)
	}
	// An unknown token is invalid_grant but not reuse.
	status, body = e.refresh(t, "never-issued")
	wantOAuthError(t, status, body, 400, "invalid_grant")
	if st := e.m.Stats(); st.ReuseDetections != 2 || st.InvalidGrants != 3 || st.RefreshCalls != 5 {
		t.Fatalf("final stats = %+v", st)
	}
}

func TestRefreshTokenExpiry(t *testing.T) {
	e := newEnv(t)
	_, rt, _ := e.m.AddOAuthCompany(companyA)
	e.clock.Advance(DefaultRefreshTTL)
	status, body := e.refresh(t, rt)
	wantOAuthError(t, status, body, 400, "invalid_grant")
}

func TestTokenEndpointRequests(t *testing.T) {
	e := newEnv(t)
	_, rt, _ := e.m.AddOAuthCompany(companyA)
	good := basic(testClientID, testSecret)
	tests := []struct {
		name       string
		auth       string
		form       url.Values
		wantStatus int
		wantErr    string
	}{
		{"client_secret_post", "", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {testClientID}, "client_secret": {testSecret}}, 401, "invalid_client"},
		{"basic plus client_id in body", good, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {testClientID}}, 401, "invalid_client"},
		{"basic plus client_secret in body", good, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_secret": {testSecret}}, 401, "invalid_client"},
		{"no client authentication", "", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, 401, "invalid_client"},
		{"wrong secret", basic(testClientID, "nope"), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, 401, "invalid_client"},
		{"unknown client", basic("other", testSecret), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, 401, "invalid_client"},
		{"secret not form-encoded", "Basic " + base64.StdEncoding.EncodeToString([]byte(testClientID+":"+testSecret)), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, 401, "invalid_client"},
		{"missing refresh_token", good, url.Values{"grant_type": {"refresh_token"}}, 400, "invalid_request"},
		{"missing grant_type", good, url.Values{"refresh_token": {rt}}, 400, "invalid_request"},
		{"repeated parameter", good, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt, rt}}, 400, "invalid_request"},
		{"client credentials grant", good, url.Values{"grant_type": {"client_credentials"}}, 400, "unsupported_grant_type"},
		{"password grant", good, url.Values{"grant_type": {"password"}}, 400, "unsupported_grant_type"},
		{"unknown refresh token", good, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x"}}, 400, "invalid_grant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := e.token(t, tt.auth, tt.form)
			wantOAuthError(t, status, body, tt.wantStatus, tt.wantErr)
		})
	}
	// None of the refused requests consumed the refresh token.
	if status, body := e.refresh(t, rt); status != 200 {
		t.Fatalf("refresh after refused requests: %d %v", status, body)
	}

	t.Run("GET refused", func(t *testing.T) {
		resp, _ := e.api(t, http.MethodGet, "/oauth/token", good, nil, nil)
		if resp.StatusCode != 405 {
			t.Fatalf("GET /oauth/token: %d", resp.StatusCode)
		}
	})
	t.Run("JSON body refused", func(t *testing.T) {
		resp, b := e.api(t, http.MethodPost, "/oauth/token", good,
			strings.NewReader(`{"grant_type":"refresh_token"}`), http.Header{"Content-Type": {"application/json"}})
		if resp.StatusCode != 400 || !strings.Contains(string(b), "invalid_request") {
			t.Fatalf("JSON body: %d %s", resp.StatusCode, b)
		}
	})
	t.Run("invalid_client carries WWW-Authenticate", func(t *testing.T) {
		resp, _ := e.api(t, http.MethodPost, "/oauth/token", basic(testClientID, "bad"),
			strings.NewReader("grant_type=refresh_token&refresh_token=x"),
			http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
			t.Fatalf("%d %v", resp.StatusCode, resp.Header)
		}
	})
}

// authorize runs /oauth/authorize with params and returns the redirect's query.
func (e *env) authorize(t *testing.T, params url.Values) (int, url.Values, string) {
	t.Helper()
	resp, body := e.api(t, http.MethodGet, "/oauth/authorize?"+params.Encode(), "", nil, nil)
	if resp.StatusCode != http.StatusFound {
		return resp.StatusCode, nil, string(body)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, loc.Query(), loc.Scheme + "://" + loc.Host + loc.Path
}

func authParams(verifier string) url.Values {
	return url.Values{
		"response_type":         {"code"},
		"client_id":             {testClientID},
		"redirect_uri":          {redirectURI},
		"scope":                 {"export-jobs:read export-items:read"},
		"state":                 {"st-1"},
		"code_challenge":        {s256(verifier)},
		"code_challenge_method": {"S256"},
	}
}

func (e *env) code(t *testing.T, params url.Values) string {
	t.Helper()
	status, q, _ := e.authorize(t, params)
	if status != http.StatusFound || q.Get("code") == "" || q.Get("state") != params.Get("state") {
		t.Fatalf("authorize: %d %v", status, q)
	}
	return q.Get("code")
}

func (e *env) exchange(t *testing.T, code, redirect, verifier string) (int, map[string]any) {
	t.Helper()
	return e.token(t, basic(testClientID, testSecret), url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect}, "code_verifier": {verifier},
	})
}

func TestAuthorizationCodePKCE(t *testing.T) {
	e := newEnv(t)

	t.Run("good verifier", func(t *testing.T) {
		p := authParams(goodVerifier)
		p.Set("mock_company_id", companyB)
		status, body := e.exchange(t, e.code(t, p), redirectURI, goodVerifier)
		if status != 200 || body["token_type"] != "Bearer" || body["refresh_token"] == "" || body["scope"] != "export-jobs:read export-items:read" {
			t.Fatalf("exchange: %d %v", status, body)
		}
		resp, b := e.api(t, http.MethodGet, "/v1/installations/me", bearer(body["access_token"].(string)), nil, nil)
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"resource":"urn:pleo:company:`+companyB+`"`) {
			t.Fatalf("installations/me: %d %s", resp.StatusCode, b)
		}
		// The new family rotates like any other.
		if status, body := e.refresh(t, body["refresh_token"].(string)); status != 200 {
			t.Fatalf("refresh of exchanged token: %d %v", status, body)
		}
	})

	t.Run("new company when none chosen", func(t *testing.T) {
		status, body := e.exchange(t, e.code(t, authParams(goodVerifier)), redirectURI, goodVerifier)
		if status != 200 {
			t.Fatalf("exchange: %d %v", status, body)
		}
		resp, b := e.api(t, http.MethodGet, "/v1/introspect", bearer(body["access_token"].(string)), nil, nil)
		var got map[string]string
		_ = json.Unmarshal(b, &got)
		urn := got["subjectURN"]
		if resp.StatusCode != 200 || !strings.HasPrefix(urn, CompanyURNPrefix) || !isUUID(strings.TrimPrefix(urn, CompanyURNPrefix)) {
			t.Fatalf("introspect: %d %s", resp.StatusCode, b)
		}
	})

	exchangeFailures := []struct {
		name     string
		mutate   func(code string) (c, redirect, verifier string)
		wantErr  string
		advance  time.Duration
		useTwice bool
	}{
		{name: "wrong verifier", mutate: func(c string) (string, string, string) {
			return c, redirectURI, strings.Repeat("a", 43)
		}, wantErr: "invalid_grant"},
		{name: "verifier too short", mutate: func(c string) (string, string, string) {
			return c, redirectURI, goodVerifier[:42]
		}, wantErr: "invalid_grant"},
		{name: "missing verifier", mutate: func(c string) (string, string, string) {
			return c, redirectURI, ""
		}, wantErr: "invalid_request"},
		{name: "redirect_uri mismatch", mutate: func(c string) (string, string, string) {
			return c, redirectURI + "/", goodVerifier
		}, wantErr: "invalid_grant"},
		{name: "unknown code", mutate: func(string) (string, string, string) {
			return "bogus", redirectURI, goodVerifier
		}, wantErr: "invalid_grant"},
		{name: "expired code", mutate: func(c string) (string, string, string) {
			return c, redirectURI, goodVerifier
		}, advance: CodeTTL, wantErr: "invalid_grant"},
		{name: "code reuse", mutate: func(c string) (string, string, string) {
			return c, redirectURI, goodVerifier
		}, useTwice: true, wantErr: "invalid_grant"},
	}
	for _, tt := range exchangeFailures {
		t.Run(tt.name, func(t *testing.T) {
			code := e.code(t, authParams(goodVerifier))
			e.clock.Advance(tt.advance)
			c, redirect, verifier := tt.mutate(code)
			var firstAT string
			if tt.useTwice {
				status, body := e.exchange(t, c, redirect, verifier)
				if status != 200 {
					t.Fatalf("first exchange: %d %v", status, body)
				}
				firstAT = body["access_token"].(string)
			}
			status, body := e.exchange(t, c, redirect, verifier)
			wantOAuthError(t, status, body, 400, tt.wantErr)
			if tt.useTwice {
				if got := e.status(t, "/v1/x", bearer(firstAT)); got != 401 {
					t.Errorf("token from a reused code still works: %d", got)
				}
			}
		})
	}

	t.Run("failed exchange consumes the code", func(t *testing.T) {
		code := e.code(t, authParams(goodVerifier))
		status, body := e.exchange(t, code, redirectURI, strings.Repeat("b", 43))
		wantOAuthError(t, status, body, 400, "invalid_grant")
		status, body = e.exchange(t, code, redirectURI, goodVerifier)
		wantOAuthError(t, status, body, 400, "invalid_grant")
	})
}

func TestAuthorizeValidation(t *testing.T) {
	e := newEnv(t)
	redirected := []struct {
		name    string
		mutate  func(url.Values)
		wantErr string
	}{
		{"plain method refused", func(p url.Values) { p.Set("code_challenge_method", "plain"); p.Set("code_challenge", goodVerifier) }, "invalid_request"},
		{"method missing", func(p url.Values) { p.Del("code_challenge_method") }, "invalid_request"},
		{"challenge missing", func(p url.Values) { p.Del("code_challenge") }, "invalid_request"},
		{"challenge malformed", func(p url.Values) { p.Set("code_challenge", "short") }, "invalid_request"},
		{"response_type token", func(p url.Values) { p.Set("response_type", "token") }, "unsupported_response_type"},
		{"state missing", func(p url.Values) { p.Del("state") }, "invalid_request"},
		{"bad scope", func(p url.Values) { p.Set("scope", "everything") }, "invalid_scope"},
		{"mock_deny", func(p url.Values) { p.Set("mock_deny", "1") }, "access_denied"},
	}
	for _, tt := range redirected {
		t.Run(tt.name, func(t *testing.T) {
			p := authParams(goodVerifier)
			tt.mutate(p)
			status, q, target := e.authorize(t, p)
			if status != http.StatusFound || target != redirectURI || q.Get("error") != tt.wantErr || q.Has("code") {
				t.Fatalf("got %d %s %v, want redirect with error=%s", status, target, q, tt.wantErr)
			}
			if p.Get("state") != "" && q.Get("state") != p.Get("state") {
				t.Fatalf("state not returned: %v", q)
			}
		})
	}
	refused := []struct {
		name   string
		mutate func(url.Values)
	}{
		{"unknown client", func(p url.Values) { p.Set("client_id", "other") }},
		{"missing client", func(p url.Values) { p.Del("client_id") }},
		{"missing redirect_uri", func(p url.Values) { p.Del("redirect_uri") }},
		{"http redirect off localhost", func(p url.Values) { p.Set("redirect_uri", "http://example.com/callback") }},
		{"relative redirect", func(p url.Values) { p.Set("redirect_uri", "/callback") }},
		{"redirect with fragment", func(p url.Values) { p.Set("redirect_uri", "https://example.com/cb#x") }},
		{"mock_company_id not a UUID", func(p url.Values) { p.Set("mock_company_id", "acme") }},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			p := authParams(goodVerifier)
			tt.mutate(p)
			if status, _, _ := e.authorize(t, p); status != 400 {
				t.Fatalf("got %d, want 400", status)
			}
		})
	}
	t.Run("https redirect keeps its query", func(t *testing.T) {
		p := authParams(goodVerifier)
		p.Set("redirect_uri", "https://erp.example.com/pleo/callback?x=1")
		status, q, _ := e.authorize(t, p)
		if status != 302 || q.Get("x") != "1" || q.Get("code") == "" {
			t.Fatalf("%d %v", status, q)
		}
	})
}

func TestEchoCredentials(t *testing.T) {
	e := newEnv(t)
	at, _, _ := e.m.AddOAuthCompany(companyA)
	e.m.AddAPIKey(companyB, "key-b", time.Time{})
	e.m.AddAPIKey(companyB, "key-soon", e.clock.Now().Add(time.Hour))

	tests := []struct {
		name       string
		auth       string
		wantStatus int
		wantType   string
		wantComp   string
		wantChall  string
	}{
		{"bearer", bearer(at), 200, CredentialOAuth2, companyA, ""},
		{"bearer lower-case scheme", "bearer " + at, 200, CredentialOAuth2, companyA, ""},
		{"api key with empty password", apiKeyAuth("key-b", ""), 200, CredentialAPIKey, companyB, ""},
		{"api key with expiry ahead", apiKeyAuth("key-soon", ""), 200, CredentialAPIKey, companyB, ""},
		{"api key with a password", apiKeyAuth("key-b", "x"), 401, "", "", `Basic realm="pleo"`},
		{"api key without colon", "Basic " + base64.StdEncoding.EncodeToString([]byte("key-b")), 401, "", "", `Basic realm="pleo"`},
		{"unknown api key", apiKeyAuth("key-z", ""), 401, "", "", `Basic realm="pleo"`},
		{"unknown bearer", bearer("nope"), 401, "", "", `Bearer error="invalid_token"`},
		{"empty bearer", "Bearer ", 401, "", "", `Bearer error="invalid_token"`},
		{"api key as bearer", bearer("key-b"), 401, "", "", `Bearer error="invalid_token"`},
		{"missing", "", 401, "", "", `Bearer realm="pleo"`},
		{"other scheme", "Token " + at, 401, "", "", `Bearer realm="pleo"`},
	}
	payload := "hello, pleo"
	sum := sha256.Sum256([]byte(payload))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := http.Header{"X-Custom": {"v1"}, "Cookie": {"c=1"}, "Content-Type": {"text/plain"}}
			resp, b := e.api(t, http.MethodPut, "/v1/export-jobs/42?company_id="+tt.wantComp+"&x=%2F", tt.auth, strings.NewReader(payload), hdr)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, b)
			}
			if tt.wantStatus != 200 {
				var p map[string]any
				if err := json.Unmarshal(b, &p); err != nil || p["title"] != "Unauthorized" || p["type"] == "" {
					t.Fatalf("401 body %s (%v)", b, err)
				}
				if got := resp.Header.Get("WWW-Authenticate"); got != tt.wantChall {
					t.Fatalf("WWW-Authenticate = %q, want %q", got, tt.wantChall)
				}
				return
			}
			var got Echo
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if got.Method != "PUT" || got.Path != "/v1/export-jobs/42" || got.RawQuery != "company_id="+tt.wantComp+"&x=%2F" ||
				got.CompanyID != tt.wantComp || got.CredentialType != tt.wantType {
				t.Fatalf("echo = %+v", got)
			}
			if got.Headers.Get("X-Custom") != "v1" || got.Headers.Get("Authorization") != "" || got.Headers.Get("Cookie") != "" {
				t.Fatalf("echo headers = %v", got.Headers)
			}
			if got.BodyLength != int64(len(payload)) || got.BodySHA256 != hex.EncodeToString(sum[:]) {
				t.Fatalf("echo body = %d %s", got.BodyLength, got.BodySHA256)
			}
		})
	}
	if st := e.m.Stats(); st.APICalls != int64(len(tests)) || st.Unauthorized != 8 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestExpiry(t *testing.T) {
	e := newEnv(t)
	at, rt, _ := e.m.AddOAuthCompany(companyA)
	e.m.AddAPIKey(companyB, "key-b", e.clock.Now().Add(time.Hour))

	e.clock.Advance(DefaultAccessTTL - time.Second)
	if got := e.status(t, "/v1/x", bearer(at)); got != 200 {
		t.Fatalf("access token just before expiry: %d", got)
	}
	e.clock.Advance(time.Second)
	resp, b := e.api(t, http.MethodGet, "/v1/x", bearer(at), nil, nil)
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` || !strings.Contains(string(b), "expired") {
		t.Fatalf("expired access token: %d %v %s", resp.StatusCode, resp.Header, b)
	}
	status, body := e.refresh(t, rt)
	if status != 200 || e.status(t, "/v1/x", bearer(body["access_token"].(string))) != 200 {
		t.Fatalf("refresh after expiry: %d %v", status, body)
	}

	e.clock.Advance(time.Hour)
	if got := e.status(t, "/v1/x", apiKeyAuth("key-b", "")); got != 401 {
		t.Fatalf("expired API key: %d, want 401", got)
	}
}

func TestCompanyMismatch(t *testing.T) {
	e := newEnv(t)
	at, _, _ := e.m.AddOAuthCompany(companyA)
	e.m.AddAPIKey(companyB, "key-b", time.Time{})
	tests := []struct {
		name, auth, query string
		want              int
	}{
		{"oauth, own company", bearer(at), "company_id=" + companyA, 200},
		{"oauth, own company upper-case", bearer(at), "company_id=" + strings.ToUpper(companyA), 200},
		{"oauth, no company", bearer(at), "", 200},
		{"oauth, other company", bearer(at), "company_id=" + companyB, 403},
		{"oauth, own then other", bearer(at), "company_id=" + companyA + "&company_id=" + companyB, 403},
		{"api key, other company", apiKeyAuth("key-b", ""), "company_id=" + companyA, 403},
		{"api key, own company", apiKeyAuth("key-b", ""), "company_id=" + companyB, 200},
		{"bad credential wins over company", bearer("x"), "company_id=" + companyB, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := e.status(t, "/v1/accounts?"+tt.query, tt.auth); got != tt.want {
				t.Fatalf("got %d, want %d", got, tt.want)
			}
		})
	}
}

func TestRevokeAccessTokens(t *testing.T) {
	e := newEnv(t)
	at, rt, _ := e.m.AddOAuthCompany(companyA)
	atB, _, _ := e.m.AddOAuthCompany(companyB)
	e.m.RevokeAccessTokens(companyA)
	if got := e.status(t, "/v1/x", bearer(at)); got != 401 {
		t.Fatalf("revoked access token: %d", got)
	}
	if got := e.status(t, "/v1/x", bearer(atB)); got != 200 {
		t.Fatalf("other company's token: %d", got)
	}
	status, body := e.refresh(t, rt)
	if status != 200 || e.status(t, "/v1/x", bearer(body["access_token"].(string))) != 200 {
		t.Fatalf("refresh after revocation: %d %v", status, body)
	}
}

func TestDeleteInstallation(t *testing.T) {
	e := newEnv(t)
	at, rt, _ := e.m.AddOAuthCompany(companyA)
	resp, _ := e.api(t, http.MethodDelete, "/v1/installations/me", bearer(at), nil, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("DELETE installations/me: %d", resp.StatusCode)
	}
	if got := e.status(t, "/v1/x", bearer(at)); got != 401 {
		t.Fatalf("access token after delete: %d", got)
	}
	status, body := e.refresh(t, rt)
	wantOAuthError(t, status, body, 400, "invalid_grant")
}

func TestTokenEndpointFailure(t *testing.T) {
	e := newEnv(t)
	_, rt, _ := e.m.AddOAuthCompany(companyA)
	for _, st := range []int{503, 500, 502} {
		e.m.SetTokenEndpointFailure(st)
		status, body := e.refresh(t, rt)
		wantOAuthError(t, status, body, st, "temporarily_unavailable")
	}
	e.m.SetTokenEndpointFailure(0)
	if status, body := e.refresh(t, rt); status != 200 {
		t.Fatalf("after failure removed: %d %v", status, body)
	}
	if st := e.m.Stats(); st.TokenCalls != 4 || st.RefreshCalls != 4 || st.InvalidGrants != 0 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestTokenDelay(t *testing.T) {
	e := newEnv(t)
	_, rt, _ := e.m.AddOAuthCompany(companyA)
	e.m.SetTokenDelay(200 * time.Millisecond)

	start := time.Now()
	if status, _ := e.refresh(t, rt); status != 200 {
		t.Fatalf("delayed refresh: %d", status)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("refresh took %v, want >= 200ms", d)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.ts.URL+"/oauth/token", strings.NewReader("grant_type=refresh_token&refresh_token=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("client timeout during delay: %v", err)
	}
	e.m.SetTokenDelay(0)
}

func TestIntrospection(t *testing.T) {
	e := newEnv(t)
	at, rt, _ := e.m.AddOAuthCompany(companyA, "users:read")
	good := basic(testClientID, testSecret)

	status, body := e.post(t, "/oauth/token/introspect", good, url.Values{"token": {at}})
	if status != 200 || body["active"] != true || body["company_id"] != companyA || body["sub"] != CompanyURNPrefix+companyA ||
		body["token_type"] != "access_token" || body["scope"] != "users:read" || body["client_id"] != testClientID {
		t.Fatalf("introspect access token: %d %v", status, body)
	}
	status, body = e.post(t, "/oauth/token/introspect", good, url.Values{"token": {rt}})
	if status != 200 || body["active"] != true || body["token_type"] != "refresh_token" {
		t.Fatalf("introspect refresh token: %d %v", status, body)
	}
	e.refresh(t, rt)
	for _, tok := range []string{at, rt, "unknown"} {
		status, body = e.post(t, "/oauth/token/introspect", good, url.Values{"token": {tok}})
		if status != 200 || body["active"] != false || len(body) != 1 {
			t.Fatalf("introspect stale token: %d %v", status, body)
		}
	}
	status, body = e.post(t, "/oauth/token/introspect", "", url.Values{"token": {at}})
	wantOAuthError(t, status, body, 401, "invalid_client")
	status, body = e.post(t, "/oauth/token/introspect", basic(testClientID, "x"), url.Values{"token": {at}})
	wantOAuthError(t, status, body, 401, "invalid_client")
	if st := e.m.Stats(); st.TokenCalls != 1 {
		t.Fatalf("introspection counted as token calls: %+v", st)
	}
}

func TestInstallationsMe(t *testing.T) {
	e := newEnv(t)
	at, _, _ := e.m.AddOAuthCompany(companyA)
	e.m.AddAPIKey(companyB, "key-b", time.Time{})
	tests := []struct {
		name, path, auth, field, want string
	}{
		{"oauth installations/me", "/v1/installations/me", bearer(at), "resource", CompanyURNPrefix + companyA},
		{"api key installations/me", "/v1/installations/me", apiKeyAuth("key-b", ""), "resource", CompanyURNPrefix + companyB},
		{"oauth introspect", "/v1/introspect", bearer(at), "subjectURN", CompanyURNPrefix + companyA},
		{"api key introspect", "/v1/introspect", apiKeyAuth("key-b", ""), "subjectURN", CompanyURNPrefix + companyB},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := e.api(t, http.MethodGet, tt.path, tt.auth, nil, nil)
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil || resp.StatusCode != 200 || got[tt.field] != tt.want {
				t.Fatalf("%d %s (%v)", resp.StatusCode, b, err)
			}
		})
	}
	if got := e.status(t, "/v1/installations/me", ""); got != 401 {
		t.Fatalf("installations/me without credential: %d", got)
	}
}

func TestSpecialPaths(t *testing.T) {
	e := newEnv(t)
	at, _, _ := e.m.AddOAuthCompany(companyA)

	resp, _ := e.api(t, http.MethodGet, "/v1/mock/redirect", bearer(at), nil, nil)
	if resp.StatusCode != 302 || resp.Header.Get("Location") != "/v1/mock/elsewhere" {
		t.Fatalf("redirect: %d %v", resp.StatusCode, resp.Header)
	}
	if got := e.status(t, "/v1/mock/redirect", ""); got != 401 {
		t.Fatalf("redirect without credential: %d", got)
	}
	for _, code := range []int{200, 204, 404, 418, 429, 500, 503} {
		resp, _ := e.api(t, http.MethodGet, "/v1/mock/status/"+strconv.Itoa(code), bearer(at), nil, nil)
		if resp.StatusCode != code {
			t.Fatalf("status/%d answered %d", code, resp.StatusCode)
		}
	}
	before := e.m.Stats().Unauthorized
	if got := e.status(t, "/v1/mock/status/401", bearer(at)); got != 401 || e.m.Stats().Unauthorized != before+1 {
		t.Fatalf("status/401: %d %+v", got, e.m.Stats())
	}
	if got := e.status(t, "/v1/mock/status/418", ""); got != 401 {
		t.Fatalf("status path without credential: %d", got)
	}
	if got := e.status(t, "/v1/mock/status/99", bearer(at)); got != 400 {
		t.Fatalf("status/99: %d", got)
	}
	if got := e.status(t, "/oauth/revoke", ""); got != 404 {
		t.Fatalf("/oauth/revoke: %d", got)
	}
}

func TestStreamFlushesChunks(t *testing.T) {
	e := newEnv(t)
	at, _, _ := e.m.AddOAuthCompany(companyA)

	t.Run("complete", func(t *testing.T) {
		resp, b := e.api(t, http.MethodGet, "/v1/mock/stream?chunks=4&interval=5ms", bearer(at), nil, nil)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if resp.StatusCode != 200 || len(lines) != 4 || !strings.Contains(lines[3], `"chunk":4`) {
			t.Fatalf("%d %q", resp.StatusCode, lines)
		}
	})

	t.Run("each chunk flushed", func(t *testing.T) {
		// With an hour between chunks, the first can only arrive if it was
		// flushed on its own.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.ts.URL+"/v1/mock/stream?chunks=2&interval=1h", nil)
		req.Header.Set("Authorization", bearer(at))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil {
			t.Fatalf("first chunk: %v", err)
		}
		var c streamChunk
		if err := json.Unmarshal([]byte(line), &c); err != nil || c.Chunk != 1 || c.Of != 2 || c.CompanyID != companyA {
			t.Fatalf("first chunk %q (%v)", line, err)
		}
		cancel() // the handler stops waiting when the client goes away
	})

	if got := e.status(t, "/v1/mock/stream?interval=fast", bearer(at)); got != 400 {
		t.Fatalf("bad interval: %d", got)
	}
}

func TestConcurrentRefreshIsReuse(t *testing.T) {
	e := newEnv(t)
	_, rt, _ := e.m.AddOAuthCompany(companyA)
	const n = 16
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, _ := e.refresh(t, rt)
			statuses <- status
		}()
	}
	wg.Wait()
	close(statuses)
	ok := 0
	for s := range statuses {
		if s == 200 {
			ok++
		}
	}
	// At most one wins the race; the others are reuse, which revokes the
	// family (so Pleo asks for one refresh in flight per authorisation).
	if st := e.m.Stats(); ok > 1 || st.ReuseDetections < n-1 || st.RefreshCalls != n {
		t.Fatalf("%d successes, stats %+v", ok, st)
	}
}

func TestOAuth2Library(t *testing.T) {
	e := newEnv(t)
	_, rt, _ := e.m.AddOAuthCompany(companyA, "export-jobs:read")
	cfg := &oauth2.Config{
		ClientID:     testClientID,
		ClientSecret: testSecret,
		Endpoint: oauth2.Endpoint{
			AuthURL:   e.ts.URL + "/oauth/authorize",
			TokenURL:  e.ts.URL + "/oauth/token",
			AuthStyle: oauth2.AuthStyleInHeader,
		},
		RedirectURL: redirectURI,
		Scopes:      []string{"export-jobs:read"},
	}
	ctx := context.Background()

	t.Run("refresh", func(t *testing.T) {
		tok, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt, Expiry: e.clock.Now().Add(-time.Minute)}).Token()
		if err != nil {
			t.Fatal(err)
		}
		if tok.AccessToken == "" || tok.RefreshToken == "" || tok.RefreshToken == rt || tok.TokenType != "Bearer" {
			t.Fatalf("token = %+v", tok)
		}
		if got := e.status(t, "/v1/x", bearer(tok.AccessToken)); got != 200 {
			t.Fatalf("refreshed access token: %d", got)
		}
		// The old refresh token is reuse: x/oauth2 surfaces invalid_grant.
		_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
		var re *oauth2.RetrieveError
		if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" || re.Response.StatusCode != 400 {
			t.Fatalf("reused refresh token: %v", err)
		}
	})

	t.Run("authorization code with PKCE", func(t *testing.T) {
		verifier := oauth2.GenerateVerifier()
		authURL := cfg.AuthCodeURL("state-9", oauth2.S256ChallengeOption(verifier),
			oauth2.SetAuthURLParam("mock_company_id", companyB))
		resp, err := e.hc.Get(authURL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || resp.StatusCode != 302 || loc.Query().Get("state") != "state-9" {
			t.Fatalf("authorize: %d %v", resp.StatusCode, resp.Header)
		}
		tok, err := cfg.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption(verifier))
		if err != nil {
			t.Fatal(err)
		}
		_, b := e.api(t, http.MethodGet, "/v1/installations/me", bearer(tok.AccessToken), nil, nil)
		if !strings.Contains(string(b), CompanyURNPrefix+companyB) {
			t.Fatalf("installations/me: %s", b)
		}
	})
}

func TestDefaults(t *testing.T) {
	m := New(Options{})
	ts := httptest.NewServer(m.Handler())
	defer ts.Close()
	_, rt, exp := m.AddOAuthCompany(companyA)
	if d := time.Until(exp); d < DefaultAccessTTL-time.Minute || d > DefaultAccessTTL {
		t.Fatalf("default expiry in %v", d)
	}
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
	req, _ := http.NewRequest(http.MethodPost, ts.URL+"/oauth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(DefaultClientID, DefaultClientSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("refresh with default client: %d", resp.StatusCode)
	}
}

// The consent company and registered redirect URIs, which `serve --dev` uses so a browser
// following redirects (which cannot add mock_company_id) connects a known company.
func TestConsentCompanyAndRegisteredRedirects(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	m := New(Options{ClientID: testClientID, ClientSecret: testSecret, Now: c.Now, ConsentCompanyID: strings.ToUpper(companyA)})
	ts := httptest.NewServer(m.Handler())
	t.Cleanup(ts.Close)
	e := &env{m: m, ts: ts, clock: c, hc: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	companyOf := func(p url.Values) string {
		t.Helper()
		status, body := e.exchange(t, e.code(t, p), redirectURI, goodVerifier)
		if status != 200 {
			t.Fatalf("exchange: %d %v", status, body)
		}
		_, b := e.api(t, http.MethodGet, "/v1/installations/me", bearer(body["access_token"].(string)), nil, nil)
		var doc map[string]any
		_ = json.Unmarshal(b, &doc)
		return strings.TrimPrefix(doc["resource"].(string), CompanyURNPrefix)
	}
	if got := companyOf(authParams(goodVerifier)); got != companyA {
		t.Fatalf("consented company %s, want %s", got, companyA)
	}
	p := authParams(goodVerifier)
	p.Set("mock_company_id", companyB)
	if got := companyOf(p); got != companyB {
		t.Fatalf("mock_company_id: got %s, want %s", got, companyB)
	}

	// Registered redirect URIs match exactly.
	m.SetRedirectURIs(redirectURI)
	for _, other := range []string{redirectURI + "/", "http://127.0.0.1:8082/callback", "http://localhost:7382/callback"} {
		p := authParams(goodVerifier)
		p.Set("redirect_uri", other)
		if status, _, _ := e.authorize(t, p); status != http.StatusBadRequest {
			t.Fatalf("%s: %d, want 400", other, status)
		}
	}
	if got := companyOf(authParams(goodVerifier)); got != companyA {
		t.Fatalf("registered redirect: %s", got)
	}
}
