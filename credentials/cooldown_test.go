package credentials

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

func TestCooldownText(t *testing.T) {
	until := time.Date(2026, 12, 4, 6, 0, 0, 0, time.UTC)
	for _, p := range []time.Duration{CooldownBase, 4 * time.Minute, CooldownMax} {
		got, ok := parseCooldown(cooldown{until: until, period: p}.text())
		if !ok || !got.until.Equal(until) || got.period != p {
			t.Errorf("period %s: parsed back %+v, %v", p, got, ok)
		}
	}
	for _, s := range []string{
		"",
		"token endpoint rejected the refresh token: invalid_grant",
		"unauthorized: no until here",
		"unauthorized: x until 2026-12-04T06:00:00Z (cool-down 30s",
		"unauthorized: x until yesterday (cool-down 30s)",
		"unauthorized: x until 2026-12-04T06:00:00Z (cool-down -3s)",
	} {
		if _, ok := parseCooldown(s); ok {
			t.Errorf("%q parsed as a cool-down", s)
		}
	}
	c := cooldown{}
	var periods []time.Duration
	for range 8 {
		c = c.next(until)
		periods = append(periods, c.period)
	}
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 15 * time.Minute, 15 * time.Minute, 15 * time.Minute}
	for i := range want {
		if periods[i] != want[i] {
			t.Fatalf("cool-downs %v, want %v", periods, want)
		}
	}
	// A refresh keeps a cool-down in last_error, and clears any other error.
	if got := lastErrorAfterRefresh(Credential{LastError: c.text()}); got != c.text() {
		t.Errorf("after refresh: %q", got)
	}
	if got := lastErrorAfterRefresh(Credential{LastError: "token endpoint answered HTTP 503"}); got != "" {
		t.Errorf("after refresh: %q", got)
	}
}

// cdEnv is a broker over a memory store, the real authorisation server, and a client that
// does what the proxy's transport does with a grant: one attempt, and after a 401 one
// Reauthorize and, when it says so, one retry; an answer other than 401 (and 5xx) is reported
// with Accepted.
type cdEnv struct {
	t      *testing.T
	srv    *oauthtest.Server
	store  Store
	clock  *testenv.Clock
	reg    *prometheus.Registry
	m      *metrics.Metrics
	broker *Broker
	client *http.Client
	events chan string // OnStateChange: "<company> <status>"
}

func newCdEnv(t *testing.T, srv *oauthtest.Server) *cdEnv {
	t.Helper()
	return newCdEnvOn(t, srv, NewMemoryStore())
}

func newCdEnvOn(t *testing.T, srv *oauthtest.Server, store Store) *cdEnv {
	t.Helper()
	e := &cdEnv{t: t, srv: srv, store: store, clock: testenv.NewClock(time.Now()), reg: prometheus.NewRegistry(),
		client: &http.Client{Timeout: 10 * time.Second}, events: make(chan string, 100)}
	e.m = metrics.New(e.reg)
	e.broker = e.newBroker()
	return e
}

func (e *cdEnv) newBroker() *Broker { return e.newBrokerOn(e.store) }

