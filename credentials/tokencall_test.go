package credentials

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestRefreshBudgets(t *testing.T) {
	for _, tt := range []time.Duration{100 * time.Millisecond, time.Second, 10 * time.Second, time.Minute} {
		r := newRefreshBudgets(tt)
		if err := r.validate(); err != nil {
			t.Errorf("T=%s: %v", tt, err)
		}
		if need := r.lockWait + r.call() + r.commit; r.lease <= need {
			t.Errorf("T=%s: lease %s not longer than lock wait + call + commit %s", tt, r.lease, need)
		}
		if r.lockWait != tt || r.wait != tt || r.commit != tt {
			t.Errorf("T=%s: lock wait %s, wait %s, commit %s: each is T, none shortened by another", tt, r.lockWait, r.wait, r.commit)
		}
	}
	bad := newRefreshBudgets(time.Second)
	bad.lease = 3 * time.Second
	if err := bad.validate(); err == nil {
		t.Error("a lease shorter than lock wait + call + commit validated")
	}
}

// tcServer wraps a bkTokenServer's handler with behaviour before the answer.
func tcServer(t *testing.T, ts *bkTokenServer, before func(w http.ResponseWriter, r *http.Request) bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if before(w, r) {
			ts.serve(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// dribble writes a token answer's head at once, its body after bodyAfter: the first response
// byte arrives in time, the whole answer after the token timeout.
type dribbleWriter struct {
	http.ResponseWriter
	headAfter, bodyAfter time.Duration
	start                time.Time
	wroteHeader          bool
}

func (d *dribbleWriter) WriteHeader(code int) {
	if d.wroteHeader {
		return
	}
	d.wroteHeader = true
	time.Sleep(time.Until(d.start.Add(d.headAfter)))
	d.ResponseWriter.WriteHeader(code)
	d.ResponseWriter.(http.Flusher).Flush()
}

func (d *dribbleWriter) Write(p []byte) (int, error) {
	d.WriteHeader(http.StatusOK)
	time.Sleep(time.Until(d.start.Add(d.bodyAfter)))
	return d.ResponseWriter.Write(p)
}

// An answer whose first byte arrived within the token timeout is read to its end, though the
// rest of it comes after the timeout: the deadline guards waiting for an answer, not reading
// one (the read has its own bound, counted from the first byte).
func TestTokenCallAnswerBeganIsRead(t *testing.T) {
	ts := newBkTokenServer(t)
	ts.seed("rt-0")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.serve(&dribbleWriter{ResponseWriter: w, headAfter: 500 * time.Millisecond, bodyAfter: 1300 * time.Millisecond, start: time.Now()}, r)
	}))
	t.Cleanup(srv.Close)
	clock := newBkClock()
	store := NewMemoryStore()
	bkPut(t, store, Credential{CompanyID: bkCompany, Type: OAuth2, AccessToken: "at-0", RefreshToken: "rt-0", ExpiresAt: clock.Now().Add(-time.Minute)})
	b := bkNewBroker(t, store, srv.URL, clock, func(o *BrokerOptions) { o.TokenTimeout = time.Second })
	start := time.Now()
	g, err := b.Authorize(t.Context(), bkCompany)
	if err != nil || g.Authorization() != "Bearer at-1" {
		t.Fatalf("Authorize = %q, %v after %s; want at-1: the answer began within the timeout", g.Authorization(), err, time.Since(start))
	}
	if took := time.Since(start); took < 1300*time.Millisecond {
		t.Fatalf("answered after %s: the test's answer did not outlast the token timeout", took)
	}
	if s := bkGet(t, store, bkCompany); s.RefreshToken != "rt-1" {
		t.Fatalf("stored %q, want rt-1", s.RefreshToken.Reveal())
	}
}

// The first-byte tracking itself: a call is marked answered when the head arrives, not before,
// and written once the request went out whole; a dial that fails writes nothing.
func TestTokenCallTracksWriteAndFirstByte(t *testing.T) {
	ts := newBkTokenServer(t)
	ts.seed("rt-0")
	headSent := make(chan struct{})
	release := make(chan struct{})
	srv := tcServer(t, ts, func(w http.ResponseWriter, r *http.Request) bool {
		<-release
		close(headSent)
		return true
	})
	clock := newBkClock()
	b := bkNewBroker(t, NewMemoryStore(), srv.URL, clock)
	c := b.startTokenCall(Credential{CompanyID: bkCompany, RefreshToken: "rt-0"})
	bkWaitFor(t, "the request to be written", c.wrote.Load)
	if c.answered.Load() {
		t.Fatal("answered before the server wrote anything")
	}
	close(release)
	<-headSent
	<-c.done
	if !c.answered.Load() || c.outcome() != callAnswered || c.err != nil {
		t.Fatalf("answered %v, outcome %v, err %v", c.answered.Load(), c.outcome(), c.err)
	}

	// Nothing listens: the request never left.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	b2 := bkNewBroker(t, NewMemoryStore(), "http://"+addr+"/token", clock)
	c2 := b2.startTokenCall(Credential{CompanyID: bkCompany, RefreshToken: "rt-x"})
	<-c2.done
	if c2.err == nil || c2.wrote.Load() || c2.outcome() != callNotSent {
		t.Fatalf("dial refused: err %v, wrote %v, outcome %v; want not sent", c2.err, c2.wrote.Load(), c2.outcome())
	}
}

