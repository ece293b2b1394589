// Package metrics defines the sidecar's Prometheus metrics, whose names are part of the public
// contract (docs/reference.md, Metrics): they may change only with a reason in the changelog.
//
// [New] creates and registers every metric on a registerer that main owns; nothing is
// registered globally. Callers record through typed methods that bound every label (no company
// id, no value derived from a request beyond its method and status), and the per-request ones
// allocate nothing once a series exists. A nil *Metrics is valid: every method is a no-op, so
// packages can be tested without metrics.
package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metric names. They are the public contract; tests pin them.
const (
	namespace = "pleo_proxy"

	nameRequests              = namespace + "_requests_total"
	nameRequestDuration       = namespace + "_request_duration_seconds"
	nameUpstreamRequests      = namespace + "_upstream_requests_total"
	nameAuthRetries           = namespace + "_auth_retries_total"
	nameTokenRefreshes        = namespace + "_token_refreshes_total"
	nameTokenRefreshDuration  = namespace + "_token_refresh_duration_seconds"
	nameCacheLookups          = namespace + "_credential_cache_lookups_total"
	nameCredentials           = namespace + "_credentials"
	nameErrors                = namespace + "_errors_total"
	nameRefreshLockWait       = namespace + "_refresh_lock_wait_seconds"
	nameTokenCommitWindow     = namespace + "_token_commit_window_seconds"
	nameTokenAgeAtRefresh     = namespace + "_token_age_at_refresh_seconds"
	nameCredentialsExpiring   = namespace + "_credentials_expiring"
	nameStoreOperationSeconds = namespace + "_store_operation_duration_seconds"
	nameStoreErrors           = namespace + "_store_errors_total"
	nameStoreReloadFailures   = namespace + "_store_reload_failures_total"
	namePendingTokenWrites    = namespace + "_pending_token_writes"
	nameInFlightRequests      = namespace + "_in_flight_requests"
	nameConnects              = namespace + "_connects_total"
	nameConnectFailures       = namespace + "_connect_failures_total"
	nameClientConns           = namespace + "_client_connections"
	nameClientConnWaits       = namespace + "_client_connection_waits_total"
	nameRefreshesSkipped      = namespace + "_token_refreshes_skipped_total"
	nameSecretReloads         = namespace + "_secret_reloads_total"
)

// durationBuckets suit request, refresh, lock-wait and store durations: 0.5 ms to 30 s.
var durationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// tokenAgeBuckets suit the age of a token being replaced: a second to 30 days, with the
// usual access-token lifetimes (an hour) and the keep-alive interval (a day) as bounds.
// commitBuckets resolve the crash window of a token commit, an fsync or a database commit: 50 µs
// to 5 s.
var commitBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5}

var tokenAgeBuckets = []float64{1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 172800, 604800, 2592000}

// ExpiringWithin is how close to its expires_at an API key is counted by
// pleo_proxy_credentials_expiring.
const ExpiringWithin = 7 * 24 * time.Hour

