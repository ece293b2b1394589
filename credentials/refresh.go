package credentials

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// refresh runs at most one refresh per company at a time. The refresh itself is detached
// from the caller's cancellation; each of its phases has its own deadline (refreshBudgets). A
// caller that gives up stops waiting, the others keep theirs.
func (b *Broker) refresh(ctx context.Context, companyID, trigger string, stale Grant) (*entry, error) {
	for {
		queued := b.now()
		ch := b.flights.DoChan(companyID, func() (any, error) {
			fctx := context.WithoutCancel(ctx)
			if b.locker != nil {
				return b.refreshShared(fctx, companyID, trigger, stale, queued)
			}
			b.metrics.RefreshLockWait(b.now().Sub(queued))
			return b.refreshLocked(fctx, companyID, trigger, stale)
		})
		select {
		case r := <-ch:
			if _, ok := r.Val.(writeAttempt); ok {
				// This call joined a background write retry, which shares the company's
				// flight key so that it never overlaps a refresh: its outcome is no answer
				// to a refresh. It has finished now; run one of our own.
				continue
			}
			if errors.Is(r.Err, errProbed) && trigger != triggerProbe {
				continue // joined a cool-down probe, which refreshes nothing: run our own
			}
			if r.Err != nil {
				return nil, r.Err
			}
			return r.Val.(*entry), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// budgets are the deadlines of a refresh's phases.
func (b *Broker) budgets() refreshBudgets { return newRefreshBudgets(b.tokenTimeout) }

// commitContext is a context for one store write of a refresh: detached from ctx's
// cancellation and deadline (what is left of an earlier phase's budget never shortens it),
// bounded by its own.
func (b *Broker) commitContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), b.budgets().commit)
}

// writeAttempt is the result of a background write retry's flight (see retryWrite).
type writeAttempt struct{ err error }

// current reads the authoritative credential for a refresh decision: a pending pair first,
// then the store (not the cache, which may lag behind another process). stored is the refresh
// token the store holds, which a commit compares against.
func (b *Broker) current(ctx context.Context, companyID string) (cur Credential, stored Secret, pending bool, err error) {
	b.mu.Lock()
	p, ok := b.pending[companyID]
	b.mu.Unlock()
	if ok {
		return p.next, p.stored, true, nil
	}
	c, err := b.store.Get(ctx, companyID)
	if err != nil {
		return Credential{}, "", false, storeErr(err)
	}
	return c, c.RefreshToken, false, nil
}

// refreshLocked runs inside the company's single flight.
func (b *Broker) refreshLocked(ctx context.Context, companyID, trigger string, stale Grant) (*entry, error) {
	gen := b.gen.Load()
	rctx, cancel := context.WithTimeout(ctx, b.budgets().lockWait)
	cur, stored, pending, err := b.current(rctx, companyID)
	cancel()
	if err != nil {
		return nil, err
	}
	if e, done, err := b.preflight(ctx, companyID, trigger, stale, cur, pending, gen); done {
		return e, err
	}

	b.log.DebugContext(ctx, "refreshing token", "company_id", companyID, "trigger", trigger,
		"expires_at", cur.ExpiresAt, "rejected_by_upstream", trigger == TriggerUnauthorized)
	// Without a lease in a shared row, this process alone keeps itself from presenting a
	// refresh token whose outcome is unknown, for as long as a lease would.
	until := b.now().Add(b.budgets().lease)
	x := b.exchange(cur)
	if err, ok := b.unsettled(x, cur, stored, trigger, gen, until); ok {
		return nil, err
	}
	if x.err != nil {
		mctx, cancel := b.commitContext(ctx)
		defer cancel()
		return nil, b.refreshFailed(mctx, cur, trigger, x.err, gen, x.took, b.store.Update)
	}
	next := b.rotated(cur, x)
	arrived, took := x.arrived, x.took
	cctx, cancel := b.commitContext(ctx)
	defer cancel()
	saved, err := b.persist(cctx, stored, cur.RefreshToken, next)
	window := time.Since(arrived)
	b.metrics.TokenRefresh(trigger, metrics.RefreshSuccess, took)
	b.refreshSucceeded(companyID, trigger, next)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			b.log.WarnContext(ctx, "credential deleted during its refresh; dropping the new tokens", "company_id", companyID)
			return nil, err
		}
		b.keepPending(next, stored, err)
		return b.newEntry(next), nil
	}
	b.metrics.TokenCommitWindow(window)
	b.log.InfoContext(ctx, "token refreshed", "company_id", companyID, "trigger", trigger, "result", metrics.RefreshSuccess,
		"duration_ms", float64(took)/float64(time.Millisecond), "expires_at", saved.ExpiresAt, "commit_window", window)
	return b.remember(saved, gen), nil
}

