// Package oauthtest provides a strict, real OAuth 2.0 authorisation server
// (ory/fosite) plus a resource server, for tests; it behaves as Pleo
// documents.
//
// The authorisation server is fosite running in-process on an
// httptest.Server, configured like Pleo: authorization code grant with PKCE
// enforced (S256 only, plain refused), refresh token grant with rotation and
// reuse detection (presenting an already-used refresh token revokes every
// token of that authorisation and answers 400 {"error":"invalid_grant"}),
// client authentication client_secret_basic only, no client-credentials or
// implicit grant, exact redirect URI matching, opaque tokens.
//
// The resource server on the same listener answers GET /v1/installations/me
// with the token's company and echoes every other request, so tests can see
// what a proxy forwarded.
package oauthtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/ory/fosite"
	"github.com/ory/fosite/handler/oauth2"
	"github.com/ory/fosite/handler/pkce"
	"github.com/ory/fosite/token/hmac"
	"golang.org/x/crypto/bcrypt"
	xoauth2 "golang.org/x/oauth2"
)

const (
	companyURNPrefix = "urn:pleo:company:"

	defaultClientID     = "oauthtest-client"
	defaultClientSecret = "oauthtest-secret"
	defaultAccessTTL    = 15 * time.Minute
	defaultRefreshTTL   = 60 * 24 * time.Hour
	defaultRedirectURI  = "http://localhost/callback"
)

// DefaultScopes are the scopes the client may request when Options.Scopes
// is empty: the examples from Pleo's documentation.
var DefaultScopes = []string{
	"export-jobs:read", "export-jobs:write", "export-items:read",
	"accounts:read", "vendors:write", "users:read",
}

// Options configures a Server. Zero values take the documented defaults.
type Options struct {
	// ClientID is the one registered client's id (default "oauthtest-client").
	ClientID string
	// ClientSecret is its secret (default "oauthtest-secret"); it is stored
	// bcrypt-hashed, as fosite requires.
	ClientSecret string
	// AccessTTL is the access-token lifetime (default 15 minutes).
	AccessTTL time.Duration
	// RefreshTTL is the refresh-token lifetime (default 60 days).
	RefreshTTL time.Duration
	// RedirectURIs are the client's registered redirect URIs, matched
	// exactly; HTTPS, or HTTP on localhost only
	// (default "http://localhost/callback"). Grant uses the first.
	RedirectURIs []string
	// Scopes are the scopes the client may be granted (default
	// DefaultScopes). Grant requests all of them.
	Scopes []string
}

// Stats are the server's counters since it started.
type Stats struct {
	// TokenCalls counts every request to POST /oauth/token, including
	// injected failures.
	TokenCalls int64
	// RefreshCalls counts token requests with grant_type=refresh_token.
	RefreshCalls int64
	// CodeExchanges counts token requests with grant_type=authorization_code.
	CodeExchanges int64
	// ReuseDetections counts refresh requests that presented an
	// already-rotated (used) refresh token.
	ReuseDetections int64
	// InvalidGrants counts token responses with {"error":"invalid_grant"}.
	InvalidGrants int64
	// APICalls counts every request to the resource server.
	APICalls int64
	// APIUnauthorized counts resource-server requests answered 401.
	APIUnauthorized int64
}

// Server is a running authorisation server plus resource server. All its
// methods are safe for concurrent use.
type Server struct {
	opts     Options
	srv      *httptest.Server
	cfg      *config
	provider *fosite.Fosite
	store    *store
	locks    keyedMutex

	// noRedirect is the HTTP client Grant uses for the authorize step.
	noRedirect *http.Client

	tokenFailure    atomic.Int64
	tokenRetryAfter atomic.Pointer[string]
	tokenDelay      atomic.Int64
	refreshHook     atomic.Pointer[func(RefreshEvent)]
	consent         atomic.Pointer[Consent]

	tokenCalls, refreshCalls, codeExchanges atomic.Int64
	reuseDetections, invalidGrants          atomic.Int64
	apiCalls, apiUnauthorized               atomic.Int64
}

// config is fosite's Config with an access-token lifetime that can change
// while requests are served (fosite.Config is not safe to mutate then).
type config struct {
	*fosite.Config
	accessTTL atomic.Int64
}

// GetAccessTokenLifespan implements fosite.AccessTokenLifespanProvider.
func (c *config) GetAccessTokenLifespan(context.Context) time.Duration {
	return time.Duration(c.accessTTL.Load())
}

