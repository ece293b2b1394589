package proxy_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// discardWriter is a minimal ResponseWriter, so the benchmarks measure the proxy, not a
// recorder.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}

func benchBackend(b *testing.B) (*httptest.Server, *url.URL) {
	b.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	}))
	b.Cleanup(backend.Close)
	u, _ := url.Parse(backend.URL)
	return backend, u
}

func runBench(b *testing.B, h http.Handler, header http.Header) {
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: make(http.Header)}
		for pb.Next() {
			req := httptest.NewRequest("GET", "http://127.0.0.1:7380/v1/export-jobs?status=done", nil)
			for k, v := range header {
				req.Header[k] = v
			}
			clear(w.h)
			h.ServeHTTP(w, req)
		}
	})
}

// BenchmarkPlainReverseProxy is the baseline: httputil.ReverseProxy adding a static header.
func BenchmarkPlainReverseProxy(b *testing.B) {
	_, u := benchBackend(b)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Header.Set("Authorization", "Bearer static-token")
		},
		Transport: proxy.NewUpstreamTransport(0, proxy.DefaultMaxConns),
	}
	runBench(b, rp, nil)
}

// BenchmarkServeHTTP is the sidecar's hot path: selection, cached credential, injection,
// metrics, access log off (as at LOG_LEVEL=warn).
func BenchmarkServeHTTP(b *testing.B) {
	_, u := benchBackend(b)
	store := credentials.NewMemoryStore()
	if err := store.PutAll(context.Background(), []credentials.Credential{
		{CompanyID: companyA, Type: credentials.IntegratedAPIKey, APIKey: keyA},
	}, false); err != nil {
		b.Fatal(err)
	}
	m := metrics.New(metrics.NewRegistry())
	broker, err := credentials.NewBroker(credentials.BrokerOptions{Store: store, Metrics: m})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(broker.Close)
	h, err := proxy.New(proxy.Options{Upstream: u, Authorizer: broker, Tenants: broker, Metrics: m,
		Transport: proxy.NewUpstreamTransport(0, proxy.DefaultMaxConns), MaxReplayBytes: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	runBench(b, h, http.Header{"X-Pleo-Company-Id": {companyA}})
}