// Metrics holds the sidecar's collectors. Create it with [New]; a nil *Metrics records nothing.
// Its methods are safe for concurrent use.
type Metrics struct {
	requests             *prometheus.CounterVec
	requestDuration      *prometheus.HistogramVec
	upstreamRequests     *prometheus.CounterVec
	authRetries          *prometheus.CounterVec
	tokenRefreshes       *prometheus.CounterVec
	tokenRefreshDuration prometheus.Histogram
	cacheLookups         *prometheus.CounterVec
	credentials          *prometheus.GaugeVec
	errors               *prometheus.CounterVec
	refreshLockWait      prometheus.Histogram
	tokenCommitWindow    prometheus.Histogram
	tokenAgeAtRefresh    prometheus.Histogram
	credentialsExpiring  *prometheus.GaugeVec
	storeDuration        *prometheus.HistogramVec
	storeErrors          *prometheus.CounterVec
	storeReloadFailures  prometheus.Counter
	pendingTokenWrites   prometheus.Gauge
	inFlight             prometheus.Gauge
	connects             *prometheus.CounterVec
	connectFailures      *prometheus.CounterVec
	clientConns          prometheus.Gauge
	clientConnWaits      prometheus.Counter
	refreshesSkipped     *prometheus.CounterVec
	secretReloads        *prometheus.CounterVec

	// Children of the per-request series, created on first use (so that only the method,
	// code and credential type combinations that happen are exported) and then read with
	// one atomic load each.
	codes [numCodes]atomic.Pointer[codeSeries]

	// Children of the small, known label sets, created (at zero) by New.
	authRetryChildren      [len(retryLabels)]prometheus.Counter
	refreshChildren        [len(triggerLabels)][len(refreshResultLabels)]prometheus.Counter
	cacheChildren          [len(cacheLabels)]prometheus.Counter
	errorChildren          [len(errorCodeLabels)]prometheus.Counter
	storeErrorChildren     [len(storeOperationLabels)]prometheus.Counter
	storeDurations         [len(storeOperationLabels)]atomic.Pointer[prometheus.Observer]
	connectChildren        [len(connectLabels)]prometheus.Counter
	connectFailureChildren [len(connectReasonLabels)]prometheus.Counter
	skippedChildren        [len(skipReasonLabels)]prometheus.Counter
	secretReloadChildren   [len(secretLabels)][len(secretReloadResultLabels)]prometheus.Counter

	inFlightDone func()

	// mu guards the snapshots of the credential gauges.
	mu             sync.Mutex
	credentialsSet map[CredentialKey]bool
	expiringSet    map[string]bool
}

// codeSeries holds the per-request children for one status code label.
type codeSeries struct {
	requests [numMethods][numCredTypes]atomic.Pointer[prometheus.Counter]
	duration [numMethods]atomic.Pointer[prometheus.Observer]
	upstream atomic.Pointer[prometheus.Counter]
}

// CredentialKey names one series of pleo_proxy_credentials.
type CredentialKey struct {
	// Type is the credential type (CredentialOAuth2, CredentialIntegratedAPIKey, ...).
	Type string
	// State is the credential's state (StateActive, StateReauthorizationRequired, ...).
	State string
}

