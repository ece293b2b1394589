package credentials

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Cross-process refresh coordination.
//
// The lock is a session-level advisory lock keyed by the company, held on one pooled
// connection from LockRefresh until Commit or Release, and released by the server if that
// connection ends (a crashed replica never leaves it behind). It is per company: other
// companies never wait. A row lock (SELECT … FOR UPDATE) cannot serve, because the refresh
// lease must be committed before the token endpoint is called, and a commit ends the
// transaction that holds a row lock; the advisory lock survives it.
//
// The lease (refresh_lease_holder, refresh_lease_until in the row) is committed before the
// exchange and cleared by the commit of the rotated pair. A replica that takes the lock and
// finds another's unexpired lease knows that replica presented the refresh token and did not
// commit the result (its commit failed and it is retrying, its token call's outcome is
// unknown and it may still read a late answer, or it died): it must not call the token
// endpoint, and gets ErrRefreshInProgress.

// pgLockKey is the advisory lock key of a company's refresh lock: 64 bits of a SHA-256, so
// two companies share a lock with negligible probability.
func pgLockKey(companyID string) int64 {
	sum := sha256.Sum256([]byte("pleo-auth-proxy refresh lock " + CanonicalCompanyID(companyID)))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// LockRefresh takes the company's refresh lock; see RefreshLocker.
func (s *PGStore) LockRefresh(ctx context.Context, companyID string) (RefreshLock, error) {
	id := CanonicalCompanyID(companyID)
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, storeUnavailable("refresh lock", err)
	}
	key := pgLockKey(id)
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
		// The lock may or may not have been granted: drop the connection, which releases it.
		pgDiscard(conn)
		return nil, storeUnavailable("refresh lock", err)
	}
	l := &pgLock{s: s, conn: conn, key: key, id: id}
	var r pgRow
	var holder *string
	var leaseActive bool
	err = conn.QueryRow(ctx, `SELECT `+pgColumns+`, refresh_lease_holder,
			coalesce(refresh_lease_until > now(), false)
		FROM pleo_proxy_credentials WHERE company_id = $1`, id).Scan(append(r.dest(), &holder, &leaseActive)...)
	if errors.Is(err, pgx.ErrNoRows) {
		l.unlock(ctx)
		return nil, fmt.Errorf("%w: company %s", ErrNotFound, id)
	}
	if err != nil {
		l.unlock(ctx)
		return nil, storeUnavailable("refresh lock", err)
	}
	if leaseActive && holder != nil && *holder != s.origin {
		l.unlock(ctx)
		return nil, fmt.Errorf("%w: company %s: a refresh by %s has an unknown outcome", ErrRefreshInProgress, id, *holder)
	}
	if l.cur, err = s.credential(&r); err != nil {
		l.unlock(ctx)
		return nil, err
	}
	return l, nil
}

