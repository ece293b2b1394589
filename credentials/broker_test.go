package credentials

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// These tests sit inside the package: the expiry table needs the per-company refresh jitter
// (spread) to name the exact boundary, and the keepalive test the per-sweep cap.

const bkCompany = "5a1c0000-0000-4000-8000-000000000101"

// bkEpoch is the injected clock's start. It is deliberately far from the real time: the
// broker must judge expiry on its own clock only.
var bkEpoch = time.Date(2031, 3, 14, 9, 26, 53, 0, time.UTC)

// newBkClock is an injected clock at bkEpoch that moves only when told to.
func newBkClock() *testenv.Clock { return testenv.NewClock(bkEpoch) }

// bkTokenServer is a small, strict refresh-token endpoint: HTTP Basic client authentication,
// rotation (a refresh token works once; a used one is invalid_grant), expires_in 900.
type bkTokenServer struct {
	srv    *httptest.Server
	mu     sync.Mutex
	valid  map[string]bool
	issued int
	calls  atomic.Int64
	reuse  atomic.Int64
	down   atomic.Int32 // non-zero: answer every request with this status
}

func newBkTokenServer(t *testing.T) *bkTokenServer {
	t.Helper()
	s := &bkTokenServer{valid: map[string]bool{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *bkTokenServer) serve(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	oauthError := func(status int, code string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":%q}`, code)
	}
	if id, secret, ok := r.BasicAuth(); !ok || id != "client" || secret != "secret" {
		oauthError(http.StatusUnauthorized, "invalid_client")
		return
	}
	if st := int(s.down.Load()); st != 0 {
		oauthError(st, "temporarily_unavailable")
		return
	}
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "refresh_token" {
		oauthError(http.StatusBadRequest, "unsupported_grant_type")
		return
	}
	s.mu.Lock()
	rt := r.PostForm.Get("refresh_token")
	if !s.valid[rt] {
		s.mu.Unlock()
		s.reuse.Add(1)
		oauthError(http.StatusBadRequest, "invalid_grant")
		return
	}
	delete(s.valid, rt)
	s.issued++
	n := s.issued
	s.valid[fmt.Sprintf("rt-%d", n)] = true
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"access_token":"at-%d","token_type":"Bearer","refresh_token":"rt-%d","expires_in":900}`, n, n)
}

// seed makes rt a valid refresh token.
func (s *bkTokenServer) seed(rt string) {
	s.mu.Lock()
	s.valid[rt] = true
	s.mu.Unlock()
}

func bkNewBroker(t *testing.T, store Store, tokenURL string, clock *testenv.Clock, mutate ...func(*BrokerOptions)) *Broker {
	t.Helper()
	opts := BrokerOptions{
		Store:         store,
		OAuth:         OAuthClient{ClientID: "client", ClientSecret: "secret", TokenURL: tokenURL},
		RefreshBefore: time.Minute,
		Now:           clock.Now,
	}
	for _, m := range mutate {
		m(&opts)
	}
	b, err := NewBroker(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func bkPut(t *testing.T, s Store, creds ...Credential) {
	t.Helper()
	if err := s.PutAll(context.Background(), creds, false); err != nil {
		t.Fatal(err)
	}
}

func bkGet(t *testing.T, s Store, companyID string) Credential {
	t.Helper()
	c, err := s.Get(context.Background(), companyID)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAuthorizeExpiryBoundaries(t *testing.T) {
	const rb = time.Minute
	jitter := spread(bkCompany, rb/4) // the company's refresh point is ExpiresAt-rb-jitter
	if jitter <= time.Nanosecond {
		t.Fatalf("jitter %v: pick a company whose jitter separates the boundaries", jitter)
	}
	type outcome int
	const (
		usesOld   outcome = iota // the stored token or key, no token call
		refreshed                // one token call, the new token
		fallsBack                // one failed token call, the stored token
		refused                  // an error
	)
	cases := []struct {
		name          string
		typ           Type
		refreshBefore time.Duration
		expiresIn     time.Duration // from now; ignored with zeroExpiry
		zeroExpiry    bool
		noAccess      bool
		state         State
		endpointDown  bool
		want          outcome
		wantErr       error
		wantCalls     int64
	}{
		{name: "oauth expiring 1ns after the refresh point: used", typ: OAuth2, refreshBefore: rb, expiresIn: rb + jitter + time.Nanosecond, want: usesOld},
		{name: "oauth expiring exactly at the refresh point: refreshed", typ: OAuth2, refreshBefore: rb, expiresIn: rb + jitter, want: refreshed, wantCalls: 1},
		{name: "oauth expiring 1ns after now+RefreshBefore: refreshed (jitter brings the refresh forward)", typ: OAuth2, refreshBefore: rb, expiresIn: rb + time.Nanosecond, want: refreshed, wantCalls: 1},
		{name: "oauth expiring exactly at now+RefreshBefore: refreshed", typ: OAuth2, refreshBefore: rb, expiresIn: rb, want: refreshed, wantCalls: 1},
		{name: "oauth expiring 1ns before now+RefreshBefore: refreshed", typ: OAuth2, refreshBefore: rb, expiresIn: rb - time.Nanosecond, want: refreshed, wantCalls: 1},
		{name: "oauth already expired: refreshed", typ: OAuth2, refreshBefore: rb, expiresIn: -time.Hour, want: refreshed, wantCalls: 1},
		{name: "RefreshBefore 0: expiring in 1ns: used", typ: OAuth2, expiresIn: time.Nanosecond, want: usesOld},
		{name: "RefreshBefore 0: expiring exactly now: refreshed", typ: OAuth2, expiresIn: 0, want: refreshed, wantCalls: 1},
		{name: "oauth with zero expires_at: refreshed before first use", typ: OAuth2, refreshBefore: rb, zeroExpiry: true, want: refreshed, wantCalls: 1},
		{name: "oauth without an access token: refreshed before first use", typ: OAuth2, refreshBefore: rb, expiresIn: time.Hour, noAccess: true, want: refreshed, wantCalls: 1},
		{name: "endpoint down, token expiring in 1ns: the unexpired token is used", typ: OAuth2, refreshBefore: rb, expiresIn: time.Nanosecond, endpointDown: true, want: fallsBack, wantCalls: 1},
		{name: "endpoint down, token expiring exactly now: token_endpoint_error", typ: OAuth2, refreshBefore: rb, expiresIn: 0, endpointDown: true, want: refused, wantErr: ErrTokenEndpoint, wantCalls: 1},
		{name: "endpoint down, token expired 1ns ago: token_endpoint_error", typ: OAuth2, refreshBefore: rb, expiresIn: -time.Nanosecond, endpointDown: true, want: refused, wantErr: ErrTokenEndpoint, wantCalls: 1},
		{name: "endpoint down, zero expires_at: token_endpoint_error", typ: OAuth2, refreshBefore: rb, zeroExpiry: true, endpointDown: true, want: refused, wantErr: ErrTokenEndpoint, wantCalls: 1},
		{name: "oauth marked reauthorization_required: refused without a token call", typ: OAuth2, refreshBefore: rb, expiresIn: time.Hour, state: StateReauthorizationRequired, want: refused, wantErr: ErrReauthorizationRequired},
		{name: "api key 1ns before expires_at: used", typ: StandaloneAPIKey, refreshBefore: rb, expiresIn: time.Nanosecond, want: usesOld},
		{name: "api key exactly at expires_at: credential_expired", typ: StandaloneAPIKey, refreshBefore: rb, expiresIn: 0, want: refused, wantErr: ErrCredentialExpired},
		{name: "api key 1ns after expires_at: credential_expired", typ: StandaloneAPIKey, refreshBefore: rb, expiresIn: -time.Nanosecond, want: refused, wantErr: ErrCredentialExpired},
		{name: "api key with zero expires_at: never expires", typ: IntegratedAPIKey, refreshBefore: rb, zeroExpiry: true, want: usesOld},
		{name: "api key within RefreshBefore of expires_at: used, nothing refreshed", typ: StandaloneAPIKey, refreshBefore: rb, expiresIn: time.Second, want: usesOld},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := newBkTokenServer(t)
			ts.seed("rt-old")
			if tc.endpointDown {
				ts.down.Store(http.StatusServiceUnavailable)
			}
			clock := newBkClock()
			store := NewMemoryStore()
			c := Credential{CompanyID: bkCompany, Type: tc.typ, State: tc.state}
			if !tc.zeroExpiry {
				c.ExpiresAt = clock.Now().Add(tc.expiresIn)
			}
			if tc.typ == OAuth2 {
				c.RefreshToken = "rt-old"
				if !tc.noAccess {
					c.AccessToken = "at-old"
				}
			} else {
				c.APIKey = "key-old"
			}
			bkPut(t, store, c)
			b := bkNewBroker(t, store, ts.srv.URL, clock, func(o *BrokerOptions) { o.RefreshBefore = tc.refreshBefore })

			g, err := b.Authorize(context.Background(), bkCompany)
			old := NewGrant(c).Authorization()
			switch tc.want {
			case usesOld, fallsBack:
				if err != nil || g.Authorization() != old {
					t.Fatalf("Authorize = %v, %v; want the stored credential", g, err)
				}
			case refreshed:
				if err != nil || g.Authorization() != "Bearer at-1" {
					t.Fatalf("Authorize = %v, %v; want the refreshed token", g, err)
				}
				if s := bkGet(t, store, bkCompany); s.AccessToken != "at-1" || s.RefreshToken != "rt-1" {
					t.Fatalf("stored pair not the rotated one")
				}
			case refused:
				if !errors.Is(err, tc.wantErr) || !g.IsZero() {
					t.Fatalf("Authorize = %v, %v; want %v", g, err, tc.wantErr)
				}
			}
			if n := ts.calls.Load(); n != tc.wantCalls {
				t.Fatalf("token calls = %d, want %d", n, tc.wantCalls)
			}
		})
	}
}

// x/oauth2 computes a token's Expiry with time.Now; the broker must count expires_in on its
// own clock, or an injected clock away from the real time would see every new token as
// already expired (or as good for far too long).
func TestRefreshedExpiryIsOnTheBrokerClock(t *testing.T) {
	ts := newBkTokenServer(t)
	ts.seed("rt-0")
	clock := newBkClock()
	store := NewMemoryStore()
	bkPut(t, store, Credential{CompanyID: bkCompany, Type: OAuth2, AccessToken: "at-0", RefreshToken: "rt-0", ExpiresAt: clock.Now().Add(-time.Minute)})
	b := bkNewBroker(t, store, ts.srv.URL, clock)
	ctx := context.Background()
	if _, err := b.Authorize(ctx, bkCompany); err != nil {
		t.Fatal(err)
	}
	s := bkGet(t, store, bkCompany)
	if want := clock.Now().Add(900 * time.Second); !s.ExpiresAt.Equal(want) || !s.LastRefreshedAt.Equal(clock.Now()) {
		t.Fatalf("stored expires_at %v last_refreshed_at %v, want %v and %v", s.ExpiresAt, s.LastRefreshedAt, want, clock.Now())
	}
	for range 3 {
		if g, err := b.Authorize(ctx, bkCompany); err != nil || g.Authorization() != "Bearer at-1" {
			t.Fatalf("Authorize = %v, %v", g, err)
		}
	}
	if n := ts.calls.Load(); n != 1 {
		t.Fatalf("token calls = %d, want 1: the new token is good for 15 minutes on the broker's clock", n)
	}
}

// bkGatedStore is a MemoryStore whose Update can fail or block on demand.
type bkGatedStore struct {
	*MemoryStore
	mode    atomic.Int32 // bkWritesOK, bkWritesFail, bkWritesBlock
	entered chan struct{}
	release chan struct{}
}

const (
	bkWritesOK int32 = iota
	bkWritesFail
	bkWritesBlock
)

func newBkGatedStore() *bkGatedStore {
	return &bkGatedStore{MemoryStore: NewMemoryStore(), entered: make(chan struct{}, 1), release: make(chan struct{})}
}

func (s *bkGatedStore) Update(ctx context.Context, c Credential) (Credential, error) {
	switch s.mode.Load() {
	case bkWritesFail:
		return Credential{}, errors.New("disk full")
	case bkWritesBlock:
		select {
		case s.entered <- struct{}{}:
		default:
		}
		<-s.release
	}
	return s.MemoryStore.Update(ctx, c)
}

func bkWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The background write retry shares the company's single-flight key with refreshes. A refresh
// that joins a write retry's flight must not take the write's outcome for a refresh result (it
// used to panic on a nil *entry, or hand the store's write error to the caller); it runs its
// own refresh once the write is done.
func TestRefreshJoiningAWriteRetry(t *testing.T) {
	ts := newBkTokenServer(t)
	ts.seed("rt-0")
	clock := newBkClock()
	store := newBkGatedStore()
	bkPut(t, store, Credential{CompanyID: bkCompany, Type: OAuth2, AccessToken: "at-0", RefreshToken: "rt-0", ExpiresAt: clock.Now().Add(-time.Minute)})
	b := bkNewBroker(t, store, ts.srv.URL, clock)
	ctx := context.Background()

	store.mode.Store(bkWritesFail)
	g1, err := b.Authorize(ctx, bkCompany)
	if err != nil || g1.Authorization() != "Bearer at-1" {
		t.Fatalf("Authorize = %v, %v; want the rotated token served from memory", g1, err)
	}
	if n := b.PendingWrites(); n != 1 {
		t.Fatalf("PendingWrites = %d, want 1", n)
	}
	// Hold the background write inside its flight.
	store.mode.Store(bkWritesBlock)
	select {
	case <-store.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the write retry never ran")
	}
	type result struct {
		g     Grant
		retry bool
		err   error
	}
	done := make(chan result, 1)
	go func() {
		g, retry, err := b.Reauthorize(ctx, bkCompany, g1) // the upstream rejected at-1
		done <- result{g, retry, err}
	}()
	time.Sleep(50 * time.Millisecond) // let Reauthorize join the write's flight
	store.mode.Store(bkWritesOK)
	close(store.release)
	r := <-done
	if r.err != nil || !r.retry || r.g.Authorization() != "Bearer at-2" {
		t.Fatalf("Reauthorize = %v, %v, %v; want a refreshed at-2 to retry with", r.g, r.retry, r.err)
	}
	bkWaitFor(t, "the pending pair to be written", func() bool { return b.PendingWrites() == 0 })
	if s := bkGet(t, store, bkCompany); s.RefreshToken != "rt-2" {
		t.Fatal("the store does not hold the latest refresh token")
	}
	if n, reuse := ts.calls.Load(), ts.reuse.Load(); n != 2 || reuse != 0 {
		t.Fatalf("token calls %d, reused refresh tokens %d; want 2 and 0", n, reuse)
	}
}

// A refresh token rejected while its pair was still waiting to be written is dead: the write
// retry must not later store it over the reauthorization_required mark.
func TestRejectedPendingPairIsNotWrittenBack(t *testing.T) {
	ts := newBkTokenServer(t)
	ts.seed("rt-0")
	clock := newBkClock()
	store := newBkGatedStore()
	bkPut(t, store, Credential{CompanyID: bkCompany, Type: OAuth2, AccessToken: "at-0", RefreshToken: "rt-0", ExpiresAt: clock.Now().Add(-time.Minute)})
	b := bkNewBroker(t, store, ts.srv.URL, clock)
	ctx := context.Background()
	store.mode.Store(bkWritesFail)
	g1, err := b.Authorize(ctx, bkCompany)
	if err != nil || b.PendingWrites() != 1 {
		t.Fatalf("Authorize = %v, %v; pending %d", g1, err, b.PendingWrites())
	}
	ts.mu.Lock()
	delete(ts.valid, "rt-1") // Pleo revoked the authorisation
	ts.mu.Unlock()
	store.mode.Store(bkWritesOK)
	if _, _, err := b.Reauthorize(ctx, bkCompany, g1); !errors.Is(err, ErrReauthorizationRequired) {
		t.Fatalf("Reauthorize error = %v, want reauthorization required", err)
	}
	// Once the write retry has stopped, nothing can overwrite the mark any more.
	bkWaitFor(t, "the write retry to stop", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.writers) == 0
	})
	if n := b.PendingWrites(); n != 0 {
		t.Fatalf("PendingWrites = %d, want 0", n)
	}
	if s := bkGet(t, store, bkCompany); s.State != StateReauthorizationRequired {
		t.Fatalf("stored state = %q, want reauthorization_required", s.State)
	}
	if _, err := b.Authorize(ctx, bkCompany); !errors.Is(err, ErrReauthorizationRequired) {
		t.Fatalf("Authorize error = %v, want reauthorization required", err)
	}
}

func bkGrants(t *testing.T, srv *oauthtest.Server, ids []string) map[string]*oauth2.Token {
	t.Helper()
	var mu sync.Mutex
	out := make(map[string]*oauth2.Token, len(ids))
	var wg sync.WaitGroup
	errs := make(chan error, len(ids))
	sem := make(chan struct{}, 8)
	for _, id := range ids {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			tok, err := srv.Grant(context.Background(), id)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			out[id] = tok
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return out
}

func bkCompanyID(i int) string { return fmt.Sprintf("5a1c0000-0000-4000-8000-%012d", 1000+i) }

func TestSweepKeepalive(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	oauth := func(o *BrokerOptions) {
		o.OAuth.ClientID, o.OAuth.ClientSecret = srv.ClientID(), Secret(srv.ClientSecret())
	}
	ctx := context.Background()

	t.Run("idle is refreshed, recently refreshed is not", func(t *testing.T) {
		clock := newBkClock()
		now := clock.Now()
		idle, recent := bkCompanyID(1), bkCompanyID(2)
		toks := bkGrants(t, srv, []string{idle, recent})
		store := NewMemoryStore()
		bkPut(t, store,
			Credential{CompanyID: idle, Type: OAuth2, AccessToken: Secret(toks[idle].AccessToken), RefreshToken: Secret(toks[idle].RefreshToken),
				ExpiresAt: now.Add(10 * time.Minute), LastRefreshedAt: now.Add(-24*time.Hour - time.Minute)},
			Credential{CompanyID: recent, Type: OAuth2, AccessToken: Secret(toks[recent].AccessToken), RefreshToken: Secret(toks[recent].RefreshToken),
				ExpiresAt: now.Add(10 * time.Minute), LastRefreshedAt: now.Add(-time.Hour)},
		)
		b := bkNewBroker(t, store, srv.TokenURL(), clock, oauth)
		before := srv.Stats()
		if n := b.Sweep(ctx); n != 1 {
			t.Fatalf("Sweep refreshed %d, want 1", n)
		}
		after := srv.Stats()
		if d := after.TokenCalls - before.TokenCalls; d != 1 || after.ReuseDetections != 0 {
			t.Fatalf("token calls +%d (reuse %d), want +1", d, after.ReuseDetections)
		}
		if s := bkGet(t, store, idle); !s.LastRefreshedAt.Equal(now) || s.RefreshToken.Reveal() == toks[idle].RefreshToken {
			t.Fatal("the idle credential was not refreshed and stored")
		}
		if s := bkGet(t, store, recent); s.RefreshToken.Reveal() != toks[recent].RefreshToken {
			t.Fatal("the recently refreshed credential was refreshed")
		}
		// Right after, nothing is due.
		if n := b.Sweep(ctx); n != 0 || srv.Stats().TokenCalls != after.TokenCalls {
			t.Fatalf("second Sweep refreshed %d", n)
		}
	})

	t.Run("changed since the pass: left for the next sweep", func(t *testing.T) {
		clock := newBkClock()
		now := clock.Now()
		idle := bkCompanyID(3)
		toks := bkGrants(t, srv, []string{idle})
		mem := NewMemoryStore()
		bkPut(t, mem, Credential{CompanyID: idle, Type: OAuth2, AccessToken: Secret(toks[idle].AccessToken), RefreshToken: Secret(toks[idle].RefreshToken),
			ExpiresAt: now.Add(10 * time.Minute), LastRefreshedAt: now.Add(-24*time.Hour - time.Minute)})
		store := &changingStore{Store: mem}
		// Another writer changes the credential after the pass saw it, before its refresh.
		store.afterScan = func() {
			c := bkGet(t, mem, idle)
			c.LastError = "touched by another writer"
			if _, err := mem.Update(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		b := bkNewBroker(t, store, srv.TokenURL(), clock, oauth)
		before := srv.Stats().TokenCalls
		if n := b.Sweep(ctx); n != 0 || srv.Stats().TokenCalls != before {
			t.Fatalf("Sweep refreshed %d (token calls +%d) a credential changed since its pass, want 0", n, srv.Stats().TokenCalls-before)
		}
		store.afterScan = nil
		if n := b.Sweep(ctx); n != 1 || srv.Stats().TokenCalls != before+1 {
			t.Fatalf("the next Sweep refreshed %d, want 1", n)
		}
	})

	t.Run("a fleet is refreshed over several sweeps", func(t *testing.T) {
		clock := newBkClock()
		now := clock.Now()
		ids := make([]string, 100)
		for i := range ids {
			ids[i] = bkCompanyID(100 + i)
		}
		toks := bkGrants(t, srv, ids)
		store := NewMemoryStore()
		creds := make([]Credential, 0, len(ids))
		for _, id := range ids {
			creds = append(creds, Credential{CompanyID: id, Type: OAuth2, AccessToken: Secret(toks[id].AccessToken), RefreshToken: Secret(toks[id].RefreshToken),
				ExpiresAt: now.Add(-30 * 24 * time.Hour), LastRefreshedAt: now.Add(-30*24*time.Hour - 15*time.Minute)})
		}
		bkPut(t, store, creds...)
		b := bkNewBroker(t, store, srv.TokenURL(), clock, oauth)
		before := srv.Stats()
		first := b.Sweep(ctx)
		if first == 0 || first > maxKeepalivePerSweep {
			t.Fatalf("first sweep refreshed %d of 100 idle credentials, want 1..%d", first, maxKeepalivePerSweep)
		}
		if d := srv.Stats().TokenCalls - before.TokenCalls; d != int64(first) {
			t.Fatalf("token calls +%d, want %d", d, first)
		}
		total, sweeps := first, 1
		for total < len(ids) && sweeps < 20 {
			clock.Advance(time.Minute)
			total += b.Sweep(ctx)
			sweeps++
		}
		after := srv.Stats()
		if total != len(ids) || after.TokenCalls-before.TokenCalls != int64(len(ids)) || after.ReuseDetections != 0 || after.InvalidGrants != 0 {
			t.Fatalf("refreshed %d in %d sweeps with %d token calls (reuse %d, invalid %d), want each of 100 exactly once",
				total, sweeps, after.TokenCalls-before.TokenCalls, after.ReuseDetections, after.InvalidGrants)
		}
		if sweeps < len(ids)/maxKeepalivePerSweep {
			t.Fatalf("%d sweeps, want the fleet spread over at least %d", sweeps, len(ids)/maxKeepalivePerSweep)
		}
	})
}

// Grant, Credential and Secret never print a secret, whatever the verb or encoder.
func TestSecretsNeverPrint(t *testing.T) {
	const (
		access  = "acc-TOPSECRET-1"
		refresh = "ref-TOPSECRET-2"
		apiKey  = "key-TOPSECRET-3"
	)
	oauthCred := Credential{CompanyID: bkCompany, TenantID: "t-1", Type: OAuth2, AccessToken: access, RefreshToken: refresh,
		ExpiresAt: bkEpoch, State: StateActive, LastRefreshedAt: bkEpoch, Version: 3}
	keyCred := Credential{CompanyID: bkCompanyID(7), Type: StandaloneAPIKey, APIKey: apiKey, ExpiresAt: bkEpoch}
	oauthGrant, keyGrant := NewGrant(oauthCred), NewGrant(keyCred)
	forbidden := []string{access, refresh, apiKey, oauthGrant.Authorization(), keyGrant.Authorization()}
	for _, s := range []string{access, refresh, apiKey} {
		forbidden = append(forbidden,
			hex.EncodeToString([]byte(s)), strings.ToUpper(hex.EncodeToString([]byte(s))),
			base64.StdEncoding.EncodeToString([]byte(s+":")), base64.StdEncoding.EncodeToString([]byte(s)))
	}
	check := func(t *testing.T, how, out string) {
		t.Helper()
		for _, f := range forbidden {
			if strings.Contains(out, f) {
				t.Errorf("%s leaks %q: %s", how, f, out)
			}
		}
	}
	values := map[string]any{
		"Secret":      Secret(access),
		"*Secret":     new(Secret(refresh)),
		"Credential":  oauthCred,
		"*Credential": &oauthCred,
		"API key":     keyCred,
		"Grant":       oauthGrant,
		"*Grant":      &oauthGrant,
		"key Grant":   keyGrant,
		"slice":       []Credential{oauthCred, keyCred},
		"map":         map[string]Grant{"a": oauthGrant, "b": keyGrant},
		"struct": struct {
			C Credential
			G Grant
			S Secret
		}{oauthCred, keyGrant, apiKey},
	}
	for name, v := range values {
		t.Run(name, func(t *testing.T) {
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X"} {
				check(t, verb, fmt.Sprintf(verb, v))
			}
			check(t, "Sprint", fmt.Sprint(v))
			check(t, "Sprintln", fmt.Sprintln(v))
			for hname, newHandler := range map[string]func(*bytes.Buffer) slog.Handler{
				"slog text": func(b *bytes.Buffer) slog.Handler {
					return slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})
				},
				"slog JSON": func(b *bytes.Buffer) slog.Handler {
					return slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})
				},
			} {
				var buf bytes.Buffer
				log := slog.New(newHandler(&buf))
				log.Info("msg", "value", v)
				log.Debug("msg", slog.Any("any", v), slog.Group("g", "nested", v))
				log.With("with", v).Warn("msg")
				check(t, hname, buf.String())
			}
			j, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			check(t, "json.Marshal", string(j))
		})
	}
	// The redaction is visible, not silent: a set secret says so.
	if got := fmt.Sprint(oauthCred.AccessToken); got != Redacted {
		t.Fatalf("Secret prints %q, want %q", got, Redacted)
	}
}

// changingStore is a Store that another writer changes right after a Scan.
type changingStore struct {
	Store
	afterScan func()
}

func (s *changingStore) Scan(ctx context.Context, fn func(Credential) bool) error {
	err := Scan(ctx, s.Store, fn)
	if s.afterScan != nil {
		s.afterScan()
	}
	return err
}