// preflight decides, for cur as read (pending: a rotated pair of ours not yet written),
// whether a refresh is needed and allowed. done means the caller returns e and err as they
// are: the credential needs no refresh (an API key, or a token newer than the stale one that
// another flight, process or replica obtained, which is adopted), or it may not be refreshed
// (reauthorization required, its refresh token already rejected, backing off, no client).
func (b *Broker) preflight(ctx context.Context, companyID, trigger string, stale Grant, cur Credential, pending bool, gen uint64) (e *entry, done bool, err error) {
	e = b.newEntry(cur)
	if cur.Type != OAuth2 {
		return b.remember(cur, gen), true, nil
	}
	if cur.State == StateReauthorizationRequired {
		b.remember(cur, gen)
		return nil, true, fmt.Errorf("%w: company %s", ErrReauthorizationRequired, companyID)
	}
	now := b.now()
	if !cur.AccessToken.IsZero() && !e.grant.Same(stale) && now.Before(e.refreshAt) {
		b.log.DebugContext(ctx, "refresh skipped: a newer token is stored", "company_id", companyID, "trigger", trigger)
		if pending {
			return e, true, nil
		}
		return b.remember(cur, gen), true, nil
	}
	if trigger == triggerProbe {
		return nil, true, probed(e.grant.Same(stale))
	}
	b.mu.Lock()
	rejected, wasRejected := b.rejected[companyID]
	bo := b.backoff[companyID]
	b.mu.Unlock()
	until, unknown := b.heldUnknown(companyID, cur.RefreshToken, now)
	switch {
	case wasRejected && rejected == tokenHash(cur.RefreshToken):
		return nil, true, fmt.Errorf("%w: company %s", ErrReauthorizationRequired, companyID)
	case unknown:
		// This process presented the refresh token and read no answer: the endpoint may
		// have rotated it, so presenting it again could be taken for reuse. A late answer
		// ends this early (its pair replaces cur); otherwise it ends with the lease.
		return nil, true, fmt.Errorf("%w: company %s: %w: an earlier refresh's outcome is unknown; its refresh token is not presented again before %s",
			ErrTokenEndpoint, companyID, ErrRefreshInProgress, until.Format(time.RFC3339))
	case now.Before(bo.until):
		b.metrics.RefreshSkipped(metrics.SkipBackoff)
		return nil, true, &RetryAfterError{After: bo.until.Sub(now),
			Err: fmt.Errorf("%w: backing off until %s after %d failures", ErrTokenEndpoint, bo.until.Format(time.RFC3339), bo.failures)}
	case b.oauth == nil:
		return nil, true, fmt.Errorf("%w: no OAuth client configured (PLEO_PROXY_OAUTH_CLIENT_ID)", ErrTokenEndpoint)
	}
	return nil, false, nil
}

