package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/events"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// eventSink is the integration's webhook: it verifies each signature and fails its first
// requests on purpose.
type eventSink struct {
	srv      *httptest.Server
	mu       sync.Mutex
	failures int
	got      []events.Event
	bad      int
}

func newEventSink(t *testing.T, key string, failures int) *eventSink {
	s := &eventSink{failures: failures}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.failures > 0 {
			s.failures--
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		var ev events.Event
		if err := events.Verify([]byte(key), r.Header.Get(events.SignatureHeader), body, time.Now(), time.Minute); err != nil ||
			json.Unmarshal(body, &ev) != nil {
			s.bad++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		s.got = append(s.got, ev)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// summary lists "state company" of every event received, sorted.
func (s *eventSink) summary() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.got {
		out = append(out, string(e.State)+" "+e.CompanyID)
	}
	sort.Strings(out)
	return out
}

// TestEventsAcrossReplicas runs two sidecars on one PostgreSQL store with PLEO_PROXY_EVENTS_URL
// and a receiver that fails twice first: a rejected refresh token, a disconnect through the
// admin listener and an API key passing its expiry each reach the receiver exactly once,
// signed, though both replicas saw them.
func TestEventsAcrossReplicas(t *testing.T) {
	dsn := testenv.PostgresDatabase(t, "ev2e_")
	const key = "the-integration-webhook-signing-key-0123456789"
	sink := newEventSink(t, key, 2)
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	ctx := context.Background()

	revoked, healthy, expiring := "e7e70000-0000-4000-8000-000000000001", "e7e70000-0000-4000-8000-000000000002", "e7e70000-0000-4000-8000-000000000003"
	// revoked's stored refresh token is spent: presenting it makes the server refuse it.
	spent := grantedCredential(t, srv, revoked, time.Now().Add(-time.Minute))
	if _, err := srv.OAuth2Config().TokenSource(ctx, tokenOf(spent)).Token(); err != nil {
		t.Fatal(err)
	}
	spent.TenantID = "erp-revoked"
	ok := grantedCredential(t, srv, healthy, time.Now().Add(time.Hour))
	ok.TenantID = "erp-healthy"
	doc, err := credentials.Marshal([]credentials.Credential{spent, ok})
	if err != nil {
		t.Fatal(err)
	}
	env := oauthSidecarEnv(srv, dsn,
		"PLEO_PROXY_REFRESH_BEFORE=2s", // sweeps every second
		"PLEO_PROXY_EVENTS_URL="+sink.srv.URL+"/hooks/pleo",
		"PLEO_PROXY_EVENTS_KEY="+key,
		"PLEO_PROXY_ADMIN_TOKEN=admin-token-for-events",
	)
	mustCLI(t, env, string(doc), "credentials", "import", "-")
	a, b := startSidecar(t, env), startSidecar(t, env)
	// An API key that expires while both run.
	apiKey := credentials.Credential{CompanyID: expiring, Type: credentials.StandaloneAPIKey, APIKey: "standalone-key-0123",
		ExpiresAt: time.Now().Add(3 * time.Second).Truncate(time.Second)}
	keyDoc, err := credentials.Marshal([]credentials.Credential{apiKey})
	if err != nil {
		t.Fatal(err)
	}
	mustCLI(t, env, string(keyDoc), "credentials", "import", "-")

	client := &http.Client{Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for _, s := range []*sidecar{a, b, a, b} {
		wg.Go(func() {
			if code, err := s.get(client, revoked); err != nil || code != http.StatusUnauthorized {
				t.Errorf("request for the revoked company: %d %v, want 401", code, err)
			}
		})
	}
	wg.Wait()

	req, _ := http.NewRequest(http.MethodDelete, "http://"+b.admin+"/credentials/"+healthy+"?revoke=true", nil)
	req.Header.Set("Authorization", "Bearer admin-token-for-events")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"revoked":true`) {
		t.Fatalf("DELETE ?revoke=true: %d %s", resp.StatusCode, body)
	}

	want := []string{"disconnected " + healthy, "expired " + expiring, "reauthorization_required " + revoked}
	deadline := time.Now().Add(30 * time.Second)
	for len(sink.summary()) < len(want) {
		if time.Now().After(deadline) {
			a.mu.Lock()
			b.mu.Lock()
			t.Fatalf("after 30 s the receiver has %v\n--- a\n%s\n--- b\n%s", sink.summary(), a.logs.String(), b.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Both replicas keep sweeping; give a duplicate the time to arrive.
	time.Sleep(3 * time.Second)
	if got := sink.summary(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("receiver got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.bad != 0 {
		t.Errorf("%d events failed verification", sink.bad)
	}
	for _, e := range sink.got {
		if e.State == events.ReauthorizationRequired && e.TenantID != "erp-revoked" {
			t.Errorf("event %+v lacks its tenant", e)
		}
		raw, _ := json.Marshal(e)
		for _, s := range []string{spent.RefreshToken.Reveal(), ok.AccessToken.Reveal(), apiKey.APIKey.Reveal()} {
			if strings.Contains(string(raw), s) {
				t.Fatalf("an event carries a secret: %s", raw)
			}
		}
	}
	delivered := metricValue(t, a, `pleo_proxy_events_total{result="delivered"}`) + metricValue(t, b, `pleo_proxy_events_total{result="delivered"}`)
	if delivered != float64(len(want)) {
		t.Errorf("replicas delivered %v events, want %d", delivered, len(want))
	}
}

// tokenOf is c's token pair as x/oauth2 holds it, expired, so that using it refreshes.
func tokenOf(c credentials.Credential) *oauth2.Token {
	return &oauth2.Token{AccessToken: c.AccessToken.Reveal(), RefreshToken: c.RefreshToken.Reveal(), Expiry: time.Now().Add(-time.Hour)}
}