// In one process (a file or memory store): a refresh whose outcome is unknown (the request was
// sent, the connection dropped without an answer) is not presented again until the lease's
// time has passed; then it is.
func TestUnknownOutcomeIsNotPresentedAgain(t *testing.T) {
	ts := newBkTokenServer(t)
	ts.seed("rt-0")
	var drop atomic.Bool
	drop.Store(true)
	srv := tcServer(t, ts, func(w http.ResponseWriter, r *http.Request) bool {
		if !drop.Load() {
			return true
		}
		ts.calls.Add(1)
		_ = r.ParseForm()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close() // read, then gone: no answer
		}
		return false
	})
	clock := newBkClock()
	store := NewMemoryStore()
	bkPut(t, store, Credential{CompanyID: bkCompany, Type: OAuth2, AccessToken: "at-0", RefreshToken: "rt-0", ExpiresAt: clock.Now().Add(-time.Minute)})
	b := bkNewBroker(t, store, srv.URL, clock, func(o *BrokerOptions) { o.TokenTimeout = time.Second })
	_, err := b.Authorize(t.Context(), bkCompany)
	if !errors.Is(err, ErrTokenEndpoint) || !errors.Is(err, ErrRefreshInProgress) {
		t.Fatalf("first Authorize: %v; want token endpoint error, refresh in progress", err)
	}
	drop.Store(false)
	// The backoff (1 s at most after one failure) is over; the lease (6 s) is not.
	clock.Advance(2 * time.Second)
	if _, err := b.Authorize(t.Context(), bkCompany); !errors.Is(err, ErrRefreshInProgress) {
		t.Fatalf("inside the lease: %v; want refresh in progress", err)
	}
	if n := ts.calls.Load(); n != 1 {
		t.Fatalf("%d token calls inside the lease, want 1", n)
	}
	clock.Advance(5 * time.Second)
	g, err := b.Authorize(t.Context(), bkCompany)
	if err != nil || g.Authorization() != "Bearer at-1" {
		t.Fatalf("after the lease: %q, %v; want at-1", g.Authorization(), err)
	}
}

// Across replicas (PostgreSQL): replica A's token call outlives the token timeout. A's callers
// stop waiting; A gives the lock up but keeps the lease, so replica B does not present the
// token, and neither does A again. The late answer arrives: A stores it (clearing the lease),
// and B adopts it. One token call in all.
func TestPGUnknownOutcomeHoldsTheLease(t *testing.T) {
	ts := newBkTokenServer(t)
	hold := make(chan struct{})
	srv := tcServer(t, ts, func(w http.ResponseWriter, r *http.Request) bool {
		<-hold
		return true
	})
	t.Cleanup(func() {
		select {
		case <-hold:
		default:
			close(hold)
		}
	})
	clock := newBkClock()
	dsn := pgTestDB(t)
	var brokers []*Broker
	var stores []*PGStore
	for range 2 {
		s := pgOpen(t, dsn, PGStoreOptions{})
		stores = append(stores, s)
		brokers = append(brokers, bkNewBroker(t, s, srv.URL, clock, func(o *BrokerOptions) { o.TokenTimeout = time.Second }))
	}
	a, b := brokers[0], brokers[1]
	ids := pgSeed(t, stores[0], ts, clock, 1)
	leased := func() bool {
		return pgQueryString(t, dsn, `SELECT (refresh_lease_holder IS NOT NULL)::text FROM pleo_proxy_credentials WHERE company_id = $1`, ids[0]) == "true"
	}

	start := time.Now()
	_, err := a.Authorize(t.Context(), ids[0])
	if !errors.Is(err, ErrTokenEndpoint) || !errors.Is(err, ErrRefreshInProgress) {
		t.Fatalf("A: %v after %s; want token endpoint error, refresh in progress", err, time.Since(start))
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("A's callers waited %s; want the token timeout and its grace", took)
	}
	if !leased() {
		t.Fatal("the lease was freed with the outcome unknown")
	}
	if _, err := b.Authorize(t.Context(), ids[0]); !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, ErrRefreshInProgress) {
		t.Fatalf("B during the unknown outcome: %v; want store unavailable, refresh in progress", err)
	}
	clock.Advance(2 * time.Second) // past any backoff, inside the 6 s lease
	if _, err := a.Authorize(t.Context(), ids[0]); !errors.Is(err, ErrRefreshInProgress) {
		t.Fatalf("A again during the unknown outcome: %v; want refresh in progress", err)
	}
	if n := ts.calls.Load(); n != 0 {
		t.Fatalf("%d answered token calls while held", n)
	}
	close(hold) // the late answer
	bkWaitFor(t, "A to store the late answer", func() bool { return a.PendingWrites() == 0 && !leased() && ts.calls.Load() == 1 })
	bkWaitFor(t, "the row to hold rt-1", func() bool { return bkGet(t, stores[1], ids[0]).RefreshToken == "rt-1" })
	for name, br := range map[string]*Broker{"A": a, "B": b} {
		g, err := br.Authorize(t.Context(), ids[0])
		if err != nil || g.Authorization() != "Bearer at-1" {
			t.Errorf("%s after the late answer: %q, %v; want at-1", name, g.Authorization(), err)
		}
	}
	if c, r := ts.calls.Load(), ts.reuse.Load(); c != 1 || r != 0 {
		t.Fatalf("%d token calls, %d reuses; want 1, 0", c, r)
	}
}