// terminalRefreshError reports whether the token endpoint rejected the refresh token itself:
// a 4xx other than 408 and 429, except the client errors (invalid_client,
// unauthorized_client), which mean our OAuth client is misconfigured — the refresh token was
// not consumed, so marking every company for reconnection would be wrong; those back off and
// are logged as errors instead.
func terminalRefreshError(err error, re **oauth2.RetrieveError) bool {
	if !errors.As(err, re) || (*re).Response == nil {
		return false
	}
	status := (*re).Response.StatusCode
	if status < 400 || status >= 500 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests {
		return false
	}
	switch (*re).ErrorCode {
	case "invalid_client", "unauthorized_client":
		return false
	}
	return true
}

// refreshFailed classifies a token endpoint failure: a terminal one (terminalRefreshError)
// marks the credential reauthorization_required, and the endpoint is not asked again until the
// credential changes; anything else backs off per company.
//
// mark records the reauthorization_required state: the store's Update, or the commit of a
// cross-process refresh lock.
func (b *Broker) refreshFailed(ctx context.Context, cur Credential, trigger string, err error, gen uint64, took time.Duration,
	mark func(context.Context, Credential) (Credential, error)) error {
	var re *oauth2.RetrieveError
	if terminalRefreshError(err, &re) {
		code := re.ErrorCode
		if code == "" {
			code = fmt.Sprintf("HTTP %d", re.Response.StatusCode)
		}
		b.metrics.TokenRefresh(trigger, metrics.RefreshInvalidGrant, took)
		b.log.WarnContext(ctx, "refresh token rejected: the company must reconnect", "company_id", cur.CompanyID, "error_code", code)
		b.mu.Lock()
		b.rejected[cur.CompanyID] = tokenHash(cur.RefreshToken)
		// A pending pair whose refresh token was just rejected is dead: its write retry must
		// not later store it over the reauthorization_required mark as if it were active.
		delete(b.pending, cur.CompanyID)
		b.mu.Unlock()
		marked := cur
		marked.State = StateReauthorizationRequired
		marked.LastError = "token endpoint rejected the refresh token: " + code
		if saved, werr := mark(ctx, marked); werr == nil {
			b.remember(saved, gen)
			b.stateChanged(saved, StatusReauthorizationRequired)
		} else {
			b.log.WarnContext(ctx, "could not record reauthorization_required", "company_id", cur.CompanyID, "error", werr)
			b.cache.Add(cur.CompanyID, b.newEntry(marked))
		}
		return fmt.Errorf("%w: company %s: %s", ErrReauthorizationRequired, cur.CompanyID, code)
	}
	b.metrics.TokenRefresh(trigger, metrics.RefreshError, took)
	b.mu.Lock()
	bo := b.backoff[cur.CompanyID]
	bo.failures++
	wait := time.Second << min(bo.failures-1, 20)
	wait = min(wait, b.maxBackoff)
	wait = wait/2 + rand.N(wait/2+1) // jitter: half to full
	wait = bo.honour(re, wait, b.now())
	bo.until = b.now().Add(wait)
	b.backoff[cur.CompanyID] = bo
	b.clientErrors = b.clientErrors || bo.clientError
	b.mu.Unlock()
	msg := err.Error()
	if re != nil && re.Response != nil {
		msg = fmt.Sprintf("token endpoint answered HTTP %d %s", re.Response.StatusCode, re.ErrorCode)
	}
	level := slog.LevelWarn
	if re != nil && (re.ErrorCode == "invalid_client" || re.ErrorCode == "unauthorized_client") {
		level = slog.LevelError
		msg += " (check PLEO_PROXY_OAUTH_CLIENT_ID and PLEO_PROXY_OAUTH_CLIENT_SECRET)"
	}
	b.log.Log(ctx, level, "token refresh failed; backing off", "company_id", cur.CompanyID, "trigger", trigger,
		"failures", bo.failures, "retry_in", wait, "error", msg)
	return &RetryAfterError{After: wait, Err: fmt.Errorf("%w: company %s: %s", ErrTokenEndpoint, cur.CompanyID, msg)}
}

