package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

const (
	companyA = "5a1c0000-0000-4000-8000-00000000000a" // integrated key, tenant-a
	companyB = "5a1c0000-0000-4000-8000-00000000000b" // standalone key, tenant-b
	companyX = "5a1c0000-0000-4000-8000-0000000000ee" // expired standalone key
	unknown  = "5a1c0000-0000-4000-8000-0000000000ff"
	keyA     = "key-a-secret"
	keyB     = "key-b-secret"
)

// seen is what the upstream received.
type seen struct {
	Method, Path, RawQuery, Host string
	Header                       http.Header
	Body                         string
}

type fixture struct {
	upstream *httptest.Server
	proxy    *httptest.Server
	store    *credentials.MemoryStore
	mu       sync.Mutex
	requests []seen
}

func (f *fixture) received() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.requests...)
}

func newFixture(t *testing.T, upstream http.HandlerFunc, mutate ...func(*proxy.Options)) *fixture {
	t.Helper()
	f := &fixture{store: credentials.NewMemoryStore()}
	f.upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.requests = append(f.requests, seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Host, r.Header.Clone(), string(body)})
		f.mu.Unlock()
		if upstream != nil {
			upstream(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "ok %s %s", r.Method, r.URL.Path)
	}))
	t.Cleanup(f.upstream.Close)
	err := f.store.PutAll(context.Background(), []credentials.Credential{
		{CompanyID: companyA, TenantID: "tenant-a", Type: credentials.IntegratedAPIKey, APIKey: keyA},
		{CompanyID: companyB, TenantID: "tenant-b", Type: credentials.StandaloneAPIKey, APIKey: keyB, ExpiresAt: time.Now().Add(time.Hour)},
		{CompanyID: companyX, Type: credentials.StandaloneAPIKey, APIKey: "key-x", ExpiresAt: time.Now().Add(-time.Hour)},
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	broker, err := credentials.NewBroker(credentials.BrokerOptions{Store: f.store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)
	u, _ := url.Parse(f.upstream.URL)
	opts := proxy.Options{Upstream: u, Authorizer: broker, Tenants: broker, MaxReplayBytes: 1 << 20}
	for _, m := range mutate {
		m(&opts)
	}
	h, err := proxy.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.proxy = httptest.NewServer(h)
	t.Cleanup(f.proxy.Close)
	return f
}

type problemDoc struct {
	Type, Title, Detail, Code, CompanyID, RequestID string
	Status                                          int
}

func decodeProblem(t *testing.T, resp *http.Response) problemDoc {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json", ct)
	}
	if ps := resp.Header.Get("Proxy-Status"); !strings.HasPrefix(ps, "pleo-auth-proxy;") {
		t.Fatalf("Proxy-Status = %q", ps)
	}
	var raw map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	p := problemDoc{}
	p.Type, _ = raw["type"].(string)
	p.Title, _ = raw["title"].(string)
	p.Detail, _ = raw["detail"].(string)
	p.Code, _ = raw["code"].(string)
	p.CompanyID, _ = raw["company_id"].(string)
	p.RequestID, _ = raw["request_id"].(string)
	if s, ok := raw["status"].(float64); ok {
		p.Status = int(s)
	}
	return p
}

func do(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestSelection(t *testing.T) {
	cases := []struct {
		name        string
		query       string
		header      map[string][]string
		defaultID   string
		wantStatus  int
		wantCode    string
		wantCompany string // whose key the upstream must see
	}{
		{name: "header", header: map[string][]string{"X-Pleo-Company-Id": {companyA}}, wantStatus: 200, wantCompany: companyA},
		{name: "header upper case", header: map[string][]string{"X-Pleo-Company-Id": {strings.ToUpper(companyA)}}, wantStatus: 200, wantCompany: companyA},
		{name: "query", query: "company_id=" + companyB, wantStatus: 200, wantCompany: companyB},
		{name: "tenant", header: map[string][]string{"X-Tenant-Id": {"tenant-b"}}, wantStatus: 200, wantCompany: companyB},
		{name: "default", defaultID: companyA, wantStatus: 200, wantCompany: companyA},
		{name: "header beats default", header: map[string][]string{"X-Pleo-Company-Id": {companyB}}, defaultID: companyA, wantStatus: 200, wantCompany: companyB},
		{name: "query beats default", query: "company_id=" + companyB, defaultID: companyA, wantStatus: 200, wantCompany: companyB},
		{name: "header and query agree", query: "company_id=" + companyA, header: map[string][]string{"X-Pleo-Company-Id": {companyA}}, wantStatus: 200, wantCompany: companyA},
		{name: "header and tenant agree", header: map[string][]string{"X-Pleo-Company-Id": {companyB}, "X-Tenant-Id": {"tenant-b"}}, wantStatus: 200, wantCompany: companyB},
		{name: "none", wantStatus: 400, wantCode: "company_missing"},
		{name: "header not a uuid", header: map[string][]string{"X-Pleo-Company-Id": {"acme"}}, wantStatus: 400, wantCode: "company_invalid"},
		{name: "header with path characters", header: map[string][]string{"X-Pleo-Company-Id": {"../../5a1c0000-0000-4000-8000"}}, wantStatus: 400, wantCode: "company_invalid"},
		{name: "query not a uuid", query: "company_id=acme", wantStatus: 400, wantCode: "company_invalid"},
		{name: "empty tenant", header: map[string][]string{"X-Tenant-Id": {""}}, wantStatus: 400, wantCode: "company_invalid"},
		{name: "header and query disagree", query: "company_id=" + companyB, header: map[string][]string{"X-Pleo-Company-Id": {companyA}}, wantStatus: 400, wantCode: "company_mismatch"},
		{name: "header and tenant disagree", header: map[string][]string{"X-Pleo-Company-Id": {companyA}, "X-Tenant-Id": {"tenant-b"}}, wantStatus: 400, wantCode: "company_mismatch"},
		{name: "query and tenant disagree", query: "company_id=" + companyA, header: map[string][]string{"X-Tenant-Id": {"tenant-b"}}, wantStatus: 400, wantCode: "company_mismatch"},
		{name: "duplicated headers disagree", header: map[string][]string{"X-Pleo-Company-Id": {companyA, companyB}}, wantStatus: 400, wantCode: "company_mismatch"},
		{name: "duplicated query disagrees", query: "company_id=" + companyA + "&company_id=" + companyB, wantStatus: 400, wantCode: "company_mismatch"},
		{name: "duplicated tenants disagree", header: map[string][]string{"X-Tenant-Id": {"tenant-a", "tenant-b"}}, wantStatus: 400, wantCode: "company_mismatch"},
		{name: "unknown company", header: map[string][]string{"X-Pleo-Company-Id": {unknown}}, wantStatus: 403, wantCode: "company_unknown"},
		{name: "unknown tenant", header: map[string][]string{"X-Tenant-Id": {"tenant-zzz"}}, wantStatus: 403, wantCode: "company_unknown"},
		{name: "expired key", header: map[string][]string{"X-Pleo-Company-Id": {companyX}}, wantStatus: 401, wantCode: "credential_expired"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil, func(o *proxy.Options) { o.DefaultCompanyID = tc.defaultID })
			req, _ := http.NewRequest("GET", f.proxy.URL+"/v1/export-jobs?"+tc.query, nil)
			for k, vs := range tc.header {
				for _, v := range vs {
					req.Header.Add(k, v)
				}
			}
			resp := do(t, req)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			got := f.received()
			if tc.wantCode != "" {
				p := decodeProblem(t, resp)
				if p.Code != tc.wantCode || p.Status != tc.wantStatus || p.Type != "urn:pleo-auth-proxy:problem:"+tc.wantCode || p.Title == "" || p.Detail == "" || p.RequestID == "" {
					t.Fatalf("problem = %+v, want code %s", p, tc.wantCode)
				}
				if len(got) != 0 {
					t.Fatalf("upstream received %d requests, want none", len(got))
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("upstream received %d requests, want 1", len(got))
			}
			want := credentials.BasicAuthorization(map[string]string{companyA: keyA, companyB: keyB}[tc.wantCompany])
			if a := got[0].Header.Get("Authorization"); a != want {
				t.Fatalf("Authorization = %q, want %q", a, want)
			}
			if got[0].RawQuery != tc.query {
				t.Fatalf("query = %q, want it untouched: %q", got[0].RawQuery, tc.query)
			}
		})
	}
}

func TestBasicValueIsExact(t *testing.T) {
	// Pleo: the key as user name and an empty password, i.e. base64("<key>:").
	if got, want := credentials.BasicAuthorization("abc123"), "Basic YWJjMTIzOg=="; got != want {
		t.Fatalf("BasicAuthorization = %q, want %q", got, want)
	}
}

func TestHeadersStripped(t *testing.T) {
	f := newFixture(t, nil)
	req, _ := http.NewRequest("POST", f.proxy.URL+"/v1/items?x=1", strings.NewReader("payload"))
	req.Header.Set("X-Pleo-Company-Id", companyA)
	req.Header.Set("X-Tenant-Id", "tenant-a")
	req.Header.Set("Authorization", "Bearer client-own-token")
	req.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
	req.Header.Set("X-Custom", "kept")
	resp := do(t, req)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := f.received()[0]
	for _, h := range []string{"X-Pleo-Company-Id", "X-Tenant-Id", "Proxy-Authorization"} {
		if v := got.Header.Values(h); len(v) != 0 {
			t.Errorf("%s reached the upstream: %q", h, v)
		}
	}
	if a := got.Header.Values("Authorization"); len(a) != 1 || a[0] != credentials.BasicAuthorization(keyA) {
		t.Errorf("Authorization = %q, want only the injected key", a)
	}
	if got.Header.Get("X-Custom") != "kept" || got.Body != "payload" || got.Method != "POST" || got.Path != "/v1/items" || got.RawQuery != "x=1" {
		t.Errorf("request not forwarded faithfully: %+v", got)
	}
}

func TestConnectionHeaderCannotRemoveInjectedAuthorization(t *testing.T) {
	f := newFixture(t, nil)
	req, _ := http.NewRequest("GET", f.proxy.URL+"/v1/x", nil)
	req.Header.Set("X-Pleo-Company-Id", companyA)
	req.Header.Set("Connection", "Authorization, X-Pleo-Company-Id")
	resp := do(t, req)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if a := f.received()[0].Header.Get("Authorization"); a != credentials.BasicAuthorization(keyA) {
		t.Fatalf("Authorization = %q", a)
	}
}

// rawRequest writes a request line and headers verbatim, so absolute-form URIs and foreign
// Host headers can be sent, and returns the status code.
func rawRequest(t *testing.T, addr, raw string) int {
	t.Helper()
	return exchangeBody(t, addr, raw).status
}

func TestDestinationCannotBeChanged(t *testing.T) {
	var otherHits atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { otherHits.Add(1) }))
	defer other.Close()
	otherHost := strings.TrimPrefix(other.URL, "http://")

	cases := []struct {
		name       string
		raw        string
		wantStatus int
	}{
		{"absolute-form URI", "GET " + other.URL + "/steal HTTP/1.1\r\nHost: " + otherHost + "\r\nX-Pleo-Company-Id: " + companyA + "\r\nConnection: close\r\n\r\n", 200},
		{"foreign Host", "GET /steal HTTP/1.1\r\nHost: " + otherHost + "\r\nX-Pleo-Company-Id: " + companyA + "\r\nConnection: close\r\n\r\n", 200},
		{"CONNECT", "CONNECT " + otherHost + " HTTP/1.1\r\nHost: " + otherHost + "\r\nX-Pleo-Company-Id: " + companyA + "\r\n\r\n", 405},
		{"TRACE", "TRACE /x HTTP/1.1\r\nHost: x\r\nX-Pleo-Company-Id: " + companyA + "\r\nConnection: close\r\n\r\n", 405},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			status := rawRequest(t, strings.TrimPrefix(f.proxy.URL, "http://"), tc.raw)
			if status != tc.wantStatus {
				t.Fatalf("status = %d, want %d", status, tc.wantStatus)
			}
			if otherHits.Load() != 0 {
				t.Fatalf("the other server received %d requests", otherHits.Load())
			}
			if tc.wantStatus == 200 {
				got := f.received()
				if len(got) != 1 || got[0].Path != "/steal" || got[0].Host != strings.TrimPrefix(f.upstream.URL, "http://") {
					t.Fatalf("upstream got %+v", got)
				}
			}
		})
	}
}

