// Package events tells the integration when a credential changes state, by POSTing signed
// JSON events to PLEO_PROXY_EVENTS_URL, so that a batch integration, which makes no request
// when it matters, still learns that a company must reconnect.
//
// Events are queued in memory (bounded: the oldest is dropped when the queue is full), sent one
// at a time in order, and retried with exponential back-off. Each change is sent once: within a
// process a repeated change is skipped, and across replicas a [Claimer] (the PostgreSQL store)
// lets exactly one replica send it. An event never carries a secret.
package events

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/outbound"
)

// State is the state a credential entered, the event's "state".
type State string

// The states an event reports.
const (
	Connected               State = "connected"                // the consent flow stored the credential
	ReauthorizationRequired State = "reauthorization_required" // the refresh token was rejected: a person must reconnect
	Unauthorized            State = "unauthorized"             // Pleo answers 401 to the credential
	Expired                 State = "expired"                  // the API key is past its expires_at
	Disconnected            State = "disconnected"             // removed by credentials disconnect (or the admin listener)
)

// EventType is every event's "type".
const EventType = "credential.state_changed"

// SignatureHeader carries "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">".
const SignatureHeader = "X-Pleo-Proxy-Signature"

// IDHeader repeats the event's id, for receivers that dedupe before parsing.
const IDHeader = "X-Pleo-Proxy-Event-Id"

// MinKeyBytes is the shortest accepted signing key.
const MinKeyBytes = 32

// Event is one credential state change, as sent.
type Event struct {
	// ID is unique per event; a receiver can dedupe on it.
	ID string `json:"id"`
	// Type is always EventType.
	Type string `json:"type"`
	// State is the state the credential entered.
	State State `json:"state"`
	// CompanyID is the Pleo company.
	CompanyID string `json:"company_id"`
	// TenantID is the tenant the company is connected to, if any.
	TenantID string `json:"tenant_id,omitempty"`
	// CredentialType is oauth2, integrated_api_key or standalone_api_key.
	CredentialType string `json:"credential_type"`
	// Time is when the sidecar saw the change.
	Time time.Time `json:"time"`
	// ReconnectURL is a signed consent link for the tenant, for reauthorization_required.
	ReconnectURL string `json:"reconnect_url,omitempty"`
	// Reason is the credential's last error, if any (never a secret).
	Reason string `json:"reason,omitempty"`

	version int64 // the credential version the change belongs to: the claim key
}

// Claimer lets exactly one of many replicas send the event for one change: ClaimEvent returns
// true for the first caller with that company, state and version, false for the others.
type Claimer interface {
	ClaimEvent(ctx context.Context, companyID, state string, version int64) (bool, error)
}

// Options configures a Notifier.
type Options struct {
	// URL receives the events (http or https).
	URL string
	// Key signs every event (HMAC-SHA256); at least MinKeyBytes bytes.
	Key credentials.Secret
	// Client sends the events; it must not follow redirects (default: such a client, no
	// proxy from the environment, 10 s timeout).
	Client *http.Client
	// Claimer dedupes across replicas (nil: this process is the only one).
	Claimer Claimer
	// ReconnectURL returns a signed consent link for a tenant ("" when there is none).
	ReconnectURL func(tenantID string) string
	// QueueSize bounds the events held (default 1000).
	QueueSize int
	// MaxAttempts bounds the attempts per event (default 10).
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the wait between attempts (defaults 1 s and 5 min).
	MinBackoff, MaxBackoff time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives delivery failures (default discard).
	Logger *slog.Logger
	// Metrics counts outcomes (nil: none).
	Metrics *metrics.EventMetrics
}

// Notifier queues and delivers events. A nil *Notifier ignores every call.
type Notifier struct {
	url      string
	key      []byte
	client   *http.Client
	claimer  Claimer
	reconn   func(string) string
	size     int
	attempts int
	minWait  time.Duration
	maxWait  time.Duration
	now      func() time.Time
	log      *slog.Logger
	metrics  *metrics.EventMetrics

	mu    sync.Mutex
	queue []Event
	seen  map[string]claimKey // company -> the last change queued for it
	wake  chan struct{}
	sleep func(ctx context.Context, d time.Duration) bool
}

type claimKey struct {
	state   State
	version int64
}

// New validates opts and builds a Notifier; call Run to deliver.
func New(opts Options) (*Notifier, error) {
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("events: %q is not an http(s) URL", opts.URL)
	}
	if len(opts.Key.Reveal()) < MinKeyBytes {
		return nil, fmt.Errorf("events: the signing key must be at least %d bytes", MinKeyBytes)
	}
	n := &Notifier{
		url: opts.URL, key: []byte(opts.Key.Reveal()), client: opts.Client, claimer: opts.Claimer,
		reconn: opts.ReconnectURL, size: opts.QueueSize, attempts: opts.MaxAttempts,
		minWait: opts.MinBackoff, maxWait: opts.MaxBackoff, now: opts.Now, log: opts.Logger,
		metrics: opts.Metrics, seen: make(map[string]claimKey), wake: make(chan struct{}, 1),
		sleep: sleepCtx,
	}
	if n.client == nil {
		n.client = outbound.NewClient(outbound.NewTransport(outbound.Options{ResponseHeaderTimeout: 10 * time.Second, MaxConns: 2}), 10*time.Second)
	}
	if n.size <= 0 {
		n.size = 1000
	}
	if n.attempts <= 0 {
		n.attempts = 10
	}
	if n.minWait <= 0 {
		n.minWait = time.Second
	}
	if n.maxWait <= 0 {
		n.maxWait = 5 * time.Minute
	}
	if n.now == nil {
		n.now = time.Now
	}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	return n, nil
}