// persist commits next with a compare-and-swap on its version. A conflict caused by a change
// that kept the refresh token the store held (stored) or the one just presented (an earlier
// write that did land after all) is merged and retried; a conflict with any other refresh
// token means someone replaced the credential while we refreshed, and theirs wins.
func (b *Broker) persist(ctx context.Context, stored, presented Secret, next Credential) (Credential, error) {
	for attempt := 0; ; attempt++ {
		saved, err := b.store.Update(ctx, next)
		if err == nil {
			b.mu.Lock()
			delete(b.pending, next.CompanyID)
			b.mu.Unlock()
			return saved, nil
		}
		if !errors.Is(err, ErrConflict) || attempt == 3 {
			return Credential{}, err
		}
		latest, gerr := b.store.Get(ctx, next.CompanyID)
		if gerr != nil {
			return Credential{}, gerr
		}
		if latest.RefreshToken != stored && latest.RefreshToken != presented || latest.State == StateReauthorizationRequired {
			// Replaced (a reconnect, an import), or marked for reconnection (its refresh
			// token was refused, which revokes the pair we hold too): theirs wins.
			b.log.WarnContext(ctx, "credential replaced during its refresh; keeping the stored one", "company_id", next.CompanyID, "state", latest.State)
			b.mu.Lock()
			delete(b.pending, next.CompanyID)
			b.mu.Unlock()
			return latest, nil
		}
		next.Version = latest.Version
		next.TenantID = latest.TenantID
	}
}

// keepPending holds a rotated pair whose write failed (cause), or that arrived after its
// callers stopped waiting (cause nil), and retries the write in the background until it
// succeeds or the credential is replaced or marked.
func (b *Broker) keepPending(next Credential, stored Secret, cause error) {
	if cause != nil {
		b.log.Error("could not persist a rotated refresh token; keeping it in memory and retrying",
			"company_id", next.CompanyID, "error", cause)
	}
	b.mu.Lock()
	b.pending[next.CompanyID] = pendingPair{next: next, stored: stored}
	n := len(b.pending)
	start := !b.writers[next.CompanyID]
	b.writers[next.CompanyID] = true
	b.mu.Unlock()
	b.metrics.SetPendingTokenWrites(n)
	b.cache.Add(next.CompanyID, b.newEntry(next))
	if start {
		b.wg.Add(1)
		go b.retryWrite(next.CompanyID)
	}
}

func (b *Broker) retryWrite(companyID string) {
	defer b.wg.Done()
	wait := 100 * time.Millisecond
	maxWait := 30 * time.Second
	if b.locker != nil {
		// Other replicas wait for this write (the refresh lease): land it well before the
		// lease expires.
		maxWait = min(maxWait, b.budgets().lease/8)
	}
	for {
		select {
		case <-b.stopCtx.Done():
			b.mu.Lock()
			delete(b.writers, companyID)
			b.mu.Unlock()
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, maxWait)
		// Serialise with refreshes of the same company, so a refresh never reads a pair that
		// this write is about to replace. The flight's value is a writeAttempt, never an
		// error, so that a refresh joining it can tell it from a refresh (and retry); this
		// call may in turn join a refresh, whose outcome it ignores.
		v, _, _ := b.flights.Do(companyID, func() (any, error) {
			return writeAttempt{b.writePending(companyID)}, nil
		})
		if w, ok := v.(writeAttempt); ok && w.err != nil {
			b.log.Warn("retrying the write of a rotated refresh token failed", "company_id", companyID, "error", w.err)
		}
		// Decide to stop in the same critical section that sees no pending pair, so that a
		// keepPending racing with this exit either finds the writer still registered (and
		// this loop goes on) or starts a new one.
		b.mu.Lock()
		_, still := b.pending[companyID]
		if !still {
			delete(b.writers, companyID)
		}
		n := len(b.pending)
		b.mu.Unlock()
		b.metrics.SetPendingTokenWrites(n)
		if !still {
			return
		}
	}
}

