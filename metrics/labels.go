package metrics

import "strconv"

// Label values callers pass to the recording methods. Every label of every metric is bounded:
// a value a method does not know is recorded as [Other] (or, for the method label,
// [MethodOther]) so that no input, however malformed, can create new series.
const (
	// Other is recorded in place of any label value a method does not know: a status code
	// outside 100-599 (an upstream attempt that got no response is recorded as code 0, so
	// as "other"), a credential type, retry result, refresh trigger or result, store
	// operation, connect failure reason or error code not listed in this package.
	Other = "other"

	// MethodOther is the method label of any request method other than GET, HEAD, POST,
	// PUT, PATCH, DELETE, OPTIONS, CONNECT and TRACE (matched case-sensitively, as HTTP does).
	MethodOther = "OTHER"
)

// Credential types: the credential_type label of pleo_proxy_requests_total and the type label
// of pleo_proxy_credentials and pleo_proxy_credentials_expiring.
const (
	// CredentialNone is the credential_type of a request for which no credential was chosen
	// (a sidecar error before the company was resolved). An empty string is recorded as none.
	CredentialNone = "none"
	// CredentialOAuth2 is an OAuth 2 credential (access and refresh token).
	CredentialOAuth2 = "oauth2"
	// CredentialIntegratedAPIKey is an integrated API key.
	CredentialIntegratedAPIKey = "integrated_api_key"
	// CredentialStandaloneAPIKey is a standalone API key.
	CredentialStandaloneAPIKey = "standalone_api_key"
)

// Credential states: the state label of pleo_proxy_credentials (the states of GET /credentials).
const (
	// StateActive is a usable credential.
	StateActive = "active"
	// StateReauthorizationRequired is an OAuth credential whose refresh token was rejected.
	StateReauthorizationRequired = "reauthorization_required"
	// StateUnauthorized is a credential whose last use got a 401 it could not recover from.
	StateUnauthorized = "unauthorized"
	// StateExpired is an API key past its expires_at.
	StateExpired = "expired"
)

// Results of the single retry after an upstream 401: the result label of
// pleo_proxy_auth_retries_total.
const (
	// RetrySucceeded is a retry whose response was not a 401.
	RetrySucceeded = "succeeded"
	// RetryFailed is a retry that got a 401 again, or could not be made because no new
	// credential could be had.
	RetryFailed = "failed"
	// RetryNotReplayable is a 401 that was passed back without a retry because the request
	// body could not be replayed.
	RetryNotReplayable = "not_replayable"
)

// Refresh triggers: the trigger label of pleo_proxy_token_refreshes_total.
const (
	// TriggerExpiry is a refresh because the access token expires within REFRESH_BEFORE.
	TriggerExpiry = "expiry"
	// TriggerUnauthorized is a refresh because the upstream answered 401.
	TriggerUnauthorized = "unauthorized"
	// TriggerBackground is a keep-alive refresh of a credential unused for KEEPALIVE_INTERVAL.
	TriggerBackground = "background"
)

// Refresh results: the result label of pleo_proxy_token_refreshes_total.
const (
	// RefreshSuccess is a refresh that produced a new access token.
	RefreshSuccess = "success"
	// RefreshInvalidGrant is a refresh the token endpoint rejected with invalid_grant.
	RefreshInvalidGrant = "invalid_grant"
	// RefreshError is any other failed refresh.
	RefreshError = "error"
)

// Reasons a refresh was not attempted: the reason label of
// pleo_proxy_token_refreshes_skipped_total.
const (
	// SkipUnauthorizedCooldown is an upstream 401 passed back without a refresh because the
	// company is in a 401 cool-down: the upstream answered 401 to a freshly issued token.
	SkipUnauthorizedCooldown = "unauthorized_cooldown"
	// SkipBackoff is a refresh not attempted because the company is backing off after token
	// endpoint failures, or honouring the token endpoint's Retry-After.
	SkipBackoff = "backoff"
)

// Cache results: the result label of pleo_proxy_credential_cache_lookups_total.
const (
	// CacheHit is a lookup answered from the cache.
	CacheHit = "hit"
	// CacheMiss is a lookup that went to the store.
	CacheMiss = "miss"
)

// Store operations: the operation label of pleo_proxy_store_operation_duration_seconds and
// pleo_proxy_store_errors_total.
const (
	StoreGet    = "get"    // StoreGet reads one credential.
	StoreList   = "list"   // StoreList reads every credential.
	StoreUpdate = "update" // StoreUpdate changes a stored credential (a rotated token).
	StorePut    = "put"    // StorePut adds or replaces a credential.
	StoreDelete = "delete" // StoreDelete removes a credential.
	StoreReload = "reload" // StoreReload re-reads the store's backing file.
	StorePing   = "ping"   // StorePing checks the store is reachable (readiness).
)

// Connect results: the result label of pleo_proxy_connects_total, recorded by
// [Metrics.ConnectStarted], [Metrics.ConnectCompleted], [Metrics.ConnectFailed] and
// [Metrics.ConnectLinkRefused].
const (
	connectStarted     = "started"
	connectCompleted   = "completed"
	connectFailed      = "failed"
	connectLinkRefused = "link_refused"
)

