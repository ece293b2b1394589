package oauthtest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	xoauth2 "golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
)

// tokenResp is the token endpoint's JSON, success or error.
type tokenResp struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	Scope        string `json:"scope"`
	Error        string `json:"error"`
}

// testClient is the tests' own HTTP client (bounded, and never the process-wide default).
var testClient = &http.Client{Timeout: 10 * time.Second}

func postForm(t *testing.T, s *oauthtest.Server, endpoint string, form url.Values, basic bool) (int, tokenResp) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		t.Error(err)
		return 0, tokenResp{}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basic {
		req.SetBasicAuth(url.QueryEscape(s.ClientID()), url.QueryEscape(s.ClientSecret()))
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Error(err) // may run off the test goroutine: no Fatal
		return 0, tokenResp{}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var tr tokenResp
	if err := json.Unmarshal(body, &tr); err != nil {
		t.Errorf("token endpoint: status %d, body %q: %v", resp.StatusCode, body, err)
	}
	return resp.StatusCode, tr
}

func refresh(t *testing.T, s *oauthtest.Server, rt string) (int, tokenResp) {
	t.Helper()
	return postForm(t, s, s.TokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, true)
}

func mustRefresh(t *testing.T, s *oauthtest.Server, rt string) tokenResp {
	t.Helper()
	status, tr := refresh(t, s, rt)
	if status != http.StatusOK || tr.AccessToken == "" || tr.RefreshToken == "" {
		t.Fatalf("refresh: status %d, %+v", status, tr)
	}
	return tr
}

func expectInvalidGrant(t *testing.T, status int, tr tokenResp) {
	t.Helper()
	if status != http.StatusBadRequest || tr.Error != "invalid_grant" {
		t.Fatalf("want 400 invalid_grant, got %d %+v", status, tr)
	}
}

