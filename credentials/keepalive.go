package credentials

import (
	"context"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// Run refreshes in the background until ctx ends: tokens of recently used (cached)
// credentials that are about to expire, so requests do not wait for a refresh, and every OAuth
// credential not refreshed for KeepaliveInterval, so its refresh token does not lapse unused.
// It also publishes the credential gauges. interval is how often it looks (0: a default
// derived from RefreshBefore, between 1s and 10s).
func (b *Broker) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = min(max(b.refreshBefore/2, time.Second), 10*time.Second)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		b.Sweep(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// maxKeepalivePerSweep bounds keepalive refreshes per sweep, so a fleet imported at once is
// refreshed over time, never all at once.
const maxKeepalivePerSweep = 20

// Sweep does one pass of Run's work and returns how many credentials it refreshed. It
// streams the store without secrets (Scan): what it keeps is the counts and the few
// credentials due, which it reads whole and refreshes once the pass is over, so no store
// connection is held across a token call.
//
// With a SweepLeader, only the leading replica does that pass; the others refresh the cached
// credentials they use that are about to expire (sweepCached), reading nothing from the store,
// and report zero for the credential gauges (the leader reports the fleet's counts).
func (b *Broker) Sweep(ctx context.Context) int {
	if b.leader != nil && !b.leader.LeadSweep(ctx) {
		return b.sweepCached(ctx)
	}
	now := b.now()
	b.mu.Lock()
	since := b.lastSweep
	b.mu.Unlock()
	counts := make(map[metrics.CredentialKey]int)
	expiring := make(map[string]int)
	var due []Credential
	keepalives := 0
	err := Scan(ctx, b.store, func(c Credential) bool {
		counts[metrics.CredentialKey{Type: string(c.Type), State: string(b.statusOf(c, now))}]++
		if c.Type.IsAPIKey() && !c.ExpiresAt.IsZero() && c.ExpiresAt.Sub(now) < 7*24*time.Hour {
			expiring[string(c.Type)]++
			if c.ExpiresAt.After(since) && !c.ExpiresAt.After(now) {
				b.stateChanged(c, StatusExpired) // expired since the last pass
			}
		}
		if c.Type != OAuth2 || c.State == StateReauthorizationRequired {
			return true
		}
		if e, ok := b.cache.Peek(c.CompanyID); ok && !now.Before(e.refreshAt) {
			due = append(due, c) // in use and about to expire
		} else if keepalives < maxKeepalivePerSweep && b.keepaliveDue(c, now) {
			due = append(due, c)
			keepalives++
		}
		return true
	})
	if err != nil {
		b.log.WarnContext(ctx, "background sweep could not list credentials", "error", err)
		return 0
	}
	b.mu.Lock()
	if now.After(b.lastSweep) {
		b.lastSweep = now
	}
	b.mu.Unlock()
	b.metrics.SetCredentialCounts(counts)
	b.metrics.SetExpiringCredentials(expiring)
	refreshed := 0
	for _, c := range due {
		if ctx.Err() != nil {
			break
		}
		full, err := b.store.Get(ctx, c.CompanyID)
		if err != nil || full.Version != c.Version {
			continue // removed, unreadable, or changed since the pass: the next sweep looks again
		}
		if _, err := b.refresh(ctx, c.CompanyID, TriggerBackground, b.newEntry(full).grant); err == nil {
			refreshed++
		}
	}
	return refreshed
}

// sweepCached refreshes the cached OAuth credentials due for a refresh: what a replica that
// does not lead the sweep still does, so that its requests do not wait for a refresh.
func (b *Broker) sweepCached(ctx context.Context) int {
	b.metrics.SetCredentialCounts(nil)
	b.metrics.SetExpiringCredentials(nil)
	now := b.now()
	refreshed := 0
	for _, id := range b.cache.Keys() {
		if ctx.Err() != nil {
			break
		}
		e, ok := b.cache.Peek(id)
		if !ok || e.cred.Type != OAuth2 || e.cred.State == StateReauthorizationRequired || now.Before(e.refreshAt) {
			continue
		}
		if _, err := b.refresh(ctx, id, TriggerBackground, e.grant); err == nil {
			refreshed++
		}
	}
	return refreshed
}

// keepaliveDue reports whether an OAuth credential has gone unrefreshed for the keepalive
// interval, less a per-company offset of up to a quarter of it, which spreads a fleet out.
func (b *Broker) keepaliveDue(c Credential, now time.Time) bool {
	last := c.LastRefreshedAt
	if last.IsZero() {
		if c.ExpiresAt.IsZero() {
			return true
		}
		last = c.ExpiresAt.Add(-defaultAccessTTL)
	}
	return now.Sub(last) >= b.keepalive-spread(c.CompanyID, b.keepalive/4)
}

// Status is a credential's state as the admin endpoint and the gauges report it.
type Status string

// Statuses reported by StatusOf.
const (
	StatusActive                  Status = "active"
	StatusReauthorizationRequired Status = "reauthorization_required"
	StatusUnauthorized            Status = "unauthorized"
	StatusExpired                 Status = "expired"
)

// StatusOf derives a credential's reported state.
func (b *Broker) StatusOf(c Credential) Status { return b.statusOf(c, b.now()) }

func (b *Broker) statusOf(c Credential, now time.Time) Status {
	switch {
	case c.State == StateReauthorizationRequired:
		return StatusReauthorizationRequired
	case c.Type.IsAPIKey() && c.Expired(now):
		return StatusExpired
	case c.Type.IsAPIKey() && b.keyRejected(c), c.InCooldown():
		return StatusUnauthorized
	}
	return StatusActive
}
