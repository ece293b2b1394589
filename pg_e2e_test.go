package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// End-to-end tests of the PostgreSQL store through the built binary. They need a server:
// PLEO_PROXY_TEST_POSTGRES (scripts/with-postgres sets it); without one they skip, except
// under CI=true, where they fail.

// pgE2ECount runs a count query on dsn.
func pgE2ECount(t *testing.T, dsn, sql string) int64 {
	t.Helper()
	var n int64
	testenv.PostgresQueryRow(t, dsn, sql, nil, &n)
	return n
}

// TestPGMigrationRace starts 5 processes at once against an empty database: each applies
// the schema migrations at start-up; all succeed, and the schema exists once.
func TestPGMigrationRace(t *testing.T) {
	dsn := testenv.PostgresDatabase(t, "e2e_")
	env := []string{"PATH=" + os.Getenv("PATH"), "PLEO_PROXY_STORE=" + dsn}
	bin := binary(t)
	const n = 5
	cmds := make([]*exec.Cmd, n)
	outs := make([]*strings.Builder, n)
	for i := range cmds {
		cmds[i] = exec.Command(bin, "credentials", "list")
		cmds[i].Env = env
		outs[i] = &strings.Builder{}
		cmds[i].Stdout, cmds[i].Stderr = outs[i], outs[i]
	}
	for _, c := range cmds { // started back to back: they connect and migrate together
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Errorf("process %d: %v: %s", i, err, outs[i])
		}
	}
	shipped, err := filepath.Glob("credentials/migrations/*.sql")
	if err != nil || len(shipped) == 0 {
		t.Fatalf("no migrations found: %v", err)
	}
	if got := pgE2ECount(t, dsn, `SELECT count(*) FROM pleo_proxy_schema_migrations`); got != int64(len(shipped)) {
		t.Errorf("%d migrations recorded, want %d (each once)", got, len(shipped))
	}
	if got := pgE2ECount(t, dsn, `SELECT count(*) FROM pg_tables WHERE tablename = 'pleo_proxy_credentials'`); got != 1 {
		t.Errorf("%d credential tables, want 1", got)
	}
}

// pgLoadResult counts what clients saw.
type pgLoadResult struct {
	ok, unauthorized, serverErrors, other, transport atomic.Int64
}

func (r *pgLoadResult) String() string {
	return fmt.Sprintf("200: %d, 401: %d, 5xx: %d, other: %d, transport errors: %d",
		r.ok.Load(), r.unauthorized.Load(), r.serverErrors.Load(), r.other.Load(), r.transport.Load())
}

// pgLoad sends requests for every company through every sidecar from workers goroutines until
// ctx ends.
func pgLoad(ctx context.Context, sidecars []*sidecar, companies []string, workers int, res *pgLoadResult) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; ctx.Err() == nil; i += workers {
				s := sidecars[i%len(sidecars)]
				c := companies[(i/len(sidecars))%len(companies)]
				code, err := s.get(client, c)
				switch {
				case err != nil:
					if ctx.Err() == nil {
						res.transport.Add(1)
					}
				case code == http.StatusOK:
					res.ok.Add(1)
				case code == http.StatusUnauthorized:
					res.unauthorized.Add(1)
				case code >= 500:
					res.serverErrors.Add(1)
				default:
					res.other.Add(1)
				}
			}
		})
	}
	wg.Wait()
}

