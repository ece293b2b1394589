package connect

// The consent flow end to end: a browser (an http.Client with a cookie jar that follows
// redirects) -> the connect handler -> the strict fosite server of internal/oauthtest
// (authorisation code + PKCE S256, client_secret_basic, exact redirect URIs, automatic
// consent) and its resource server (GET /v1/installations/me) -> a MemoryStore -> a Broker
// and the real proxy handler, which then sends a request with the new credential.

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

type env struct {
	t       *testing.T
	as      *oauthtest.Server
	store   *credentials.MemoryStore
	h       *Handler
	srv     *httptest.Server // the connect listener
	clock   *testenv.Clock
	reg     *prometheus.Registry
	broker  *credentials.Broker
	proxy   *httptest.Server
	logs    *bytes.Buffer
	logMu   *sync.Mutex
	options Options
}

const (
	companyA = "c0ffee00-0000-4000-8000-00000000000a"
	companyB = "c0ffee00-0000-4000-8000-00000000000b"
)

var testScopes = []string{"export-jobs:read", "export-items:read"}

func newEnv(t *testing.T, adjust ...func(*Options)) *env {
	t.Helper()
	e := &env{t: t, store: credentials.NewMemoryStore(), clock: testenv.NewClock(time.Now()),
		reg: prometheus.NewRegistry(), logs: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	var handler http.Handler
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler.ServeHTTP(w, r) }))
	t.Cleanup(e.srv.Close)
	redirect := e.srv.URL + "/callback"
	e.as = oauthtest.NewServer(t, oauthtest.Options{RedirectURIs: []string{redirect}})
	e.as.SetConsent(oauthtest.Consent{CompanyID: companyA})
	e.options = Options{
		ClientID:     e.as.ClientID(),
		ClientSecret: credentials.Secret(e.as.ClientSecret()),
		AuthorizeURL: mustURL(t, e.as.AuthorizeURL()),
		TokenURL:     mustURL(t, e.as.TokenURL()),
		RedirectURL:  mustURL(t, redirect),
		Scopes:       testScopes,
		Upstream:     mustURL(t, e.as.URL()),
		Store:        e.store,
		StateKeys:    [][]byte{bytes.Repeat([]byte{7}, 32)},
		Links:        mustLinks(t, e.clock, testLinkKey),
		Now:          e.clock.Now,
		Logger:       slog.New(slog.NewTextHandler(lockedWriter{e.logMu, e.logs}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics:      metrics.New(e.reg),
	}
	for _, a := range adjust {
		a(&e.options)
	}
	h, err := New(e.options)
	if err != nil {
		t.Fatal(err)
	}
	e.h, handler = h, h

	b, err := credentials.NewBroker(credentials.BrokerOptions{
		Store: e.store,
		OAuth: credentials.OAuthClient{ClientID: e.as.ClientID(), ClientSecret: credentials.Secret(e.as.ClientSecret()), TokenURL: e.as.TokenURL()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	e.broker = b
	tr := proxy.NewUpstreamTransport(10*time.Second, proxy.DefaultMaxConns)
	t.Cleanup(tr.CloseIdleConnections)
	p, err := proxy.New(proxy.Options{Upstream: mustURL(t, e.as.URL()), Authorizer: b, Tenants: b, MaxReplayBytes: 1 << 20, Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	e.proxy = httptest.NewServer(p)
	t.Cleanup(e.proxy.Close)
	return e
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (e *env) log() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logs.String()
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// browser is a client with a cookie jar that follows redirects, like a person's browser.
func newBrowser(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar}
}

type result struct {
	status int
	header http.Header
	body   string
	url    *url.URL // the last URL requested
}

func get(t *testing.T, c *http.Client, u string) result {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return result{resp.StatusCode, resp.Header, string(body), resp.Request.URL}
}

// testLinkKey signs the links of every env.
var testLinkKey = bytes.Repeat([]byte{9}, 32)

func mustLinks(t *testing.T, clock *testenv.Clock, keys ...[]byte) *Links {
	t.Helper()
	l, err := NewLinks(keys, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// connectURL is a link for tenant on the env's connect listener: signed when the handler
// takes signed links (and tenant is one a link may carry), else the unsigned form.
func (e *env) connectURL(tenant string) string {
	if e.options.Links != nil {
		if raw, _, err := e.options.Links.URL(mustURL(e.t, e.srv.URL), tenant, time.Hour); err == nil {
			return raw
		}
	}
	return e.unsignedURL(tenant)
}

func (e *env) unsignedURL(tenant string) string {
	return e.srv.URL + "/connect?" + url.Values{"tenant_id": {tenant}}.Encode()
}

// untilCallback runs the flow in browser up to, not including, the callback and returns the
// callback URL Pleo redirected to (with code and state).
func (e *env) untilCallback(browser *http.Client, tenant string) *url.URL {
	e.t.Helper()
	c := *browser
	var callback *url.URL
	c.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		if req.URL.Path == "/callback" {
			callback = req.URL
			return http.ErrUseLastResponse
		}
		return nil
	}
	r := get(e.t, &c, e.connectURL(tenant))
	if callback == nil {
		e.t.Fatalf("the flow did not reach the callback: %d %s", r.status, r.body)
	}
	return callback
}

func (e *env) proxied(tenant string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.proxy.URL+"/v1/export-jobs", nil)
	req.Header.Set("X-Tenant-Id", tenant)
	resp, err := e.proxy.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func (e *env) stored() []credentials.Credential {
	e.t.Helper()
	list, err := e.store.List(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return list
}

// counter returns a counter's value from the registry, 0 when absent.
func (e *env) counter(name, label, value string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func (e *env) connects(result string) float64 {
	return e.counter("pleo_proxy_connects_total", "result", result)
}

func (e *env) failures(reason string) float64 {
	return e.counter("pleo_proxy_connect_failures_total", "reason", reason)
}

func TestConnectEndToEnd(t *testing.T) {
	e := newEnv(t)
	browser := newBrowser(t)
	r := get(t, browser, e.connectURL("erp-tenant-42"))
	if r.status != http.StatusOK || r.url.Path != "/callback" {
		t.Fatalf("flow ended at %s with %d: %s", r.url, r.status, r.body)
	}
	for _, want := range []string{"Connected", "erp-tenant-42", companyA} {
		if !strings.Contains(r.body, want) {
			t.Errorf("result page lacks %q: %s", want, r.body)
		}
	}
	checkPageHeaders(t, r.header)

	list := e.stored()
	if len(list) != 1 {
		t.Fatalf("stored %d credentials, want 1", len(list))
	}
	c := list[0]
	if c.CompanyID != companyA || c.TenantID != "erp-tenant-42" || c.Type != credentials.OAuth2 ||
		c.State != credentials.StateActive || c.AccessToken.IsZero() || c.RefreshToken.IsZero() ||
		!c.ExpiresAt.After(time.Now()) || c.LastRefreshedAt.IsZero() {
		t.Fatalf("stored %+v (state %s, tenant %s)", c, c.State, c.TenantID)
	}
	if s := e.as.Stats(); s.CodeExchanges != 1 || s.InvalidGrants != 0 {
		t.Fatalf("authorisation server stats %+v", s)
	}

	// The sidecar now sends requests for that tenant with the new credential.
	status, echo := e.proxied("erp-tenant-42")
	if status != http.StatusOK || echo["company_id"] != companyA {
		t.Fatalf("proxied request: %d %v", status, echo)
	}

	if e.connects("started") != 1 || e.connects("completed") != 1 || e.connects("failed") != 0 {
		t.Fatalf("connect metrics: started %v completed %v failed %v", e.connects("started"), e.connects("completed"), e.connects("failed"))
	}
	logs := e.log()
	for _, secret := range []string{c.AccessToken.Reveal(), c.RefreshToken.Reveal(), e.as.ClientSecret()} {
		if strings.Contains(logs, secret) {
			t.Fatal("a secret reached the log")
		}
	}
	if !strings.Contains(logs, "consent flow completed") {
		t.Fatalf("no completion logged: %s", logs)
	}
}

// With a success URL, a completed flow sends the browser there (303) naming tenant and
// company; a failed one still shows its page and never reaches it.
func TestConnectSuccessURL(t *testing.T) {
	var arrived []*url.URL
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived = append(arrived, r.URL)
		io.WriteString(w, "welcome back")
	}))
	t.Cleanup(app.Close)
	e := newEnv(t, func(o *Options) { o.SuccessURL = mustURL(t, app.URL+"/pleo/connected") })

	browser := newBrowser(t)
	var hops []int
	browser.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		hops = append(hops, req.Response.StatusCode)
		return nil
	}
	r := get(t, browser, e.connectURL("erp-tenant-7"))
	if r.status != http.StatusOK || r.body != "welcome back" || len(arrived) != 1 {
		t.Fatalf("flow ended at %s with %d %q; the app saw %v", r.url, r.status, r.body, arrived)
	}
	if got := arrived[0]; got.Path != "/pleo/connected" || got.Query().Get("tenant_id") != "erp-tenant-7" || got.Query().Get("company_id") != companyA {
		t.Fatalf("success URL reached as %s", got)
	}
	if hops[len(hops)-1] != http.StatusSeeOther {
		t.Fatalf("last redirect was %d, want 303 (redirects: %v)", hops[len(hops)-1], hops)
	}
	if len(e.stored()) != 1 || e.connects("completed") != 1 {
		t.Fatalf("stored %d, completed %v", len(e.stored()), e.connects("completed"))
	}

	// A replayed callback fails with its page and does not go to the success URL.
	cb := e.untilCallback(newBrowser(t), "erp-tenant-8")
	fresh := newBrowser(t)
	if r := get(t, fresh, cb.String()); r.status != http.StatusBadRequest || len(arrived) != 1 {
		t.Fatalf("callback from another browser: %d, app saw %d requests", r.status, len(arrived))
	}
}

// A reconnect replaces the company's credential, clears reauthorization_required, and the
// broker stops answering from its cached (rejected) credential at once.
func TestReconnectReplacesRejectedCredential(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	old := credentials.Credential{CompanyID: companyA, TenantID: "erp-1", Type: credentials.OAuth2,
		RefreshToken: "refresh-token-the-server-never-issued"}
	if err := e.store.PutAll(ctx, []credentials.Credential{old}, false); err != nil {
		t.Fatal(err)
	}
	// The first request refreshes with an unknown token: invalid_grant, so the credential
	// becomes reauthorization_required and the broker caches that verdict.
	if status, m := e.proxied("erp-1"); status != http.StatusUnauthorized || m["code"] != "reauthorization_required" {
		t.Fatalf("before reconnect: %d %v", status, m)
	}
	if c, _ := e.store.Get(ctx, companyA); c.State != credentials.StateReauthorizationRequired {
		t.Fatalf("state before reconnect %q", c.State)
	}
	before, _ := e.store.Get(ctx, companyA)

	if r := get(t, newBrowser(t), e.connectURL("erp-1")); r.status != http.StatusOK {
		t.Fatalf("reconnect: %d %s", r.status, r.body)
	}
	c, err := e.store.Get(ctx, companyA)
	if err != nil {
		t.Fatal(err)
	}
	if c.State != credentials.StateActive || c.LastError != "" || c.Version <= before.Version || c.RefreshToken == old.RefreshToken {
		t.Fatalf("after reconnect: state %q, last error %q, version %d (was %d)", c.State, c.LastError, c.Version, before.Version)
	}
	if status, m := e.proxied("erp-1"); status != http.StatusOK || m["company_id"] != companyA {
		t.Fatalf("after reconnect: %d %v", status, m)
	}
	if got := len(e.stored()); got != 1 {
		t.Fatalf("%d credentials stored, want 1", got)
	}
}

// The redirect to the authorisation endpoint carries exactly the contract's parameters.
func TestConnectRedirect(t *testing.T) {
	e := newEnv(t)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(e.connectURL("t-1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("status %d", resp.StatusCode)
	}
	loc := mustURL(t, resp.Header.Get("Location"))
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != e.as.AuthorizeURL() {
		t.Fatalf("redirect to %s", got)
	}
	q := loc.Query()
	want := map[string]string{
		"response_type":         "code",
		"client_id":             e.as.ClientID(),
		"redirect_uri":          e.srv.URL + "/callback",
		"scope":                 "export-jobs:read export-items:read",
		"code_challenge_method": "S256",
	}
	for k, v := range want {
		if q.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, q.Get(k), v)
		}
	}
	if len(q.Get("code_challenge")) != 43 || len(q.Get("state")) < 80 {
		t.Errorf("code_challenge %q, state %q", q.Get("code_challenge"), q.Get("state"))
	}
	if len(q) != len(want)+2 {
		t.Errorf("unexpected parameters: %v", q)
	}
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == CookieName {
			cookie = ck
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.Path != "/" || cookie.MaxAge != 600 || cookie.SameSite != http.SameSiteLaxMode || len(cookie.Value) != 32 {
		t.Fatalf("binding cookie %+v", cookie)
	}
	if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("headers %v", resp.Header)
	}
	// Two flows never share a state or a verifier.
	resp2, err := c.Get(e.connectURL("t-1"))
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	q2 := mustURL(t, resp2.Header.Get("Location")).Query()
	if q2.Get("state") == q.Get("state") || q2.Get("code_challenge") == q.Get("code_challenge") {
		t.Fatal("two flows share a state or a challenge")
	}
	if e.connects("started") != 2 {
		t.Fatalf("started = %v", e.connects("started"))
	}
}

// With unsigned links allowed, the tenant comes from the query and is checked.
func TestConnectRefusesBadStart(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.UnsignedLinks = true })
	for name, target := range map[string]string{
		"no tenant":       "/connect",
		"empty tenant":    "/connect?tenant_id=",
		"two tenants":     "/connect?tenant_id=a&tenant_id=b",
		"control char":    "/connect?tenant_id=a%0Ab",
		"too long":        "/connect?tenant_id=" + strings.Repeat("x", 257),
		"invalid utf-8":   "/connect?tenant_id=%ff%fe",
		"malformed query": "/connect?tenant_id=%zz",
	} {
		t.Run(name, func(t *testing.T) {
			r := get(t, e.srv.Client(), e.srv.URL+target)
			if r.status != http.StatusBadRequest || !strings.Contains(r.body, "Cannot connect") {
				t.Fatalf("%d %s", r.status, r.body)
			}
			checkPageHeaders(t, r.header)
		})
	}
	if r := get(t, e.srv.Client(), e.srv.URL+"/elsewhere"); r.status != http.StatusNotFound {
		t.Fatalf("unknown path: %d", r.status)
	}
	resp, err := e.srv.Client().Post(e.srv.URL+"/connect?tenant_id=a", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	if e.connects("started") != 0 {
		t.Fatal("a refused start counted as started")
	}
}

// Every bad state is refused with a page saying why, before any code is exchanged, and
// nothing is stored.
func TestCallbackRefusesBadStates(t *testing.T) {
	type tc struct {
		name string
		// callback returns the URL to send and the client to send it with.
		callback func(e *env) (string, *http.Client)
		want     string // on the page
		status   int
	}
	cases := []tc{
		{name: "forged random state", want: "not valid", status: 400, callback: func(e *env) (string, *http.Client) {
			b := newBrowser(e.t)
			cb := e.untilCallback(b, "t-1")
			return withQuery(cb, func(q url.Values) {
				q.Set("state", "bm90LWEtcmVhbC1zdGF0ZS1ub3QtYS1yZWFsLXN0YXRlLW5vdC1hLXJlYWwtc3RhdGU")
			}), b
		}},
		{name: "tampered state", want: "not valid", status: 400, callback: func(e *env) (string, *http.Client) {
			b := newBrowser(e.t)
			cb := e.untilCallback(b, "t-1")
			return withQuery(cb, func(q url.Values) {
				s := []byte(q.Get("state"))
				s[len(s)/2] ^= 1
				if s[len(s)/2] == '-' || s[len(s)/2] == '_' {
					s[len(s)/2] = 'A'
				}
				q.Set("state", string(s))
			}), b
		}},
		{name: "state sealed under another key", want: "not valid", status: 400, callback: func(e *env) (string, *http.Client) {
			other, err := newSealer([][]byte{bytes.Repeat([]byte{8}, 32)}, "pleo-auth-proxy/connect-state\x00"+e.as.ClientID()+"\x00"+e.srv.URL+"/callback")
			if err != nil {
				e.t.Fatal(err)
			}
			b := newBrowser(e.t)
			cb := e.untilCallback(b, "t-1")
			st, err := e.h.sealer.open(cb.Query().Get("state"))
			if err != nil {
				e.t.Fatal(err)
			}
			return withState(e.t, cb, other, st), b
		}},
		{name: "no state", want: "not valid", status: 400, callback: func(e *env) (string, *http.Client) {
			b := newBrowser(e.t)
			cb := e.untilCallback(b, "t-1")
			return withQuery(cb, func(q url.Values) { q.Del("state") }), b
		}},
		{name: "expired", want: "expired", status: 400, callback: func(e *env) (string, *http.Client) {
			b := newBrowser(e.t)
			cb := e.untilCallback(b, "t-1")
			e.clock.Advance(StateTTL + time.Second)
			return cb.String(), b
		}},
		{name: "issued in the future", want: "not valid", status: 400, callback: func(e *env) (string, *http.Client) {
			b := newBrowser(e.t)
			cb := e.untilCallback(b, "t-1")
			st, _ := e.h.sealer.open(cb.Query().Get("state"))
			st.IssuedAt = st.IssuedAt.Add(time.Hour)
			return withState(e.t, cb, e.h.sealer, st), b
		}},
		{name: "callback names another tenant", want: "not valid", status: 400, callback: func(e *env) (string, *http.Client) {
			b := newBrowser(e.t)
			cb := e.untilCallback(b, "tenant-a")
			return withQuery(cb, func(q url.Values) { q.Set("tenant_id", "tenant-b") }), b
		}},
		{name: "another browser's state (consent phishing)", want: "another browser", status: 400, callback: func(e *env) (string, *http.Client) {
			// The attacker starts a flow for their tenant and has the victim consent; the
			// victim's browser, which started its own flow for its tenant, lands on the
			// attacker's callback URL.
			attacker := newBrowser(e.t)
			cb := e.untilCallback(attacker, "attacker-tenant")
			victim := newBrowser(e.t)
			e.untilCallback(victim, "victim-tenant")
			return cb.String(), victim
		}},
		{name: "no binding cookie", want: "another browser", status: 400, callback: func(e *env) (string, *http.Client) {
			cb := e.untilCallback(newBrowser(e.t), "t-1")
			return cb.String(), e.srv.Client() // no cookie jar
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			target, client := c.callback(e)
			r := get(t, client, target)
			if r.status != c.status || !strings.Contains(r.body, c.want) {
				t.Fatalf("%d, want %d with %q: %s", r.status, c.status, c.want, r.body)
			}
			checkPageHeaders(t, r.header)
			if n := len(e.stored()); n != 0 {
				t.Fatalf("%d credentials stored", n)
			}
			if s := e.as.Stats(); s.CodeExchanges != 0 {
				t.Fatalf("a code was exchanged: %+v", s)
			}
			if e.failures("invalid_state") != 1 || e.connects("failed") != 1 || e.connects("completed") != 0 {
				t.Fatalf("metrics: invalid_state %v failed %v", e.failures("invalid_state"), e.connects("failed"))
			}
		})
	}
}

// withState returns cb with its state replaced by st sealed with s.
func withState(t *testing.T, cb *url.URL, s *sealer, st flowState) string {
	t.Helper()
	sealed, err := s.seal(st)
	if err != nil {
		t.Fatal(err)
	}
	return withQuery(cb, func(q url.Values) { q.Set("state", sealed) })
}

// withQuery returns u with its query changed by edit (u itself is left as it is).
func withQuery(u *url.URL, edit func(url.Values)) string {
	v := *u
	q := v.Query()
	edit(q)
	v.RawQuery = q.Encode()
	return v.String()
}

// A replayed callback (the same URL again, in the same browser) is refused and stores
// nothing more; its code is not presented twice.
func TestCallbackRefusesReplay(t *testing.T) {
	e := newEnv(t)
	b := newBrowser(t)
	cb := e.untilCallback(b, "t-1")
	if r := get(t, b, cb.String()); r.status != http.StatusOK {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	first, _ := e.store.Get(context.Background(), companyA)
	r := get(t, b, cb.String())
	if r.status != http.StatusBadRequest || !strings.Contains(r.body, "already used") {
		t.Fatalf("replay: %d %s", r.status, r.body)
	}
	after, _ := e.store.Get(context.Background(), companyA)
	if after.Version != first.Version || after.RefreshToken != first.RefreshToken {
		t.Fatal("the replay changed the stored credential")
	}
	if s := e.as.Stats(); s.CodeExchanges != 1 {
		t.Fatalf("code exchanges %d, want 1", s.CodeExchanges)
	}
	if e.failures("invalid_state") != 1 || e.connects("completed") != 1 {
		t.Fatal("metrics did not move")
	}
}

// A state whose verifier does not match the challenge sent: the authorisation server
// refuses the exchange (PKCE), and nothing is stored.
func TestWrongVerifierRefusedByServer(t *testing.T) {
	e := newEnv(t)
	b := newBrowser(t)
	cb := e.untilCallback(b, "t-1")
	st, err := e.h.sealer.open(cb.Query().Get("state"))
	if err != nil {
		t.Fatal(err)
	}
	st.Verifier = strings.Repeat("w", 43) // valid syntax, wrong value
	r := get(t, b, withState(t, cb, e.h.sealer, st))
	if r.status != http.StatusBadRequest || !strings.Contains(r.body, "did not accept") || !strings.Contains(r.body, "invalid_grant") {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if n := len(e.stored()); n != 0 {
		t.Fatalf("%d credentials stored", n)
	}
	if s := e.as.Stats(); s.CodeExchanges != 1 || s.InvalidGrants != 1 {
		t.Fatalf("stats %+v", s)
	}
	if e.failures("exchange_failed") != 1 {
		t.Fatal("exchange_failed not counted")
	}
}

func TestAccessDenied(t *testing.T) {
	e := newEnv(t)
	e.as.SetConsent(oauthtest.Consent{Deny: true})
	r := get(t, newBrowser(t), e.connectURL("t-1"))
	if r.status != http.StatusBadRequest || !strings.Contains(r.body, "Access denied") || !strings.Contains(r.body, "access_denied") {
		t.Fatalf("%d %s", r.status, r.body)
	}
	checkPageHeaders(t, r.header)
	if n := len(e.stored()); n != 0 {
		t.Fatalf("%d credentials stored", n)
	}
	if e.failures("access_denied") != 1 || e.connects("failed") != 1 || e.as.Stats().CodeExchanges != 0 {
		t.Fatal("metrics or exchanges wrong")
	}
}

// Everything a page echoes is escaped: a hostile tenant id, error and description.
func TestPagesEscape(t *testing.T) {
	const hostile = `<script>alert(1)</script>"'&<img src=x onerror=alert(2)>`
	e := newEnv(t)

	// Success page with a hostile tenant id.
	r := get(t, newBrowser(t), e.connectURL(hostile))
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	assertEscaped(t, r.body, hostile)
	if c, _ := e.store.Get(context.Background(), companyA); c.TenantID != hostile {
		t.Fatalf("tenant stored as %q", c.TenantID)
	}

	// Error page with a hostile error and description, on a valid state.
	b := newBrowser(t)
	cb := e.untilCallback(b, hostile)
	r = get(t, b, withQuery(cb, func(q url.Values) {
		q.Del("code")
		q.Set("error", hostile)
		q.Set("error_description", hostile+strings.Repeat("x", 1000))
	}))
	if r.status != http.StatusBadRequest || !strings.Contains(r.body, "did not grant access") {
		t.Fatalf("%d %s", r.status, r.body)
	}
	assertEscaped(t, r.body, hostile)
	if strings.Contains(r.body, strings.Repeat("x", 400)) {
		t.Fatal("an echoed value was not truncated")
	}
	if e.failures("other") != 1 {
		t.Fatal("other error not counted")
	}

	// A refused start with a hostile (too long) tenant id.
	unsigned := newEnv(t, func(o *Options) { o.UnsignedLinks = true })
	r = get(t, unsigned.srv.Client(), unsigned.unsignedURL(hostile+strings.Repeat("y", 300)))
	if r.status != http.StatusBadRequest {
		t.Fatalf("%d", r.status)
	}
	assertEscaped(t, r.body, hostile)
}

func assertEscaped(t *testing.T, body, hostile string) {
	t.Helper()
	for _, raw := range []string{"<script", "<img", hostile} {
		if strings.Contains(body, raw) {
			t.Fatalf("page contains %q unescaped:\n%s", raw, body)
		}
	}
	if !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Fatalf("page does not show the escaped value:\n%s", body)
	}
}

func checkPageHeaders(t *testing.T, h http.Header) {
	t.Helper()
	want := map[string]string{
		"Cache-Control":           "no-store",
		"Content-Security-Policy": contentSecurityPolicy,
		"X-Content-Type-Options":  "nosniff",
		"X-Frame-Options":         "DENY",
		"Referrer-Policy":         "no-referrer",
	}
	for k, v := range want {
		if h.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, h.Get(k), v)
		}
	}
	if ct := h.Get("Content-Type"); ct != "" && ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if !strings.HasPrefix(contentSecurityPolicy, "default-src 'none'; style-src 'sha256-") || strings.Contains(contentSecurityPolicy, "unsafe") {
		t.Errorf("CSP %q is not strict", contentSecurityPolicy)
	}
}

// The page's one style matches the hash the CSP allows.
func TestStyleMatchesCSP(t *testing.T) {
	rec := httptest.NewRecorder()
	writePage(rec, 200, page{Title: "x"})
	body := rec.Body.String()
	start, end := strings.Index(body, "<style>"), strings.Index(body, "</style>")
	if start < 0 || end < 0 || body[start+len("<style>"):end] != pageStyle {
		t.Fatalf("style block differs from pageStyle: %s", body)
	}
}

// A tenant already connected to another company is not taken over.
func TestTenantOfAnotherCompanyIsRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.store.PutAll(ctx, []credentials.Credential{{CompanyID: companyB, TenantID: "erp-1", Type: credentials.IntegratedAPIKey, APIKey: "key-b"}}, false); err != nil {
		t.Fatal(err)
	}
	r := get(t, newBrowser(t), e.connectURL("erp-1"))
	if r.status != http.StatusConflict || !strings.Contains(r.body, "already connected to another Pleo company") || strings.Contains(r.body, companyB) {
		t.Fatalf("%d %s", r.status, r.body)
	}
	list := e.stored()
	if len(list) != 1 || list[0].CompanyID != companyB {
		t.Fatalf("store changed: %v", list)
	}
	if e.failures("tenant_conflict") != 1 || e.connects("failed") != 1 {
		t.Fatal("tenant_conflict not counted")
	}
	if !strings.Contains(e.log(), "level=ERROR") {
		t.Fatalf("conflict not logged at error level: %s", e.log())
	}
}

// The token endpoint or the upstream failing: a clear page, nothing stored.
func TestCallbackUpstreamFailures(t *testing.T) {
	t.Run("token endpoint down", func(t *testing.T) {
		e := newEnv(t)
		e.as.SetTokenFailure(http.StatusServiceUnavailable)
		r := get(t, newBrowser(t), e.connectURL("t-1"))
		if r.status != http.StatusBadGateway || !strings.Contains(r.body, "could not be reached or failed") {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if len(e.stored()) != 0 || e.failures("exchange_failed") != 1 {
			t.Fatal("stored, or not counted")
		}
	})
	t.Run("installations/me fails", func(t *testing.T) {
		broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "no", http.StatusInternalServerError)
		}))
		t.Cleanup(broken.Close)
		e := newEnv(t, func(o *Options) { o.Upstream = mustURL(t, broken.URL) })
		r := get(t, newBrowser(t), e.connectURL("t-1"))
		if r.status != http.StatusBadGateway || !strings.Contains(r.body, "did not say which company") {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if len(e.stored()) != 0 || e.failures("company_lookup_failed") != 1 {
			t.Fatal("stored, or not counted")
		}
	})
}

