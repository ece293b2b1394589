// Package connect is the OAuth 2.0 consent flow of the connect listener: GET /connect starts
// an authorisation code grant with PKCE (S256) at Pleo for a tenant, and the callback (the
// path of the redirect URI) exchanges the code, learns the company from
// GET /v1/installations/me, and stores an oauth2 credential for that company and tenant.
//
// Nothing is kept server-side between the two requests but a set of used state ids: the
// state parameter is the flow itself (id, tenant, PKCE verifier, issue time, browser
// binding), sealed with AES-256-GCM. It expires after StateTTL, completes at most once per
// process, and only in the browser that started it (a cookie carries the binding).
package connect

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"
	"unicode/utf8"

	"golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/redact"
)

// ConnectPath is where a consent flow starts: GET /connect?tenant_id=….
const ConnectPath = "/connect"

// CookieName is the cookie that binds a flow to the browser that started it.
const CookieName = "pleo_connect"

// maxTenantLen bounds a tenant id, as the data listener's tenant header does.
const maxTenantLen = 256

// defaultMaxUsedStates bounds the used-state set (see Options.MaxUsedStates).
const defaultMaxUsedStates = 100_000

// completionTimeout bounds a callback's work once its state is accepted: the code exchange,
// the installation look-up and the store write.
const completionTimeout = time.Minute

// defaultAccessTTL is assumed when a token response carries no expires_in (Pleo's older
// documentation: 15 minutes), as the broker does.
const defaultAccessTTL = 15 * time.Minute

// Options configures a Handler. The OAuth fields, RedirectURL, Upstream and Store are
// required.
type Options struct {
	// ClientID and ClientSecret are the integration's OAuth client; the secret goes to the
	// token endpoint by HTTP Basic only.
	ClientID     string
	ClientSecret credentials.Secret
	// AuthorizeURL and TokenURL are Pleo's authorisation and token endpoints.
	AuthorizeURL *url.URL
	TokenURL     *url.URL
	// RedirectURL is the redirect_uri registered with Pleo (matched exactly there); its path
	// is the callback's.
	RedirectURL *url.URL
	// Scopes are asked for, space-separated, in this order.
	Scopes []string
	// SuccessURL, if set, is where a completed flow sends the browser: 303 See Other, with
	// tenant_id and company_id added to its query. Nil shows the result page instead.
	SuccessURL *url.URL
	// Upstream is Pleo's external API, asked GET /v1/installations/me with the new token.
	Upstream *url.URL
	// Store receives the credential. Its change notifications make a Broker drop any cached
	// credential of the company.
	Store credentials.Store
	// StateKeys seal the state (AES-256-GCM, keys derived with HKDF): the first seals, any
	// opens. Pass the encryption keys so every replica opens every replica's states; nil
	// makes a random key, so a flow must end on the replica that started it.
	StateKeys [][]byte
	// HTTPClient calls the token endpoint and the upstream (default: 30s timeout). Redirects
	// are never followed whatever its CheckRedirect.
	HTTPClient *http.Client
	// MaxUsedStates bounds the used-state set; when it is full of unexpired ids, callbacks
	// are refused (default 100000).
	MaxUsedStates int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives one line per flow start and end (never a code, state or token).
	Logger *slog.Logger
	// Metrics records started, completed and failed flows (nil: none).
	Metrics *metrics.Metrics
	// Secrets learns the tokens obtained, so logs redact them by value (nil: none).
	Secrets *redact.Set
	// OnConnected, when set, is told about each credential a flow stored (it must not block).
	OnConnected func(credentials.Credential)
}

// Handler serves GET /connect and the callback. Every other path is 404.
type Handler struct {
	oauth        *oauth2.Config
	callbackPath string
	success      *url.URL
	secureCookie bool
	upstream     *url.URL
	store        credentials.Store
	sealer       *sealer
	used         *usedStates
	client       *http.Client
	now          func() time.Time
	log          *slog.Logger
	metrics      *metrics.Metrics
	secrets      *redact.Set
	onConnected  func(credentials.Credential)
}