// writePending tries once to store the company's pending pair; it runs inside the company's
// flight.
func (b *Broker) writePending(companyID string) error {
	b.mu.Lock()
	p, ok := b.pending[companyID]
	b.mu.Unlock()
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(b.stopCtx, b.budgets().commit)
	defer cancel()
	stored, err := b.store.Get(ctx, companyID)
	if err != nil {
		return err
	}
	// Compare the state, not only the refresh token: another replica that presented the
	// token ours replaces (after our lease ended) had it refused and marked the credential
	// reauthorization_required, keeping that token — and the refusal revoked our pair too.
	// The Update below is a compare-and-swap on the version read here, so what was compared
	// is what is replaced.
	if stored.RefreshToken != p.stored && stored.RefreshToken != p.next.RefreshToken ||
		stored.State == StateReauthorizationRequired {
		// Another writer stored a different credential (reconnect or import), or marked this
		// one for reconnection, since: it wins.
		if stored.State == StateReauthorizationRequired {
			b.log.Warn("not storing a rotated refresh token: the credential was marked reauthorization_required meanwhile", "company_id", companyID)
		}
		b.mu.Lock()
		delete(b.pending, companyID)
		b.mu.Unlock()
		b.invalidate(companyID)
		return nil
	}
	next := p.next
	next.Version = stored.Version
	next.TenantID = stored.TenantID
	saved, err := b.store.Update(ctx, next)
	if err != nil {
		return err
	}
	b.mu.Lock()
	delete(b.pending, companyID)
	b.mu.Unlock()
	b.cache.Add(companyID, b.newEntry(saved))
	b.log.Info("rotated refresh token persisted after retry", "company_id", companyID)
	return nil
}

// exchangeResult is one token endpoint call, as its callers saw it.
type exchangeResult struct {
	tok             *oauth2.Token
	err             error
	start, received time.Time     // on the broker's clock
	arrived         time.Time     // monotonic: when the answer arrived (for the commit window)
	took            time.Duration // on the broker's clock
	outcome         callOutcome
	late            bool       // the call had not ended when its callers stopped waiting
	call            *tokenCall // the call, when late
}

// rotated is cur with the tokens of a successful exchange.
func (b *Broker) rotated(cur Credential, x exchangeResult) Credential {
	next := cur
	next.AccessToken = Secret(x.tok.AccessToken)
	next.RefreshToken = Secret(x.tok.RefreshToken) // x/oauth2 keeps the current one when none came back
	switch {
	case x.tok.ExpiresIn > 0:
		// On the broker's clock, counted from before the request: x/oauth2 computes Expiry
		// with time.Now, which an injected clock does not move.
		next.ExpiresAt = x.start.Add(time.Duration(x.tok.ExpiresIn) * time.Second)
	case !x.tok.Expiry.IsZero():
		next.ExpiresAt = x.tok.Expiry
	default:
		next.ExpiresAt = x.received.Add(defaultAccessTTL)
	}
	next.LastRefreshedAt = x.received
	next.LastError = lastErrorAfterRefresh(cur)
	next.State = StateActive
	if !cur.LastRefreshedAt.IsZero() {
		b.metrics.TokenAgeAtRefresh(x.received.Sub(cur.LastRefreshedAt))
	}
	return next
}

