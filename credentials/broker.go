package credentials

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/outbound"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/redact"
)

// Refresh triggers, as the token refresh metric labels them.
const (
	TriggerExpiry       = metrics.TriggerExpiry
	TriggerUnauthorized = metrics.TriggerUnauthorized
	TriggerBackground   = metrics.TriggerBackground
)

// defaultAccessTTL is assumed when a token response carries no expires_in (Pleo's older
// documentation gives 15 minutes).
const defaultAccessTTL = 15 * time.Minute

// OAuthClient is the integration's OAuth 2.0 client at Pleo's token endpoint.
type OAuthClient struct {
	ClientID     string
	ClientSecret Secret
	TokenURL     string
	// ClientSecretSource, if set, returns the client secret to use for each token call,
	// instead of ClientSecret (a secret file re-read while the process runs).
	ClientSecretSource func() Secret
}

// BrokerOptions configures a Broker. Store is required; zero values elsewhere take the
// documented defaults.
type BrokerOptions struct {
	// Store holds the credentials.
	Store Store
	// CacheSize bounds the credentials held in memory (default 10000).
	CacheSize int
	// OAuth is the client used to refresh tokens; without a ClientID, OAuth credentials cannot
	// be refreshed (requests answer token_endpoint_error once their token expires).
	OAuth OAuthClient
	// HTTPClient calls the token endpoint (default: outbound.NewClient, which never follows
	// redirects and ignores proxies from the environment). Its Timeout should be zero: the
	// broker bounds token calls itself, and never cancels one whose answer has begun to
	// arrive (see tokencall.go).
	HTTPClient *http.Client
	// RefreshBefore is how long before expiry a token is refreshed (default 60s; 0 allowed).
	RefreshBefore time.Duration
	// TokenTimeout is how long callers wait for the token endpoint's answer, and the unit of
	// every other refresh deadline: lock wait, commit, the lease (see refreshBudgets)
	// (default 10s).
	TokenTimeout time.Duration
	// KeepaliveInterval refreshes credentials not refreshed for this long (default 24h).
	KeepaliveInterval time.Duration
	// MaxBackoff caps the per-company backoff after transient refresh failures (default 5m).
	MaxBackoff time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives refresh decisions at debug level and failures at warn (default discard).
	Logger *slog.Logger
	// Metrics records cache and refresh metrics (nil: none).
	Metrics *metrics.Metrics
	// SweepLeader, when set (the PostgreSQL store shared by many replicas), decides which
	// replica runs the full background sweep; the others refresh only the credentials they
	// hold in their cache (nil: this process always sweeps everything).
	SweepLeader SweepLeader
	// OnStateChange, when set, is told when this process records or sees a credential enter
	// reauthorization_required (its refresh token rejected), unauthorized (its API key
	// answered 401) or expired (its API key passed expires_at while the broker ran). It is
	// called synchronously: it must not block.
	OnStateChange func(Credential, Status)
	// Secrets, when set, learns every token and key the broker loads or obtains, so the log
	// handler can redact them by value (nil: none).
	Secrets *redact.Set
}

// Broker turns a company id into a ready-to-send Grant. It caches credentials in an LRU in
// front of the store, refreshes OAuth tokens before they expire (one refresh per company at a
// time, detached from the caller's cancellation), persists every rotated refresh token before
// its access token is used, and keeps a rotated pair in memory, still in use, while its store
// write fails and is retried. When the store is shared by many processes (it implements
// RefreshLocker), one refresh per company runs across all of them (see refreshShared).
type Broker struct {
	store         Store
	locker        RefreshLocker // the store's cross-process refresh lock, if it has one
	oauth         *oauth2.Config
	clientSecret  func() Secret // the current client secret, or nil: oauth's
	httpClient    *http.Client
	refreshBefore time.Duration
	tokenTimeout  time.Duration
	keepalive     time.Duration
	maxBackoff    time.Duration
	now           func() time.Time
	log           *slog.Logger
	metrics       *metrics.Metrics
	secrets       *redact.Set
	onState       func(Credential, Status)
	leader        SweepLeader
	lastSweep     time.Time // the previous Sweep's clock reading (the broker's start at first)

	cache   *lru.Cache[string, *entry]
	tenants *lru.Cache[string, string]
	gen     atomic.Uint64 // bumped on every store change notification
	cacheMu sync.Mutex    // orders remember's check-then-add against invalidate
	flights singleflight.Group

	mu       sync.Mutex
	pending  map[string]pendingPair // rotated pairs whose store write has not succeeded yet
	rejected map[string][32]byte    // company -> hash of the refresh token the endpoint rejected
	badKeys  map[string]int64       // company -> version of the credential whose API key the upstream answered 401 to
	backoff  map[string]backoffState
	// clientErrors: some back-off in backoff is for a client error (see refreshSucceeded).
	clientErrors bool
	writers      map[string]bool // companies with a write-retry goroutine running
	// probation: company -> hash ([32]byte) of the grant a 401-triggered refresh obtained,
	// until the upstream accepts it (see cooldown.go); a sync.Map, because Accepted reads it
	// on the request path without a lock. probations counts its entries for a faster path.
	probation  sync.Map
	probations atomic.Int64
	clamped    map[string]bool // companies warned that their tokens live shorter than RefreshBefore
	unknown    sync.Map        // company -> unknownOutcome: a refresh token presented without an answer read

	stop        context.CancelFunc
	stopCtx     context.Context
	wg          sync.WaitGroup
	unsubscribe func()
}

