package proxy_test

// The OAuth 2.0 lifecycle, end to end: callers -> the real proxy handler -> a
// credentials.Broker over a MemoryStore -> the strict fosite server of internal/oauthtest,
// which is both the token endpoint and the upstream API (its resource server echoes what it
// received and answers 401 to any token it does not know).

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// oaEpoch starts the injected clock, far from the real time on purpose: the broker must judge
// expiry on its own clock only (the oauthtest server checks tokens on the real one).
var oaEpoch = time.Date(2031, 3, 14, 9, 26, 53, 0, time.UTC)

// oaConfig adjusts an oaEnv; every field is optional.
type oaConfig struct {
	store      func(*credentials.MemoryStore) credentials.Store // wraps the memory store
	upstream   func(*oauthtest.Server) string                   // default: the oauthtest server
	tokenURL   func(*oauthtest.Server) string                   // default: its token endpoint
	broker     func(*credentials.BrokerOptions)                 // broker options
	proxy      func(*proxy.Options)                             // proxy options
	authorizer func(*credentials.Broker) proxy.Authorizer       // wraps the broker
	transport  func(http.RoundTripper) http.RoundTripper        // wraps the upstream transport
}

type oaEnv struct {
	t      *testing.T
	srv    *oauthtest.Server
	mem    *credentials.MemoryStore
	store  credentials.Store
	broker *credentials.Broker
	proxy  *httptest.Server
	clock  *testenv.Clock
	client *http.Client
}

func newOAuthEnv(t *testing.T, cfg oaConfig) *oaEnv {
	t.Helper()
	e := &oaEnv{t: t, srv: oauthtest.NewServer(t, oauthtest.Options{}), mem: credentials.NewMemoryStore(), clock: testenv.NewClock(oaEpoch)}
	e.store = credentials.Store(e.mem)
	if cfg.store != nil {
		e.store = cfg.store(e.mem)
	}
	upstream := e.srv.URL()
	if cfg.upstream != nil {
		upstream = cfg.upstream(e.srv)
	}
	tokenURL := e.srv.TokenURL()
	if cfg.tokenURL != nil {
		tokenURL = cfg.tokenURL(e.srv)
	}
	bopts := credentials.BrokerOptions{
		Store:         e.store,
		OAuth:         credentials.OAuthClient{ClientID: e.srv.ClientID(), ClientSecret: credentials.Secret(e.srv.ClientSecret()), TokenURL: tokenURL},
		RefreshBefore: time.Minute,
		Now:           e.clock.Now,
	}
	if cfg.broker != nil {
		cfg.broker(&bopts)
	}
	b, err := credentials.NewBroker(bopts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	e.broker = b
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	base := proxy.NewUpstreamTransport(10*time.Second, proxy.DefaultMaxConns)
	t.Cleanup(base.CloseIdleConnections)
	var rt http.RoundTripper = base
	if cfg.transport != nil {
		rt = cfg.transport(base)
	}
	var auth proxy.Authorizer = b
	if cfg.authorizer != nil {
		auth = cfg.authorizer(b)
	}
	popts := proxy.Options{Upstream: u, Authorizer: auth, Tenants: b, MaxReplayBytes: 1 << 20, Transport: rt}
	if cfg.proxy != nil {
		cfg.proxy(&popts)
	}
	h, err := proxy.New(popts)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy = httptest.NewServer(h)
	t.Cleanup(e.proxy.Close)
	// Enough connections for the concurrency tests, few enough to stay far below the race
	// detector's goroutine limit.
	tr := &http.Transport{MaxConnsPerHost: 128, MaxIdleConnsPerHost: 128}
	t.Cleanup(tr.CloseIdleConnections)
	e.client = &http.Client{Transport: tr}
	return e
}

func oaCompany(i int) string { return fmt.Sprintf("0a070000-0000-4000-8000-%012d", i) }

// grants runs the authorisation code flow for each company, a few at a time.
func (e *oaEnv) grants(ids ...string) map[string]*oauth2.Token {
	e.t.Helper()
	var mu sync.Mutex
	out := make(map[string]*oauth2.Token, len(ids))
	var firstErr error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, id := range ids {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			tok, err := e.srv.Grant(context.Background(), id)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			out[id] = tok
		})
	}
	wg.Wait()
	if firstErr != nil {
		e.t.Fatal(firstErr)
	}
	return out
}

// oauthCred is the stored form of a grant whose access token expires expiresIn from now on
// the injected clock.
func (e *oaEnv) oauthCred(id string, tok *oauth2.Token, expiresIn time.Duration) credentials.Credential {
	now := e.clock.Now()
	// Issued as if with Pleo's 15-minute lifetime: the broker refreshes a token at most half
	// its lifetime (expires_at - last_refreshed_at) before it expires.
	return credentials.Credential{
		CompanyID: id, Type: credentials.OAuth2,
		AccessToken: credentials.Secret(tok.AccessToken), RefreshToken: credentials.Secret(tok.RefreshToken),
		ExpiresAt: now.Add(expiresIn), LastRefreshedAt: now.Add(expiresIn - 15*time.Minute),
	}
}