// Notify queues the change of c into state. It never blocks; when the queue is full the
// oldest event is dropped (and counted). A change already queued for the company (same state,
// same credential version) is skipped.
func (n *Notifier) Notify(c credentials.Credential, state State) {
	if n == nil {
		return
	}
	ev := Event{ID: newID(), Type: EventType, State: state, CompanyID: c.CompanyID, TenantID: c.TenantID,
		CredentialType: string(c.Type), Time: n.now().UTC(), Reason: c.LastError, version: c.Version}
	if state == ReauthorizationRequired && c.TenantID != "" && n.reconn != nil {
		ev.ReconnectURL = n.reconn(c.TenantID)
	}
	n.mu.Lock()
	k := claimKey{state, c.Version}
	if n.seen[c.CompanyID] == k {
		n.mu.Unlock()
		n.metrics.Event(metrics.EventDuplicate)
		return
	}
	n.seen[c.CompanyID] = k
	if len(n.queue) >= n.size {
		dropped := n.queue[0]
		n.queue = n.queue[1:]
		n.log.Error("event queue full; dropping the oldest event", "company_id", dropped.CompanyID, "state", dropped.State)
		n.metrics.Event(metrics.EventDropped)
	}
	n.queue = append(n.queue, ev)
	n.metrics.SetQueued(len(n.queue))
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Run delivers queued events until ctx ends.
func (n *Notifier) Run(ctx context.Context) {
	if n == nil {
		return
	}
	for {
		for n.deliverNext(ctx) {
		}
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
		}
	}
}

// Flush delivers what is queued now, for a one-shot command; it returns when the queue is
// empty, or ctx's error when ctx ends first.
func (n *Notifier) Flush(ctx context.Context) error {
	if n == nil {
		return nil
	}
	for n.deliverNext(ctx) {
	}
	n.mu.Lock()
	left := len(n.queue)
	n.mu.Unlock()
	if left > 0 {
		return fmt.Errorf("events: %d event(s) not delivered: %w", left, ctx.Err())
	}
	return nil
}

// deliverNext sends the oldest event, retrying it with back-off, and reports whether there
// was one (false also when ctx ended).
func (n *Notifier) deliverNext(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	n.mu.Lock()
	if len(n.queue) == 0 {
		n.mu.Unlock()
		return false
	}
	ev := n.queue[0]
	n.mu.Unlock()

	claimed := n.claimer == nil
	for attempt := 1; ; attempt++ {
		var err error
		if !claimed {
			var ok bool
			if ok, err = n.claimer.ClaimEvent(ctx, ev.CompanyID, string(ev.State), ev.version); err == nil {
				if !ok {
					n.metrics.Event(metrics.EventDuplicate)
					break
				}
				claimed = true
			}
		}
		if claimed {
			if err = n.send(ctx, ev); err == nil {
				n.metrics.Event(metrics.EventDelivered)
				break
			}
		}
		if ctx.Err() != nil {
			return false // keep it queued: a later Run or Flush sends it
		}
		if attempt >= n.attempts {
			n.log.Error("giving up on an event", "company_id", ev.CompanyID, "state", ev.State, "attempts", attempt, "error", err)
			n.metrics.Event(metrics.EventDropped)
			break
		}
		wait := min(n.minWait<<min(attempt-1, 20), n.maxWait)
		n.log.Warn("event delivery failed; retrying", "company_id", ev.CompanyID, "state", ev.State, "attempt", attempt, "retry_in", wait, "error", err)
		n.metrics.Event(metrics.EventRetried)
		if !n.sleep(ctx, wait) {
			return false
		}
	}
	n.mu.Lock()
	if len(n.queue) > 0 && n.queue[0].ID == ev.ID {
		n.queue = n.queue[1:]
	}
	n.metrics.SetQueued(len(n.queue))
	n.mu.Unlock()
	return true
}

// send POSTs one event, signed; any answer but 2xx is an error.
func (n *Notifier) send(ctx context.Context, ev Event) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("events: encoding: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(IDHeader, ev.ID)
	req.Header.Set(SignatureHeader, Sign(n.key, n.now(), body))
	resp, err := n.client.Do(req)
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("events: the receiver answered %d", resp.StatusCode)
	}
	return nil
}

// Sign returns the SignatureHeader value for body sent at t.
func Sign(key []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(key, ts, body))
}

// ErrBadSignature is a SignatureHeader that does not verify.
var ErrBadSignature = errors.New("events: bad signature")

// Verify checks a SignatureHeader value against body, as a receiver does: the HMAC must match
// (compared in constant time) and t must be within tolerance of now.
func Verify(key []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for part := range strings.SplitSeq(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return fmt.Errorf("%w: malformed header", ErrBadSignature)
	}
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mac(key, ts, body)) {
		return fmt.Errorf("%w: signature mismatch", ErrBadSignature)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: timestamp outside the tolerance", ErrBadSignature)
	}
	return nil
}

func mac(key []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
