package credentials

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgBaseDSN is the DSN of a PostgreSQL server the tests may create databases on
// (PLEO_PROXY_TEST_POSTGRES, set by scripts/with-postgres). Without it the test is skipped,
// except under CI=true, where it fails.
func pgBaseDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("PLEO_PROXY_TEST_POSTGRES")
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("PLEO_PROXY_TEST_POSTGRES is not set: PostgreSQL tests must run under scripts/with-postgres in CI")
		}
		t.Skip("PLEO_PROXY_TEST_POSTGRES is not set (run the tests under scripts/with-postgres)")
	}
	return dsn
}

// pgTestDB creates a database of its own for the test, dropped at its end, and returns its DSN.
func pgTestDB(t testing.TB) string {
	t.Helper()
	base := pgBaseDSN(t)
	var r [6]byte
	_, _ = rand.Read(r[:])
	name := "pt_" + hex.EncodeToString(r[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to PLEO_PROXY_TEST_POSTGRES: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Logf("drop database %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
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

// pgTestSchema creates a schema of its own in the database dsn names and returns a DSN whose
// search_path is that schema.
func pgTestSchema(t testing.TB, dsn string) string {
	t.Helper()
	var r [6]byte
	_, _ = rand.Read(r[:])
	name := "s_" + hex.EncodeToString(r[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(dsn)
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// pgOpen opens a PGStore on dsn, closed when the test ends.
func pgOpen(t testing.TB, dsn string, opts PGStoreOptions) *PGStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := OpenPGStore(ctx, dsn, opts)
	if err != nil {
		t.Fatalf("OpenPGStore: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// pgExec runs one statement on dsn.
func pgExec(t testing.TB, dsn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// pgQueryString runs a query returning one text value.
func pgQueryString(t testing.TB, dsn, sql string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// pgDSNOf returns a DSN for the database a store is connected to.
func pgDSNOf(t testing.TB, s *PGStore) string {
	t.Helper()
	return s.pool.Config().ConnConfig.ConnString()
}
