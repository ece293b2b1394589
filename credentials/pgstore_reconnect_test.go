package credentials

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// getCounter counts the single-credential reads (Get) made through it, per company.
type getCounter struct {
	*PGStore
	mu   sync.Mutex
	gets map[string]int
}

func (s *getCounter) Get(ctx context.Context, companyID string) (Credential, error) {
	s.mu.Lock()
	if s.gets == nil {
		s.gets = map[string]int{}
	}
	s.gets[companyID]++
	s.mu.Unlock()
	return s.PGStore.Get(ctx, companyID)
}

func (s *getCounter) count(companyID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets[companyID]
}

// TestPGReconnectDropsOnlyChanged: a replica's change notification connection is ended; while
// it is down another replica changes one company and deletes another. Once it reconnects, the
// replica drops exactly those two from its cache and keeps the rest: the untouched companies
// are served without reading the store, the changed one is read anew, the deleted one is gone.
func TestPGReconnectDropsOnlyChanged(t *testing.T) {
	ctx := t.Context()
	srv := newBkTokenServer(t)
	clock := newBkClock()
	dsn := pgTestDB(t)
	other := pgOpen(t, dsn, PGStoreOptions{})
	store := &getCounter{PGStore: pgOpen(t, dsn, PGStoreOptions{})}
	broker := bkNewBroker(t, store, srv.srv.URL, clock)

	var creds []Credential
	for i := range 5 {
		creds = append(creds, Credential{CompanyID: bkCompanyID(i), Type: OAuth2, AccessToken: Secret(fmt.Sprintf("at-%d", i)),
			RefreshToken: Secret(fmt.Sprintf("rt-%d", i)), ExpiresAt: clock.Now().Add(time.Hour)})
	}
	bkPut(t, other, creds...)
	bkWaitFor(t, "the replica to hear the seed", func() bool { return broker.gen.Load() >= 5 })
	// Written long before the listener's T0 (a reconnect looks back pgListenMargin before it);
	// a change of updated_at alone announces nothing.
	pgExec(t, dsn, `UPDATE pleo_proxy_credentials SET updated_at = now() - interval '1 hour'`)
	for _, c := range creds {
		if _, err := broker.Authorize(ctx, c.CompanyID); err != nil {
			t.Fatal(err)
		}
		if !broker.cache.Contains(c.CompanyID) {
			t.Fatalf("%s not cached", c.CompanyID)
		}
	}
	changed, deleted := creds[1].CompanyID, creds[2].CompanyID
	untouched := []string{creds[0].CompanyID, creds[3].CompanyID, creds[4].CompanyID}

	// End the replica's listener and hold its reconnect until the other replica has written.
	hold := make(chan struct{})
	held := make(chan struct{}, 1)
	hook := func() {
		select {
		case held <- struct{}{}:
		default:
		}
		<-hold
	}
	store.beforeReconnect.Store(&hook)
	pid := store.listenPID.Load()
	pgExec(t, dsn, `SELECT pg_terminate_backend($1)`, int32(pid))
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the listener did not notice its connection ended")
	}
	upd := creds[1]
	upd.AccessToken = "at-1-replaced"
	bkPut(t, other, upd)
	if err := other.Delete(ctx, deleted); err != nil {
		t.Fatal(err)
	}
	if !broker.cache.Contains(changed) || !broker.cache.Contains(deleted) {
		t.Fatal("a change reached the replica while its listener was down")
	}
	store.beforeReconnect.Store(nil)
	close(hold)

	bkWaitFor(t, "the changed and deleted companies to be dropped", func() bool {
		return !broker.cache.Contains(changed) && !broker.cache.Contains(deleted)
	})
	if store.listenPID.Load() == pid {
		t.Fatal("dropped without a reconnect")
	}
	for _, id := range untouched {
		if !broker.cache.Contains(id) {
			t.Errorf("%s (untouched) was dropped too", id)
		}
		before := store.count(id)
		if _, err := broker.Authorize(ctx, id); err != nil {
			t.Fatal(err)
		}
		if store.count(id) != before {
			t.Errorf("%s (untouched) was read from the store after the reconnect", id)
		}
	}
	g, err := broker.Authorize(ctx, changed)
	if err != nil {
		t.Fatal(err)
	}
	if !g.Same(NewGrant(upd)) {
		t.Errorf("changed company: stale token after the reconnect")
	}
	if _, err := broker.Authorize(ctx, deleted); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted company: Authorize = %v, want ErrNotFound", err)
	}
}

// TestPGChangedSince: what a reconnect announces, read on a real database: the companies
// updated or deleted after T0 less the margin; nothing knowable (purge) without T0 or when T0
// is older than the deletion log keeps.
func TestPGChangedSince(t *testing.T) {
	ctx := t.Context()
	dsn := pgTestDB(t)
	s := pgOpen(t, dsn, PGStoreOptions{})
	bkPut(t, s, stOAuth(1, ""), stOAuth(2, ""), stOAuth(3, ""), stOAuth(4, ""))
	// Companies 1 and 2 were last written two hours ago; 3 is deleted now, 4 updated now.
	pgExec(t, dsn, `UPDATE pleo_proxy_credentials SET updated_at = now() - interval '2 hours'`)
	if err := s.Delete(ctx, stCompany(3)); err != nil {
		t.Fatal(err)
	}
	pgExec(t, dsn, `UPDATE pleo_proxy_credentials SET updated_at = now() WHERE company_id = $1`, stCompany(4))
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var now time.Time
	if err := conn.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		t0     time.Time
		want   []string
		wantOK bool
	}{
		{"T0 unknown", time.Time{}, nil, false},
		{"T0 older than the deletion log", now.Add(-25 * time.Hour), nil, false},
		{"T0 a second ago", now.Add(-time.Second), []string{stCompany(3), stCompany(4)}, true},
		{"T0 just after a write (margin)", now.Add(30 * time.Second), []string{stCompany(3), stCompany(4)}, true},
		{"T0 three hours ago", now.Add(-3 * time.Hour), []string{stCompany(1), stCompany(2), stCompany(3), stCompany(4)}, true},
		{"T0 after everything", now.Add(2 * pgListenMargin), []string{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := changedSince(ctx, conn, tc.t0, now)
			slices.Sort(got)
			if ok != tc.wantOK || !slices.Equal(got, tc.want) {
				t.Errorf("changedSince = %v, %v; want %v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

// TestPGRefreshCachesOwnCommit: the credential a replica has just refreshed and committed is
// cached at once, although the commit announces itself as a change: the next request is
// served without reading the store.
func TestPGRefreshCachesOwnCommit(t *testing.T) {
	ctx := t.Context()
	srv := newBkTokenServer(t)
	clock := newBkClock()
	dsn := pgTestDB(t)
	store := &getCounter{PGStore: pgOpen(t, dsn, PGStoreOptions{})}
	broker := bkNewBroker(t, store, srv.srv.URL, clock)
	ids := pgSeed(t, store, srv, clock, 1)
	bkWaitFor(t, "the seed's announcement", func() bool { return broker.gen.Load() >= 1 })
	first, err := broker.Authorize(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if srv.calls.Load() != 1 {
		t.Fatalf("token calls = %d, want 1 (the expired token refreshed)", srv.calls.Load())
	}
	if !broker.cache.Contains(ids[0]) {
		t.Fatal("the refreshed credential is not cached")
	}
	reads := store.count(ids[0])
	g, err := broker.Authorize(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if !g.Same(first) || store.count(ids[0]) != reads {
		t.Errorf("second request: same grant %v, store reads %d -> %d", g.Same(first), reads, store.count(ids[0]))
	}
}