// seed grants each company and stores its tokens, expiring expiresIn from now.
func (e *oaEnv) seed(expiresIn time.Duration, ids ...string) map[string]*oauth2.Token {
	e.t.Helper()
	toks := e.grants(ids...)
	creds := make([]credentials.Credential, 0, len(ids))
	for _, id := range ids {
		creds = append(creds, e.oauthCred(id, toks[id], expiresIn))
	}
	e.put(creds...)
	return toks
}

func (e *oaEnv) put(creds ...credentials.Credential) {
	e.t.Helper()
	if err := e.mem.PutAll(context.Background(), creds, false); err != nil {
		e.t.Fatal(err)
	}
}

func (e *oaEnv) stored(id string) credentials.Credential {
	e.t.Helper()
	c, err := e.mem.Get(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// oaBody is a request body: its bytes and whether to send it without a length (chunked).
type oaBody struct {
	data    []byte
	chunked bool
}

func oaRandom(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func oaSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// oaReply is what a caller got back.
type oaReply struct {
	status int
	header http.Header
	body   []byte
}

// try sends one request through the proxy; safe to call from any goroutine.
func (e *oaEnv) try(ctx context.Context, method, company string, body *oaBody) (oaReply, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body.data)
		if body.chunked {
			rd = io.MultiReader(rd) // hides the length
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, e.proxy.URL+"/v1/export-jobs?page=1", rd)
	if err != nil {
		return oaReply{}, err
	}
	if body != nil && body.chunked {
		req.ContentLength = -1
	}
	req.Header.Set("X-Pleo-Company-Id", company)
	resp, err := e.client.Do(req)
	if err != nil {
		return oaReply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return oaReply{}, err
	}
	return oaReply{resp.StatusCode, resp.Header, b}, nil
}

func (e *oaEnv) call(method, company string, body *oaBody) oaReply {
	e.t.Helper()
	r, err := e.try(context.Background(), method, company, body)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// echo decodes the resource server's echo of a 200.
func (r oaReply) echo() (oauthtest.Echo, error) {
	var ec oauthtest.Echo
	if r.status != http.StatusOK {
		return ec, fmt.Errorf("status %d: %s", r.status, r.body)
	}
	if err := json.Unmarshal(r.body, &ec); err != nil {
		return ec, fmt.Errorf("not an echo: %v: %s", err, r.body)
	}
	return ec, nil
}

// wantEcho checks a 200 from the resource server for the company, with the body it was sent.
func (e *oaEnv) wantEcho(r oaReply, company string, body *oaBody) {
	e.t.Helper()
	ec, err := r.echo()
	if err != nil {
		e.t.Fatal(err)
	}
	sent := []byte{}
	if body != nil {
		sent = body.data
	}
	if ec.CompanyID != company || ec.BodySHA256 != oaSum(sent) || ec.BodyLen != int64(len(sent)) {
		e.t.Fatalf("upstream got company %s, %d bytes sha256 %s; want %s, %d bytes sha256 %s",
			ec.CompanyID, ec.BodyLen, ec.BodySHA256, company, len(sent), oaSum(sent))
	}
}

// problem returns the code of a sidecar problem, failing if r is not one.
func (r oaReply) problem(t *testing.T) string {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" || !strings.HasPrefix(r.header.Get("Proxy-Status"), "pleo-auth-proxy") {
		t.Fatalf("status %d, Content-Type %q, Proxy-Status %q: not a sidecar problem: %s", r.status, ct, r.header.Get("Proxy-Status"), r.body)
	}
	var p struct {
		Code      string `json:"code"`
		Status    int    `json:"status"`
		CompanyID string `json:"company_id"`
	}
	if err := json.Unmarshal(r.body, &p); err != nil || p.Status != r.status {
		t.Fatalf("problem %s: %v", r.body, err)
	}
	return p.Code
}

// oaDelta is after minus before.
func oaDelta(before, after oauthtest.Stats) oauthtest.Stats {
	return oauthtest.Stats{
		TokenCalls:      after.TokenCalls - before.TokenCalls,
		RefreshCalls:    after.RefreshCalls - before.RefreshCalls,
		CodeExchanges:   after.CodeExchanges - before.CodeExchanges,
		ReuseDetections: after.ReuseDetections - before.ReuseDetections,
		InvalidGrants:   after.InvalidGrants - before.InvalidGrants,
		APICalls:        after.APICalls - before.APICalls,
		APIUnauthorized: after.APIUnauthorized - before.APIUnauthorized,
	}
}

// since returns the server's counters since before.
func (e *oaEnv) since(before oauthtest.Stats) oauthtest.Stats { return oaDelta(before, e.srv.Stats()) }

func oaWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// 1. A thundering herd on expired tokens: one refresh per company, no refresh token presented
// twice.
func TestOAuthExpiredFleetRefreshesOncePerCompany(t *testing.T) {
	e := newOAuthEnv(t, oaConfig{})
	ids := make([]string, 50)
	for i := range ids {
		ids[i] = oaCompany(i + 1)
	}
	toks := e.seed(-time.Minute, ids...)
	before := e.srv.Stats()

	start := make(chan struct{})
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := range 1000 {
		company := ids[i%len(ids)]
		wg.Go(func() {
			<-start
			r, err := e.try(context.Background(), http.MethodGet, company, nil)
			if err != nil {
				t.Error(err)
				return
			}
			if ec, err := r.echo(); err != nil || ec.CompanyID != company {
				t.Errorf("company %s: %v (echo %+v)", company, err, ec)
				return
			}
			ok.Add(1)
		})
	}
	close(start)
	wg.Wait()

	d := e.since(before)
	if ok.Load() != 1000 {
		t.Fatalf("%d of 1000 requests got 200", ok.Load())
	}
	if d.TokenCalls != 50 || d.RefreshCalls != 50 || d.ReuseDetections != 0 || d.InvalidGrants != 0 {
		t.Fatalf("token calls %d (refresh %d), reuse detections %d, invalid grants %d; want 50, 50, 0, 0",
			d.TokenCalls, d.RefreshCalls, d.ReuseDetections, d.InvalidGrants)
	}
	if d.APICalls != 1000 || d.APIUnauthorized != 0 {
		t.Fatalf("upstream calls %d (%d unauthorized), want 1000 and 0: an expired token was sent", d.APICalls, d.APIUnauthorized)
	}
	for _, id := range ids {
		c := e.stored(id)
		if c.RefreshToken.Reveal() == toks[id].RefreshToken || !c.ExpiresAt.After(e.clock.Now()) {
			t.Fatalf("company %s: rotated pair not stored", id)
		}
	}
}

// always401 is an upstream whose API answers every request 401 and whose /oauth/token forwards
// to the real token endpoint. It records the body of every API request.
type always401 struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies []string // sha256 of each API request body
}

const always401Body = `{"error":"invalid_token","error_description":"this upstream rejects everyone"}`

func newAlways401(t *testing.T, tokenServer *oauthtest.Server) *always401 {
	t.Helper()
	target, _ := url.Parse(tokenServer.URL())
	forward := httputil.NewSingleHostReverseProxy(target)
	a := &always401{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/oauth/token" {
			forward.ServeHTTP(w, r)
			return
		}
		b, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.bodies = append(a.bodies, oaSum(b))
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.Header().Set("X-Upstream-Trace", "u-123")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, always401Body)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *always401) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.bodies...)
}

