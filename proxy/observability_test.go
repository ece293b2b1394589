package proxy_test

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/redact"
)

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// storeOutage fails every read of one company, as an unreachable database would.
type storeOutage struct {
	credentials.Store
	company string
}

func (s storeOutage) Get(ctx context.Context, id string) (credentials.Credential, error) {
	if id == s.company {
		return credentials.Credential{}, errors.New("connection refused")
	}
	return s.Store.Get(ctx, id)
}

// TestObservabilityEveryPath drives traffic through every path — success, refresh, retry,
// every problem code — with debug logging through the redacting handler, then checks that the
// metrics moved as documented, that no label carries a company id, and that no secret reached
// the log in any form.
func TestObservabilityEveryPath(t *testing.T) {
	var (
		expired   = oaCompany(101) // refreshed before use
		revoked   = oaCompany(102) // 401, refresh, retry
		rejected  = oaCompany(103) // invalid_grant
		endpoint  = oaCompany(104) // token endpoint down, token expired
		keyCo     = oaCompany(105) // API key the upstream refuses: retry failed
		keyExpCo  = oaCompany(106) // API key past expires_at
		outage    = oaCompany(107) // store unreadable
		apiKey    = "api-key-never-logged-0001"
		oldKey    = "api-key-expired-never-logged-0002"
		logs      syncBuffer
		reg       = prometheus.NewRegistry()
		m         = metrics.New(reg)
		secrets   = redact.NewSet(1000)
		logger    = slog.New(redact.NewHandler(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}), secrets))
		clientTok = "client-token-never-logged"
	)
	e := newOAuthEnv(t, oaConfig{
		store:  func(mem *credentials.MemoryStore) credentials.Store { return storeOutage{mem, outage} },
		broker: func(o *credentials.BrokerOptions) { o.Metrics, o.Logger, o.Secrets = m, logger, secrets },
		proxy:  func(o *proxy.Options) { o.Metrics, o.Logger = m, logger },
	})
	secrets.AddPermanent(e.srv.ClientSecret(), clientTok)
	toks := e.seed(time.Hour, revoked, endpoint)
	toks2 := e.seed(-time.Minute, expired)
	bad := e.oauthCred(rejected, toks2[expired], -time.Minute) // a refresh token about to be spent
	e.put(bad)
	e.put(credentials.Credential{CompanyID: keyCo, Type: credentials.IntegratedAPIKey, APIKey: credentials.Secret(apiKey)},
		credentials.Credential{CompanyID: keyExpCo, Type: credentials.StandaloneAPIKey, APIKey: credentials.Secret(oldKey), ExpiresAt: oaEpoch.Add(-time.Hour)},
		credentials.Credential{CompanyID: outage, Type: credentials.IntegratedAPIKey, APIKey: "outage-key-never-logged"})

	want := func(company string, status int) oaReply {
		t.Helper()
		r := e.call("POST", company, &oaBody{data: []byte(`{"q":1}`)})
		if r.status != status {
			t.Fatalf("%s: status %d, want %d: %s", company, r.status, status, r.body)
		}
		return r
	}
	want(expired, 200) // refresh (expiry, success), then 200
	e.srv.RevokeAccessTokens(revoked)
	want(revoked, 200)                                                        // 401, refresh (unauthorized, success), retry succeeded
	if c := want(rejected, 401).problem(t); c != "reauthorization_required" { // the token was spent by `expired`
		t.Fatalf("rejected: %s", c)
	}
	e.put(e.oauthCred(endpoint, toks[endpoint], -time.Second))
	e.srv.SetTokenFailure(503)
	if c := want(endpoint, 502).problem(t); c != "token_endpoint_error" {
		t.Fatalf("endpoint: %s", c)
	}
	e.srv.SetTokenFailure(0)
	want(keyCo, 401) // unchanged key: the upstream's 401, retry failed
	if c := want(keyExpCo, 401).problem(t); c != "credential_expired" {
		t.Fatal(c)
	}
	if c := want(outage, 503).problem(t); c != "store_unavailable" {
		t.Fatal(c)
	}

	// Selection problems and methods, through raw requests.
	raw := func(method, target string, header map[string]string) int {
		req, _ := http.NewRequest(method, e.proxy.URL+target, nil)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		method, target string
		header         map[string]string
		status         int
	}{
		{"GET", "/v1/x", nil, 400}, // company_missing
		{"GET", "/v1/x", map[string]string{"X-Pleo-Company-Id": "acme"}, 400},                                                           // company_invalid
		{"GET", "/v1/x?company_id=" + keyCo, map[string]string{"X-Pleo-Company-Id": expired}, 400},                                      // company_mismatch
		{"GET", "/v1/x", map[string]string{"X-Pleo-Company-Id": oaCompany(999)}, 403},                                                   // company_unknown
		{"TRACE", "/v1/x", map[string]string{"X-Pleo-Company-Id": expired}, 405},                                                        // method_not_allowed
		{"GET", "/v1/x", map[string]string{"X-Pleo-Company-Id": expired, "Upgrade": "websocket"}, 501},                                  // upgrade_not_supported
		{"GET", "/v1/x", map[string]string{"X-Pleo-Company-Id": expired, "X-Big": strings.Repeat("a", proxy.MaxRequestHeadBytes)}, 431}, // request_header_too_large
	} {
		if got := raw(c.method, c.target, c.header); got != c.status {
			t.Fatalf("%s %s: %d, want %d", c.method, c.target, got, c.status)
		}
	}

	// Upstream failures and client authentication, through handlers sharing the metrics.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL, _ := url.Parse("http://" + dead.Addr().String())
	dead.Close()
	block := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }))
	defer slow.Close()
	defer close(block)
	slowURL, _ := url.Parse(slow.URL)
	for _, c := range []struct {
		upstream *url.URL
		tokens   []credentials.Secret
		auth     string
		status   int
	}{
		{deadURL, nil, "", 502},
		{slowURL, nil, "", 504},
		{deadURL, []credentials.Secret{credentials.Secret(clientTok)}, "Bearer wrong-" + clientTok, 407},
	} {
		h, err := proxy.New(proxy.Options{Upstream: c.upstream, Authorizer: e.broker, Tenants: e.broker, Metrics: m, Logger: logger,
			ClientTokens: c.tokens, Transport: proxy.NewUpstreamTransport(200*time.Millisecond, proxy.DefaultMaxConns)})
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/v1/x", nil)
		req.Header.Set("X-Pleo-Company-Id", expired)
		if c.auth != "" {
			req.Header.Set("Proxy-Authorization", c.auth)
		}
		h.ServeHTTP(rec, req)
		if rec.Code != c.status {
			t.Fatalf("upstream %s: %d, want %d", c.upstream, rec.Code, c.status)
		}
	}

	// Every problem code was counted once.
	counts := gatherCounts(t, reg)
	for _, code := range proxy.Codes() {
		if got := counts[`pleo_proxy_errors_total{code="`+string(code)+`"}`]; got != 1 {
			t.Errorf("pleo_proxy_errors_total{code=%q} = %v, want 1", code, got)
		}
	}
	for series, min := range map[string]float64{
		`pleo_proxy_token_refreshes_total{result="success",trigger="expiry"}`:                      1,
		`pleo_proxy_token_refreshes_total{result="success",trigger="unauthorized"}`:                1,
		`pleo_proxy_token_refreshes_total{result="invalid_grant",trigger="expiry"}`:                1,
		`pleo_proxy_token_refreshes_total{result="error",trigger="expiry"}`:                        1,
		`pleo_proxy_auth_retries_total{result="succeeded"}`:                                        1,
		`pleo_proxy_auth_retries_total{result="failed"}`:                                           1,
		`pleo_proxy_upstream_requests_total{code="401"}`:                                           2,
		`pleo_proxy_upstream_requests_total{code="200"}`:                                           2,
		`pleo_proxy_requests_total{code="200",credential_type="oauth2",method="POST"}`:             2,
		`pleo_proxy_requests_total{code="400",credential_type="none",method="GET"}`:                3,
		`pleo_proxy_requests_total{code="401",credential_type="integrated_api_key",method="POST"}`: 1,
		`pleo_proxy_credential_cache_lookups_total{result="miss"}`:                                 1,
	} {
		if counts[series] < min {
			t.Errorf("%s = %v, want at least %v", series, counts[series], min)
		}
	}

	// No label value is a company id.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			for _, l := range mm.GetLabel() {
				if credentials.ValidCompanyID(l.GetValue()) {
					t.Fatalf("%s has a company id in label %s", mf.GetName(), l.GetName())
				}
			}
		}
	}

	// No secret in the log, in any form: every token ever issued or stored, the keys, the
	// client secret and the client token, raw, as a Basic credential and in base64.
	var values []string
	for _, tok := range toks {
		values = append(values, tok.AccessToken, tok.RefreshToken)
	}
	for _, tok := range toks2 {
		values = append(values, tok.AccessToken, tok.RefreshToken)
	}
	for _, id := range []string{expired, revoked, rejected, endpoint} {
		c := e.stored(id)
		values = append(values, c.AccessToken.Reveal(), c.RefreshToken.Reveal())
	}
	values = append(values, apiKey, oldKey, "outage-key-never-logged", e.srv.ClientSecret(), clientTok)
	out := logs.String()
	if !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "refreshing token") {
		t.Fatalf("no debug logs of refresh decisions:\n%s", out)
	}
	for _, v := range values {
		for _, form := range []string{v, base64.StdEncoding.EncodeToString([]byte(v + ":")), base64.StdEncoding.EncodeToString([]byte(v))} {
			if form != "" && strings.Contains(out, form) {
				t.Fatalf("a secret reached the log:\n%s", out)
			}
		}
	}
}

// gatherCounts flattens every counter into "name{labels}" → value.
func gatherCounts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			if mm.GetCounter() == nil {
				continue
			}
			var parts []string
			for _, l := range mm.GetLabel() {
				parts = append(parts, l.GetName()+`="`+l.GetValue()+`"`)
			}
			out[mf.GetName()+"{"+strings.Join(parts, ",")+"}"] = mm.GetCounter().GetValue()
		}
	}
	return out
}