// NewServer starts a server configured by opts; it is closed by tb.Cleanup.
func NewServer(tb testing.TB, opts Options) *Server {
	tb.Helper()
	if opts.ClientID == "" {
		opts.ClientID = defaultClientID
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = defaultClientSecret
	}
	if opts.AccessTTL <= 0 {
		opts.AccessTTL = defaultAccessTTL
	}
	if opts.RefreshTTL <= 0 {
		opts.RefreshTTL = defaultRefreshTTL
	}
	if len(opts.RedirectURIs) == 0 {
		opts.RedirectURIs = []string{defaultRedirectURI}
	}
	opts.RedirectURIs = slices.Clone(opts.RedirectURIs)
	if len(opts.Scopes) == 0 {
		opts.Scopes = DefaultScopes
	}
	opts.Scopes = slices.Clone(opts.Scopes)

	secret := make([]byte, 32) // fosite's HMAC strategy needs 32 bytes
	if _, err := rand.Read(secret); err != nil {
		tb.Fatalf("oauthtest: global secret: %v", err)
	}

	fc := &fosite.Config{
		RefreshTokenLifespan:  opts.RefreshTTL,
		AuthorizeCodeLifespan: 10 * time.Minute,
		GlobalSecret:          secret,
		// Strict like Pleo.
		EnforcePKCE:                    true,
		EnablePKCEPlainChallengeMethod: false,
		ScopeStrategy:                  fosite.ExactScopeStrategy,
		AudienceMatchingStrategy:       fosite.DefaultAudienceMatchingStrategy,
		RedirectSecureChecker:          fosite.IsRedirectURISecureStrict,
		// Pleo has no "offline" scope: every code exchange and refresh
		// returns a refresh token.
		RefreshTokenScopes: []string{},
		// A minimal bcrypt cost keeps client authentication fast in tests.
		HashCost: bcrypt.MinCost,
	}
	// Set everything fosite would otherwise initialise lazily (a data race
	// under concurrent requests).
	fc.ClientSecretsHasher = &fosite.BCrypt{Config: fc}
	cfg := &config{Config: fc}
	cfg.accessTTL.Store(int64(opts.AccessTTL))

	hashed, err := fc.ClientSecretsHasher.Hash(context.Background(), []byte(opts.ClientSecret))
	if err != nil {
		tb.Fatalf("oauthtest: hash client secret: %v", err)
	}
	client := &fosite.DefaultOpenIDConnectClient{
		DefaultClient: &fosite.DefaultClient{
			ID:            opts.ClientID,
			Secret:        hashed,
			RedirectURIs:  opts.RedirectURIs,
			GrantTypes:    []string{"authorization_code", "refresh_token"},
			ResponseTypes: []string{"code"},
			Scopes:        opts.Scopes,
			Public:        false,
		},
		TokenEndpointAuthMethod: "client_secret_basic",
	}
	st := newStore(client)

	strategy := oauth2.NewHMACSHAStrategy(&hmac.HMACStrategy{Config: cfg}, cfg)
	explicit := &oauth2.AuthorizeExplicitGrantHandler{
		AccessTokenStrategy:    strategy,
		RefreshTokenStrategy:   strategy,
		AuthorizeCodeStrategy:  strategy,
		CoreStorage:            st,
		TokenRevocationStorage: st,
		Config:                 cfg,
	}
	pkceHandler := &pkce.Handler{AuthorizeCodeStrategy: strategy, Storage: st, Config: cfg}
	refresh := &oauth2.RefreshTokenGrantHandler{
		AccessTokenStrategy:    strategy,
		RefreshTokenStrategy:   strategy,
		TokenRevocationStorage: st,
		Config:                 cfg,
	}
	validator := &oauth2.CoreValidator{CoreStrategy: strategy, CoreStorage: st, Config: cfg}
	// The PKCE handler must come after the code handler.
	fc.AuthorizeEndpointHandlers.Append(explicit)
	fc.AuthorizeEndpointHandlers.Append(pkceHandler)
	fc.TokenEndpointHandlers.Append(explicit)
	fc.TokenEndpointHandlers.Append(pkceHandler)
	fc.TokenEndpointHandlers.Append(refresh)
	fc.TokenIntrospectionHandlers.Append(validator)

	s := &Server{
		opts:     opts,
		cfg:      cfg,
		provider: fosite.NewOAuth2Provider(st, cfg),
		store:    st,
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	fc.TokenURL = s.TokenURL()
	s.noRedirect = &http.Client{
		Transport: s.srv.Client().Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	tb.Cleanup(s.srv.Close)
	return s
}

// URL returns the server's base URL (authorisation and resource server).
func (s *Server) URL() string { return s.srv.URL }

// TokenURL returns the token endpoint, URL()+"/oauth/token".
func (s *Server) TokenURL() string { return s.srv.URL + "/oauth/token" }

// AuthorizeURL returns the authorisation endpoint, URL()+"/oauth/authorize".
func (s *Server) AuthorizeURL() string { return s.srv.URL + "/oauth/authorize" }

// IntrospectURL returns the introspection endpoint,
// URL()+"/oauth/token/introspect".
func (s *Server) IntrospectURL() string { return s.srv.URL + "/oauth/token/introspect" }

// ClientID returns the registered client's id.
func (s *Server) ClientID() string { return s.opts.ClientID }

// ClientSecret returns the registered client's secret.
func (s *Server) ClientSecret() string { return s.opts.ClientSecret }

// OAuth2Config returns a golang.org/x/oauth2 configuration for the client:
// the server's endpoints, HTTP Basic client authentication, the first
// redirect URI and every scope the client has.
func (s *Server) OAuth2Config() *xoauth2.Config {
	return &xoauth2.Config{
		ClientID:     s.opts.ClientID,
		ClientSecret: s.opts.ClientSecret,
		Endpoint: xoauth2.Endpoint{
			AuthURL:   s.AuthorizeURL(),
			TokenURL:  s.TokenURL(),
			AuthStyle: xoauth2.AuthStyleInHeader,
		},
		RedirectURL: s.opts.RedirectURIs[0],
		Scopes:      slices.Clone(s.opts.Scopes),
	}
}

// Grant runs a full authorization code + PKCE (S256) flow against the
// server, without a browser, and returns the token (with a refresh token).
// companyID must be a UUID; empty lets the server pick a random company.
func (s *Server) Grant(ctx context.Context, companyID string) (*xoauth2.Token, error) {
	conf := s.OAuth2Config()
	verifier := xoauth2.GenerateVerifier()
	state := randomString(16)
	authOpts := []xoauth2.AuthCodeOption{xoauth2.S256ChallengeOption(verifier)}
	if companyID != "" {
		authOpts = append(authOpts, xoauth2.SetAuthURLParam("company_id", companyID))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, conf.AuthCodeURL(state, authOpts...), nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.noRedirect.Do(req)
	if err != nil {
		return nil, fmt.Errorf("oauthtest: authorize: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode < 300 || resp.StatusCode > 399 {
		return nil, fmt.Errorf("oauthtest: authorize: status %d: %s", resp.StatusCode, body)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return nil, fmt.Errorf("oauthtest: authorize: bad Location: %w", err)
	}
	q := loc.Query()
	if e := q.Get("error"); e != "" {
		return nil, fmt.Errorf("oauthtest: authorize: %s: %s", e, q.Get("error_description"))
	}
	if q.Get("state") != state {
		return nil, errors.New("oauthtest: authorize: state mismatch")
	}
	code := q.Get("code")
	if code == "" {
		return nil, errors.New("oauthtest: authorize: no code in redirect")
	}
	ctx = context.WithValue(ctx, xoauth2.HTTPClient, s.srv.Client())
	tok, err := conf.Exchange(ctx, code, xoauth2.VerifierOption(verifier))
	if err != nil {
		return nil, fmt.Errorf("oauthtest: code exchange: %w", err)
	}
	return tok, nil
}

// Consent is how the authorisation endpoint's automatic consent answers a request that
// names no company_id and no deny parameter, as a person at Pleo's consent screen would:
// a client following redirects (a browser in a test) cannot add those parameters itself.
type Consent struct {
	// CompanyID is the company the person consents for; empty picks a new random one per
	// request (the default).
	CompanyID string
	// Deny makes the person refuse: the redirect carries error=access_denied.
	Deny bool
}

// SetConsent sets the automatic consent for later authorisation requests. A request's own
// company_id and deny=1 parameters still win. CompanyID must be a UUID or empty.
func (s *Server) SetConsent(c Consent) {
	if c.CompanyID != "" {
		c.CompanyID = canonicalCompany(c.CompanyID)
	}
	s.consent.Store(&c)
}

// RevokeAccessTokens makes every current access token of the company
// invalid, server-side; its refresh tokens stay valid.
func (s *Server) RevokeAccessTokens(companyID string) {
	s.store.revokeCompanyAccess(canonicalCompany(companyID))
}

// SetAccessTTL sets the lifetime of access tokens issued from now on.
func (s *Server) SetAccessTTL(d time.Duration) { s.cfg.accessTTL.Store(int64(d)) }

// SetTokenFailure makes the token endpoint answer every request with this
// status instead of processing it; 0 restores normal service. The body is
// {"error":"invalid_grant"} for 400, {"error":"invalid_client"} for 401,
// {"error":"server_error"} for 500, else {"error":"temporarily_unavailable"}.
// Injected failures consume no code or refresh token.
func (s *Server) SetTokenFailure(status int) { s.tokenFailure.Store(int64(status)) }

// SetTokenRetryAfter makes injected token-endpoint failures (SetTokenFailure) carry this
// Retry-After header value ("" for none).
func (s *Server) SetTokenRetryAfter(v string) { s.tokenRetryAfter.Store(&v) }

// SetTokenDelay delays every token-endpoint response by d (0: none). The
// delay ends early if the client goes away.
func (s *Server) SetTokenDelay(d time.Duration) { s.tokenDelay.Store(int64(d)) }

// RefreshStage is a point in the token endpoint's handling of a refresh_token request.
type RefreshStage int

const (
	// RefreshReceived: the request arrived; nothing was processed yet, and no delay
	// (SetTokenDelay) or failure (SetTokenFailure) applied. A hook that blocks here holds the
	// request unanswered (the refresh is processed once it returns, even if the client has
	// gone away meanwhile, as a server that took the request may).
	RefreshReceived RefreshStage = iota
	// RefreshProcessed: the refresh was processed (on success the refresh token is rotated
	// and the used one spent) and its answer is not written yet.
	RefreshProcessed
	// RefreshAnswered: the whole answer was written to the connection and flushed.
	RefreshAnswered
)

// RefreshEvent is one stage of one refresh_token request, as a refresh hook sees it.
type RefreshEvent struct {
	Stage RefreshStage
	// RemoteAddr is the client's address (host:port of its connection).
	RemoteAddr string
	// Status is the answer's HTTP status (RefreshProcessed and RefreshAnswered; 0 before).
	Status int
}

// SetRefreshHook makes the token endpoint call fn, synchronously, at each stage of every
// refresh_token request (a request answered by SetTokenFailure, or abandoned during a
// SetTokenDelay, is only received); nil removes it. fn may block: the request waits for it, so a test can act at an exact point,
// for instance stop the client's process once its refresh was rotated but before the answer
// is written, or hold the request unanswered.
func (s *Server) SetRefreshHook(fn func(RefreshEvent)) {
	if fn == nil {
		s.refreshHook.Store(nil)
		return
	}
	s.refreshHook.Store(&fn)
}

func (s *Server) refreshEvent(grant string, e RefreshEvent) {
	if grant != "refresh_token" {
		return
	}
	if fn := s.refreshHook.Load(); fn != nil {
		(*fn)(e)
	}
}

// RefreshTokenActive reports whether rt is a refresh token the server would accept now: the
// current one of a live authorisation, not rotated, revoked or expired.
func (s *Server) RefreshTokenActive(ctx context.Context, rt string) bool {
	use, _, err := s.provider.IntrospectToken(ctx, rt, fosite.RefreshToken, newSession(""))
	return err == nil && use == fosite.RefreshToken
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
		APIUnauthorized: s.apiUnauthorized.Load(),
	}
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/oauth/token":
		s.handleToken(w, r)
	case "/oauth/authorize":
		s.handleAuthorize(w, r)
	case "/oauth/token/introspect":
		s.handleIntrospect(w, r)
	default:
		s.handleAPI(w, r)
	}
}

// handleAuthorize auto-consents: the company is the company_id query
// parameter (a UUID), else the one set by SetConsent, else a new random one;
// every requested scope the client has is granted. deny=1 (or SetConsent's
// Deny) answers access_denied.
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeOAuthError(w, http.StatusMethodNotAllowed, "invalid_request")
		return
	}
	q := r.URL.Query()
	// Pleo matches redirect URIs exactly; fosite alone would accept any
	// port on a registered loopback IP (RFC 8252).
	if ru := q.Get("redirect_uri"); ru != "" && !slices.Contains(s.opts.RedirectURIs, ru) {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	ar, err := s.provider.NewAuthorizeRequest(ctx, r)
	if err != nil {
		s.provider.WriteAuthorizeError(ctx, w, ar, err)
		return
	}
	consent := s.consent.Load()
	if consent == nil {
		consent = &Consent{}
	}
	if q.Get("deny") == "1" || consent.Deny && q.Get("company_id") == "" {
		s.provider.WriteAuthorizeError(ctx, w, ar, fosite.ErrAccessDenied.WithHint("The resource owner denied the request."))
		return
	}
	company := consent.CompanyID
	if company == "" {
		company = uuid.NewString()
	}
	if c := q.Get("company_id"); c != "" {
		id, err := uuid.Parse(c)
		if err != nil {
			s.provider.WriteAuthorizeError(ctx, w, ar, fosite.ErrInvalidRequest.WithHint("company_id must be a UUID."))
			return
		}
		company = id.String()
	}
	for _, scope := range ar.GetRequestedScopes() {
		if s.cfg.GetScopeStrategy(ctx)(ar.GetClient().GetScopes(), scope) {
			ar.GrantScope(scope)
		}
	}
	resp, err := s.provider.NewAuthorizeResponse(ctx, ar, newSession(company))
	if err != nil {
		s.provider.WriteAuthorizeError(ctx, w, ar, err)
		return
	}
	s.provider.WriteAuthorizeResponse(ctx, w, ar, resp)
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	s.tokenCalls.Add(1)
	_ = r.ParseForm() // a bad body is fosite's to refuse
	grant := r.PostForm.Get("grant_type")
	var lockKey string
	switch grant {
	case "refresh_token":
		s.refreshCalls.Add(1)
		lockKey = "rt:" + r.PostForm.Get("refresh_token")
	case "authorization_code":
		s.codeExchanges.Add(1)
		lockKey = "ac:" + r.PostForm.Get("code")
	}

	// The delay applying to this request is read before the hook runs: a hook may change it
	// for later requests only.
	delay := time.Duration(s.tokenDelay.Load())
	s.refreshEvent(grant, RefreshEvent{Stage: RefreshReceived, RemoteAddr: r.RemoteAddr})
	if d := delay; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if status := int(s.tokenFailure.Load()); status != 0 {
		code := "temporarily_unavailable"
		switch status {
		case http.StatusBadRequest:
			code = "invalid_grant"
			s.invalidGrants.Add(1)
		case http.StatusUnauthorized:
			code = "invalid_client"
		case http.StatusInternalServerError:
			code = "server_error"
		}
		if v := s.tokenRetryAfter.Load(); v != nil && *v != "" {
			w.Header().Set("Retry-After", *v)
		}
		writeOAuthError(w, status, code)
		return
	}

	// One request at a time per code or refresh token, like a database
	// transaction would give: the loser of a race sees the token as used.
	if lockKey != "" {
		defer s.locks.lock(lockKey)()
	}
	tr := &tokenTrace{}
	// The processing goes on if the client goes away: its outcome stands.
	ctx := context.WithValue(context.WithoutCancel(r.Context()), traceKey{}, tr)
	// The answer is composed in full first, so that a hook sees it processed and then
	// written whole.
	rec := httptest.NewRecorder()
	ar, err := s.provider.NewAccessRequest(ctx, r, newSession(""))
	if err == nil {
		var resp fosite.AccessResponder
		resp, err = s.provider.NewAccessResponse(ctx, ar)
		if err == nil {
			s.provider.WriteAccessResponse(ctx, rec, ar, resp)
		}
	}
	if err != nil {
		if grant == "refresh_token" && tr.refreshSeen && tr.refreshState == refreshRotated {
			s.reuseDetections.Add(1)
		}
		if fosite.ErrorToRFC6749Error(err).ErrorField == fosite.ErrInvalidGrant.ErrorField {
			s.invalidGrants.Add(1)
		}
		s.provider.WriteAccessError(ctx, rec, ar, err)
	}
	s.refreshEvent(grant, RefreshEvent{Stage: RefreshProcessed, RemoteAddr: r.RemoteAddr, Status: rec.Code})
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(rec.Body.Len()))
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	s.refreshEvent(grant, RefreshEvent{Stage: RefreshAnswered, RemoteAddr: r.RemoteAddr, Status: rec.Code})
}