// 2. A token revoked at the server while unexpired locally: one refresh and exactly one retry,
// with the body replayed byte for byte; a persistent 401 passes back unchanged; a body over the
// replay limit is not retried, but the refresh still happens.
func TestOAuthRevokedTokenRetriedOnce(t *testing.T) {
	company := oaCompany(1)

	t.Run("body replayed byte for byte", func(t *testing.T) {
		e := newOAuthEnv(t, oaConfig{})
		e.seed(10*time.Minute, company)
		for _, tc := range []struct {
			method string
			body   *oaBody
		}{
			{http.MethodPost, &oaBody{data: oaRandom(64 << 10)}},
			{http.MethodPut, &oaBody{data: oaRandom(1 << 20)}}, // exactly MaxReplayBytes
			{http.MethodPatch, &oaBody{data: []byte(`{"note":"ünïcode \u0000 and NUL"}`)}},
			{http.MethodPost, &oaBody{data: oaRandom(300 << 10), chunked: true}}, // no length, under the limit
			{http.MethodGet, nil},
			{http.MethodDelete, nil},
		} {
			name := tc.method
			if tc.body != nil && tc.body.chunked {
				name += " chunked"
			}
			t.Run(name, func(t *testing.T) {
				e.srv.RevokeAccessTokens(company)
				before := e.srv.Stats()
				r := e.call(tc.method, company, tc.body)
				e.wantEcho(r, company, tc.body)
				if d := e.since(before); d.APICalls != 2 || d.APIUnauthorized != 1 || d.TokenCalls != 1 || d.ReuseDetections != 0 {
					t.Fatalf("upstream attempts %d (%d unauthorized), token calls %d, reuse %d; want 2, 1, 1, 0",
						d.APICalls, d.APIUnauthorized, d.TokenCalls, d.ReuseDetections)
				}
			})
		}
	})

	t.Run("persistent 401 passed back unchanged after one retry", func(t *testing.T) {
		var up *always401
		e := newOAuthEnv(t, oaConfig{
			upstream: func(s *oauthtest.Server) string { up = newAlways401(t, s); return up.srv.URL },
			tokenURL: func(*oauthtest.Server) string { return up.srv.URL + "/oauth/token" },
		})
		e.seed(10*time.Minute, company)
		before := e.srv.Stats()
		body := &oaBody{data: oaRandom(10 << 10)}
		r := e.call(http.MethodPost, company, body)
		if r.status != http.StatusUnauthorized || string(r.body) != always401Body {
			t.Fatalf("got %d %q, want the upstream's own 401", r.status, r.body)
		}
		if r.header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` || r.header.Get("X-Upstream-Trace") != "u-123" ||
			r.header.Get("Proxy-Status") != "" || r.header.Get("Content-Type") != "application/json" {
			t.Fatalf("headers changed: %v", r.header)
		}
		seen := up.seen()
		if len(seen) != 2 || seen[0] != oaSum(body.data) || seen[1] != oaSum(body.data) {
			t.Fatalf("upstream saw %d attempts %v, want 2 with the same body", len(seen), seen)
		}
		if d := e.since(before); d.TokenCalls != 1 || d.ReuseDetections != 0 {
			t.Fatalf("token calls %d, reuse %d; want 1 refresh between the attempts", d.TokenCalls, d.ReuseDetections)
		}
	})

	for _, chunked := range []bool{false, true} {
		name := "body over MaxReplayBytes"
		if chunked {
			name += ", chunked"
		}
		t.Run(name+": one attempt, 401 back, refresh for the caller's retry", func(t *testing.T) {
			e := newOAuthEnv(t, oaConfig{proxy: func(o *proxy.Options) { o.MaxReplayBytes = 1024 }})
			e.seed(10*time.Minute, company)
			e.srv.RevokeAccessTokens(company)
			body := &oaBody{data: oaRandom(4096), chunked: chunked}
			before := e.srv.Stats()
			r := e.call(http.MethodPost, company, body)
			if r.status != http.StatusUnauthorized || r.header.Get("Proxy-Status") != "" || !strings.Contains(string(r.body), "invalid_token") {
				t.Fatalf("got %d %v %s, want the upstream's 401", r.status, r.header, r.body)
			}
			if d := e.since(before); d.APICalls != 1 || d.TokenCalls != 1 {
				t.Fatalf("upstream attempts %d, token calls %d; want 1 and 1", d.APICalls, d.TokenCalls)
			}
			before = e.srv.Stats()
			r = e.call(http.MethodPost, company, body) // the caller's own retry
			e.wantEcho(r, company, body)
			if d := e.since(before); d.APICalls != 1 || d.TokenCalls != 0 || d.APIUnauthorized != 0 {
				t.Fatalf("retry: upstream attempts %d (%d unauthorized), token calls %d; want 1, 0, 0", d.APICalls, d.APIUnauthorized, d.TokenCalls)
			}
		})
	}
}

// 3. invalid_grant: the 401 problem, then no more token calls until the credential changes.
func TestOAuthInvalidGrantNeedsReauthorization(t *testing.T) {
	company := oaCompany(1)

	t.Run("already rotated refresh token", func(t *testing.T) {
		e := newOAuthEnv(t, oaConfig{})
		tok := e.grants(company)[company]
		// Someone else used the refresh token: the stored one is spent.
		if _, err := e.srv.OAuth2Config().TokenSource(context.Background(), &oauth2.Token{RefreshToken: tok.RefreshToken}).Token(); err != nil {
			t.Fatal(err)
		}
		e.put(e.oauthCred(company, tok, -time.Minute))
		before := e.srv.Stats()
		r := e.call(http.MethodGet, company, nil)
		if r.status != http.StatusUnauthorized || r.problem(t) != "reauthorization_required" {
			t.Fatalf("got %d %s, want 401 reauthorization_required", r.status, r.body)
		}
		if d := e.since(before); d.TokenCalls != 1 || d.InvalidGrants != 1 || d.APICalls != 0 {
			t.Fatalf("token calls %d, invalid grants %d, upstream calls %d; want 1, 1, 0", d.TokenCalls, d.InvalidGrants, d.APICalls)
		}
		before = e.srv.Stats()
		for range 100 {
			if r := e.call(http.MethodGet, company, nil); r.status != http.StatusUnauthorized || r.problem(t) != "reauthorization_required" {
				t.Fatalf("got %d %s", r.status, r.body)
			}
		}
		if d := e.since(before); d.TokenCalls != 0 || d.APICalls != 0 {
			t.Fatalf("100 more requests made %d token calls and %d upstream calls, want none", d.TokenCalls, d.APICalls)
		}
		c := e.stored(company)
		if c.State != credentials.StateReauthorizationRequired || c.LastError == "" || e.broker.StatusOf(c) != credentials.StatusReauthorizationRequired {
			t.Fatalf("stored state %q (last error %q)", c.State, c.LastError)
		}
		// A person reconnects: the credential is replaced, and requests work again.
		e.seed(10*time.Minute, company)
		before = e.srv.Stats()
		e.wantEcho(e.call(http.MethodGet, company, nil), company, nil)
		if d := e.since(before); d.TokenCalls != 0 {
			t.Fatalf("token calls %d after the reconnect, want 0", d.TokenCalls)
		}
	})

	t.Run("rejected after an upstream 401", func(t *testing.T) {
		e := newOAuthEnv(t, oaConfig{})
		e.seed(10*time.Minute, company)
		e.srv.RevokeAccessTokens(company)
		e.srv.SetTokenFailure(http.StatusBadRequest) // {"error":"invalid_grant"}
		before := e.srv.Stats()
		r := e.call(http.MethodPost, company, &oaBody{data: []byte("x")})
		if r.status != http.StatusUnauthorized || r.problem(t) != "reauthorization_required" {
			t.Fatalf("got %d %s, want 401 reauthorization_required", r.status, r.body)
		}
		if d := e.since(before); d.TokenCalls != 1 || d.APICalls != 1 {
			t.Fatalf("token calls %d, upstream calls %d; want 1 and 1", d.TokenCalls, d.APICalls)
		}
		before = e.srv.Stats()
		for range 100 {
			if r := e.call(http.MethodGet, company, nil); r.status != http.StatusUnauthorized || r.problem(t) != "reauthorization_required" {
				t.Fatalf("got %d %s", r.status, r.body)
			}
		}
		if d := e.since(before); d.TokenCalls != 0 || d.APICalls != 0 {
			t.Fatalf("100 more requests made %d token calls and %d upstream calls, want none", d.TokenCalls, d.APICalls)
		}
		if c := e.stored(company); c.State != credentials.StateReauthorizationRequired {
			t.Fatalf("stored state %q", c.State)
		}
		e.srv.SetTokenFailure(0)
		e.seed(10*time.Minute, company)
		e.wantEcho(e.call(http.MethodGet, company, nil), company, nil)
	})
}

// 4. The token endpoint down: an unexpired token keeps working, an expired one is a 502, and
// after the endpoint recovers and the company's backoff has passed, refreshes succeed again.
func TestOAuthTokenEndpointDown(t *testing.T) {
	e := newOAuthEnv(t, oaConfig{broker: func(o *credentials.BrokerOptions) { o.MaxBackoff = 30 * time.Second }})
	a, b := oaCompany(1), oaCompany(2)
	toksA := e.seed(30*time.Second, a) // inside the 60s REFRESH_BEFORE window: a refresh is due
	e.seed(-time.Minute, b)
	e.srv.SetTokenFailure(http.StatusServiceUnavailable)

	before := e.srv.Stats()
	e.wantEcho(e.call(http.MethodGet, a, nil), a, nil)
	if d := e.since(before); d.TokenCalls != 1 || d.APICalls != 1 || d.APIUnauthorized != 0 {
		t.Fatalf("token calls %d, upstream calls %d (%d unauthorized); want a failed refresh and the old token used",
			d.TokenCalls, d.APICalls, d.APIUnauthorized)
	}
	before = e.srv.Stats()
	for range 5 {
		e.wantEcho(e.call(http.MethodGet, a, nil), a, nil)
	}
	if d := e.since(before); d.TokenCalls != 0 {
		t.Fatalf("token calls %d during the backoff, want 0", d.TokenCalls)
	}
	if c := e.stored(a); c.AccessToken.Reveal() != toksA[a].AccessToken || c.State != credentials.StateActive {
		t.Fatal("a transient failure changed the stored credential")
	}

	// Another company's refresh is not held back by this one's backoff; its token is expired.
	before = e.srv.Stats()
	r := e.call(http.MethodGet, b, nil)
	if r.status != http.StatusBadGateway || r.problem(t) != "token_endpoint_error" {
		t.Fatalf("expired token with the endpoint down: got %d %s, want 502 token_endpoint_error", r.status, r.body)
	}
	if d := e.since(before); d.TokenCalls != 1 || d.APICalls != 0 {
		t.Fatalf("token calls %d, upstream calls %d; want 1 and 0 (an expired token is never sent)", d.TokenCalls, d.APICalls)
	}

	// a's token expires while the endpoint is still down.
	e.clock.Advance(31 * time.Second)
	before = e.srv.Stats()
	r = e.call(http.MethodGet, a, nil)
	if r.status != http.StatusBadGateway || r.problem(t) != "token_endpoint_error" {
		t.Fatalf("got %d %s, want 502 token_endpoint_error", r.status, r.body)
	}
	if d := e.since(before); d.TokenCalls != 1 || d.APICalls != 0 {
		t.Fatalf("token calls %d, upstream calls %d; want 1 and 0", d.TokenCalls, d.APICalls)
	}

	// Recovered, but the backoff has not passed on the broker's clock yet.
	e.srv.SetTokenFailure(0)
	before = e.srv.Stats()
	if r := e.call(http.MethodGet, a, nil); r.status != http.StatusBadGateway {
		t.Fatalf("got %d during the backoff, want 502", r.status)
	}
	if d := e.since(before); d.TokenCalls != 0 {
		t.Fatalf("token calls %d during the backoff, want 0", d.TokenCalls)
	}
	e.clock.Advance(30 * time.Second) // MaxBackoff
	before = e.srv.Stats()
	e.wantEcho(e.call(http.MethodGet, a, nil), a, nil)
	e.wantEcho(e.call(http.MethodGet, b, nil), b, nil)
	if d := e.since(before); d.TokenCalls != 2 || d.APIUnauthorized != 0 || d.ReuseDetections != 0 {
		t.Fatalf("token calls %d, unauthorized %d, reuse %d; want 2, 0, 0", d.TokenCalls, d.APIUnauthorized, d.ReuseDetections)
	}
	if c := e.stored(a); c.RefreshToken.Reveal() == toksA[a].RefreshToken || c.State != credentials.StateActive {
		t.Fatal("a's rotated pair was not stored")
	}
}

// oaFlakyStore is a store whose Update fails on demand; it remembers the last credential it
// was asked to write.
type oaFlakyStore struct {
	*credentials.MemoryStore
	fail atomic.Bool
	mu   sync.Mutex
	last credentials.Credential
}

func (s *oaFlakyStore) Update(ctx context.Context, c credentials.Credential) (credentials.Credential, error) {
	s.mu.Lock()
	s.last = c
	s.mu.Unlock()
	if s.fail.Load() {
		return credentials.Credential{}, errors.New("disk full")
	}
	return s.MemoryStore.Update(ctx, c)
}

func (s *oaFlakyStore) lastWrite() credentials.Credential {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// 5. A rotated pair whose store write fails is kept, used, and presented at the next refresh,
// and lands in the store once writes work again.
func TestOAuthRotatedPairKeptWhenStoreWriteFails(t *testing.T) {
	var flaky *oaFlakyStore
	e := newOAuthEnv(t, oaConfig{store: func(m *credentials.MemoryStore) credentials.Store {
		flaky = &oaFlakyStore{MemoryStore: m}
		return flaky
	}})
	company := oaCompany(1)
	tok := e.seed(-time.Minute, company)[company]
	flaky.fail.Store(true)

	before := e.srv.Stats()
	e.wantEcho(e.call(http.MethodGet, company, nil), company, nil)
	if d := e.since(before); d.TokenCalls != 1 || d.APIUnauthorized != 0 {
		t.Fatalf("token calls %d, unauthorized %d; want 1 and 0", d.TokenCalls, d.APIUnauthorized)
	}
	if n := e.broker.PendingWrites(); n != 1 {
		t.Fatalf("PendingWrites = %d, want 1", n)
	}
	first := flaky.lastWrite()
	if c := e.stored(company); c.RefreshToken.Reveal() != tok.RefreshToken || first.RefreshToken.Reveal() == tok.RefreshToken {
		t.Fatal("want the rotated pair in memory only")
	}
	// The new token keeps being served from memory.
	before = e.srv.Stats()
	for range 5 {
		e.wantEcho(e.call(http.MethodGet, company, nil), company, nil)
	}
	if d := e.since(before); d.TokenCalls != 0 || d.APIUnauthorized != 0 {
		t.Fatalf("token calls %d, unauthorized %d; want the in-memory token used", d.TokenCalls, d.APIUnauthorized)
	}

	// Force the next refresh: it must present the rotated refresh token, not the stored one.
	e.srv.RevokeAccessTokens(company)
	before = e.srv.Stats()
	e.wantEcho(e.call(http.MethodPost, company, &oaBody{data: []byte("payload")}), company, &oaBody{data: []byte("payload")})
	if d := e.since(before); d.TokenCalls != 1 || d.ReuseDetections != 0 || d.InvalidGrants != 0 {
		t.Fatalf("token calls %d, reuse detections %d, invalid grants %d; want 1, 0, 0", d.TokenCalls, d.ReuseDetections, d.InvalidGrants)
	}
	if n := e.broker.PendingWrites(); n != 1 {
		t.Fatalf("PendingWrites = %d, want 1", n)
	}
	latest := flaky.lastWrite()
	if latest.RefreshToken == first.RefreshToken {
		t.Fatal("the second refresh did not rotate")
	}

	// Writes work again: the latest pair lands.
	flaky.fail.Store(false)
	oaWaitFor(t, "the pending pair to be written", func() bool { return e.broker.PendingWrites() == 0 })
	if c := e.stored(company); c.RefreshToken != latest.RefreshToken || c.AccessToken != latest.AccessToken {
		t.Fatal("the store does not hold the latest pair")
	}
	// A new process over the same store refreshes with it.
	e.clock.Advance(time.Hour)
	b2, err := credentials.NewBroker(credentials.BrokerOptions{Store: e.mem, Now: e.clock.Now,
		OAuth: credentials.OAuthClient{ClientID: e.srv.ClientID(), ClientSecret: credentials.Secret(e.srv.ClientSecret()), TokenURL: e.srv.TokenURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	before = e.srv.Stats()
	if _, err := b2.Authorize(context.Background(), company); err != nil {
		t.Fatal(err)
	}
	if d := e.since(before); d.TokenCalls != 1 || d.ReuseDetections != 0 || d.InvalidGrants != 0 {
		t.Fatalf("restart: token calls %d, reuse %d, invalid grants %d; want 1, 0, 0", d.TokenCalls, d.ReuseDetections, d.InvalidGrants)
	}
}

// oaCountingAuthorizer counts Authorize calls that have started.
type oaCountingAuthorizer struct {
	proxy.Authorizer
	started atomic.Int64
}

func (a *oaCountingAuthorizer) Authorize(ctx context.Context, companyID string) (credentials.Grant, error) {
	a.started.Add(1)
	return a.Authorizer.Authorize(ctx, companyID)
}

// 6. The caller that started a refresh going away does not fail the others waiting on it.
func TestOAuthFirstCallerCancellingDoesNotFailWaiters(t *testing.T) {
	var counting *oaCountingAuthorizer
	e := newOAuthEnv(t, oaConfig{authorizer: func(b *credentials.Broker) proxy.Authorizer {
		counting = &oaCountingAuthorizer{Authorizer: b}
		return counting
	}})
	company := oaCompany(1)
	tok := e.seed(-time.Minute, company)[company]
	e.srv.SetTokenDelay(400 * time.Millisecond)
	before := e.srv.Stats()

	ctx, cancel := context.WithCancel(context.Background())
	firstDone := make(chan error, 1)
	go func() {
		_, err := e.try(ctx, http.MethodGet, company, nil)
		firstDone <- err
	}()
	oaWaitFor(t, "the first caller's refresh to reach the token endpoint", func() bool { return e.srv.Stats().TokenCalls == before.TokenCalls+1 })

	var wg sync.WaitGroup
	var ok atomic.Int64
	for range 10 {
		wg.Go(func() {
			r, err := e.try(context.Background(), http.MethodGet, company, nil)
			if err != nil {
				t.Error(err)
				return
			}
			if ec, err := r.echo(); err != nil || ec.CompanyID != company {
				t.Errorf("waiter: %v", err)
				return
			}
			ok.Add(1)
		})
	}
	oaWaitFor(t, "the waiters to join", func() bool { return counting.started.Load() == 11 })
	cancel()
	if err := <-firstDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("first caller: %v, want context.Canceled", err)
	}
	wg.Wait()
	if ok.Load() != 10 {
		t.Fatalf("%d of 10 waiters got 200", ok.Load())
	}
	if d := e.since(before); d.TokenCalls != 1 || d.ReuseDetections != 0 || d.APIUnauthorized != 0 {
		t.Fatalf("token calls %d, reuse %d, unauthorized %d; want 1, 0, 0", d.TokenCalls, d.ReuseDetections, d.APIUnauthorized)
	}
	if c := e.stored(company); c.RefreshToken.Reveal() == tok.RefreshToken {
		t.Fatal("the refresh did not complete")
	}
}

// 7. Concurrent 401s for one company share one refresh.
func TestOAuthConcurrent401sShareOneRefresh(t *testing.T) {
	e := newOAuthEnv(t, oaConfig{})
	company := oaCompany(1)
	e.seed(10*time.Minute, company)
	e.wantEcho(e.call(http.MethodGet, company, nil), company, nil) // cached
	e.srv.RevokeAccessTokens(company)
	before := e.srv.Stats()

	start := make(chan struct{})
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := range 20 {
		wg.Go(func() {
			<-start
			body := &oaBody{data: []byte(fmt.Sprintf(`{"n":%d}`, i))}
			r, err := e.try(context.Background(), http.MethodPost, company, body)
			if err != nil {
				t.Error(err)
				return
			}
			if ec, err := r.echo(); err != nil || ec.BodySHA256 != oaSum(body.data) {
				t.Errorf("request %d: %v (echo %+v)", i, err, ec)
				return
			}
			ok.Add(1)
		})
	}
	close(start)
	wg.Wait()
	d := e.since(before)
	if ok.Load() != 20 {
		t.Fatalf("%d of 20 got 200", ok.Load())
	}
	if d.TokenCalls != 1 || d.ReuseDetections != 0 {
		t.Fatalf("token calls %d, reuse %d; want 1 and 0", d.TokenCalls, d.ReuseDetections)
	}
	if d.APIUnauthorized < 1 || d.APICalls != 20+d.APIUnauthorized {
		t.Fatalf("upstream calls %d with %d unauthorized: every 401 must be retried exactly once", d.APICalls, d.APIUnauthorized)
	}
}

// oaSilentStore announces no changes, so the broker's cache is not told about a new key.
type oaSilentStore struct{ *credentials.MemoryStore }

func (oaSilentStore) Subscribe(func(string)) func() { return func() {} }

// 8. An API key that gets a 401 is re-read from the store: retried once if the key changed,
// passed back after one attempt if not.
func TestAPIKey401RereadFromStore(t *testing.T) {
	company := oaCompany(1)
	var accept atomic.Value
	accept.Store("key-1")
	var mu sync.Mutex
	var seen []string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization")+" "+oaSum(body))
		mu.Unlock()
		if r.Header.Get("Authorization") != credentials.BasicAuthorization(accept.Load().(string)) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"type":"unauthorized","message":"bad api key"}`)
			return
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(upstream.Close)
	attempts := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := seen
		seen = nil
		return out
	}
	e := newOAuthEnv(t, oaConfig{
		store:    func(m *credentials.MemoryStore) credentials.Store { return oaSilentStore{m} },
		upstream: func(*oauthtest.Server) string { return upstream.URL },
	})
	key := func(k string) credentials.Credential {
		return credentials.Credential{CompanyID: company, Type: credentials.IntegratedAPIKey, APIKey: credentials.Secret(k)}
	}
	e.put(key("key-1"))
	if r := e.call(http.MethodGet, company, nil); r.status != 200 || len(attempts()) != 1 {
		t.Fatalf("got %d", r.status)
	}

	// Rotated in the store behind the broker's cache.
	e.put(key("key-2"))
	accept.Store("key-2")
	body := &oaBody{data: oaRandom(2048)}
	if r := e.call(http.MethodPost, company, body); r.status != 200 || string(r.body) != "ok" {
		t.Fatalf("got %d %s, want 200 after re-reading the key", r.status, r.body)
	}
	got := attempts()
	want := []string{credentials.BasicAuthorization("key-1") + " " + oaSum(body.data), credentials.BasicAuthorization("key-2") + " " + oaSum(body.data)}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("upstream saw %q, want the old key then the new one, same body", got)
	}

	// Unchanged key: its 401 is passed back after one attempt.
	accept.Store("key-3")
	r := e.call(http.MethodGet, company, nil)
	if r.status != http.StatusUnauthorized || string(r.body) != `{"type":"unauthorized","message":"bad api key"}` || r.header.Get("Proxy-Status") != "" {
		t.Fatalf("got %d %v %s, want the upstream's 401 unchanged", r.status, r.header, r.body)
	}
	if n := len(attempts()); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
	if s := e.broker.StatusOf(e.stored(company)); s != credentials.StatusUnauthorized {
		t.Fatalf("status %q, want unauthorized", s)
	}
}