// api calls the resource server and returns the status, the decoded JSON
// body and the response headers.
func api(t testing.TB, client *http.Client, s *oauthtest.Server, token, method, pathQuery string, body []byte) (int, map[string]any, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL()+pathQuery, bytes.NewReader(body))
	if err != nil {
		t.Error(err)
		return 0, nil, nil
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Error(err) // may run off the test goroutine: no Fatal
		return 0, nil, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Errorf("api: status %d, body %q: %v", resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode, m, resp.Header
}

func echoStatus(t *testing.T, s *oauthtest.Server, token string) int {
	t.Helper()
	status, _, _ := api(t, testClient, s, token, http.MethodGet, "/v1/export-jobs", nil)
	return status
}

func grant(t *testing.T, s *oauthtest.Server, company string) *xoauth2.Token {
	t.Helper()
	tok, err := s.Grant(context.Background(), company)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	return tok
}

// authorize runs the authorize step by hand and returns the redirect's query.
func authorize(t *testing.T, s *oauthtest.Server, params url.Values) url.Values {
	t.Helper()
	q := url.Values{
		"response_type": {"code"},
		"client_id":     {s.ClientID()},
		"redirect_uri":  {"http://localhost/callback"},
		"scope":         {"export-jobs:read"},
		"state":         {"state-1234567890"},
	}
	for k, v := range params {
		q[k] = v
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(s.AuthorizeURL() + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusSeeOther && resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: status %d: %s", resp.StatusCode, body)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return loc.Query()
}

func TestGrant(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	company := uuid.NewString()
	tok := grant(t, s, company)
	if tok.AccessToken == "" || tok.RefreshToken == "" || !strings.EqualFold(tok.TokenType, "bearer") {
		t.Fatalf("token: %+v", tok)
	}
	if ttl := time.Until(tok.Expiry); ttl < 14*time.Minute || ttl > 16*time.Minute {
		t.Fatalf("access token lifetime %v, want ~15m", ttl)
	}
	if got := tok.Extra("scope"); got != strings.Join(oauthtest.DefaultScopes, " ") {
		t.Fatalf("granted scope %q", got)
	}

	status, body, _ := api(t, testClient, s, tok.AccessToken, http.MethodGet, "/v1/installations/me", nil)
	if status != http.StatusOK || body["resource"] != "urn:pleo:company:"+company {
		t.Fatalf("installations/me: %d %v", status, body)
	}
	status, body, _ = api(t, testClient, s, tok.AccessToken, http.MethodGet, "/v1/introspect", nil)
	if status != http.StatusOK || body["subjectURN"] != "urn:pleo:company:"+company {
		t.Fatalf("introspect: %d %v", status, body)
	}

	// Without a company the server picks a random one.
	tok2 := grant(t, s, "")
	_, body, _ = api(t, testClient, s, tok2.AccessToken, http.MethodGet, "/v1/installations/me", nil)
	res, _ := body["resource"].(string)
	if _, err := uuid.Parse(strings.TrimPrefix(res, "urn:pleo:company:")); err != nil || res == "urn:pleo:company:"+company {
		t.Fatalf("random company: %q", res)
	}

	// A company that is not a UUID is refused.
	if _, err := s.Grant(context.Background(), "acme"); err == nil {
		t.Fatal("Grant with a non-UUID company succeeded")
	}

	st := s.Stats()
	if st.CodeExchanges != 2 || st.TokenCalls != 2 || st.RefreshCalls != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestRefreshRotationAndReuseDetection(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	tok := grant(t, s, uuid.NewString())

	r1 := mustRefresh(t, s, tok.RefreshToken)
	if r1.RefreshToken == tok.RefreshToken || r1.AccessToken == tok.AccessToken {
		t.Fatal("refresh did not rotate both tokens")
	}
	if r1.ExpiresIn < 890 || r1.ExpiresIn > 901 {
		t.Fatalf("expires_in %d", r1.ExpiresIn)
	}
	// The old access token died with the rotation; the new one works.
	if got := echoStatus(t, s, tok.AccessToken); got != http.StatusUnauthorized {
		t.Fatalf("old access token after refresh: %d", got)
	}
	if got := echoStatus(t, s, r1.AccessToken); got != http.StatusOK {
		t.Fatalf("new access token: %d", got)
	}
	r2 := mustRefresh(t, s, r1.RefreshToken)

	// Reuse of an already-rotated refresh token.
	status, tr := refresh(t, s, tok.RefreshToken)
	expectInvalidGrant(t, status, tr)
	if st := s.Stats(); st.ReuseDetections != 1 || st.InvalidGrants != 1 {
		t.Fatalf("stats after reuse: %+v", st)
	}
	// Reuse detection revoked the whole family: the newest tokens too.
	if got := echoStatus(t, s, r2.AccessToken); got != http.StatusUnauthorized {
		t.Fatalf("newest access token after reuse: %d", got)
	}
	status, tr = refresh(t, s, r2.RefreshToken)
	expectInvalidGrant(t, status, tr)
	// Presenting the same used token again is detected again.
	status, tr = refresh(t, s, r1.RefreshToken)
	expectInvalidGrant(t, status, tr)

	st := s.Stats()
	if st.ReuseDetections != 2 || st.InvalidGrants != 3 || st.RefreshCalls != 5 {
		t.Fatalf("stats: %+v", st)
	}

	// Another family is unaffected.
	other := grant(t, s, uuid.NewString())
	mustRefresh(t, s, other.RefreshToken)

	// An unknown refresh token is invalid_grant but no reuse.
	status, tr = refresh(t, s, "ory_rt_bogus.bogus")
	expectInvalidGrant(t, status, tr)
	if got := s.Stats().ReuseDetections; got != 2 {
		t.Fatalf("ReuseDetections %d", got)
	}
}

func TestConcurrentRefreshOfOneTokenIsReuse(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	tok := grant(t, s, uuid.NewString())

	var wg sync.WaitGroup
	results := make([]tokenResp, 2)
	statuses := make([]int, 2)
	for i := range 2 {
		wg.Go(func() { statuses[i], results[i] = refresh(t, s, tok.RefreshToken) })
	}
	wg.Wait()

	ok := 0
	var winner tokenResp
	for i := range 2 {
		switch {
		case statuses[i] == http.StatusOK:
			ok++
			winner = results[i]
		default:
			expectInvalidGrant(t, statuses[i], results[i])
		}
	}
	if ok != 1 {
		t.Fatalf("%d of 2 concurrent refreshes of one token succeeded: %v %+v", ok, statuses, results)
	}
	if st := s.Stats(); st.ReuseDetections != 1 {
		t.Fatalf("stats: %+v", st)
	}
	// The loser's reuse revoked the winner's tokens as well.
	status, tr := refresh(t, s, winner.RefreshToken)
	expectInvalidGrant(t, status, tr)
}

func TestCodeReuseRevokesTokens(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	verifier := xoauth2.GenerateVerifier()
	q := authorize(t, s, url.Values{
		"code_challenge":        {xoauth2.S256ChallengeFromVerifier(verifier)},
		"code_challenge_method": {"S256"},
	})
	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {q.Get("code")},
		"redirect_uri":  {"http://localhost/callback"},
		"code_verifier": {verifier},
	}
	status, tr := postForm(t, s, s.TokenURL(), form, true)
	if status != http.StatusOK || tr.RefreshToken == "" || tr.Scope != "export-jobs:read" {
		t.Fatalf("exchange: %d %+v", status, tr)
	}
	status, tr2 := postForm(t, s, s.TokenURL(), form, true)
	expectInvalidGrant(t, status, tr2)
	if got := echoStatus(t, s, tr.AccessToken); got != http.StatusUnauthorized {
		t.Fatalf("access token after code reuse: %d", got)
	}
	status, tr2 = refresh(t, s, tr.RefreshToken)
	expectInvalidGrant(t, status, tr2)
}

func TestClientAuthentication(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{ClientID: "my:client", ClientSecret: "s3cr&t"})
	tok := grant(t, s, uuid.NewString())

	// client_secret_post is refused, even with the right secret.
	status, tr := postForm(t, s, s.TokenURL(), url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {tok.RefreshToken},
		"client_id":     {s.ClientID()},
		"client_secret": {s.ClientSecret()},
	}, false)
	if status != http.StatusUnauthorized || tr.Error != "invalid_client" {
		t.Fatalf("client_secret_post: %d %+v", status, tr)
	}

	// Wrong secret over Basic.
	req, _ := http.NewRequest(http.MethodPost, s.TokenURL(), strings.NewReader(url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken},
	}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(s.ClientID()), "wrong")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong secret: %d", resp.StatusCode)
	}

	// No client-credentials grant.
	status, tr = postForm(t, s, s.TokenURL(), url.Values{"grant_type": {"client_credentials"}}, true)
	if status != http.StatusBadRequest || tr.Error == "" || tr.AccessToken != "" {
		t.Fatalf("client_credentials: %d %+v", status, tr)
	}

	// The refused attempts consumed nothing.
	mustRefresh(t, s, tok.RefreshToken)
}