// handleIntrospect is RFC 7662 introspection, as Pleo documents it: HTTP
// Basic client authentication only, and a client sees only its own tokens.
func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id, _, ok := r.BasicAuth()
	if !ok {
		w.Header().Set("WWW-Authenticate", `Basic realm="oauthtest"`)
		writeOAuthError(w, http.StatusUnauthorized, "invalid_client")
		return
	}
	clientID, _ := url.QueryUnescape(id)
	ir, err := s.provider.NewIntrospectionRequest(ctx, r, newSession(""))
	if err != nil {
		s.provider.WriteIntrospectionError(ctx, w, err)
		return
	}
	if ir.GetAccessRequester().GetClient().GetID() != clientID {
		s.provider.WriteIntrospectionError(ctx, w, fosite.ErrInactiveToken)
		return
	}
	s.provider.WriteIntrospectionResponse(ctx, w, ir)
}

// handleAPI is the resource server.
func (s *Server) handleAPI(w http.ResponseWriter, r *http.Request) {
	s.apiCalls.Add(1)
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}

	company, ok := s.authenticate(r)
	if !ok || strings.HasPrefix(r.URL.Path, UnauthorizedPath) {
		s.apiUnauthorized.Add(1)
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token"})
		return
	}
	if ids, present := r.URL.Query()["company_id"]; present {
		for _, id := range ids {
			if canonicalCompany(id) != company {
				writeJSON(w, http.StatusForbidden, map[string]string{"error": "forbidden", "message": "company_id names another company than the credential's"})
				return
			}
		}
	}

	switch {
	case r.URL.Path == "/v1/installations/me" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]string{"resource": companyURNPrefix + company})
		return
	case r.URL.Path == "/v1/installations/me" && r.Method == http.MethodDelete:
		// Pleo: revokes all of the installation's tokens.
		s.store.revokeCompanyAll(company)
		w.WriteHeader(http.StatusNoContent)
		return
	case r.URL.Path == "/v1/introspect" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]string{"subjectURN": companyURNPrefix + company})
		return
	}
	writeJSON(w, http.StatusOK, Echo{
		Method:     r.Method,
		Path:       r.URL.Path,
		Query:      r.URL.RawQuery,
		CompanyID:  company,
		BodySHA256: hex.EncodeToString(h.Sum(nil)),
		BodyLen:    n,
	})
}