func TestRedirectPassedBackNotFollowed(t *testing.T) {
	var otherHits atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { otherHits.Add(1) }))
	defer other.Close()
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/elsewhere", http.StatusFound)
	})
	req, _ := http.NewRequest("GET", f.proxy.URL+"/v1/x", nil)
	req.Header.Set("X-Pleo-Company-Id", companyA)
	resp := do(t, req)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != other.URL+"/elsewhere" {
		t.Fatalf("got %d Location %q, want the 302 passed back", resp.StatusCode, resp.Header.Get("Location"))
	}
	if otherHits.Load() != 0 {
		t.Fatalf("redirect target received %d requests", otherHits.Load())
	}
}

func TestStreamingFlushesFirstChunkEarly(t *testing.T) {
	release := make(chan struct{})
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "second\n")
	})
	defer close(release)
	req, _ := http.NewRequest("GET", f.proxy.URL+"/v1/stream", nil)
	req.Header.Set("X-Pleo-Company-Id", companyA)
	resp := do(t, req)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first chunk = %q, %v; want it before the upstream finishes", line, err)
	}
}

func TestRequestID(t *testing.T) {
	f := newFixture(t, nil)
	req, _ := http.NewRequest("GET", f.proxy.URL+"/v1/x", nil)
	req.Header.Set("X-Pleo-Company-Id", companyA)
	req.Header.Set("X-Request-Id", "caller-id-123")
	do(t, req)
	req, _ = http.NewRequest("GET", f.proxy.URL+"/v1/x", nil)
	req.Header.Set("X-Pleo-Company-Id", companyA)
	req.Header.Set("X-Request-Id", "bad id\twith spaces")
	do(t, req)
	got := f.received()
	if got[0].Header.Get("X-Request-Id") != "caller-id-123" {
		t.Fatalf("request id not passed on: %q", got[0].Header.Get("X-Request-Id"))
	}
	if id := got[1].Header.Get("X-Request-Id"); len(id) != 32 {
		t.Fatalf("generated request id = %q, want 32 hex characters", id)
	}
	// A problem carries the id too.
	req, _ = http.NewRequest("GET", f.proxy.URL+"/v1/x", nil)
	req.Header.Set("X-Request-Id", "caller-id-456")
	if p := decodeProblem(t, do(t, req)); p.RequestID != "caller-id-456" {
		t.Fatalf("problem request_id = %q", p.RequestID)
	}
}