func TestPKCE(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	verifier := xoauth2.GenerateVerifier()
	exchange := func(code, v string) (int, tokenResp) {
		form := url.Values{
			"grant_type":   {"authorization_code"},
			"code":         {code},
			"redirect_uri": {"http://localhost/callback"},
		}
		if v != "" {
			form.Set("code_verifier", v)
		}
		return postForm(t, s, s.TokenURL(), form, true)
	}
	s256 := url.Values{
		"code_challenge":        {xoauth2.S256ChallengeFromVerifier(verifier)},
		"code_challenge_method": {"S256"},
	}

	// Wrong verifier: refused, and the code is spent.
	q := authorize(t, s, s256)
	status, tr := exchange(q.Get("code"), xoauth2.GenerateVerifier())
	expectInvalidGrant(t, status, tr)
	status, tr = exchange(q.Get("code"), verifier)
	expectInvalidGrant(t, status, tr)

	// Missing verifier.
	q = authorize(t, s, s256)
	status, tr = exchange(q.Get("code"), "")
	if status != http.StatusBadRequest {
		t.Fatalf("missing verifier: %d %+v", status, tr)
	}

	// Right verifier.
	q = authorize(t, s, s256)
	if status, tr = exchange(q.Get("code"), verifier); status != http.StatusOK {
		t.Fatalf("right verifier: %d %+v", status, tr)
	}

	// plain is refused at the authorize step, and so is no PKCE at all.
	q = authorize(t, s, url.Values{"code_challenge": {verifier}, "code_challenge_method": {"plain"}})
	if q.Get("error") != "invalid_request" || q.Get("code") != "" {
		t.Fatalf("plain: %v", q)
	}
	q = authorize(t, s, nil)
	if q.Get("error") != "invalid_request" || q.Get("code") != "" {
		t.Fatalf("no PKCE: %v", q)
	}
	// deny=1 answers access_denied.
	s256.Set("deny", "1")
	q = authorize(t, s, s256)
	if q.Get("error") != "access_denied" || q.Get("code") != "" || q.Get("state") != "state-1234567890" {
		t.Fatalf("deny: %v", q)
	}
}

