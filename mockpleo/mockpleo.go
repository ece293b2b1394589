// Package mockpleo is an in-process mock of Pleo's authorisation server and
// external API, for `serve --dev` and for tests; it follows Pleo's documented
// rules strictly.
//
// One [http.Handler] (see [Server.Handler]) serves both hosts:
//
//   - GET  /oauth/authorize: authorisation code request with PKCE (S256 only).
//     Consent is automatic: the company is the query parameter
//     mock_company_id when given, else [Options.ConsentCompanyID], else a
//     new random UUID; mock_deny=1 answers error=access_denied instead. Once
//     [Server.SetRedirectURIs] registers redirect URIs, redirect_uri must
//     equal one of them exactly, as Pleo matches registered URIs.
//   - POST /oauth/token: grant_type=authorization_code and
//     grant_type=refresh_token, client authentication by HTTP Basic only
//     (client_secret_basic). Every refresh rotates both tokens and
//     invalidates all previous tokens of the authorisation at once;
//     presenting an already-used, expired or otherwise invalid refresh token
//     that the mock issued revokes the whole authorisation.
//   - POST /oauth/token/introspect: RFC 7662 introspection (HTTP Basic).
//   - GET  /v1/installations/me, GET /v1/introspect: the credential's company
//     as urn:pleo:company:<uuid>. DELETE /v1/installations/me revokes every
//     OAuth token of the company (and the API key used, if one was).
//   - every other path: an echo API (see [Echo]) behind Pleo's credential
//     rules: `Authorization: Bearer <access token>`, or
//     `Authorization: Basic base64("<key>:")` with an empty password. A
//     company_id query parameter naming another company answers 403.
//     Special paths: /v1/mock/stream?chunks=N&interval=DURATION streams N
//     newline-delimited JSON chunks, flushing each; /v1/mock/redirect answers
//     302 to /v1/mock/elsewhere (or to its query parameter `to`);
//     /v1/mock/status/{code} answers that status.
//
// Everything runs in memory and on whatever listener the caller provides
// (httptest.NewServer, or a loopback listener in `serve --dev`); the mock
// never contacts the network. Time comes from [Options.Now] so tests can
// move a fake clock. A [Server] is safe for concurrent use.
package mockpleo

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults applied by [New] to zero [Options] fields.
const (
	// DefaultClientID is the OAuth client id used when Options.ClientID is empty.
	DefaultClientID = "mock-client"
	// DefaultClientSecret is the OAuth client secret used when Options.ClientSecret is empty.
	DefaultClientSecret = "mock-secret"
	// DefaultAccessTTL is the access token lifetime used when Options.AccessTTL is zero
	// (Pleo's older documentation: 15 minutes).
	DefaultAccessTTL = 15 * time.Minute
	// DefaultRefreshTTL is the refresh token lifetime used when Options.RefreshTTL is zero
	// (Pleo: at least 60 days).
	DefaultRefreshTTL = 60 * 24 * time.Hour
	// CodeTTL is how long an authorisation code can be exchanged after it is issued.
	CodeTTL = 60 * time.Second
)

// CompanyURNPrefix prefixes a company id in the resource and subjectURN
// fields of /v1/installations/me and /v1/introspect.
const CompanyURNPrefix = "urn:pleo:company:"

// Options configures a [Server]. The zero value is usable.
type Options struct {
	// ClientID is the one OAuth client the mock accepts; empty means
	// DefaultClientID.
	ClientID string
	// ClientSecret is that client's secret; empty means DefaultClientSecret.
	ClientSecret string
	// AccessTTL is the lifetime of every access token issued; zero means
	// DefaultAccessTTL. The token response's expires_in is this, in seconds
	// rounded up.
	AccessTTL time.Duration
	// RefreshTTL is the lifetime of every refresh token from its issue; zero
	// means DefaultRefreshTTL. Presenting an expired refresh token revokes
	// its authorisation, as Pleo documents.
	RefreshTTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives the mock's events (never a token or key); nil
	// discards them.
	Logger *slog.Logger
	// ConsentCompanyID is the company the automatic consent grants when an
	// authorisation request carries no mock_company_id (a browser following
	// redirects cannot add one); empty means a new random company each time.
	// It must be a UUID.
	ConsentCompanyID string
}

