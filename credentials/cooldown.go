package credentials

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// The 401 cool-down. Tokens that refreshes obtained because the upstream answered 401 (two in a
// row), and that the upstream answers 401 to as well, were not rejected for being stale: refreshing again would cost a rotation, a durable write and
// a token endpoint call for every request (a missing scope, a Pleo-side outage), and one noisy
// caller could spend the OAuth client's rate limit. So a 401 to a fresh token puts the company
// in a cool-down: until it passes, upstream 401s are passed back to the caller unchanged,
// with no refresh, and the credential reports the state unauthorized. Cool-downs double from
// CooldownBase up to CooldownMax while the 401s go on; a request whose token gets an answer
// other than 401 (or 5xx), or a credential replaced by an import or a reconnect, ends it.
//
// The cool-down is kept in the credential's last_error, in a fixed form that parseCooldown
// reads back, so that every replica sharing the store sees it, and so that no file, record or
// table format changes: an older release reads and writes such a credential unchanged.
const (
	// CooldownBase is the first cool-down after a fresh token got a 401.
	CooldownBase = 30 * time.Second
	// CooldownMax caps the doubling cool-downs.
	CooldownMax = 15 * time.Minute
)

// cooldownPrefix starts a last_error that records a cool-down.
const cooldownPrefix = "unauthorized: "

// cooldown is a company's 401 cool-down as recorded in its credential's last_error.
type cooldown struct {
	until  time.Time
	period time.Duration
}

// text renders the cool-down for last_error; parseCooldown reads it back.
func (c cooldown) text() string {
	return fmt.Sprintf("%sthe upstream answered 401 to a freshly issued token; no refresh on 401 until %s (cool-down %s)",
		cooldownPrefix, c.until.UTC().Format(time.RFC3339), c.period)
}

// parseCooldown reads a cool-down from a last_error written by cooldown.text.
func parseCooldown(lastError string) (cooldown, bool) {
	rest, ok := strings.CutPrefix(lastError, cooldownPrefix)
	if !ok {
		return cooldown{}, false
	}
	_, rest, ok = strings.Cut(rest, " until ")
	if !ok {
		return cooldown{}, false
	}
	until, rest, ok := strings.Cut(rest, " (cool-down ")
	if !ok || !strings.HasSuffix(rest, ")") {
		return cooldown{}, false
	}
	t, err := time.Parse(time.RFC3339, until)
	if err != nil {
		return cooldown{}, false
	}
	d, err := time.ParseDuration(strings.TrimSuffix(rest, ")"))
	if err != nil || d <= 0 {
		return cooldown{}, false
	}
	return cooldown{until: t, period: d}, true
}

// next is the cool-down that follows c (the zero cooldown: none yet), starting at now.
func (c cooldown) next(now time.Time) cooldown {
	p := CooldownBase
	if c.period > 0 {
		p = min(2*c.period, CooldownMax)
	}
	// Whole seconds: the store keeps the time to the second.
	return cooldown{until: now.Add(p).Truncate(time.Second), period: p}
}

// InCooldown reports whether the credential records a 401 cool-down (passed or not): the
// upstream answered 401 to a fresh token, and no answer other than 401 has come since. The
// admin status and the credentials gauge report it as unauthorized.
func (c Credential) InCooldown() bool {
	_, ok := parseCooldown(c.LastError)
	return ok && c.Type == OAuth2
}

// lastErrorAfterRefresh is the last_error a refreshed credential keeps: its cool-down, if it
// has one (a new token does not show that the 401s stopped), else nothing.
func lastErrorAfterRefresh(cur Credential) string {
	if _, ok := parseCooldown(cur.LastError); ok {
		return cur.LastError
	}
	return ""
}

// triggerProbe is the trigger of a refresh flight that only looks: under the company's
// refresh lock (across replicas where the store has one), it adopts a token newer than the
// rejected one if one was stored, and otherwise ends with errWouldRefresh instead of calling
// the token endpoint. It is never a metric label.
const triggerProbe = "cooldown_probe"

// A probe ends with errWouldRefresh when the rejected token is still the current one, with
// errNotCurrent when a newer token is stored that the refresh path should deal with (it is
// within its refresh window); both are errProbed.
var (
	errProbed       = errors.New("credentials: cool-down probe")
	errWouldRefresh = fmt.Errorf("%w: the rejected token is the current one", errProbed)
	errNotCurrent   = fmt.Errorf("%w: a newer token is stored", errProbed)
)

func probed(current bool) error {
	if current {
		return errWouldRefresh
	}
	return errNotCurrent
}

