package credentials

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPGStoreConformance(t *testing.T) {
	db := pgTestDB(t)
	testStoreConformance(t, func(t *testing.T) Store { return pgOpen(t, pgTestSchema(t, db), PGStoreOptions{}) })
}

func TestPGStoreConformanceEncrypted(t *testing.T) {
	db := pgTestDB(t)
	sealer := pgSealer(t)
	testStoreConformance(t, func(t *testing.T) Store {
		return pgOpen(t, pgTestSchema(t, db), PGStoreOptions{Sealer: sealer})
	})
}

func pgSealer(t *testing.T, keys ...[]byte) *Sealer {
	t.Helper()
	if len(keys) == 0 {
		keys = [][]byte{[]byte(strings.Repeat("k", SealKeySize))}
	}
	s, err := NewSealer(keys)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPGStoreEncryptedColumns: with a key, no secret is stored in the clear; without it, the
// sealed rows do not read; plain rows written before a key was set stay readable and are sealed
// by rotate-key.
func TestPGStoreEncryptedColumns(t *testing.T) {
	dsn := pgTestDB(t)
	ctx := t.Context()
	plain := pgOpen(t, dsn, PGStoreOptions{})
	if err := plain.PutAll(ctx, []Credential{stOAuth(1, "")}, false); err != nil {
		t.Fatal(err)
	}
	sealed := pgOpen(t, dsn, PGStoreOptions{Sealer: pgSealer(t)})
	if c, err := sealed.Get(ctx, stCompany(1)); err != nil || c.RefreshToken.Reveal() != "refresh-1" {
		t.Fatalf("plain row through a sealing store: %v %v", c, err)
	}
	if err := sealed.PutAll(ctx, []Credential{stOAuth(2, ""), stKey(3, IntegratedAPIKey)}, false); err != nil {
		t.Fatal(err)
	}
	if n, err := sealed.RotateKey(ctx); err != nil || n != 3 {
		t.Fatalf("RotateKey = %d, %v", n, err)
	}
	all := pgQueryString(t, dsn, `SELECT string_agg(access_token || refresh_token || api_key, ',') FROM pleo_proxy_credentials`)
	for _, secret := range []string{"access-1", "refresh-1", "access-2", "refresh-2", "key-3"} {
		if strings.Contains(all, secret) {
			t.Errorf("secret %q stored in the clear", secret)
		}
	}
	for n, want := range map[int]string{1: "refresh-1", 2: "refresh-2"} {
		if c, err := sealed.Get(ctx, stCompany(n)); err != nil || c.RefreshToken.Reveal() != want {
			t.Errorf("Get(%d) after sealing = %v, %v", n, c, err)
		}
	}
	if _, err := plain.Get(ctx, stCompany(2)); err == nil || !strings.Contains(err.Error(), "PLEO_PROXY_ENCRYPTION_KEY") {
		t.Errorf("a sealed row read without a key: %v", err)
	}
	// A value moved to another company does not open.
	pgExec(t, dsn, `UPDATE pleo_proxy_credentials SET refresh_token = (SELECT refresh_token FROM pleo_proxy_credentials WHERE company_id = $1) WHERE company_id = $2`, stCompany(1), stCompany(2))
	if _, err := sealed.Get(ctx, stCompany(2)); !errors.Is(err, ErrSealedAuthentication) {
		t.Errorf("moved sealed value: %v, want ErrSealedAuthentication", err)
	}
}

// TestPGStoreNotifiesOtherProcesses: a change committed through one store reaches another
// store's subscribers (LISTEN/NOTIFY) with the company id only; lease-only writes announce
// nothing.
func TestPGStoreNotifiesOtherProcesses(t *testing.T) {
	dsn := pgTestDB(t)
	ctx := t.Context()
	a := pgOpen(t, dsn, PGStoreOptions{})
	b := pgOpen(t, dsn, PGStoreOptions{})
	var ev stEvents
	defer b.Subscribe(ev.record)()
	if err := a.PutAll(ctx, []Credential{stOAuth(1, "")}, false); err != nil {
		t.Fatal(err)
	}
	stWaitFor(t, "insert notification", func() bool { return ev.announced(stCompany(1)) })
	ev.reset()
	lock, err := a.LockRefresh(ctx, stCompany(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := lock.Lease(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := a.Update(ctx, func() Credential { c, _ := a.Get(ctx, stCompany(1)); c.AccessToken = "new"; return c }())
	if err != nil {
		t.Fatal(err)
	}
	stWaitFor(t, "update notification", func() bool { return ev.announced(stCompany(1)) })
	if n := ev.count(); n != 1 {
		t.Errorf("%d notifications for one lease, one release and one update, want 1", n)
	}
	ev.reset()
	if err := a.Delete(ctx, c.CompanyID); err != nil {
		t.Fatal(err)
	}
	stWaitFor(t, "delete notification", func() bool { return ev.announced(stCompany(1)) })
}

// TestPGStoreNotificationReconnect: when the notification connection is killed, the store
// reconnects and hears later changes; it does not tell subscribers that everything may have
// changed, since it knows what did (TestPGReconnectDropsOnlyChanged).
func TestPGStoreNotificationReconnect(t *testing.T) {
	dsn := pgTestDB(t)
	ctx := t.Context()
	a := pgOpen(t, dsn, PGStoreOptions{})
	b := pgOpen(t, dsn, PGStoreOptions{})
	var ev stEvents
	defer b.Subscribe(ev.record)()
	pid := b.listenPID.Load()
	pgExec(t, dsn, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`)
	stWaitFor(t, "reconnect", func() bool { return b.listenPID.Load() != pid })
	if err := b.Ping(ctx); err != nil {
		t.Errorf("Ping after reconnect: %v", err)
	}
	ev.reset()
	if err := a.PutAll(ctx, []Credential{stOAuth(4, "")}, false); err != nil {
		t.Fatal(err)
	}
	stWaitFor(t, "notification after reconnect", func() bool { return ev.announced(stCompany(4)) })
	if ev.announced("") {
		t.Error("the reconnect announced that everything may have changed")
	}
}

// TestPGRefreshLock: the lock is per company and excludes other processes for exactly as long
// as it is held; a lease whose outcome is unknown blocks other processes (not its own) until
// an Update settles it or it expires; Commit is a compare-and-swap on the refresh token.
func TestPGRefreshLock(t *testing.T) {
	dsn := pgTestDB(t)
	ctx := t.Context()
	a := pgOpen(t, dsn, PGStoreOptions{Sealer: pgSealer(t)})
	b := pgOpen(t, dsn, PGStoreOptions{Sealer: pgSealer(t)})
	if err := a.PutAll(ctx, []Credential{stOAuth(1, "t1"), stOAuth(2, "")}, false); err != nil {
		t.Fatal(err)
	}

	t.Run("ExcludesOthersUntilCommit", func(t *testing.T) {
		la, err := a.LockRefresh(ctx, stCompany(1))
		if err != nil {
			t.Fatal(err)
		}
		// Another company is not blocked.
		lo, err := b.LockRefresh(ctx, stCompany(2))
		if err != nil {
			t.Fatal(err)
		}
		_ = lo.Release(ctx)
		got := make(chan RefreshLock, 1)
		go func() {
			lb, err := b.LockRefresh(ctx, stCompany(1))
			if err != nil {
				t.Error(err)
			}
			got <- lb
		}()
		if err := la.Lease(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		// Once the second process waits on the advisory lock (or, wrongly, has it), look.
		stWaitFor(t, "the second process to wait on the lock", func() bool {
			return len(got) > 0 || pgQueryString(t, dsn, `SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory'
				AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`) != "0"
		})
		select {
		case <-got:
			t.Fatal("a second process took a held lock")
		default:
		}
		next := la.Current()
		next.AccessToken, next.RefreshToken = "access-1b", "refresh-1b"
		saved, err := la.Commit(ctx, next)
		if err != nil {
			t.Fatal(err)
		}
		if saved.TenantID != "t1" || saved.Version != la.Current().Version+1 {
			t.Errorf("Commit returned %v tenant %q", saved, saved.TenantID)
		}
		lb := <-got
		if lb == nil {
			t.FailNow()
		}
		if c := lb.Current(); c.RefreshToken.Reveal() != "refresh-1b" || c.Version != saved.Version {
			t.Errorf("read under the lock after the commit: %v", c)
		}
		if err := lb.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("UnknownOutcomeBlocksOthers", func(t *testing.T) {
		la, err := a.LockRefresh(ctx, stCompany(1))
		if err != nil {
			t.Fatal(err)
		}
		if err := la.Lease(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		// The commit never happens: the connection is lost (as in a crash or a database
		// restart), which releases the lock but not the lease.
		pgDiscard(la.(*pgLock).conn)
		la.(*pgLock).conn = nil
		if _, err := b.LockRefresh(ctx, stCompany(1)); !errors.Is(err, ErrRefreshInProgress) {
			t.Fatalf("another process while the outcome is unknown: %v, want ErrRefreshInProgress", err)
		}
		// The holder itself may go on (it holds the pair in memory).
		own, err := a.LockRefresh(ctx, stCompany(1))
		if err != nil {
			t.Fatalf("the lease holder: %v", err)
		}
		_ = own.Release(ctx) // took no lease of its own: leaves the row's lease alone
		if _, err := b.LockRefresh(ctx, stCompany(1)); !errors.Is(err, ErrRefreshInProgress) {
			t.Fatalf("lease survived the holder's release without a lease: %v", err)
		}
		// The holder's write retry settles it.
		c := la.Current()
		c.RefreshToken = "refresh-1c"
		if _, err := a.Update(ctx, c); err != nil {
			t.Fatal(err)
		}
		lb, err := b.LockRefresh(ctx, stCompany(1))
		if err != nil {
			t.Fatalf("after the write landed: %v", err)
		}
		if lb.Current().RefreshToken.Reveal() != "refresh-1c" {
			t.Errorf("read %v", lb.Current())
		}
		_ = lb.Release(ctx)
	})

	t.Run("LeaseExpires", func(t *testing.T) {
		la, err := a.LockRefresh(ctx, stCompany(2))
		if err != nil {
			t.Fatal(err)
		}
		if err := la.Lease(ctx, 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		pgDiscard(la.(*pgLock).conn)
		la.(*pgLock).conn = nil
		if _, err := b.LockRefresh(ctx, stCompany(2)); !errors.Is(err, ErrRefreshInProgress) {
			t.Fatalf("before expiry: %v", err)
		}
		// The lease ends by the database's clock: wait until that clock has passed it.
		stWaitFor(t, "the lease to expire", func() bool {
			return pgQueryString(t, dsn, `SELECT (refresh_lease_until <= now())::text
				FROM pleo_proxy_credentials WHERE company_id = $1`, CanonicalCompanyID(stCompany(2))) == "true"
		})
		lb, err := b.LockRefresh(ctx, stCompany(2))
		if err != nil {
			t.Fatalf("after expiry: %v", err)
		}
		_ = lb.Release(ctx)
	})

	t.Run("CommitIsCompareAndSwap", func(t *testing.T) {
		la, err := a.LockRefresh(ctx, stCompany(2))
		if err != nil {
			t.Fatal(err)
		}
		if err := la.Lease(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		// An import replaces the credential during the exchange.
		repl := stOAuth(2, "")
		repl.RefreshToken = "imported"
		if err := b.PutAll(ctx, []Credential{repl}, false); err != nil {
			t.Fatal(err)
		}
		next := la.Current()
		next.RefreshToken = "rotated"
		if _, err := la.Commit(ctx, next); !errors.Is(err, ErrConflict) {
			t.Fatalf("Commit over a replaced credential: %v, want ErrConflict", err)
		}
		if c, _ := b.Get(ctx, stCompany(2)); c.RefreshToken.Reveal() != "imported" {
			t.Errorf("stored %q, want the import's", c.RefreshToken.Reveal())
		}
		// A key rotation re-seals without changing the secret: no conflict.
		la, err = a.LockRefresh(ctx, stCompany(2))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.RotateKey(ctx); err != nil {
			t.Fatal(err)
		}
		next = la.Current()
		next.RefreshToken = "rotated"
		if _, err := la.Commit(ctx, next); err != nil {
			t.Fatalf("Commit after a key rotation: %v", err)
		}
	})

	t.Run("UnknownCompany", func(t *testing.T) {
		if _, err := a.LockRefresh(ctx, stCompany(9)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%v, want ErrNotFound", err)
		}
	})
}

// TestPGStoreUnreachable: Open fails, naming no password, when the server is unreachable (no
// server needed).
func TestPGStoreUnreachable(t *testing.T) {
	_, err := Open("postgres://user:hunter2@127.0.0.1:1/db?connect_timeout=1", OpenOptions{})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("Open of an unreachable database: %v", err)
	}
}
