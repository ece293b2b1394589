package credentials

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// Brokers over PGStores of their own on one database stand for replicas.

func pgReplicas(t *testing.T, n int, srv *bkTokenServer, clock *testenv.Clock, wrap func(*PGStore) Store) ([]*Broker, []*PGStore) {
	t.Helper()
	dsn := pgTestDB(t)
	var brokers []*Broker
	var stores []*PGStore
	for range n {
		s := pgOpen(t, dsn, PGStoreOptions{})
		var st Store = s
		if wrap != nil {
			st = wrap(s)
		}
		stores = append(stores, s)
		brokers = append(brokers, bkNewBroker(t, st, srv.srv.URL, clock))
	}
	return brokers, stores
}

func pgSeed(t *testing.T, s Store, srv *bkTokenServer, clock *testenv.Clock, n int) []string {
	t.Helper()
	var ids []string
	var creds []Credential
	for i := range n {
		id := bkCompanyID(i)
		ids = append(ids, id)
		rt := fmt.Sprintf("seed-%d", i)
		srv.seed(rt)
		creds = append(creds, Credential{CompanyID: id, Type: OAuth2, AccessToken: Secret("old-" + rt),
			RefreshToken: Secret(rt), ExpiresAt: clock.Now().Add(-time.Minute)})
	}
	bkPut(t, s, creds...)
	return ids
}

// TestPGReplicasRefreshOncePerCompany: 4 replicas, 10 companies with expired tokens, 400
// concurrent requests: exactly one token call per company, no reuse, every replica hands out
// the one new token; and again after the new tokens expire.
func TestPGReplicasRefreshOncePerCompany(t *testing.T) {
	srv := newBkTokenServer(t)
	clock := newBkClock()
	brokers, stores := pgReplicas(t, 4, srv, clock, nil)
	ids := pgSeed(t, stores[0], srv, clock, 10)
	for round := 1; round <= 2; round++ {
		var wg sync.WaitGroup
		var mu sync.Mutex
		seen := map[string]map[string]bool{}
		for i := range 400 {
			wg.Go(func() {
				id := ids[i%len(ids)]
				g, err := brokers[(i/len(ids))%len(brokers)].Authorize(context.Background(), id)
				if err != nil {
					t.Errorf("round %d: Authorize(%s): %v", round, id, err)
					return
				}
				mu.Lock()
				if seen[id] == nil {
					seen[id] = map[string]bool{}
				}
				seen[id][g.Authorization()] = true
				mu.Unlock()
			})
		}
		wg.Wait()
		if got, want := srv.calls.Load(), int64(round*len(ids)); got != want {
			t.Errorf("round %d: %d token calls, want %d", round, got, want)
		}
		if r := srv.reuse.Load(); r != 0 {
			t.Fatalf("round %d: %d refresh tokens presented twice", round, r)
		}
		for id, grants := range seen {
			if len(grants) != 1 {
				t.Errorf("round %d: company %s got %d different tokens", round, id, len(grants))
			}
		}
		clock.Advance(time.Hour)
	}
}

// pgFailingCommits makes the first failCommits refresh commits fail as a lost connection
// would: nothing written, the lock released, the lease left in place.
type pgFailingCommits struct {
	*PGStore
	failCommits atomic.Int32
}

func (s *pgFailingCommits) LockRefresh(ctx context.Context, id string) (RefreshLock, error) {
	l, err := s.PGStore.LockRefresh(ctx, id)
	if err != nil {
		return nil, err
	}
	return &pgFailingLock{RefreshLock: l, s: s}, nil
}

type pgFailingLock struct {
	RefreshLock
	s *pgFailingCommits
}

func (l *pgFailingLock) Commit(ctx context.Context, next Credential) (Credential, error) {
	if l.s.failCommits.Add(-1) >= 0 {
		pl := l.RefreshLock.(*pgLock)
		pgDiscard(pl.conn)
		pl.conn = nil
		return Credential{}, fmt.Errorf("%w: injected: connection lost during commit", ErrStoreUnavailable)
	}
	return l.RefreshLock.Commit(ctx, next)
}

