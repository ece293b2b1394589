// Package testenv gives tests the services and privileges they need from the machine, and
// says plainly when one is missing: under CI (CI=true) a missing one fails the test, because
// a green run that silently skipped a suite is a defect; elsewhere it skips, so a developer
// without PostgreSQL or root can still run the rest.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// InCI reports whether the tests run in CI (CI=true), where nothing may be skipped for want
// of a service or privilege.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable ends the test because something it needs is missing: Fatalf in CI, Skipf
// elsewhere.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true and a test needs what this machine lacks: "+format, args...)
	}
	t.Skipf(format, args...)
}

// PostgresDSN returns PLEO_PROXY_TEST_POSTGRES (a superuser's DSN, set by
// scripts/with-postgres), or ends the test through Unavailable.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("PLEO_PROXY_TEST_POSTGRES")
	if dsn == "" {
		Unavailable(t, "PLEO_PROXY_TEST_POSTGRES is not set (run the tests under scripts/with-postgres)")
	}
	return dsn
}

// PostgresDatabase creates a database of the test's own (its name starts with prefix), drops
// it when the test ends, and returns its DSN.
func PostgresDatabase(t testing.TB, prefix string) string {
	t.Helper()
	base := PostgresDSN(t)
	var r [6]byte
	_, _ = rand.Read(r[:])
	name := prefix + hex.EncodeToString(r[:])
	PostgresExec(t, base, "CREATE DATABASE "+name)
	t.Cleanup(func() {
		if err := exec(base, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// PostgresExec runs one statement on dsn, or fails the test.
func PostgresExec(t testing.TB, dsn, sql string, args ...any) {
	t.Helper()
	if err := exec(dsn, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// PostgresQueryRow runs a query returning one row and scans it into dest, or fails the test.
func PostgresQueryRow(t testing.TB, dsn, sql string, args []any, dest ...any) {
	t.Helper()
	err := withConn(dsn, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sql, args...).Scan(dest...)
	})
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func exec(dsn, sql string, args ...any) error {
	return withConn(dsn, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql, args...)
		return err
	})
}

// withConn runs fn on a connection of its own to dsn, within 30 seconds.
func withConn(dsn string, fn func(context.Context, *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return fn(ctx, conn)
}

// WaitFor polls cond until it holds, and fails the test naming what it waited for once
// within has passed.
func WaitFor(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Clock is a clock for injection (its Now is a func() time.Time) that moves only when told.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock standing at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
