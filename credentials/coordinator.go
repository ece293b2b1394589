package credentials

import (
	"context"
	"time"
)

// RefreshLocker is implemented by stores that many processes share (PostgreSQL). The Broker
// uses it so that one refresh per credential runs across all replicas: it takes the lock,
// re-reads the credential under it, adopts a token another replica already obtained or
// records a lease and calls the token endpoint, and commits the rotated pair before releasing
// the lock.
type RefreshLocker interface {
	// LockRefresh blocks until this process holds the company's refresh lock (or ctx ends),
	// and returns the lock with the credential as read under it. It returns ErrNotFound for an
	// unknown company, and ErrRefreshInProgress when another process holds an unexpired
	// refresh lease whose outcome is unknown (its commit failed, or it died mid-exchange):
	// then nobody may call the token endpoint for this credential until that lease is
	// resolved (a successful Update of the credential) or expires. The lock lives exactly as
	// long as the RefreshLock: until Commit, Release or Hold, or until the holder's database
	// connection ends; it has no expiry of its own.
	LockRefresh(ctx context.Context, companyID string) (RefreshLock, error)
}

// RefreshLock is one held cross-process refresh lock.
type RefreshLock interface {
	// Current is the credential as read under the lock.
	Current() Credential
	// Lease durably records, before the token endpoint is called, that this process is about
	// to present Current's refresh token, for at most d. It returns ErrConflict when the
	// credential changed since it was read (another writer replaced it). Without a lease,
	// Commit and Release behave the same; with one, only a successful Commit (or Release, or
	// a later successful Update) clears it.
	Lease(ctx context.Context, d time.Duration) error
	// Commit stores next's tokens, expiry, state and error (compare-and-swap on the refresh
	// token read under the lock, in one transaction), clears the lease and releases the lock.
	// It returns the stored credential; ErrConflict when the credential was replaced since it
	// was read. A nil error means the rotated pair is durable. On error the lock is released
	// but the lease stays until a later Update of this credential succeeds or the lease
	// expires, so no other process calls the token endpoint while the outcome is unknown.
	Commit(ctx context.Context, next Credential) (Credential, error)
	// Release gives the lock up without storing anything (the token was adopted, the token
	// endpoint refused it, or the request never left) and clears the lease. It is safe to
	// call after Commit or Hold, as a no-op.
	Release(ctx context.Context) error
	// Hold gives the lock up and keeps the lease: the refresh token was presented and no
	// answer was read, so the outcome is unknown. No other process calls the token endpoint
	// for this credential until a later Update of it succeeds (a late answer stored) or the
	// lease expires.
	Hold(ctx context.Context)
}