// Stats counts what the mock has seen since [New]. See [Server.Stats].
type Stats struct {
	// TokenCalls counts every request to /oauth/token, whatever its outcome
	// (injected failures included).
	TokenCalls int64
	// RefreshCalls counts /oauth/token requests with
	// grant_type=refresh_token, whatever their outcome.
	RefreshCalls int64
	// CodeExchanges counts /oauth/token requests with
	// grant_type=authorization_code, whatever their outcome.
	CodeExchanges int64
	// ReuseDetections counts refresh tokens presented that the mock issued
	// but that were no longer valid (already used, expired, or of a revoked
	// authorisation); each revokes its authorisation.
	ReuseDetections int64
	// InvalidGrants counts every invalid_grant answer of /oauth/token
	// (reuse detections included).
	InvalidGrants int64
	// APICalls counts every request to the API (every path outside /oauth/).
	APICalls int64
	// Unauthorized counts every 401 the API answered (including
	// /v1/mock/status/401).
	Unauthorized int64
}

// Server is the mock. Create it with [New]; serve [Server.Handler].
type Server struct {
	clientID     string
	clientSecret string
	accessTTL    time.Duration
	refreshTTL   time.Duration
	now          func() time.Time
	log          *slog.Logger
	handler      http.Handler
	consentCo    string

	mu         sync.Mutex
	nextFamily int64
	families   map[string][]*family // by lower-case company id
	access     map[string]*accessToken
	refresh    map[string]*refreshToken
	codes      map[string]*authCode
	apiKeys    map[string]*apiKey
	failStatus int
	tokenDelay time.Duration
	redirects  []string // registered redirect URIs; nil: any valid one

	tokenCalls, refreshCalls, codeExchanges, reuseDetections atomic.Int64
	invalidGrants, apiCalls, unauthorized                    atomic.Int64
}

// family is one authorisation: a chain of rotated tokens.
type family struct {
	id        int64
	companyID string
	clientID  string
	scope     string // space-separated
	access    string // the current access token
	refresh   string // the current refresh token
	revoked   bool
}

type accessToken struct {
	fam       *family
	issuedAt  time.Time
	expiresAt time.Time
	revoked   bool // by RevokeAccessTokens
}

type refreshToken struct {
	fam       *family
	issuedAt  time.Time
	expiresAt time.Time
}

type authCode struct {
	clientID    string
	redirectURI string
	challenge   string
	companyID   string
	scope       string
	expiresAt   time.Time
	used        bool
	fam         *family // issued from this code, once exchanged
}

type apiKey struct {
	companyID string
	expiresAt time.Time // zero: never
}

// New returns a mock with no companies; seed it with [Server.AddOAuthCompany]
// and [Server.AddAPIKey], or let clients go through /oauth/authorize.
func New(opts Options) *Server {
	s := &Server{
		clientID:     opts.ClientID,
		clientSecret: opts.ClientSecret,
		accessTTL:    opts.AccessTTL,
		refreshTTL:   opts.RefreshTTL,
		now:          opts.Now,
		log:          opts.Logger,
		consentCo:    strings.ToLower(opts.ConsentCompanyID),
		families:     make(map[string][]*family),
		access:       make(map[string]*accessToken),
		refresh:      make(map[string]*refreshToken),
		codes:        make(map[string]*authCode),
		apiKeys:      make(map[string]*apiKey),
	}
	if s.clientID == "" {
		s.clientID = DefaultClientID
	}
	if s.clientSecret == "" {
		s.clientSecret = DefaultClientSecret
	}
	if s.accessTTL <= 0 {
		s.accessTTL = DefaultAccessTTL
	}
	if s.refreshTTL <= 0 {
		s.refreshTTL = DefaultRefreshTTL
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "mockpleo")
	s.handler = http.HandlerFunc(s.serveHTTP)
	return s
}

// Handler returns the one handler serving both the authorisation server
// (/oauth/...) and the external API (every other path).
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/oauth/authorize":
		s.handleAuthorize(w, r)
	case "/oauth/token":
		s.handleToken(w, r)
	case "/oauth/token/introspect":
		s.handleIntrospect(w, r)
	default:
		if strings.HasPrefix(r.URL.Path, "/oauth/") {
			// No other authorisation server endpoint is documented
			// (there is no revocation endpoint).
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found"})
			return
		}
		s.handleAPI(w, r)
	}
}

