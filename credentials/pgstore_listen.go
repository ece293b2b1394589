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

const (
	pgListenMinBackoff = 100 * time.Millisecond
	pgListenMaxBackoff = 5 * time.Second
)

func (s *PGStore) connectListener(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, `LISTEN `+pgNotifyChannel); err != nil {
		_ = conn.Close(context.Background())
		return nil, err
	}
	s.listening.Store(true)
	return conn, nil
}

// listen delivers notifications to subscribers until ctx ends. conn is already listening.
func (s *PGStore) listen(ctx context.Context, cfg *pgx.ConnConfig, conn *pgx.Conn) {
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
		c, err := s.connectListener(ctx, cfg)
		if err != nil {
			backoff = min(backoff*2, pgListenMaxBackoff)
			s.log.Debug("postgres store: reconnecting the change notification connection failed", "error", pgSafeErr(err), "retry_in", backoff)
			continue
		}
		backoff = pgListenMinBackoff
		conn = c
		s.log.Info("postgres store: change notifications reconnected")
		// Changes made while disconnected were not announced: everything may have changed.
		s.subs.notify([]string{""})
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