func TestRedirectURIAndScopesAreStrict(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{
		RedirectURIs: []string{"http://127.0.0.1:7380/cb"},
		Scopes:       []string{"export-jobs:read"},
	})
	pk := url.Values{
		"code_challenge":        {xoauth2.S256ChallengeFromVerifier(xoauth2.GenerateVerifier())},
		"code_challenge_method": {"S256"},
		"redirect_uri":          {"http://127.0.0.1:7380/cb"},
	}
	if q := authorize(t, s, pk); q.Get("code") == "" {
		t.Fatalf("registered redirect: %v", q)
	}
	pk.Set("scope", "export-jobs:write")
	if q := authorize(t, s, pk); q.Get("error") != "invalid_scope" {
		t.Fatalf("scope the client lacks: %v", q)
	}
	// Another port on the same loopback IP is not an exact match.
	pk.Set("scope", "export-jobs:read")
	pk.Set("redirect_uri", "http://127.0.0.1:9999/cb")
	q := pk
	q.Set("response_type", "code")
	q.Set("client_id", s.ClientID())
	q.Set("state", "state-1234567890")
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(s.AuthorizeURL() + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("unregistered redirect: %d", resp.StatusCode)
	}
}

func TestRevokeAccessTokens(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	a, b := uuid.NewString(), uuid.NewString()
	ta, tb := grant(t, s, a), grant(t, s, b)
	ta2 := grant(t, s, a) // a second authorisation of the same company

	s.RevokeAccessTokens(a)
	for _, tok := range []*xoauth2.Token{ta, ta2} {
		status, body, h := api(t, testClient, s, tok.AccessToken, http.MethodGet, "/v1/export-jobs", nil)
		if status != http.StatusUnauthorized || h.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
			t.Fatalf("revoked token: %d %v %q", status, body, h.Get("WWW-Authenticate"))
		}
	}
	if got := echoStatus(t, s, tb.AccessToken); got != http.StatusOK {
		t.Fatalf("other company: %d", got)
	}
	// Refresh still works and gives a working access token.
	r := mustRefresh(t, s, ta.RefreshToken)
	if got := echoStatus(t, s, r.AccessToken); got != http.StatusOK {
		t.Fatalf("after refresh: %d", got)
	}
	if st := s.Stats(); st.APIUnauthorized != 2 || st.APICalls != 4 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestDeleteInstallationRevokesEverything(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	tok := grant(t, s, uuid.NewString())
	status, _, _ := api(t, testClient, s, tok.AccessToken, http.MethodDelete, "/v1/installations/me", nil)
	if status != http.StatusNoContent {
		t.Fatalf("DELETE installations/me: %d", status)
	}
	if got := echoStatus(t, s, tok.AccessToken); got != http.StatusUnauthorized {
		t.Fatalf("access after delete: %d", got)
	}
	status, tr := refresh(t, s, tok.RefreshToken)
	expectInvalidGrant(t, status, tr)
}

