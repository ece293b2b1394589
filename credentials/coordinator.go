package credentials

import "context"

// RefreshLocker is implemented by stores that many processes share (PostgreSQL). The Broker
// uses it so that one refresh per credential runs across all replicas: it takes the lock,
// re-reads the credential under it, adopts a token another replica already obtained or calls
// the token endpoint, and commits the rotated pair before releasing the lock.
type RefreshLocker interface {
	// LockRefresh blocks until this process holds the company's refresh lock (or ctx ends),
	// and returns the lock with the credential as read under it. It returns ErrNotFound for an
	// unknown company, and ErrRefreshInProgress when another process holds an unexpired
	// refresh lease whose outcome is unknown (its commit failed): then nobody may call the
	// token endpoint for this credential until that lease is resolved.
	LockRefresh(ctx context.Context, companyID string) (RefreshLock, error)
}

// RefreshLock is one held cross-process refresh lock.
type RefreshLock interface {
	// Current is the credential as read under the lock.
	Current() Credential
	// Commit stores next (compare-and-swap on the refresh token read under the lock) and
	// releases the lock. A nil error means the rotated pair is durable. On error the lock is
	// released but the lease recorded before the exchange stays until a later Update of this
	// credential (with next.Version = Current().Version) succeeds or the lease expires, so no
	// other process calls the token endpoint while the outcome is unknown.
	Commit(ctx context.Context, next Credential) (Credential, error)
	// Release gives the lock up without a refresh (the token was adopted, or the exchange
	// failed before the token endpoint answered with new tokens); it clears the lease.
	Release(ctx context.Context) error
}