// New checks opts and builds the handler.
func New(opts Options) (*Handler, error) {
	switch {
	case opts.ClientID == "" || opts.ClientSecret.IsZero():
		return nil, errors.New("connect: an OAuth client id and secret are required")
	case opts.AuthorizeURL == nil || opts.TokenURL == nil:
		return nil, errors.New("connect: the authorize and token URLs are required")
	case opts.RedirectURL == nil || !opts.RedirectURL.IsAbs():
		return nil, errors.New("connect: an absolute redirect URL is required")
	case opts.Upstream == nil:
		return nil, errors.New("connect: the upstream URL is required")
	case opts.Store == nil:
		return nil, errors.New("connect: a store is required")
	}
	callback := opts.RedirectURL.Path
	if callback == "" {
		callback = "/"
	}
	if callback == ConnectPath {
		return nil, fmt.Errorf("connect: the redirect URL's path must not be %s", ConnectPath)
	}
	if opts.MaxUsedStates <= 0 {
		opts.MaxUsedStates = defaultMaxUsedStates
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	client := noRedirectClient(nil, 30*time.Second)
	if opts.HTTPClient != nil {
		c := *opts.HTTPClient
		c.CheckRedirect = client.CheckRedirect
		client = &c
	}
	redirect := opts.RedirectURL.String()
	s, err := newSealer(opts.StateKeys, "pleo-auth-proxy/connect-state\x00"+opts.ClientID+"\x00"+redirect)
	if err != nil {
		return nil, err
	}
	return &Handler{
		oauth: &oauth2.Config{
			ClientID:     opts.ClientID,
			ClientSecret: opts.ClientSecret.Reveal(),
			Endpoint: oauth2.Endpoint{
				AuthURL:   opts.AuthorizeURL.String(),
				TokenURL:  opts.TokenURL.String(),
				AuthStyle: oauth2.AuthStyleInHeader,
			},
			RedirectURL: redirect,
			Scopes:      append([]string(nil), opts.Scopes...),
		},
		callbackPath: callback,
		success:      opts.SuccessURL,
		secureCookie: opts.RedirectURL.Scheme == "https",
		upstream:     opts.Upstream,
		store:        opts.Store,
		sealer:       s,
		used:         newUsedStates(opts.MaxUsedStates),
		client:       client,
		now:          opts.Now,
		log:          opts.Logger,
		metrics:      opts.Metrics,
		secrets:      opts.Secrets,
		onConnected:  opts.OnConnected,
	}, nil
}

// ServeHTTP routes GET /connect and GET <callback path>.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var serve func(http.ResponseWriter, *http.Request)
	switch r.URL.Path {
	case ConnectPath:
		serve = h.start
	case h.callbackPath:
		serve = h.callback
	default:
		writePage(w, http.StatusNotFound, page{Title: "Not found", Message: "There is nothing here."})
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writePage(w, http.StatusMethodNotAllowed, page{Title: "Method not allowed", Message: "Only GET is served here."})
		return
	}
	serve(w, r)
}

// start answers GET /connect?tenant_id=… with a 302 to the authorisation endpoint.
func (h *Handler) start(w http.ResponseWriter, r *http.Request) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil || len(q["tenant_id"]) != 1 {
		writePage(w, http.StatusBadRequest, page{Title: "Cannot connect",
			Message: "The link must name exactly one tenant: " + ConnectPath + "?tenant_id=<your tenant id>."})
		return
	}
	tenant := q.Get("tenant_id")
	if msg := checkTenant(tenant); msg != "" {
		writePage(w, http.StatusBadRequest, page{Title: "Cannot connect", Message: msg,
			Details: []detail{{"Tenant", echo(tenant)}}})
		return
	}

	// One binding per browser, reused across tabs so parallel flows all complete.
	browser, ok := cookieBinding(r)
	if !ok {
		if _, err := rand.Read(browser[:]); err != nil {
			h.internalError(w, "random", err)
			return
		}
	}
	st := flowState{Browser: browser, IssuedAt: h.now().Truncate(time.Second), Verifier: oauth2.GenerateVerifier(), Tenant: tenant}
	if _, err := rand.Read(st.ID[:]); err != nil {
		h.internalError(w, "random", err)
		return
	}
	state, err := h.sealer.seal(st)
	if err != nil {
		h.internalError(w, "sealing the state", err)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name:     CookieName,
		Value:    hex.EncodeToString(browser[:]),
		Path:     "/", // sent to /connect too, so every tab of a browser shares one binding
		MaxAge:   int(StateTTL / time.Second),
		Secure:   h.secureCookie,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode, // sent on the top-level redirect back from Pleo
	})
	securityHeaders(w.Header())
	w.Header().Set("Location", h.oauth.AuthCodeURL(state, oauth2.S256ChallengeOption(st.Verifier)))
	w.WriteHeader(http.StatusFound)
	h.metrics.ConnectStarted()
	h.log.Info("consent flow started", "tenant_id", tenant)
}