// pgDiscard closes a pooled connection instead of returning it (it may hold a lock).
func pgDiscard(conn *pgxpool.Conn) {
	c := conn.Hijack()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// pgLock is one held refresh lock.
type pgLock struct {
	s      *PGStore
	conn   *pgxpool.Conn // nil once released
	key    int64
	id     string
	cur    Credential
	leased bool
}

func (l *pgLock) Current() Credential { return l.cur }

func (l *pgLock) Lease(ctx context.Context, d time.Duration) error {
	if l.conn == nil {
		return errors.New("credentials: refresh lease: the lock was released")
	}
	tag, err := l.conn.Exec(ctx, `UPDATE pleo_proxy_credentials
		SET refresh_lease_holder = $2, refresh_lease_until = now() + make_interval(secs => $3)
		WHERE company_id = $1 AND version = $4`, l.id, l.s.origin, d.Seconds(), l.cur.Version)
	if err != nil {
		// The lease may have been written (the answer lost): Release clears it, so that
		// other replicas are not held off by a lease on a refresh that never started.
		l.leased = true
		return storeUnavailable("refresh lease", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: company %s changed while its refresh lock was taken", ErrConflict, l.id)
	}
	l.leased = true
	return nil
}

func (l *pgLock) Commit(ctx context.Context, next Credential) (Credential, error) {
	if l.conn == nil {
		return Credential{}, errors.New("credentials: refresh commit: the lock was released")
	}
	defer l.unlock(ctx)
	next.CompanyID = l.id
	next.Type, next.TenantID, next.APIKey = l.cur.Type, l.cur.TenantID, ""
	next, err := prepareOne(next)
	if err != nil {
		return Credential{}, err
	}
	next = pgNormalize(next)
	v, err := l.s.values(next)
	if err != nil {
		return Credential{}, err
	}
	var saved Credential
	err = pgx.BeginFunc(ctx, l.conn, func(tx pgx.Tx) error {
		// The compare-and-swap: the refresh token stored now is still the one read under the
		// lock (compared in clear: sealed values differ for the same secret).
		var r pgRow
		err := tx.QueryRow(ctx, `SELECT `+pgColumns+` FROM pleo_proxy_credentials WHERE company_id = $1 FOR UPDATE`, l.id).Scan(r.dest()...)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: company %s", ErrNotFound, l.id)
		}
		if err != nil {
			return err
		}
		stored, err := l.s.credential(&r)
		if err != nil {
			return err
		}
		if stored.RefreshToken != l.cur.RefreshToken {
			return fmt.Errorf("%w: company %s: its refresh token was replaced during the refresh", ErrConflict, l.id)
		}
		var version int64
		if err := tx.QueryRow(ctx, `UPDATE pleo_proxy_credentials SET access_token = $2, refresh_token = $3,
				secrets_sealed = $4, expires_at = $5, state = $6, last_refreshed_at = $7, last_error = $8,
				version = version + 1, refresh_lease_holder = NULL, refresh_lease_until = NULL,
				updated_at = now()
			WHERE company_id = $1 RETURNING version`,
			l.id, v.access, v.refresh, v.sealed, v.expiresAt, v.state, v.lastRefreshed, v.lastError).Scan(&version); err != nil {
			return err
		}
		saved = next
		saved.TenantID, saved.Version = stored.TenantID, version
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
			return Credential{}, err
		}
		return Credential{}, storeUnavailable("refresh commit", err)
	}
	l.leased = false
	l.s.subs.notify([]string{l.id})
	return saved, nil
}

func (l *pgLock) Release(ctx context.Context) error {
	if l.conn == nil {
		return nil
	}
	defer l.unlock(ctx)
	if !l.leased {
		return nil
	}
	const clear = `UPDATE pleo_proxy_credentials SET refresh_lease_holder = NULL,
			refresh_lease_until = NULL WHERE company_id = $1 AND refresh_lease_holder = $2`
	if _, err := l.conn.Exec(ctx, clear, l.id, l.s.origin); err != nil {
		// The lock's connection may be what failed (a lease write cut short by its deadline
		// closes it): clear the lease on another one. Release is only called when the
		// refresh's outcome is known (Hold keeps a lease whose outcome is not).
		if _, err := l.s.pool.Exec(ctx, clear, l.id, l.s.origin); err != nil {
			return storeUnavailable("refresh lease release", err)
		}
	}
	l.leased = false
	return nil
}

func (l *pgLock) Hold(ctx context.Context) {
	l.leased = false
	l.unlock(ctx)
}

// unlock releases the advisory lock and returns the connection to the pool, or closes the
// connection (which releases the lock server-side) when the unlock cannot be confirmed.
func (l *pgLock) unlock(ctx context.Context) {
	conn := l.conn
	if conn == nil {
		return
	}
	l.conn = nil
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	var ok bool
	if err := conn.QueryRow(uctx, `SELECT pg_advisory_unlock($1)`, l.key).Scan(&ok); err != nil || !ok {
		pgDiscard(conn)
		return
	}
	conn.Release()
}
