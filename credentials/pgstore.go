package credentials

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The PostgreSQL store (PLEO_PROXY_STORE=postgres://…): many replicas share one table of
// credentials. Writes are compare-and-swap on a version; every committed change is announced
// with NOTIFY so that other replicas drop their cached copy; refreshes of one credential are
// serialised across replicas by LockRefresh (see pgstore_lock.go).

//go:embed migrations/*.sql
var pgMigrations embed.FS

const (
	// pgNotifyChannel carries "<company id> <origin>" for every committed change.
	pgNotifyChannel = "pleo_proxy_credentials"
	// pgOriginParam is the session setting that names the writing process in notifications.
	pgOriginParam = "pleo_proxy.origin"
	// pgMigrationLockKey is the advisory lock that serialises migrations
	// (an arbitrary constant: "pleoprxy" in ASCII).
	pgMigrationLockKey int64 = 0x706c656f70727879
	// pgDefaultMaxConns is the pool size when the URL sets no pool_max_conns. A refresh holds
	// one connection for the length of its token exchange, so it bounds the refreshes one
	// replica runs at once; requests are served from the cache and need one only on a miss.
	// Sized for a sidecar: ten replicas open 60 backends (pool, listener, sweep lead), not 220.
	pgDefaultMaxConns = 4
	// pgDefaultConnectTimeout applies when the URL sets no connect_timeout: short, so a pool
	// reconnecting after a database restart retries quickly rather than waiting out a dead
	// attempt.
	pgDefaultConnectTimeout = 2 * time.Second
)

// pgColumns are the credential columns, in the order scanPG reads them.
const pgColumns = `company_id, tenant_id, type, access_token, refresh_token, api_key, secrets_sealed,
	expires_at, state, last_refreshed_at, last_error, version`

// PGStoreOptions configures OpenPGStore. The zero value is usable.
type PGStoreOptions struct {
	// Logger receives connection and notification problems (nil: discard).
	Logger *slog.Logger
	// Sealer, if set, encrypts every secret written; values written without one stay readable
	// and are sealed on their next write. Without a Sealer, sealed values cannot be read.
	Sealer *Sealer
}

// PGStore is the postgres:// store. It is safe for concurrent use by many goroutines and by
// many processes sharing the database.
type PGStore struct {
	pool   *pgxpool.Pool
	sealer *Sealer
	log    *slog.Logger
	origin string // this process's writer id, in notifications and refresh leases
	subs   subscriberSet

	lead      pgSweepLead
	listening atomic.Bool
	listenPID atomic.Uint32 // the listener connection's backend (tests end it)
	// beforeReconnect, when set (tests), runs before the listener reconnects.
	beforeReconnect atomic.Pointer[func()]
	stop            context.CancelFunc
	done            chan struct{}
	closed          atomic.Bool
}

var (
	_ Store         = (*PGStore)(nil)
	_ RefreshLocker = (*PGStore)(nil)
	_ KeyRotator    = (*PGStore)(nil)
	_ SweepLeader   = (*PGStore)(nil)
)

// OpenPGStore connects to the database rawURL names (a postgres:// URL or a libpq key=value
// string), applies the embedded schema migrations under an advisory lock, and starts listening
// for changes made by other processes. It fails when the database cannot be reached.
func OpenPGStore(ctx context.Context, rawURL string, opts PGStoreOptions) (*PGStore, error) {
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		// pgconn's parse errors may quote the connection string, password included.
		return nil, errors.New("credentials: postgres store URL cannot be parsed (see https://pkg.go.dev/github.com/jackc/pgx/v5/pgconn#ParseConfig)")
	}
	if !strings.Contains(rawURL, "pool_max_conns") {
		cfg.MaxConns = pgDefaultMaxConns
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = pgDefaultConnectTimeout
	}
	origin := newPGOrigin()
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	cfg.ConnConfig.RuntimeParams[pgOriginParam] = origin
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("credentials: postgres store: %w", pgSafeErr(err))
	}
	s := &PGStore{pool: pool, sealer: opts.Sealer, log: opts.Logger, origin: origin, done: make(chan struct{})}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	listenCfg := cfg.ConnConfig.Copy()
	conn, t0, err := s.connectListener(ctx, listenCfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("credentials: postgres store: listen: %w", pgSafeErr(err))
	}
	s.lead.cfg = cfg.ConnConfig.Copy()
	lctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go s.listen(lctx, listenCfg, conn, t0)
	return s, nil
}