// checkTenant returns why a tenant id is refused, or "".
func checkTenant(t string) string {
	switch {
	case t == "":
		return "The tenant id is empty."
	case len(t) > maxTenantLen:
		return fmt.Sprintf("The tenant id is longer than %d bytes.", maxTenantLen)
	case !utf8.ValidString(t):
		return "The tenant id is not valid UTF-8."
	}
	for i := 0; i < len(t); i++ {
		if t[i] < 0x20 || t[i] == 0x7f {
			return "The tenant id contains control characters."
		}
	}
	return ""
}

// cookieBinding returns the browser binding from the request's cookie, if it has a valid one.
func cookieBinding(r *http.Request) (b [16]byte, ok bool) {
	c, err := r.Cookie(CookieName)
	if err != nil || len(c.Value) != 2*len(b) {
		return b, false
	}
	if _, err := hex.Decode(b[:], []byte(c.Value)); err != nil {
		return b, false
	}
	return b, true
}

// failure is a callback that stored nothing.
type failure struct {
	status int
	reason string // metrics label
	page   page
	err    error // for the log; never a secret
}

// callback completes a flow: state, code exchange, company, store.
func (h *Handler) callback(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	tenant, company, f := h.complete(ctx, r)
	if f != nil {
		h.metrics.ConnectFailed(f.reason)
		attrs := []any{"reason", f.reason, "status", f.status}
		if tenant != "" {
			attrs = append(attrs, "tenant_id", tenant)
		}
		if company != "" {
			attrs = append(attrs, "company_id", company)
		}
		if f.err != nil {
			attrs = append(attrs, "error", f.err.Error())
		}
		h.log.Warn("consent flow failed", attrs...)
		writePage(w, f.status, f.page)
		return
	}
	h.metrics.ConnectCompleted()
	h.log.Info("consent flow completed: credential stored", "tenant_id", tenant, "company_id", company)
	if h.success != nil {
		u := *h.success
		q := u.Query()
		q.Set("tenant_id", tenant)
		q.Set("company_id", company)
		u.RawQuery = q.Encode()
		securityHeaders(w.Header())
		http.Redirect(w, r, u.String(), http.StatusSeeOther)
		return
	}
	writePage(w, http.StatusOK, page{OK: true, Title: "Connected",
		Message: "Pleo is now connected. You can close this window.",
		Details: []detail{{"Tenant", echo(tenant)}, {"Pleo company", company}}})
}

// complete runs the callback and returns the tenant and company as far as they are known,
// and a failure, or nil once the credential is stored.
func (h *Handler) complete(ctx context.Context, r *http.Request) (tenant, company string, f *failure) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return "", "", stateFailure(ErrStateInvalid, "", err)
	}
	for _, p := range []string{"state", "code", "error", "tenant_id"} {
		if len(q[p]) > 1 {
			return "", "", stateFailure(ErrStateInvalid, "", fmt.Errorf("parameter %s repeated", p))
		}
	}
	st, err := h.sealer.open(q.Get("state"))
	if err != nil {
		return "", "", stateFailure(err, "", nil)
	}
	now := h.now()
	browser, _ := cookieBinding(r)
	if err := st.check(now, browser[:]); err != nil {
		return st.Tenant, "", stateFailure(err, st.Tenant, nil)
	}
	// The tenant comes from the state only; a callback naming another is refused.
	if t, present := q["tenant_id"]; present && t[0] != st.Tenant {
		return st.Tenant, "", stateFailure(ErrStateInvalid, "", errors.New("callback names another tenant than its state"))
	}
	if err := h.used.use(st.ID, st.IssuedAt.Add(StateTTL), now); err != nil {
		return st.Tenant, "", stateFailure(err, st.Tenant, nil)
	}

	if e := q.Get("error"); e != "" {
		return st.Tenant, "", authorizeFailure(e, q.Get("error_description"), st.Tenant)
	}
	code := q.Get("code")
	if code == "" {
		return st.Tenant, "", &failure{status: http.StatusBadRequest, reason: metrics.ConnectOther,
			page: page{Title: "Connection failed", Message: "Pleo sent no authorisation code.", Retry: retryLink(st.Tenant)}}
	}

	// From here the code is spent: finish (exchange, look-up, store) even if the browser
	// goes away, so tokens Pleo issued are not dropped half-way.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), completionTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, h.client)
	tok, err := h.oauth.Exchange(ctx, code, oauth2.VerifierOption(st.Verifier))
	if err != nil {
		return st.Tenant, "", exchangeFailure(err, st.Tenant)
	}
	access, refresh := tok.AccessToken, tok.RefreshToken
	if h.secrets != nil {
		h.secrets.Add(access, refresh)
	}
	if access == "" {
		return st.Tenant, "", &failure{status: http.StatusBadGateway, reason: metrics.ConnectExchangeFailed,
			err:  errors.New("token response without an access token"),
			page: page{Title: "Connection failed", Message: "Pleo's answer carried no access token. Nothing was stored; try again later.", Retry: retryLink(st.Tenant)}}
	}
	if refresh == "" {
		return st.Tenant, "", h.noRefreshToken(ctx, access, st.Tenant)
	}

	company, err = LookupCompany(ctx, h.client, h.upstream, credentials.Secret("Bearer "+access))
	if err != nil {
		return st.Tenant, "", &failure{status: http.StatusBadGateway, reason: metrics.ConnectCompanyLookupFailed, err: err,
			page: page{Title: "Connection failed", Message: "Pleo did not say which company was connected. Nothing was stored; try again later.", Retry: retryLink(st.Tenant)}}
	}

	expires := tok.Expiry
	if expires.IsZero() {
		expires = now.Add(defaultAccessTTL)
	}
	cred := credentials.Credential{
		CompanyID:       company,
		TenantID:        st.Tenant,
		Type:            credentials.OAuth2,
		AccessToken:     credentials.Secret(access),
		RefreshToken:    credentials.Secret(refresh),
		ExpiresAt:       expires.UTC(),
		State:           credentials.StateActive,
		LastRefreshedAt: now.UTC(),
	}
	if f := h.storeCredential(ctx, cred); f != nil {
		return st.Tenant, company, f
	}
	return st.Tenant, company, nil
}