// cooldownReauthorize is Reauthorize's first step for OAuth: done reports that the 401 to
// rejected is answered without a token call — g, retry and err are then Reauthorize's
// results. In a cool-down, the 401 is passed back (g is rejected, retry false). A 401 to a
// token on probation first looks, under the refresh lock, for a newer token (another replica
// may have rotated the rejected one, which is why it was refused): one is retried with;
// otherwise a cool-down starts and the 401 is passed back.
func (b *Broker) cooldownReauthorize(ctx context.Context, companyID string, rejected Grant) (g Grant, retry, done bool, err error) {
	e, err := b.lookup(ctx, companyID)
	if err != nil || !e.grant.Same(rejected) || e.cred.State == StateReauthorizationRequired {
		return Grant{}, false, false, nil // a newer token, or an error: the refresh path deals with it
	}
	now := b.now()
	cd, marked := parseCooldown(e.cred.LastError)
	if marked && now.Before(cd.until) {
		b.metrics.RefreshSkipped(metrics.SkipUnauthorizedCooldown)
		return rejected, false, true, nil
	}
	// A token within its refresh window may have expired on the way (or been rotated by an
	// expiry refresh elsewhere): that 401 is for the refresh path.
	if !b.fresh(e.cred, rejected) || !now.Before(e.refreshAt) {
		return Grant{}, false, false, nil
	}
	ne, err := b.refresh(ctx, companyID, triggerProbe, rejected)
	switch {
	case err == nil && !ne.grant.Same(rejected):
		return ne.grant, true, true, nil // rotated by another replica or flight meanwhile
	case !errors.Is(err, errWouldRefresh):
		return Grant{}, false, false, nil
	}
	// The rejected token is the current one, and a refresh already failed to cure the 401s:
	// start (or extend) the cool-down; callers arriving together share one store write.
	_, _, _ = b.flights.Do("401:"+companyID, func() (any, error) {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.tokenTimeout)
		defer cancel()
		gen := b.gen.Load()
		c, err := b.store.Get(wctx, companyID)
		if err != nil || !NewGrant(c).Same(rejected) {
			return nil, err
		}
		cur, extended := parseCooldown(c.LastError)
		if extended && now.Before(cur.until) {
			return nil, nil // another caller or replica started it meanwhile
		}
		next := cur.next(now)
		c.LastError = next.text()
		saved, err := b.store.Update(wctx, c)
		if err != nil {
			if !errors.Is(err, ErrConflict) {
				// Not shared, but kept here: this replica still stops refreshing.
				b.log.WarnContext(ctx, "could not record a 401 cool-down", "company_id", companyID, "error", err)
				b.cache.Add(companyID, b.newEntry(c))
			}
			return nil, err
		}
		b.remember(saved, gen)
		b.log.WarnContext(ctx, "the upstream keeps answering 401 to a freshly issued token; passing 401s back without refreshing",
			"company_id", companyID, "cool_down", next.period, "until", next.until)
		if !extended {
			b.stateChanged(saved, StatusUnauthorized)
		}
		return nil, nil
	})
	b.metrics.RefreshSkipped(metrics.SkipUnauthorizedCooldown)
	return rejected, false, true, nil
}

// probationEntry is the token a 401-triggered refresh obtained, and how many such refreshes
// in a row came before it with no answer other than 401 in between.
type probationEntry struct {
	hash    [32]byte
	strikes int
}

// fresh reports whether g's token is the second or later in a row that a refresh triggered by
// a 401 obtained, with no answer other than 401 since: a 401 to it shows that new tokens do
// not cure the 401s. One is not enough: a token revoked at Pleo is cured by a refresh, and
// must be, even if the revocation happened to hit a token just refreshed after another.
func (b *Broker) fresh(c Credential, g Grant) bool {
	v, ok := b.probation.Load(c.CompanyID)
	return ok && v.(probationEntry).hash == grantHash(g) && v.(probationEntry).strikes >= 1
}

// onProbation records that g was obtained from the token endpoint by a refresh that a 401
// triggered (not adopted from another replica's refresh); a company still on probation
// (its last such token got no other answer) gets a strike more.
func (b *Broker) onProbation(companyID string, g Grant) {
	next := probationEntry{hash: grantHash(g)}
	if v, ok := b.probation.Load(companyID); ok {
		next.strikes = v.(probationEntry).strikes + 1
	}
	if _, loaded := b.probation.Swap(companyID, next); !loaded {
		b.probations.Add(1)
	}
}

// Accepted tells the broker that the upstream answered g with a status other than 401 (and
// other than 5xx, which says nothing about the token): g's token works, so a 401 cool-down
// or probation of the company ends. It costs an atomic load unless one is in effect.
func (b *Broker) Accepted(ctx context.Context, companyID string, g Grant) {
	if !g.cooling && b.probations.Load() == 0 {
		return
	}
	if v, ok := b.probation.Load(companyID); ok && v.(probationEntry).hash == grantHash(g) && b.probation.CompareAndDelete(companyID, v) {
		b.probations.Add(-1)
	}
	if !g.cooling {
		return
	}
	_, _, _ = b.flights.Do("401:"+companyID, func() (any, error) {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.tokenTimeout)
		defer cancel()
		gen := b.gen.Load()
		c, err := b.store.Get(wctx, companyID)
		if err != nil || !c.InCooldown() || !NewGrant(c).Same(g) {
			return nil, err
		}
		c.LastError = ""
		saved, err := b.store.Update(wctx, c)
		if err != nil {
			if !errors.Is(err, ErrConflict) {
				b.log.WarnContext(ctx, "could not clear a 401 cool-down", "company_id", companyID, "error", err)
			}
			return nil, err
		}
		b.remember(saved, gen)
		b.log.InfoContext(ctx, "the upstream accepted the token again; 401 cool-down over", "company_id", companyID)
		return nil, nil
	})
}

func grantHash(g Grant) [32]byte { return tokenHash(Secret(g.header)) }