// pendingPair is a rotated credential not yet persisted, and the refresh token the store
// still holds for it (the one the pair replaces).
type pendingPair struct {
	next   Credential
	stored Secret
}

type backoffState struct {
	failures    int
	until       time.Time
	retryAfter  bool // until honours the token endpoint's Retry-After
	clientError bool // invalid_client or unauthorized_client: the OAuth client is misconfigured
}

// entry is an immutable cached credential with its precomputed grant.
type entry struct {
	cred      Credential
	grant     Grant
	refreshAt time.Time // OAuth: refresh from this instant on
}

// NewBroker builds a Broker over opts.Store and subscribes to its change notifications.
func NewBroker(opts BrokerOptions) (*Broker, error) {
	if opts.Store == nil {
		return nil, errors.New("credentials: broker needs a store")
	}
	if opts.CacheSize <= 0 {
		opts.CacheSize = 10000
	}
	if opts.RefreshBefore < 0 {
		return nil, errors.New("credentials: negative RefreshBefore")
	}
	if opts.TokenTimeout <= 0 {
		opts.TokenTimeout = 10 * time.Second
	}
	if opts.KeepaliveInterval <= 0 {
		opts.KeepaliveInterval = 24 * time.Hour
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := newRefreshBudgets(opts.TokenTimeout).validate(); err != nil {
		return nil, err
	}
	if opts.HTTPClient == nil {
		// The broker bounds each call (answer up to twice TokenTimeout); the header timeout
		// is only a backstop beyond that.
		opts.HTTPClient = outbound.NewClient(outbound.NewTransport(outbound.Options{ResponseHeaderTimeout: 3 * opts.TokenTimeout}), 0)
	}
	cache, err := lru.New[string, *entry](opts.CacheSize)
	if err != nil {
		return nil, fmt.Errorf("credentials: cache: %w", err)
	}
	tenants, err := lru.New[string, string](opts.CacheSize)
	if err != nil {
		return nil, fmt.Errorf("credentials: tenant cache: %w", err)
	}
	b := &Broker{
		store:         opts.Store,
		httpClient:    opts.HTTPClient,
		refreshBefore: opts.RefreshBefore,
		tokenTimeout:  opts.TokenTimeout,
		keepalive:     opts.KeepaliveInterval,
		maxBackoff:    opts.MaxBackoff,
		now:           opts.Now,
		log:           opts.Logger,
		metrics:       opts.Metrics,
		secrets:       opts.Secrets,
		onState:       opts.OnStateChange,
		leader:        opts.SweepLeader,
		lastSweep:     opts.Now(),
		cache:         cache,
		tenants:       tenants,
		pending:       make(map[string]pendingPair),
		rejected:      make(map[string][32]byte),
		badKeys:       make(map[string]int64),
		backoff:       make(map[string]backoffState),
		writers:       make(map[string]bool),
		clamped:       make(map[string]bool),
	}
	if opts.OAuth.ClientID != "" {
		b.oauth = &oauth2.Config{
			ClientID:     opts.OAuth.ClientID,
			ClientSecret: opts.OAuth.ClientSecret.Reveal(),
			Endpoint:     oauth2.Endpoint{TokenURL: opts.OAuth.TokenURL, AuthStyle: oauth2.AuthStyleInHeader},
		}
		b.clientSecret = opts.OAuth.ClientSecretSource
	}
	if l, ok := opts.Store.(RefreshLocker); ok {
		b.locker = l
	}
	b.stopCtx, b.stop = context.WithCancel(context.Background())
	b.unsubscribe = opts.Store.Subscribe(b.invalidate)
	return b, nil
}

// oauthConfig is the OAuth client with its secret as last read (a reloaded
// PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE), a copy: the token call may outlive its caller.
func (b *Broker) oauthConfig() *oauth2.Config {
	if b.clientSecret == nil {
		return b.oauth
	}
	c := *b.oauth
	c.ClientSecret = b.clientSecret().Reveal()
	return &c
}

// Close stops background work (write retries). Rotated pairs whose write is still pending are
// lost only if the process exits; call PendingWrites first to know.
func (b *Broker) Close() {
	b.unsubscribe()
	b.stop()
	b.wg.Wait()
}

// invalidate drops a company's cached credential when the store says it may have changed.
func (b *Broker) invalidate(companyID string) {
	b.cacheMu.Lock()
	defer b.cacheMu.Unlock()
	b.gen.Add(1)
	if companyID == "" {
		b.cache.Purge()
		b.tenants.Purge()
		return
	}
	b.cache.Remove(companyID)
}

// PendingWrites is the number of rotated token pairs held only in memory because their store
// write has not succeeded yet. Readiness reports not-ready while it is above zero.
func (b *Broker) PendingWrites() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.pending)
}