// oaRecordingTransport records the Authorization of every upstream attempt.
type oaRecordingTransport struct {
	base http.RoundTripper
	mu   sync.Mutex
	auth []string
}

func (t *oaRecordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.mu.Lock()
	t.auth = append(t.auth, r.Header.Get("Authorization"))
	t.mu.Unlock()
	return t.base.RoundTrip(r)
}

func (t *oaRecordingTransport) sent() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.auth...)
}

// 10. A token within REFRESH_BEFORE of its expiry is refreshed before use, and an expired token
// is never sent.
func TestOAuthProactiveRefresh(t *testing.T) {
	company := oaCompany(1)

	t.Run("within RefreshBefore", func(t *testing.T) {
		var rec *oaRecordingTransport
		e := newOAuthEnv(t, oaConfig{transport: func(base http.RoundTripper) http.RoundTripper {
			rec = &oaRecordingTransport{base: base}
			return rec
		}})
		tok := e.seed(30*time.Second, company)[company] // RefreshBefore is 60s
		before := e.srv.Stats()
		e.wantEcho(e.call(http.MethodGet, company, nil), company, nil)
		if d := e.since(before); d.TokenCalls != 1 || d.APICalls != 1 || d.APIUnauthorized != 0 {
			t.Fatalf("token calls %d, upstream calls %d (%d unauthorized); want 1, 1, 0", d.TokenCalls, d.APICalls, d.APIUnauthorized)
		}
		sent := rec.sent()
		if len(sent) != 1 || sent[0] == "Bearer "+tok.AccessToken || sent[0] != "Bearer "+e.stored(company).AccessToken.Reveal() {
			t.Fatal("the expiring token was sent instead of the refreshed one")
		}
	})

	t.Run("expired at the server too", func(t *testing.T) {
		e := newOAuthEnv(t, oaConfig{})
		e.srv.SetAccessTTL(time.Millisecond)
		tok := e.grants(company)[company]
		e.srv.SetAccessTTL(15 * time.Minute)
		// Wait until the server itself refuses the token, so sending it would show as a 401.
		oaWaitFor(t, "the access token to expire at the server", func() bool {
			req, _ := http.NewRequest(http.MethodGet, e.srv.URL()+"/v1/probe", nil)
			req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusUnauthorized
		})
		e.put(e.oauthCred(company, tok, 0)) // expires exactly now on the broker's clock
		before := e.srv.Stats()
		for range 3 {
			e.wantEcho(e.call(http.MethodGet, company, nil), company, nil)
		}
		if d := e.since(before); d.TokenCalls != 1 || d.APICalls != 3 || d.APIUnauthorized != 0 {
			t.Fatalf("token calls %d, upstream calls %d (%d unauthorized); want 1, 3, 0", d.TokenCalls, d.APICalls, d.APIUnauthorized)
		}
	})
}