// refreshShared is refreshLocked for a store that many processes share (a RefreshLocker):
// it takes the company's cross-process refresh lock, re-reads the credential under it and
// adopts a token another replica obtained meanwhile; otherwise it records a refresh lease,
// calls the token endpoint and commits the rotated pair (compare-and-swap on the refresh token
// read under the lock) before anything uses it. A failed commit keeps the pair in memory, in
// use, with its write retried; the lease keeps every other replica from the token endpoint
// until that write lands or the lease expires. So does a token call whose outcome is unknown
// (sent, no answer read): the lock is given up, the lease kept (see unsettled).
func (b *Broker) refreshShared(ctx context.Context, companyID, trigger string, stale Grant, queued time.Time) (*entry, error) {
	gen := b.gen.Load()
	bud := b.budgets()
	lctx, cancel := context.WithTimeout(ctx, bud.lockWait)
	lock, err := b.locker.LockRefresh(lctx, companyID)
	cancel()
	b.metrics.RefreshLockWait(b.now().Sub(queued))
	if err != nil {
		if errors.Is(err, ErrRefreshInProgress) {
			b.log.WarnContext(ctx, "refresh skipped: another replica's refresh of this credential has an unknown outcome", "company_id", companyID, "error", err)
			return nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
		}
		return nil, storeErr(err)
	}
	defer func() {
		rctx, cancel := b.commitContext(ctx)
		defer cancel()
		if err := lock.Release(rctx); err != nil {
			b.log.WarnContext(ctx, "could not release a refresh lease; it expires by itself", "company_id", companyID, "error", err)
		}
	}()

	cur := lock.Current()
	stored := cur.RefreshToken
	b.mu.Lock()
	p, pending := b.pending[companyID]
	if pending && p.stored != stored {
		// The pending write landed (the row holds its token), or another writer replaced
		// the credential since: either way the row is authoritative.
		delete(b.pending, companyID)
		pending = false
	}
	b.mu.Unlock()
	if pending {
		cur = p.next // ours is newer than the row: its write is still being retried
	}
	if e, done, err := b.preflight(ctx, companyID, trigger, stale, cur, pending, gen); done {
		return e, err
	}
	wctx, cancel := b.commitContext(ctx)
	until := b.now().Add(bud.lease)
	err = lock.Lease(wctx, bud.lease)
	cancel()
	if err != nil {
		return nil, storeErr(err)
	}

	b.log.DebugContext(ctx, "refreshing token", "company_id", companyID, "trigger", trigger,
		"expires_at", cur.ExpiresAt, "rejected_by_upstream", trigger == TriggerUnauthorized)
	x := b.exchange(cur)
	if err, ok := b.unsettled(x, cur, stored, trigger, gen, until); ok {
		hctx, cancel := b.commitContext(ctx)
		lock.Hold(hctx)
		cancel()
		return nil, err
	}
	cctx, cancel := b.commitContext(ctx)
	defer cancel()
	if x.err != nil {
		return nil, b.refreshFailed(cctx, cur, trigger, x.err, gen, x.took, lock.Commit)
	}
	next := b.rotated(cur, x)
	committing := b.gen.Load()
	saved, err := lock.Commit(cctx, next)
	window := time.Since(x.arrived)
	b.metrics.TokenRefresh(trigger, metrics.RefreshSuccess, x.took)
	b.refreshSucceeded(companyID, trigger, next)
	switch {
	case errors.Is(err, ErrNotFound):
		b.log.WarnContext(ctx, "credential deleted during its refresh; dropping the new tokens", "company_id", companyID)
		return nil, err
	case errors.Is(err, ErrConflict):
		// Replaced (imported, reconnected) while we refreshed: theirs wins.
		b.log.WarnContext(ctx, "credential replaced during its refresh; keeping the stored one", "company_id", companyID)
		b.mu.Lock()
		delete(b.pending, companyID)
		b.mu.Unlock()
		c, gerr := b.store.Get(cctx, companyID)
		if gerr != nil {
			return nil, storeErr(gerr)
		}
		return b.remember(c, gen), nil
	case err != nil:
		b.keepPending(next, stored, err)
		return b.newEntry(next), nil
	}
	b.mu.Lock()
	delete(b.pending, companyID)
	b.mu.Unlock()
	b.metrics.TokenCommitWindow(window)
	b.log.InfoContext(ctx, "token refreshed", "company_id", companyID, "trigger", trigger, "result", metrics.RefreshSuccess,
		"duration_ms", float64(x.took)/float64(time.Millisecond), "expires_at", saved.ExpiresAt, "commit_window", window)
	// The commit announced itself (one bump of gen): what it wrote is what the row holds, so
	// it is cached unless another change was announced since the commit began.
	return b.rememberCommitted(saved, committing), nil
}