// CompanyForTenant returns the company whose credential carries tenantID, or ErrNotFound.
func (b *Broker) CompanyForTenant(ctx context.Context, tenantID string) (string, error) {
	if id, ok := b.tenants.Get(tenantID); ok {
		if e, ok := b.cache.Get(id); ok && e.cred.TenantID == tenantID {
			return id, nil
		}
	}
	gen := b.gen.Load()
	c, err := b.store.GetByTenant(ctx, tenantID)
	if err != nil {
		return "", storeErr(err)
	}
	b.remember(c, gen)
	b.tenants.Add(tenantID, c.CompanyID)
	return c.CompanyID, nil
}

// Authorize returns the grant to send for the company: the API key, or an OAuth access token
// that is not within RefreshBefore of its expiry (refreshing it first when it is). Errors are
// ErrNotFound, ErrCredentialExpired, ErrReauthorizationRequired, ErrTokenEndpoint or
// ErrStoreUnavailable, wrapped.
func (b *Broker) Authorize(ctx context.Context, companyID string) (_ Grant, err error) {
	e, err := b.lookup(ctx, companyID)
	if err != nil {
		return Grant{}, err
	}
	defer func() {
		if err != nil {
			err = &typedError{typ: e.cred.Type, err: err} // a credential was chosen: say which type
		}
	}()
	now := b.now()
	if e.cred.Type.IsAPIKey() {
		if e.cred.Expired(now) {
			return Grant{}, fmt.Errorf("%w: company %s", ErrCredentialExpired, companyID)
		}
		return e.grant, nil
	}
	if e.cred.State == StateReauthorizationRequired {
		return Grant{}, fmt.Errorf("%w: company %s", ErrReauthorizationRequired, companyID)
	}
	if !e.cred.AccessToken.IsZero() && now.Before(e.refreshAt) {
		return e.grant, nil
	}
	ne, err := b.refresh(ctx, companyID, TriggerExpiry, e.grant)
	if err != nil {
		// Fall back only to a token known to be unexpired: one of unknown expiry (imported
		// without expires_at) may well be expired, and an expired token is never sent.
		if !errors.Is(err, ErrReauthorizationRequired) && !e.cred.AccessToken.IsZero() &&
			!e.cred.ExpiresAt.IsZero() && !e.cred.Expired(b.now()) {
			b.log.DebugContext(ctx, "refresh failed; using the unexpired token", "company_id", companyID, "error", err)
			return e.grant, nil
		}
		return Grant{}, err
	}
	return ne.grant, nil
}

// Reauthorize is called after the upstream answered 401 to rejected. For OAuth it refreshes,
// unless the store already holds a newer token, which it adopts; for an API key it re-reads
// the store (asking a Reloader to look for changes first). retry is true when the returned
// grant differs from rejected and is worth one more attempt.
func (b *Broker) Reauthorize(ctx context.Context, companyID string, rejected Grant) (g Grant, retry bool, err error) {
	if rejected.Type == OAuth2 {
		if g, retry, done, err := b.cooldownReauthorize(ctx, companyID, rejected); done {
			return g, retry, err // a 401 cool-down, or a newer token found without a token call
		}
		e, err := b.refresh(ctx, companyID, TriggerUnauthorized, rejected)
		if err == nil && e.grant.Same(rejected) {
			// A refresh that was already in flight returned the token that was just rejected:
			// it was revoked after being issued, so refresh once more.
			e, err = b.refresh(ctx, companyID, TriggerUnauthorized, rejected)
		}
		if err != nil {
			return Grant{}, false, err
		}
		return e.grant, !e.grant.Same(rejected), nil
	}
	gen := b.gen.Load()
	if r, ok := b.store.(Reloader); ok {
		// A key rotated in the credentials file is read now, not at the next poll. A failed
		// look leaves the last good copy, which Get reads.
		_ = r.Reload(ctx)
	}
	c, err := b.store.Get(ctx, companyID)
	if err != nil {
		return Grant{}, false, storeErr(err)
	}
	e := b.remember(c, gen)
	if e.cred.Type.IsAPIKey() && e.cred.Expired(b.now()) {
		return Grant{}, false, fmt.Errorf("%w: company %s", ErrCredentialExpired, companyID)
	}
	if e.cred.Type == OAuth2 {
		g, err := b.Authorize(ctx, companyID)
		return g, err == nil && !g.Same(rejected), err
	}
	retry = !e.grant.Same(rejected)
	if !retry {
		b.mu.Lock()
		v, seen := b.badKeys[companyID]
		b.badKeys[companyID] = e.cred.Version
		b.mu.Unlock()
		if !seen || v != e.cred.Version {
			b.stateChanged(e.cred, StatusUnauthorized)
		}
	}
	return e.grant, retry, nil
}

