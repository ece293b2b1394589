package events

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

const (
	testKey = "an-events-signing-key-of-32-bytes-or-more"
	company = "5a1c0000-0000-4000-8000-0000000000e1"
)

// receiver is a webhook endpoint that verifies every event's signature, as an integration
// would, and can be told to fail its first requests.
type receiver struct {
	t        *testing.T
	srv      *httptest.Server
	mu       sync.Mutex
	failures int // answer 503 to this many requests first
	got      []Event
	attempts int
	badSigs  int
}

func newReceiver(t *testing.T, failures int) *receiver {
	r := &receiver{t: t, failures: failures}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.attempts++
		if r.failures > 0 {
			r.failures--
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if err := Verify([]byte(testKey), req.Header.Get(SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
			r.badSigs++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev Event
		if err := json.Unmarshal(body, &ev); err != nil || req.Header.Get(IDHeader) != ev.ID {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.got = append(r.got, ev)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.got...)
}

func newNotifier(t *testing.T, url string, adjust func(*Options)) (*Notifier, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts := Options{URL: url, Key: testKey, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		Metrics: metrics.NewEvents(reg),
		ReconnectURL: func(tenant string) string {
			return "https://connect.example/connect?tenant_id=" + tenant + "&sig=x"
		}}
	if adjust != nil {
		adjust(&opts)
	}
	n, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return n, reg
}

func cred(state credentials.State, version int64) credentials.Credential {
	return credentials.Credential{CompanyID: company, TenantID: "erp-7", Type: credentials.OAuth2, State: state,
		Version: version, AccessToken: "access-secret", RefreshToken: "refresh-secret", LastError: "token endpoint rejected the refresh token: invalid_grant"}
}

// TestDeliverSignedAfterFailures: a receiver that fails twice gets the event once, signed,
// with its reconnect link and without a secret.
func TestDeliverSignedAfterFailures(t *testing.T) {
	rcv := newReceiver(t, 2)
	n, reg := newNotifier(t, rcv.srv.URL, nil)
	n.Notify(cred(credentials.StateReauthorizationRequired, 4), ReauthorizationRequired)
	n.Notify(cred(credentials.StateReauthorizationRequired, 4), ReauthorizationRequired) // the same change again
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := rcv.events()
	if len(got) != 1 {
		t.Fatalf("receiver got %d events, want 1: %+v", len(got), got)
	}
	ev := got[0]
	if ev.State != ReauthorizationRequired || ev.CompanyID != company || ev.TenantID != "erp-7" || ev.Type != EventType ||
		ev.CredentialType != "oauth2" || !strings.Contains(ev.ReconnectURL, "tenant_id=erp-7") || ev.ID == "" {
		t.Errorf("event = %+v", ev)
	}
	raw, _ := json.Marshal(ev)
	for _, s := range []string{"access-secret", "refresh-secret"} {
		if strings.Contains(string(raw), s) {
			t.Fatalf("the event carries a secret: %s", raw)
		}
	}
	if rcv.attempts != 3 || rcv.badSigs != 0 {
		t.Errorf("attempts %d (want 3), bad signatures %d", rcv.attempts, rcv.badSigs)
	}
	for result, want := range map[string]float64{metrics.EventDelivered: 1, metrics.EventRetried: 2, metrics.EventDuplicate: 1, metrics.EventDropped: 0} {
		if got := counterValue(t, reg, result); got != want {
			t.Errorf("pleo_proxy_events_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "pleo_proxy_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

// TestGiveUpAndBound: a receiver that never answers 2xx gets MaxAttempts tries, then the event
// is dropped; a full queue drops its oldest event.
func TestGiveUpAndBound(t *testing.T) {
	rcv := newReceiver(t, 1000)
	n, reg := newNotifier(t, rcv.srv.URL, func(o *Options) { o.MaxAttempts = 3; o.QueueSize = 2 })
	for v := int64(1); v <= 3; v++ {
		n.Notify(cred(credentials.StateActive, v), Connected)
	}
	if err := n.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rcv.attempts != 6 { // two events kept, three attempts each
		t.Errorf("attempts = %d, want 6", rcv.attempts)
	}
	if got := counterValue(t, reg, metrics.EventDropped); got != 3 {
		t.Errorf("dropped = %v, want 3 (one by the bound, two given up)", got)
	}
	if n, err := testutil.GatherAndCount(reg, "pleo_proxy_events_queued"); err != nil || n != 1 {
		t.Errorf("queued gauge: %d series, %v", n, err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader("# HELP pleo_proxy_events_queued Credential state-change events waiting to be delivered.\n# TYPE pleo_proxy_events_queued gauge\npleo_proxy_events_queued 0\n"), "pleo_proxy_events_queued"); err != nil {
		t.Error(err)
	}
}

// TestVerify rejects a tampered body, another key, a stale timestamp and a malformed header.
func TestVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"state":"connected"}`)
	good := Sign([]byte(testKey), now, body)
	cases := []struct {
		name   string
		header string
		body   string
		key    string
		at     time.Time
		ok     bool
	}{
		{"good", good, string(body), testKey, now, true},
		{"tampered body", good, `{"state":"disconnected"}`, testKey, now, false},
		{"another key", good, string(body), testKey + "x", now, false},
		{"stale", good, string(body), testKey, now.Add(10 * time.Minute), false},
		{"malformed", "v1=abc", string(body), testKey, now, false},
		{"not hex", "t=1800000000,v1=zz", string(body), testKey, now, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify([]byte(tc.key), tc.header, []byte(tc.body), tc.at, 5*time.Minute)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrBadSignature)) {
				t.Fatalf("Verify = %v, want ok %t", err, tc.ok)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	for _, o := range []Options{{URL: "ftp://x", Key: testKey}, {URL: "http://x", Key: "short"}, {URL: "not a url", Key: testKey}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%q, %d-byte key) accepted", o.URL, len(o.Key.Reveal()))
		}
	}
	var n *Notifier // nil is a no-op
	n.Notify(cred(credentials.StateActive, 1), Connected)
	if err := n.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestClaimAcrossReplicas: two notifiers (two replicas) told of the same change over one
// PostgreSQL store send one event between them; a later change is sent again.
func TestClaimAcrossReplicas(t *testing.T) {
	dsn := testenv.PostgresDatabase(t, "ev_")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var claimers []Claimer
	for range 2 {
		s, err := credentials.OpenPGStore(ctx, dsn, credentials.PGStoreOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		claimers = append(claimers, s)
	}
	rcv := newReceiver(t, 0)
	var replicas []*Notifier
	for _, c := range claimers {
		n, _ := newNotifier(t, rcv.srv.URL, func(o *Options) { o.Claimer = c })
		replicas = append(replicas, n)
	}
	change := func(state credentials.State, version int64, ev State) {
		var wg sync.WaitGroup
		for _, n := range replicas {
			n.Notify(cred(state, version), ev)
			wg.Go(func() {
				if err := n.Flush(ctx); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	change(credentials.StateReauthorizationRequired, 5, ReauthorizationRequired)
	change(credentials.StateActive, 6, Connected)
	change(credentials.StateActive, 6, Disconnected)
	got := rcv.events()
	var states []string
	for _, e := range got {
		states = append(states, string(e.State))
	}
	if strings.Join(states, ",") != "reauthorization_required,connected,disconnected" {
		t.Fatalf("receiver got %v, want one event per change", states)
	}
}
