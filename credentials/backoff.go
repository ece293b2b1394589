package credentials

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// maxRetryAfter caps a token endpoint's Retry-After: a larger one (or a date far ahead) is
// more likely a mistake than a wish to be left alone for longer.
const maxRetryAfter = time.Hour

// parseRetryAfter reads a Retry-After value, delay-seconds or an HTTP-date (RFC 9110
// section 10.2.3), as a wait from now; false when absent, malformed or not in the future.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0, false
		}
		return min(time.Duration(min(n, int64(maxRetryAfter/time.Second)))*time.Second, maxRetryAfter), true
	}
	t, err := http.ParseTime(v)
	if err != nil || !t.After(now) {
		return 0, false
	}
	return min(t.Sub(now), maxRetryAfter), true
}

// honour adjusts the back-off wait computed for a failed refresh to what the token endpoint
// asked for: at least its Retry-After (429 and 503 carry one), and it notes a client error
// (invalid_client, unauthorized_client: the OAuth client itself is misconfigured), which the
// next successful refresh of any company, or ResetBackoff, ends for every company.
func (bo *backoffState) honour(re *oauth2.RetrieveError, wait time.Duration, now time.Time) time.Duration {
	bo.retryAfter, bo.clientError = false, false
	if re == nil || re.Response == nil {
		return wait
	}
	if ra, ok := parseRetryAfter(re.Response.Header.Get("Retry-After"), now); ok && ra > wait {
		wait, bo.retryAfter = ra, true
	} else if ok {
		bo.retryAfter = true
	}
	switch re.ErrorCode {
	case "invalid_client", "unauthorized_client":
		bo.clientError = true
	}
	return wait
}

// refreshSucceeded runs when the token endpoint answered a refresh with next. It ends the
// company's back-off. A success also shows that the OAuth client works: every other company
// backing off because it did not (invalid_client, unauthorized_client: the secret was wrong
// and has been corrected) refreshes on its next request rather than after up to MaxBackoff.
// A token obtained because of a 401 is put on probation (see cooldown.go).
func (b *Broker) refreshSucceeded(companyID, trigger string, next Credential) {
	if trigger == TriggerUnauthorized {
		b.onProbation(companyID, NewGrant(next))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.backoff, companyID)
	if !b.clientErrors {
		return
	}
	for id, o := range b.backoff {
		if o.clientError {
			delete(b.backoff, id)
		}
	}
	b.clientErrors = false
}

// ResetBackoff ends every company's back-off after transient refresh failures, so that the
// next request of each refreshes at once: call it when the cause is known to be fixed, e.g.
// after the OAuth client secret was reloaded. A Retry-After the token endpoint sent is still
// honoured.
func (b *Broker) ResetBackoff() {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, bo := range b.backoff {
		if !bo.retryAfter || !now.Before(bo.until) {
			delete(b.backoff, id)
		}
	}
}

// RetryAfterError is a transient failure that should not be retried before After: a refresh
// backing off, or the token endpoint's own Retry-After. The proxy sends it as Retry-After.
type RetryAfterError struct {
	After time.Duration
	Err   error
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }

// Unwrap returns the failure.
func (e *RetryAfterError) Unwrap() error { return e.Err }

// RetryAfter returns how long the caller should wait before trying again after err, if the
// broker knows (a back-off in progress), rounded up to whole seconds.
func RetryAfter(err error) (time.Duration, bool) {
	var ra *RetryAfterError
	if !errors.As(err, &ra) || ra.After <= 0 {
		return 0, false
	}
	return (ra.After + time.Second - 1).Truncate(time.Second), true
}

// typedError is an error about a chosen credential, which carries that credential's type.
type typedError struct {
	typ Type
	err error
}

func (e *typedError) Error() string { return e.err.Error() }
func (e *typedError) Unwrap() error { return e.err }

// ErrorType returns the type of the credential an Authorize error is about, and false when
// the error came before a credential was chosen (not found, store unreadable).
func ErrorType(err error) (Type, bool) {
	var te *typedError
	if errors.As(err, &te) && te.typ != "" {
		return te.typ, true
	}
	return "", false
}

// leadTime is how long before its expiry a token is refreshed: lead (RefreshBefore and its
// jitter), but at most half the token's lifetime when that is known (issued at
// LastRefreshedAt, expiring at ExpiresAt). Otherwise a token living shorter than
// RefreshBefore would be refreshed on every request. The first clamp of each company is
// logged once.
func (b *Broker) leadTime(c Credential, lead time.Duration) time.Duration {
	if c.LastRefreshedAt.IsZero() || !c.ExpiresAt.After(c.LastRefreshedAt) {
		return lead
	}
	half := c.ExpiresAt.Sub(c.LastRefreshedAt) / 2
	if lead <= half {
		return lead
	}
	b.mu.Lock()
	warned := b.clamped[c.CompanyID]
	b.clamped[c.CompanyID] = true
	b.mu.Unlock()
	if !warned {
		b.log.Warn("access tokens live shorter than twice PLEO_PROXY_REFRESH_BEFORE; refreshing at half their lifetime instead",
			"company_id", c.CompanyID, "token_lifetime", 2*half, "refresh_before", b.refreshBefore)
	}
	return half
}