func TestClientTokens(t *testing.T) {
	f := newFixture(t, nil, func(o *proxy.Options) {
		o.ClientTokens = []credentials.Secret{"old-token", "new-token"}
	})
	for _, tc := range []struct {
		name, header string
		want         int
	}{
		{"none", "", 407},
		{"wrong", "Bearer nope", 407},
		{"basic", "Basic bmV3LXRva2Vu", 407},
		{"old", "Bearer old-token", 200},
		{"new", "Bearer new-token", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", f.proxy.URL+"/v1/x", nil)
			req.Header.Set("X-Pleo-Company-Id", companyA)
			if tc.header != "" {
				req.Header.Set("Proxy-Authorization", tc.header)
			}
			resp := do(t, req)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.want == 407 && decodeProblem(t, resp).Code != "client_unauthenticated" {
				t.Fatal("wrong problem code")
			}
		})
	}
}

func TestUpstreamFailures(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) {
		f := newFixture(t, nil)
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := "http://" + l.Addr().String()
		l.Close()
		u, _ := url.Parse(dead)
		f2 := newFixture(t, nil, func(o *proxy.Options) { o.Upstream = u })
		_ = f
		req, _ := http.NewRequest("GET", f2.proxy.URL+"/v1/x", nil)
		req.Header.Set("X-Pleo-Company-Id", companyA)
		resp := do(t, req)
		if p := decodeProblem(t, resp); resp.StatusCode != 502 || p.Code != "upstream_unreachable" || p.CompanyID != companyA {
			t.Fatalf("got %d %+v", resp.StatusCode, p)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		block := make(chan struct{})
		defer close(block)
		f := newFixture(t, func(w http.ResponseWriter, r *http.Request) { <-block }, func(o *proxy.Options) {
			o.Transport = proxy.NewUpstreamTransport(100*time.Millisecond, proxy.DefaultMaxConns)
		})
		req, _ := http.NewRequest("GET", f.proxy.URL+"/v1/x", nil)
		req.Header.Set("X-Pleo-Company-Id", companyA)
		resp := do(t, req)
		if p := decodeProblem(t, resp); resp.StatusCode != 504 || p.Code != "upstream_timeout" {
			t.Fatalf("got %d %+v", resp.StatusCode, p)
		}
	})
}