func (e *cdEnv) newBrokerOn(s Store) *Broker {
	e.t.Helper()
	b, err := NewBroker(BrokerOptions{
		Store:         s,
		OAuth:         OAuthClient{ClientID: e.srv.ClientID(), ClientSecret: Secret(e.srv.ClientSecret()), TokenURL: e.srv.TokenURL()},
		RefreshBefore: time.Minute,
		Now:           e.clock.Now,
		Metrics:       e.m,
		OnStateChange: func(c Credential, s Status) { e.events <- c.CompanyID + " " + string(s) },
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(b.Close)
	return b
}

// seed grants company and stores its credential, the access token expiring in expiresIn.
func (e *cdEnv) seed(company string, expiresIn time.Duration) Credential {
	e.t.Helper()
	tok, err := e.srv.Grant(context.Background(), company)
	if err != nil {
		e.t.Fatal(err)
	}
	c := Credential{CompanyID: company, Type: OAuth2, AccessToken: Secret(tok.AccessToken), RefreshToken: Secret(tok.RefreshToken),
		ExpiresAt: e.clock.Now().Add(expiresIn), LastRefreshedAt: e.clock.Now().Add(expiresIn - 15*time.Minute)}
	bkPut(e.t, e.store, c)
	return c
}

// call sends GET path for company through b as the proxy does, and returns the status.
func (e *cdEnv) call(b *Broker, company, path string) int {
	e.t.Helper()
	ctx := context.Background()
	g, err := b.Authorize(ctx, company)
	if err != nil {
		e.t.Fatalf("Authorize: %v", err)
	}
	status := e.send(g, path)
	if status == http.StatusUnauthorized {
		next, retry, err := b.Reauthorize(ctx, company, g)
		if err != nil {
			e.t.Fatalf("Reauthorize: %v", err)
		}
		if !retry {
			return status
		}
		g, status = next, e.send(next, path)
	}
	if status != http.StatusUnauthorized && status < 500 {
		b.Accepted(ctx, company, g)
	}
	return status
}

func (e *cdEnv) send(g Grant, path string) int {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL()+path, nil)
	req.Header["Authorization"] = g.HeaderValues()
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func (e *cdEnv) skipped(reason string) float64 {
	return e.series("pleo_proxy_token_refreshes_skipped_total", reason)
}

// series reads the value of the series of name whose label values (sorted by label name) are
// values; -1 when absent.
func (e *cdEnv) series(name string, values ...string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i, l := range m.GetLabel() {
				if i >= len(values) || l.GetValue() != values[i] {
					continue next
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// A path the upstream always answers 401 costs one refresh, not one per request: the token
// the 401-triggered refresh obtained is rejected too, which starts a cool-down in which 401s
// are passed back with no refresh. The state is in the store, so another broker (replica)
// does not refresh either; the healthy path still works and ends the cool-down.
func TestUnauthorizedCooldown(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	e := newCdEnv(t, srv)
	company := bkCompanyID(1)
	e.seed(company, 10*time.Minute)
	replica := e.newBroker()

	before := srv.Stats()
	for i := range 1000 {
		if st := e.call(e.broker, company, oauthtest.UnauthorizedPath); st != http.StatusUnauthorized {
			t.Fatalf("request %d: status %d, want the upstream's 401", i, st)
		}
	}
	if n := srv.Stats().TokenCalls - before.TokenCalls; n > 2 {
		t.Fatalf("1000 requests to an always-401 path made %d token calls, want at most 2", n)
	}
	if got := e.skipped(metrics.SkipUnauthorizedCooldown); got < 990 {
		t.Fatalf("refreshes skipped in the cool-down: %v, want at least 990", got)
	}
	stored := bkGet(t, e.store, company)
	if !stored.InCooldown() || e.broker.StatusOf(stored) != StatusUnauthorized {
		t.Fatalf("stored last_error %q, status %q; want a cool-down, unauthorized", stored.LastError, e.broker.StatusOf(stored))
	}
	if len(e.events) != 1 || <-e.events != company+" unauthorized" {
		t.Fatal("entering the cool-down was not reported once as unauthorized")
	}
	e.broker.Sweep(context.Background())
	if v := e.series("pleo_proxy_credentials", metrics.StateUnauthorized, metrics.CredentialOAuth2); v != 1 {
		t.Fatalf("pleo_proxy_credentials{type=oauth2,state=unauthorized} = %v, want 1", v)
	}

	// Another replica sharing the store sees the cool-down: no refresh there either.
	mid := srv.Stats()
	for range 50 {
		if st := e.call(replica, company, oauthtest.UnauthorizedPath); st != http.StatusUnauthorized {
			t.Fatalf("replica: status %d", st)
		}
	}
	if n := srv.Stats().TokenCalls - mid.TokenCalls; n != 0 {
		t.Fatalf("the other replica made %d token calls during the cool-down", n)
	}

	// Past the cool-down, the same (rejected, refreshed-after-401) token still does not cause
	// a refresh; the next cool-down is twice as long.
	e.clock.Advance(CooldownBase + time.Second)
	mid = srv.Stats()
	for range 20 {
		e.call(e.broker, company, oauthtest.UnauthorizedPath)
	}
	if n := srv.Stats().TokenCalls - mid.TokenCalls; n != 0 {
		t.Fatalf("after the cool-down: %d token calls for the token already shown not to help", n)
	}
	if cd, _ := parseCooldown(bkGet(t, e.store, company).LastError); cd.period != 2*CooldownBase {
		t.Fatalf("second cool-down %s, want %s", cd.period, 2*CooldownBase)
	}
	if len(e.events) != 0 {
		t.Fatalf("a longer cool-down reported again: %s", <-e.events)
	}

	// The healthy path works, and its success ends the state.
	if st := e.call(e.broker, company, "/v1/healthy"); st != http.StatusOK {
		t.Fatalf("healthy path: status %d", st)
	}
	stored = bkGet(t, e.store, company)
	if stored.InCooldown() || stored.LastError != "" || e.broker.StatusOf(stored) != StatusActive {
		t.Fatalf("after an accepted answer: last_error %q, status %q", stored.LastError, e.broker.StatusOf(stored))
	}
	if n := srv.Stats().TokenCalls - before.TokenCalls; n > 2 {
		t.Fatalf("%d token calls in all", n)
	}
}

// Replicas on PostgreSQL share the cool-down through the credential's row: a replica that
// never refreshed for the company does not refresh either while it lasts, and an accepted
// answer on that replica ends it for all.
func TestUnauthorizedCooldownPG(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	dsn := pgTestDB(t)
	e := newCdEnvOn(t, srv, pgOpen(t, dsn, PGStoreOptions{}))
	replica := e.newBrokerOn(pgOpen(t, dsn, PGStoreOptions{}))
	company := bkCompanyID(7)
	e.seed(company, 10*time.Minute)

	before := srv.Stats()
	for range 200 {
		if st := e.call(e.broker, company, oauthtest.UnauthorizedPath); st != http.StatusUnauthorized {
			t.Fatalf("status %d", st)
		}
	}
	for range 200 {
		if st := e.call(replica, company, oauthtest.UnauthorizedPath); st != http.StatusUnauthorized {
			t.Fatalf("replica: status %d", st)
		}
	}
	if n := srv.Stats().TokenCalls - before.TokenCalls; n > 2 {
		t.Fatalf("400 requests over two replicas made %d token calls, want at most 2", n)
	}
	if s := replica.StatusOf(bkGet(t, e.store, company)); s != StatusUnauthorized {
		t.Fatalf("status %q", s)
	}
	if st := e.call(replica, company, "/v1/healthy"); st != http.StatusOK {
		t.Fatalf("healthy path on the replica: %d", st)
	}
	testenv.WaitFor(t, "the first replica to see the cool-down end", 10*time.Second, func() bool {
		c, err := e.store.Get(context.Background(), company)
		return err == nil && !c.InCooldown() && e.broker.StatusOf(c) == StatusActive
	})
}

// A 401 to a token on probation that another replica is rotating right now (its refresh
// holds the company's lock; the token endpoint has the request) is no reason for a
// cool-down: the probe waits for that refresh and retries with its token.
func TestProbationTokenRotatedByAnotherReplica(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	dsn := pgTestDB(t)
	e := newCdEnvOn(t, srv, pgOpen(t, dsn, PGStoreOptions{}))
	other := e.newBrokerOn(pgOpen(t, dsn, PGStoreOptions{}))
	company := bkCompanyID(8)
	e.seed(company, 10*time.Minute)
	ctx := context.Background()

	g0, err := e.broker.Authorize(ctx, company)
	if err != nil {
		t.Fatal(err)
	}
	// Two 401s in a row, each refreshed: g1 is the second such token, whose 401 would start a
	// cool-down.
	g01, retry, err := e.broker.Reauthorize(ctx, company, g0)
	if err != nil || !retry {
		t.Fatalf("Reauthorize: %v, %v", retry, err)
	}
	g1, retry, err := e.broker.Reauthorize(ctx, company, g01)
	if err != nil || !retry {
		t.Fatalf("Reauthorize: %v, %v", retry, err)
	}
	og, err := other.Authorize(ctx, company)
	if err != nil || !og.Same(g1) {
		t.Fatalf("the other replica: %v", err)
	}
	srv.SetTokenDelay(700 * time.Millisecond)
	before := srv.Stats().TokenCalls
	rotated := make(chan Grant, 1)
	go func() {
		g, _, err := other.Reauthorize(ctx, company, og)
		if err != nil {
			t.Errorf("the other replica's refresh: %v", err)
		}
		rotated <- g
	}()
	testenv.WaitFor(t, "the other replica's token call", 10*time.Second, func() bool { return srv.Stats().TokenCalls > before })

	g2, retry, err := e.broker.Reauthorize(ctx, company, g1)
	if err != nil || !retry || g2.Same(g1) {
		t.Fatalf("Reauthorize during the other replica's refresh: retry %v, same token %v, %v; want its new token", retry, g2.Same(g1), err)
	}
	if g := <-rotated; !g.Same(g2) {
		t.Fatal("not the other replica's token")
	}
	if c := bkGet(t, e.store, company); c.InCooldown() || e.skipped(metrics.SkipUnauthorizedCooldown) != 0 {
		t.Fatalf("a cool-down started: %q", c.LastError)
	}
}

// A token revoked at Pleo is still cured by one refresh and retry: only a token that a
// 401-triggered refresh obtained starts a cool-down when it is rejected too.
func TestRevokedTokenStillRefreshes(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	e := newCdEnv(t, srv)
	company := bkCompanyID(2)
	e.seed(company, 10*time.Minute)
	for i := range 3 {
		srv.RevokeAccessTokens(company)
		if st := e.call(e.broker, company, "/v1/x"); st != http.StatusOK {
			t.Fatalf("revocation %d: status %d, want a refresh and a 200", i, st)
		}
	}
	// A revocation that hits the token a 401 just obtained, before anything used it.
	ctx := context.Background()
	g0, err := e.broker.Authorize(ctx, company)
	if err != nil {
		t.Fatal(err)
	}
	g1, retry, err := e.broker.Reauthorize(ctx, company, g0)
	if err != nil || !retry {
		t.Fatalf("Reauthorize: %v, %v", retry, err)
	}
	srv.RevokeAccessTokens(company)
	if st := e.send(g1, "/v1/x"); st != http.StatusUnauthorized {
		t.Fatalf("revoked token: %d", st)
	}
	if _, retry, err := e.broker.Reauthorize(ctx, company, g1); err != nil || !retry {
		t.Fatalf("a revoked token just refreshed after a 401: retry %v, %v; want a refresh", retry, err)
	}
	if got := e.skipped(metrics.SkipUnauthorizedCooldown); got != 0 {
		t.Fatalf("%v refreshes skipped", got)
	}
}

// The cool-down ends when the credential is replaced (a reconnect or an import).
func TestCooldownEndsWhenReplaced(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	e := newCdEnv(t, srv)
	company := bkCompanyID(3)
	e.seed(company, 10*time.Minute)
	for range 3 {
		e.call(e.broker, company, oauthtest.UnauthorizedPath)
	}
	if !bkGet(t, e.store, company).InCooldown() {
		t.Fatal("no cool-down after three 401s")
	}
	fresh := e.seed(company, 10*time.Minute) // reconnected
	if s := e.broker.StatusOf(bkGet(t, e.store, company)); s != StatusActive {
		t.Fatalf("status %q after the credential was replaced", s)
	}
	srv.RevokeAccessTokens(company)
	if st := e.call(e.broker, company, "/v1/x"); st != http.StatusOK {
		t.Fatalf("status %d: a 401 to the new credential must refresh", st)
	}
	if bkGet(t, e.store, company).AccessToken == fresh.AccessToken {
		t.Fatal("not refreshed")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 4, 6, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"120", 120 * time.Second, true},
		{" 7 ", 7 * time.Second, true},
		{"0", 0, false},
		{"-5", 0, false},
		{"", 0, false},
		{"soon", 0, false},
		{"99999999", maxRetryAfter, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, false},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), maxRetryAfter, true},
	} {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseRetryAfter(%q) = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// A 429 from the token endpoint is honoured: no token call for that company before its
// Retry-After (seconds or an HTTP-date) has passed, and the error says how long to wait.
func TestTokenEndpointRetryAfter(t *testing.T) {
	for _, tt := range []struct {
		name  string
		value func(now time.Time) string
	}{
		{"seconds", func(time.Time) string { return "120" }},
		// An HTTP-date two minutes ahead of the broker's clock (to the second, so 120-121 s).
		{"date", func(now time.Time) string { return now.Add(121 * time.Second).UTC().Format(http.TimeFormat) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := oauthtest.NewServer(t, oauthtest.Options{})
			e := newCdEnv(t, srv)
			a, other := bkCompanyID(4), bkCompanyID(5)
			e.seed(a, -time.Minute)
			e.seed(other, -time.Minute)
			srv.SetTokenFailure(http.StatusTooManyRequests)
			srv.SetTokenRetryAfter(tt.value(e.clock.Now()))

			before := srv.Stats()
			_, err := e.broker.Authorize(context.Background(), a)
			if !errors.Is(err, ErrTokenEndpoint) {
				t.Fatalf("Authorize: %v, want a token endpoint error", err)
			}
			if d, ok := RetryAfter(err); !ok || d < 119*time.Second || d > 121*time.Second {
				t.Fatalf("RetryAfter = %s, %v; want about 120s", d, ok)
			}
			srv.SetTokenFailure(0)
			for _, step := range []time.Duration{time.Second, 30 * time.Second, 60 * time.Second} {
				e.clock.Advance(step)
				_, err := e.broker.Authorize(context.Background(), a)
				if d, ok := RetryAfter(err); !errors.Is(err, ErrTokenEndpoint) || !ok || d > 120*time.Second {
					t.Fatalf("during Retry-After: %v (retry after %s)", err, d)
				}
			}
			if n := srv.Stats().TokenCalls - before.TokenCalls; n != 1 {
				t.Fatalf("%d token calls during Retry-After, want only the one answered 429", n)
			}
			// Other companies are not held back by a's Retry-After.
			if _, err := e.broker.Authorize(context.Background(), other); err != nil {
				t.Fatalf("other company: %v", err)
			}
			e.clock.Advance(30 * time.Second)
			if _, err := e.broker.Authorize(context.Background(), a); err != nil {
				t.Fatalf("after Retry-After: %v", err)
			}
			if got := e.skipped(metrics.SkipBackoff); got != 3 {
				t.Fatalf("refreshes skipped backing off: %v, want 3", got)
			}
		})
	}
}

// Tokens that live shorter than RefreshBefore are refreshed at half their lifetime, not on
// every request.
func TestShortLivedTokensLeadTimeClamped(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{AccessTTL: 5 * time.Second})
	e := newCdEnv(t, srv)
	company := bkCompanyID(6)
	e.seed(company, -time.Second) // expired: the first request refreshes
	before := srv.Stats()
	for range 40 { // 40 requests over 2 seconds of a 5-second token
		if _, err := e.broker.Authorize(context.Background(), company); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(50 * time.Millisecond)
	}
	if n := srv.Stats().RefreshCalls - before.RefreshCalls; n != 1 {
		t.Fatalf("%d refreshes for 40 requests within a 5-second token's life, want 1", n)
	}
	e.clock.Advance(time.Second) // 3s into the token's life: past half of it
	if _, err := e.broker.Authorize(context.Background(), company); err != nil {
		t.Fatal(err)
	}
	if n := srv.Stats().RefreshCalls - before.RefreshCalls; n != 2 {
		t.Fatalf("%d refreshes; want a second one past half the lifetime", n)
	}
}

// invalid_client backs every company off; once the client works again (the first success,
// or ResetBackoff after the secret was reloaded), every company refreshes on its next request
// instead of waiting out its back-off.
func TestClientErrorBackoffResets(t *testing.T) {
	for _, how := range []string{"first success", "ResetBackoff"} {
		t.Run(how, func(t *testing.T) {
			srv := oauthtest.NewServer(t, oauthtest.Options{})
			e := newCdEnv(t, srv)
			var ids []string
			for i := range 4 {
				ids = append(ids, bkCompanyID(10+i))
				e.seed(ids[i], -time.Minute)
			}
			srv.SetTokenFailure(http.StatusUnauthorized) // invalid_client
			for round := range 6 {                       // back-offs grow to 16-32s
				if round > 0 {
					e.clock.Advance(time.Duration(1<<(round-1)) * time.Second) // the last back-off has passed
				}
				for _, id := range ids {
					if _, err := e.broker.Authorize(context.Background(), id); !errors.Is(err, ErrTokenEndpoint) || strings.Contains(err.Error(), "backing off") {
						t.Fatalf("round %d: %v, want a token call answered invalid_client", round, err)
					}
				}
			}
			if _, err := e.broker.Authorize(context.Background(), ids[0]); err == nil || !strings.Contains(err.Error(), "backing off") {
				t.Fatalf("not backing off after six failures: %v", err)
			}
			srv.SetTokenFailure(0)
			rest := ids
			switch how {
			case "first success":
				fresh := bkCompanyID(20)
				e.seed(fresh, -time.Minute)
				if _, err := e.broker.Authorize(context.Background(), fresh); err != nil {
					t.Fatal(err)
				}
			case "ResetBackoff":
				e.broker.ResetBackoff()
			}
			before := srv.Stats()
			for _, id := range rest {
				if _, err := e.broker.Authorize(context.Background(), id); err != nil {
					t.Fatalf("%s: still backing off: %v", id, err)
				}
			}
			if n := srv.Stats().RefreshCalls - before.RefreshCalls; n != int64(len(rest)) {
				t.Fatalf("%d refreshes, want %d", n, len(rest))
			}
		})
	}
}

// ResetBackoff keeps a Retry-After the token endpoint asked for.
func TestResetBackoffKeepsRetryAfter(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	e := newCdEnv(t, srv)
	company := bkCompanyID(30)
	e.seed(company, -time.Minute)
	srv.SetTokenFailure(http.StatusTooManyRequests)
	srv.SetTokenRetryAfter("300")
	if _, err := e.broker.Authorize(context.Background(), company); err == nil {
		t.Fatal("no error")
	}
	srv.SetTokenFailure(0)
	e.broker.ResetBackoff()
	if _, err := e.broker.Authorize(context.Background(), company); !errors.Is(err, ErrTokenEndpoint) || !strings.Contains(err.Error(), "backing off") {
		t.Fatalf("after ResetBackoff: %v, want Retry-After still honoured", err)
	}
}

// An Authorize error about a chosen credential names its type; one before any was chosen
// does not.
func TestErrorType(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	e := newCdEnv(t, srv)
	company := bkCompanyID(40)
	c := e.seed(company, -time.Minute)
	c.State = StateReauthorizationRequired
	c.Version = bkGet(t, e.store, company).Version
	if _, err := e.store.Update(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	_, err := e.broker.Authorize(context.Background(), company)
	if typ, ok := ErrorType(err); !errors.Is(err, ErrReauthorizationRequired) || !ok || typ != OAuth2 {
		t.Fatalf("reauthorization_required: ErrorType(%v) = %q, %v", err, typ, ok)
	}
	_, err = e.broker.Authorize(context.Background(), bkCompanyID(41))
	if typ, ok := ErrorType(err); !errors.Is(err, ErrNotFound) || ok {
		t.Fatalf("not found: ErrorType(%v) = %q, %v", err, typ, ok)
	}
}
