package credentials

import (
	"context"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Change notifications: one connection outside the pool LISTENs on pgNotifyChannel and
// reconnects with capped, jittered exponential backoff when it is lost.
//
// What changed while it was down. When LISTEN succeeds, the connection has read the
// database clock just before: its start, T0. Every change committed after LISTEN is announced on that
// connection until it breaks, so after a reconnect (LISTEN done again on the new connection)
// the changes a subscriber may have missed are among those committed after the previous T0.
// The store asks for them on the new connection, after its LISTEN, so a change is either
// visible to that query or announced on the new connection (or both, which is harmless):
// the companies whose row has updated_at after T0 (every write that announces a change sets
// updated_at = now()) and those recorded in pleo_proxy_deletions after T0 (an AFTER DELETE
// trigger). now() is a transaction's start, not its commit, so the query looks back
// pgListenMargin further, for writes that began before T0 and committed after it. Only
// when that cannot be known (no T0, the query failed, or the connection was down longer than
// the deletion log is kept) are subscribers told that everything may have changed ("").

const (
	pgListenMinBackoff = 100 * time.Millisecond
	pgListenMaxBackoff = 5 * time.Second
	// pgListenMargin is how far before T0 a reconnect looks for changes: longer than any
	// transaction that writes credentials (a refresh commit takes milliseconds; an import of
	// many thousand rows, seconds).
	pgListenMargin = time.Minute
	// pgDeletionsKept is how long pleo_proxy_deletions keeps a row (pruned by the sweep lead);
	// a connection down for longer than this, less the margin, purges the whole cache.
	pgDeletionsKept = 24 * time.Hour
)

// connectListener connects, LISTENs and returns the connection with its T0 (the database
// clock just before LISTEN).
func (s *PGStore) connectListener(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, time.Time, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, time.Time{}, err
	}
	// T0 is read just before LISTEN rather than after: earlier is only more conservative (a
	// change committed in between is looked for at the next reconnect as well), and LISTEN
	// stays the connection's last statement in pg_stat_activity, where operators find it.
	var t0 time.Time
	err = conn.QueryRow(ctx, `SELECT now()`).Scan(&t0)
	if err == nil {
		_, err = conn.Exec(ctx, `LISTEN `+pgNotifyChannel)
	}
	if err != nil {
		_ = conn.Close(context.Background())
		return nil, time.Time{}, err
	}
	s.listenPID.Store(conn.PgConn().PID())
	s.listening.Store(true)
	return conn, t0, nil
}

// changedSince returns the companies changed or deleted since t0 (less pgListenMargin),
// read on conn, which is already listening. ok is false when that cannot be known.
func changedSince(ctx context.Context, conn *pgx.Conn, t0, now time.Time) (ids []string, ok bool) {
	if t0.IsZero() || now.Sub(t0) > pgDeletionsKept-pgListenMargin {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// A sequential scan of the credentials table, once per reconnect: an index on updated_at
	// would cost every refresh its HOT update instead.
	rows, err := conn.Query(ctx, `SELECT company_id FROM pleo_proxy_credentials WHERE updated_at > $1
		UNION SELECT company_id FROM pleo_proxy_deletions WHERE deleted_at > $1`, t0.Add(-pgListenMargin))
	if err != nil {
		return nil, false
	}
	ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, false
	}
	if ids == nil {
		ids = []string{}
	}
	return ids, true
}

// listen delivers notifications to subscribers until ctx ends. conn is already listening,
// since t0.
func (s *PGStore) listen(ctx context.Context, cfg *pgx.ConnConfig, conn *pgx.Conn, t0 time.Time) {
	defer close(s.done)
	backoff := pgListenMinBackoff
	for {
		if conn != nil {
			s.receive(ctx, conn)
			s.listening.Store(false)
			_ = conn.Close(context.Background())
			conn = nil
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("postgres store: lost the change notification connection; reconnecting")
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if hook := s.beforeReconnect.Load(); hook != nil {
			(*hook)()
		}
		c, next, err := s.connectListener(ctx, cfg)
		if err != nil {
			backoff = min(backoff*2, pgListenMaxBackoff)
			s.log.Debug("postgres store: reconnecting the change notification connection failed", "error", pgSafeErr(err), "retry_in", backoff)
			continue
		}
		backoff = pgListenMinBackoff
		conn = c
		// Changes made while disconnected were not announced: announce those committed since
		// the previous connection's T0, or, when they cannot be known, that everything may
		// have changed.
		ids, ok := changedSince(ctx, conn, t0, next)
		t0 = next
		if !ok {
			s.log.Info("postgres store: change notifications reconnected; forgetting every cached credential")
			s.subs.notify([]string{""})
			continue
		}
		s.log.Info("postgres store: change notifications reconnected", "changed_meanwhile", len(ids))
		s.subs.notify(ids)
	}
}

// receive passes notifications on until the connection fails or ctx ends. The payload is
// "<company id> <origin>"; this process's own writes were announced when they committed.
func (s *PGStore) receive(ctx context.Context, conn *pgx.Conn) {
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return
		}
		id, origin, _ := strings.Cut(n.Payload, " ")
		if origin == s.origin || id == "" {
			continue
		}
		s.subs.notify([]string{id})
	}
}
