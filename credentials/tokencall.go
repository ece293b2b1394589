package credentials

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// Token calls, and the deadlines of a refresh.
//
// A refresh token presented to the token endpoint is spent as soon as the endpoint processes
// it, whether or not its answer is read. So the token call's deadline guards waiting for an
// answer, never reading one that has come: the request is cancelled only when no response byte
// arrived in time, and even then only after a grace in real time (a process resumed after a
// pause or a stall has an answer sitting in its socket that it reads in microseconds, but its
// timers fire first). Callers stop waiting after TokenTimeout; the request goes on in the
// background for a while longer, and a late answer is stored like a rotated pair whose write
// failed (see finishLate). A call that may have reached the endpoint but produced no answer has
// an unknown outcome: its refresh token is not presented again — by this process (the
// unknown-outcome record) or by any other (the refresh lease stays in the row) — until the
// lease's time has passed.

// refreshBudgets are the deadlines of one refresh's phases, each its own: waiting for the lock
// does not shorten the token call, nor the token call the commit. All derive from TokenTimeout
// (T); the lease covers them all.
type refreshBudgets struct {
	// lockWait bounds taking the company's refresh lock and reading the credential under it
	// (or, with a store of one process, reading it): T.
	lockWait time.Duration
	// wait is how long callers wait for the token endpoint's answer: T. The request is not
	// cancelled then.
	wait time.Duration
	// grace is how much longer, in real time, a deadline that fired without a response byte
	// waits before giving up: T/4, at least 100 ms (at most T/2) and at most 1 s.
	grace time.Duration
	// answer bounds the request until the first byte of its response: 2T (plus grace).
	answer time.Duration
	// read bounds reading a response once its first byte arrived: T.
	read time.Duration
	// commit bounds each store write of a refresh (the lease, the rotated pair, a mark): T.
	commit time.Duration
	// lease is how long a refresh lease lasts, and how long a refresh token whose
	// presentation has an unknown outcome is not presented again: leaseFactor × T.
	lease time.Duration
}

// leaseFactor times TokenTimeout is how long a refresh lease lasts: longer than the lock wait,
// the token call (answer, grace and read bounds) and the commit together (at most 5½ T), so a late
// answer is stored before any other replica may present the refresh token; short enough that
// a replica that died between the token endpoint's answer and its commit blocks the credential
// for a bounded time.
const leaseFactor = 6

func newRefreshBudgets(t time.Duration) refreshBudgets {
	return refreshBudgets{
		lockWait: t,
		wait:     t,
		grace:    min(max(t/4, 100*time.Millisecond), t/2, time.Second),
		answer:   2 * t,
		read:     t,
		commit:   t,
		lease:    leaseFactor * t,
	}
}

// call is the longest a token call can take: the answer bound, its grace and the read bound.
func (r refreshBudgets) call() time.Duration { return r.answer + r.grace + r.read }

// validate checks that the lease outlasts the lock wait, the token call and the commit: a
// replica's late answer must be stored before the lease lets another replica present the
// refresh token again.
func (r refreshBudgets) validate() error {
	if need := r.lockWait + r.call() + r.commit; r.lease <= need {
		return fmt.Errorf("credentials: the refresh lease (%s) must be longer than the lock wait, token call and commit together (%s)", r.lease, need)
	}
	if r.wait > r.answer {
		return fmt.Errorf("credentials: callers wait for the token endpoint (%s) longer than the request may live (%s)", r.wait, r.answer)
	}
	return nil
}

// callOutcome is what is known of a token call that ended.
type callOutcome int

const (
	// callAnswered: the token endpoint answered (tokens, or an error status) and the answer
	// was read.
	callAnswered callOutcome = iota
	// callNotSent: the request was never written in full (dial refused, DNS, a write error):
	// the refresh token did not reach the endpoint.
	callNotSent
	// callUnknown: the request was written, and no answer was read (a timeout, a connection
	// lost, an answer that could not be parsed): the endpoint may have rotated the token.
	callUnknown
)