// NewRegistry returns a fresh registry holding the Go and process collectors, which the
// contract exports beside the sidecar's own metrics. main passes it to [New] and serves it.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// New creates every metric and registers it with reg; a nil reg registers nothing (the
// metrics still count, which tests can read). It panics if a metric is already registered
// with reg, as registering twice is a programming error.
//
// The counters and gauges with a small known label set start at zero for each known value, so
// that rate() and alerts work from the first event.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameRequests,
			Help: "Requests from local services answered by the sidecar, by method, the status the caller got (a sidecar error's included) and the credential type used (none where no credential was chosen).",
		}, []string{"method", "code", "credential_type"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    nameRequestDuration,
			Help:    "Time from a request's arrival to its response headers being written, by method and status, retries and token refreshes included.",
			Buckets: durationBuckets,
		}, []string{"method", "code"}),
		upstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameUpstreamRequests,
			Help: "Requests sent to the upstream, one per attempt, by the upstream's status (other where it gave no response).",
		}, []string{"code"}),
		authRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameAuthRetries,
			Help: "Upstream 401s handled by refreshing the credential and retrying once, by result: succeeded, failed, or not_replayable (body too large to replay, 401 passed back).",
		}, []string{"result"}),
		tokenRefreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameTokenRefreshes,
			Help: "OAuth token refreshes, by trigger (expiry, unauthorized, background) and result (success, invalid_grant, error).",
		}, []string{"trigger", "result"}),
		tokenRefreshDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    nameTokenRefreshDuration,
			Help:    "Time taken by OAuth token refreshes: the token endpoint call and storing the rotated token.",
			Buckets: durationBuckets,
		}),
		cacheLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameCacheLookups,
			Help: "Credential cache lookups, by result (hit, miss).",
		}, []string{"result"}),
		credentials: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: nameCredentials,
			Help: "Stored credentials, by type and state.",
		}, []string{"type", "state"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameErrors,
			Help: "Errors the sidecar itself answered with (problem+json), by problem code.",
		}, []string{"code"}),
		refreshLockWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    nameRefreshLockWait,
			Help:    "Time spent waiting for a company's refresh lock (another request or replica refreshing the same credential).",
			Buckets: durationBuckets,
		}),
		tokenCommitWindow: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    nameTokenCommitWindow,
			Help:    "Time from receiving a token endpoint's answer to the rotated pair being durable in the store: the only window in which a crash can lose a refresh token.",
			Buckets: commitBuckets,
		}),
		tokenAgeAtRefresh: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    nameTokenAgeAtRefresh,
			Help:    "Age of the OAuth token being replaced when a refresh succeeds.",
			Buckets: tokenAgeBuckets,
		}),
		credentialsExpiring: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: nameCredentialsExpiring,
			Help: "API keys whose expires_at is within 7 days (past ones included), by type: a person must issue new ones.",
		}, []string{"type"}),
		storeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    nameStoreOperationSeconds,
			Help:    "Time taken by credential store operations, by operation (get, list, update, put, delete, reload, ping), failed ones included.",
			Buckets: durationBuckets,
		}, []string{"operation"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameStoreErrors,
			Help: "Credential store operations that failed, by operation.",
		}, []string{"operation"}),
		storeReloadFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: nameStoreReloadFailures,
			Help: "Failed attempts to pick up changes made to the store by others; the last good credentials stay in use.",
		}),
		pendingTokenWrites: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: namePendingTokenWrites,
			Help: "Rotated tokens held in memory because their store write has not succeeded yet; they are lost if the process ends.",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: nameInFlightRequests,
			Help: "Requests from local services being handled now.",
		}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameConnects,
			Help: "OAuth consent flows, by result: started (GET /connect), completed (credential stored), failed, or link_refused (GET /connect without a valid signed link: nothing started).",
		}, []string{"result"}),
		connectFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameConnectFailures,
			Help: "Failed OAuth consent callbacks, by reason.",
		}, []string{"reason"}),
		clientConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: nameClientConns,
			Help: "Client connections the data listener holds open (bounded by PLEO_PROXY_MAX_CLIENT_CONNS).",
		}),
		clientConnWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: nameClientConnWaits,
			Help: "Client connections that waited for a free slot under PLEO_PROXY_MAX_CLIENT_CONNS before being served.",
		}),
		refreshesSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameRefreshesSkipped,
			Help: "OAuth token refreshes not attempted, by reason: unauthorized_cooldown (the upstream keeps answering 401 to freshly issued tokens; its 401 is passed back) or backoff (the token endpoint failed lately, or asked to wait with Retry-After).",
		}, []string{"reason"}),
		secretReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameSecretReloads,
			Help: "Reloads of a secret file (PLEO_PROXY_*_FILE) that changed, by secret and result: success (the new value is in use) or error (the old value stays).",
		}, []string{"secret", "result"}),
		credentialsSet: make(map[CredentialKey]bool),
		expiringSet:    make(map[string]bool),
	}
	m.inFlightDone = m.inFlight.Dec

	for i, r := range retryLabels {
		m.authRetryChildren[i] = m.authRetries.WithLabelValues(r)
	}
	for i, t := range triggerLabels {
		for j, r := range refreshResultLabels {
			m.refreshChildren[i][j] = m.tokenRefreshes.WithLabelValues(t, r)
		}
	}
	for i, r := range cacheLabels {
		m.cacheChildren[i] = m.cacheLookups.WithLabelValues(r)
	}
	for i, c := range errorCodeLabels {
		m.errorChildren[i] = m.errors.WithLabelValues(c)
	}
	for i, op := range storeOperationLabels {
		m.storeErrorChildren[i] = m.storeErrors.WithLabelValues(op)
	}
	for i, r := range connectLabels {
		m.connectChildren[i] = m.connects.WithLabelValues(r)
	}
	for i, r := range connectReasonLabels {
		m.connectFailureChildren[i] = m.connectFailures.WithLabelValues(r)
	}
	for i, r := range skipReasonLabels {
		m.skippedChildren[i] = m.refreshesSkipped.WithLabelValues(r)
	}
	for i, sec := range secretLabels {
		for j, r := range secretReloadResultLabels {
			m.secretReloadChildren[i][j] = m.secretReloads.WithLabelValues(sec, r)
		}
	}
	for _, t := range credentialKinds {
		for _, s := range credentialStates {
			m.credentials.WithLabelValues(t, s).Set(0)
		}
	}
	for _, t := range apiKeyKinds {
		m.credentialsExpiring.WithLabelValues(t).Set(0)
	}

	if reg != nil {
		reg.MustRegister(
			m.requests, m.requestDuration, m.upstreamRequests, m.authRetries,
			m.tokenRefreshes, m.tokenRefreshDuration, m.cacheLookups, m.credentials,
			m.errors, m.refreshLockWait, m.tokenCommitWindow, m.tokenAgeAtRefresh, m.credentialsExpiring,
			m.storeDuration, m.storeErrors, m.storeReloadFailures, m.pendingTokenWrites,
			m.inFlight, m.connects, m.connectFailures, m.clientConns, m.clientConnWaits,
			m.refreshesSkipped,
			m.secretReloads,
		)
	}
	return m
}