func TestEveryCodeHasAStatus(t *testing.T) {
	want := map[proxy.Code]int{
		"company_missing": 400, "company_invalid": 400, "company_mismatch": 400, "company_unknown": 403,
		"client_unauthenticated": 407, "method_not_allowed": 405, "credential_expired": 401,
		"reauthorization_required": 401, "token_endpoint_error": 502, "upstream_unreachable": 502,
		"upstream_timeout": 504, "store_unavailable": 503, "upgrade_not_supported": 501,
		"request_header_too_large": 431,
	}
	codes := proxy.Codes()
	if len(codes) != len(want) {
		t.Fatalf("%d codes, want %d", len(codes), len(want))
	}
	for _, c := range codes {
		if want[c] != c.Status() {
			t.Errorf("%s: status %d, want %d", c, c.Status(), want[c])
		}
		rec := httptest.NewRecorder()
		proxy.WriteProblem(rec, &proxy.Problem{Code: c, Detail: "d", CompanyID: companyA}, "rid")
		var doc map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
			t.Fatal(err)
		}
		if rec.Code != want[c] || doc["code"] != string(c) || doc["status"] != float64(want[c]) || doc["company_id"] != companyA || doc["request_id"] != "rid" {
			t.Errorf("%s rendered as %d %v", c, rec.Code, doc)
		}
	}
}