// AddOAuthCompany creates an authorisation (a token family) for companyID
// with the given scopes, as if the company had consented, and returns its
// first access token, refresh token and the access token's expiry. A company
// may hold several authorisations; each rotates and is revoked on its own.
func (s *Server) AddOAuthCompany(companyID string, scopes ...string) (accessToken, refreshToken string, expiresAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fam := s.newFamilyLocked(companyID, s.clientID, strings.Join(scopes, " "))
	at, rt, exp := s.issueLocked(fam)
	s.log.Info("authorisation seeded", "company_id", companyID, "family", fam.id)
	return at, rt, exp
}

// AddAPIKey registers key as an API key of companyID, expiring at expiresAt
// (the zero time: never). Registering an existing key again replaces it.
func (s *Server) AddAPIKey(companyID, key string, expiresAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiKeys[key] = &apiKey{companyID: companyID, expiresAt: expiresAt}
	s.log.Info("api key seeded", "company_id", companyID)
}

// RevokeAccessTokens revokes, server side, the current access token of every
// authorisation of companyID, as if Pleo had invalidated them early; the
// refresh tokens stay valid, so a client that refreshes recovers.
func (s *Server) RevokeAccessTokens(companyID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fam := range s.families[strings.ToLower(companyID)] {
		if at := s.access[fam.access]; at != nil {
			at.revoked = true
		}
	}
	s.log.Info("access tokens revoked", "company_id", companyID)
}

// SetTokenEndpointFailure makes every /oauth/token request answer status
// with {"error":"temporarily_unavailable"} (after any delay set by
// SetTokenDelay) without looking at it; 0 restores normal service.
func (s *Server) SetTokenEndpointFailure(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failStatus = status
}

// SetTokenDelay makes every /oauth/token request wait d (in real time, not
// Options.Now's) before it is handled; 0 removes the delay. A request whose
// client goes away during the wait is abandoned.
func (s *Server) SetTokenDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenDelay = d
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	return Stats{
		TokenCalls:      s.tokenCalls.Load(),
		RefreshCalls:    s.refreshCalls.Load(),
		CodeExchanges:   s.codeExchanges.Load(),
		ReuseDetections: s.reuseDetections.Load(),
		InvalidGrants:   s.invalidGrants.Load(),
		APICalls:        s.apiCalls.Load(),
		Unauthorized:    s.unauthorized.Load(),
	}
}

// newFamilyLocked registers a new authorisation; s.mu must be held.
func (s *Server) newFamilyLocked(companyID, clientID, scope string) *family {
	s.nextFamily++
	fam := &family{id: s.nextFamily, companyID: companyID, clientID: clientID, scope: scope}
	key := strings.ToLower(companyID)
	s.families[key] = append(s.families[key], fam)
	return fam
}

// issueLocked gives fam a new access and refresh token, which at once makes
// every earlier token of fam invalid; s.mu must be held.
func (s *Server) issueLocked(fam *family) (access, refresh string, accessExpiry time.Time) {
	now := s.now()
	access, refresh = newToken(), newToken()
	accessExpiry = now.Add(s.accessTTL)
	s.access[access] = &accessToken{fam: fam, issuedAt: now, expiresAt: accessExpiry}
	s.refresh[refresh] = &refreshToken{fam: fam, issuedAt: now, expiresAt: now.Add(s.refreshTTL)}
	fam.access, fam.refresh = access, refresh
	return access, refresh, accessExpiry
}

// validAccessLocked reports whether token is a usable access token at now,
// and why not; s.mu must be held.
func (s *Server) validAccessLocked(token string, now time.Time) (*accessToken, string) {
	at := s.access[token]
	switch {
	case at == nil:
		return nil, "unknown access token"
	case at.fam.revoked:
		return nil, "access token revoked (authorisation revoked)"
	case at.fam.access != token:
		return nil, "access token superseded by a refresh"
	case at.revoked:
		return nil, "access token revoked"
	case !now.Before(at.expiresAt):
		return nil, "access token expired"
	}
	return at, ""
}

// validRefreshLocked reports whether token is the usable refresh token of its
// family at now; s.mu must be held.
func (s *Server) validRefreshLocked(token string, now time.Time) (*refreshToken, bool) {
	rt := s.refresh[token]
	if rt == nil || rt.fam.revoked || rt.fam.refresh != token || !now.Before(rt.expiresAt) {
		return rt, false
	}
	return rt, true
}

func (s *Server) expiresIn() int64 {
	return int64(math.Ceil(s.accessTTL.Seconds()))
}

// newToken returns an opaque random token: 32 bytes from crypto/rand, base64url.
func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand.Read)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

func isUUID(s string) bool { return uuidRE.MatchString(s) }
