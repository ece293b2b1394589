package credentials

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// pgTestDB creates a database of its own for the test, dropped at its end, and returns its
// DSN; without PostgreSQL the test skips, or fails under CI=true (testenv).
func pgTestDB(t testing.TB) string { return testenv.PostgresDatabase(t, "pt_") }

// pgTestSchema creates a schema of its own in the database dsn names and returns a DSN whose
// search_path is that schema.
func pgTestSchema(t testing.TB, dsn string) string {
	t.Helper()
	var r [6]byte
	_, _ = rand.Read(r[:])
	name := "s_" + hex.EncodeToString(r[:])
	testenv.PostgresExec(t, dsn, "CREATE SCHEMA "+name)
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
	testenv.PostgresExec(t, dsn, sql, args...)
}

// pgQueryString runs a query returning one text value.
func pgQueryString(t testing.TB, dsn, sql string, args ...any) string {
	t.Helper()
	var v string
	testenv.PostgresQueryRow(t, dsn, sql, args, &v)
	return v
}

// pgDSNOf returns a DSN for the database a store is connected to.
func pgDSNOf(t testing.TB, s *PGStore) string {
	t.Helper()
	return s.pool.Config().ConnConfig.ConnString()
}