func TestAccessTTL(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	s.SetAccessTTL(time.Second)
	tok := grant(t, s, uuid.NewString())
	if ttl := time.Until(tok.Expiry); ttl > 2*time.Second {
		t.Fatalf("expiry in %v", ttl)
	}
	deadline := time.Now().Add(5 * time.Second)
	for echoStatus(t, s, tok.AccessToken) != http.StatusUnauthorized {
		if time.Now().After(deadline) {
			t.Fatal("access token never expired")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The refresh token outlives it.
	s.SetAccessTTL(time.Hour)
	r := mustRefresh(t, s, tok.RefreshToken)
	if r.ExpiresIn < 3590 {
		t.Fatalf("expires_in %d after SetAccessTTL(1h)", r.ExpiresIn)
	}
}

func TestRefreshTTL(t *testing.T) {
	const ttl = time.Second
	s := oauthtest.NewServer(t, oauthtest.Options{RefreshTTL: ttl})
	tok := grant(t, s, uuid.NewString())
	// fosite stamps the expiry as Round(time.Now()+ttl, 1s) and compares it with time.Now();
	// it takes no injected clock, and refreshing to probe would rotate the token. So the
	// test waits on the wall clock, exactly until the latest instant the token can expire.
	time.Sleep(time.Until(time.Now().Add(ttl).Round(time.Second)) + time.Millisecond)
	status, tr := refresh(t, s, tok.RefreshToken)
	expectInvalidGrant(t, status, tr)
}

func TestTokenFailureInjection(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	tok := grant(t, s, uuid.NewString())

	s.SetTokenFailure(http.StatusServiceUnavailable)
	status, tr := refresh(t, s, tok.RefreshToken)
	if status != http.StatusServiceUnavailable || tr.Error != "temporarily_unavailable" {
		t.Fatalf("injected 503: %d %+v", status, tr)
	}
	if _, err := s.Grant(context.Background(), uuid.NewString()); err == nil {
		t.Fatal("Grant succeeded during an injected failure")
	}
	s.SetTokenFailure(0)
	// The failure consumed nothing: the same refresh token still works.
	mustRefresh(t, s, tok.RefreshToken)

	s.SetTokenDelay(300 * time.Millisecond)
	start := time.Now()
	tok2 := grant(t, s, uuid.NewString())
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("delay not applied: %v", d)
	}
	s.SetTokenDelay(0)
	mustRefresh(t, s, tok2.RefreshToken)

	st := s.Stats()
	if st.RefreshCalls != 3 || st.CodeExchanges != 3 || st.TokenCalls != 6 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestEcho(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	company := uuid.NewString()
	tok := grant(t, s, company)

	body := make([]byte, 1<<20+123)
	_, _ = rand.Read(body)
	sum := sha256.Sum256(body)
	status, m, _ := api(t, testClient, s, tok.AccessToken, http.MethodPost, "/v1/export-jobs?company_id="+company, body)
	if status != http.StatusOK {
		t.Fatalf("echo: %d %v", status, m)
	}
	want := map[string]any{
		"method":      "POST",
		"path":        "/v1/export-jobs",
		"company_id":  company,
		"body_sha256": hex.EncodeToString(sum[:]),
		"body_len":    float64(len(body)),
		"query":       "company_id=" + company,
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	// Empty body.
	_, m, _ = api(t, testClient, s, tok.AccessToken, http.MethodGet, "/v1/x", nil)
	empty := sha256.Sum256(nil)
	if m["body_sha256"] != hex.EncodeToString(empty[:]) || m["body_len"] != float64(0) {
		t.Fatalf("empty body: %v", m)
	}

	// Another company's id: 403.
	status, _, _ = api(t, testClient, s, tok.AccessToken, http.MethodGet, "/v1/export-jobs?company_id="+uuid.NewString(), nil)
	if status != http.StatusForbidden {
		t.Fatalf("other company: %d", status)
	}
	// Same company, other spelling of the UUID: fine.
	status, _, _ = api(t, testClient, s, tok.AccessToken, http.MethodGet, "/v1/export-jobs?company_id="+strings.ToUpper(company), nil)
	if status != http.StatusOK {
		t.Fatalf("upper-case company id: %d", status)
	}

	// Missing, garbage, refresh-token-as-bearer and Basic credentials: 401.
	for name, hdr := range map[string]string{
		"missing": "",
		"garbage": "Bearer nope",
		"refresh": "Bearer " + tok.RefreshToken,
		"basic":   "Basic " + tok.AccessToken,
	} {
		req, _ := http.NewRequest(http.MethodGet, s.URL()+"/v1/export-jobs", nil)
		if hdr != "" {
			req.Header.Set("Authorization", hdr)
		}
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
			t.Errorf("%s: %d %q", name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	if st := s.Stats(); st.APIUnauthorized != 4 || st.APICalls != 8 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestIntrospection(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	company := uuid.NewString()
	tok := grant(t, s, company)

	introspect := func(token string, auth func(*http.Request)) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, s.IntrospectURL(), strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		auth(req)
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	basic := func(r *http.Request) { r.SetBasicAuth(s.ClientID(), s.ClientSecret()) }

	status, m := introspect(tok.AccessToken, basic)
	if status != http.StatusOK || m["active"] != true || m["sub"] != "urn:pleo:company:"+company || m["client_id"] != s.ClientID() || m["token_type"] != nil && m["token_type"] != "Bearer" {
		t.Fatalf("introspect: %d %v", status, m)
	}
	status, _ = introspect(tok.AccessToken, func(r *http.Request) { r.SetBasicAuth(s.ClientID(), "wrong") })
	if status != http.StatusUnauthorized {
		t.Fatalf("wrong secret: %d", status)
	}
	tok2 := grant(t, s, company)
	status, _ = introspect(tok.AccessToken, func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok2.AccessToken) })
	if status != http.StatusUnauthorized {
		t.Fatalf("bearer auth: %d", status)
	}
	s.RevokeAccessTokens(company)
	if status, m = introspect(tok.AccessToken, basic); status != http.StatusOK || m["active"] != false {
		t.Fatalf("revoked: %d %v", status, m)
	}
}

func TestConcurrentRefresh50Companies(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	const n = 50
	companies := make([]string, n)
	tokens := make([]*xoauth2.Token, n)
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		companies[i] = uuid.NewString()
		wg.Go(func() {
			tok, err := s.Grant(context.Background(), companies[i])
			if err != nil {
				errs <- err
				return
			}
			tokens[i] = tok
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Refresh all 50 at once through golang.org/x/oauth2 (Basic auth).
	conf := s.OAuth2Config()
	ctx := context.WithValue(context.Background(), xoauth2.HTTPClient, testClient)
	fresh := make([]*xoauth2.Token, n)
	errs = make(chan error, n)
	for i := range n {
		wg.Go(func() {
			old := *tokens[i]
			old.Expiry = time.Now().Add(-time.Minute) // force a refresh
			tok, err := conf.TokenSource(ctx, &old).Token()
			if err != nil {
				errs <- fmt.Errorf("company %d: %w", i, err)
				return
			}
			fresh[i] = tok
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range n {
		if fresh[i].RefreshToken == tokens[i].RefreshToken {
			t.Fatalf("company %d: refresh token not rotated", i)
		}
		status, body, _ := api(t, testClient, s, fresh[i].AccessToken, http.MethodGet, "/v1/installations/me", nil)
		if status != http.StatusOK || body["resource"] != "urn:pleo:company:"+companies[i] {
			t.Fatalf("company %d: %d %v", i, status, body)
		}
		if got := echoStatus(t, s, tokens[i].AccessToken); got != http.StatusUnauthorized {
			t.Fatalf("company %d: old access token %d", i, got)
		}
	}
	st := s.Stats()
	if st.RefreshCalls != n || st.CodeExchanges != n || st.ReuseDetections != 0 || st.InvalidGrants != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestConcurrentAPICalls(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	const n = 1000
	toks := make([]*xoauth2.Token, 10)
	companies := make([]string, len(toks))
	for i := range toks {
		companies[i] = uuid.NewString()
		toks[i] = grant(t, s, companies[i])
	}
	tr := &http.Transport{MaxIdleConnsPerHost: n}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	start := time.Now()
	var wg sync.WaitGroup
	failures := make(chan string, n)
	for i := range n {
		wg.Go(func() {
			k := i % len(toks)
			body := fmt.Appendf(nil, "request %d", i)
			status, m, _ := api(t, client, s, toks[k].AccessToken, http.MethodPut, "/v1/items/"+fmt.Sprint(i)+"?company_id="+companies[k], body)
			sum := sha256.Sum256(body)
			if status != http.StatusOK || m["company_id"] != companies[k] || m["body_sha256"] != hex.EncodeToString(sum[:]) {
				failures <- fmt.Sprintf("call %d: %d %v", i, status, m)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(failures)
	for f := range failures {
		t.Error(f)
	}
	t.Logf("%d concurrent API calls in %v", n, elapsed)
	if elapsed > 10*time.Second {
		t.Fatalf("%d concurrent API calls took %v", n, elapsed)
	}
	if st := s.Stats(); st.APICalls != n || st.APIUnauthorized != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

// SetConsent drives the automatic consent for a client that cannot add company_id or deny
// itself (one following redirects); a request's own parameters still win.
func TestSetConsent(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	verifier := xoauth2.GenerateVerifier()
	s256 := url.Values{
		"code_challenge":        {xoauth2.S256ChallengeFromVerifier(verifier)},
		"code_challenge_method": {"S256"},
	}
	exchange := func(code string) tokenResp {
		t.Helper()
		status, tr := postForm(t, s, s.TokenURL(), url.Values{
			"grant_type": {"authorization_code"}, "code": {code},
			"redirect_uri": {"http://localhost/callback"}, "code_verifier": {verifier},
		}, true)
		if status != http.StatusOK {
			t.Fatalf("exchange: %d %+v", status, tr)
		}
		return tr
	}
	companyOf := func(token string) string {
		t.Helper()
		status, m, _ := api(t, testClient, s, token, http.MethodGet, "/v1/installations/me", nil)
		if status != http.StatusOK {
			t.Fatalf("installations/me: %d", status)
		}
		return strings.TrimPrefix(m["resource"].(string), "urn:pleo:company:")
	}

	// Default: a new random company each time.
	a := companyOf(exchange(authorize(t, s, s256).Get("code")).AccessToken)
	b := companyOf(exchange(authorize(t, s, s256).Get("code")).AccessToken)
	if a == b {
		t.Fatalf("default consent reused company %s", a)
	}

	company := "c0de0000-0000-4000-8000-00000000000a"
	s.SetConsent(oauthtest.Consent{CompanyID: strings.ToUpper(company)})
	for range 2 {
		if got := companyOf(exchange(authorize(t, s, s256).Get("code")).AccessToken); got != company {
			t.Fatalf("consented company %s, want %s", got, company)
		}
	}
	// The request's company_id wins.
	other := uuid.NewString()
	withCompany := url.Values{"company_id": {other}}
	for k, v := range s256 {
		withCompany[k] = v
	}
	if got := companyOf(exchange(authorize(t, s, withCompany).Get("code")).AccessToken); got != other {
		t.Fatalf("company_id parameter: got %s, want %s", got, other)
	}

	s.SetConsent(oauthtest.Consent{Deny: true})
	q := authorize(t, s, s256)
	if q.Get("error") != "access_denied" || q.Get("code") != "" || q.Get("state") != "state-1234567890" {
		t.Fatalf("SetConsent deny: %v", q)
	}
	s.SetConsent(oauthtest.Consent{})
	if q := authorize(t, s, s256); q.Get("code") == "" {
		t.Fatalf("consent restored: %v", q)
	}
}

// The refresh hook sees each stage of a refresh in order, and may hold it: at
// RefreshProcessed the token is already rotated and the client has no answer yet; at
// RefreshAnswered the whole answer has reached the client's connection.
func TestRefreshHook(t *testing.T) {
	s := oauthtest.NewServer(t, oauthtest.Options{})
	tok := grant(t, s, uuid.NewString())
	if !s.RefreshTokenActive(t.Context(), tok.RefreshToken) {
		t.Fatal("a freshly granted refresh token is not active")
	}
	var mu sync.Mutex
	var stages []oauthtest.RefreshStage
	var statuses []int
	processed := make(chan struct{})
	release := make(chan struct{})
	answered := make(chan struct{}, 1)
	s.SetRefreshHook(func(e oauthtest.RefreshEvent) {
		mu.Lock()
		stages = append(stages, e.Stage)
		statuses = append(statuses, e.Status)
		mu.Unlock()
		switch e.Stage {
		case oauthtest.RefreshProcessed:
			close(processed)
			<-release
		case oauthtest.RefreshAnswered:
			answered <- struct{}{}
		}
	})
	done := make(chan tokenResp, 1)
	go func() { done <- mustRefreshNoFatal(t, s, tok.RefreshToken) }()
	<-processed
	// Rotated, not answered.
	if s.RefreshTokenActive(t.Context(), tok.RefreshToken) {
		t.Error("the presented refresh token is still active once processed")
	}
	select {
	case <-done:
		t.Fatal("the client had an answer while the hook held it")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	r := <-done
	<-answered
	if !s.RefreshTokenActive(t.Context(), r.RefreshToken) {
		t.Error("the rotated refresh token is not active")
	}
	want := []oauthtest.RefreshStage{oauthtest.RefreshReceived, oauthtest.RefreshProcessed, oauthtest.RefreshAnswered}
	mu.Lock()
	if !slices.Equal(stages, want) || !slices.Equal(statuses, []int{0, 200, 200}) {
		t.Fatalf("stages %v statuses %v, want %v and 0, 200, 200", stages, statuses, want)
	}
	mu.Unlock()
	s.SetRefreshHook(nil)
	mustRefresh(t, s, r.RefreshToken)
	mu.Lock()
	defer mu.Unlock()
	if len(stages) != 3 {
		t.Fatalf("a removed hook was called: %v", stages)
	}
}

func mustRefreshNoFatal(t *testing.T, s *oauthtest.Server, rt string) tokenResp {
	status, tr := refresh(t, s, rt)
	if status != http.StatusOK {
		t.Errorf("refresh: status %d, %+v", status, tr)
	}
	return tr
}