// noRefreshTokenHint says which scopes grant a refresh token.
const noRefreshTokenHint = "the scopes requested (PLEO_PROXY_OAUTH_SCOPES) must include the one that grants offline access " +
	"(a refresh token), e.g. offline_access or offline, as the authorisation server names it"

// noRefreshToken is a code exchange whose answer carried an access token but no refresh
// token: the connection cannot be kept past the access token's life, so nothing is stored
// and what was issued is revoked (DELETE /v1/installations/me, best effort).
func (h *Handler) noRefreshToken(ctx context.Context, access, tenant string) *failure {
	revoked, said := "revoked", "the access Pleo granted was revoked"
	if err := RevokeInstallation(ctx, h.client, h.upstream, credentials.Secret("Bearer "+access)); err != nil {
		revoked, said = "not revoked: "+err.Error(), "the access Pleo granted could not be revoked (it expires by itself)"
		h.log.Warn("consent flow: could not revoke the tokens of an answer without a refresh token", "tenant_id", tenant, "error", err)
	} else {
		h.log.Info("consent flow: revoked the tokens of an answer without a refresh token", "tenant_id", tenant)
	}
	return &failure{status: http.StatusBadGateway, reason: metrics.ConnectNoRefreshToken,
		err: fmt.Errorf("token response without a refresh token (access token %s): %s", revoked, noRefreshTokenHint),
		page: page{Title: "Connection failed", Retry: retryLink(tenant),
			Message: "Pleo granted access without a refresh token, so the connection could not be kept. " +
				"Nothing was stored, and " + said + ". The operator must request the scope that grants offline access.",
			Details: []detail{{"Reason", "no_refresh_token"}, {"Hint", noRefreshTokenHint}}}}
}

// storeCredential adds or replaces the company's credential. A tenant already connected to
// another company is refused: one tenant, one company.
func (h *Handler) storeCredential(ctx context.Context, cred credentials.Credential) *failure {
	storeFailed := func(err error) *failure {
		return &failure{status: http.StatusServiceUnavailable, reason: metrics.ConnectStoreFailed, err: err,
			page: page{Title: "Connection failed", Message: "The connection could not be saved. Nothing was stored; try again later.", Retry: retryLink(cred.TenantID)}}
	}
	if other, err := h.store.GetByTenant(ctx, cred.TenantID); err == nil && other.CompanyID != cred.CompanyID {
		return &failure{status: http.StatusConflict, reason: metrics.ConnectStoreFailed,
			err: fmt.Errorf("tenant is already connected to company %s", other.CompanyID),
			page: page{Title: "Already connected", Message: "This tenant is already connected to another Pleo company. " +
				"Ask the operator to remove that connection first; nothing was stored.",
				Details: []detail{{"Tenant", echo(cred.TenantID)}}}}
	} else if err != nil && !errors.Is(err, credentials.ErrNotFound) {
		return storeFailed(err)
	}
	if prev, err := h.store.Get(ctx, cred.CompanyID); err == nil && prev.TenantID != "" && prev.TenantID != cred.TenantID {
		h.log.Warn("consent flow moves a company to another tenant", "company_id", cred.CompanyID,
			"previous_tenant_id", prev.TenantID, "tenant_id", cred.TenantID)
	}
	if err := h.store.PutAll(ctx, []credentials.Credential{cred}, false); err != nil {
		return storeFailed(err)
	}
	if h.onConnected != nil {
		h.onConnected(cred.Metadata())
	}
	return nil
}