// tokenCall is one request to the token endpoint, running in its own goroutine.
type tokenCall struct {
	start time.Time // on the broker's clock
	done  chan struct{}
	// wrote: a request was written in full, so it may have reached the endpoint.
	wrote atomic.Bool
	// answered: the first byte of a response arrived.
	answered atomic.Bool

	// Set before done is closed.
	tok      *oauth2.Token
	err      error
	received time.Time // on the broker's clock
	arrived  time.Time // monotonic
}

// startTokenCall presents cur's refresh token to the token endpoint. The request is detached
// from every caller; it ends when answered, when no response byte arrived within the answer
// bound (and its grace), when the answer's reading exceeds the read bound, or when the broker
// closes.
func (b *Broker) startTokenCall(cur Credential) *tokenCall {
	bud := b.budgets()
	c := &tokenCall{start: b.now(), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(b.stopCtx)
	var readTimer atomic.Pointer[time.Timer]
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) {
			if i.Err == nil {
				c.wrote.Store(true)
			}
		},
		GotFirstResponseByte: func() {
			if c.answered.CompareAndSwap(false, true) {
				readTimer.Store(time.AfterFunc(bud.read, cancel))
			}
		},
	})
	ctx = context.WithValue(ctx, oauth2.HTTPClient, b.httpClient)
	answerTimer := afterGrace(bud.answer, bud.grace, c.answered.Load, cancel)
	go func() {
		defer close(c.done)
		defer cancel()
		c.tok, c.err = b.oauthConfig().TokenSource(ctx, &oauth2.Token{RefreshToken: cur.RefreshToken.Reveal()}).Token()
		c.received = b.now()
		c.arrived = time.Now() // monotonic, for the commit window; the injected clock may stand still
		answerTimer.stop()
		if t := readTimer.Load(); t != nil {
			t.Stop()
		}
	}()
	return c
}

// await waits for the call the way callers do: up to wait; then, unless the answer has begun
// to arrive, up to grace more. It reports whether the call ended.
func (c *tokenCall) await(wait, grace time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-c.done:
		return true
	case <-t.C:
	}
	if !c.answered.Load() {
		t.Reset(grace)
		select {
		case <-c.done:
			return true
		case <-t.C:
		}
	}
	if c.answered.Load() {
		<-c.done // bounded by the read bound
		return true
	}
	return false
}

// outcome classifies a call that ended.
func (c *tokenCall) outcome() callOutcome {
	var re *oauth2.RetrieveError
	switch {
	case c.err == nil, errors.As(c.err, &re) && re.Response != nil:
		return callAnswered
	case !c.wrote.Load():
		return callNotSent
	}
	return callUnknown
}

// result is the call's exchangeResult; the call must have ended.
func (c *tokenCall) result() exchangeResult {
	return exchangeResult{tok: c.tok, err: c.err, start: c.start, received: c.received, arrived: c.arrived,
		took: c.received.Sub(c.start), outcome: c.outcome()}
}