// ObserveRequest records one answered request from a local service in
// pleo_proxy_requests_total and pleo_proxy_request_duration_seconds: its method (bounded, see
// [MethodLabel]), the status the caller got (see [CodeLabel]), the credential type used
// ([CredentialNone] or "" where none was chosen; an unknown type counts as "other") and the
// time taken. It does not allocate once the series exists.
func (m *Metrics) ObserveRequest(method string, code int, credentialType string, d time.Duration) {
	if m == nil {
		return
	}
	mi, ci, ti := methodIndex(method), codeIndex(code), credentialTypeIndex(credentialType)
	cs := m.codeSeries(ci)
	c := cs.requests[mi][ti].Load()
	if c == nil {
		c = m.newRequestCounter(cs, mi, ci, ti)
	}
	(*c).Inc()
	o := cs.duration[mi].Load()
	if o == nil {
		o = m.newRequestObserver(cs, mi, ci)
	}
	(*o).Observe(d.Seconds())
}

// UpstreamResponse records one attempt sent to the upstream in
// pleo_proxy_upstream_requests_total, by the upstream's status; pass 0 for an attempt that got
// no response (recorded as "other"). It does not allocate once the series exists.
func (m *Metrics) UpstreamResponse(code int) {
	if m == nil {
		return
	}
	ci := codeIndex(code)
	cs := m.codeSeries(ci)
	c := cs.upstream.Load()
	if c == nil {
		c = m.newUpstreamCounter(cs, ci)
	}
	(*c).Inc()
}

// InFlight counts a request as in flight in pleo_proxy_in_flight_requests until the returned
// function is called (once). It does not allocate.
//
//	defer m.InFlight()()
func (m *Metrics) InFlight() (done func()) {
	if m == nil {
		return noop
	}
	m.inFlight.Inc()
	return m.inFlightDone
}

func noop() {}

// ClientConnOpened counts one more open client connection in pleo_proxy_client_connections.
func (m *Metrics) ClientConnOpened() {
	if m != nil {
		m.clientConns.Inc()
	}
}

