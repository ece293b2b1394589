package proxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

type tenants map[string]string

func (t tenants) CompanyForTenant(_ context.Context, id string) (string, error) {
	if c, ok := t[id]; ok {
		return c, nil
	}
	return "", credentials.ErrNotFound
}

func FuzzSelect(f *testing.F) {
	f.Add(companyA, "", "", "")
	f.Add("", "company_id="+companyB, "", "")
	f.Add(strings.ToUpper(companyA), "company_id="+companyA, "tenant-a", companyB)
	f.Add("../../etc", "company_id=%zz", "tenant\x00", "")
	f.Add(companyA+","+companyB, "company_id="+companyA+"&company_id="+companyB, "tenant-b", "")
	sel := &proxy.Selector{CompanyHeader: "X-Pleo-Company-Id", TenantHeader: "X-Tenant-Id", Tenants: tenants{"tenant-a": companyA, "tenant-b": companyB}}
	f.Fuzz(func(t *testing.T, header, query, tenant, def string) {
		r := httptest.NewRequest("GET", "http://x/v1", nil)
		r.URL.RawQuery = query
		if header != "" {
			r.Header["X-Pleo-Company-Id"] = []string{header}
		}
		if tenant != "" {
			r.Header["X-Tenant-Id"] = []string{tenant}
		}
		s := *sel
		if credentials.ValidCompanyID(def) {
			s.Default = credentials.CanonicalCompanyID(def)
		}
		got, err := s.Select(context.Background(), r)
		if err != nil {
			var p *proxy.Problem
			if !errors.As(err, &p) {
				t.Fatalf("non-problem error %v", err)
			}
			return
		}
		if !credentials.ValidCompanyID(got) || got != credentials.CanonicalCompanyID(got) {
			t.Fatalf("selected %q, not a canonical UUID", got)
		}
		// Every selector present must agree with the choice.
		if header != "" && credentials.CanonicalCompanyID(header) != got {
			t.Fatalf("header %q but selected %q", header, got)
		}
		if q, err := url.ParseQuery(query); err == nil {
			for _, v := range q["company_id"] {
				if credentials.CanonicalCompanyID(v) != got {
					t.Fatalf("query company_id %q but selected %q", v, got)
				}
			}
		}
		if tenant != "" && sel.Tenants.(tenants)[tenant] != got {
			t.Fatalf("tenant %q but selected %q", tenant, got)
		}
	})
}

// captureTransport records the outbound request instead of sending it.
type captureTransport struct{ got *http.Request }

func (c *captureTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.got = r
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
}

func FuzzRewrite(f *testing.F) {
	f.Add("Authorization", "Bearer stolen", "/v1/x", "evil.example:443")
	f.Add("Connection", "Authorization, X-Pleo-Company-Id", "/v1/../../admin", "")
	f.Add("Proxy-Authorization", "Basic eDp5", "//evil.example/x", "127.0.0.2")
	f.Add("X-Tenant-Id", "tenant-b", "/v1/x?company_id="+companyA, "x")
	f.Add("X-A", "b", "/v1/caf\xc3\xa9/a%2Fb?filter=a;b&bad=%zz&q=a+b", "")
	f.Add("X-A", "b", "/v1/x?", "")
	store := credentials.NewMemoryStore()
	if err := store.PutAll(context.Background(), []credentials.Credential{
		{CompanyID: companyA, TenantID: "tenant-a", Type: credentials.IntegratedAPIKey, APIKey: keyA},
		{CompanyID: companyB, TenantID: "tenant-b", Type: credentials.StandaloneAPIKey, APIKey: keyB},
	}, false); err != nil {
		f.Fatal(err)
	}
	broker, err := credentials.NewBroker(credentials.BrokerOptions{Store: store})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(broker.Close)
	upstream, _ := url.Parse("https://external.pleo.io/base")
	f.Fuzz(func(t *testing.T, name, value, target, host string) {
		ct := &captureTransport{}
		h, err := proxy.New(proxy.Options{Upstream: upstream, Authorizer: broker, Tenants: broker, Transport: ct, MaxReplayBytes: 1024})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		r := httptest.NewRequest("GET", "http://127.0.0.1:7380/", nil)
		r.URL = u
		r.RequestURI = target
		r.Host = host
		r.Header.Set("X-Pleo-Company-Id", companyA)
		if name != "" && validHeaderName(name) {
			r.Header.Add(name, value)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		out := ct.got
		if out == nil {
			return // refused with a problem
		}
		if out.URL.Scheme != "https" || out.URL.Host != "external.pleo.io" || out.Host != "" && out.Host != "external.pleo.io" {
			t.Fatalf("request left for %s://%s (Host %q)", out.URL.Scheme, out.URL.Host, out.Host)
		}
		if !strings.HasPrefix(out.URL.Path, "/base/") && out.URL.Path != "/base" {
			t.Fatalf("path %q escaped the upstream's prefix", out.URL.Path)
		}
		// The request line carries the caller's target byte for byte, after the prefix.
		if got := out.URL.RequestURI(); got != "/base"+target {
			t.Fatalf("request target %q, want %q", got, "/base"+target)
		}
		if a := out.Header.Values("Authorization"); len(a) != 1 || a[0] != credentials.BasicAuthorization(keyA) {
			t.Fatalf("Authorization upstream = %q", a)
		}
		for _, hd := range []string{"Proxy-Authorization", "X-Pleo-Company-Id", "X-Tenant-Id"} {
			if out.Header.Get(hd) != "" {
				t.Fatalf("%s reached the upstream", hd)
			}
		}
	})
}

func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return true
}

func FuzzWriteProblem(f *testing.F) {
	f.Add("company_missing", "detail \"quoted\" <b>", companyA, "rid")
	f.Add("nope", "\x00\xff", "", "\n")
	f.Fuzz(func(t *testing.T, code, detail, company, rid string) {
		rec := httptest.NewRecorder()
		proxy.WriteProblem(rec, &proxy.Problem{Code: proxy.Code(code), Detail: detail, CompanyID: company}, rid)
		var doc map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
			t.Fatalf("not JSON: %v: %q", err, rec.Body.String())
		}
		if rec.Header().Get("Content-Type") != "application/problem+json" || !strings.HasPrefix(rec.Header().Get("Proxy-Status"), "pleo-auth-proxy;") {
			t.Fatalf("headers %v", rec.Header())
		}
		if int(doc["status"].(float64)) != rec.Code {
			t.Fatalf("status %v vs %d", doc["status"], rec.Code)
		}
	})
}
