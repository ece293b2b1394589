package credentials

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// scanCounter counts the passes over the whole store (Scan) made through it.
type scanCounter struct {
	*PGStore
	scans atomic.Int64
}

func (s *scanCounter) Scan(ctx context.Context, fn func(Credential) bool) error {
	s.scans.Add(1)
	return s.PGStore.Scan(ctx, fn)
}

// TestPGSweepLead: of three replicas on one database, one leads the sweep and scans the
// table; the others read nothing from it in their sweeps, yet still refresh the credentials
// they have cached when those come due; when the leader goes away another takes the lead.
func TestPGSweepLead(t *testing.T) {
	ctx := context.Background()
	srv := newBkTokenServer(t)
	clock := newBkClock()
	dsn := pgTestDB(t)
	var counters []*scanCounter
	var brokers []*Broker
	for range 3 {
		s := &scanCounter{PGStore: pgOpen(t, dsn, PGStoreOptions{})}
		counters = append(counters, s)
		brokers = append(brokers, bkNewBroker(t, s, srv.srv.URL, clock, func(o *BrokerOptions) { o.SweepLeader = s.PGStore }))
	}
	ids := pgSeed(t, counters[0], srv, clock, 3)
	// Let the seed's change notifications reach every replica before caching anything.
	for i, b := range brokers {
		bkWaitFor(t, fmt.Sprintf("replica %d sees the seed", i), func() bool { return b.gen.Load() >= 3 })
	}

	// Replica 2 uses company 0: its first request refreshes, the next caches the new token.
	for range 2 {
		if _, err := brokers[2].Authorize(ctx, ids[0]); err != nil {
			t.Fatal(err)
		}
	}
	for range 4 {
		for _, b := range brokers {
			b.Sweep(ctx)
		}
	}
	leader := -1
	for i, c := range counters {
		switch n := c.scans.Load(); n {
		case 0:
		case 4:
			if leader >= 0 {
				t.Fatalf("replicas %d and %d both scanned", leader, i)
			}
			leader = i
		default:
			t.Fatalf("replica %d scanned %d times in 4 sweeps", i, n)
		}
	}
	if leader < 0 {
		t.Fatal("no replica leads the sweep")
	}

	// Company 0's token comes due: a follower that caches it refreshes it itself.
	follower := 2
	if leader == 2 {
		follower = 1
		if _, err := brokers[1].Authorize(ctx, ids[0]); err != nil {
			t.Fatal(err)
		}
	}
	if !brokers[follower].cache.Contains(ids[0]) {
		t.Fatal("the follower does not cache the company it uses")
	}
	calls := srv.calls.Load()
	clock.Advance(15 * time.Minute)
	if n := brokers[follower].Sweep(ctx); n != 1 {
		t.Fatalf("follower's sweep refreshed %d, want 1 (its cached credential)", n)
	}
	if srv.calls.Load() != calls+1 || srv.reuse.Load() != 0 {
		t.Fatalf("token calls %d -> %d, reuse %d", calls, srv.calls.Load(), srv.reuse.Load())
	}

	// The leader goes away (its session ends): the next replica to sweep takes the lead.
	if err := counters[leader].Close(); err != nil {
		t.Fatal(err)
	}
	before := counters[follower].scans.Load()
	brokers[follower].Sweep(ctx)
	if counters[follower].scans.Load() != before+1 {
		t.Fatal("after the leader closed, the follower did not take the lead")
	}
}