// ClientConnClosed counts one less open client connection in pleo_proxy_client_connections.
func (m *Metrics) ClientConnClosed() {
	if m != nil {
		m.clientConns.Dec()
	}
}

// ClientConnWaited records, in pleo_proxy_client_connection_waits_total, a client connection
// that waited for a free slot before it was served.
func (m *Metrics) ClientConnWaited() {
	if m != nil {
		m.clientConnWaits.Inc()
	}
}

// CacheLookup records one credential cache lookup in pleo_proxy_credential_cache_lookups_total.
func (m *Metrics) CacheLookup(hit bool) {
	if m == nil {
		return
	}
	if hit {
		m.cacheChildren[0].Inc()
	} else {
		m.cacheChildren[1].Inc()
	}
}

// AuthRetry records how an upstream 401 was handled in pleo_proxy_auth_retries_total:
// [RetrySucceeded], [RetryFailed] or [RetryNotReplayable] (anything else counts as "other").
func (m *Metrics) AuthRetry(result string) {
	if m == nil {
		return
	}
	if i := indexOf(retryLabels[:], result); i >= 0 {
		m.authRetryChildren[i].Inc()
		return
	}
	m.authRetries.WithLabelValues(Other).Inc()
}

// TokenRefresh records one OAuth refresh in pleo_proxy_token_refreshes_total and its duration
// in pleo_proxy_token_refresh_duration_seconds. trigger is [TriggerExpiry],
// [TriggerUnauthorized] or [TriggerBackground]; result is [RefreshSuccess],
// [RefreshInvalidGrant] or [RefreshError]; any other value counts as "other".
func (m *Metrics) TokenRefresh(trigger, result string, d time.Duration) {
	if m == nil {
		return
	}
	m.tokenRefreshDuration.Observe(d.Seconds())
	ti, ri := indexOf(triggerLabels[:], trigger), indexOf(refreshResultLabels[:], result)
	if ti >= 0 && ri >= 0 {
		m.refreshChildren[ti][ri].Inc()
		return
	}
	t, r := Other, Other
	if ti >= 0 {
		t = triggerLabels[ti]
	}
	if ri >= 0 {
		r = refreshResultLabels[ri]
	}
	m.tokenRefreshes.WithLabelValues(t, r).Inc()
}

// TokenAgeAtRefresh records, in pleo_proxy_token_age_at_refresh_seconds, how old the token
// being replaced by a successful refresh was (since it was issued or last refreshed).
func (m *Metrics) TokenAgeAtRefresh(age time.Duration) {
	if m == nil {
		return
	}
	m.tokenAgeAtRefresh.Observe(age.Seconds())
}

// TokenCommitWindow records, in pleo_proxy_token_commit_window_seconds, the time from a token
// endpoint's answer to the durable commit of the rotated pair.
func (m *Metrics) TokenCommitWindow(d time.Duration) {
	if m == nil {
		return
	}
	m.tokenCommitWindow.Observe(d.Seconds())
}

// RefreshLockWait records, in pleo_proxy_refresh_lock_wait_seconds, the time spent waiting for
// a company's refresh lock.
func (m *Metrics) RefreshLockWait(d time.Duration) {
	if m == nil {
		return
	}
	m.refreshLockWait.Observe(d.Seconds())
}

// Error records one problem the sidecar answered with in pleo_proxy_errors_total, by its code
// (contract section 3, e.g. "company_unknown"); a code not in the contract counts as "other".
func (m *Metrics) Error(code string) {
	if m == nil {
		return
	}
	if i := indexOf(errorCodeLabels[:], code); i >= 0 {
		m.errorChildren[i].Inc()
		return
	}
	m.errors.WithLabelValues(Other).Inc()
}