// TestPGCommitFailureHoldsOtherReplicasOff: replica A's commit fails after the token endpoint
// rotated the token. A keeps and uses the new pair and retries the write; meanwhile replica B
// does not call the token endpoint (its request fails with store_unavailable, having nothing
// unexpired cached); once A's write lands, B adopts the pair without a token call.
func TestPGCommitFailureHoldsOtherReplicasOff(t *testing.T) {
	srv := newBkTokenServer(t)
	clock := newBkClock()
	var failing *pgFailingCommits
	n := 0
	brokers, stores := pgReplicas(t, 2, srv, clock, func(s *PGStore) Store {
		n++
		if n == 1 {
			failing = &pgFailingCommits{PGStore: s}
			failing.failCommits.Store(1)
			return failing
		}
		return s
	})
	a, b := brokers[0], brokers[1]
	ids := pgSeed(t, stores[0], srv, clock, 1)
	// Hold A's write retries back until B has tried.
	pgExec(t, pgDSNOf(t, stores[0]), `ALTER TABLE pleo_proxy_credentials ADD CONSTRAINT hold_writes CHECK (refresh_token LIKE 'seed-%') NOT VALID`)
	ga, err := a.Authorize(t.Context(), ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if ga.Authorization() != "Bearer at-1" || a.PendingWrites() != 1 {
		t.Fatalf("A got %q with %d pending writes; want the new token, pending", ga.Authorization(), a.PendingWrites())
	}
	_, err = b.Authorize(t.Context(), ids[0])
	if !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, ErrRefreshInProgress) {
		t.Fatalf("B during the unknown outcome: %v, want store unavailable (refresh in progress)", err)
	}
	if c := srv.calls.Load(); c != 1 {
		t.Fatalf("%d token calls, want 1", c)
	}
	pgExec(t, pgDSNOf(t, stores[0]), `ALTER TABLE pleo_proxy_credentials DROP CONSTRAINT hold_writes`)
	bkWaitFor(t, "A's write retry", func() bool { return a.PendingWrites() == 0 })
	gb, err := b.Authorize(t.Context(), ids[0])
	if err != nil || !gb.Same(ga) {
		t.Fatalf("B after the write landed: %v, %v; want A's token", gb.Authorization(), err)
	}
	if c, r := srv.calls.Load(), srv.reuse.Load(); c != 1 || r != 0 {
		t.Fatalf("%d token calls, %d reuses; want 1, 0", c, r)
	}
}

// TestPGUnauthorizedRereadsTheRow: a replica whose cached token got a 401 re-reads the row
// under the lock and adopts the token another replica stored, without a token call.
func TestPGUnauthorizedRereadsTheRow(t *testing.T) {
	srv := newBkTokenServer(t)
	clock := newBkClock()
	brokers, stores := pgReplicas(t, 2, srv, clock, nil)
	a, b := brokers[0], brokers[1]
	ids := pgSeed(t, stores[0], srv, clock, 1)
	g1, err := b.Authorize(t.Context(), ids[0])
	if err != nil {
		t.Fatal(err)
	}
	// A refreshes after the upstream rejected the token (as if revoked).
	g2, retry, err := a.Reauthorize(t.Context(), ids[0], g1)
	if err != nil || !retry || g2.Same(g1) {
		t.Fatalf("A Reauthorize: %v %v", retry, err)
	}
	// B gets the same 401 for its token.
	g3, retry, err := b.Reauthorize(t.Context(), ids[0], g1)
	if err != nil || !retry || !g3.Same(g2) {
		t.Fatalf("B Reauthorize: %q %v %v; want A's token", g3.Authorization(), retry, err)
	}
	if c := srv.calls.Load(); c != 2 {
		t.Fatalf("%d token calls, want 2 (the first refresh and A's)", c)
	}
}
