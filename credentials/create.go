package credentials

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// ErrExists: Create found a credential already stored for the company.
var ErrExists = errors.New("credentials: already stored")

// Creator is implemented by stores that can add a credential only while its company has none,
// in one atomic step (the memory, file and PostgreSQL stores, and Instrument's wrapper): of
// two writers creating the same company at once, exactly one succeeds.
type Creator interface {
	// Create adds c if no credential is stored for c.CompanyID, and returns it with its
	// version (1); otherwise ErrExists. A tenant id already held by another company is a
	// *FieldError on tenant_id.
	Create(ctx context.Context, c Credential) (Credential, error)
}

// Create adds c to s if s holds no credential for its company (ErrExists otherwise):
// atomically when s is a Creator, else as a look-up followed by a put, which a concurrent
// writer can slip between.
func Create(ctx context.Context, s Store, c Credential) (Credential, error) {
	if cr, ok := s.(Creator); ok {
		return cr.Create(ctx, c)
	}
	if _, err := s.Get(ctx, c.CompanyID); err == nil {
		return Credential{}, fmt.Errorf("%w: company %s", ErrExists, CanonicalCompanyID(c.CompanyID))
	} else if !errors.Is(err, ErrNotFound) {
		return Credential{}, err
	}
	if err := s.PutAll(ctx, []Credential{c}, false); err != nil {
		return Credential{}, err
	}
	return s.Get(ctx, c.CompanyID)
}

// applyCreate is Create on m; c comes from prepareOne. It returns the stored credential, or
// an error leaving m untouched.
func applyCreate(m credentialSet, c Credential) (Credential, error) {
	if _, ok := m.lookup(c.CompanyID); ok {
		return Credential{}, fmt.Errorf("%w: company %s", ErrExists, c.CompanyID)
	}
	if c.TenantID != "" {
		if other, taken := m.tenantHolder(c.TenantID); taken {
			return Credential{}, &FieldError{Field: "tenant_id", Reason: "is already used by company " + other}
		}
	}
	c.Version = 1
	m.put(c)
	return c, nil
}

// Create adds c unless its company is stored (ErrExists).
func (s *MemoryStore) Create(ctx context.Context, c Credential) (Credential, error) {
	return s.writeOne(ctx, "create", c, applyCreate)
}

// Create adds c, under the file lock and against the file as it is on disk, unless its
// company is stored (ErrExists).
func (s *FileStore) Create(ctx context.Context, c Credential) (Credential, error) {
	c, err := prepareOne(c)
	if err != nil {
		return Credential{}, err
	}
	var created Credential
	err = s.write(ctx, func(w *fileChanges) error {
		var err error
		created, err = applyCreate(w, c)
		return err
	})
	if err != nil {
		return Credential{}, err
	}
	return created, nil
}

// Create inserts c unless its company is stored (ErrExists): one INSERT … ON CONFLICT DO
// NOTHING, so of two replicas creating one company, one inserts and the other learns it.
func (s *PGStore) Create(ctx context.Context, c Credential) (Credential, error) {
	if err := ctx.Err(); err != nil {
		return Credential{}, fmt.Errorf("credentials: create: %w", err)
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
	err = s.pool.QueryRow(ctx, `INSERT INTO pleo_proxy_credentials (company_id, tenant_id, type, access_token,
			refresh_token, api_key, secrets_sealed, expires_at, state, last_refreshed_at, last_error, version)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1)
		ON CONFLICT (company_id) DO NOTHING RETURNING version`,
		v.id, v.tenantID, v.typ, v.access, v.refresh, v.apiKey, v.sealed, v.expiresAt, v.state, v.lastRefreshed, v.lastError).Scan(&version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return Credential{}, fmt.Errorf("%w: company %s", ErrExists, c.CompanyID)
	case isUniqueViolation(err):
		return Credential{}, &FieldError{Field: "tenant_id", Reason: "is already used by another company"}
	case err != nil:
		return Credential{}, storeUnavailable("create", err)
	}
	c.Version = version
	s.subs.notify([]string{c.CompanyID})
	return c, nil
}

// Create is timed as a put; ErrExists is an answer, not an error.
func (s instrumented) Create(ctx context.Context, c Credential) (Credential, error) {
	start := time.Now()
	out, err := Create(ctx, s.inner, c)
	observed := err
	if errors.Is(err, ErrExists) {
		observed = nil
	}
	s.observe(metrics.StorePut, start, observed)
	return out, err
}