// StoreOperation records one credential store operation ([StoreGet], [StoreList],
// [StoreUpdate], [StorePut], [StoreDelete], [StoreReload] or [StorePing]; anything else counts
// as "other"): its duration in pleo_proxy_store_operation_duration_seconds and, when err is not
// nil, a failure in pleo_proxy_store_errors_total.
func (m *Metrics) StoreOperation(operation string, d time.Duration, err error) {
	if m == nil {
		return
	}
	i := indexOf(storeOperationLabels[:], operation)
	if i < 0 {
		m.storeDuration.WithLabelValues(Other).Observe(d.Seconds())
		if err != nil {
			m.storeErrors.WithLabelValues(Other).Inc()
		}
		return
	}
	o := m.storeDurations[i].Load()
	if o == nil {
		o = m.newStoreObserver(i)
	}
	(*o).Observe(d.Seconds())
	if err != nil {
		m.storeErrorChildren[i].Inc()
	}
}

// StoreReloadFailed records, in pleo_proxy_store_reload_failures_total, a failed attempt to
// pick up changes made to the store by others.
func (m *Metrics) StoreReloadFailed() {
	if m == nil {
		return
	}
	m.storeReloadFailures.Inc()
}

// SecretReload counts one reload of a changed secret file in pleo_proxy_secret_reloads_total:
// secret is one of the Secret* names (another is ignored: the labels stay bounded), result is
// SecretReloadSuccess or SecretReloadError (another counts as an error).
func (m *Metrics) SecretReload(secret, result string) {
	if m == nil {
		return
	}
	i := indexOf(secretLabels[:], secret)
	if i < 0 {
		return
	}
	j := 1
	if result == SecretReloadSuccess {
		j = 0
	}
	m.secretReloadChildren[i][j].Inc()
}

// SetPendingTokenWrites sets pleo_proxy_pending_token_writes: the rotated tokens held in memory
// because their store write has not succeeded yet.
func (m *Metrics) SetPendingTokenWrites(n int) {
	if m == nil {
		return
	}
	m.pendingTokenWrites.Set(float64(n))
}

// ConnectStarted records, in pleo_proxy_connects_total{result="started"}, a consent flow
// started by GET /connect.
func (m *Metrics) ConnectStarted() {
	if m == nil {
		return
	}
	m.connectChildren[0].Inc()
}

// ConnectCompleted records, in pleo_proxy_connects_total{result="completed"}, a consent
// callback that stored a credential.
func (m *Metrics) ConnectCompleted() {
	if m == nil {
		return
	}
	m.connectChildren[1].Inc()
}

// RefreshSkipped records a refresh that was not attempted in
// pleo_proxy_token_refreshes_skipped_total: reason is [SkipUnauthorizedCooldown] or
// [SkipBackoff]; anything else counts as "other". It does not allocate.
func (m *Metrics) RefreshSkipped(reason string) {
	if m == nil {
		return
	}
	i := indexOf(skipReasonLabels[:], reason)
	if i < 0 {
		m.refreshesSkipped.WithLabelValues(Other).Inc()
		return
	}
	m.skippedChildren[i].Inc()
}

// ConnectLinkRefused records, in pleo_proxy_connects_total{result="link_refused"}, a GET
// /connect refused because its link is unsigned, altered, expired or signed under another key.
func (m *Metrics) ConnectLinkRefused() {
	if m == nil {
		return
	}
	m.connectChildren[3].Inc()
}

// ConnectFailed records a consent callback that stored nothing, in both
// pleo_proxy_connects_total{result="failed"} and pleo_proxy_connect_failures_total{reason}.
// reason is one of the Connect... reasons ([ConnectAccessDenied], [ConnectInvalidState], ...);
// anything else counts as [ConnectOther].
func (m *Metrics) ConnectFailed(reason string) {
	if m == nil {
		return
	}
	m.connectChildren[2].Inc()
	i := indexOf(connectReasonLabels[:], reason)
	if i < 0 {
		i = len(connectReasonLabels) - 1 // ConnectOther
	}
	m.connectFailureChildren[i].Inc()
}