// stateChanged tells OnStateChange, if set.
func (b *Broker) stateChanged(c Credential, s Status) {
	if b.onState != nil {
		b.onState(c.Metadata(), s)
	}
}

// keyRejected reports whether the upstream answered 401 to this very API key: to this
// version of the credential (a new key is a new version), so that it can tell without the
// key, which Scan does not hand out.
func (b *Broker) keyRejected(c Credential) bool {
	b.mu.Lock()
	v, ok := b.badKeys[c.CompanyID]
	b.mu.Unlock()
	return ok && v == c.Version
}

// lookup returns the cached entry, or loads it: a pending (not yet persisted) pair first,
// then the store.
func (b *Broker) lookup(ctx context.Context, companyID string) (*entry, error) {
	if e, ok := b.cache.Get(companyID); ok {
		b.metrics.CacheLookup(true)
		return e, nil
	}
	b.metrics.CacheLookup(false)
	gen := b.gen.Load()
	b.mu.Lock()
	p, ok := b.pending[companyID]
	b.mu.Unlock()
	if ok {
		return b.remember(p.next, gen), nil
	}
	c, err := b.store.Get(ctx, companyID)
	if err != nil {
		return nil, storeErr(err)
	}
	return b.remember(c, gen), nil
}

// remember caches c unless a store change was announced since gen was read (c may be stale).
// The check and the add happen under cacheMu, which invalidate holds too: otherwise a change
// announced between them would be followed by the stale entry's add, and that entry would
// stay cached (a replaced credential shadowed until evicted).
func (b *Broker) remember(c Credential, gen uint64) *entry {
	e := b.newEntry(c)
	b.cacheMu.Lock()
	if b.gen.Load() == gen {
		b.cache.Add(c.CompanyID, e)
	}
	b.cacheMu.Unlock()
	return e
}

// rememberCommitted caches c, which this process has just committed to a shared store whose
// commit announces itself to this process, unless a change other than that announcement has
// been announced since before the commit (gen moved by more than one): c is exactly what the
// store held at its commit, so an earlier change does not make it stale, and a later one
// moves gen twice (or drops the entry after it is added, under cacheMu).
func (b *Broker) rememberCommitted(c Credential, before uint64) *entry {
	e := b.newEntry(c)
	b.cacheMu.Lock()
	if b.gen.Load() <= before+1 {
		b.cache.Add(c.CompanyID, e)
	}
	b.cacheMu.Unlock()
	return e
}

func (b *Broker) newEntry(c Credential) *entry {
	b.secrets.Add(c.AccessToken.Reveal(), c.RefreshToken.Reveal(), c.APIKey.Reveal())
	e := &entry{cred: c, grant: NewGrant(c)}
	e.grant.cooling = c.InCooldown()
	if c.Type == OAuth2 && !c.ExpiresAt.IsZero() {
		// Jitter of up to a quarter of RefreshBefore, fixed per company, so a fleet does not
		// refresh in lockstep.
		e.refreshAt = c.ExpiresAt.Add(-b.leadTime(c, b.refreshBefore+spread(c.CompanyID, b.refreshBefore/4)))
	} else if c.Type == OAuth2 {
		e.refreshAt = time.Time{} // unknown expiry: refresh before first use
	}
	return e
}

// spread returns a duration in [0, d) fixed for the company.
func spread(companyID string, d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(companyID))
	return time.Duration(h.Sum64() % uint64(d))
}

func storeErr(err error) error {
	if errors.Is(err, ErrNotFound) {
		return err
	}
	if errors.Is(err, ErrStoreUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
}

func tokenHash(s Secret) [32]byte { return sha256.Sum256([]byte(s.Reveal())) }