// Two browsers' flows run in parallel, and one browser may run two (two tabs).
func TestParallelFlows(t *testing.T) {
	e := newEnv(t)
	b := newBrowser(t)
	cb1 := e.untilCallback(b, "tab-1")
	e.as.SetConsent(oauthtest.Consent{CompanyID: companyB})
	cb2 := e.untilCallback(b, "tab-2")
	for _, cb := range []*url.URL{cb2, cb1} {
		if r := get(t, b, cb.String()); r.status != http.StatusOK {
			t.Fatalf("%s: %d %s", cb.Path, r.status, r.body)
		}
	}
	if a, _ := e.store.Get(context.Background(), companyA); a.TenantID != "tab-1" {
		t.Fatalf("company A tenant %q", a.TenantID)
	}
	if bb, _ := e.store.Get(context.Background(), companyB); bb.TenantID != "tab-2" {
		t.Fatalf("company B tenant %q", bb.TenantID)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	e := newEnv(t)
	for name, adjust := range map[string]func(*Options){
		"no client":         func(o *Options) { o.ClientID = "" },
		"no secret":         func(o *Options) { o.ClientSecret = "" },
		"no redirect":       func(o *Options) { o.RedirectURL = nil },
		"callback /connect": func(o *Options) { o.RedirectURL = mustURL(t, "http://127.0.0.1/connect") },
		"no store":          func(o *Options) { o.Store = nil },
		"no upstream":       func(o *Options) { o.Upstream = nil },
		"no token url":      func(o *Options) { o.TokenURL = nil },
		"no link signer":    func(o *Options) { o.Links = nil },
		"relative redirect": func(o *Options) { o.RedirectURL = mustURL(t, "/callback") },
	} {
		o := e.options
		adjust(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// With an HTTPS redirect URL the binding cookie is Secure.
func TestCookieSecureWithHTTPS(t *testing.T) {
	e := newEnv(t)
	o := e.options
	o.RedirectURL = mustURL(t, "https://connect.example.com/pleo/callback")
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	link, _, err := o.Links.URL(mustURL(t, "https://connect.example.com"), "t", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, link, nil))
	cookies := rec.Result().Cookies()
	if rec.Code != http.StatusFound || len(cookies) != 1 || !cookies[0].Secure || !cookies[0].HttpOnly {
		t.Fatalf("%d %+v", rec.Code, cookies)
	}
	loc := mustURL(t, rec.Header().Get("Location"))
	if loc.Query().Get("redirect_uri") != "https://connect.example.com/pleo/callback" {
		t.Fatalf("redirect_uri %q", loc.Query().Get("redirect_uri"))
	}
	// The callback path is the redirect URL's.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "https://connect.example.com/pleo/callback?state=x", nil))
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "not valid") {
		t.Fatalf("callback path: %d", rec.Code)
	}
}