// SetCredentialCounts replaces pleo_proxy_credentials with a snapshot of the store: the number
// of credentials of each type and state. Every known type and state pair absent from counts
// is set to zero; any other pair set by an earlier call and absent now is removed.
func (m *Metrics) SetCredentialCounts(counts map[CredentialKey]int) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.credentialsSet {
		if _, ok := counts[k]; !ok {
			m.credentials.DeleteLabelValues(k.Type, k.State)
			delete(m.credentialsSet, k)
		}
	}
	for i, sec := range secretLabels {
		for j, r := range secretReloadResultLabels {
			m.secretReloadChildren[i][j] = m.secretReloads.WithLabelValues(sec, r)
		}
	}
	for _, t := range credentialKinds {
		for _, s := range credentialStates {
			if _, ok := counts[CredentialKey{t, s}]; !ok {
				m.credentials.WithLabelValues(t, s).Set(0)
			}
		}
	}
	for k, n := range counts {
		m.credentials.WithLabelValues(k.Type, k.State).Set(float64(n))
		if !isKnownCredentialKey(k) {
			m.credentialsSet[k] = true
		}
	}
}

// SetExpiringCredentials replaces pleo_proxy_credentials_expiring with a snapshot: the number
// of API keys of each type whose expires_at is within [ExpiringWithin] (or past). Known API-key
// types absent from counts are set to zero; any other type set by an earlier call and absent
// now is removed.
func (m *Metrics) SetExpiringCredentials(counts map[string]int) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for t := range m.expiringSet {
		if _, ok := counts[t]; !ok {
			m.credentialsExpiring.DeleteLabelValues(t)
			delete(m.expiringSet, t)
		}
	}
	for _, t := range apiKeyKinds {
		if _, ok := counts[t]; !ok {
			m.credentialsExpiring.WithLabelValues(t).Set(0)
		}
	}
	for t, n := range counts {
		m.credentialsExpiring.WithLabelValues(t).Set(float64(n))
		if indexOf(apiKeyKinds[:], t) < 0 {
			m.expiringSet[t] = true
		}
	}
}

func isKnownCredentialKey(k CredentialKey) bool {
	return indexOf(credentialKinds[:], k.Type) >= 0 && indexOf(credentialStates[:], k.State) >= 0
}

// codeSeries returns the children for code index ci, creating the (empty) holder once.
func (m *Metrics) codeSeries(ci int) *codeSeries {
	if cs := m.codes[ci].Load(); cs != nil {
		return cs
	}
	m.codes[ci].CompareAndSwap(nil, new(codeSeries))
	return m.codes[ci].Load()
}

// The new... functions are the slow paths: they run once per series (a lost race only repeats
// a WithLabelValues that returns the same child) and may allocate.

func (m *Metrics) newRequestCounter(cs *codeSeries, mi, ci, ti int) *prometheus.Counter {
	c := m.requests.WithLabelValues(methodLabels[mi], codeLabel(ci), credentialTypeLabels[ti])
	cs.requests[mi][ti].CompareAndSwap(nil, &c)
	return cs.requests[mi][ti].Load()
}

func (m *Metrics) newRequestObserver(cs *codeSeries, mi, ci int) *prometheus.Observer {
	o := m.requestDuration.WithLabelValues(methodLabels[mi], codeLabel(ci))
	cs.duration[mi].CompareAndSwap(nil, &o)
	return cs.duration[mi].Load()
}

func (m *Metrics) newUpstreamCounter(cs *codeSeries, ci int) *prometheus.Counter {
	c := m.upstreamRequests.WithLabelValues(codeLabel(ci))
	cs.upstream.CompareAndSwap(nil, &c)
	return cs.upstream.Load()
}

func (m *Metrics) newStoreObserver(i int) *prometheus.Observer {
	o := m.storeDuration.WithLabelValues(storeOperationLabels[i])
	m.storeDurations[i].CompareAndSwap(nil, &o)
	return m.storeDurations[i].Load()
}