// newPGOrigin names this process: host, pid and a random suffix (a restarted process is a
// new writer).
func newPGOrigin() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "unknown"
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	o := fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(r[:]))
	return strings.ReplaceAll(o, " ", "_")
}

// migrate applies every embedded migration not yet recorded, in one transaction under a
// transaction-scoped advisory lock, so replicas starting together apply each exactly once.
func (s *PGStore) migrate(ctx context.Context) error {
	files, err := fs.Glob(pgMigrations, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("credentials: postgres migrations: %w", err)
	}
	sort.Strings(files)
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("credentials: postgres store: migrate: %w", pgSafeErr(err))
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pgMigrationLockKey); err != nil {
		return fmt.Errorf("credentials: postgres store: migration lock: %w", pgSafeErr(err))
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS pleo_proxy_schema_migrations (
		version integer PRIMARY KEY,
		name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("credentials: postgres store: migrate: %w", pgSafeErr(err))
	}
	applied := map[int]bool{}
	rows, err := tx.Query(ctx, `SELECT version FROM pleo_proxy_schema_migrations`)
	if err != nil {
		return fmt.Errorf("credentials: postgres store: migrate: %w", pgSafeErr(err))
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("credentials: postgres store: migrate: %w", err)
		}
		applied[v] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("credentials: postgres store: migrate: %w", pgSafeErr(err))
	}
	known := 0
	for _, f := range files {
		name := strings.TrimPrefix(f, "migrations/")
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if err != nil {
			return fmt.Errorf("credentials: postgres migration %s: name must start with a number", name)
		}
		known = max(known, v)
		if applied[v] {
			continue
		}
		body, err := pgMigrations.ReadFile(f)
		if err != nil {
			return fmt.Errorf("credentials: postgres migration %s: %w", name, err)
		}
		if _, err := tx.Exec(ctx, string(body)); err != nil {
			return fmt.Errorf("credentials: postgres migration %s: %w", name, pgSafeErr(err))
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pleo_proxy_schema_migrations (version, name) VALUES ($1, $2)`, v, name); err != nil {
			return fmt.Errorf("credentials: postgres migration %s: %w", name, pgSafeErr(err))
		}
		s.log.Info("applied postgres schema migration", "migration", name)
	}
	for v := range applied {
		if v > known {
			return fmt.Errorf("credentials: postgres store: the database has schema migration %d, newer than this build knows (%d): upgrade the sidecar", v, known)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("credentials: postgres store: migrate: %w", pgSafeErr(err))
	}
	return nil
}

// pgSafeErr drops what a pgx error may quote of the connection string (a password), keeping
// the rest of its text.
func pgSafeErr(err error) error {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return fmt.Errorf("cannot connect to the database: %w", errors.Unwrap(ce))
	}
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return errors.New("invalid postgres connection settings")
	}
	return err
}

// storeUnavailable wraps a database error for callers that branch on ErrStoreUnavailable.
func storeUnavailable(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("credentials: postgres %s: %w: %w", op, ErrStoreUnavailable, err)
	}
	return fmt.Errorf("credentials: postgres %s: %w: %w", op, ErrStoreUnavailable, pgSafeErr(err))
}

// pgRow is a credential row as stored.
type pgRow struct {
	companyID, typ, state, lastError string
	tenantID                         pgtype.Text
	access, refresh, apiKey          string
	sealed                           bool
	expiresAt, lastRefreshedAt       pgtype.Timestamptz
	version                          int64
}

func (r *pgRow) dest() []any {
	return []any{&r.companyID, &r.tenantID, &r.typ, &r.access, &r.refresh, &r.apiKey, &r.sealed,
		&r.expiresAt, &r.state, &r.lastRefreshedAt, &r.lastError, &r.version}
}

// credential opens the row's secrets.
func (s *PGStore) credential(r *pgRow) (Credential, error) {
	c := Credential{
		CompanyID: r.companyID,
		TenantID:  r.tenantID.String,
		Type:      Type(r.typ),
		State:     State(r.state),
		LastError: r.lastError,
		Version:   r.version,
	}
	if r.expiresAt.Valid {
		c.ExpiresAt = r.expiresAt.Time.UTC()
	}
	if r.lastRefreshedAt.Valid {
		c.LastRefreshedAt = r.lastRefreshedAt.Time.UTC()
	}
	for _, f := range []struct {
		name string
		raw  string
		dst  *Secret
	}{{FieldAccessToken, r.access, &c.AccessToken}, {FieldRefreshToken, r.refresh, &c.RefreshToken}, {FieldAPIKey, r.apiKey, &c.APIKey}} {
		if f.raw == "" {
			continue
		}
		if !r.sealed {
			*f.dst = Secret(f.raw)
			continue
		}
		if s.sealer == nil {
			return Credential{}, fmt.Errorf("credentials: postgres store: company %s: its secrets are encrypted and no encryption key is set (PLEO_PROXY_ENCRYPTION_KEY)", r.companyID)
		}
		plain, err := s.sealer.Open(r.companyID, f.name, f.raw)
		if err != nil {
			return Credential{}, fmt.Errorf("credentials: postgres store: company %s %s: %w", r.companyID, f.name, err)
		}
		*f.dst = Secret(plain)
	}
	return c, nil
}

// pgValues are the column values a credential is written as.
type pgValues struct {
	tenantID                  pgtype.Text
	access, refresh, apiKey   string
	sealed                    bool
	expiresAt, lastRefreshed  pgtype.Timestamptz
	typ, state, lastError, id string
}

// values seals c's secrets (with a Sealer) and returns its column values. c is normalised.
func (s *PGStore) values(c Credential) (pgValues, error) {
	v := pgValues{
		id:        c.CompanyID,
		tenantID:  pgtype.Text{String: c.TenantID, Valid: c.TenantID != ""},
		typ:       string(c.Type),
		state:     string(c.State),
		lastError: c.LastError,
		sealed:    s.sealer != nil,
	}
	if !c.ExpiresAt.IsZero() {
		v.expiresAt = pgtype.Timestamptz{Time: c.ExpiresAt, Valid: true}
	}
	if !c.LastRefreshedAt.IsZero() {
		v.lastRefreshed = pgtype.Timestamptz{Time: c.LastRefreshedAt, Valid: true}
	}
	for _, f := range []struct {
		name string
		in   Secret
		dst  *string
	}{{FieldAccessToken, c.AccessToken, &v.access}, {FieldRefreshToken, c.RefreshToken, &v.refresh}, {FieldAPIKey, c.APIKey, &v.apiKey}} {
		if f.in.IsZero() {
			continue
		}
		if s.sealer == nil {
			*f.dst = f.in.Reveal()
			continue
		}
		sealed, err := s.sealer.Seal(c.CompanyID, f.name, []byte(f.in.Reveal()))
		if err != nil {
			return pgValues{}, err
		}
		*f.dst = sealed
	}
	return v, nil
}

// pgNormalize is normalizeCredential with times cut to PostgreSQL's microseconds, so that
// what a write returns equals what a read gives back.
func pgNormalize(c Credential) Credential {
	c = normalizeCredential(c)
	c.ExpiresAt = c.ExpiresAt.Truncate(time.Microsecond)
	c.LastRefreshedAt = c.LastRefreshedAt.Truncate(time.Microsecond)
	return c
}

// retryRead runs an idempotent read, once more when the first attempt failed on a connection
// the server had dropped (after a database restart, the pool's idle connections are dead).
func retryRead[T any](ctx context.Context, fn func() (T, error)) (T, error) {
	v, err := fn()
	if err == nil || ctx.Err() != nil || errors.Is(err, ErrNotFound) || isPGAnswer(err) {
		return v, err
	}
	return fn()
}

// isPGAnswer reports whether err is the server answering (a SQL error), not a lost
// connection.
func isPGAnswer(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && !strings.HasPrefix(pe.Code, "08") && !strings.HasPrefix(pe.Code, "57P")
}

func (s *PGStore) getWhere(ctx context.Context, op, where string, arg string) (Credential, error) {
	return retryRead(ctx, func() (Credential, error) {
		var r pgRow
		err := s.pool.QueryRow(ctx, `SELECT `+pgColumns+` FROM pleo_proxy_credentials WHERE `+where, arg).Scan(r.dest()...)
		if errors.Is(err, pgx.ErrNoRows) {
			return Credential{}, ErrNotFound
		}
		if err != nil {
			return Credential{}, storeUnavailable(op, err)
		}
		return s.credential(&r)
	})
}

// Get returns the company's credential, or ErrNotFound.
func (s *PGStore) Get(ctx context.Context, companyID string) (Credential, error) {
	return s.getWhere(ctx, "get", `company_id = $1`, CanonicalCompanyID(companyID))
}

// GetByTenant returns the credential whose TenantID is tenantID, or ErrNotFound.
func (s *PGStore) GetByTenant(ctx context.Context, tenantID string) (Credential, error) {
	if tenantID == "" {
		return Credential{}, ErrNotFound
	}
	return s.getWhere(ctx, "get by tenant", `tenant_id = $1`, tenantID)
}

// List returns every credential, ordered by company id.
func (s *PGStore) List(ctx context.Context) ([]Credential, error) {
	return retryRead(ctx, func() ([]Credential, error) {
		rows, err := s.pool.Query(ctx, `SELECT `+pgColumns+` FROM pleo_proxy_credentials ORDER BY company_id`)
		if err != nil {
			return nil, storeUnavailable("list", err)
		}
		defer rows.Close()
		out := []Credential{}
		for rows.Next() {
			var r pgRow
			if err := rows.Scan(r.dest()...); err != nil {
				return nil, storeUnavailable("list", err)
			}
			c, err := s.credential(&r)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		if err := rows.Err(); err != nil {
			return nil, storeUnavailable("list", err)
		}
		return out, nil
	})
}

// pgScanColumns are the columns Scan reads: every one but the secrets.
const pgScanColumns = `company_id, tenant_id, type, expires_at, state, last_refreshed_at, last_error, version`

// Scan streams every credential, without its secrets, ordered by company id, to fn until it
// returns false: one row decoded at a time, so a sweep of 100,000 credentials does not hold
// them all, and no secret is read or decrypted. Unlike the other reads it is not retried (fn
// may have seen part of the table).
func (s *PGStore) Scan(ctx context.Context, fn func(Credential) bool) error {
	rows, err := s.pool.Query(ctx, `SELECT `+pgScanColumns+` FROM pleo_proxy_credentials ORDER BY company_id`)
	if err != nil {
		return storeUnavailable("list", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r pgRow
		if err := rows.Scan(&r.companyID, &r.tenantID, &r.typ, &r.expiresAt, &r.state, &r.lastRefreshedAt, &r.lastError, &r.version); err != nil {
			return storeUnavailable("list", err)
		}
		c, err := s.credential(&r) // no secrets to open: they were not read
		if err != nil {
			return err
		}
		if !fn(c) {
			return nil
		}
	}
	if err := rows.Err(); err != nil {
		return storeUnavailable("list", err)
	}
	return nil
}

// PutAll validates every credential, then adds or replaces them all, or none, in one
// transaction. A written record's version is the stored one plus one, or 1.
func (s *PGStore) PutAll(ctx context.Context, creds []Credential, replaceAll bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("credentials: put: %w", err)
	}
	batch, err := prepareBatch(creds)
	if err != nil {
		return err
	}
	ids := make([]string, len(batch))
	vals := make([]pgValues, len(batch))
	for i, c := range batch {
		batch[i] = pgNormalize(c)
		ids[i] = c.CompanyID
		if vals[i], err = s.values(batch[i]); err != nil {
			return &RecordError{Index: i, CompanyID: c.CompanyID, Err: err}
		}
	}
	var changed []string
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if replaceAll {
			rows, err := tx.Query(ctx, `DELETE FROM pleo_proxy_credentials WHERE NOT (company_id = ANY($1)) RETURNING company_id`, ids)
			if err != nil {
				return err
			}
			removed, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			changed = append(changed, removed...)
		} else {
			// A tenant the batch assigns must not belong to a record the batch leaves alone.
			var tenants []string
			for _, c := range batch {
				if c.TenantID != "" {
					tenants = append(tenants, c.TenantID)
				}
			}
			if len(tenants) > 0 {
				var holder, tenant string
				err := tx.QueryRow(ctx, `SELECT company_id, tenant_id FROM pleo_proxy_credentials
					WHERE tenant_id = ANY($1) AND NOT (company_id = ANY($2)) LIMIT 1`, tenants, ids).Scan(&holder, &tenant)
				if err == nil {
					for i, c := range batch {
						if c.TenantID == tenant {
							return &RecordError{Index: i, CompanyID: c.CompanyID, Err: fmt.Errorf("tenant_id is already used by company %s", holder)}
						}
					}
				} else if !errors.Is(err, pgx.ErrNoRows) {
					return err
				}
			}
		}
		b := &pgx.Batch{}
		for _, v := range vals {
			b.Queue(`INSERT INTO pleo_proxy_credentials AS t (company_id, tenant_id, type, access_token, refresh_token,
					api_key, secrets_sealed, expires_at, state, last_refreshed_at, last_error, version)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1)
				ON CONFLICT (company_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, type = EXCLUDED.type,
					access_token = EXCLUDED.access_token, refresh_token = EXCLUDED.refresh_token,
					api_key = EXCLUDED.api_key, secrets_sealed = EXCLUDED.secrets_sealed,
					expires_at = EXCLUDED.expires_at, state = EXCLUDED.state,
					last_refreshed_at = EXCLUDED.last_refreshed_at, last_error = EXCLUDED.last_error,
					version = t.version + 1, refresh_lease_holder = NULL, refresh_lease_until = NULL,
					updated_at = now()`,
				v.id, v.tenantID, v.typ, v.access, v.refresh, v.apiKey, v.sealed, v.expiresAt, v.state, v.lastRefreshed, v.lastError)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		changed = append(changed, ids...)
		return nil
	})
	if err != nil {
		var re *RecordError
		if errors.As(err, &re) {
			return err
		}
		if isUniqueViolation(err) {
			return &FieldError{Field: "tenant_id", Reason: "is already used by another company"}
		}
		return storeUnavailable("put", err)
	}
	s.subs.notify(changed)
	return nil
}

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// Update replaces the stored credential if its version equals c.Version, and returns it with
// the next version; otherwise ErrConflict or ErrNotFound. It also clears a refresh lease: a
// successful write settles whatever outcome the lease stood for.
func (s *PGStore) Update(ctx context.Context, c Credential) (Credential, error) {
	if err := ctx.Err(); err != nil {
		return Credential{}, fmt.Errorf("credentials: update: %w", err)
	}
	c, err := prepareOne(c)
	if err != nil {
		return Credential{}, err
	}
	c = pgNormalize(c)
	v, err := s.values(c)
	if err != nil {
		return Credential{}, err
	}
	var version int64
	err = s.pool.QueryRow(ctx, `UPDATE pleo_proxy_credentials SET tenant_id = $2, type = $3,
			access_token = $4, refresh_token = $5, api_key = $6, secrets_sealed = $7, expires_at = $8,
			state = $9, last_refreshed_at = $10, last_error = $11, version = version + 1,
			refresh_lease_holder = NULL, refresh_lease_until = NULL, updated_at = now()
		WHERE company_id = $1 AND version = $12 RETURNING version`,
		v.id, v.tenantID, v.typ, v.access, v.refresh, v.apiKey, v.sealed, v.expiresAt, v.state, v.lastRefreshed, v.lastError, c.Version).Scan(&version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		var stored int64
		err := s.pool.QueryRow(ctx, `SELECT version FROM pleo_proxy_credentials WHERE company_id = $1`, c.CompanyID).Scan(&stored)
		if errors.Is(err, pgx.ErrNoRows) {
			return Credential{}, fmt.Errorf("%w: company %s", ErrNotFound, c.CompanyID)
		}
		if err != nil {
			return Credential{}, storeUnavailable("update", err)
		}
		return Credential{}, fmt.Errorf("%w: company %s is at version %d, not %d", ErrConflict, c.CompanyID, stored, c.Version)
	case isUniqueViolation(err):
		return Credential{}, &FieldError{Field: "tenant_id", Reason: "is already used by another company"}
	case err != nil:
		return Credential{}, storeUnavailable("update", err)
	}
	c.Version = version
	s.subs.notify([]string{c.CompanyID})
	return c, nil
}

// Delete removes the company's credential, or returns ErrNotFound.
func (s *PGStore) Delete(ctx context.Context, companyID string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("credentials: delete: %w", err)
	}
	id := CanonicalCompanyID(companyID)
	tag, err := s.pool.Exec(ctx, `DELETE FROM pleo_proxy_credentials WHERE company_id = $1`, id)
	if err != nil {
		return storeUnavailable("delete", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: company %s", ErrNotFound, id)
	}
	s.subs.notify([]string{id})
	return nil
}

// Ping reports whether the database answers and change notifications are being received.
// Readiness uses it: while it fails, cached tokens still serve requests.
func (s *PGStore) Ping(ctx context.Context) error {
	if _, err := retryRead(ctx, func() (struct{}, error) { return struct{}{}, s.pool.Ping(ctx) }); err != nil {
		return storeUnavailable("ping", err)
	}
	if !s.listening.Load() {
		return fmt.Errorf("credentials: postgres: %w: not listening for changes (reconnecting)", ErrStoreUnavailable)
	}
	return nil
}

// Subscribe calls fn with the company id of every credential changed by this process (after
// the commit) or by another (when its notification arrives), and with "" after the
// notification connection was re-established (changes may have been missed meanwhile).
func (s *PGStore) Subscribe(fn func(companyID string)) (unsubscribe func()) {
	return s.subs.subscribe(fn)
}

// Close stops listening and closes the pool. It is idempotent.
func (s *PGStore) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	s.stop()
	<-s.done
	s.lead.mu.Lock()
	s.lead.drop()
	s.lead.mu.Unlock()
	s.pool.Close()
	return nil
}

// RotateKey rewrites every credential's secrets with the newest key of the store's Sealer,
// in one transaction, and returns how many it rewrote.
func (s *PGStore) RotateKey(ctx context.Context) (int, error) {
	if s.sealer == nil {
		return 0, errors.New("credentials: rotate-key: no encryption key is set (PLEO_PROXY_ENCRYPTION_KEY)")
	}
	var ids []string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+pgColumns+` FROM pleo_proxy_credentials ORDER BY company_id FOR UPDATE`)
		if err != nil {
			return err
		}
		var creds []Credential
		for rows.Next() {
			var r pgRow
			if err := rows.Scan(r.dest()...); err != nil {
				rows.Close()
				return err
			}
			c, err := s.credential(&r)
			if err != nil {
				rows.Close()
				return err
			}
			creds = append(creds, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		b := &pgx.Batch{}
		for _, c := range creds {
			v, err := s.values(c)
			if err != nil {
				return err
			}
			b.Queue(`UPDATE pleo_proxy_credentials SET access_token = $2, refresh_token = $3, api_key = $4,
				secrets_sealed = true, version = version + 1, updated_at = now() WHERE company_id = $1`,
				v.id, v.access, v.refresh, v.apiKey)
			ids = append(ids, c.CompanyID)
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		if errors.Is(err, ErrSealedUnknownKey) || errors.Is(err, ErrSealedAuthentication) || errors.Is(err, ErrSealedFormat) {
			return 0, err
		}
		return 0, storeUnavailable("rotate-key", err)
	}
	s.subs.notify(ids)
	return len(ids), nil
}
