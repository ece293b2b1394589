package credentials

import (
	"context"
)

// Store persists credentials. Implementations are safe for concurrent use, and designed for
// many processes sharing one store: every record carries a Version, and Update is a
// compare-and-swap on it, so two writers can never both believe they replaced a refresh token.
type Store interface {
	// Get returns the company's credential, or ErrNotFound.
	Get(ctx context.Context, companyID string) (Credential, error)
	// GetByTenant returns the credential whose TenantID is tenantID, or ErrNotFound.
	GetByTenant(ctx context.Context, tenantID string) (Credential, error)
	// List returns every credential, ordered by company id.
	List(ctx context.Context) ([]Credential, error)
	// PutAll validates every credential, then writes them all or none: new companies are
	// added, stored ones replaced whatever their version; with replaceAll, companies not in
	// creds are removed.
	PutAll(ctx context.Context, creds []Credential, replaceAll bool) error
	// Update replaces the stored credential if its version still equals c.Version, and returns
	// it with its new version; otherwise it returns ErrConflict (or ErrNotFound). A nil error
	// means the write is durable.
	Update(ctx context.Context, c Credential) (Credential, error)
	// Delete removes the company's credential, or returns ErrNotFound.
	Delete(ctx context.Context, companyID string) error
	// Ping reports whether the store can be read.
	Ping(ctx context.Context) error
	// Subscribe calls fn with a company id whenever that company's credential may have changed
	// (in this process or another), and with "" when everything may have changed. fn must not
	// block. The returned function unsubscribes.
	Subscribe(fn func(companyID string)) (unsubscribe func())
	// Close releases the store's resources.
	Close() error
}

// Reloader is implemented by stores that look for changes made by other processes
// periodically (the file store): Reload looks at once. The broker calls it when the upstream
// rejects an API key, so that a key rotated in the file is used by the retry.
type Reloader interface {
	// Reload picks up changes made by others now, cheaply when there are none.
	Reload(ctx context.Context) error
}

// SweepLeader is implemented by stores that many processes share (PostgreSQL): LeadSweep
// reports whether this process leads the background sweep, taking the lead when no process
// holds it, so that one process at a time reads every credential; the lead passes to another
// process when its holder dies or loses its connection.
type SweepLeader interface {
	LeadSweep(ctx context.Context) bool
}

// Scanner is implemented by stores that can stream their credentials without their secrets
// (the file and PostgreSQL stores), so that a pass over a large store holds one credential
// at a time rather than a copy of them all, and neither decrypts nor copies a single secret.
type Scanner interface {
	// Scan calls fn with every credential, ordered by company id, until fn returns false.
	// The credentials carry no secrets (AccessToken, RefreshToken and APIKey are empty): a
	// caller that needs them reads the credential with Get.
	Scan(ctx context.Context, fn func(Credential) bool) error
}

// Scan calls fn with every credential of s, without its secrets, until fn returns false:
// streamed when s is a Scanner, else from List.
func Scan(ctx context.Context, s Store, fn func(Credential) bool) error {
	if sc, ok := s.(Scanner); ok {
		return sc.Scan(ctx, fn)
	}
	list, err := s.List(ctx)
	if err != nil {
		return err
	}
	for _, c := range list {
		if !fn(withoutSecrets(c)) {
			return nil
		}
	}
	return nil
}

// withoutSecrets is c as Scan hands it out.
func withoutSecrets(c Credential) Credential {
	c.AccessToken, c.RefreshToken, c.APIKey = "", "", ""
	return c
}
