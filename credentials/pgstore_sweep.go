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
}

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
	}
	return got
}

// drop closes the lead's connection, which releases the lock if it was held.
func (l *pgSweepLead) drop() {
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = l.conn.Close(ctx)
		cancel()
	}
	l.conn, l.held = nil, false
}