// TestPGMultiProcess runs 3 sidecar processes on one database, 20 companies whose access
// tokens live 1 s at a strict, rotating, reuse-detecting authorisation server, and 20 s of
// concurrent load spread over the processes: no reuse, no 401 or 5xx, and token calls within
// 1.2x the minimum. Then PostgreSQL is restarted under load: the sidecars recover and no
// token is lost. The credentials are imported with the credentials CLI.
func TestPGMultiProcess(t *testing.T) {
	if testing.Short() && !testenv.InCI() { // CI runs it even with -short: it never skips there
		t.Skip("about 40 s")
	}
	dsn := testenv.PostgresDatabase(t, "e2e_")
	const ttl = time.Second
	srv := oauthtest.NewServer(t, oauthtest.Options{AccessTTL: ttl})
	const nCompanies = 20
	companies := make([]string, nCompanies)
	var creds []credentials.Credential
	for i := range companies {
		companies[i] = fmt.Sprintf("b0570000-0000-4000-8000-%012d", i)
		creds = append(creds, grantedCredential(t, srv, companies[i], time.Now().Add(-time.Minute)))
	}
	doc, err := credentials.Marshal(creds)
	if err != nil {
		t.Fatal(err)
	}
	env := oauthSidecarEnv(srv, dsn,
		"PLEO_PROXY_ENCRYPTION_KEY="+strings.Repeat("A", 43)+"=",
		"PLEO_PROXY_REFRESH_BEFORE=100ms",
		"PLEO_PROXY_TOKEN_TIMEOUT=2s",
	)
	// The CLI works against the postgres store.
	if out, stderr, code := runCLI(t, env, string(doc), "credentials", "import", "-"); code != 0 {
		t.Fatalf("credentials import: exit %d: %s %s", code, out, stderr)
	}
	out, stderr, code := runCLI(t, env, "", "credentials", "list")
	if code != 0 || strings.Count(out, "b0570000-") != nCompanies || strings.Contains(out, creds[0].RefreshToken.Reveal()) {
		t.Fatalf("credentials list: exit %d, %q %s", code, out, stderr)
	}
	if n := pgE2ECount(t, dsn, `SELECT count(*) FROM pleo_proxy_credentials WHERE refresh_token LIKE 'v1.%'`); n != nCompanies {
		t.Fatalf("%d of %d refresh tokens sealed", n, nCompanies)
	}

	sidecars := make([]*sidecar, 3)
	for i := range sidecars {
		sidecars[i] = startSidecar(t, env)
	}
	logs := func() string {
		var b strings.Builder
		for i, s := range sidecars {
			s.mu.Lock()
			fmt.Fprintf(&b, "--- sidecar %d\n%s", i, s.logs.String())
			s.mu.Unlock()
		}
		return b.String()
	}

	// Phase 1: 20 s of load.
	before := srv.Stats()
	const loadFor = 20 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), loadFor)
	var res pgLoadResult
	start := time.Now()
	pgLoad(ctx, sidecars, companies, 24, &res)
	elapsed := time.Since(start)
	cancel()
	after := srv.Stats()
	calls := after.RefreshCalls - before.RefreshCalls
	// Minimum: a token lives TTL, so each company needs at least ceil(elapsed/TTL) tokens to
	// be served throughout the load (the first one included: every company starts expired).
	minimum := int64(nCompanies) * int64(math.Ceil(elapsed.Seconds()/ttl.Seconds()))
	ratio := float64(calls) / float64(minimum)
	t.Logf("load: %s over %s by 3 processes; refresh calls %d, minimum %d (20 companies x ceil(%.1fs / %s)), ratio %.3f; reuse %d, invalid_grant %d, upstream 401s %d",
		&res, elapsed.Round(time.Millisecond), calls, minimum, elapsed.Seconds(), ttl, ratio, after.ReuseDetections, after.InvalidGrants, after.APIUnauthorized)
	if after.ReuseDetections != 0 || after.InvalidGrants != 0 {
		t.Fatalf("%d reuse detections, %d invalid grants\n%s", after.ReuseDetections, after.InvalidGrants, logs())
	}
	if res.unauthorized.Load() != 0 || res.serverErrors.Load() != 0 || res.transport.Load() != 0 || res.other.Load() != 0 || res.ok.Load() == 0 {
		t.Fatalf("clients saw %s\n%s", &res, logs())
	}
	for i, s := range sidecars {
		p99, n := s.commitWindowP99(t)
		t.Logf("sidecar %d: %d refreshes committed; token answer to durable commit p99 <= %gs", i, int(n), p99)
	}
	if ratio > 1.2 {
		t.Errorf("%d refresh calls, more than 1.2x the minimum %d", calls, minimum)
	}

	// Phase 2: PostgreSQL restarts in the middle of the load.
	pgctl := os.Getenv("PLEO_PROXY_TEST_PGCTL")
	if pgctl == "" {
		t.Fatal("PLEO_PROXY_TEST_PGCTL is not set (scripts/with-postgres sets it)")
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var res2 pgLoadResult
	loadDone := make(chan struct{})
	go func() { pgLoad(ctx, sidecars, companies, 24, &res2); close(loadDone) }()
	// In the middle of the load: once it is well under way.
	testenv.WaitFor(t, "the load to get going", 5*time.Second, func() bool { return res2.ok.Load() >= 2000 })
	restartAt := time.Now()
	if out, err := exec.Command(pgctl, "restart", "-m", "fast").CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl restart: %v: %s", err, out)
	}
	t.Logf("PostgreSQL restarted in %s", time.Since(restartAt).Round(time.Millisecond))
	<-loadDone
	t.Logf("load across the restart: %s", &res2)
	// Recovery: every process serves every company again, without reuse or invalid_grant.
	client := &http.Client{Timeout: 10 * time.Second}
	for i, s := range sidecars {
		waitFor(t, func() bool {
			r, err := client.Get("http://" + s.admin + "/readyz")
			if err != nil {
				return false
			}
			r.Body.Close()
			return r.StatusCode == http.StatusOK
		})
		for _, c := range companies {
			if code, err := s.get(client, c); err != nil || code != http.StatusOK {
				t.Fatalf("after the restart, sidecar %d company %s: %d %v\n%s", i, c, code, err, logs())
			}
		}
	}
	// The authorisation server expires tokens in real time: two lifetimes on, every token
	// obtained around the restart has been rotated again.
	time.Sleep(2 * ttl)
	for i, s := range sidecars {
		for _, c := range companies {
			if code, err := s.get(client, c); err != nil || code != http.StatusOK {
				t.Fatalf("later, sidecar %d company %s: %d %v\n%s", i, c, code, err, logs())
			}
		}
	}
	final := srv.Stats()
	t.Logf("after the restart: refresh calls %d, reuse %d, invalid_grant %d", final.RefreshCalls-after.RefreshCalls, final.ReuseDetections, final.InvalidGrants)
	if final.ReuseDetections != 0 || final.InvalidGrants != 0 {
		t.Fatalf("token lost across the restart: %d reuse detections, %d invalid grants\n%s", final.ReuseDetections, final.InvalidGrants, logs())
	}
}