// Connect failure reasons: the reason label of pleo_proxy_connect_failures_total.
const (
	// ConnectAccessDenied is a callback carrying error=access_denied (the user said no).
	ConnectAccessDenied = "access_denied"
	// ConnectInvalidState is a callback whose state is unknown, used or older than 10 minutes.
	ConnectInvalidState = "invalid_state"
	// ConnectExchangeFailed is a code the token endpoint would not exchange.
	ConnectExchangeFailed = "exchange_failed"
	// ConnectNoRefreshToken is a code exchange whose answer carried no refresh token (the
	// scopes granted no offline access); what was issued is revoked.
	ConnectNoRefreshToken = "no_refresh_token"
	// ConnectCompanyLookupFailed is a failed GET /v1/installations/me.
	ConnectCompanyLookupFailed = "company_lookup_failed"
	// ConnectStoreFailed is a credential the store would not take.
	ConnectStoreFailed = "store_failed"
	// ConnectTenantConflict is a consent that would move a binding: the company is connected
	// to another tenant, or the tenant to another company. Nothing is stored.
	ConnectTenantConflict = "tenant_conflict"
	// ConnectOther is any other failure (also recorded for an unknown reason).
	ConnectOther = Other
)

// The secrets whose files are reloaded, as the secret label of pleo_proxy_secret_reloads_total.
const (
	SecretOAuthClientSecret = "oauth_client_secret"
	SecretAdminToken        = "admin_token"
	SecretClientTokens      = "client_tokens"
	SecretEncryptionKey     = "encryption_key"
	SecretConnectKey        = "connect_key"
)

// The results of a secret file reload.
const (
	SecretReloadSuccess = "success"
	SecretReloadError   = "error"
)

// The bounded label sets, in the order of their index.
var (
	methodLabels = [...]string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", MethodOther}

	credentialTypeLabels = [...]string{CredentialNone, CredentialOAuth2, CredentialIntegratedAPIKey, CredentialStandaloneAPIKey, Other}

	retryLabels          = [...]string{RetrySucceeded, RetryFailed, RetryNotReplayable}
	triggerLabels        = [...]string{TriggerExpiry, TriggerUnauthorized, TriggerBackground}
	refreshResultLabels  = [...]string{RefreshSuccess, RefreshInvalidGrant, RefreshError}
	cacheLabels          = [...]string{CacheHit, CacheMiss}
	storeOperationLabels = [...]string{StoreGet, StoreList, StoreUpdate, StorePut, StoreDelete, StoreReload, StorePing}
	connectLabels        = [...]string{connectStarted, connectCompleted, connectFailed, connectLinkRefused}
	connectReasonLabels  = [...]string{ConnectAccessDenied, ConnectInvalidState, ConnectExchangeFailed, ConnectNoRefreshToken, ConnectCompanyLookupFailed, ConnectStoreFailed, ConnectTenantConflict, ConnectOther}
	skipReasonLabels     = [...]string{SkipUnauthorizedCooldown, SkipBackoff}
	secretLabels         = [...]string{SecretOAuthClientSecret, SecretAdminToken, SecretClientTokens, SecretEncryptionKey, SecretConnectKey}

	secretReloadResultLabels = [...]string{SecretReloadSuccess, SecretReloadError}

	// errorCodeLabels are the codes of the problems the sidecar produces (contract section 3).
	errorCodeLabels = [...]string{
		"company_missing", "company_invalid", "company_mismatch", "company_unknown",
		"client_unauthenticated", "method_not_allowed", "credential_expired",
		"reauthorization_required", "token_endpoint_error", "upstream_unreachable",
		"upstream_timeout", "store_unavailable", "upgrade_not_supported", "request_header_too_large",
	}

	// credentialKinds and credentialStates are the series of pleo_proxy_credentials kept at
	// zero when no credential is in them; apiKeyKinds those of pleo_proxy_credentials_expiring.
	credentialKinds  = [...]string{CredentialOAuth2, CredentialIntegratedAPIKey, CredentialStandaloneAPIKey}
	credentialStates = [...]string{StateActive, StateReauthorizationRequired, StateUnauthorized, StateExpired}
	apiKeyKinds      = [...]string{CredentialIntegratedAPIKey, CredentialStandaloneAPIKey}
)

const (
	numMethods   = len(methodLabels)
	numCredTypes = len(credentialTypeLabels)
	// numCodes is one slot per status 100-599 plus one for "other".
	numCodes  = 501
	otherCode = numCodes - 1
)

// methodIndex bounds a request method to methodLabels.
func methodIndex(method string) int {
	switch method {
	case "GET":
		return 0
	case "HEAD":
		return 1
	case "POST":
		return 2
	case "PUT":
		return 3
	case "PATCH":
		return 4
	case "DELETE":
		return 5
	case "OPTIONS":
		return 6
	case "CONNECT":
		return 7
	case "TRACE":
		return 8
	}
	return numMethods - 1
}

// MethodLabel is the method label recorded for an HTTP request method.
func MethodLabel(method string) string { return methodLabels[methodIndex(method)] }

// codeIndex bounds a status code: 100-599 map to 0-499, anything else to otherCode.
func codeIndex(code int) int {
	if code >= 100 && code <= 599 {
		return code - 100
	}
	return otherCode
}

// codeLabel is the label of a codeIndex; it allocates, so only slow paths call it.
func codeLabel(i int) string {
	if i == otherCode {
		return Other
	}
	return strconv.Itoa(i + 100)
}

// CodeLabel is the code label recorded for an HTTP status code: its three digits for 100-599,
// "other" for anything else (0 included, which callers use for an attempt with no response).
func CodeLabel(code int) string { return codeLabel(codeIndex(code)) }

// credentialTypeIndex bounds a credential type; "" counts as none.
func credentialTypeIndex(t string) int {
	switch t {
	case CredentialNone, "":
		return 0
	case CredentialOAuth2:
		return 1
	case CredentialIntegratedAPIKey:
		return 2
	case CredentialStandaloneAPIKey:
		return 3
	}
	return numCredTypes - 1
}

// indexOf returns the index of v in labels, or -1. The label sets are small (at most 12), so a
// linear scan of string comparisons is as fast as a map and does not allocate.
func indexOf(labels []string, v string) int {
	for i, l := range labels {
		if l == v {
			return i
		}
	}
	return -1
}
