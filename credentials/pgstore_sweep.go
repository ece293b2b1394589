package credentials

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgSweepLockKey is the session advisory lock held by the replica that runs the background
// sweep ("pleoswep" in ASCII).
const pgSweepLockKey int64 = 0x706c656f73776570

// pgSweepLead is the sweep lead: one connection outside the pool that holds pgSweepLockKey
// while this process leads. The server releases the lock when that session ends, so a replica
// that dies (or loses its connection) hands the lead to the next one that asks.
type pgSweepLead struct {
	mu   sync.Mutex
	cfg  *pgx.ConnConfig
	conn *pgx.Conn
	held bool
	// pruned is when the lead last pruned pleo_proxy_deletions (zero: not yet).
	pruned time.Time
}

// pgPruneEvery is how often the sweep lead prunes the deletion log.
const pgPruneEvery = time.Hour

// LeadSweep reports whether this process leads the background sweep, taking the lead when no
// process holds it; see SweepLeader. It costs one round trip on its own connection.
func (s *PGStore) LeadSweep(ctx context.Context) bool {
	l := &s.lead
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.closed.Load() {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if l.conn == nil {
		conn, err := pgx.ConnectConfig(ctx, l.cfg)
		if err != nil {
			s.log.Debug("postgres store: sweep lead: cannot connect", "error", pgSafeErr(err))
			return false
		}
		l.conn, l.held = conn, false
	}
	if l.held {
		if err := l.conn.Ping(ctx); err == nil {
			l.prune(ctx, s)
			return true
		}
		s.log.Warn("postgres store: lost the sweep lead's connection; another replica may take the lead")
		l.drop()
		return false
	}
	var got bool
	if err := l.conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, pgSweepLockKey).Scan(&got); err != nil {
		l.drop()
		return false
	}
	if got {
		l.held = true
		s.log.Info("postgres store: this replica now runs the background sweep")
		l.prune(ctx, s)
	}
	return got
}

// prune deletes the deletion log's rows older than pgDeletionsKept, at most once every
// pgPruneEvery; a failure is retried at the next sweep.
func (l *pgSweepLead) prune(ctx context.Context, s *PGStore) {
	if !l.pruned.IsZero() && time.Since(l.pruned) < pgPruneEvery {
		return
	}
	if _, err := l.conn.Exec(ctx, `DELETE FROM pleo_proxy_deletions WHERE deleted_at < now() - make_interval(secs => $1)`,
		pgDeletionsKept.Seconds()); err != nil {
		s.log.Debug("postgres store: pruning the deletion log failed", "error", pgSafeErr(err))
		return
	}
	l.pruned = time.Now()
}

// drop closes the lead's connection, which releases the lock if it was held. The lock is
// released explicitly first when the connection still works: the server ends a closed
// session asynchronously, and the next replica should not find the lock still held.
func (l *pgSweepLead) drop() {
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if l.held {
			_, _ = l.conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, pgSweepLockKey)
		}
		_ = l.conn.Close(ctx)
		cancel()
	}
	l.conn, l.held = nil, false
}
