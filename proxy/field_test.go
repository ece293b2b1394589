package proxy_test

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// The sidecar's transient errors say when to come back: token_endpoint_error with the
// broker's back-off (here the token endpoint's own Retry-After), store_unavailable with a
// second.
func TestRetryAfterOnTransientProblems(t *testing.T) {
	e := newOAuthEnv(t, oaConfig{})
	company := oaCompany(1)
	e.seed(-time.Minute, company)
	e.srv.SetTokenFailure(http.StatusTooManyRequests)
	e.srv.SetTokenRetryAfter("90")
	for i, want := range []int{90, 90} { // the second is answered from the back-off, on the same clock
		r := e.call(http.MethodGet, company, nil)
		if r.status != http.StatusBadGateway || r.problem(t) != "token_endpoint_error" {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
		if got, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || got != want {
			t.Fatalf("request %d: Retry-After %q, want %d", i, r.header.Get("Retry-After"), want)
		}
	}

	down := newOAuthEnv(t, oaConfig{store: func(m *credentials.MemoryStore) credentials.Store { return failingStore{m} }})
	r := down.call(http.MethodGet, company, nil)
	if r.status != http.StatusServiceUnavailable || r.problem(t) != "store_unavailable" || r.header.Get("Retry-After") != "1" {
		t.Fatalf("store down: %d %s, Retry-After %q", r.status, r.body, r.header.Get("Retry-After"))
	}
}

// failingStore is a store that cannot be read.
type failingStore struct{ *credentials.MemoryStore }

func (failingStore) Get(_ context.Context, _ string) (credentials.Credential, error) {
	return credentials.Credential{}, errors.New("connection refused")
}

// A credential that was chosen but cannot be used is counted with its type, not none.
func TestCredentialTypeOfCredentialErrors(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	e := newOAuthEnv(t, oaConfig{proxy: func(o *proxy.Options) { o.Metrics = m }, broker: func(o *credentials.BrokerOptions) { o.Metrics = m }})
	rejected, down, unknown := oaCompany(1), oaCompany(2), oaCompany(3)
	e.seed(-time.Minute, rejected, down)
	c := e.stored(rejected)
	c.State = credentials.StateReauthorizationRequired
	e.put(c)
	if r := e.call(http.MethodGet, rejected, nil); r.problem(t) != "reauthorization_required" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	e.srv.SetTokenFailure(http.StatusServiceUnavailable)
	if r := e.call(http.MethodGet, down, nil); r.problem(t) != "token_endpoint_error" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if r := e.call(http.MethodGet, unknown, nil); r.problem(t) != "company_unknown" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	for _, tt := range []struct {
		code, credType string
		want           float64
	}{
		{"401", "oauth2", 1}, {"401", "none", 0},
		{"502", "oauth2", 1}, {"502", "none", 0},
		{"403", "none", 1},
	} {
		got := testutil.ToFloat64(counter(t, reg, "pleo_proxy_requests_total", map[string]string{"method": "GET", "code": tt.code, "credential_type": tt.credType}))
		if got != tt.want {
			t.Errorf("requests{code=%s,credential_type=%s} = %v, want %v", tt.code, tt.credType, got, tt.want)
		}
	}
}

// counter finds one series in reg's exposition as a collector testutil can read (0 when it
// does not exist).
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "found"})
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			c.Add(mt.GetCounter().GetValue())
		}
	}
	return c
}