// UnauthorizedPath prefixes resource-server paths that answer 401 invalid_token to every
// token, valid ones included: an endpoint the token's scopes do not reach, or a Pleo-side
// fault, which no refresh cures.
const UnauthorizedPath = "/v1/oauthtest-unauthorized"

// Echo is the resource server's answer to any path it does not implement.
type Echo struct {
	Method     string `json:"method"`
	Path       string `json:"path"`
	Query      string `json:"query"`
	CompanyID  string `json:"company_id"`
	BodySHA256 string `json:"body_sha256"` // hex SHA-256 of the whole request body
	BodyLen    int64  `json:"body_len"`
}

// authenticate validates the Bearer access token with fosite's
// IntrospectToken and returns its company.
func (s *Server) authenticate(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	use, ar, err := s.provider.IntrospectToken(r.Context(), token, fosite.AccessToken, newSession(""))
	if err != nil || use != fosite.AccessToken {
		return "", false // a refresh token is no bearer credential
	}
	company := companyOf(ar)
	return company, company != ""
}

// newSession returns a fosite session for the company (subject
// urn:pleo:company:<uuid>). Its maps are allocated up front: fosite's
// DefaultSession getters otherwise allocate them lazily, a data race on a
// session read concurrently.
func newSession(company string) *fosite.DefaultSession {
	sess := &fosite.DefaultSession{
		ExpiresAt: make(map[fosite.TokenType]time.Time),
		Extra:     make(map[string]interface{}),
	}
	if company != "" {
		sess.Subject = companyURNPrefix + company
		sess.Extra["company_id"] = company
	}
	return sess
}

// canonicalCompany returns the canonical form of a UUID, or the input.
func canonicalCompany(id string) string {
	if u, err := uuid.Parse(id); err == nil {
		return u.String()
	}
	return id
}

func writeOAuthError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, map[string]string{"error": code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// keyedMutex serialises work per key; entries are freed when unused.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyedEntry)
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()

	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