func (h *Handler) internalError(w http.ResponseWriter, what string, err error) {
	h.log.Error("consent flow: internal error", "step", what, "error", err)
	writePage(w, http.StatusInternalServerError, page{Title: "Internal error", Message: "Something went wrong; try again."})
}

// retryLink is the relative link that starts a flow for tenant again.
func retryLink(tenant string) string {
	if tenant == "" {
		return ""
	}
	return ConnectPath + "?" + url.Values{"tenant_id": {tenant}}.Encode()
}

func stateFailure(err error, tenant string, cause error) *failure {
	f := &failure{status: http.StatusBadRequest, reason: metrics.ConnectInvalidState, err: err}
	if cause != nil {
		f.err = fmt.Errorf("%w: %w", err, cause)
	}
	f.page.Title = "Connection failed"
	switch {
	case errors.Is(err, ErrStateExpired):
		f.page.Message = fmt.Sprintf("This sign-in took longer than %d minutes and has expired. Nothing was stored.", int(StateTTL/time.Minute))
		f.page.Retry = retryLink(tenant)
	case errors.Is(err, ErrStateUsed):
		f.page.Message = "This sign-in link was already used. Nothing more was stored."
		f.page.Retry = retryLink(tenant)
	case errors.Is(err, ErrStateBrowser):
		f.page.Message = "This sign-in was started in another browser (or on another address). " +
			"Nothing was stored: start again in this browser."
		f.page.Retry = retryLink(tenant)
	case errors.Is(err, ErrBusy):
		f.status, f.reason = http.StatusServiceUnavailable, metrics.ConnectOther
		f.page.Message = "Too many connections are in progress. Nothing was stored; try again in a few minutes."
	default:
		f.page.Message = "This sign-in link is not valid. Nothing was stored: start again from your application."
	}
	return f
}

// authorizeFailure is a callback carrying error=… from the authorisation server.
func authorizeFailure(code, description, tenant string) *failure {
	f := &failure{status: http.StatusBadRequest, reason: metrics.ConnectOther, err: fmt.Errorf("authorisation server: %s", echo(code))}
	f.page = page{Title: "Connection failed", Retry: retryLink(tenant),
		Message: "Pleo did not grant access. Nothing was stored.",
		Details: []detail{{"Error", echo(code)}}}
	if code == "access_denied" {
		f.reason = metrics.ConnectAccessDenied
		f.page.Title = "Access denied"
		f.page.Message = "Access was not granted in Pleo, so nothing was connected or stored."
	}
	if description != "" {
		f.page.Details = append(f.page.Details, detail{"Description", echo(description)})
	}
	return f
}

// exchangeFailure is a code the token endpoint would not exchange.
func exchangeFailure(err error, tenant string) *failure {
	f := &failure{status: http.StatusBadGateway, reason: metrics.ConnectExchangeFailed, err: err,
		page: page{Title: "Connection failed", Retry: retryLink(tenant),
			Message: "Pleo's token endpoint could not be reached or failed. Nothing was stored; try again later."}}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		// RetrieveError's text includes the response body: log the code only.
		f.err = fmt.Errorf("token endpoint answered %d %s", statusOf(re), echo(re.ErrorCode))
		if s := statusOf(re); s >= 400 && s < 500 {
			f.status = http.StatusBadRequest
			f.page.Message = "Pleo did not accept the authorisation. Nothing was stored; start again."
			if re.ErrorCode != "" {
				f.page.Details = []detail{{"Error", echo(re.ErrorCode)}}
			}
		}
	}
	return f
}

func statusOf(re *oauth2.RetrieveError) int {
	if re.Response == nil {
		return 0
	}
	return re.Response.StatusCode
}