// Across replicas: a request that never left (nothing listens at the token endpoint) frees the
// lease at once: the next refresh, by any replica, may present the token.
func TestPGRequestNeverSentFreesTheLease(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ts := newBkTokenServer(t)
	clock := newBkClock()
	dsn := pgTestDB(t)
	s := pgOpen(t, dsn, PGStoreOptions{})
	a := bkNewBroker(t, s, "http://"+addr+"/token", clock)
	ids := pgSeed(t, s, ts, clock, 1)
	_, err = a.Authorize(t.Context(), ids[0])
	if !errors.Is(err, ErrTokenEndpoint) || errors.Is(err, ErrRefreshInProgress) {
		t.Fatalf("A: %v; want a token endpoint error, not an unknown outcome", err)
	}
	if h := pgQueryString(t, dsn, `SELECT coalesce(refresh_lease_holder, '') FROM pleo_proxy_credentials WHERE company_id = $1`, ids[0]); h != "" {
		t.Fatalf("lease still held by %q after a request that never left", h)
	}
	if _, ok := a.heldUnknown(ids[0], "seed-0", clock.Now()); ok {
		t.Fatal("an unknown outcome recorded for a request that never left")
	}
}

// A pending pair's background write must not undo a mark another replica stored for the same
// refresh token: replica A's commit failed after the token endpoint rotated rt; later (its
// lease gone) replica B presented rt, was refused and marked the credential
// reauthorization_required, keeping rt. A's write retry finds the token it replaces still
// stored; it must compare the state too, and drop its pair rather than store it as active.
func TestPGWritePendingKeepsANewerMark(t *testing.T) {
	srv := newBkTokenServer(t)
	clock := newBkClock()
	brokers, stores := pgReplicas(t, 1, srv, clock, func(s *PGStore) Store {
		failing := &pgFailingCommits{PGStore: s}
		failing.failCommits.Store(1)
		return failing
	})
	a := brokers[0]
	ids := pgSeed(t, stores[0], srv, clock, 1)
	dsn := pgDSNOf(t, stores[0])
	// Hold A's write retries back until the mark is stored.
	pgExec(t, dsn, `ALTER TABLE pleo_proxy_credentials ADD CONSTRAINT hold_writes CHECK (refresh_token LIKE 'seed-%') NOT VALID`)
	if _, err := a.Authorize(t.Context(), ids[0]); err != nil || a.PendingWrites() != 1 {
		t.Fatalf("A: %v, %d pending; want the rotated pair pending", err, a.PendingWrites())
	}
	// B's mark: same refresh token, reauthorization_required (as refreshFailed writes it).
	other := pgOpen(t, dsn, PGStoreOptions{})
	cur := bkGet(t, other, ids[0])
	if cur.RefreshToken != "seed-0" {
		t.Fatalf("row holds %q", cur.RefreshToken.Reveal())
	}
	cur.State = StateReauthorizationRequired
	cur.LastError = "token endpoint rejected the refresh token: invalid_grant"
	if _, err := other.Update(t.Context(), cur); err != nil {
		t.Fatal(err)
	}
	pgExec(t, dsn, `ALTER TABLE pleo_proxy_credentials DROP CONSTRAINT hold_writes`)
	bkWaitFor(t, "A's write retry to finish", func() bool { return a.PendingWrites() == 0 })
	got := bkGet(t, other, ids[0])
	if got.State != StateReauthorizationRequired || got.RefreshToken != "seed-0" {
		t.Fatalf("row after A's retry: state %q, refresh token %q; want the mark kept", got.State, got.RefreshToken.Reveal())
	}
	if _, err := a.Authorize(t.Context(), ids[0]); !errors.Is(err, ErrReauthorizationRequired) {
		t.Fatalf("A after its retry: %v; want reauthorization required", err)
	}
}