// graceTimer runs fn once d has passed and then grace more in real time, unless arrived
// reports true at either point.
type graceTimer struct {
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

func afterGrace(d, grace time.Duration, arrived func() bool, fn func()) *graceTimer {
	g := &graceTimer{}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.t = time.AfterFunc(d, func() {
		if arrived() {
			return
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.stopped {
			return
		}
		g.t = time.AfterFunc(grace, func() {
			if !arrived() {
				fn()
			}
		})
	})
	return g
}

func (g *graceTimer) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopped = true
	g.t.Stop()
}

// unknownOutcome records that a refresh token was presented with an unknown outcome: it is
// not presented again before until (the lease's end).
type unknownOutcome struct {
	token [32]byte
	until time.Time // on the broker's clock
}

// holdUnknown records that companyID's refresh token rt has an unknown outcome until until.
func (b *Broker) holdUnknown(companyID string, rt Secret, until time.Time) {
	b.unknown.Store(companyID, unknownOutcome{token: tokenHash(rt), until: until})
}

// heldUnknown returns the end of the unknown outcome recorded for companyID's refresh token
// rt, if one is recorded and has not ended.
func (b *Broker) heldUnknown(companyID string, rt Secret, now time.Time) (time.Time, bool) {
	v, ok := b.unknown.Load(companyID)
	if !ok {
		return time.Time{}, false
	}
	u := v.(unknownOutcome)
	if !now.Before(u.until) {
		b.unknown.CompareAndDelete(companyID, v)
		return time.Time{}, false
	}
	return u.until, u.token == tokenHash(rt)
}

// exchange presents cur's refresh token and waits for the answer as callers do (see await).
// A call still running after that is returned with late set: it goes on in the background.
func (b *Broker) exchange(cur Credential) exchangeResult {
	bud := b.budgets()
	c := b.startTokenCall(cur)
	if !c.await(bud.wait, bud.grace) {
		return exchangeResult{call: c, late: true, start: c.start, outcome: callUnknown,
			err: fmt.Errorf("no answer from the token endpoint within %s (PLEO_PROXY_TOKEN_TIMEOUT)", bud.wait)}
	}
	return c.result()
}

// unsettled handles an exchange whose outcome is unknown: still running (late), or ended with
// the request written and no answer read. It records the unknown outcome, so this process
// does not present the refresh token again before until, finishes a late call in the
// background, and returns the callers' error. ok is false for any other exchange.
func (b *Broker) unsettled(x exchangeResult, cur Credential, stored Secret, trigger string, gen uint64, until time.Time) (err error, ok bool) {
	if x.outcome != callUnknown {
		return nil, false
	}
	b.holdUnknown(cur.CompanyID, cur.RefreshToken, until)
	if x.late {
		b.finishLate(x.call, cur, stored, trigger, gen, until)
		b.log.Warn("the token endpoint has not answered within PLEO_PROXY_TOKEN_TIMEOUT; still waiting for its answer in the background, and not presenting the refresh token again meanwhile",
			"company_id", cur.CompanyID, "trigger", trigger, "until", until)
		return fmt.Errorf("%w: company %s: %w: %w", ErrTokenEndpoint, cur.CompanyID, ErrRefreshInProgress, x.err), true
	}
	err = b.refreshFailed(context.Background(), cur, trigger, x.err, gen, x.took, nil)
	b.log.Warn("the refresh's outcome is unknown (the request was sent, no answer was read): not presenting its refresh token again until the lease ends",
		"company_id", cur.CompanyID, "until", until)
	return fmt.Errorf("%w: %w", err, ErrRefreshInProgress), true
}

// finishLate waits, in the background, for a token call that outlived its callers. A late
// answer with tokens is kept and stored like a rotated pair whose write failed (keepPending:
// in use at once, written with retries, serialised with refreshes); a late refusal is handled
// as a refusal; no answer leaves the outcome unknown until until.
func (b *Broker) finishLate(c *tokenCall, cur Credential, stored Secret, trigger string, gen uint64, until time.Time) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		<-c.done
		x := c.result()
		switch {
		case x.err == nil:
			next := b.rotated(cur, x)
			b.metrics.TokenRefresh(trigger, metrics.RefreshSuccess, x.took)
			b.mu.Lock()
			delete(b.backoff, cur.CompanyID)
			b.mu.Unlock()
			b.log.Info("the token endpoint answered after PLEO_PROXY_TOKEN_TIMEOUT; storing the rotated refresh token",
				"company_id", cur.CompanyID, "took", x.took)
			b.keepPending(next, stored, nil)
		case x.outcome == callAnswered:
			ctx, cancel := context.WithTimeout(context.Background(), b.budgets().commit)
			defer cancel()
			_ = b.refreshFailed(ctx, cur, trigger, x.err, gen, x.took, b.store.Update)
		default:
			b.metrics.TokenRefresh(trigger, metrics.RefreshError, x.took)
			b.log.Warn("the token endpoint never answered; the refresh's outcome stays unknown: its refresh token is not presented again until the lease ends",
				"company_id", cur.CompanyID, "until", until, "error", x.err)
		}
	}()
}
